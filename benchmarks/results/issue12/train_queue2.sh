#!/bin/bash
# After train_v2.sh video music ecommerce: news (all impressions in train) and the custom-dataset
# check (its data written outside the repo by benchmarks/custom_dataset.py).
cd "$(dirname "$0")/../../.."
out=benchmarks/results/issue12
while pgrep -f "train_v2.sh" > /dev/null; do sleep 20; done
run() { log=$1; shift; grep -q "^published" "$out/$log" 2>/dev/null && return; /usr/bin/time -v "$@" > "$out/$log" 2>&1; }
run train_news.log adapterhub train news --scenario news --max-minutes 10 --eval-every 100 --n-valid 2000 --n-test 6000 \
    --data-option full_train=true
[ -d /tmp/custom-movies ] || python benchmarks/custom_dataset.py /tmp/custom-movies
run train_custom_movies.log adapterhub train movies --scenario movies --format jsonl --data /tmp/custom-movies \
    --registry /tmp/custom-registry --max-minutes 10 --eval-every 100 --n-valid 2000 --n-test 2000
# Planned next, not run in this session (no CPU time left): video without sampled negatives
# run train_video_v3.log adapterhub train video --scenario video --max-minutes 10 --eval-every 15 --negatives 0 \
#     --listwise-weight 0 --n-valid 2000 --n-test 6000
