#!/usr/bin/env bash
# regmean against cat-sum, both on the parents' full valid splits, as `adapterhub merge` measures
# every merge (the kept figures it writes into the merged card). The current scenario versions are
# copied into a scratch registry, so nothing is published into adapters/.
#     bash benchmarks/merge/regmean_valid.sh > benchmarks/merge/regmean_valid.log 2>&1      # ~15 min on 2 cores
#     METHODS=regmean ALPHA=1.0 bash benchmarks/merge/regmean_valid.sh                       # one regmean at another alpha
set -u
source "$(dirname "$0")/common.sh"
REG=${REG:-/tmp/regmean-valid-registry}
scratch_registry "$REG"
cd "$CODE"
for m in ${METHODS:-regmean cat}; do
  echo "== $m $(date -u +%FT%T)"
  extra=""; [ "$m" = regmean ] && extra="--regmean-alpha ${ALPHA:-0.9}"
  python -m adapterhub merge video news music ecommerce --method "$m" --name "${m}4" --registry "$REG" $extra
done
echo "== done $(date -u +%FT%T)"
