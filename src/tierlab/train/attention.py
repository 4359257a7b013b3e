"""``--attention-backend``: which scaled_dot_product_attention kernel the training step runs, and which one ran.

torch picks an SDPA kernel per call from the ones enabled, in its own order.  On a
Hopper GPU (compute capability 9.x) cuDNN's attention is the fastest torch ships, but
torch does not put it first; ``auto`` does, then flash, then memory-efficient, then the
math fallback, with ``set_priority`` so that a shape one kernel cannot take falls through
to the next instead of failing.  A named backend is that kernel alone (and math, so an
unsupported shape still runs, slowly -- the start-up line then says "math").

What ran is not guessed: :func:`observe` runs one forward pass of the real model on a
real batch under a dispatch mode that sees the aten operator each SDPA call became, and
the start-up line names it ("flash (4 calls)", "the model does not call
scaled_dot_product_attention").  Models that do their own attention maths are left as
they are: the option changes nothing for them, and says so.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from ..errors import ConfigError

log = logging.getLogger(__name__)

BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
AUTO_ORDER = ("cudnn", "flash", "efficient", "math")
# aten operator -> the kernel's name (the CPU's flash kernel is flash too)
_OPS = {"_scaled_dot_product_cudnn_attention": "cudnn", "_scaled_dot_product_flash_attention": "flash",
        "_scaled_dot_product_flash_attention_for_cpu": "flash", "_scaled_dot_product_efficient_attention": "efficient",
        "_scaled_dot_product_fused_attention_overrideable": "overrideable"}


@dataclass(frozen=True)
class AttentionPolicy:
    requested: str
    order: tuple[str, ...]  # the kernels enabled, first choice first (empty: torch's own order)

    def context(self) -> contextlib.AbstractContextManager:
        if not self.order:
            return contextlib.nullcontext()
        return sdpa_kernel([BACKENDS[name] for name in self.order], set_priority=True)

    def describe(self) -> str:
        if not self.order:
            return "torch's own order: on a CPU, flash for CPU where the shape allows, else math"
        return " > ".join(self.order)


def choose(requested: str, device: torch.device) -> AttentionPolicy:
    """The kernels ``--attention-backend`` enables on ``device``; a CUDA kernel asked for on a CPU is refused."""
    if requested == "auto":
        if device.type != "cuda":
            return AttentionPolicy(requested, ())  # a CPU has flash (for CPU) and math: torch's order is right
        major, _ = torch.cuda.get_device_capability(device)
        order = AUTO_ORDER if major == 9 else tuple(n for n in AUTO_ORDER if n != "cudnn")
        return AttentionPolicy(requested, order)
    if device.type != "cuda" and requested in ("cudnn", "efficient"):
        raise ConfigError(f"--attention-backend {requested} is a CUDA kernel; this run is on {device}.",
                          "use --attention-backend auto (or flash / math, which a CPU has).")
    return AttentionPolicy(requested, (requested,) if requested == "math" else (requested, "math"))


class _CountCalls(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            self.calls += 1
        return func(*args, **(kwargs or {}))


class _SeeKernels(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.kernels: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = _OPS.get(func.overloadpacket.__name__)
        if name:
            self.kernels[name] += 1
        return func(*args, **(kwargs or {}))


def observe(model: nn.Module, inputs: torch.Tensor, policy: AttentionPolicy, autocast) -> str:
    """What the model's attention ran as in one no-grad forward on ``inputs``, in words for the start-up line."""
    calls, seen = _CountCalls(), _SeeKernels()
    devices = [inputs.device] if inputs.device.type == "cuda" else []
    try:  # (the run's random numbers stay as they were: dropout draws from a forked generator)
        with torch.random.fork_rng(devices=devices, device_type=inputs.device.type), torch.no_grad(), autocast(), \
                policy.context(), calls, seen:
            model(inputs)
    except Exception as exc:  # noqa: BLE001 - the training step reports a real failure plainly; this only names
        return f"could not be observed ({type(exc).__name__})"
    if not calls.calls:
        return "the model does not call scaled_dot_product_attention (its own attention maths; the option changes nothing)"
    fused = sum(seen.kernels.values())
    parts = [f"{name} ({n} call{'s' if n != 1 else ''})" for name, n in seen.kernels.most_common()]
    if fused < calls.calls:
        parts.append(f"math ({calls.calls - fused} call{'s' if calls.calls - fused != 1 else ''})")
    return ", ".join(parts)
