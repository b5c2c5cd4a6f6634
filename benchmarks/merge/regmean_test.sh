#!/usr/bin/env bash
# The kept table on the test slices (adapterhub.bench.merge's CAPS) for cat-sum and regmean-sum;
# rows appended to benchmarks/merge/merge.jsonl.
#     bash benchmarks/merge/regmean_test.sh > benchmarks/merge/regmean_test.log 2>&1        # ~20 min on 2 cores
set -u
source "$(dirname "$0")/common.sh"
cd "$CODE"
echo "== merge bench $(date -u +%FT%T)"
python -m adapterhub.bench.merge --recipes cat-sum,regmean-sum --adapters "$REPO/adapters" --out "$HERE"
echo "== done $(date -u +%FT%T)"
