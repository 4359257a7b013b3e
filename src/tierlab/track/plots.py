"""The dashboard: one figure that shows a run (or several, overlaid) at a glance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..atomic import atomic_path
from ..run_files import CONFIG, EVENTS, METRICS, SUMMARY
from .records import read_jsonl

FIGSIZE, DPI = (15, 8.5), 100  # 1500 x 850 pixels


def _run_name(run_dir: str | Path) -> str:
    """A run's name as titles show it: its folder's, also when given as ``.`` from inside it."""
    return Path(run_dir).resolve().name


def _load(run_dir: Path) -> dict[str, Any]:
    metrics = read_jsonl(run_dir / METRICS)
    events = read_jsonl(run_dir / EVENTS)
    config_path = run_dir / CONFIG
    return {
        "name": _run_name(run_dir),
        "train": [r for r in metrics if r.get("kind") == "train"],
        "eval": [r for r in metrics if r.get("kind") == "eval"],
        "skips": sorted({e["step"] for e in events if e.get("event") == "step_skipped"}),
        "config": json.loads(config_path.read_text()) if config_path.is_file() else {},
    }


def _series(records: list[dict], x: str, y: str) -> tuple[list, list]:
    pairs = [(r[x], r[y]) for r in records if r.get(y) is not None and r.get(x) is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def dashboard(run_dirs: list[Path]):
    """A matplotlib Figure: loss vs tokens, learning rate, grad norm vs clip, loss scale, tokens/s, val accuracy.

    The figure shows itself as a PNG in Jupyter (``_repr_png_``) without pyplot or
    ``%matplotlib inline``, and never opens a window.
    """
    from matplotlib.figure import Figure

    class DashboardFigure(Figure):
        def _repr_png_(self) -> bytes:
            import io

            buffer = io.BytesIO()
            self.savefig(buffer, format="png")
            return buffer.getvalue()

    # Fixed margins for the fixed size: matplotlib's constrained layout measured every tick
    # label (~900 text extents) and took half of the ~2 s each run spent on its dashboard.
    fig = DashboardFigure(figsize=FIGSIZE, dpi=DPI)
    fig.subplots_adjust(left=0.05, right=0.985, bottom=0.065, top=0.91, wspace=0.22, hspace=0.3)
    axes = fig.subplots(2, 3)
    (ax_loss, ax_lr, ax_norm), (ax_scale, ax_speed, ax_acc) = axes
    runs = [_load(Path(d)) for d in run_dirs]
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for run, color in zip(runs, colors):
        label = run["name"]
        ax_loss.plot(*_series(run["train"], "tokens", "loss"), color=color, label=f"{label} train")
        if run["eval"]:
            ax_loss.plot(*_series(run["eval"], "tokens", "val_loss"), color=color, linestyle="--", marker="o",
                         markersize=3, label=f"{label} val")
            ax_acc.plot(*_series(run["eval"], "step", "val_acc"), color=color, marker="o", markersize=3, label=label)
            if any("val_f1" in r for r in run["eval"]):  # a classifier: macro-F1 beside the accuracy
                ax_acc.plot(*_series(run["eval"], "step", "val_f1"), color=color, linestyle="--", marker="s",
                            markersize=3, label=f"{label} macro-F1")
        ax_lr.plot(*_series(run["train"], "step", "lr"), color=color, label=label)
        ax_norm.plot(*_series(run["train"], "step", "grad_norm"), color=color, label=label)
        clip = run["config"].get("clip_grad")
        if clip:
            ax_norm.axhline(clip, color=color, linestyle=":", linewidth=1, label=f"{label} clip {clip:g}")
        steps, scales = _series(run["train"], "step", "loss_scale")
        if scales:
            ax_scale.step(steps, scales, where="post", color=color, label=label)
            if run["skips"]:
                ax_scale.plot(run["skips"], [_scale_at(steps, scales, s) for s in run["skips"]], "x", color="red",
                              markersize=6, label=f"{label} skipped steps ({len(run['skips'])})")
        ax_speed.plot(*_series(run["train"], "step", "tokens_per_s"), color=color, label=label)
    from matplotlib.ticker import EngFormatter

    scored = _scored(runs)
    loss_title = {"next-token": "loss", "label": "loss (per row's label)"}.get(scored, f"loss ({scored} positions)")
    _dress(ax_loss, loss_title, "tokens", "cross-entropy (nats)")
    ax_loss.xaxis.set_major_formatter(EngFormatter(sep=""))  # 200k, 1.5M: readable token counts
    _dress(ax_lr, "learning rate", "step", "lr")
    _dress(ax_norm, "gradient norm before clipping", "step", "norm")
    ax_norm.set_yscale("log")
    _dress(ax_scale, "fp16 loss scale", "step", "scale")
    if ax_scale.lines:
        ax_scale.set_yscale("log", base=2)
    else:
        ax_scale.text(0.5, 0.5, "no loss scaling\n(fp32 / bf16)", ha="center", va="center",
                      transform=ax_scale.transAxes, color="gray")
        ax_scale.set_xticks([])
        ax_scale.set_yticks([])
    _dress(ax_speed, "throughput", "step", "tokens / s")
    _dress(ax_acc, "validation accuracy and macro-F1" if scored == "label" else f"validation {scored} accuracy",
           "step", "accuracy")
    if not ax_acc.lines:
        ax_acc.text(0.5, 0.5, "no evaluation records", ha="center", va="center", transform=ax_acc.transAxes,
                    color="gray")
        ax_acc.set_xticks([])
        ax_acc.set_yticks([])
    title = runs[0]["name"] if len(runs) == 1 else f"{len(runs)} runs"
    fig.suptitle(f"tierlab — {title}", fontsize=14, y=0.985)
    return fig


def _scale_at(steps: list, scales: list, step: int) -> float:
    value = scales[0]
    for s, v in zip(steps, scales):
        if s > step:
            break
        value = v
    return value


def _scored(runs: list[dict]) -> str:
    """What the runs' loss and accuracy count: next tokens, masked tokens (--objective mlm), labels, or several."""
    objectives = {run["config"].get("objective") or "clm" for run in runs}
    if objectives == {"mlm"}:
        return "masked-token"
    if objectives == {"classify"}:
        return "label"
    if "classify" in objectives:
        return "mixed-objective"
    return "next-token" if objectives == {"clm"} else "next- and masked-token"


