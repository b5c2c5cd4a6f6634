#!/usr/bin/env bash
# The benchmark suite on one CUDA GPU, offline, in at most 6 minutes end to end, from the repo root
# of a copy of the working tree:
#
#     benchmarks/gpu.sh OUT_DIR            # on the GPU machine: ~1B and ~8B random: Llama bases, NF4 first
#     benchmarks/gpu.sh --check OUT_DIR    # dry run on CPU (no GPU): the same set-up, suite selection and
#                                          # result files, on random:small bases, in under 10 minutes
#
# bitsandbytes (NF4/int8) is not on the GPU machine: its wheel travels in .whl/ beside the tree (the
# tracked tree is kept under 20 MB so that the ~43 MB wheel fits the 64 MiB that travel). Fetch it
# once, here, in the repo root (it is ignored by git):
#
#     echo /.whl/ >> .git/info/exclude
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux_2_24_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#         --platform manylinux2014_x86_64 -d .whl bitsandbytes==0.50.2
#
# then run `benchmarks/gpu.sh $OUT` with `.whl` carried (benchmarks/gpu/README.md has the call).
#
# What it does: finds python3; installs the carried wheels and adapterhub itself (from this tree,
# --no-deps) into a temporary folder; checks each import, the torch version and the GPU, and stops
# with its own message and exit code for each; then runs `python -m adapterhub.bench.gpu` (the plan:
# the required rows for the 1B base, then the 8B base, then the other suites while time is left).
# Exit codes: 0 every required row measured; 1 a required row missing (each named, with its suite's
# status or skip reason); 10 no python3; 11 an install failed; 12 cannot import a package; 13 torch
# too old; 14 no CUDA device; 15 bitsandbytes cannot quantize on this GPU.
# OUT_DIR gets at most 8 flat files (what the GPU machine returns): REPORT.md, results.jsonl,
# logs.txt, plots.tar.gz, check.txt, env.txt, gpu_sh.log.
# Knobs (environment): PYTHON (python3), WHEELS (.whl), BUDGET_S (360; --check 540: the whole run),
# SMALL (random:llama-1b), BIG (random:llama-8b), ADAPTERHUB_GIT_SHA (recorded in every row),
# GPU_TESTS=1 (run `pytest -m gpu tests/test_gpu.py` first, inside the budget).
set -uo pipefail

CHECK=0
if [ "${1:-}" = "--check" ]; then CHECK=1; shift; fi
OUT=${1:?usage: benchmarks/gpu.sh [--check] OUT_DIR}
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
start=$(date +%s)
log() { echo "[gpu.sh $(( $(date +%s) - start ))s] $*"; }
fail() { local code=$1; shift; log "FAILED: $*"; exit "$code"; }

run() {
BUDGET_S=${BUDGET_S:-$([ $CHECK = 1 ] && echo 540 || echo 360)}
SMALL=${SMALL:-random:llama-1b}
BIG=${BIG:-random:llama-8b}
WHEELS=${WHEELS:-$REPO/.whl}
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null 2>&1 || fail 10 "no '$PY' on PATH (set PYTHON=/path/to/python3)"
log "$([ $CHECK = 1 ] && echo 'dry run (--check) on CPU' || echo 'GPU run'); python: $(command -v "$PY"); budget ${BUDGET_S}s"

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT  # the installed copy, the caches, the suites' own files: OUT has what matters
SITE=$TMP/site
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export ADAPTERHUB_CACHE=$TMP/cache
SOURCE=$(cd "$REPO" && find adapterhub -name '*.py' | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-12)
export ADAPTERHUB_GIT_SHA=${ADAPTERHUB_GIT_SHA:-$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "source-$SOURCE")}

