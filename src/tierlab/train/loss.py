"""The training loss of one micro-batch, as one function (the unit ``--compile`` compiles)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..models import extract_logits
from .objective import Classification
from .precision import PrecisionPolicy

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_loss_fn(model: nn.Module, policy: PrecisionPolicy, classify: Classification | None = None) -> LossFn:
    """``loss(inputs [B, T], targets [B, T])``: forward under the policy's autocast, cross-entropy in fp32.

    With ``classify`` (``--objective classify``) the targets are class ids [B] and the
    model's output is pooled to [B, C] first (see :class:`~.objective.Classification`).

    Forward and loss live in one function so that torch.compile sees both: it can then fuse
    the fp32 upcast of the [B, T, V] logits into the softmax instead of writing a full fp32
    copy of them to memory (for a GPT-2-sized vocabulary, the largest tensor of the step).
    """

    def loss(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with policy.autocast():
            logits = extract_logits(model(inputs))  # [B, T, V] ([B, C] or [B, T, C] for classify)
        if classify is not None:
            return F.cross_entropy(classify.pooled(logits.float(), inputs), targets)
        return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))

    return loss
