#!/bin/bash
# Peak RSS of `adapterhub train` itself (the training benchmark's second measure): batch 8 (the default), real prompts with
# facts (the default), 8 steps, then the usual evaluation on 40 valid and 40 test examples.
#   bash benchmarks/training_speed/train_rss.sh [scenarios...]      (default: music news video; needs ../shared/data)
# Each run publishes into a temporary registry that is removed afterwards.
set -u
export ADAPTERHUB_DATA=${ADAPTERHUB_DATA:-../shared/data}
for s in "${@:-music news video}"; do
  for scenario in $s; do
    reg=$(mktemp -d)
    /usr/bin/time -f "$scenario: peak RSS %M KiB, %e s" adapterhub train "rss$scenario" --scenario "$scenario" \
      --max-steps 8 --eval-every 8 --n-valid 40 --n-test 40 --registry "$reg/adapters" --force \
      > "$reg/log" 2>&1 || { echo "$scenario: failed, log:"; tail -5 "$reg/log"; }
    tail -1 "$reg/log"
    rm -rf "$reg"
  done
done
