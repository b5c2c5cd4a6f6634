#!/bin/bash
# v2 of the shipped adapters (issue 12): facts on, 10 training minutes each on 2 CPU cores.
# Sequential on purpose: two torch jobs on 2 cores slow each other 10-50x. Resumable: a scenario
# whose log ends in "published" is skipped.
cd "$(dirname "$0")/../../.."
out=benchmarks/results/issue12
for s in "$@"; do
  if grep -q "^published" "$out/train_$s.log" 2>/dev/null; then echo "skip $s"; continue; fi
  extra=""
  [ "$s" = news ] && extra="--data-option full_train=true"
  /usr/bin/time -v adapterhub train "$s" --scenario "$s" --max-minutes 10 --eval-every 70 \
      --n-valid 2000 --n-test 6000 $extra > "$out/train_$s.log" 2>&1
done
