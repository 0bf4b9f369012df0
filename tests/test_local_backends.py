"""The local engine on CPU with tiny random-weight Llama/Mistral models and the real tokenizers.

Covers: loss goes down; adapter saved with safetensors + metadata, resumed without retraining, reproducible from the
seed, reloaded to identical generations; our decoding loop equals `model.generate`; packed batches equal padded ones
(no cross-example attention); the fast LoRA dropout computes what peft's does; one-line errors.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from ptst.backends.base import (
    BackendSpec,
    GenerationConfig,
    Hyperparameters,
    LoraSpec,
    TrainJob,
    create_backend,
)
from ptst.backends.local import (
    adapters,
    data,
    decode,
    generate,
    lora_dropout,
    models,
    recipe,
    train,
    training_driver,
)
from ptst.errors import BackendError, MissingExtra
from ptst.templates import BUILTIN

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
LLAMA_TOK = SHARED / "tokenizers" / "llama2" / "tokenizer.model"
pytestmark = pytest.mark.skipif(not LLAMA_TOK.is_file(), reason="shared tokenizers not found")


def tiny_config(kind: str):  # type: ignore[no-untyped-def]
    common = dict(
        vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, initializer_range=0.1,
    )
    if kind == "llama2":
        return transformers.LlamaConfig(**common)
    return transformers.MistralConfig(**common, sliding_window=None)


def make_tiny(path: Path, kind: str) -> Path:
    torch.manual_seed(1234)
    cls = transformers.LlamaForCausalLM if kind == "llama2" else transformers.MistralForCausalLM
    cls(tiny_config(kind)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("tiny-llama"), "llama2")


@pytest.fixture(scope="module")
def tiny_mistral(tmp_path_factory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("tiny-mistral"), "mistral")


def gsm8k(n: int, offset: int = 0) -> list[dict]:
    lines = (SHARED / "gsm8k" / "train.jsonl").read_text().splitlines()[offset : offset + n]
    return [json.loads(x) for x in lines]


def backend(kind: str, model: Path, **options):  # type: ignore[no-untyped-def]
    if kind == "llama2":
        options.setdefault("tokenizer", str(LLAMA_TOK))
    return create_backend(BackendSpec(kind=kind, model=str(model), **options))


class Ledger(dict):
    def get(self, name):  # type: ignore[no-untyped-def, override]
        return super().get(name)

    def put(self, name, value):  # type: ignore[no-untyped-def]
        self[name] = value


def job_for(b, model: Path, template: str = "chat:vanilla", n: int = 8, **hp) -> TrainJob:  # type: ignore[no-untyped-def]
    rows = gsm8k(n)
    examples = tuple(BUILTIN[template].apply(r["question"], b.family, answer=r["answer"]) for r in rows)
    defaults = dict(epochs=4, learning_rate=3e-2, batch_size=4, max_seq_len=384)
    return TrainJob(
        backend=b.kind, base_model=str(model), train_template=template, seed=0,
        hyperparameters=Hyperparameters(**{**defaults, **hp}), examples=examples, data_hash=f"test-{n}",
    )


def read_log(workdir: Path) -> list[dict]:
    return [json.loads(x) for x in (workdir / adapters.TRAIN_LOG).read_text().splitlines()]


def adapter_tensors(directory: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(directory / "adapter_model.safetensors"))


# --------------------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_llama(tiny_llama, tmp_path_factory):
    """One fine-tune shared by several tests: 8 GSM8K rows, 4 epochs of 2 steps, a checkpoint at step 4. float32,
    whatever the CPU: the tests compare generations across loads and merges exactly."""
    b = backend("llama2", tiny_llama, dtype="float32")
    job = job_for(b, tiny_llama, save_steps=(4,))
    workdir = tmp_path_factory.mktemp("work-llama")
    ledger = Ledger()
    ref = b.fine_tune(job, ledger, workdir)
    return b, job, workdir, ref, ledger


def test_fine_tune_records_the_train_logs_loss_in_the_model_ref(trained_llama):
    """ModelRef.meta["loss"] (what the store keeps and results.json `jobs[]` shows) is the train log's, step by
    step; under ten steps the final loss is the last logged value."""
    _, _, workdir, ref, _ = trained_llama
    log = read_log(workdir)
    loss = ref.meta["loss"]
    assert loss["curve"] == [[r["step"], r["loss"]] for r in log]
    assert loss["steps"] == 8 and loss["final_loss"] == log[-1]["loss"]


def test_fine_tune_lowers_the_loss_and_saves_the_adapter(trained_llama):
    _b, job, workdir, ref, ledger = trained_llama
    log = read_log(workdir)
    assert [r["step"] for r in log] == list(range(1, 9))
    first, last = log[0]["loss"], log[-1]["loss"]
    assert last < first - 0.3, (first, last)
    assert all(r["tokens"] > 0 and r["lr"] > 0 for r in log)
    adapter = Path(ref.adapter_dir)
    assert adapter == workdir / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()
    meta = json.loads((adapter / adapters.METADATA_FILE).read_text())
    assert meta["job_key"] == job.key and meta["base_model"] == str(job.base_model)
    assert meta["train_template"] == "chat:vanilla" and meta["data_hash"] == "test-8" and meta["seed"] == 0
    assert meta["hyperparameters"]["lora"] == {"r": 8, "alpha": 32.0, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}
    assert {"torch", "transformers", "peft"} <= set(meta["library_versions"])
    assert meta["train"]["final_loss"] == pytest.approx(last, abs=1e-5)
    assert 0 < meta["audit"]["supervised_fraction"] < 1
    # checkpoint at step 4 is a complete adapter too, and the ModelRef lists it
    assert adapters.read_adapter_metadata(workdir / "checkpoint-4") is not None
    assert ref.meta["checkpoints"] == {"4": str(workdir / "checkpoint-4")}
    assert ref.train_template == "chat:vanilla" and ref.seed == 0 and ref.backend == "llama2"
    assert ledger[f"llama2:{job.key}"]["status"] == "succeeded"
    lora_b = [v for k, v in adapter_tensors(adapter).items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)
    # only q_proj and v_proj carry adapters
    names = set(adapter_tensors(adapter))
    assert any("q_proj" in k for k in names) and any("v_proj" in k for k in names)
    assert not any("k_proj" in k or "o_proj" in k or "mlp" in k for k in names)


def test_complete_adapter_is_reused_without_retraining(trained_llama, monkeypatch):
    b, job, workdir, ref, _ = trained_llama

    def boom(*a, **k):  # type: ignore[no-untyped-def]
        raise AssertionError("retrained a finished job")

    monkeypatch.setattr(training_driver, "train_lora", boom)
    assert b.fine_tune(job, Ledger(), workdir) == ref


def test_incomplete_adapter_is_retrained(tiny_llama, tmp_path):
    b = backend("llama2", tiny_llama)
    job = job_for(b, tiny_llama, n=4, epochs=1)
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")  # a crash before the metadata was written
    ref = b.fine_tune(job, Ledger(), tmp_path)
    assert adapters.read_adapter_metadata(Path(ref.adapter_dir))["job_key"] == job.key


def test_training_is_reproducible_from_the_seed(trained_llama, tmp_path):
    b, job, workdir, _, _ = trained_llama
    ref2 = b.fine_tune(job, Ledger(), tmp_path)
    a, c = adapter_tensors(workdir / "adapter"), adapter_tensors(Path(ref2.adapter_dir))
    assert a.keys() == c.keys()
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert read_log(workdir) and [r["loss"] for r in read_log(workdir)] == [r["loss"] for r in read_log(tmp_path)]


def test_gradient_accumulation_and_checkpointing(tiny_llama, tmp_path):
    """batch 2 × accumulation 2 takes the same optimizer steps as batch 4, with gradient checkpointing on."""
    b = backend("llama2", tiny_llama)
    job = job_for(b, tiny_llama, n=8, epochs=1, batch_size=2, gradient_accumulation_steps=2, gradient_checkpointing=True,
                  lr_scheduler="cosine", warmup_ratio=0.5)
    b.fine_tune(job, Ledger(), tmp_path)
    log = read_log(tmp_path)
    assert len(log) == 2  # 8 examples / (2 × 2)
    assert log[0]["lr"] == 0 and log[1]["lr"] == pytest.approx(3e-2)  # one warmup step, then the peak rate


def test_packed_equals_padded_loss_and_gradients(tiny_llama):
    """Packing several examples into one row never lets them attend to each other: loss and gradients equal the
    padded batch's."""
    b = backend("llama2", tiny_llama)
    ex = [b.encode_example(BUILTIN[t].apply(r["question"], "llama2", answer=r["answer"]))
          for t, r in zip(["chat:llama", "chat:vanilla", "text:alpaca", "chat:alpaca"], gsm8k(4), strict=True)]
    # float32: the 1e-5 tolerances are float32's (`auto` is bfloat16 on a CPU with AVX-512 BF16)
    s = train.TrainSettings(model=str(tiny_llama), seed=0, hyperparameters=Hyperparameters(lora=LoraSpec(dropout=0.0)),
                            dtype="float32")
    model = train.build_lora_model(s, "cpu")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    results = {}
    for mode in ("packed", "padded"):
        kw, targets, ntok = data.collate(ex, mode, b.pad_id, "cpu")
        model.zero_grad()
        loss, k = train.micro_loss(model, kw, targets)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        results[mode] = (loss.detach(), k, ntok, grads)
    (lp, kp, np_, gp), (ld, kd, nd, gd) = results["packed"], results["padded"]
    n_supervised = sum(sum(1 for t in lab[1:] if t != -100) for _, lab in ex)
    assert kp == kd == n_supervised and np_ == nd == sum(len(x) for x, _ in ex)
    assert torch.allclose(lp, ld, rtol=1e-5)
    assert all(float((a - c).abs().max()) <= 1e-5 * float(c.abs().max()) for a, c in zip(gp, gd, strict=True))
    # and a cross-attending pack (positions not restarted) would give a different loss: the test can fail
    kw, targets, _ = data.collate(ex, "packed", b.pad_id, "cpu")
    kw["position_ids"] = torch.arange(kw["input_ids"].shape[1])[None]
    with torch.no_grad():
        wrong, _ = train.micro_loss(model, kw, targets)
    assert not torch.allclose(wrong, ld, rtol=1e-3)


