#!/usr/bin/env bash
# Three `tierlab train --precision auto` in a row per batch shape, one fresh cache: the precision line of each
# (each run is stopped with Ctrl-C once it has printed it).  bash benchmarks/auto_three_runs.sh
set -u
TIERLAB=${TIERLAB:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/tierlab}
export TIERLAB_CACHE=$(mktemp -d)
cd "$(mktemp -d)"
for args in "--batch-size 16 --seq-len 128" "--batch-size 4 --seq-len 64" "--batch-size 8 --seq-len 256"; do
  for i in 1 2 3; do
    rm -f out.txt; "$TIERLAB" train $args --max-steps 400 --name "r$(echo $args | tr -d ' -')$i" --no-plots > out.txt 2>&1 &
    pid=$!
    until grep -q "^precision:" out.txt 2>/dev/null || ! kill -0 $pid 2>/dev/null; do sleep 0.2; done
    kill -INT $pid 2>/dev/null; wait $pid 2>/dev/null
    echo "$args run $i: $(grep '^precision:' out.txt)"
  done
done
