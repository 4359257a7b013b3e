#!/usr/bin/env bash
# The built-in model against both same-size baselines on Tiny Shakespeare, 3 seeds each side
# (the figures in BENCHMARKS.md, "tierlab compare"). Usage: bash benchmarks/compare.sh [DATA] [STEPS]
set -euo pipefail
DATA=${1:-../shared/data/tinyshakespeare.txt}
STEPS=${2:-300}
OUT=${OUT:-/tmp/tierlab-compare-bench}
for baseline in gpt llama; do
  tierlab compare --data "$DATA" --baseline "$baseline" --seeds 3 --max-steps "$STEPS" --eval-every 50 \
    --log-every 50 --precision fp32 --out "$OUT" --name "tiny-gpt-vs-$baseline" --markdown "$OUT/$baseline.md"
done