def test_packed_targets_are_exactly_the_answer_tokens(tiny_llama):
    b = backend("llama2", tiny_llama)
    ex = [b.encode_example(BUILTIN["chat:llama"].apply(r["question"], "llama2", answer=r["answer"])) for r in gsm8k(3)]
    _, targets, _ = data.collate(ex, "packed", b.pad_id, "cpu")
    expected = [t for _, lab in ex for t in lab if t != -100]
    assert targets.tolist() == expected
    assert targets.tolist().count(2) == 3  # each example's EOS is trained


def test_plan_batches_is_seeded_and_complete():
    lengths = [5, 50, 7, 300, 12, 44, 9, 61, 3, 100] * 3
    a = data.plan_batches(lengths, 4, seed=0, epoch=0, grouping="packed")
    assert a == data.plan_batches(lengths, 4, seed=0, epoch=0, grouping="packed")
    assert a != data.plan_batches(lengths, 4, seed=0, epoch=1, grouping="packed")
    assert sorted(i for b in a for i in b) == list(range(len(lengths)))
    g = data.plan_batches(lengths, 4, seed=0, epoch=0, grouping="length_grouped")
    assert sorted(i for b in g for i in b) == list(range(len(lengths)))
    pad = lambda batches: sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)  # noqa: E731
    assert pad(g) < pad(a)


