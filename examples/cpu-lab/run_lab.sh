#!/usr/bin/env bash
# The whole cpu-lab in one command, from the repository root: the model, stage one, its gate, the merge, stage two,
# and the lab's summary with the headline figure. Every step is resumable (a re-run skips what is done).
#   examples/cpu-lab/run_lab.sh                     # the lab as measured in README.md (about an hour on 2 cores)
#   examples/cpu-lab/run_lab.sh --limit 2           # a smoke run: the first 2 rows of every dataset, both stages
#   examples/cpu-lab/run_lab.sh --out DIR [--limit N] [-- ARGS...]   # ARGS go to both `ptst run`s (e.g. --set ...)
# Environment: PYTHON (default python3, with ptst installed), MODELS (default models/, where get_smollm2.sh puts the
# GGUF file). A stage-one gate that fails is reported and the lab goes on: its numbers are what stage two starts from.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out=runs
limit=()
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --limit) limit=(--limit "$2"); shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "run_lab.sh: unknown argument $1 (use --limit N, --out DIR, -- ARGS for ptst run)" >&2; exit 2 ;;
  esac
done
py="${PYTHON:-python3}"
models="${MODELS:-models}"
step() { echo "== cpu-lab $(date -u +%H:%M:%S) $*" >&2; }

step "model"
gguf="$("$here/get_smollm2.sh" "$models")"
gguf="$(cd "$(dirname "$gguf")" && pwd)/$(basename "$gguf")"   # --set paths resolve against the spec's folder
mkdir -p "$out"
out="$(cd "$out" && pwd)"
step "stage one: align (LoRA), check on held-out prompts"
"$py" -m ptst run "$here/align.yaml" --out "$out/cpu-lab-align" "${limit[@]}" --set "backends.0.model=$gguf" \
  ${extra[@]+"${extra[@]}"}
gate=0
"$py" "$here/lab.py" check "$out/cpu-lab-align" || gate=$?
if [ "$gate" -eq 3 ]; then
  echo "cpu-lab: stage one missed its gate (above); stage two runs on it anyway" >&2
elif [ "$gate" -ne 0 ]; then
  exit "$gate"
fi
step "merge the adapter into a new base"
"$py" -m ptst.backends.local.merge "$out/cpu-lab-align" "$out/cpu-lab-aligned"
step "stage two: the PTST grid"
"$py" -m ptst run "$here/grid.yaml" --out "$out/cpu-lab-grid" "${limit[@]}" --set "backends.0.model=$out/cpu-lab-aligned" \
  ${extra[@]+"${extra[@]}"}
step "summary"
"$py" "$here/lab.py" check --base "$out/cpu-lab-grid" || true
"$py" "$here/lab.py" summary "$out/cpu-lab-grid" --figure "$out/cpu-lab-grid/headline.png"
step "done"
