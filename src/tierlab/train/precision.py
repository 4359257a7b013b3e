"""Precision as a small policy object: which dtype, why, and the five operations it changes.

The loop runs inside ``activate()``, calls ``autocast()``, ``backward()``, ``unscale_()``,
``step()`` and reads ``loss_scale``; everything that differs between fp32, tf32, bf16 and
fp16 + GradScaler lives here.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from ..errors import ModelError, PrecisionError
from ..precisions import PRECISIONS
from ._torch_internals import fused_step_unless, scaler_found_inf, scaler_scale
from . import fp8
from .device import cpu_native_bf16

log = logging.getLogger(__name__)

# Autocast dtype per precision (None: no autocast; tf32 changes how fp32 matmuls run instead).
DTYPES = {name: getattr(torch, p.autocast) if p.autocast else None for name, p in PRECISIONS.items()}


@dataclass(frozen=True)
class PrecisionDecision:
    requested: str
    used: str
    reason: str
    warning: str | None = None  # said to the user when the choice has a cost
    fallback: bool = False  # True when the request could not be honoured
    measured: dict | None = None  # auto's timing figures, where it measured (see auto_precision)

    def as_event(self) -> dict:
        return {"requested": self.requested, "used": self.used, "reason": self.reason,
                "fallback": self.fallback, "warning": self.warning, "measured": self.measured}


def decide_precision(requested: str, device: torch.device, strict: bool = False,
                     measure: Callable[[str], PrecisionDecision] | None = None) -> PrecisionDecision:
    """Turn ``--precision`` into the precision to run, with the reason in words.

    ``measure(flag)``: how ``auto`` decides on a CPU with native bf16, where the flag alone
    does not tell (an :class:`~tierlab.train.auto_precision.AutoProbe`); without it, ``auto``
    keeps fp32 there.
    """
    if requested == "auto":
        return _auto(device, measure)
    spec = PRECISIONS[requested]
    problem = _cannot_run(requested, device)
    if problem:
        if strict:
            raise PrecisionError(f"--precision {requested} cannot run here: {problem}.",
                                 "choose another precision or drop --strict-precision to fall back to fp32.")
        return PrecisionDecision(requested, "fp32", f"{requested} cannot run here ({problem}); fell back to fp32",
                                 warning=f"{requested} cannot run here ({problem}); training in fp32 instead",
                                 fallback=True)
    warning = None
    if device.type == "cpu" and spec.linear_fp8:  # (only with fp8.EMULATE_ENV set)
        warning = (f"fp8 on this CPU is emulated ({fp8.EMULATE_ENV}=1): the same conversion and rounding as on a GPU, "
                   "for checking, at many times fp32's step time")
    elif device.type == "cpu" and spec.autocast and not (spec.autocast == "bfloat16" and cpu_native_bf16()):
        kind = _dtype_name(DTYPES[requested]).replace("bfloat16", "bf16").replace("float16", "fp16")
        warning = (f"{requested} autocast on this CPU is a correctness path, not a speed path: it runs "
                   f"several times slower than fp32 (no native {kind} matrix units); use --precision fp32 for speed")
    return PrecisionDecision(requested, requested, spec.requested, warning=warning)


def _auto(device: torch.device, measure: Callable[[str], PrecisionDecision] | None) -> PrecisionDecision:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if torch.cuda.is_bf16_supported():
            return PrecisionDecision("auto", "bf16", f"{name} supports bf16: bf16 autocast, no loss scaling needed")
        major, minor = torch.cuda.get_device_capability(device)
        return PrecisionDecision("auto", "fp16", f"{name} (compute capability {major}.{minor}) has no bf16: "
                                 "fp16 autocast with a GradScaler")
    flag = cpu_native_bf16()
    if flag and measure is not None:
        return measure(flag)
    if flag:
        return PrecisionDecision("auto", "fp32", f"this CPU has native bf16 ({flag}), but whether bf16 is faster "
                                 "than fp32 depends on the model and batch shape, and nothing was measured: fp32")
    return PrecisionDecision("auto", "fp32", "this CPU has no native bf16 (avx512_bf16 or AMX): fp32 is the "
                             "fastest here, low-precision autocast would be several times slower")


def _cannot_run(precision: str, device: torch.device) -> str | None:
    """Why torch cannot run ``precision`` on ``device``, or None when it can (probed for real)."""
    spec = PRECISIONS[precision]
    if spec.cuda_compute is not None and not (spec.linear_fp8 and device.type == "cpu" and fp8.emulated()):
        if device.type != "cuda":
            return f"{spec.not_on_cpu}; it does not exist on a CPU"
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < spec.cuda_compute:
            return (f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor}) has no "
                    f"{spec.cuda_feature}")
    if spec.linear_fp8 and fp8.torchao_problem():
        return fp8.torchao_problem()
    if spec.autocast is None:
        return None
    if device.type == "cuda" and spec.autocast == "bfloat16" and not torch.cuda.is_bf16_supported():
        return f"{torch.cuda.get_device_name(device)} has no bf16 support"
    try:
        layer = nn.Linear(8, 8).to(device)
        with torch.autocast(device.type, dtype=DTYPES[precision]):
            layer(torch.ones(2, 8, device=device)).sum().backward()
        if spec.loss_scaling:
            torch.amp.GradScaler(device.type)
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot run", reported as such
        return f"{type(exc).__name__}: {exc}"
    return None


class PrecisionPolicy:
    """Runs one precision: autocast, loss scaling, skip detection, and the optimizer step."""

    def __init__(self, decision: PrecisionDecision, device: torch.device,
                 init_scale: float = 2.0**16, growth_interval: int = 2000):
        self.decision = decision
        self.device = device
        self.spec = PRECISIONS[decision.used]
        self.dtype = DTYPES[decision.used]
        self.scaler = (torch.amp.GradScaler(device.type, init_scale=init_scale, growth_interval=growth_interval)
                       if self.spec.loss_scaling else None)
        self.fp8_plan: list[fp8.LayerPlan] | None = None  # --precision fp8: per linear layer, set by prepare_model

    @property
    def scales_loss(self) -> bool:
        """Whether a GradScaler runs: the loss scale is logged and an overflow skip is calibration, not a fault."""
        return self.scaler is not None

    @property
    def name(self) -> str:
        return self.decision.used

    def prepare_model(self, model: nn.Module, tokens_per_batch: int, layers: str = "auto") -> list[fp8.LayerPlan] | None:
        """fp8: swap the linear layers that gain at ``tokens_per_batch`` rows (``layers="all"``: every one the
        kernels take) for fp8 ones, in place; the plan."""
        if not self.spec.linear_fp8:
            return None
        self.fp8_plan = fp8.convert(model, tokens_per_batch, layers)
        return self.fp8_plan

    def check_model(self, model: nn.Module) -> None:
        """Refuse fp16 trainable parameters under a GradScaler before any step runs."""
        if self.scaler is None:
            return
        half = _trainable_stored_in(model, torch.float16)
        if half:
            raise ModelError(
                f"{_stored(half, torch.float16)}; GradScaler cannot unscale fp16 gradients "
                "('Attempting to unscale FP16 gradients').",
                "keep the weights in float32 (drop model.half()); --precision fp16 already runs the "
                "maths in fp16 through autocast.")

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        """The process-wide settings this precision needs, for as long as the loop runs.

        fp32 means strict IEEE matmuls ("highest"), tf32 lets fp32 matmuls use TF32 tensor
        cores ("high"); the previous setting comes back on exit, so runs in one process (or
        interleaved benchmark rounds) do not leak their choice into each other.
        """
        wanted = self.spec.matmul
        previous = torch.get_float32_matmul_precision()
        if wanted:
            torch.set_float32_matmul_precision(wanted)
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(previous)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring gradients to their true size, so clipping and the logged norm mean something."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer, grad_norm: torch.Tensor, norm_decides: bool = False,
             skipped_out: torch.Tensor | None = None) -> torch.Tensor:
        """Step the (fused) optimizer unless gradients are non-finite; return ``skipped`` (1.0 or 0.0) on device.

        Without a scaler, a non-finite gradient norm is handed to the fused kernel as
        ``found_inf`` (the same protocol GradScaler uses), so the update is dropped on the
        device and the host never has to look.  With a GradScaler, its own ``found_inf`` is
        the flag: the step was skipped exactly when it is set (and ``update()`` lowers the
        scale) -- unlike "was optimizer.step() called", this holds for fused optimizers,
        which skip inside the kernel.  ``norm_decides``: the scaler's overflow check is
        widened to the gradient norm's (sharded gradients, --fsdp).  ``skipped_out``: a
        float32 0-dim tensor (a view into the loop's buffer) to write the flag into.
        """
        if self.scaler is None:
            found_inf = _nonfinite(grad_norm, out=skipped_out)
            fused_step_unless(optimizer, found_inf)
            return found_inf
        if norm_decides:
            # Sharded gradients: the scaler found overflow in this rank's shards only; the
            # global norm is non-finite when any rank's is, so it makes the call for all.
            overflow = _nonfinite(grad_norm)
            for found in scaler_found_inf(self.scaler, optimizer):
                torch.maximum(found, overflow.to(found.device), out=found)
        self.scaler.step(optimizer)
        found = scaler_found_inf(self.scaler, optimizer)  # cleared by update()
        self.scaler.update()
        skipped = found[0] if len(found) == 1 else torch.stack([f.to(self.device) for f in found]).amax()
        return skipped_out.copy_(skipped) if skipped_out is not None else skipped

    @property
    def loss_scale(self) -> torch.Tensor | None:
        """The current scale as a device tensor (no host sync), or None without a scaler."""
        return scaler_scale(self.scaler) if self.scaler is not None else None

    def state_dict(self) -> dict:
        # The decision travels with the checkpoint: a resume with --precision auto keeps it.
        return {"scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "decision": {**self.decision.as_event(), "device_type": self.device.type}}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def _nonfinite(norm: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """1.0 where ``norm`` is inf or NaN, else 0.0 (float32, GradScaler's ``found_inf`` convention).

    norm * 0 is 0 for a finite norm and NaN for inf or NaN: two kernels, not isfinite's five.
    """
    return torch.nan_to_num(norm.float() * 0, nan=1.0, out=out)


def low_precision_weights(model: nn.Module) -> tuple[str, str] | None:
    """(problem, fix) when trainable weights are stored in bf16/fp16 (no float32 master copy), else None.

    The optimizer then adds each update to a 16-bit weight: an update below the weight's
    rounding step (1/256 of it in bf16) is lost, and training slows or stalls with no
    error. Autocast gets the speed without that: fp32 weights, 16-bit maths.
    """
    precision, names = max(((p, _trainable_stored_in(model, DTYPES[p])) for p in ("bf16", "fp16")),
                           key=lambda found: len(found[1]))
    if not names:
        return None
    kind = _dtype_name(DTYPES[precision])
    problem = (f"{_stored(names, DTYPES[precision])}: the optimizer updates them in {kind}, with no float32 master "
               "copy, so updates smaller than the weights' rounding step are lost and training can stall")
    fix = (f"keep the weights in float32 (drop the .to({kind}) / .half()) and train with --precision {precision}, "
           f"which runs the maths in {kind} through autocast")
    return problem, fix


def _trainable_stored_in(model: nn.Module, dtype: torch.dtype) -> list[str]:
    """Names of the trainable parameters held in ``dtype``."""
    return [n for n, p in model.named_parameters() if p.requires_grad and p.dtype == dtype]


def _stored(names: list[str], dtype: torch.dtype) -> str:
    """The phrase naming them: N trainable parameter(s) are stored in DTYPE (the first three, ...)."""
    return (f"{len(names)} trainable parameter(s) are stored in {_dtype_name(dtype)} ({', '.join(names[:3])}"
            f"{', ...' if len(names) > 3 else ''})")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")
