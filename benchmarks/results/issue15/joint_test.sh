#!/usr/bin/env bash
# issue 15 (2026-11-29, second session): the kept table on the test slices for the jointly trained
# adapters (joint4@v3: warm-started from the regmean merge, each scenario distilled from its own
# adapter; joint4@v2 beside it), against the current own adapters. Run from a snapshot: SNAP=/tmp/snapN;
# ALSO=joint4@v4 for the next version (joint4_v4_test.log).
set -u
cd "${SNAP:?}"
export PYTHONPATH=$SNAP ADAPTERHUB_DATA=/work/shared/data
echo "== merge bench (joint only) $(date -u +%FT%T)"
python -m adapterhub.bench.merge --recipes "" --also ${ALSO:-joint4@v3,joint4@v2} --out /work/main/benchmarks/results/issue15
echo "== done $(date -u +%FT%T)"
