"""The precision doctor: is this model safe in fp16 or bf16, measured before a single training step.

One fp32 forward and backward with hooks on every module records activation and gradient
magnitudes; fp16 and bf16 autocast forwards give the error against an fp32 one (all three
in eval mode, so dropout does not count as precision error).  From these:
fp16 headroom per module (in powers of two below 65504), the share of gradient values that
fp16 would flush to zero at GradScaler's initial scale and at the scale it would settle at,
and a recommendation with its reasons.
"""

from __future__ import annotations

import contextlib
import math

import torch

from ..train.auto_precision import AutoProbe
from ..train.device import native_bf16
from ..train.precision import PrecisionDecision, decide_precision
from .checks import Probe
from .report import CheckResult

FP16_MAX = 65504.0
FP16_TINY = 2.0**-24  # smallest fp16 subnormal: anything smaller becomes 0
NEAR = 4  # within 2^4 of the fp16 maximum counts as "close"


def _first_tensor(output):
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return next((o for o in output if isinstance(o, torch.Tensor)), None)
    return getattr(output, "logits", None)


def _measure(p: Probe, ids: torch.Tensor):
    acts: dict[str, float] = {}
    grads: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in p.model.named_modules():
        if not name:
            continue

        def hook(mod, args, output, name=name):
            t = _first_tensor(output)
            if t is None or not t.is_floating_point():
                return
            acts[name] = max(acts.get(name, 0.0), t.detach().abs().float().max().item())
            if t.requires_grad:
                t.register_hook(lambda g, name=name: grads.__setitem__(name, g.detach().abs().float().flatten()))

        handles.append(module.register_forward_hook(hook))
    try:
        p.model.train()  # training's activations (dropout's rescaling included) are what must fit fp16
        p.loss(p.logits(ids), ids).backward()
    finally:
        for h in handles:
            h.remove()
        p.model.zero_grad(set_to_none=True)
    return acts, grads


