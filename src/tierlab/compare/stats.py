"""Seed statistics: mean and spread per side, and whether a difference is more than seed-to-seed noise.

The verdict is Welch's t-test at 95% (two-sided): the difference of the means against the
standard error of that difference, from each side's own seed-to-seed variance.  With one
seed per side there is no spread to compare against, and the verdict says so.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any

# Two-sided 95% critical values of Student's t by degrees of freedom (beyond 30: the normal's 1.96).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


@dataclass(frozen=True)
class Spread:
    mean: float
    std: float | None  # sample standard deviation; None with one value
    values: list[float]

    def text(self, digits: int = 4) -> str:
        if not math.isfinite(self.mean):
            return "-"
        return f"{self.mean:.{digits}f}" + (f" ± {self.std:.{digits}f}" if self.std is not None else "")


def spread(values: list[float]) -> Spread:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return Spread(float("nan"), None, list(values))
    return Spread(statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else None, list(values))


@dataclass(frozen=True)
class Verdict:
    better: str | None  # the side with the lower value, when the difference is more than noise; None: a tie
    difference: float  # model - baseline
    spread: float | None  # the seed-to-seed standard deviation (the two sides' pooled)
    t: float | None
    critical: float | None
    text: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verdict(model: list[float], baseline: list[float], names: tuple[str, str] = ("model", "baseline"),
            what: str = "val loss") -> Verdict:
    """Is the lower of the two sides' ``what`` (lower is better) lower by more than the seeds' noise?"""
    a, b = spread(model), spread(baseline)
    diff = a.mean - b.mean
    if a.values == b.values and len(a.values) > 1:  # the same figures, seed by seed: identical runs
        return Verdict(None, 0.0, a.std, 0.0, None, f"a tie: both sides' {what} is the same on every seed "
                       f"(mean {a.mean:.4f})")
    lower, higher = (names[0], names[1]) if diff < 0 else (names[1], names[0])
    if a.std is None or b.std is None:
        return Verdict(None, diff, None, None, None,
                       f"{names[0]} {a.mean:.4f} vs {names[1]} {b.mean:.4f} ({what}, one seed each): a difference of "
                       f"{abs(diff):.4f} cannot be told from seed-to-seed noise with one seed; run --seeds 3 or more")
    n_a, n_b = len(a.values), len(b.values)
    pooled = math.sqrt((a.std ** 2 + b.std ** 2) / 2)
    error = math.sqrt(a.std ** 2 / n_a + b.std ** 2 / n_b)
    if error == 0:  # no noise at all: identical runs (a tie) or a difference that is all signal
        if diff == 0:
            return Verdict(None, 0.0, 0.0, None, None, f"a tie: both sides' {what} is the same on every seed "
                           f"(mean {a.mean:.4f})")
        return Verdict(lower, diff, 0.0, math.inf, None, f"{lower} is better: {what} lower by {abs(diff):.4f} on "
                       "every seed, with no seed-to-seed spread at all")
    t = diff / error
    df = error ** 4 / ((a.std ** 2 / n_a) ** 2 / (n_a - 1) + (b.std ** 2 / n_b) ** 2 / (n_b - 1))
    critical = _critical(df)
    ratio = abs(diff) / pooled if pooled else math.inf
    if abs(t) > critical:
        text = (f"{lower} is better: {what} lower by {abs(diff):.4f} ({ratio:.1f}x the seed-to-seed spread of "
                f"{pooled:.4f}; Welch t = {abs(t):.2f} > {critical:.2f}, 95%)")
        return Verdict(lower, diff, pooled, t, critical, text)
    text = (f"a tie: {lower} is lower by {abs(diff):.4f} ({ratio:.1f}x the seed-to-seed spread of {pooled:.4f}), "
            f"but with {n_a} and {n_b} seeds that is within noise (Welch t = {abs(t):.2f} <= {critical:.2f}, 95%): "
            f"{higher} is not shown worse; more seeds can tell")
    return Verdict(None, diff, pooled, t, critical, text)


def _critical(df: float) -> float:
    """The 95% two-sided critical t for ``df`` degrees of freedom (the table's next smaller entry: conservative)."""
    usable = [k for k in _T95 if k <= max(1.0, df)]
    return _T95[max(usable)] if df <= 30 else 1.96
