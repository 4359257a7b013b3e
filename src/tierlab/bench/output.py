"""What ``tierlab bench precision`` shows: a text table, a JSON file and a PNG bar chart."""

from __future__ import annotations

import json
from pathlib import Path

from .precision import BenchResult, BenchRow

COLUMNS = ("precision", "step ms", "tokens/s", "vs fp32", "peak MB", "MFU", "val loss", "Δ fp32", "skipped",
           "compile s")


def _cells(r: BenchRow) -> list[str]:
    if r.status != "ok":
        return [r.precision, f"{r.status}: {r.reason}"]

    def fmt(value, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    return [r.precision, fmt(r.median_step_ms, ".1f"), fmt(r.tokens_per_s, ",.0f"),
            "-" if r.speedup_vs_fp32 is None else f"{r.speedup_vs_fp32:.2f}x", fmt(r.peak_mem_mb, ",.0f"),
            "-" if r.mfu is None else f"{100 * r.mfu:.1f}%", fmt(r.val_loss, ".4f"),
            fmt(r.val_loss_diff_vs_fp32, "+.4f"), fmt(r.skipped_steps, "d"), fmt(r.compile_s, ".1f")]


def table(result: BenchResult) -> str:
    """A plain-text table, headed by what was measured, with the verdict underneath."""
    head = (f"{result.model} ({result.params / 1e6:.1f} M parameters) on {result.device_name} "
            f"[{result.device}], torch {result.torch_version}\n"
            f"batch {result.batch_size} x seq {result.seq_len} = {result.tokens_per_step:,} tokens/step; "
            f"{result.warmup_steps} warm-up + {result.steps} timed steps per precision, interleaved"
            f"{'; ' + _compiled(result) if result.compile else ''}\n")
    rows = [_cells(r) for r in result.rows]
    widths = [max(len(COLUMNS[i]), *(len(c[i]) for c in rows if len(c) == len(COLUMNS)))
              for i in range(len(COLUMNS))]
    lines = ["  ".join(name.rjust(w) if i else name.ljust(w) for i, (name, w) in enumerate(zip(COLUMNS, widths)))]
    for cells in rows:
        if len(cells) == len(COLUMNS):
            lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))))
        else:
            lines.append(f"{cells[0].ljust(widths[0])}  {cells[1]}")
    notes = f"peak MB: {result.peak_mem_method}. MFU: model FLOPs / the device's peak for the precision."
    return head + "\n".join(lines) + "\n" + notes + "\n" + result.verdict


def markdown(result: BenchResult) -> str:
    """The same table as Markdown, for BENCHMARKS.md."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in result.rows:
        cells = _cells(r)
        if len(cells) != len(COLUMNS):
            cells = [cells[0], cells[1]] + [""] * (len(COLUMNS) - 2)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(result: BenchResult, path: Path) -> None:
    path.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")


def write_png(result: BenchResult, path: Path) -> None:
    """Three bar charts: tokens/s (with the speed-up over fp32), peak memory, val loss against fp32."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4.5), dpi=100, layout="constrained")
    ax_speed, ax_mem, ax_loss = fig.subplots(1, 3)
    names = [r.precision for r in result.rows]
    colors = [f"C{i}" for i in range(len(names))]
    for ax, attr, title in ((ax_speed, "tokens_per_s", "tokens/s (higher is better)"),
                            (ax_mem, "peak_mem_mb", "peak memory, MB"),
                            (ax_loss, "val_loss_diff_vs_fp32", "val loss minus fp32's, same steps")):
        values = [getattr(r, attr) if r.status == "ok" and getattr(r, attr) is not None else 0.0
                  for r in result.rows]
        bars = ax.bar(names, values, color=colors)
        for bar, r in zip(bars, result.rows):
            below = bar.get_height() < 0  # a negative bar gets its label underneath
            ax.annotate(_bar_label(r, attr), (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                        va="top" if below else "bottom", fontsize=9, xytext=(0, -2 if below else 2),
                        textcoords="offset points")
        if attr == "val_loss_diff_vs_fp32":  # symmetric around 0, so "better" and "worse" read alike
            reach = max((abs(v) for v in values), default=0.0) or 1e-4
            ax.set_ylim(-1.4 * reach, 1.4 * reach)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        ax.margins(y=0.18)  # room for the labels above the bars
    ax_loss.axhline(0.0, color="black", linewidth=0.8)
    fig.suptitle(f"{result.model} on {result.device_name}: batch {result.batch_size} x {result.seq_len}"
                 f"{', ' + _compiled(result) if result.compile else ''}")
    fig.savefig(path)


def _bar_label(r: BenchRow, attr: str) -> str:
    if r.status != "ok":
        return r.status  # "unavailable" or "failed": shown, not silently left out
    value = getattr(r, attr)
    if value is None:
        return "n/a"
    if attr == "tokens_per_s":
        return f"{value:,.0f}" + (f"\n{r.speedup_vs_fp32:.2f}x" if r.speedup_vs_fp32 is not None else "")
    if attr == "peak_mem_mb":
        return f"{value:,.0f}"
    return f"{value:+.4f}"


def _compiled(result: BenchResult) -> str:
    mode = result.compile_mode
    return "torch.compile" + (f" ({mode})" if mode and mode != "default" else "")