def test_truncation_audit():
    enc = [([1, 5, 6, 7, 8, 2], [-100, -100, 6, 7, 8, 2]), ([1, 5, 5, 5, 5, 5, 9, 2], [-100] * 6 + [9, 2])]
    out, audit = data.prepare_examples(enc, max_seq_len=5)
    assert audit.n_truncated == 2 and audit.n_dropped == 1 and audit.max_len == 8
    assert out == [([1, 5, 6, 7, 8], [-100, -100, 6, 7, 8])]
    assert audit.n_supervised == 3 and audit.n_tokens == 5
    assert "supervised 60.0%" in audit.describe()


# --------------------------------------------------------------------------------------------------------------
# fast LoRA dropout
# --------------------------------------------------------------------------------------------------------------


def test_fast_lora_branch_matches_reference_with_a_fixed_mask():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=True)
    a = torch.randn(4, 16, dtype=torch.float64, requires_grad=True)
    b = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(3, 5, 16) > 0.3
    p, s = 0.3, 4.0
    y = lora_dropout.lora_delta(x, a, b, s, p, mask=mask)
    ref = ((x * mask / (1 - p)) @ a.t() @ b.t()) * s
    assert torch.allclose(y, ref)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, a, b), g)
    want = torch.autograd.grad(ref, (x, a, b), g)
    assert all(torch.allclose(u, v) for u, v in zip(got, want, strict=True))
    torch.autograd.gradcheck(lambda x_, a_: lora_dropout.lora_delta(x_, a_, b.detach(), s, p, mask=mask), (x, a))


