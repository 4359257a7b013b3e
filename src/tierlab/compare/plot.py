"""compare.png: validation loss against tokens and against training time, each side's seeds as a band."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from . import CompareResult

COLOURS = {"model": "tab:blue", "baseline": "tab:orange"}


def save_plot(result: CompareResult, path: Path) -> Path:
    import matplotlib

    from . import shown

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_tokens, by_time) = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    for name, side in (("model", result.model), ("baseline", result.baseline)):
        curves = side.curves
        label = f"{name}: {shown(side.spec)} ({side.counts.non_embedding:,} non-embedding params)"
        for axis, x in ((by_tokens, 0), (by_time, 1)):
            _band(axis, curves, x, COLOURS[name], label)
    by_tokens.set(xlabel="tokens", ylabel="val loss", title="validation loss at equal tokens")
    by_time.set(xlabel="training time (s)", ylabel="val loss", title="validation loss at equal training time")
    if result.equal_seconds:
        by_time.axvline(result.equal_seconds, color="grey", linestyle=":", linewidth=1)
    for axis in (by_tokens, by_time):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.suptitle(f"{len(result.seeds)} seed(s) per side: mean line, min-max band", fontsize=10)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def eval_curve(records: list[dict]) -> tuple[list[tuple[float, float, float]], float]:
    """((tokens, training seconds, val loss) at each evaluation, total training seconds) of a run's metrics records.

    Training time is summed from the step times of the train records (evaluations left out),
    so both sides are timed alike, whatever else the machine did between log steps.
    """
    seconds, last, at = 0.0, 0, {0: 0.0}
    points = []
    for r in records:
        if r.get("kind") == "train" and r.get("step_ms") is not None:
            seconds += r["step_ms"] / 1000 * (r["step"] - last)
            last, at[r["step"]] = r["step"], seconds
        elif r.get("kind") == "eval" and r.get("val_loss") is not None:
            points.append((r["tokens"], at.get(r["step"], seconds), r["val_loss"]))
    return points, seconds


def _band(axis, curves: list[list[tuple[float, float, float]]], x: int, colour: str, label: str) -> None:
    length = min(len(c) for c in curves) if curves else 0
    if not length:
        return
    xs = [sum(c[i][x] for c in curves) / len(curves) for i in range(length)]
    losses = [[c[i][2] for c in curves] for i in range(length)]
    axis.plot(xs, [sum(v) / len(v) for v in losses], color=colour, label=label)
    if len(curves) > 1:
        axis.fill_between(xs, [min(v) for v in losses], [max(v) for v in losses], color=colour, alpha=0.2)