def _dress(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)


def save_dashboard(run_dirs: list[Path], path: Path) -> Path:
    fig = dashboard(run_dirs)
    with atomic_path(Path(path)) as tmp:  # a full disk leaves the previous picture, not an empty file
        fig.savefig(tmp, dpi=DPI)
    return path


def summary_table(run_dirs: list[Path]) -> str:
    """One row per run: the figures a person compares first."""
    header = ["run", "status", "steps", "tokens", "loss", "best val", "precision", "skipped", "scale", "tok/s"]
    rows = [header]
    for d in run_dirs:
        path = Path(d) / SUMMARY
        s = json.loads(path.read_text()) if path.is_file() else {}
        if not s:  # a crashed run has no summary: use its last records
            train = [r for r in read_jsonl(Path(d) / METRICS) if r.get("kind") == "train"]
            last = train[-1] if train else {}
            s = {"status": "no summary", "steps": last.get("step"), "tokens": last.get("tokens"),
                 "final_loss": last.get("loss"), "skipped_steps": last.get("skipped_steps"),
                 "final_loss_scale": last.get("loss_scale")}
        rows.append([_run_name(d), s.get("status", "?"), _fmt(s.get("steps")), _fmt(s.get("tokens")),
                     _fmt(s.get("final_loss"), ".4f"), _fmt(s.get("best_val_loss"), ".4f"),
                     s.get("precision") or "-", _fmt(s.get("skipped_steps")), _fmt(s.get("final_loss_scale"), "g"),
                     _fmt(s.get("median_tokens_per_s"), ",.0f")])
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    table = "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
    note = _incomparable_note(run_dirs)
    return table + (f"\n{note}" if note else "")


def confusion_table(run_dir: Path) -> str | None:
    """A classification run's last confusion matrix as text (rows: true label, columns: predicted), else None."""
    from ..data.rows import read_labels
    from ..train.objective import CONFUSION_CLASSES

    labels = read_labels(Path(run_dir))
    evals = [r for r in read_jsonl(Path(run_dir) / METRICS) if r.get("kind") == "eval" and "val_f1" in r]
    if not evals:
        return None
    if labels is None:  # a classification run (its evaluations say so) without its labels.json
        return (f"{_run_name(run_dir)}: its labels.json is missing, so the confusion matrix has no class names: "
                "restore labels.json from a copy of the run to see it")
    last, names = evals[-1], [str(n) for n in labels["labels"]]
    if "confusion" not in last:
        return (f"{_run_name(run_dir)}: {len(names)} classes at step {last['step']} (accuracy {last['val_acc']:.3f}, "
                f"macro-F1 {last['val_f1']:.3f}); a confusion matrix is recorded for {CONFUSION_CLASSES} classes "
                "or fewer")
    matrix = last["confusion"]
    if len(matrix) != len(names):  # labels.json edited after the run
        return (f"{_run_name(run_dir)}: its labels.json names {len(names)} classes and its confusion matrix has "
                f"{len(matrix)}: restore labels.json from a copy of the run to see the matrix")
    if len(names) > CONFUSION_CLASSES:
        return (f"{_run_name(run_dir)}: {len(names)} classes, too many to print; the confusion matrix is in "
                f"{METRICS} (eval records, \"confusion\")")
    cells = [["true \\ predicted", *names]] + [[name, *map(str, row)] for name, row in zip(names, matrix)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells]
    recall = [row[i] / max(1, sum(row)) for i, row in enumerate(matrix)]
    return (f"{_run_name(run_dir)}: confusion matrix at step {last['step']} ({sum(map(sum, matrix))} held-out rows; "
            f"accuracy {last['val_acc']:.3f}, macro-F1 {last['val_f1']:.3f})\n" + "\n".join(lines) +
            "\nper-class recall: " + ", ".join(f"{n} {r:.2f}" for n, r in zip(names, recall)))


def _incomparable_note(run_dirs: list[Path]) -> str | None:
    """A warning when the runs' losses are not on one scale: other corpora or other tokenizers.

    A loss is nats per token, so runs with a byte tokenizer and a BPE one (or on different
    texts) can differ by a factor with neither being the better model.
    """
    setups: dict[tuple[str, str], list[str]] = {}
    for d in run_dirs:
        path = Path(d) / CONFIG
        cfg = json.loads(path.read_text()) if path.is_file() else {}
        setups.setdefault((str(cfg.get("data", "?")), str(cfg.get("tokenizer", "?"))), []).append(_run_name(d))
    if len(setups) < 2:
        return None
    groups = "; ".join(f"{', '.join(names)}: {tok} on {Path(data).name}" for (data, tok), names in setups.items())
    return (f"note: the losses are not comparable across these runs: they use other data or tokenizers ({groups}); "
            "a loss is per token of its own tokenizer")


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, int) and not spec:
        return f"{value:,}"
    return format(value, spec) if spec else str(value)
