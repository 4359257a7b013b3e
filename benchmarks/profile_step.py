"""Where a training step's time goes: tierlab's step against the plain loop's, under torch.profiler.

`benchmarks/overhead.py` says *how much* slower or faster tierlab's loop is; this script says
*why*: for each side it profiles --steps steady-state steps (after --warmup untimed ones) and
prints, per step, the host time spent inside the step, the aten operators and CUDA kernels it
launched, the GPU's busy time, and every CUDA runtime call (launches, copies, event records,
stream waits, synchronisations, pinned allocations) — side by side, so a difference shows up
as a row.  Written for the open question of issue 6: on a launch-bound toy model tierlab's
fp16 + GradScaler step was 7-15% slower than the plain loop's on an H100 while its bf16 step
was 3% faster (BENCHMARKS.md), with only 7 extra tiny kernels counted.

    python benchmarks/profile_step.py --precision fp16            # on the GPU: the comparison
    python benchmarks/profile_step.py --precision fp16 --trace t  # also Chrome traces t-<side>.json
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile, record_function, schedule

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead  # noqa: E402 - the same model, optimizer and plain loop as the overhead benchmark

import tierlab  # noqa: E402
from tierlab.data import prepare_data  # noqa: E402
from tierlab.models.tiny_gpt import TinyGPT  # noqa: E402
from tierlab.train import loop  # noqa: E402

STEP = "step"  # the record_function label around each side's step


def profile_tierlab(args, device: torch.device, make_profiler) -> profile:
    """tierlab.train with its Trainer.train_step labelled and stepping the profiler's schedule."""
    original = loop.Trainer.train_step
    with make_profiler() as prof:
        def labelled(self):
            with record_function(STEP):
                original(self)
            prof.step()

        loop.Trainer.train_step = labelled
        try:
            with tempfile.TemporaryDirectory() as out:
                cfg = tierlab.TrainConfig(model_args={}, data="demo", precision=args.precision,
                                          max_steps=args.warmup + args.steps + 1, batch_size=args.batch_size,
                                          seq_len=args.seq_len, lr=1e-3, log_every=10, eval_every=0, out=out,
                                          name="profile", seed=0, quiet=True, device=str(device), no_plots=True,
                                          ckpt_every=0)
                tierlab.train(TinyGPT(**overhead.MODEL), config=cfg)
        finally:
            loop.Trainer.train_step = original
    return prof


def profile_plain(args, device: torch.device, make_profiler) -> profile:
    """The plain loop of overhead.py (pageable batch copy, autocast, GradScaler, clip, fused AdamW)."""
    tokens = np.asarray(prepare_data("demo", "byte", 0.1).train)
    with make_profiler() as prof:
        overhead.framework_loop(overhead.Plain(args.precision, device), tokens, steps=args.warmup + args.steps + 1,
                                window=10, batch=args.batch_size, seq=args.seq_len, lr=1e-3, seed=0, device=device,
                                step_scope=lambda: record_function(STEP), after_step=prof.step)
    return prof


