"""Data-parallel training through torchrun: two CPU processes (gloo) give the adapter one process gives.

The backend launches `torchrun -m ptst.backends.local.distributed JOBFILE` when `nproc_per_node > 1`; each rank takes its share of
every micro-batch and the loss is normalised over the whole accumulation window, so (without dropout) the update is
the single-process one up to float rounding.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from test_local_backends import LLAMA_TOK, SHARED, Ledger, adapter_tensors, make_tiny, read_log

from ptst.backends.base import BackendSpec, Hyperparameters, LoraSpec, TrainJob, create_backend
from ptst.backends.local import adapters, distributed, train
from ptst.templates import BUILTIN

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not LLAMA_TOK.is_file(), reason="shared tokenizers not found"),
    pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available"),
]


def test_two_process_ddp_matches_single_process(tmp_path):
    model = make_tiny(tmp_path / "tiny", "llama2")
    rows = [json.loads(x) for x in (SHARED / "gsm8k" / "train.jsonl").read_text().splitlines()[:10]]
    hp = Hyperparameters(
        epochs=2, learning_rate=3e-2, batch_size=4, gradient_accumulation_steps=1, max_seq_len=256,
        lora=LoraSpec(dropout=0.0),  # dropout draws differ per rank; without it the runs must agree
    )

    def run(nproc: int, workdir: Path):  # type: ignore[no-untyped-def]
        # float32: rel 1e-4 is float32's agreement (`auto` is bfloat16 on a CPU with AVX-512 BF16)
        b = create_backend(BackendSpec(kind="llama2", model=str(model), tokenizer=str(LLAMA_TOK), nproc_per_node=nproc,
                                       dtype="float32"))
        examples = tuple(BUILTIN["chat:vanilla"].apply(r["question"], "llama2", answer=r["answer"]) for r in rows)
        job = TrainJob(backend="llama2", base_model=str(model), train_template="chat:vanilla", seed=3,
                       hyperparameters=hp, examples=examples, data_hash="ddp")
        return b.fine_tune(job, Ledger(), workdir)

    single = run(1, tmp_path / "single")
    ddp = run(2, tmp_path / "ddp")
    meta = adapters.read_adapter_metadata(Path(ddp.adapter_dir))
    assert meta["train"]["world_size"] == 2
    # 10 examples, batch 4 -> 3 steps per epoch (the last batch of 2 splits 1+1), 2 epochs
    ls, ld = read_log(tmp_path / "single"), read_log(tmp_path / "ddp")
    assert len(ls) == len(ld) == 6
    assert [r["tokens"] for r in ls] == [r["tokens"] for r in ld]  # every example seen once per epoch, across ranks
    for a, b in zip(ls, ld, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    wa, wb = adapter_tensors(Path(single.adapter_dir)), adapter_tensors(Path(ddp.adapter_dir))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=1e-3, atol=1e-5), k
    assert not list((tmp_path / "ddp").glob("job-*.json"))  # the job file is cleaned up


def test_failed_worker_is_a_one_line_error(tmp_path):
    from ptst.errors import BackendError

    settings = train.TrainSettings(model=str(tmp_path / "missing-model"), seed=0, hyperparameters=Hyperparameters())
    with pytest.raises(BackendError) as e:
        distributed.launch_distributed(settings, [([1, 5, 2], [-100, 5, 2])], tmp_path / "out", 2)
    assert "nproc_per_node" in str(e.value) and "\n" not in str(e.value)
