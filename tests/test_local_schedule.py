"""llama-recipes' training regime as named options: `lr_scheduler: step` (StepLR, gamma per epoch) and `chunk_size`
(packing into fixed-size token chunks). The schedule is checked against torch's own StepLR stepped once per epoch;
the packing against chunks worked out by hand; and one tiny end-to-end job trains on chunks with the step schedule."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from ptst.keys import HYPERPARAMETERS_V1, job_key_v1, pinned_fields
from ptst.types import Hyperparameters

torch = pytest.importorskip("torch")

from ptst.backends.local.data import pack_chunks
from ptst.backends.local.schedule import build_scheduler
from ptst.errors import DataError


def _optimizer(lr: float):  # type: ignore[no-untyped-def]
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


@pytest.mark.parametrize(("epochs", "steps_per_epoch", "gamma"), [(6, 5, 0.85), (3, 1, 0.5), (2, 7, 1.0)])
def test_step_schedule_equals_torch_steplr_per_epoch(epochs, steps_per_epoch, gamma):
    hp = Hyperparameters(lr_scheduler="step", lr_gamma=gamma, epochs=epochs, learning_rate=1e-4)
    opt = _optimizer(1e-4)
    ours = build_scheduler(opt, hp, epochs * steps_per_epoch, steps_per_epoch)
    got = []
    for _ in range(epochs * steps_per_epoch):
        got.append(ours.get_last_lr()[0])
        opt.step()
        ours.step()
    # the reference: llama-recipes' StepLR(step_size=1, gamma), stepped after each epoch
    ref_opt = _optimizer(1e-4)
    ref = torch.optim.lr_scheduler.StepLR(ref_opt, step_size=1, gamma=gamma)
    want = []
    for _ in range(epochs):
        want += [ref.get_last_lr()[0]] * steps_per_epoch
        ref_opt.step()
        ref.step()
    assert got == pytest.approx(want, rel=1e-12)
    assert got[-1] == pytest.approx(1e-4 * gamma ** (epochs - 1))


def test_step_schedule_refuses_warmup_and_defaults_leave_keys_alone():
    with pytest.raises(ValidationError, match="takes no warmup"):
        Hyperparameters(lr_scheduler="step", warmup_ratio=0.1)
    # new fields at their defaults hash as before (schema v1): no finished job is orphaned
    assert pinned_fields(Hyperparameters(), HYPERPARAMETERS_V1) == pinned_fields(
        Hyperparameters(lr_gamma=0.85, chunk_size=None), HYPERPARAMETERS_V1)
    key = dict(backend="llama2", base_model="m", train_template="t", seed=0, data_hash="d")
    assert job_key_v1(**key, hyperparameters=Hyperparameters()) != job_key_v1(
        **key, hyperparameters=Hyperparameters(lr_scheduler="step"))
    assert job_key_v1(**key, hyperparameters=Hyperparameters()) != job_key_v1(
        **key, hyperparameters=Hyperparameters(chunk_size=4096))


def test_pack_chunks_by_hand():
    examples = [
        ([1, 5, 6, 7], [-100, -100, 6, 7]),
        ([1, 8, 9], [-100, 8, 9]),
        ([1, 4], [-100, 4]),
    ]
    # stream 1 5 6 7 | 1 8 9 1 | 4  -> two chunks of 4; the lone tail token is dropped
    assert pack_chunks(examples, 4) == [
        ([1, 5, 6, 7], [-100, -100, 6, 7]),
        ([1, 8, 9, 1], [-100, 8, 9, -100]),
    ]
    assert pack_chunks(examples, 9) == [([1, 5, 6, 7, 1, 8, 9, 1, 4], [-100, -100, 6, 7, -100, 8, 9, -100, 4])]
    with pytest.raises(DataError, match="less than one chunk"):
        pack_chunks(examples, 10)


@pytest.mark.slow
def test_a_job_trains_on_chunks_with_the_step_schedule(tmp_path: Path):
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from test_local_backends import LLAMA_TOK, Ledger, backend, job_for, make_tiny, read_log

    if not LLAMA_TOK.is_file():
        pytest.skip("shared tokenizers not found")
    tiny = make_tiny(tmp_path / "tiny", "llama2")
    b = backend("llama2", tiny)
    job = job_for(b, tiny, n=8, epochs=3, batch_size=2, chunk_size=128, lr_scheduler="step", lr_gamma=0.5)
    b.fine_tune(job, Ledger(), tmp_path / "run")
    log = read_log(tmp_path / "run")
    n_tokens = sum(len(b.render(c).input_ids) for c in job.examples)
    per_epoch = -(-(n_tokens // 128) // 2)  # chunks, two per step
    assert len(log) == 3 * per_epoch
    assert [r["lr"] for r in log] == pytest.approx(
        [3e-2 * 0.5**e for e in range(3) for _ in range(per_epoch)])
