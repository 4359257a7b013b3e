"""The optimizer every tierlab run uses: fused AdamW with a device-tensor learning rate."""

from __future__ import annotations

import torch
from torch import nn

from ..config import TrainConfig


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
