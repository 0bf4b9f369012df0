"""GGUF model files (llama.cpp's format) as `model:` of the local backends, through transformers' GGUF support.

A `.gguf` file is read twice, differently:
* `gguf_info` / `gguf_problem` read its header with the `gguf` package (numpy, memory-mapped, no torch): the
  architecture, the quantization type and the chat template. `ptst validate` uses only this, so it stays fast.
* `converted_dir` dequantizes it once into an HF-format folder (config, float32 safetensors, tokenizer files, chat
  template) with `from_pretrained(..., gguf_file=...)`, in a child process (the dequantization's peak memory never
  counts against the run), under `~/.cache/ptst/gguf/<name>-<sha256[:16]>` (or `$PTST_CACHE_DIR/gguf/...`). The
  folder's metadata file is written last: a complete folder is reused by every later load, a torn one redone.
  Everything downstream (tokenizer, chat template, LoRA, generation) then sees an ordinary HF folder.

The file's sha256 and quantization type are part of the backend's identity (every step key) and of the base model's
`ModelRef.meta`: a Q4_1 and a Q8_0 file of one model are different models.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ptst.digests import file_sha256
from ptst.errors import BackendError, first_line

META_FILE = "ptst_gguf.json"  # written last: its presence marks a complete converted folder


class GGUFError(BackendError):
    """A GGUF file that transformers cannot read (architecture, quantization, not a GGUF): a user's fix, exit 2."""

    exit_code = 2


@dataclass(frozen=True)
class GGUFInfo:
    path: str
    architecture: str
    quantization: str  # general.file_type, e.g. Q4_1 (or the tensors' dominant type when the field is absent)
    tensor_types: tuple[str, ...]
    chat_template: str | None


def is_gguf(model: str) -> bool:
    return str(model).lower().endswith(".gguf")


def _field(reader: Any, name: str) -> Any:
    f = reader.fields.get(name)
    if f is None:
        return None
    try:
        return f.contents()
    except Exception:  # noqa: BLE001 — a field gguf cannot decode reads as absent
        return None


