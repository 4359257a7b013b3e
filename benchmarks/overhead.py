"""Framework overhead: tierlab.train against a plain hand-written loop, Hugging Face Accelerate and Lightning Fabric.

Same model, data, precision, batch and optimizer (fused AdamW, clipping at 1.0, warm-up +
cosine LR) for every side; each framework drives the loop through its own API (Accelerate:
``prepare``/``backward``/``clip_grad_norm_``; Fabric: ``setup``/``backward``/``clip_gradients``).
Rounds alternate the order of the sides so machine drift hits all alike, and every side
starts each round afresh (model, optimizer and, in fp16, GradScaler).  Step time is
measured over windows of --window steps after the first window (warm-up), with one host
sync per window, as tierlab logs; the figure is each side's median over plain's median
(target for tierlab: <= 1.03 and at or below every peer).

Accelerate and Fabric are optional, installed for this benchmark only:

    pip install accelerate lightning-fabric   # with torch pinned, e.g. -c <(echo torch==2.13.0)
    python benchmarks/overhead.py [--rounds 5] [--steps 60] [--precision fp32] [--device auto]

A side whose package is missing, or which cannot run the precision on the device, is
reported as such and left out of the comparison.
"""

from __future__ import annotations

import argparse
import contextlib
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
from tierlab.models.loader import PRESETS
from tierlab.models.tiny_gpt import TinyGPT
from tierlab.train.precision import DTYPES

MODEL = dict(vocab_size=256, n_layer=4, n_head=4, d_model=128, max_seq_len=256)  # --preset tiny-gpt (4 x 128)
SIDES = ("tierlab", "plain", "accelerate", "fabric")


def _optimizer(model: torch.nn.Module, lr: float) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95), fused=True)


