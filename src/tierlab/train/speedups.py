"""The training step's speed options that leave the maths alone: ``--chunked-loss`` and ``--attention-backend``.

Both are chosen once, on the real model and a real batch, before the run directory is
written: a model ``--chunked-loss`` cannot go around is a plain error that costs nothing,
and the start-up line says which attention kernel the model's calls really ran.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from ..config import TrainConfig
from ..models import extract_logits
from .attention import AttentionPolicy, choose, observe
from .chunked_loss import check_head_bypass
from .objective import Classification, split_block
from .precision import PrecisionPolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Speedups:
    head: nn.Linear | None  # --chunked-loss: the output layer the loss goes around (None: full logits)
    attention: AttentionPolicy
    attention_ran: str  # what the model's SDPA calls ran as, in words

    def as_event(self) -> dict:
        return {"chunked_loss": self.head is not None, "attention_backend": self.attention.requested,
                "attention_order": list(self.attention.order), "attention_ran": self.attention_ran}


def choose_speedups(cfg: TrainConfig, model: nn.Module, block: torch.Tensor, device: torch.device,
                    policy: PrecisionPolicy, classify: Classification | None) -> Speedups:
    inputs, _ = split_block(block.to(device), classify)
    head = check_head_bypass(model, inputs, extract_logits) if cfg.chunked_loss else None
    attention = choose(cfg.attention_backend, device)
    # Seeing what ran costs one forward pass, a model call the user's code may count: only when
    # tierlab chose the kernels (a CUDA device, or a named backend), not where torch's order stands.
    ran = observe(model, inputs, attention, policy.autocast) if attention.order else "not observed"
    log.info("attention: %s (kernels enabled: %s)", ran, attention.describe())
    return Speedups(head, attention, ran)