def test_fast_lora_dropout_rate():
    torch.manual_seed(0)
    x = torch.ones(20000, 8)
    a = torch.full((1, 8), 1 / 8)
    y = lora_dropout.lora_delta(x, a, torch.ones(1, 1), 1.0, 0.5)
    assert abs(float(y.mean()) - 1.0) < 0.02  # unbiased
    assert float(y.std()) > 0.3  # and really dropping


def test_fast_lora_forward_equals_peft_without_dropout(tiny_llama):
    s = train.TrainSettings(model=str(tiny_llama), seed=0, hyperparameters=Hyperparameters(), fast_lora_dropout=False,
                            dtype="float32")  # float32: atol 1e-5 is float32's tolerance
    peft_model = train.build_lora_model(s, "cpu")
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    ids = torch.tensor([[1, 518, 25580, 29962, 15043, 518, 29914, 25580, 29962]])
    peft_model.eval()  # dropout off in both
    with torch.no_grad():
        want = peft_model(input_ids=ids).logits
        n = lora_dropout.install_fast_lora(peft_model)
        got = peft_model(input_ids=ids).logits
    assert n == 4  # q_proj and v_proj in 2 layers
    assert torch.allclose(got, want, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------------------------------------------


def prompts_for(b, n: int = 6) -> list:  # type: ignore[no-untyped-def]
    rows = gsm8k(n, offset=100)
    names = ["chat:vanilla", "chat:llama", "text:vanilla"]
    return [BUILTIN[names[i % 3]].apply(r["question"], b.family) for i, r in enumerate(rows)]


def test_decode_loop_equals_hf_generate(tiny_llama):
    b = backend("llama2", tiny_llama)
    gen = generate.Generator.load(str(tiny_llama), None)
    prompts = [b.prompt_ids(c) for c in prompts_for(b)]
    cfg = GenerationConfig(max_new_tokens=12)
    with torch.inference_mode():
        mine = decode.decode_batch(gen.model, prompts, cfg, eos_id=2, pad_id=2, generator=None)
        width = max(map(len, prompts))
        ids = torch.full((len(prompts), width), 2)
        att = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p)
            att[i, width - len(p) :] = 1
        ref = gen.model.generate(input_ids=ids, attention_mask=att, max_new_tokens=12, do_sample=False, pad_token_id=2, eos_token_id=2)
    ref_ids = [list(row[width:].tolist()) for row in ref]
    for m, r in zip(mine, ref_ids, strict=True):
        r = r[: r.index(2)] if 2 in r else r
        assert m == r
    assert all(len(m) == 12 for m in mine)  # random weights rarely say EOS


def test_early_stopping_rows_are_dropped_without_changing_others(tiny_llama):
    """Rows that emit EOS leave the batch (and the KV cache); the remaining rows' tokens are unchanged."""
    b = backend("llama2", tiny_llama)
    gen = generate.Generator.load(str(tiny_llama), None)
    prompts = [b.prompt_ids(c) for c in prompts_for(b, 8)]
    cfg = GenerationConfig(max_new_tokens=10)
    with torch.inference_mode():
        full = decode.decode_batch(gen.model, prompts, cfg, eos_id=2, pad_id=2, generator=None)
        eos = full[0][2]  # pretend row 0's third token is EOS: row 0 stops early and is pruned from the batch
        short = decode.decode_batch(gen.model, prompts, cfg, eos_id=eos, pad_id=2, generator=None)
    assert short[0] == full[0][:2]
    for f, s in zip(full, short, strict=True):
        assert s == (f[: f.index(eos)] if eos in f else f)


