#!/usr/bin/env bash
# issue 15 (2026-11-29): the kept table on the test slices for cat-sum (the old default) and regmean,
# then issue 11's ranking comparison with an adapter on both sides. Run from a snapshot: SNAP=/tmp/snapN.
set -u
cd "${SNAP:?}"
export PYTHONPATH=$SNAP ADAPTERHUB_DATA=/work/shared/data
echo "== merge bench $(date -u +%FT%T)"
python -m adapterhub.bench.merge --recipes cat-sum,regmean-sum --out /work/main/benchmarks/results/issue15
echo "== ranking (score only) $(date -u +%FT%T)"
python -m adapterhub.bench.training --scenarios music,news,video --modes "" --out /work/main/benchmarks/results/issue11
echo "== done $(date -u +%FT%T)"
