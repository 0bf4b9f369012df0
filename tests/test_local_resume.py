"""An interrupted local fine-tune resumes from its last save_steps checkpoint and ends where an uninterrupted run
ends: same loss for every remaining step, bit-identical adapter (LoRA dropout on, so the RNG state must be restored
too). Also: the checkpoints hook lists those adapters, and a checkpoint of other settings is never resumed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from test_local_backends import LLAMA_TOK, Ledger, adapter_tensors, backend, job_for, read_log

from ptst.backends.local import (
    resume,
    training_driver,
)

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not LLAMA_TOK.is_file(), reason="shared tokenizers not found")]


class Killed(Exception):
    """Stands in for a kill: raised after a step, as a crash would end the process."""


def crash_once_at(step: int, monkeypatch) -> list[int]:  # type: ignore[no-untyped-def]
    """Make the next fine-tune die after `step`; record the steps every later run takes."""
    real = training_driver.train_lora
    seen: list[int] = []
    state = {"armed": True}

    def wrapped(settings, examples, outdir, **kw):  # type: ignore[no-untyped-def]
        def on_step(rec):  # type: ignore[no-untyped-def]
            seen.append(rec["step"])
            if state["armed"] and rec["step"] == step:
                state["armed"] = False
                raise Killed

        return real(settings, examples, outdir, on_step=on_step, **kw)

    monkeypatch.setattr(training_driver, "train_lora", wrapped)
    return seen


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from test_local_backends import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny-resume"), "llama2")


def test_resumed_training_equals_an_uninterrupted_run(tiny, tmp_path, monkeypatch):
    b = backend("llama2", tiny)
    # 8 examples, batch 4: 2 steps per epoch, 3 epochs = 6 steps; dropout 0.05 (the default) is on
    job = job_for(b, tiny, n=8, epochs=3, save_steps=(2, 4, 6))
    full = b.fine_tune(job, Ledger(), tmp_path / "full")

    seen = crash_once_at(5, monkeypatch)  # step 5 finished but is lost: the last checkpoint is step 4
    with pytest.raises(Killed):
        b.fine_tune(job, Ledger(), tmp_path / "resumed")
    assert seen == [1, 2, 3, 4, 5]
    assert not (tmp_path / "resumed" / "adapter").exists()
    seen.clear()
    again = b.fine_tune(job, Ledger(), tmp_path / "resumed")
    assert seen == [5, 6]  # resumed after step 4, not restarted

    assert [r["step"] for r in read_log(tmp_path / "resumed")] == list(range(1, 7))
    assert [r["loss"] for r in read_log(tmp_path / "resumed")] == [r["loss"] for r in read_log(tmp_path / "full")]
    assert [r["lr"] for r in read_log(tmp_path / "resumed")] == [r["lr"] for r in read_log(tmp_path / "full")]
    a, c = adapter_tensors(Path(full.adapter_dir)), adapter_tensors(Path(again.adapter_dir))
    assert a.keys() == c.keys() and all(torch.equal(a[k], c[k]) for k in a)
    meta = json.loads((Path(again.adapter_dir) / "ptst_adapter.json").read_text())
    assert meta["train"]["final_loss"] == pytest.approx(read_log(tmp_path / "full")[-1]["loss"], abs=1e-6)
    assert set(meta["checkpoints"]) == {"2", "4", "6"}

    # the checkpoints hook: the save_steps adapters, oldest first, the last one being the final adapter
    cks = b.checkpoints(full)
    assert [c.meta["step"] for c in cks] == [2, 4, 6]
    assert [c.adapter_dir for c in cks] == [
        str(tmp_path / "full" / "checkpoint-2"), str(tmp_path / "full" / "checkpoint-4"), full.adapter_dir]
    assert all(c.base_model == full.base_model and c.train_template == full.train_template for c in cks)
    assert len({c.model_id for c in cks}) == 3 and all(isinstance(c.meta["loss"], float) for c in cks)
    assert b.checkpoints(b.base_model()) == []


def test_a_checkpoint_of_other_settings_is_not_resumed(tiny, tmp_path, monkeypatch):
    b = backend("llama2", tiny)
    job = job_for(b, tiny, n=8, epochs=2, save_steps=(2,))
    seen = crash_once_at(3, monkeypatch)
    with pytest.raises(Killed):
        b.fine_tune(job, Ledger(), tmp_path)
    assert resume.checkpoint_dirs(tmp_path) == [(2, tmp_path / "checkpoint-2")]
    other = job_for(b, tiny, n=8, epochs=2, save_steps=(2,), learning_rate=1e-3)
    seen.clear()
    b.fine_tune(other, Ledger(), tmp_path)
    assert seen == [1, 2, 3, 4]  # started over: the checkpoint belongs to another learning rate