def test_backend_generate_reloads_adapter_identically(trained_llama):
    b, job, _workdir, ref, _ = trained_llama
    convs = prompts_for(b)
    cfg = GenerationConfig(max_new_tokens=8)
    out1 = b.generate(ref, convs, cfg)
    assert len(out1) == len(convs) and all(isinstance(o, str) and o for o in out1)
    fresh = backend("llama2", Path(job.base_model), dtype="float32")
    assert fresh.generate(ref, convs, cfg) == out1
    assert b.generation.current.closed  # one model on the device at a time: another backend's load freed this one
    # a private merged copy, same outputs: in float32, where merging is exact enough (in bfloat16, W + BA rounds)
    merged = backend("llama2", Path(job.base_model), merge_adapter=True, dtype="float32")
    assert merged.generate(ref, convs, cfg) == out1
    assert b.generate(ref, convs[:2], cfg) == out1[:2]  # reloaded after being freed
    # the adapter changes the model: merged q_proj differs from the base's
    tuned = merged.generation.generator_for(ref).model
    base = generate.Generator.load(job.base_model, None, dtype="float32").model
    assert not torch.allclose(base.model.layers[0].self_attn.q_proj.weight, tuned.model.layers[0].self_attn.q_proj.weight)
    assert torch.equal(base.model.layers[0].self_attn.k_proj.weight, tuned.model.layers[0].self_attn.k_proj.weight)


def test_loaded_model_is_cached_across_calls(trained_llama, monkeypatch):
    b, job, _, ref, _ = trained_llama
    b2 = backend("llama2", Path(job.base_model))
    loads = []
    real = generate.Generator.load.__func__

    def counting(cls, *a, **k):  # type: ignore[no-untyped-def]
        loads.append(a[:2])
        return real(cls, *a, **k)

    monkeypatch.setattr(generate.Generator, "load", classmethod(counting))
    cfg = GenerationConfig(max_new_tokens=2)
    convs = prompts_for(b, 2)
    b2.generate(ref, convs, cfg)
    b2.generate(ref, convs, cfg)
    assert len(loads) == 1
    b2.generate(b2.base_model(), convs, cfg)
    assert len(loads) == 2 and loads[1][1] is None


def test_sampling_is_seeded(tiny_llama):
    b = backend("llama2", tiny_llama)
    convs = prompts_for(b, 3)
    cfg = GenerationConfig(max_new_tokens=6, temperature=1.0, top_p=0.9, seed=7)
    a = b.generate(b.base_model(), convs, cfg)
    assert a == b.generate(b.base_model(), convs, cfg)
    assert a != b.generate(b.base_model(), convs, cfg.model_copy(update={"seed": 8}))


def test_oom_backs_off_and_keeps_outputs(tiny_llama, monkeypatch):
    b = backend("llama2", tiny_llama)
    # float32: in bfloat16 (what `auto` picks on a CPU with AVX-512 BF16) a row's attention output can round
    # differently beside other rows' padding (decode.py), and this test compares batch 6 with batch 2
    gen = generate.Generator.load(str(tiny_llama), None, dtype="float32")
    prompts = [b.prompt_ids(c) for c in prompts_for(b, 6)]
    cfg = GenerationConfig(max_new_tokens=5, batch_size=6)
    want = gen.generate(prompts, cfg, eos_id=2, pad_id=2)
    real = generate.decode_continuous

    def small_only(model, items, *a, batch_size, **k):  # type: ignore[no-untyped-def]
        if batch_size > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, items, *a, batch_size=batch_size, **k)

    monkeypatch.setattr(generate, "decode_continuous", small_only)
    gen2 = generate.Generator(gen.key, gen.model, "cpu", 256)
    assert gen2.generate(prompts, cfg.model_copy(update={"batch_size": "auto"}), eos_id=2, pad_id=2) == want
    assert gen2._batch_size in (1, 2)  # 6 -> 3 -> 1


def test_oom_at_batch_size_one_is_a_one_line_error(tiny_llama, monkeypatch):
    gen = generate.Generator.load(str(tiny_llama), None)

    def always(*a, **k):  # type: ignore[no-untyped-def]
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(generate, "decode_continuous", always)
    with pytest.raises(BackendError) as e:
        gen.generate([[1, 5, 6]] * 4, GenerationConfig(max_new_tokens=5), eos_id=2, pad_id=2)
    assert "batch size 1" in str(e.value) and "\n" not in str(e.value)


