"""Learning-rate schedule: linear warm-up, then cosine decay to ``min_lr``.

Evaluated on device tensors so the loop can feed fused AdamW a tensor learning rate that
follows the count of optimizer steps that *really happened* (a GradScaler-skipped step
does not advance it) without reading that count back to the host.
"""

from __future__ import annotations

import math

import torch


class WarmupCosine:
    def __init__(self, lr: float, min_lr: float, warmup_steps: int, total_steps: int):
        self.lr, self.min_lr = lr, min_lr
        self.warmup_steps, self.total_steps = warmup_steps, total_steps

    def __call__(self, step: torch.Tensor) -> torch.Tensor:
        """The learning rate of the optimizer step that follows ``step`` completed steps."""
        s = step.to(torch.float64)
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = ((s - self.warmup_steps) / decay_steps).clamp(0.0, 1.0)
        cosine = self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + torch.cos(math.pi * progress))
        if self.warmup_steps == 0:
            return cosine
        warm = self.lr * (s + 1) / self.warmup_steps
        return torch.where(s < self.warmup_steps, warm, cosine)

    def table(self, device: torch.device) -> torch.Tensor:
        """The float32 learning rate after every possible count of real steps, 0..total_steps.

        The loop looks its learning rate up in this table with one device-side gather per
        step, instead of evaluating the formula (a dozen tiny kernels) every step.
        """
        return self(torch.arange(self.total_steps + 1, device=device)).to(torch.float32)

    def value(self, step: int) -> float:
        """Host-side value for step ``step`` (for reports and tests; never in the hot path)."""
        return float(self(torch.tensor(step)))


def default_warmup(total_steps: int) -> int:
    """5% of the run, at most 100 steps: long enough to protect Adam's first updates."""
    return min(100, max(1, total_steps // 20)) if total_steps > 1 else 0
