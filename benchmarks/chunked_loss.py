"""--chunked-loss against the full logits: peak memory and time of the head + cross-entropy, forward and backward.

Each variant runs in its own process (peak RSS is per process, and never goes down), on the
same shapes: ROWS hidden states of width D into a VOCAB-way head (default gpt2-small's, at
4 x 1024 tokens), fp32 on the CPU.  Prints the figures and the ratios, measured side by side.

    python benchmarks/chunked_loss.py [--rows 4096] [--vocab 50304] [--width 768] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def child(variant: str, rows: int, width: int, vocab: int, repeats: int) -> None:
    import torch
    import torch.nn.functional as F

    from tierlab.train.chunked_loss import linear_cross_entropy

    torch.manual_seed(0)
    head = torch.nn.Linear(width, vocab, bias=False)
    hidden = torch.randn(rows, width, requires_grad=True)
    targets = torch.randint(0, vocab, (rows,))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, loss = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        if variant == "full":
            loss = F.cross_entropy(head(hidden), targets)
        else:
            loss = linear_cross_entropy(hidden, head, targets)
        loss.backward()
        times.append(time.perf_counter() - started)
        hidden.grad, head.weight.grad = None, None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"variant": variant, "ms": 1000 * sorted(times)[len(times) // 2],
                      "peak_extra_mib": (peak - base) / 1024, "loss": loss.item()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=50304)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.rows, a.width, a.vocab, a.repeats)
    results = {}
    for variant in ("full", "chunked"):
        out = subprocess.run([sys.executable, __file__, "--child", variant, "--rows", str(a.rows), "--width",
                              str(a.width), "--vocab", str(a.vocab), "--repeats", str(a.repeats)],
                             capture_output=True, text=True, check=True)
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    full, chunked = results["full"], results["chunked"]
    logits_mib = a.rows * a.vocab * 4 / 2**20
    print(f"head + cross-entropy, fp32 CPU: {a.rows} rows x {a.width} -> {a.vocab} (full logits {logits_mib:,.0f} MiB)")
    for r in (full, chunked):
        print(f"  {r['variant']:8} median {r['ms']:8.1f} ms   peak extra {r['peak_extra_mib']:8.0f} MiB   loss {r['loss']:.6f}")
    print(f"  chunked / full: time {chunked['ms'] / full['ms']:.2f}x, peak extra memory "
          f"{chunked['peak_extra_mib'] / full['peak_extra_mib']:.2f}x, loss difference "
          f"{abs(chunked['loss'] - full['loss']):.2e}")


if __name__ == "__main__":
    main()
