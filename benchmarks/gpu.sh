#!/usr/bin/env bash
# The GPU benchmark, in one script for a CUDA machine:
#   1. make tierlab importable (pip install -e . when a registry is reachable, else PYTHONPATH=src),
#   2. the CUDA-only tests (no host syncs under set_sync_debug_mode("error"), bf16 by default, MFU,
#      exact resume),
#   3. `tierlab bench precision` on the built-in gpt2-small (124 M parameters, seq 1024), eager,
#   4. the same with --compile,
#   5. the CUDA compile test,
# printing Markdown tables ready for BENCHMARKS.md.  Figures, JSON and PNGs go to $RESULTS.
#
#   bash benchmarks/gpu.sh                      # defaults below
#   BATCH=8 STEPS=30 bash benchmarks/gpu.sh     # smaller batch, more timed steps
#
# Each step has its own time limit so that one hang cannot eat the others' time.
set -uo pipefail
cd "$(dirname "$0")/.."

MODEL=${MODEL:-gpt2-small}
# 32 x 1024 tokens per step: the per-step optimizer update is spread over enough tokens for
# the H100 to reach 42% MFU compiled (39.6% at 16; BENCHMARKS.md). The eager fp32 row needs ~40 GB.
BATCH=${BATCH:-32}
SEQ=${SEQ:-1024}
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-3}
RESULTS=${RESULTS:-${OUT:-gpu-results}}
EXTRA=${EXTRA:-}            # extra bench options, e.g. "--model-arg n_layer=2" for a dry run
mkdir -p "$RESULTS"
source benchmarks/gpu_setup.sh
TIERLAB=("$PY" -m tierlab)

echo "== [${SECONDS}s] CUDA tests (sync-debug hot path, auto precision, MFU, exact resume, bench, validate)"
timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/train/test_cuda.py -k "not compiled" 2>&1 | tee "$RESULTS/tests.txt"

bench() {  # $1: label, rest: extra options
  local label=$1; shift
  echo "== [${SECONDS}s] bench precision: $label"
  timeout "${BENCH_TIMEOUT:-300}" "${TIERLAB[@]}" bench precision --model "$MODEL" --batch-size "$BATCH" \
    --seq-len "$SEQ" --steps "$STEPS" --warmup-steps "$WARMUP" --markdown --json "$RESULTS/bench-$label.json" \
    --png "$RESULTS/bench-$label.png" $EXTRA "$@" 2>&1 | tee "$RESULTS/bench-$label.txt"
}
bench eager
echo "== [${SECONDS}s] overhead against a plain loop, Accelerate and Fabric: tiny-gpt (launch-bound), then gpt2-small"
timeout 120 "$PY" benchmarks/overhead.py --precision bf16 --rounds 3 --steps 60 --window 10 2>&1 | tee "$RESULTS/overhead.txt"
timeout 150 "$PY" benchmarks/overhead.py --precision bf16 --preset gpt2-small --batch-size 8 --seq-len 1024 \
  --rounds 3 --steps 30 --window 5 2>&1 | tee -a "$RESULTS/overhead.txt"
TORCH_LOGS=recompiles bench compile --compile

echo "== [${SECONDS}s] CUDA compile test"
timeout 120 "$PY" -m pytest -q -p no:cacheprovider tests/train/test_cuda.py -k "compiled" 2>&1 | tee -a "$RESULTS/tests.txt"
echo "== [${SECONDS}s] done: $RESULTS"
