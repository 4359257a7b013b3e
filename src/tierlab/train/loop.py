"""The training loop, readable top to bottom.

Per optimizer step: draw micro-batches -> forward under autocast -> (scaled) backward ->
unscale -> clip (the pre-clip norm is what we log) -> optimizer step unless gradients are
non-finite -> advance the LR schedule only if the step happened.

Nothing in ``train_step`` reads a tensor back to the host: losses, norms, learning rates,
loss scales and skip flags go into a small device buffer, and ``flush`` reads that buffer
once per log step (the only host sync), turning it into metric records and into events
stamped with the exact step they happened at.
"""

from __future__ import annotations

import logging
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig
from ..data import BlockSampler, TokenData, blocks_at, eval_starts
from ..models import extract_logits
from ..track import EventLog, JsonlWriter
from .flops import flops_per_token, peak_flops
from .precision import PrecisionPolicy
from .schedule import WarmupCosine

if TYPE_CHECKING:
    from ..progress import Progress

log = logging.getLogger(__name__)
metrics_log = logging.getLogger("tierlab.metrics")

# Columns of the per-step device buffer.
LOSS, GRAD_NORM, LR, SCALE, SKIPPED = range(5)


@dataclass
class LoopState:
    """What the host knows, updated only at log steps."""

    step: int = 0
    skipped_steps: int = 0
    loss_scale: float | None = None
    last_loss: float | None = None
    best_val_loss: float | None = None
    last_val_loss: float | None = None
    tokens_per_s: list[float] = field(default_factory=list)


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> tuple[torch.optim.AdamW, torch.Tensor]:
    """Fused AdamW with a device-tensor learning rate; decay on matrices only."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    lr = torch.tensor(cfg.lr, dtype=torch.float32, device=device)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # Fused AdamW skips a step inside the kernel when told gradients overflowed, which is
    # what keeps GradScaler (and our non-finite guard) free of host syncs.
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(cfg.beta1, cfg.beta2),
                                  fused=True)
    return optimizer, lr


class Trainer:
    def __init__(self, model: nn.Module, data: TokenData, cfg: TrainConfig, policy: PrecisionPolicy,
                 device: torch.device, metrics: JsonlWriter, events: EventLog, max_steps: int,
                 progress: Progress | None = None):
        self.model, self.data, self.cfg, self.policy, self.device = model, data, cfg, policy, device
        self.metrics, self.events, self.max_steps, self.progress = metrics, events, max_steps, progress
        self.optimizer, self.lr = build_optimizer(model, cfg, device)
        self.schedule = WarmupCosine(cfg.lr, cfg.min_lr, cfg.warmup_steps, max_steps)
        self.sampler = BlockSampler(data.train, cfg.batch_size, cfg.seq_len, cfg.seed)
        self.real_steps = torch.zeros((), dtype=torch.int64, device=device)  # steps that updated weights
        self.buffer = torch.zeros(cfg.log_every, 5, dtype=torch.float32, device=device)
        self.buffered = 0
        self.state = LoopState(loss_scale=cfg.loss_scale_init if policy.scaler is not None else None)
        self.tokens_per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum
        self.flops_per_token = flops_per_token(model, cfg.seq_len)
        self.peak = peak_flops(device, policy.name)
        self._eval_starts = eval_starts(len(data.val), cfg.seq_len, cfg.batch_size, cfg.eval_batches)
        self._window_start, self._window_excluded = time.perf_counter(), 0.0

    # ----------------------------------------------------------------------- loop
    def fit(self) -> LoopState:
        self.model.train()
        if self.progress:
            self.progress.start(self.max_steps)
        self._window_start, self._window_excluded = time.perf_counter(), 0.0
        for step in range(self.state.step + 1, self.max_steps + 1):
            self.train_step()
            self.state.step = step
            if step % self.cfg.log_every == 0 or step == self.max_steps:
                self.flush()
            if self.cfg.eval_every and (step % self.cfg.eval_every == 0 or step == self.max_steps):
                self.evaluate()
        return self.state

    def train_step(self) -> None:
        """One optimizer step. No host syncs: every result stays on the device."""
        cfg, policy = self.cfg, self.policy
        self.lr.copy_(self.schedule(self.real_steps))
        loss_sum = torch.zeros((), dtype=torch.float32, device=self.device)
        for _ in range(cfg.grad_accum):
            x, y = self.sampler.next_batch()
            x = x.to(self.device, non_blocking=True)  # [B, T]
            y = y.to(self.device, non_blocking=True)  # [B, T]
            with policy.autocast():
                logits = extract_logits(self.model(x))  # [B, T, V]
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
            # Each micro-batch contributes 1/grad_accum, so the step sees the mean loss.
            policy.backward(loss / cfg.grad_accum)
            loss_sum += loss.detach()
        policy.unscale_(self.optimizer)
        grad_norm = _clip(self.model, cfg.clip_grad)  # pre-clip norm of the true gradient
        skipped = policy.step(self.optimizer, grad_norm)
        self.optimizer.zero_grad(set_to_none=True)
        self.real_steps += (~skipped).to(torch.int64)
        scale = policy.loss_scale
        self.buffer[self.buffered] = torch.stack([
            loss_sum / cfg.grad_accum, grad_norm.float(), self.lr,
            scale.float() if scale is not None else torch.zeros((), device=self.device),
            skipped.float()])
        self.buffered += 1

    # ----------------------------------------------------------------------- logging
    def flush(self) -> dict[str, Any]:
        """Read the buffered steps (the one host sync) and write records and events."""
        rows = self.buffer[: self.buffered].tolist()  # host sync: once per log step
        elapsed = time.perf_counter() - self._window_start - self._window_excluded
        first_step = self.state.step - len(rows) + 1
        losses = []
        for offset, (loss, norm, lr, scale, skipped) in enumerate(rows):
            step = first_step + offset
            if not math.isfinite(loss):
                self.events.emit("nonfinite_loss", step=step, loss=str(loss))  # "nan" or "inf"
            else:
                losses.append(loss)
            if skipped:
                self.state.skipped_steps += 1
                self.events.emit("step_skipped", step=step, skipped_steps=self.state.skipped_steps,
                                 reason="non-finite gradients")
            if self.policy.scaler is not None and scale != self.state.loss_scale:
                self.events.emit("loss_scale_change", step=step, **{"from": self.state.loss_scale, "to": scale})
                self.state.loss_scale = scale
        _, norm, lr, _, _ = rows[-1]
        tokens_per_s = self.tokens_per_step * len(rows) / elapsed if elapsed > 0 else 0.0
        self.state.tokens_per_s.append(tokens_per_s)
        self.state.last_loss = statistics.fmean(losses) if losses else float("nan")
        record = {
            "kind": "train", "step": self.state.step, "tokens": self.state.step * self.tokens_per_step,
            "loss": self.state.last_loss, "lr": lr, "grad_norm": norm, "loss_scale": self.state.loss_scale,
            "skipped_steps": self.state.skipped_steps, "tokens_per_s": tokens_per_s,
            "step_ms": 1000.0 * elapsed / len(rows), "mem_peak_mb": _peak_memory_mb(self.device),
            "mfu": (tokens_per_s * self.flops_per_token / self.peak) if self.peak else None,
        }
        self.metrics.write(record)
        metrics_log.info("step %d/%d | loss %.4f | lr %.3g | grad_norm %.3g | scale %s | skipped %d | %.0f tok/s",
                         record["step"], self.max_steps, record["loss"], lr, norm,
                         "-" if record["loss_scale"] is None else f"{record['loss_scale']:g}",
                         record["skipped_steps"], tokens_per_s)
        if self.progress:
            self.progress.update(record)
        self.buffered = 0
        self._window_start, self._window_excluded = time.perf_counter(), 0.0
        return record

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Loss, perplexity and next-token accuracy on fixed blocks of the validation split."""
        started = time.perf_counter()
        self.model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        count = 0
        for starts in self._eval_starts:
            x, y = blocks_at(self.data.val, starts, self.cfg.seq_len)
            x, y = x.to(self.device), y.to(self.device)
            with self.policy.autocast():
                logits = extract_logits(self.model(x)).float()
            loss_sum += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum")
            correct += (logits.argmax(-1) == y).sum()
            count += y.numel()
        self.model.train()
        val_loss = loss_sum.item() / count  # host sync: evaluation steps only
        record = {"kind": "eval", "step": self.state.step, "tokens": self.state.step * self.tokens_per_step,
                  "val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 700.0)),
                  "val_acc": correct.item() / count}
        self.metrics.write(record)
        metrics_log.info("step %d/%d | val_loss %.4f | val_ppl %.2f | val_acc %.3f", record["step"], self.max_steps,
                         val_loss, record["val_ppl"], record["val_acc"])
        self.state.last_val_loss = val_loss
        if math.isfinite(val_loss) and (self.state.best_val_loss is None or val_loss < self.state.best_val_loss):
            self.state.best_val_loss = val_loss
        if self.progress:
            self.progress.update(record)
        self._window_excluded += time.perf_counter() - started  # evaluation is not training throughput
        return record


def _clip(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Total gradient norm before clipping; clips in place when ``max_norm`` > 0."""
    params = [p for p in model.parameters() if p.grad is not None]
    # An infinite threshold measures without clipping (clip coefficient clamps to 1).
    return torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else math.inf, foreach=True)


def _peak_memory_mb(device: torch.device) -> float | None:
    """Peak allocated memory on CUDA; on CPU the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # macOS reports bytes, Linux KiB