def summarise(prof: profile) -> dict:
    """Per-step figures from the profiled steps."""
    events = prof.events()
    cpu, cuda = torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA
    # On CUDA every record_function range (our STEP label, the profiler's ProfilerStep#N) is
    # also recorded as a GPU-side "user annotation": neither a step of the host nor a kernel.
    steps = sorted((e for e in events if e.name == STEP and e.device_type == cpu), key=lambda e: e.time_range.start)
    n = max(len(steps), 1)
    ranges = [(s.time_range.start, s.time_range.end) for s in steps]

    def inside(e) -> bool:  # any thread: on CUDA the backward pass launches from autograd's device thread
        return any(a <= e.time_range.start and e.time_range.end <= b for a, b in ranges)

    host = [e for e in events if e.device_type == cpu and e.name != STEP and inside(e)]
    runtime = collections.Counter(e.name for e in host if e.name.startswith("cuda"))
    ops = sum(1 for e in host if e.name.startswith("aten::")
              and not (e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::")))
    kernels = [e for e in events if e.device_type == cuda and not _annotation(e)]
    gaps = [b.time_range.start - a.time_range.end for a, b in zip(steps, steps[1:])]
    return {
        "steps": len(steps),
        "host_ms": statistics.fmean(s.time_range.elapsed_us() for s in steps) / 1000 if steps else float("nan"),
        "between_ms": statistics.fmean(gaps) / 1000 if gaps else 0.0,
        "top_level_ops": ops / n,
        "kernels": len(kernels) / n,
        "gpu_busy_ms": sum(k.time_range.elapsed_us() for k in kernels) / n / 1000,
        "runtime": {name: count / n for name, count in runtime.items()},
        "self_us": {name: us / n for name, us in _self_time(host).items()},
    }


def _annotation(event) -> bool:
    """A record_function range mirrored on the GPU timeline, not work the GPU did."""
    return bool(getattr(event, "is_user_annotation", False)) or event.name == STEP \
        or event.name.startswith("ProfilerStep#")


def _self_time(host: list) -> collections.Counter:
    """Host microseconds spent in each operator or runtime call itself (not in what it calls), summed by name."""
    total: collections.Counter = collections.Counter()
    for e in host:
        total[e.name] += e.self_cpu_time_total
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", default="fp16", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--steps", type=int, default=20, help="profiled steps per side (default 20)")
    ap.add_argument("--warmup", type=int, default=15, help="unprofiled steps first (default 15)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--differences", type=int, default=15, metavar="N",
                    help="list the N calls whose own host time per step differs most between the sides (default 15)")
    ap.add_argument("--trace", metavar="PREFIX", help="also write Chrome traces PREFIX-tierlab.json, PREFIX-plain.json")
    args = ap.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])

    def make_profiler() -> profile:
        return profile(activities=activities, acc_events=True,
                       schedule=schedule(wait=0, warmup=args.warmup, active=args.steps, repeat=1))

    results = {}
    for side, run in (("tierlab", profile_tierlab), ("plain", profile_plain)):
        prof = run(args, device, make_profiler)
        if args.trace:
            prof.export_chrome_trace(f"{args.trace}-{side}.json")
        results[side] = summarise(prof)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{name}, torch {torch.__version__}; tiny-gpt {overhead.MODEL}, batch {args.batch_size} x {args.seq_len}, "
          f"{args.precision}; per step, over {results['tierlab']['steps']} and {results['plain']['steps']} "
          "profiled steps")
    rows = [("host ms inside the step", "host_ms", ".3f"), ("host ms between steps", "between_ms", ".3f"),
            ("aten ops (outermost) in the step", "top_level_ops", ".1f"), ("GPU kernels", "kernels", ".1f"),
            ("GPU busy ms", "gpu_busy_ms", ".3f")]
    print(f"{'':42} {'tierlab':>10} {'plain':>10}")
    for label, key, fmt in rows:
        print(f"{label:42} {results['tierlab'][key]:>10{fmt}} {results['plain'][key]:>10{fmt}}")
    names = sorted(set(results["tierlab"]["runtime"]) | set(results["plain"]["runtime"]))
    for rt in names:
        a, b = results["tierlab"]["runtime"].get(rt, 0.0), results["plain"]["runtime"].get(rt, 0.0)
        print(f"{rt[:42]:42} {a:>10.1f} {b:>10.1f}")
    if not names:
        print("(no CUDA runtime calls: run this on a GPU for the launch, copy and synchronisation counts)")
    # Where tierlab's host time differs from plain's: the calls whose own time per step differs most.
    mine, theirs = results["tierlab"]["self_us"], results["plain"]["self_us"]
    differ = sorted(set(mine) | set(theirs), key=lambda k: -abs(mine.get(k, 0.0) - theirs.get(k, 0.0)))
    print(f"{'largest differences in own host us per step':42} {'tierlab':>10} {'plain':>10}")
    for name in differ[:args.differences]:
        print(f"{name[:42]:42} {mine.get(name, 0.0):>10.1f} {theirs.get(name, 0.0):>10.1f}")


if __name__ == "__main__":
    main()
