#!/usr/bin/env bash
# The GPU checks that fit a short device lease (about 8 minutes on an H100/H200), in one script:
#   1. the CUDA hot-path tests (no host sync under set_sync_debug_mode("error") in fp32, tf32,
#      bf16, fp16 with skips; exact resume on CUDA),
#   2. benchmarks/overhead.py on the launch-bound tiny-gpt (tierlab vs a plain loop, Accelerate, Fabric),
#      then benchmarks/profile_step.py (where each side's step time goes, fp16 and bf16),
#   3. bf16 MFU of the built-in gpt2-small (124 M, seq 1024) with --compile, for each BATCH:MODE
#      (batch size, torch.compile mode) in $CONFIGS,
# printing one summary line per MFU configuration.  benchmarks/gpu.sh is the full run (every
# precision, eager and compiled).  Figures, JSON and PNGs go to $RESULTS.
#
#   bash benchmarks/gpu_quick.sh
#   CONFIGS="16:default 32:max-autotune-no-cudagraphs" bash benchmarks/gpu_quick.sh
set -uo pipefail
cd "$(dirname "$0")/.."

CONFIGS=${CONFIGS:-16:default 32:default}
STEPS=${STEPS:-20}
RESULTS=${RESULTS:-${OUT:-gpu-results}}
EXTRA=${EXTRA:-}            # extra bench options, e.g. "--model-arg n_layer=2 --device cpu" for a dry run
SKIP=${SKIP:-}              # words among: tests overhead profile mfu
# TESTS: pytest -k expression for tests/train/test_cuda.py; OVERHEAD_PRECISIONS: e.g. "bf16 fp16"
mkdir -p "$RESULTS"
source benchmarks/gpu_setup.sh

if [[ " $SKIP " != *" tests "* ]]; then
  echo "== [${SECONDS}s] CUDA hot-path tests"
  timeout 200 "$PY" -m pytest -q -p no:cacheprovider tests/train/test_cuda.py -k "${TESTS:-never_sync or resume}" 2>&1 \
    | tee "$RESULTS/tests.txt"
fi

if [[ " $SKIP " != *" overhead "* ]]; then
  for precision in ${OVERHEAD_PRECISIONS:-bf16}; do
    echo "== [${SECONDS}s] overhead on the launch-bound tiny-gpt ($precision)"
    timeout 150 "$PY" benchmarks/overhead.py --precision "$precision" --rounds 4 --steps 60 --window 10 2>&1 \
      | tee -a "$RESULTS/overhead.txt"
  done
fi

if [[ " $SKIP " != *" profile "* ]]; then
  for precision in fp16 bf16; do
    echo "== [${SECONDS}s] per-step profile, tierlab vs the plain loop ($precision)"
    timeout 120 "$PY" benchmarks/profile_step.py --precision "$precision" 2>&1 | grep -v "^USDT" \
      | tee -a "$RESULTS/profile.txt"
  done
fi

if [[ " $SKIP " != *" mfu "* ]]; then
  for config in $CONFIGS; do
    batch=${config%%:*} mode=${config#*:}
    label="bf16-b$batch-$mode"
    echo "== [${SECONDS}s] gpt2-small bf16 --compile --compile-mode $mode, batch $batch x 1024"
    timeout "${BENCH_TIMEOUT:-240}" "$PY" -m tierlab bench precision --model gpt2-small --batch-size "$batch" \
      --seq-len 1024 --steps "$STEPS" --warmup-steps 3 --precisions bf16 --compile --compile-mode "$mode" \
      --markdown --json "$RESULTS/$label.json" --png "$RESULTS/$label.png" $EXTRA 2>&1 | tee "$RESULTS/$label.txt"
    "$PY" - "$RESULTS/$label.json" "$label" <<'EOF' | tee -a "$RESULTS/summary.txt"
import json, sys
try:
    data = json.load(open(sys.argv[1]))
except OSError:
    sys.exit(print(f"{sys.argv[2]}: no result"))
for r in data["rows"]:
    mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
    if r["status"] != "ok":
      print(f"{sys.argv[2]} on {data['device_name']}: {r['status']}: {r['reason']}")
      continue
    print(f"{sys.argv[2]} on {data['device_name']}: {r['median_step_ms']:.1f} ms/step, {r['tokens_per_s']:,.0f} "
        f"tokens/s, MFU {mfu}, compile {r['compile_s']:.1f} s, peak {r['peak_mem_mb']:,.0f} MB")
EOF
  done
fi
echo "== [${SECONDS}s] done: $RESULTS"