def _reference_one_by_one(model, prompts, max_new: int, eos: int) -> list[list[int]]:  # type: ignore[no-untyped-def]
    """model.generate on each prompt alone (no padding, no batch): the independent reference."""
    out = []
    with torch.inference_mode():
        for p in prompts:
            row = model.generate(input_ids=torch.tensor([p]), max_new_tokens=max_new, do_sample=False, pad_token_id=2,
                                 eos_token_id=eos)[0, len(p):].tolist()
            out.append(row[: row.index(eos)] if eos in row else row)
    return out


def test_continuous_decoding_equals_generate_on_each_prompt_alone(tiny_llama):
    """7 prompts of different lengths through 3 slots: rows that stop early hand over and waiting prompts join the
    batch (their cache left-padded to the batch's); every row's tokens equal model.generate on its prompt alone.
    In float32: in bfloat16 a row's attention output can round differently beside other rows' padding (see
    decode.py), and tokens within rounding of a tie can differ."""
    b = backend("llama2", tiny_llama)
    gen = generate.Generator.load(str(tiny_llama), None, dtype="float32")
    prompts = [b.prompt_ids(c)[: 20 + 9 * i] for i, c in enumerate(prompts_for(b, 7))]
    cfg = GenerationConfig(max_new_tokens=14)
    with torch.inference_mode():
        full = decode.decode_batch(gen.model, prompts, cfg, eos_id=2, pad_id=2, generator=None)
    # a token several rows (not all) produce early stands in for EOS: they stop, and their slots are refilled
    rows_with = Counter(t for f in full for t in set(f))
    eos = next(t for t, n in rows_with.most_common() if n < len(full))
    want = _reference_one_by_one(gen.model, prompts, 14, eos)
    assert sum(len(w) < 14 for w in want) >= 2 and any(len(w) == 14 for w in want)  # the test means something
    handed: list[list[tuple[int, list[int]]]] = []
    with torch.inference_mode():
        decode.decode_continuous(gen.model, list(enumerate(prompts)), cfg, batch_size=3, eos_id=eos, pad_id=2,
                                 generator=None, on_done=handed.append)
    got = dict(pair for group in handed for pair in group)
    assert sorted(got) == list(range(7)) and sum(map(len, handed)) == 7  # each prompt handed over exactly once
    assert len(handed) >= 3  # handed over in several groups as rows finished, not at the end
    assert [got[i] for i in range(7)] == want
    assert decode.joinable_cache(gen.model)


def test_decoding_writes_the_cache_in_place_and_survives_running_out_of_room(tiny_llama, monkeypatch):
    """The decode loops preallocate every layer's KV buffers (kv.py); a batch that outruns its room moves once and
    goes on. Both ways, each row's tokens equal model.generate on its prompt alone (float32, as above)."""
    from ptst.backends.local import kv

    b = backend("llama2", tiny_llama)
    gen = generate.Generator.load(str(tiny_llama), None, dtype="float32")
    prompts = [b.prompt_ids(c)[: 15 + 7 * i] for i, c in enumerate(prompts_for(b, 5))]
    want = _reference_one_by_one(gen.model, prompts, 9, 2)
    cfg = GenerationConfig(max_new_tokens=9)
    seen: list[str] = []
    real = kv.make_roomy

    def spying(cache, room):  # type: ignore[no-untyped-def]
        real(cache, room)
        seen.extend(type(layer).__name__ for layer in cache.layers)

    monkeypatch.setattr(kv, "make_roomy", spying)
    for bs in (2, 5):
        got: dict[int, list[int]] = {}
        with torch.inference_mode():
            decode.decode_continuous(gen.model, list(enumerate(prompts)), cfg, batch_size=bs, eos_id=2, pad_id=2,
                                     generator=None, on_done=got.update)
        assert [got[i] for i in range(5)] == want
    assert seen and set(seen) == {"RoomyLayer"}
    monkeypatch.setattr(kv, "make_roomy", lambda cache, room: real(cache, 1))  # out of room every other step
    with torch.inference_mode():
        assert decode.decode_batch(gen.model, prompts, cfg, eos_id=2, pad_id=2, generator=None) == want


