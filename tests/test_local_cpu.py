"""The local engine on a CPU: bfloat16 where the CPU multiplies it (base in bf16, LoRA and AdamW state in fp32), the
dtype as keyed, and threads sized to the free cores.

bf16 runs here whatever this machine's CPU is (explicit `dtype: bfloat16`; `auto` is tested with the detection
stubbed both ways), on tiny models built from config. Expected values: hand-computed core counts, torch's own dtypes,
`model.generate` in bf16 for decoding, the fp32 run of the same step for the loss.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from ptst.backends.local import cpu, generate, models, train
from ptst.backends.local.adapters import read_adapter_metadata
from ptst.backends.local.recipe import micro_loss
from ptst.errors import UsageError
from ptst.types import GenerationConfig, Hyperparameters, LoraSpec


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("tiny-cpu")
    torch.manual_seed(7)
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   bos_token_id=1, eos_token_id=2, initializer_range=0.1)
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def examples(n: int = 4) -> list[tuple[list[int], list[int]]]:
    """Prompt (not supervised) + answer + EOS, token ids of the tiny vocabulary."""
    out = []
    for i in range(n):
        prompt = [1, *range(10 + i, 20 + 2 * i)]
        answer = [50 + i, 60 + i, 70 + i, 2]
        out.append((prompt + answer, [-100] * len(prompt) + answer))
    return out


def settings(model: Path, dtype: str, **hp) -> train.TrainSettings:  # type: ignore[no-untyped-def]
    h = Hyperparameters(**{"epochs": 1, "batch_size": 4, "learning_rate": 1e-2, "lr_scheduler": "constant",
                           "warmup_ratio": 0.0, "lora": LoraSpec(r=4, alpha=8, dropout=0.0), **hp})
    return train.TrainSettings(model=str(model), seed=0, hyperparameters=h, dtype=dtype, device="cpu", threads=1)


# --- dtype: what auto means, what is keyed -----------------------------------------------------------------------
def test_auto_is_bf16_exactly_where_the_cpu_multiplies_it(monkeypatch):
    monkeypatch.setattr(cpu, "native_bf16", lambda: True)
    assert models.resolved_dtype_name("auto", "cpu") == "bfloat16"
    assert models.resolve_dtype("auto", "cpu") is torch.bfloat16
    monkeypatch.setattr(cpu, "native_bf16", lambda: False)
    assert models.resolved_dtype_name("auto", "cpu") == "float32"
    assert models.resolved_dtype_name("auto", "cuda:0") == "bfloat16"
    assert models.resolved_dtype_name("float32", "cpu") == "float32"  # explicit: as written, whatever the CPU


def test_native_bf16_reads_the_cpu_flags_without_torch_probe(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", None, raising=False)
    monkeypatch.setattr(cpu, "cpu_flags", lambda: ["fpu", "avx2", "avx512f", "avx512_bf16"])
    cpu.native_bf16.cache_clear()
    try:
        assert cpu.native_bf16() is True
        cpu.native_bf16.cache_clear()
        monkeypatch.setattr(cpu, "cpu_flags", lambda: ["fpu", "avx2", "avx512f", "avx512_vnni"])
        assert cpu.native_bf16() is False
    finally:
        cpu.native_bf16.cache_clear()


def test_keyed_dtype_keeps_existing_keys_and_keys_new_bf16_apart(monkeypatch, tiny):
    from ptst.backends.base import BackendSpec, create_backend

    def keyed(dtype: str) -> str:
        b = create_backend(BackendSpec(kind="hf", model=str(tiny), device="cpu", dtype=dtype))
        return b.keyed_dtype()

    monkeypatch.setattr(cpu, "native_bf16", lambda: False)
    assert keyed("auto") == "auto"  # what auto always meant on a CPU: keys written before stand
    assert keyed("float32") == "float32" and keyed("bfloat16") == "bfloat16"
    monkeypatch.setattr(cpu, "native_bf16", lambda: True)
    assert keyed("auto") == "bfloat16"  # other numerics: another key, the one of an explicit bfloat16
    assert keyed("float32") == "float32"


# --- threads ------------------------------------------------------------------------------------------------------
def test_free_cores_are_the_allowed_less_the_others_load():
    assert cpu.free_cores(allowed=2, load=0.0) == 2
    assert cpu.free_cores(allowed=2, load=0.4) == 2
    assert cpu.free_cores(allowed=2, load=0.6) == 1
    assert cpu.free_cores(allowed=2, load=1.2) == 1
    assert cpu.free_cores(allowed=2, load=9.0) == 1  # never none
    assert cpu.free_cores(allowed=16, load=3.5) == 12


def test_own_load_counts_what_the_process_did_before_its_first_call(monkeypatch):
    """The first call after import (a training job right after a GGUF conversion) must subtract the conversion's own
    CPU time from the load average: it once read 0 and gave the job 1 thread of 2."""
    clock = {"wall": 100.0, "cpu": 50.0}
    monkeypatch.setattr(cpu, "_times", lambda: (clock["wall"], clock["cpu"]))
    monkeypatch.setattr(cpu, "_LAST", [(40.0, 0.0)])  # import: 60 s ago; busy on one core for 50 s of them
    assert cpu.own_load() == pytest.approx(50 / 60)
    clock.update(wall=110.0, cpu=70.0)  # then two cores for 10 s
    assert cpu.own_load() == pytest.approx(2.0)


def test_thread_count_option_then_environment_then_free_cores(monkeypatch):
    monkeypatch.setenv(cpu.THREADS_ENV, "3")
    assert cpu.thread_count(5) == 5
    assert cpu.thread_count(None) == 3
    monkeypatch.setenv(cpu.THREADS_ENV, "many")
    with pytest.raises(UsageError, match="PTST_THREADS='many'"):
        cpu.thread_count(None)
    monkeypatch.delenv(cpu.THREADS_ENV)
    monkeypatch.setattr(cpu, "free_cores", lambda: 1)
    assert cpu.thread_count(None) == 1


def test_apply_threads_sets_torchs_pool_and_restores(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert cpu.apply_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# --- bf16 training ------------------------------------------------------------------------------------------------
def test_bf16_base_keeps_lora_and_adamw_state_in_fp32(tiny, tmp_path):
    s = settings(tiny, "bfloat16")
    model = train.build_lora_model(s, "cpu")
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    trainable = {p.dtype for p in model.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trainable == {torch.float32}
    del model
    summary = train.train_lora(s, examples(), tmp_path / "job")
    assert summary["dtype"] == "bfloat16" and summary["threads"] == 1
    meta = read_adapter_metadata(tmp_path / "job" / "adapter")
    assert meta is not None and meta["train"]["dtype"] == "bfloat16"
    assert meta["dtype"] == "bfloat16"  # the base's dtype, recorded beside the adapter


def test_adamw_state_is_fp32_over_a_bf16_base(tiny):
    s = settings(tiny, "bfloat16")
    model = train.build_lora_model(s, "cpu")
    from ptst.backends.local.data import collate

    kw, targets, _ = collate(examples(), "packed", 2, "cpu")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    loss, _ = micro_loss(model, kw, targets)
    loss.backward()
    opt.step()
    states = [opt.state[p] for p in params]
    assert states and all(st["exp_avg"].dtype == torch.float32 and st["exp_avg_sq"].dtype == torch.float32
                          for st in states)


def test_bf16_step_losses_are_within_tolerance_of_fp32(tiny, tmp_path):
    """Two steps (the second after one update): bf16 base within 2% of fp32 (bf16 keeps 8 bits of mantissa, about
    0.4% per rounding; the tiny model's loss is ~5.5, so 2% is ~0.1 nats)."""
    runs = {}
    for dtype in ("float32", "bfloat16"):
        runs[dtype] = train.train_lora(settings(tiny, dtype, epochs=2), examples(), tmp_path / dtype, resume=False)
    f, b = runs["float32"], runs["bfloat16"]
    assert b["first_loss"] == pytest.approx(f["first_loss"], rel=0.02)
    assert b["final_loss"] == pytest.approx(f["final_loss"], rel=0.02)
    assert f["final_loss"] < f["first_loss"] and b["final_loss"] < b["first_loss"]  # both learn


# --- bf16 generation ----------------------------------------------------------------------------------------------
def test_bf16_greedy_decoding_equals_model_generate_in_bf16(tiny):
    gen = generate.Generator.load(str(tiny), None, dtype="bfloat16", device="cpu", threads=1)
    assert gen.model.dtype == torch.bfloat16
    prompts = [[1, 5, 9, 11, 13], [1, 7, 8], [1, 30, 31, 32, 33, 34, 35], [1, 100]]
    cfg = GenerationConfig(max_new_tokens=10, batch_size=4)
    ours = gen.generate(prompts, cfg, eos_id=2, pad_id=0)
    ref = []
    with torch.inference_mode():
        for p in prompts:  # one by one: no padding, the independent reference
            row = gen.model.generate(torch.tensor([p]), max_new_tokens=10, do_sample=False, eos_token_id=2,
                                     pad_token_id=0)[0, len(p):].tolist()
            ref.append(row[: row.index(2)] if 2 in row else row)
    gen.close()
    assert ours == ref


_HEAP_PROBE = """
import ctypes, sys
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "capped":
    from ptst.backends.local.cpu import cap_heap_growth
    assert cap_heap_growth()
libc.free(libc.malloc(8 << 20))      # an 8 MiB block freed: glibc raises its threshold to 8 MiB unless pinned
held = libc.malloc(2 << 20)          # then a 2 MiB one: mapped whole, or carved from the heap
print(libc.mallinfo2().hblkhd >= (2 << 20))
"""


@pytest.mark.skipif(not Path("/lib/x86_64-linux-gnu/libc.so.6").exists() and not Path("/lib64/libc.so.6").exists()
                    and not Path("/usr/lib/libc.so.6").exists(), reason="needs glibc")
def test_capped_heap_maps_large_blocks_whole_after_a_larger_one_was_freed():
    """glibc's own counters (mallinfo2's bytes in mapped blocks), in fresh processes: uncapped, a 2 MiB block after an
    8 MiB one was freed comes from the heap (where freed space fragments and stays); capped, it is mapped whole."""
    run = [sys.executable, "-c", _HEAP_PROBE]
    assert subprocess.run([*run, "plain"], capture_output=True, text=True, check=True).stdout.strip() == "False"
    assert subprocess.run([*run, "capped"], capture_output=True, text=True, check=True).stdout.strip() == "True"


_TRIM_PROBE = """
import ctypes, os, sys
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
from ptst.backends.local.cpu import cap_heap_growth, trim_heap
cap_heap_growth()
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * page
blocks = [libc.malloc(64 << 10) for _ in range(4000)]   # 250 MiB in heap blocks under the 1 MiB mmap threshold
for b in blocks:
    ctypes.memset(b, 1, 64 << 10)                       # touched: resident
last = libc.malloc(64 << 10)                            # above them: the freed blocks are not the heap's top
before = rss()
for b in blocks:
    libc.free(b)
kept = rss()
trimmed = trim_heap()
after = rss()
print(trimmed, (before - kept) >> 20, (kept - after) >> 20)
"""


@pytest.mark.skipif(not Path("/lib/x86_64-linux-gnu/libc.so.6").exists() and not Path("/lib64/libc.so.6").exists()
                    and not Path("/usr/lib/libc.so.6").exists(), reason="needs glibc")
def test_trimming_hands_freed_heap_pages_back_to_the_system():
    """The kernel's count of resident pages, in a fresh process: 250 MiB of small blocks freed below a live one stay
    resident (free returns only the heap's top), and trim_heap hands them back."""
    out = subprocess.run([sys.executable, "-c", _TRIM_PROBE], capture_output=True, text=True, check=True).stdout
    trimmed, freed_by_free, freed_by_trim = out.split()
    assert trimmed == "True"
    assert int(freed_by_free) < 50 and int(freed_by_trim) > 200
