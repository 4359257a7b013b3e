"""When training goes non-finite: the policy (skip, raise, rollback), the stop rules, the diagnosis.

The loop never looks at a loss or a gradient between log steps.  At each log step it hands
the buffered rows to :class:`Guard`, which counts skipped steps, notices non-finite
losses, and either lets training go on, asks for a rollback, or stops it with a
:class:`Diverged` error whose message is the diagnosis a person reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .device import native_bf16


class Diverged(Exception):
    """Training cannot usefully go on; ``str(err)`` is the diagnosis. The CLI exits with code 3."""

    exit_code = 3


@dataclass
class GuardState:
    consecutive_skips: int = 0
    rollbacks: int = 0
    lr_scale: float = 1.0
    scale_history: list = field(default_factory=list)  # [step, from, to] of every loss-scale change
    # The current run of consecutive skipped steps: where it began and what was wrong then.
    streak_start: int | None = None
    streak_loss: str | None = None  # "nan"/"inf" when the loss itself was not finite, else None
    streak_params: list = field(default_factory=list)  # parameters with non-finite gradients then
    streak_params_step: int | None = None


class Guard:
    def __init__(self, policy: str, max_consecutive_skips: int, min_loss_scale: float, scales_loss: bool):
        self.policy, self.max_consecutive_skips = policy, max_consecutive_skips
        self.min_loss_scale, self.scales_loss = min_loss_scale, scales_loss
        self.state = GuardState()

    def observe(self, step: int, loss: float, skipped: bool, scale: float | None, previous_scale: float | None
                ) -> bool:
        """Account for one step; True when this step counts as non-finite for the policy.

        With a GradScaler, an overflow skip is the scaler calibrating itself, not a fault: the
        policy reacts to a non-finite *loss* (the forward pass itself overflowed). Without a
        scaler, any skipped step had non-finite gradients and counts.
        """
        if skipped and self.state.consecutive_skips == 0:
            self.state.streak_start = step
            self.state.streak_loss = None if math.isfinite(loss) else str(loss)
            self.state.streak_params, self.state.streak_params_step = [], None
        self.state.consecutive_skips = self.state.consecutive_skips + 1 if skipped else 0
        if self.scales_loss and scale != previous_scale:
            self.state.scale_history.append([step, previous_scale, scale])
        return (not math.isfinite(loss)) or (skipped and not self.scales_loss)

    def stop_reason(self, step: int, scale: float | None) -> str | None:
        if self.state.consecutive_skips >= self.max_consecutive_skips:
            return (f"{self.state.consecutive_skips} consecutive steps up to step {step} were skipped for "
                    f"non-finite gradients (limit --max-consecutive-skips {self.max_consecutive_skips})")
        if self.scales_loss and scale is not None and scale < self.min_loss_scale:
            return f"the fp16 loss scale fell to {scale:g}, below --min-loss-scale {self.min_loss_scale:g}"
        return None

    def note_params(self, step: int, names: list[str]) -> None:
        """Parameters with non-finite gradients at ``step``; kept for the first skip of a streak."""
        if self.state.streak_params_step is None:
            self.state.streak_params, self.state.streak_params_step = names, step

    def diagnosis(self, headline: str, device: torch.device, precision: str, lr: float, n_params: int) -> str:
        s = self.state
        lines = [headline]
        if s.streak_start is not None and s.streak_loss:
            lines.append(f"  the trouble began at step {s.streak_start}, where the loss itself was {s.streak_loss}: "
                         "the forward pass produced non-finite values"
                         + (" (an activation beyond fp16's 65504?)" if precision == "fp16" else ""))
        elif s.streak_start is not None:
            lines.append(f"  the trouble began at step {s.streak_start}: the loss was finite but the gradients "
                         "were not (they overflowed in the backward pass)")
        if s.streak_params:
            count = len(s.streak_params)
            shown = ("all of them" if count == n_params else
                     ", ".join(s.streak_params[:6]) + (", ..." if count > 6 else ""))
            lines.append(f"  non-finite gradients at step {s.streak_params_step}: {count} of {n_params} "
                         f"parameters: {shown}")
        if self.scales_loss:
            history = s.scale_history
            if len(history) > 8:
                trail = _trail(history[:2]) + " -> ... -> " + _trail(history[-5:])
            else:
                trail = _trail(history) or "unchanged"
            start = history[0][1] if history else None
            lines.append(f"  loss scale history: {f'{start:g} at start -> ' if start else ''}{trail}")
        lines.append("  what to do:")
        lines.extend(f"    - {tip}" for tip in advice(device, precision, lr))
        return "\n".join(lines)


def _trail(history: list) -> str:
    return " -> ".join(f"{to:g} @ {step}" for step, _, to in history)


def advice(device: torch.device, precision: str, lr: float) -> list[str]:
    tips = []
    has_bf16 = native_bf16(device)
    if precision == "fp16":
        if has_bf16:
            tips.append("this hardware supports bf16: --precision bf16 has fp32's range and needs no loss scaling")
        else:
            tips.append("fp16's range (max 65504) is too small for some activation or gradient; try --precision "
                        "fp32 to confirm, then find the layer that grows (normalisation, attention scale)")
    tips.append(f"lower the learning rate (now {lr:.3g}), e.g. --lr {lr / 3:.2g}, or lengthen --warmup-steps")
    tips.append("check the model: a missing 1/sqrt(d) attention scale, a missing normalisation or an "
                "exploding residual branch produce exactly this")
    tips.append("resume from the last good checkpoint with the change: tierlab train --resume RUN "
                "--allow-config-change ...")
    return tips