def test_a_sliding_window_cache_decodes_in_static_batches(tmp_path):
    cfg = tiny_config("mistral")
    cfg.sliding_window = 16
    torch.manual_seed(0)
    model = transformers.MistralForCausalLM(cfg).eval()
    assert not decode.joinable_cache(model)  # its layers keep window state: rows cannot join mid-way
    g = generate.Generator(("m", None), model, "cpu", 256)
    prompts = [[1, 5 + i, 9, 11, 13 + i][: 3 + i % 3] for i in range(5)]
    out = g.generate(prompts, GenerationConfig(max_new_tokens=6, batch_size=2), eos_id=2, pad_id=2)
    assert out == _reference_one_by_one(model, prompts, 6, 2)


def test_training_oom_is_a_one_line_error(tiny_llama, tmp_path, monkeypatch):
    b = backend("llama2", tiny_llama)

    def oom(*a, **k):  # type: ignore[no-untyped-def]
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(recipe, "micro_loss", oom)
    with pytest.raises(BackendError) as e:
        b.fine_tune(job_for(b, tiny_llama, n=4, epochs=1), Ledger(), tmp_path)
    assert "batch_size" in str(e.value) and "gradient_checkpointing" in str(e.value) and "\n" not in str(e.value)


# --------------------------------------------------------------------------------------------------------------
# Mistral on the same engine
# --------------------------------------------------------------------------------------------------------------


def test_mistral_fine_tune_and_generate(tiny_mistral, tmp_path):
    b = backend("mistral", tiny_mistral)
    job = job_for(b, tiny_mistral, template="chat:mistral", n=8, epochs=3)
    ref = b.fine_tune(job, Ledger(), tmp_path)
    log = read_log(tmp_path)
    assert log[-1]["loss"] < log[0]["loss"] - 0.2
    meta = adapters.read_adapter_metadata(Path(ref.adapter_dir))
    assert meta["backend"] == "mistral" and meta["options"]["tokenizer_sha256"]
    out = b.generate(ref, prompts_for(b, 3), GenerationConfig(max_new_tokens=6))
    assert len(out) == 3 and all(isinstance(o, str) for o in out)
    # decoded with mistral-common: re-encoding the prompt ids gives back the same text
    ids = b.prompt_ids(prompts_for(b, 1)[0])
    assert b.decode(ids[1:]) == b.prompt_text(prompts_for(b, 1)[0])


def test_estimate_counts_tokens(tiny_llama):
    b = backend("llama2", tiny_llama)
    job = job_for(b, tiny_llama, n=4, epochs=3)
    est = b.estimate(job)
    n = sum(len(b.render(c).input_ids) for c in job.examples)
    assert est.n_examples == 4 and est.n_tokens == n and est.n_billed_tokens == 3 * n and est.usd == 0.0


# --------------------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------------------


def test_model_id_not_available_offline_is_a_one_line_error(tmp_path):
    b = backend("llama2", Path("meta-llama/not-a-cached-model-xyz"))
    with pytest.raises(BackendError) as e:
        b.generate(b.base_model(), prompts_for(b, 1), GenerationConfig(max_new_tokens=2))
    msg = str(e.value)
    assert "offline" in msg and "huggingface-cli download" in msg and "\n" not in msg


def test_model_directory_without_weights_is_a_one_line_error(tmp_path):
    b = backend("llama2", tmp_path)
    with pytest.raises(BackendError) as e:
        b.generate(b.base_model(), prompts_for(b, 1), GenerationConfig(max_new_tokens=2))
    assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)


def test_missing_local_extra_is_a_one_line_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingExtra) as e:
        models.resolve_device(None)
    assert "pip install 'ptst[local]'" in str(e.value) and "\n" not in str(e.value)


def test_missing_tokenizer_library_is_a_one_line_hint(monkeypatch, tmp_path):
    from ptst.backends import llama2, mistral

    monkeypatch.setitem(sys.modules, "sentencepiece", None)
    with pytest.raises(MissingExtra, match=r"ptst\[local\]"):
        llama2._processor(str(tmp_path / "x.model"))
    monkeypatch.setitem(sys.modules, "mistral_common", None)
    with pytest.raises(MissingExtra, match=r"ptst\[local\]"):
        mistral._tokenizers(str(tmp_path / "y.model"))


def test_options_are_validated():
    with pytest.raises(ValueError, match="batching"):
        BackendSpec(kind="llama2", model="m", batching="sometimes")
    with pytest.raises(ValueError, match="nproc_per_node"):
        BackendSpec(kind="mistral", model="m", nproc_per_node=0)