def _lr_at(it: int, steps: int, lr: float) -> float:
    warmup, min_lr = max(1, steps // 20), lr / 10
    if it < warmup:
        return lr * (it + 1) / warmup
    progress = min(1.0, (it - warmup) / max(1, steps - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


class Plain:
    """The nanoGPT-style minimum: autocast, GradScaler, clip_grad_norm_, step."""

    def __init__(self, precision: str, device: torch.device):
        self.dtype, self.device = DTYPES[precision], device
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def setup(self, model, opt):
        return model.to(self.device), opt

    def forward(self, model, x):
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            return model(x)

    def backward_and_step(self, model, opt, loss):
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        self.scaler.step(opt)
        self.scaler.update()


class Accelerate:
    def __init__(self, precision: str, device: torch.device):
        from accelerate import Accelerator

        mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
        self.acc = Accelerator(mixed_precision=mixed, cpu=device.type == "cpu")
        if precision != "fp32" and not self.acc.native_amp:  # it would quietly train in fp32
            raise RuntimeError(f"Accelerate does not run {precision} autocast on {device.type} (native_amp is False)")

    def setup(self, model, opt):
        return self.acc.prepare(model, opt)

    def forward(self, model, x):
        return model(x)  # prepare() wrapped forward in autocast

    def backward_and_step(self, model, opt, loss):
        self.acc.backward(loss)
        self.acc.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()


class Fabric:
    def __init__(self, precision: str, device: torch.device):
        try:
            from lightning_fabric import Fabric as LightningFabric
        except ImportError:  # the `lightning` package ships it as lightning.fabric
            from lightning.fabric import Fabric as LightningFabric

        if precision == "fp16" and device.type == "cpu":  # Fabric would silently switch to bf16-mixed
            raise RuntimeError("Lightning Fabric has no fp16 AMP on a CPU (it substitutes bf16)")
        mode = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}[precision]
        self.fabric = LightningFabric(accelerator="cuda" if device.type == "cuda" else "cpu", devices=1,
                                      precision=mode)

    def setup(self, model, opt):
        return self.fabric.setup(model, opt)

    def forward(self, model, x):
        return model(x)  # setup() wrapped forward in the precision plugin's autocast

    def backward_and_step(self, model, opt, loss):
        self.fabric.backward(loss)
        self.fabric.clip_gradients(model, opt, max_norm=1.0)
        opt.step()


def framework_loop(driver, tokens: np.ndarray, steps: int, window: int, batch: int, seq: int, lr: float,
                   seed: int, device: torch.device, step_scope=contextlib.nullcontext,
                   after_step=lambda: None) -> list[float]:
    """ms/step of each window of ``window`` steps but the first.

    ``step_scope()`` is entered around each step and ``after_step()`` called after it (the
    profiler's label and schedule in ``profile_step.py``).
    """
    torch.manual_seed(seed)
    model = TinyGPT(**MODEL).to(device)
    model, opt = driver.setup(model, _optimizer(model, lr))
    rng = np.random.default_rng(seed)
    times, start = [], time.perf_counter()
    for it in range(steps):
        with step_scope():
            for group in opt.param_groups:
                group["lr"] = _lr_at(it, steps, lr)
            ix = rng.integers(0, len(tokens) - seq - 1, batch)
            block = torch.from_numpy(np.stack([tokens[i:i + seq + 1] for i in ix]).astype(np.int64)).to(device)
            x, y = block[:, :-1], block[:, 1:]
            logits = driver.forward(model, x)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
            driver.backward_and_step(model, opt, loss)
            opt.zero_grad(set_to_none=True)
            if (it + 1) % window == 0:
                loss.item()  # the loop's log step: one sync per window, as tierlab does
        after_step()
        if (it + 1) % window == 0:
            now = time.perf_counter()
            times.append(1000 * (now - start) / window)
            start = now
    return times[1:]


def tierlab_loop(out: Path, name: str, steps: int, window: int, batch: int, seq: int, precision: str,
                 lr: float, seed: int, device: torch.device) -> list[float]:
    torch.manual_seed(seed)
    cfg = tierlab.TrainConfig(model_args={}, data="demo", precision=precision, max_steps=steps, batch_size=batch,
                              seq_len=seq, lr=lr, log_every=window, eval_every=0, out=str(out), name=name,
                              seed=seed, quiet=True, device=str(device), no_plots=True, ckpt_every=0)
    run = tierlab.train(TinyGPT(**MODEL), config=cfg)
    return [r["step_ms"] for r in run.metrics("train")][1:]


def make_drivers(precision: str, device: torch.device, sides: list[str]) -> tuple[dict[str, object], dict[str, str]]:
    drivers, missing = {}, {}
    for side, cls in (("plain", Plain), ("accelerate", Accelerate), ("fabric", Fabric)):
        if side not in sides:
            continue
        try:
            drivers[side] = cls(precision, device)
        except ImportError as exc:
            missing[side] = f"not installed ({exc.name})"
        except Exception as exc:  # noqa: BLE001 - a framework refusing the precision/device is a result
            missing[side] = f"cannot run {precision} on {device.type}: {type(exc).__name__}: {exc}"
    return drivers, missing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--preset", default=None, choices=list(PRESETS),
                    help="a built-in model size instead of the default 4 x 128 tiny-gpt (e.g. gpt2-small on a GPU)")
    ap.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated subset of {','.join(SIDES)}")
    args = ap.parse_args()
    wanted = [s.strip() for s in args.sides.split(",")]
    if "plain" not in wanted or "tierlab" not in wanted or set(wanted) - set(SIDES):
        ap.error(f"--sides must include tierlab and plain and name only {', '.join(SIDES)}")
    if args.preset:
        MODEL.clear()
        MODEL.update({"vocab_size": 256, **PRESETS[args.preset]})
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    tokens = np.asarray(prepare_data("demo", "byte", 0.1).train)
    drivers, missing = make_drivers(args.precision, device, wanted)
    sides = ["tierlab"] + list(drivers)
    figures: dict[str, list[float]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as out:
        for r in range(args.rounds):
            order = sides[r % len(sides):] + sides[:r % len(sides)]  # rotate who goes first
            for side in order:
                common = dict(steps=args.steps, window=args.window, batch=args.batch_size, seq=args.seq_len,
                              lr=1e-3, seed=r, device=device)
                if side == "tierlab":
                    figures[side] += tierlab_loop(Path(out), f"r{r}", precision=args.precision, **common)
                    continue
                try:
                    # A fresh driver each round: every side starts from a new GradScaler (fp16), as
                    # each tierlab.train call does, not from a scale calibrated in earlier rounds.
                    driver = type(drivers[side])(args.precision, device)
                    figures[side] += framework_loop(driver, tokens, **common)
                except Exception as exc:  # noqa: BLE001 - e.g. Fabric refusing to clip a fused optimizer in fp16
                    first = (str(exc).strip().splitlines() or [""])[0]
                    missing[side] = f"failed in {args.precision} on {device.type}: {type(exc).__name__}: {first}"
                    sides.remove(side)
                    del figures[side]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    print(f"machine: {name} [{device}], {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"model: {args.preset or 'tiny-gpt'} {MODEL}, batch {args.batch_size} x seq {args.seq_len}, {args.precision}, "
          f"{args.rounds} rounds x {args.steps} steps, windows of {args.window}")
    plain = statistics.median(figures["plain"])
    print(f"{'side':<11} {'median ms/step':>15} {'windows':>8} {'ratio to plain':>15}")
    for side in sides:
        median = statistics.median(figures[side])
        print(f"{side:<11} {median:15.2f} {len(figures[side]):8d} {median / plain:15.3f}")
    for side, why in missing.items():
        print(f"{side:<11} {why}")
    tier = statistics.median(figures["tierlab"])
    peers = [s for s in sides if s not in ("tierlab", "plain")]
    best_peer = min((statistics.median(figures[s]) for s in peers), default=None)
    print(f"tierlab / plain: {tier / plain:.3f} (target <= 1.03)"
          + (f"; tierlab / fastest peer: {tier / best_peer:.3f} (target <= 1.00)" if best_peer else ""))


if __name__ == "__main__":
    main()
