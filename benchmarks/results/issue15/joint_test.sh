#!/usr/bin/env bash
# issue 15: the kept table for the jointly trained adapters against the current own adapters, own
# and base scored in the same run. Run from a snapshot: SNAP=/tmp/snapN. ALSO=joint4@v4 (default
# joint4@v3,joint4@v2) for other versions; SPLIT=valid scores the own adapters' valid slices instead
# of test (what chooses between versions: joint_valid.log).
set -u
cd "${SNAP:?}"
export PYTHONPATH=$SNAP ADAPTERHUB_DATA=/work/shared/data
echo "== merge bench (joint only, ${SPLIT:-test}) $(date -u +%FT%T)"
python -m adapterhub.bench.merge --recipes "" --split ${SPLIT:-test} --also ${ALSO:-joint4@v3,joint4@v2} \
    --out /work/main/benchmarks/results/issue15
echo "== done $(date -u +%FT%T)"
