#!/usr/bin/env bash
# The benchmark suite on one CUDA GPU, end to end, offline, in <= 8 minutes:
#
#     benchmarks/gpu.sh OUT_DIR
#
# Needs torch (CUDA build), transformers, peft, accelerate; bitsandbytes is installed from a local
# wheel folder (wheels/ or shared/wheels/ in the repo, or $WHEELS) when it is missing, and NF4 is
# left out when it cannot be. No model files: the bases are `random:` weights of real shapes.
#   1. random:llama-1b (SMALL): every suite (base memory per quant, adapter sizes, cold load /
#      switch vs 1..64 resident adapters and mixed batches vs PEFT, forward throughput vs PEFT,
#      ranking, LoRA/QLoRA training) in bf16 and NF4;
#   2. random:llama-3b (BIG; BIG=random:llama-8b where time allows): base memory, forward, ranking
#      and training in bf16 and NF4.
# Everything it measures goes to OUT_DIR: <suite>.jsonl, logs/, gpu.txt, REPORT.md (+ PNGs when
# matplotlib is installed; otherwise rebuild them later with `adapterhub bench report --out OUT_DIR`).
# Knobs (environment): SMALL, BIG, BUDGET_SMALL_S (240), BUDGET_BIG_S (140), DEVICE (cuda; cpu only
# to dry-run this script), WHEELS.
set -uo pipefail

OUT=${1:?usage: benchmarks/gpu.sh OUT_DIR}
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
DEVICE=${DEVICE:-cuda}
SMALL=${SMALL:-random:llama-1b}
BIG=${BIG:-random:llama-3b}
BUDGET_SMALL_S=${BUDGET_SMALL_S:-240}
BUDGET_BIG_S=${BUDGET_BIG_S:-140}
PY=${PYTHON:-python}
start=$(date +%s)
log() { echo "[gpu.sh $(( $(date +%s) - start ))s] $*"; }

export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"   # the repo copy need not be pip-installed
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export ADAPTERHUB_CACHE=${ADAPTERHUB_CACHE:-$(mktemp -d)}
export ADAPTERHUB_GIT_SHA=${ADAPTERHUB_GIT_SHA:-$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)}

if [ "$DEVICE" = cuda ]; then
  if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "error: torch sees no CUDA device here; run on the GPU machine (or DEVICE=cpu to dry-run)" >&2
    exit 2
  fi
  { nvidia-smi -L; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; } > "$OUT/gpu.txt" 2>&1 || true
fi

if ! $PY -c "import bitsandbytes" 2>/dev/null; then
  for dir in ${WHEELS:-} "$REPO/wheels" "$REPO/shared/wheels" ./wheels; do
    if [ -d "$dir" ]; then
      log "installing bitsandbytes from $dir"
      $PY -m pip install --quiet --no-index --find-links "$dir" bitsandbytes && break
    fi
  done
fi
QUANTS_SMALL=""                      # each suite's defaults: bf16 + nf4 (base memory: fp32, bf16, nf4, int8)
QUANTS_BIG="bf16,nf4"
if ! $PY -c "
import importlib, sys
have = {}
for name in ('torch', 'transformers', 'peft', 'accelerate', 'bitsandbytes'):
    try:
        have[name] = importlib.import_module(name).__version__
    except ImportError:
        have[name] = None
print(' | '.join(f'{k} {v or \"MISSING\"}' for k, v in have.items()))
sys.exit(0 if have['bitsandbytes'] else 1)
"; then
  log "bitsandbytes is not installed and no wheels/ folder has it: bf16 only (no NF4/int8)"
  QUANTS_SMALL="bf16"
  QUANTS_BIG="bf16"
fi

log "1/3 $SMALL: all suites, budget ${BUDGET_SMALL_S}s"
$PY -m adapterhub.bench run --base "$SMALL" --device "$DEVICE" --out "$OUT" --budget-s "$BUDGET_SMALL_S" --no-report \
  ${QUANTS_SMALL:+--quants "$QUANTS_SMALL"} || log "some $SMALL suites failed (see $OUT/logs)"

log "2/3 $BIG: base, forward, ranking, train, budget ${BUDGET_BIG_S}s"
$PY -m adapterhub.bench run --base "$BIG" --device "$DEVICE" --out "$OUT" --budget-s "$BUDGET_BIG_S" --no-report \
  --only base,forward,ranking,train --quants "$QUANTS_BIG" || log "some $BIG suites failed (see $OUT/logs)"

log "3/3 report"
PLOTS=""
$PY -c "import matplotlib" 2>/dev/null || PLOTS="--no-plots"
$PY -m adapterhub.bench report --out "$OUT" $PLOTS
log "done in $(( $(date +%s) - start )) s; results in $OUT"
