"""GPU-only checks of the local engine (bf16, fused AdamW, auto batch size); skipped without CUDA."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from test_local_backends import LLAMA_TOK, Ledger, backend, job_for, make_tiny, prompts_for, read_log

from ptst.backends.base import GenerationConfig
from ptst.backends.local import data, train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(not LLAMA_TOK.is_file(), reason="shared tokenizers not found"),
]


def test_bf16_training_and_generation_on_gpu(tmp_path, monkeypatch):
    model = make_tiny(tmp_path / "tiny", "llama2")
    b = backend("llama2", model)
    seen = {}
    real = torch.optim.AdamW

    def spy(params, **kw):  # type: ignore[no-untyped-def]
        seen.update(kw)
        return real(params, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", spy)
    ref = b.fine_tune(job_for(b, model), Ledger(), tmp_path / "w")
    assert seen.get("fused") is True
    log = read_log(tmp_path / "w")
    assert log[-1]["loss"] < log[0]["loss"]
    out = b.generate(ref, prompts_for(b, 8), GenerationConfig(max_new_tokens=8))
    assert len(out) == 8
    gen = b.generation.current
    assert gen.model.dtype == torch.bfloat16 and gen.device.startswith("cuda")
    assert gen.auto_batch_size(500, 200, 512) > 8


def test_packed_equals_padded_in_bf16_on_gpu(tmp_path):
    model = make_tiny(tmp_path / "tiny", "llama2")
    b = backend("llama2", model)
    job = job_for(b, model, n=4)
    ex = [b.encode_example(c) for c in job.examples]
    s = train.TrainSettings(model=str(model), seed=0, hyperparameters=job.hyperparameters)
    m = train.build_lora_model(s, "cuda")
    m.eval()
    with torch.no_grad():
        losses = [float(train.micro_loss(m, *data.collate(ex, mode, b.pad_id, "cuda")[:2])[0]) for mode in ("packed", "padded")]
    assert losses[0] == pytest.approx(losses[1], rel=2e-2)
    assert Path(model).is_dir()
