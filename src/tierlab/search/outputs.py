"""What a search leaves behind: best.toml, trials.csv, three plots and a printed summary."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

from ..atomic import atomic_path, atomic_write
from ..config import PLACE_OPTIONS, SESSION_OPTIONS
from ..disk import is_storage_error, write_failed
from .space import apply_params, fmt_param
from .study import reason

log = logging.getLogger(__name__)



def write_outputs(cfg, study: Any, out: Path):
    from optuna.trial import TrialState

    from .study import SearchResult, _real_trials

    trials = _real_trials(study)
    counts = {s.name.lower(): sum(t.state == s for t in trials)
              for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)}
    write_csv(trials, out / "trials.csv", cfg.metric)
    best_path, best = None, None
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    if completed:
        best = (min if cfg.direction == "minimize" else max)(completed, key=lambda t: t.value)
        best_cfg = apply_params(cfg.base, best.params, cfg.steps_per_trial).replace(
            max_steps=cfg.steps_per_trial, epochs=None)
        best_path = out / "best.toml"
        header = (f"# tierlab search: best of {len(completed)} completed trial(s) of study {cfg.study!r}\n"
                  f"# trial {best.number}: {cfg.metric} {best.value:.6g} after {cfg.steps_per_trial} steps\n"
                  f"# train it: tierlab train --config {best_path}\n")
        values = {k: v for k, v in best_cfg.to_dict().items() if k not in PLACE_OPTIONS and k not in SESSION_OPTIONS}
        atomic_write(best_path, header + to_toml(values))
    write_plots(study, out)
    steps = sum(int(t.user_attrs.get("steps", 0)) for t in trials)
    return SearchResult(study=study, out=out, best_config=best_path, best=best, counts=counts, steps_spent=steps,
                        metric=cfg.metric)


def write_csv(trials: list, path: Path, metric: str = "val_loss") -> None:
    """One row per trial; the score's column is named by the metric (val_loss, or val_f1 for a classifier)."""
    names = sorted({k for t in trials for k in t.params})
    rows = []
    for t in trials:
        rows.append({"number": t.number, "state": t.state.name.lower(),
                     metric: "" if t.value is None else t.value,
                     **{f"param_{k}": t.params.get(k, "") for k in names},
                     "steps": t.user_attrs.get("steps", ""), "seconds": _round(t.user_attrs.get("seconds")),
                     "reason": reason(t), "run_dir": t.user_attrs.get("run_dir", "")})
    fields = ["number", "state", metric, *(f"param_{k}" for k in names), "steps", "seconds", "reason", "run_dir"]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, text.getvalue())


def write_plots(study: Any, out: Path) -> list[Path]:
    """Optimization history, parameter importances and intermediate values, as PNG (what the data allows)."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as ovm

    written = []
    for name, plot in (("optimization_history", ovm.plot_optimization_history),
                       ("param_importances", ovm.plot_param_importances),
                       ("intermediate_values", ovm.plot_intermediate_values)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
                ax = plot(study)
            figure = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            figure.set_size_inches(9, 5.5)
            path = out / f"{name}.png"
            with atomic_path(path) as tmp:
                figure.savefig(tmp, dpi=100, bbox_inches="tight")
            written.append(path)
            import matplotlib.pyplot as plt

            plt.close(figure)
        except Exception as exc:  # noqa: BLE001 - e.g. importances need two completed trials
            if is_storage_error(exc):  # not a plot Optuna cannot draw: a disk that is full
                raise write_failed(out / f"{name}.png", exc, "the study and its trials are in the storage",
                                   "free space and run the search again (it adds no trials when it has them all, "
                                   "and writes the outputs).") from None
            log.info("no %s plot: %s", name, exc)
    return written


def summary_text(result) -> str:
    c = result.counts
    lines = [f"study {result.study.study_name!r}: {c.get('complete', 0)} completed, {c.get('pruned', 0)} pruned, "
             f"{c.get('fail', 0)} failed; {result.steps_spent:,} training steps in all"]
    best = result.best
    if best is not None:
        params = ", ".join(f"{k}={fmt_param(v)}" for k, v in best.params.items())
        lines.append(f"best: trial {best.number}, {result.metric} {best.value:.4f} ({params})")
        lines.append(f"best config: {result.best_config}  (tierlab train --config {result.best_config})")
    else:
        lines.append("no trial completed: nothing to recommend yet (see trials.csv for the reasons)")
    lines.append(f"trials table: {result.out / 'trials.csv'}; plots: {result.out}/*.png; runs: {result.out / 'trials'}")
    return "\n".join(lines)


def to_toml(values: dict[str, Any]) -> str:
    """A flat TOML document (with a [model_args] table); None values are left out (= the default)."""
    lines, tables = [], []
    for key, value in values.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif value is not None:
            lines.append(f"{key} = {_toml_value(value)}")
    for key, table in tables:
        lines.append(f"\n[{key}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if not isinstance(value, float) or math.isfinite(value) else json.dumps(str(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def _round(value: Any) -> Any:
    return round(value, 2) if isinstance(value, float) else ("" if value is None else value)
