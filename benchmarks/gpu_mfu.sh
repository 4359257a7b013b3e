#!/usr/bin/env bash
# Issue 22's GPU benchmark, one call of under ten minutes on an H100/H200:
#   1. the CUDA tests and the new paths' tests on the GPU (chunked loss, attention kernels, fp8),
#   2. gpt2-small (124 M, seq 1024) bf16 + --compile at batch 16: today's setting (flash attention),
#      then each lever on its own -- --attention-backend auto (cuDNN first), --chunked-loss, the larger
#      batch the chunked loss makes room for, --compile-mode reduce-overhead (CUDA graphs),
#   3. fp8 against bf16 (both compiled) on gpt2-small and on a 1.3 B model (24 layers x 2048),
#   4. --batch-size auto on gpt2-small,
# most important first: if the ten minutes run out, the rows that finished are in $RESULTS.
# each row a `tierlab bench precision` table (median step time, tokens/s, peak memory, MFU, and the
# validation loss after the same steps: the "same maths" check).  Figures go to $RESULTS.
#
#   bash benchmarks/gpu_mfu.sh
#   STEPS=20 bash benchmarks/gpu_mfu.sh
#
# fp8 needs torchao; the GPU machine has no network, so carry a wheel along:
#   pip download --no-deps -d benchmarks/wheels torchao   (benchmarks/wheels/ is git-ignored)
# and pass carry=["benchmarks/wheels"].  Each step has its own time limit.
set -uo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-10}
WARMUP=${WARMUP:-3}
RESULTS=${RESULTS:-${OUT:-gpu-results}}
mkdir -p "$RESULTS"
source benchmarks/gpu_setup.sh
if ! "$PY" -c "import torchao" 2>/dev/null && ls benchmarks/wheels/torchao-*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-deps --no-index benchmarks/wheels/torchao-*.whl || echo "torchao did not install"
fi
"$PY" -c "import torchao; print('torchao', torchao.__version__)" 2>/dev/null || echo "no torchao: the fp8 rows say why"
TIERLAB=("$PY" -m tierlab)

echo "== [${SECONDS}s] tests on the GPU"
timeout 150 "$PY" -m pytest -q -p no:cacheprovider -n 0 tests/train/test_cuda.py tests/train/test_chunked_loss.py \
  tests/train/test_attention.py tests/train/test_fp8.py -k "not compiled" 2>&1 | tail -15 | tee "$RESULTS/tests.txt"

bench() {  # $1: label, $2: time limit (s), rest: bench options
  local label=$1 limit=$2; shift 2
  echo "== [${SECONDS}s] $label"
  timeout "$limit" "${TIERLAB[@]}" bench precision --steps "$STEPS" --warmup-steps "$WARMUP" --markdown --png "" \
    --json "$RESULTS/$label.json" "$@" 2>&1 | grep -v "^round" | tail -12 | tee "$RESULTS/$label.txt"
}
GPT2=(--model gpt2-small --seq-len 1024 --compile)
# Before: torch's own SDPA order (flash first on an H100) -- the setting of the 42.0% MFU figure.
bench bf16-b16-flash 100 "${GPT2[@]}" --batch-size 16 --precisions bf16 --attention-backend flash
bench bf16-b16-auto 90 "${GPT2[@]}" --batch-size 16 --precisions bf16   # auto: cuDNN first on Hopper
bench bf16-b16-chunked 90 "${GPT2[@]}" --batch-size 16 --precisions bf16 --chunked-loss
bench bf16-b32-chunked 100 "${GPT2[@]}" --batch-size 32 --precisions bf16 --chunked-loss
bench fp8-gpt2-b16 120 "${GPT2[@]}" --batch-size 16 --precisions bf16,fp8
bench fp8-1.3b-b8 150 --model gpt2-small --model-arg n_layer=24 --model-arg d_model=2048 --model-arg n_head=16 \
  --seq-len 1024 --compile --batch-size 8 --precisions bf16,fp8
bench bf16-b16-graphs 120 "${GPT2[@]}" --batch-size 16 --precisions bf16 --compile-mode reduce-overhead
echo "== [${SECONDS}s] --batch-size auto on gpt2-small (bf16, global batch 64)"
timeout 120 "${TIERLAB[@]}" train --model gpt2-small --seq-len 1024 --batch-size auto --global-batch-size 64 \
  --precision bf16 --max-steps 3 --eval-every 0 --no-plots --out "$RESULTS/runs" --name auto 2>&1 \
  | grep -E "batch size|global batch|error" | tee "$RESULTS/batch-auto.txt"
echo "== [${SECONDS}s] done: $RESULTS"