def _eval_forward(p: Probe, ids: torch.Tensor, dtype: torch.dtype | None = None):
    """Logits (as float32) and loss of one eval-mode forward, under autocast to ``dtype`` when given.

    Eval mode on both sides of the comparison: with dropout on, two fp32 forwards would
    already differ by tens of percent, and that is not what the precision costs.
    """
    p.model.eval()
    autocast = torch.autocast(p.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with torch.no_grad(), autocast:
        logits = p.logits(ids)
    logits = logits.float()
    return logits, p.loss(logits, ids).item()


def _auto_here(p: Probe) -> PrecisionDecision:
    """What ``--precision auto`` picks for this model at the probe's batch shape (measured, or from the cache)."""
    block = p.tokens(p.batch_size, p.seq_len + 1, seed=3)  # inputs [B, T] and their targets
    if p.classify is not None:
        block[:, -1] %= p.vocab  # the last column of a classification block is the row's class id
    return decide_precision("auto", p.device, measure=AutoProbe(p.model, block, p.device, None, None,
                                                                classify=p.classify))


def precision_doctor(p: Probe) -> tuple[CheckResult, str]:
    ids = p.tokens(min(p.batch_size, 2), min(p.seq_len, 32), seed=7)
    acts, grads = _measure(p, ids)
    ref_logits, ref_loss = _eval_forward(p, ids)
    headroom = {n: (math.log2(FP16_MAX / a) if a > 0 else math.inf) for n, a in acts.items()}
    overflow = sorted((n for n, h in headroom.items() if h < 0), key=lambda n: headroom[n])
    near = sorted((n for n, h in headroom.items() if 0 <= h < NEAR), key=lambda n: headroom[n])
    values = torch.cat(list(grads.values())) if grads else torch.zeros(0)
    nonzero = values[values > 0]
    max_grad = nonzero.max().item() if nonzero.numel() else 0.0
    settle = 2.0 ** min(24, math.floor(math.log2(FP16_MAX / max_grad))) if max_grad > 0 else 2.0**16
    underflow = {f"scale_2^{int(math.log2(s))}": (nonzero * s < FP16_TINY).float().mean().item()
                 if nonzero.numel() else 0.0 for s in (2.0**16, settle)}
    errors = {}
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        try:
            logits, loss = _eval_forward(p, ids, dtype)
        except Exception as exc:  # noqa: BLE001 - the device cannot run it: say so
            errors[name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        finite = bool(torch.isfinite(logits).all())
        rel = ((logits - ref_logits).norm() / ref_logits.norm().clamp_min(1e-12)).item() if finite else math.inf
        errors[name] = {"finite": finite, "logits_rel_error": rel, "loss": loss,
                        "loss_rel_error": abs(loss - ref_loss) / max(abs(ref_loss), 1e-12)}
    fp16 = errors.get("fp16", {})
    reasons = []
    if overflow:
        reasons.append(f"activations beyond fp16's 65504 in {', '.join(overflow[:4])}")
    if near:
        reasons.append(f"within 2^{NEAR} of fp16's maximum in {', '.join(near[:4])}")
    if fp16 and not fp16.get("finite", False):
        reasons.append("the fp16 forward produces inf/NaN")
    under = underflow[f"scale_2^{int(math.log2(settle))}"]
    if under > 0.01:
        reasons.append(f"{under:.1%} of gradient values would underflow to zero even at the settled scale")
    fp16_safe = not reasons
    native = native_bf16(p.device)
    bf16_ok = errors.get("bf16", {}).get("finite", False)
    # A CPU with native bf16: whether bf16 is faster depends on the model, so say what auto measures here.
    auto = _auto_here(p) if native and p.device.type == "cpu" else None
    keep = overflow + near
    not_fp16 = "not fp16 (" + "; ".join(reasons) + ")"
    keep_note = f"; to use fp16 anyway keep {', '.join(keep[:4])} in fp32" if keep else ""
    also_not_fp16 = "" if fp16_safe else f"; {not_fp16}{keep_note}"  # said after what auto picks
    if auto is not None and auto.used == "fp32":
        advice = f"fp32, which --precision auto picks here ({auto.reason}){also_not_fp16}"
    elif native and bf16_ok:
        advice = "bf16: native on this device and has fp32's range, so no loss scaling is needed"
        if auto is not None:
            advice += f"; --precision auto picks it here ({auto.reason}){also_not_fp16}"
    elif fp16_safe:
        advice = ("fp16 with GradScaler: activations keep their headroom and gradients survive at the settled "
                  f"scale 2^{int(math.log2(settle))}; bf16 where the hardware has it")
    else:
        advice = f"{not_fp16}: use bf16 where the hardware has it, otherwise fp32{keep_note}"
    if p.device.type == "cpu" and not native:
        advice += " (on this CPU, fp32 is also the fastest)"
    worst = min(headroom.items(), key=lambda kv: kv[1]) if headroom else ("-", math.inf)
    figures = {"max_activation": acts, "fp16_headroom_pow2": headroom, "overflow_modules": overflow,
               "near_overflow_modules": near, "max_activation_grad": max_grad, "settled_loss_scale": settle,
               "grad_underflow_fraction": underflow, "autocast": errors, "fp16_safe": fp16_safe,
               "auto": auto.as_event() if auto is not None else None}
    summary = (f"fp16 {'safe' if fp16_safe else 'UNSAFE'}: least headroom 2^{worst[1]:.1f} in {worst[0]}; "
               f"gradient underflow {underflow['scale_2^16']:.2%} at 2^16, {under:.2%} at settled 2^"
               f"{int(math.log2(settle))}; logits rel. error fp16 "
               f"{fp16.get('logits_rel_error', math.nan):.2g}, bf16 "
               f"{errors.get('bf16', {}).get('logits_rel_error', math.nan):.2g}")
    status = "pass" if fp16_safe else "warn"
    return CheckResult("precision_doctor", status, summary, figures, advice), advice
