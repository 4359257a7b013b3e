"""Every private torch interface tierlab relies on, in one place, each behind a named function.

The sync-free training step needs four things torch has no public API for: GradScaler's
overflow flags and its scale as device tensors (the public ``get_scale()`` copies the scale
to the host), the fused optimizers' ``grad_scale`` / ``found_inf`` attributes (how GradScaler
itself tells a fused kernel to drop an update, used here without a scaler too), and the
multi-tensor ``_foreach`` kernels that ``clip_grad_norm_`` is built on.  When a torch release
changes one of these, ``tests/train/test_torch_internals.py`` fails here, naming it, instead
of the loop misbehaving quietly.
"""

from __future__ import annotations

import torch


def scaler_scale(scaler: torch.amp.GradScaler) -> torch.Tensor:
    """The current loss scale as a 0-dim device tensor (internal: ``GradScaler._scale``), read without a sync."""
    return scaler._scale  # noqa: SLF001


def scaler_found_inf(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The scaler's overflow flags for ``optimizer``, one per device (internal; set by unscale_, cleared by update)."""
    return list(scaler._per_optimizer_states[id(optimizer)]["found_inf_per_device"].values())  # noqa: SLF001


def fused_step_unless(optimizer: torch.optim.Optimizer, found_inf: torch.Tensor) -> None:
    """``optimizer.step()`` that the fused kernel itself drops where ``found_inf`` is 1.0 (no host sync).

    Internal: GradScaler hands a fused optimizer ``grad_scale`` and ``found_inf`` as
    attributes for the duration of ``step()``; the same protocol without a scaler.
    """
    optimizer.grad_scale, optimizer.found_inf = None, found_inf
    try:
        optimizer.step()
    finally:
        del optimizer.grad_scale, optimizer.found_inf


def foreach_norm(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The L2 norm of each tensor, in one multi-tensor kernel launch (internal: ``torch._foreach_norm``)."""
    return list(torch._foreach_norm(tensors))  # noqa: SLF001


def foreach_mul_(tensors: list[torch.Tensor], factor: torch.Tensor) -> None:
    """Multiply every tensor in place by a 0-dim device tensor (internal: ``torch._foreach_mul_``)."""
    torch._foreach_mul_(tensors, factor)  # noqa: SLF001
