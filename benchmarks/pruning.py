"""Pruning: the same Optuna study with and without a pruner — training steps spent and best val loss.

Both studies sample the same space with the same seed (TPE) for the same number of trials
on the same corpus; the pruned one stops trials whose val loss trails the median of the
earlier trials at the same step.  Target: best val loss within 1% of the unpruned study's,
using at most 50% of its training steps.

    python benchmarks/pruning.py [--data ../shared/data/tinyshakespeare.txt] [--trials 10] [--steps 100] [--seq-len 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import tierlab
from tierlab.search import SearchConfig, run_search

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--pruners", default="none,median")
    args = ap.parse_args()
    if not Path(args.data).is_file():
        raise SystemExit(f"{args.data} not found: pass --data PATH (Tiny Shakespeare is in ../shared/data/)")
    base = tierlab.TrainConfig(data=args.data, seq_len=args.seq_len, eval_batches=10, precision="fp32", seed=1337)
    results = {}
    with tempfile.TemporaryDirectory() as out:
        for pruner in args.pruners.split(","):
            started = time.perf_counter()
            cfg = SearchConfig(base=base, trials=args.trials, steps_per_trial=args.steps, out=f"{out}/{pruner}",
                               pruner=pruner, seed=args.seed)
            result = run_search(cfg)
            best = min(t.value for t in result.study.trials if t.value is not None)
            results[pruner] = (result.steps_spent, best, result.counts, time.perf_counter() - started)
    print(f"data: {args.data}; tiny-gpt, seq {args.seq_len}, {args.trials} trials x {args.steps} steps, TPE seed {args.seed}, "
          f"default space (lr, warmup_fraction, weight_decay, batch_size)")
    print(f"{'pruner':<8} {'steps spent':>12} {'best val loss':>14} {'completed':>10} {'pruned':>7} {'wall s':>8}")
    for pruner, (steps, best, counts, wall) in results.items():
        print(f"{pruner:<8} {steps:>12,} {best:>14.4f} {counts.get('complete', 0):>10} {counts.get('pruned', 0):>7} "
              f"{wall:>8.0f}")
    if "none" in results and "median" in results:
        (s0, b0, _, _), (s1, b1, _, _) = results["none"], results["median"]
        print(f"median pruning: {s1 / s0:.0%} of the steps (target <= 50%), best val loss {b1 / b0 - 1:+.2%} "
              f"against no pruning (target within 1%)")


if __name__ == "__main__":
    main()
