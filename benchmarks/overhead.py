"""Framework overhead: tierlab.train against a plain hand-written PyTorch loop.

Same model, data, precision, batch and optimizer (fused AdamW, clipping, warm-up + cosine),
alternating A/B rounds in one process so machine drift hits both sides alike.  Step time
is measured over windows of --window steps after the first window (warm-up); the figure
is the ratio of medians, tierlab / plain (target <= 1.03).

    python benchmarks/overhead.py [--rounds 5] [--steps 60] [--precision fp32]
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import tierlab
from tierlab.data import prepare_data
from tierlab.models.tiny_gpt import TinyGPT
from tierlab.train.precision import DTYPES

MODEL = dict(vocab_size=256, n_layer=4, n_head=4, d_model=128, max_seq_len=256)


def plain_loop(tokens: np.ndarray, steps: int, window: int, batch: int, seq: int, precision: str,
               lr: float, seed: int) -> list[float]:
    """The nanoGPT-style minimum: get_batch, forward, loss, backward, clip, step."""
    torch.manual_seed(seed)
    model = TinyGPT(**MODEL)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95), fused=True)
    dtype = DTYPES[precision]
    scaler = torch.amp.GradScaler("cpu", enabled=precision == "fp16")
    rng = np.random.default_rng(seed)
    warmup, min_lr = max(1, steps // 20), lr / 10
    times, start = [], time.perf_counter()
    for it in range(steps):
        progress = min(1.0, max(0.0, (it - warmup) / max(1, steps - warmup)))
        step_lr = lr * (it + 1) / warmup if it < warmup else min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))
        for group in opt.param_groups:
            group["lr"] = step_lr
        ix = rng.integers(0, len(tokens) - seq - 1, batch)
        block = torch.from_numpy(np.stack([tokens[i:i + seq + 1] for i in ix]).astype(np.int64))
        x, y = block[:, :-1], block[:, 1:]
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            logits = model(x)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        if (it + 1) % window == 0:
            loss.item()  # the loop's log step: sync like tierlab does once per window
            now = time.perf_counter()
            times.append(1000 * (now - start) / window)
            start = now
    return times[1:]


def tierlab_loop(out: Path, name: str, steps: int, window: int, batch: int, seq: int, precision: str,
                 lr: float, seed: int) -> list[float]:
    torch.manual_seed(seed)
    cfg = tierlab.TrainConfig(model_args={}, data="demo", precision=precision, max_steps=steps, batch_size=batch,
                              seq_len=seq, lr=lr, log_every=window, eval_every=0, out=str(out), name=name,
                              seed=seed, quiet=True)
    run = tierlab.train(TinyGPT(**MODEL), config=cfg)
    return [r["step_ms"] for r in run.metrics("train")][1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    args = ap.parse_args()
    tokens = np.asarray(prepare_data("demo", "byte", 0.1).train)
    tier, plain = [], []
    with tempfile.TemporaryDirectory() as out:
        for r in range(args.rounds):
            # Alternate which side goes first, so neither always runs on a warmer machine.
            order = ("tierlab", "plain") if r % 2 == 0 else ("plain", "tierlab")
            for side in order:
                common = dict(steps=args.steps, window=args.window, batch=args.batch_size, seq=args.seq_len,
                              precision=args.precision, lr=1e-3, seed=r)
                if side == "tierlab":
                    tier += tierlab_loop(Path(out), f"r{r}", **common)
                else:
                    plain += plain_loop(tokens, **common)
    t, p = statistics.median(tier), statistics.median(plain)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print(f"model: tiny-gpt {MODEL}, batch {args.batch_size} x seq {args.seq_len}, {args.precision}, "
          f"{args.rounds} rounds x {args.steps} steps, windows of {args.window}")
    print(f"plain loop   median step {p:8.2f} ms  ({len(plain)} windows)")
    print(f"tierlab      median step {t:8.2f} ms  ({len(tier)} windows)")
    print(f"ratio tierlab/plain: {t / p:.3f}  (target <= 1.03)")


if __name__ == "__main__":
    main()
