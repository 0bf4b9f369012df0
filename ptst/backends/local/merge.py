"""A fine-tuned model as a new base: a run's LoRA adapter merged into its base weights, saved as an HF-format folder.

Multi-stage experiments (align a model, then run the PTST grid on the aligned model) need the first stage's result as
the second stage's `model:`. `merge_run` finds the adapter a run trained (or takes one adapter folder), merges it
into a float32 copy of its base model (peft `merge_and_unload`), and writes config, safetensors, the base's tokenizer
files and chat template, and `ptst_merged.json` last (base model, adapter sha256, job key). A folder whose metadata
names the same adapter bytes is reused: a re-run costs nothing.

The metadata file is also the model's identity: the local backends put its adapter sha256 into every step key
(`merged_identity`), so a second stage keyed on a merged folder is redone when (and only when) the first stage
produced a different adapter.

    python -m ptst.backends.local.merge RUN_DIR_OR_ADAPTER OUT_DIR
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from ptst.backends.local.adapters import ADAPTER_DIR, read_adapter_metadata
from ptst.errors import UsageError

MERGED_FILE = "ptst_merged.json"
_COPIED = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
           "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
           "generation_config.json")


def find_adapter(source: Path) -> Path:
    """`source` itself when it is a complete adapter, else the single complete adapter of a run folder."""
    if read_adapter_metadata(source) is not None:
        return source
    found = sorted(p for p in (source / "models").glob(f"*/{ADAPTER_DIR}") if read_adapter_metadata(p) is not None)
    if len(found) != 1:
        raise UsageError(f"{source}: expected one finished adapter (an adapter folder, or a run with one trained model "
                         f"under models/KEY/{ADAPTER_DIR}), found {len(found)}")
    return found[0]


def merged_identity(model: str) -> dict[str, Any] | None:
    """What a merged folder adds to the backend's identity (None for any other model)."""
    p = Path(model).expanduser() / MERGED_FILE
    if not p.is_file():
        return None
    meta = json.loads(p.read_text())
    return {"merged_adapter_sha256": meta.get("adapter_sha256"), "merged_base": meta.get("base_identity")}


def merge_run(source: str | Path, out: str | Path) -> Path:
    """Merge the adapter of `source` into its base model as the folder `out` (reused when already that merge)."""
    adapter = find_adapter(Path(source))
    meta = read_adapter_metadata(adapter) or {}
    sha = hashlib.sha256((adapter / "adapter_model.safetensors").read_bytes()).hexdigest()
    out = Path(out)
    done = out / MERGED_FILE
    if done.is_file() and json.loads(done.read_text()).get("adapter_sha256") == sha:
        return out
    import torch
    from peft import PeftModel

    from ptst.backends.local.adapters import quiet_peft
    from ptst.backends.local.models import load_causal_lm, local_model_dir

    base_model = str(meta["base_model"])
    base_dir = local_model_dir(base_model)
    model = load_causal_lm(base_model, dtype=torch.float32, device="cpu", attn_implementation=None)
    with quiet_peft():
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    for name in _COPIED:
        if (base_dir / name).is_file():
            shutil.copy2(base_dir / name, tmp / name)
    record = {"base_model": base_model, "base_identity": meta.get("options", {}), "adapter": str(adapter),
              "adapter_sha256": sha, "job_key": meta.get("job_key"), "train_template": meta.get("train_template"),
              "seed": meta.get("seed"), "train": meta.get("train", {})}
    (tmp / MERGED_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m ptst.backends.local.merge RUN_DIR_OR_ADAPTER OUT_DIR")
    try:
        print(merge_run(sys.argv[1], sys.argv[2]))
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
