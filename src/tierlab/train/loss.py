"""The training loss of one micro-batch, as one function (the unit ``--compile`` compiles)."""

from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..models import extract_logits
from .attention import AttentionPolicy
from .chunked_loss import bypass, linear_cross_entropy
from .objective import Classification
from .precision import PrecisionPolicy

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_loss_fn(model: nn.Module, policy: PrecisionPolicy, classify: Classification | None = None,
                 head: nn.Linear | None = None, compiler: Optional[Callable[[LossFn], LossFn]] = None,
                 attention: AttentionPolicy | None = None) -> LossFn:
    """``loss(inputs [B, T], targets [B, T])``: forward under the policy's autocast, cross-entropy in fp32.

    With ``classify`` (``--objective classify``) the targets are class ids [B] and the
    model's output is pooled to [B, C] first (see :class:`~.objective.Classification`).

    Forward and loss live in one function so that torch.compile sees both: it can then fuse
    the fp32 upcast of the [B, T, V] logits into the softmax instead of writing a full fp32
    copy of them to memory (for a GPT-2-sized vocabulary, the largest tensor of the step).

    ``head`` (``--chunked-loss``): the model's output layer, which then passes its input
    through, and :func:`~.chunked_loss.linear_cross_entropy` computes the loss from the hidden
    states chunk by chunk, never holding the full logits.  ``compiler`` (``--compile``) is
    applied to the forward + loss; the head's pass-through is switched on around it, outside
    what torch.compile traces (it cannot trace setting a module's ``forward``).  ``attention``
    (``--attention-backend``): the SDPA kernels enabled around the forward, there too.
    """

    def loss(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with policy.autocast():
            logits = extract_logits(model(inputs))  # [B, T, V] ([B, C] or [B, T, C] for classify)
            if head is not None:  # (the head passed its input through: these are the hidden states)
                return linear_cross_entropy(logits, head, targets)
        if classify is not None:
            return F.cross_entropy(classify.pooled(logits.float(), inputs), targets)
        return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))

    run = compiler(loss) if compiler is not None else loss
    kernels = attention.order if attention is not None else ()
    if head is None and not kernels:
        return run

    def around(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with bypass(head) if head is not None else contextlib.nullcontext(), \
                attention.context() if kernels else contextlib.nullcontext():  # type: ignore[union-attr]
            return run(inputs, targets)

    return around
