#!/usr/bin/env bash
# The kept table for jointly trained adapters against the current own adapters, own and base scored
# in the same run, on the merge table's test slices; rows appended to benchmarks/merge/merge.jsonl.
# ALSO: the versions to score (default joint4); SPLIT=valid scores the own adapters' valid slices
# instead (what chooses between versions).
#     ALSO=joint4@v4 bash benchmarks/merge/joint_test.sh > benchmarks/merge/joint_v4_test.log 2>&1
#     SPLIT=valid ALSO=joint4@v4,joint4@v3 bash benchmarks/merge/joint_test.sh > benchmarks/merge/joint_valid.log 2>&1
set -u
source "$(dirname "$0")/common.sh"
cd "$CODE"
echo "== merge bench (joint only, ${SPLIT:-test}) $(date -u +%FT%T)"
python -m adapterhub.bench.merge --recipes "" --split "${SPLIT:-test}" --also "${ALSO:-joint4}" \
    --adapters "$REPO/adapters" --out "$HERE"
echo "== done $(date -u +%FT%T)"