# 1. the carried wheels (bitsandbytes), then adapterhub from this tree, both into $SITE
# Without a working pip (or setuptools, which building adapterhub needs), each falls back to what pip
# would put there: a wheel is a zip of the files to unpack into $SITE; adapterhub is pure Python.
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  log "installing $(cd "$WHEELS" && ls *.whl | tr '\n' ' ')"
  if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --target "$SITE" "$WHEELS"/*.whl; then
    log "pip could not install the wheels (above): unpacking them into $SITE instead"
    for w in "$WHEELS"/*.whl; do "$PY" -m zipfile -e "$w" "$SITE" || fail 11 "cannot unpack $w (a wheel is a zip file)"; done
  fi
else
  log "no wheels in $WHEELS: bitsandbytes must already be installed (the GPU machine has none: see this script's header)"
fi
mkdir -p "$TMP/src" && cp -r "$REPO/adapterhub" "$REPO/pyproject.toml" "$REPO/README.md" "$TMP/src/"
find "$TMP/src" -name __pycache__ -prune -exec rm -rf {} +
if ! "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --disable-pip-version-check --target "$SITE" "$TMP/src"; then
  log "pip could not install adapterhub (above; it builds with setuptools>=68): copying the package into $SITE instead"
  cp -r "$TMP/src/adapterhub" "$SITE/" || fail 11 "cannot copy adapterhub into $SITE"
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
cd "$TMP"  # run the installed copy, not the tree in the working folder

# 2. imports, versions, the GPU: each problem its own message and exit code
"$PY" - "$CHECK" "$SITE" > "$OUT/env.txt" <<'EOF'
import importlib, sys
check, site = sys.argv[1] == "1", sys.argv[2]
have = {}
for name in ("torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "filelock", "tqdm",
             "adapterhub", "bitsandbytes"):
    try:
        have[name] = importlib.import_module(name)
    except Exception as e:  # ImportError, or a library that fails while loading
        print(f"cannot import {name}: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(12)
    print(f"{name} {getattr(have[name], '__version__', '?')} ({have[name].__file__})")
if check:
    print("installed copy used" if have["adapterhub"].__file__.startswith(site) else "NOT the installed copy")
torch = have["torch"]
if tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) < (2, 5):
    print(f"torch {torch.__version__} is too old: packed attention needs enable_gqa (torch >= 2.5)", file=sys.stderr)
    sys.exit(13)
print(f"python {sys.version.split()[0]}; torch.version.cuda {torch.version.cuda}")
if check:
    sys.exit(0)
if not torch.cuda.is_available():
    print(f"torch {torch.__version__} (CUDA build: {torch.version.cuda}) sees no CUDA device "
          f"(device_count {torch.cuda.device_count()})", file=sys.stderr)
    sys.exit(14)
print(f"gpu {torch.cuda.get_device_name(0)}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.1f} GiB")
try:
    w = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16)
    q, state = have["bitsandbytes"].functional.quantize_4bit(w, quant_type="nf4")
    err = (have["bitsandbytes"].functional.dequantize_4bit(q, state) - w).abs().mean().item()
    print(f"bitsandbytes NF4 on the GPU: round trip mean error {err:.4f}")
except Exception as e:
    print(f"bitsandbytes cannot quantize on this GPU: {type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(15)
EOF
rc=$?
cat "$OUT/env.txt"
case $rc in
  0) ;;
  12) fail 12 "a package cannot be imported (above); bitsandbytes comes from the carried wheel, the rest from the machine" ;;
  13) fail 13 "torch is too old (above)" ;;
  14) fail 14 "no CUDA device (above): run on the GPU machine, or pass --check for the CPU dry run" ;;
  15) fail 15 "bitsandbytes is installed but cannot run NF4 on this GPU (above)" ;;
  *) fail 12 "the import check itself failed (exit $rc)" ;;
esac
{ echo "source sha256 (adapterhub/*.py): $SOURCE; git: $ADAPTERHUB_GIT_SHA"; nvidia-smi -L 2>/dev/null; } >> "$OUT/env.txt"

# optional: the GPU-marked tests first (NF4 against the model's own forward, packed vs plain, a QLoRA
# step, the fast attention kernels); their output is in gpu_sh.log, their time comes out of the budget
if [ "${GPU_TESTS:-0}" = 1 ] && [ $CHECK = 0 ]; then
  if "$PY" -c "import pytest" 2>/dev/null; then
    log "GPU tests: pytest -m gpu tests/test_gpu.py"
    (cd "$REPO" && timeout 120 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py) \
      || log "GPU tests FAILED or ran past 120 s (above); the benchmark runs on"
  else
    log "GPU tests not run: cannot import pytest here (carry its wheel in $WHEELS); the benchmark runs on"
  fi
fi

# 3. the plan: the suites, the report, the required rows, the result files
left=$(( BUDGET_S - ($(date +%s) - start) - 30 ))  # 30 s: the report and the result files
log "suites: ${left}s; bases $([ $CHECK = 1 ] && echo 'random:small (dry run)' || echo "$SMALL, $BIG")"
"$PY" -m adapterhub.bench.gpu --out "$OUT" --budget-s "$left" --small "$SMALL" --big "$BIG" \
  --work "$TMP/results" $([ $CHECK = 1 ] && echo --check)
rc=$?
[ $rc = 0 ] || fail 1 "required rows missing or the result files too many (above; $OUT/check.txt, $OUT/logs.txt)"
log "done in $(( $(date +%s) - start )) s; $(ls "$OUT" | wc -l) files in $OUT"
}

run 2>&1 | tee "$OUT/gpu_sh.log"
exit "${PIPESTATUS[0]}"