@lru_cache(maxsize=8)
def gguf_info(path: str) -> GGUFInfo:
    """The header of a GGUF file (no weights are read). A missing or malformed file is a `GGUFError`.

    The `gguf` reader parses every metadata field, the tokenizer's ~50k-entry vocabulary and merges included (seconds
    of CPU), so what is read is remembered in a small JSON file under the cache, keyed by path, size and mtime."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise GGUFError(f"model {path}: no such GGUF file; fix the path (examples/cpu-lab/get_smollm2.sh fetches one)")
    st = p.stat()
    memo = cache_root() / "headers" / (hashlib.sha256(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
                                       .hexdigest()[:24] + ".json")
    try:
        d = json.loads(memo.read_text())
        return GGUFInfo(d["path"], d["architecture"], d["quantization"], tuple(d["tensor_types"]), d["chat_template"])
    except (OSError, ValueError, KeyError):
        pass
    info = _read_header(p, path)
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(info.__dict__ | {"tensor_types": list(info.tensor_types)}))
        os.replace(tmp, memo)
    except OSError:
        pass  # a read-only cache only costs the next read its time
    return info


def _read_header(p: Path, path: str) -> GGUFInfo:
    try:
        import gguf
    except ImportError as e:
        raise GGUFError(
            f"model {path}: reading GGUF files needs the `gguf` package; pip install 'ptst[local]' (or pip install gguf)"
        ) from e
    try:
        reader = gguf.GGUFReader(str(p))
    except Exception as e:
        raise GGUFError(f"model {path}: not a readable GGUF file ({first_line(e)})") from e
    arch = str(_field(reader, "general.architecture") or "")
    types = tuple(sorted({t.tensor_type.name for t in reader.tensors}))
    ftype = _field(reader, "general.file_type")
    quant = None
    if isinstance(ftype, int):
        try:
            quant = gguf.LlamaFileType(ftype).name.removeprefix("MOSTLY_")
        except ValueError:
            quant = None
    if quant is None:  # the most common tensor type stands for the file
        counts: dict[str, int] = {}
        for t in reader.tensors:
            counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
        quant = max(counts, key=lambda k: counts[k]) if counts else "unknown"
    template = _field(reader, "tokenizer.chat_template")
    return GGUFInfo(str(p), arch, quant, types, str(template) if template else None)


def gguf_problem(path: str, *, need_chat_template: bool = False) -> str | None:
    """Why transformers cannot load this GGUF file (None when it can), from its header alone (no torch)."""
    try:
        info = gguf_info(str(path))
    except GGUFError as e:
        return str(e)
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING  # plain dicts: no torch import

    supported = sorted(k for k in GGUF_CONFIG_MAPPING if k not in ("general", "tokenizer"))
    if info.architecture not in supported:
        return (f"model {path}: GGUF architecture {info.architecture or '(none)'!r} cannot be read by transformers "
                f"(it reads {', '.join(supported)}); use an HF-format folder of this model instead")
    import gguf.quants

    readable = {k.name for k in gguf.quants._type_traits} | {"F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64"}
    bad = [t for t in info.tensor_types if t not in readable]
    if bad:
        return (f"model {path}: quantization {', '.join(bad)} cannot be dequantized by the gguf package "
                f"(file type {info.quantization}); use a Q4_0/Q4_1/Q5/Q8_0/K-quant or F16 file of this model")
    if need_chat_template and not info.chat_template:
        return (f"model {path}: the GGUF file carries no chat template (tokenizer.chat_template); the hf backend "
                "renders through it — use the model's instruct/chat GGUF")
    return None


def gguf_sha256(path: str) -> str:
    return file_sha256(path)


def gguf_identity(path: str) -> dict[str, str]:
    """What a GGUF model adds to the backend's identity and the base model's meta: its bytes and quantization."""
    info = gguf_info(str(path))
    return {"gguf_sha256": gguf_sha256(path), "gguf_quantization": info.quantization,
            "gguf_architecture": info.architecture}


def cache_root() -> Path:
    base = os.environ.get("PTST_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ptst"
    )
    return Path(base) / "gguf"


def converted_dir(path: str) -> Path:
    """The HF-format folder of a GGUF file, converted once (see the module docstring) and reused after."""
    problem = gguf_problem(path)
    if problem is not None:
        raise GGUFError(problem)
    src = Path(path).expanduser().resolve()
    sha = gguf_sha256(str(src))
    dest = cache_root() / f"{src.stem}-{sha[:16]}"
    if (dest / META_FILE).is_file():
        return dest
    from ptst.backends.api import log

    log(f"  converting {src.name} to an HF-format folder once (dequantized to float32): {dest}")
    tmp = dest.with_name(dest.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    from ptst.child import module_command  # isolated: nothing from the working directory runs in the child

    proc = subprocess.run(
        module_command("ptst.backends.local.gguf", str(src), str(tmp), sha),
        check=False, capture_output=True, text=True, env=env,
    )
    if proc.returncode != 0 or not (tmp / META_FILE).is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        lines = [ln for ln in (proc.stderr or "").strip().splitlines() if ln.strip()]
        raise GGUFError(f"model {path}: transformers could not convert this GGUF file "
                        f"({lines[-1][:200] if lines else 'no message'}); use an HF-format folder of this model")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def _convert(src: str, dest: str, sha: str) -> None:
    """Child process: dequantize `src` with transformers and save model, tokenizer and template as an HF folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, name = os.path.dirname(src), os.path.basename(src)
    tok = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    out = Path(dest)
    # The weights are plain float32 tensors now; transformers still tags the model as gguf-quantized, which it
    # refuses to save: drop the tag so the folder is an ordinary float32 checkpoint.
    model.hf_quantizer = None  # type: ignore[assignment]  # transformers' attribute, typed loosely by torch
    model.is_quantized = False  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    info = gguf_info(src)
    meta = {"source": src, "sha256": sha, "quantization": info.quantization, "architecture": info.architecture,
            "tensor_types": list(info.tensor_types), "dtype": "float32"}
    (out / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))




if __name__ == "__main__":
    _convert(sys.argv[1], sys.argv[2], sys.argv[3])
