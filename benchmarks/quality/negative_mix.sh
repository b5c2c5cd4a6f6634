#!/usr/bin/env bash
# Which negatives should training draw? The same music run under two negative mixes (the loader's
# own, and half of them swapped for catalog and popular draws), judged on a
# valid set that pools the sampled, catalog and popular protocols (docs/DATA.md). Test is not
# looked at here: the chosen mix's version gets its test figures afterwards (quality/README.md).
#
#     bash benchmarks/quality/negative_mix.sh [SCENARIO] [REGISTRY] [LOG_DIR]
#
# Each run: 300 steps, a check every 75, 50 valid groups per protocol, no time limit; the cards'
# valid figures are printed at the end.
set -euo pipefail
SCENARIO=${1:-music}
REG=${2:-/tmp/negative-mix-registry}
LOGS=${3:-benchmarks/quality/logs}
mkdir -p "$LOGS"
for run in "sampled:sampled" "mixed:sampled=0.5,catalog=0.25,popular=0.25"; do
  tag=${run%%:*} mix=${run#*:}
  python -m adapterhub train "$SCENARIO-$tag" --scenario "$SCENARIO" --registry "$REG" --max-steps 300 --eval-every 75 \
    --patience 100 --n-valid 1000 --n-test 0 --valid-protocols sampled,catalog,popular --negative-mix "$mix" \
    --max-minutes none --force > "$LOGS/negative_mix_${SCENARIO}_$tag.log" 2>&1
done
python - "$REG" "$SCENARIO" <<'PY'
import json, sys
from pathlib import Path
reg, scenario = Path(sys.argv[1]), sys.argv[2]
for card in sorted(reg.glob(f"{scenario}-*/v*/card.json")):
    c = json.loads(card.read_text())
    valid, m = c["metrics"]["valid"], c["primary_metric"]
    print(f"{c['train']['negative_mix']:40s} best step {c['train']['best_step']:4d}  valid {m}: " +
          ", ".join(f"{k} {v[m]:.4f}" for k, v in valid.items() if k in ("adapter", "adapter (fused)", "most-popular",
                                                                         "tag-overlap", "brand-overlap",
                                                                         "category-overlap")))
PY
