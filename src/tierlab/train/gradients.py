"""Gradient handling between backward and the optimizer step: when ranks reduce, how norms are read and clipped."""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ._torch_internals import foreach_mul_, foreach_norm
from .distributed import Dist, local


def sync_gradients_if(net: nn.Module, dist: Dist, last: bool) -> contextlib.AbstractContextManager:
    """Gradients are reduced across ranks once per optimizer step, in the last micro-batch's backward."""
    if dist.sharded:  # FSDP2: a flag on the module, not a context
        net.set_requires_gradient_sync(last)
        return contextlib.nullcontext()
    if last or not isinstance(net, DistributedDataParallel):
        return contextlib.nullcontext()
    return net.no_sync()


def clip_gradients(params: list[tuple[str, nn.Parameter]], total: torch.Tensor, per_param: torch.Tensor,
                   clip: float, dist: Dist) -> None:
    """Write the norms before clipping into ``total`` (0-dim) and ``per_param`` [P]; clip when ``clip`` > 0.

    The same arithmetic as clip_grad_norm_, kept in the open because the per-parameter
    norms name the layers that went non-finite, at no extra cost.  No host sync.
    """
    grads = [p.grad for _, p in params]
    present = [g for g in grads if g is not None]
    if dist.sharded:
        present = [local(g) for g in present]  # this rank's shards
    norms = [n.float() for n in foreach_norm(present)] if present else []
    if len(present) < len(grads):  # parameters without a gradient this step count as 0
        it, zero = iter(norms), torch.zeros((), device=total.device)
        norms = [next(it) if g is not None else zero for g in grads]
    if dist.sharded:  # the shards' squared norms add up to each parameter's (one small all-reduce)
        per_param.copy_(dist.sum_(torch.stack(norms).square()).sqrt())
    else:
        torch.stack(norms, out=per_param)
    torch.linalg.vector_norm(per_param, out=total)
    if clip > 0 and present:
        coef = torch.clamp(clip / (total + 1e-6), max=1.0)
        foreach_mul_(present, coef)
