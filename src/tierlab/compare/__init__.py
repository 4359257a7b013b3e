"""``tierlab compare``: the user's model against a baseline of the same size, on the same tokens.

Both sides train with one config -- the same data, tokenizer, precision, optimizer,
schedule, steps and batches (a seed draws the same batches on both sides) -- and differ
only in the model.  A built-in baseline (``gpt``, ``llama``) is sized to the user's model's
non-embedding parameter count (see :mod:`.sizing`).  Every side and seed is an ordinary run
directory under ``OUT/NAME/`` (``model-seed0``, ``baseline-seed0``, ...), trained in its own
process (its own peak memory, its own throughput); a run already finished is kept, one cut
short is resumed, so running the command again continues a comparison.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..atomic import write_json_atomic
from ..track.records import finite_tree
from ..config import TrainConfig
from ..errors import ConfigError, UserError
from ..models.loader import split_spec
from ..run_files import CONFIG, METRICS, SUMMARY, WEIGHTS
from .sizing import BASELINES, Counts, count_parameters, model_depth, size_baseline
from .stats import Spread, Verdict, spread, verdict

log = logging.getLogger(__name__)

SIDES = ("model", "baseline")
FINISHED = ("completed", "early_stopped", "diverged")  # a run kept as it is when the comparison is run again
LATENCY_REPEATS = 20


@dataclass
class Side:
    spec: str
    args: dict[str, Any]
    counts: Counts
    sized: str | None = None  # how a built-in baseline was sized, in words
    runs: list[dict[str, Any]] = field(default_factory=list)  # per seed: the figures of its run
    curves: list[list[tuple[int, float, float]]] = field(default_factory=list)  # per seed: (tokens, s, val loss)


@dataclass
class CompareResult:
    out: Path
    seeds: list[int]
    model: Side
    baseline: Side
    metrics: dict[str, dict[str, Spread]]  # metric -> side -> mean/std over seeds
    verdict: Verdict  # on the final val loss (equal tokens)
    time_verdict: Verdict | None  # on the val loss at equal training time
    equal_seconds: float | None
    latency_tokens: int
    precision: str

    def to_dict(self) -> dict[str, Any]:
        def side(s: Side) -> dict[str, Any]:
            return {"model": s.spec, "model_args": s.args, "params": s.counts.total,
                    "embedding_params": s.counts.embedding, "non_embedding_params": s.counts.non_embedding,
                    "sized": s.sized, "runs": s.runs}

        return {"out": str(self.out), "seeds": self.seeds, "precision": self.precision,
                "model": side(self.model), "baseline": side(self.baseline),
                "metrics": {m: {k: {"mean": v.mean, "std": v.std, "values": v.values} for k, v in sides.items()}
                            for m, sides in self.metrics.items()},
                "verdict": self.verdict.to_dict(), "time_verdict": self.time_verdict.to_dict() if self.time_verdict
                else None, "equal_train_seconds": self.equal_seconds, "latency_tokens": self.latency_tokens}

    def markdown(self) -> str:
        rows = [("parameters (embedding / other)",
                 *(f"{s.counts.total:,} ({s.counts.embedding:,} / {s.counts.non_embedding:,})"
                   for s in (self.model, self.baseline)))]
        for key, label, digits in METRIC_ROWS:
            if key == "val_loss_equal_time":
                label = label.format(seconds=f"{self.equal_seconds:.3g}" if self.equal_seconds else "-")
            if key == "latency_ms":
                label = label.format(tokens=self.latency_tokens)
            rows.append((label, *(self.metrics[key][s].text(digits) for s in SIDES)))
        width = max(len(r[0]) for r in rows)
        names = (f"model: `{shown(self.model.spec)}`", f"baseline: `{shown(self.baseline.spec)}`")
        lines = [f"| {'':{width}} | {names[0]} | {names[1]} |", f"|{'-' * (width + 2)}|---|---|"]
        lines += [f"| {r[0]:{width}} | {r[1]} | {r[2]} |" for r in rows]
        seeds = f"{len(self.seeds)} seed(s) per side ({', '.join(map(str, self.seeds))}), mean ± std"
        sized = f"\n\nBaseline: {self.baseline.sized}." if self.baseline.sized else ""
        when = (f"\n\nAt equal training time ({self.equal_seconds:.3g} s): {self.time_verdict.text}."
                if self.time_verdict else "")
        return (f"{seeds}; precision {self.precision}.{sized}\n\n" + "\n".join(lines) +
                f"\n\nVerdict (val loss at equal tokens): {self.verdict.text}.{when}\n")


# metric key, row label, digits
METRIC_ROWS = (("val_loss", "val loss (equal tokens)", 4), ("val_ppl", "val perplexity (equal tokens)", 2),
               ("val_loss_equal_time", "val loss at {seconds} s of training", 4),
               ("tokens_per_s", "tokens/s (median)", 0), ("peak_memory_mb", "peak memory (MiB)", 0),
               ("latency_ms", "latency, batch 1 x {tokens} tokens (ms)", 2), ("skipped_steps", "skipped steps", 1),
               ("train_seconds", "training time (s)", 1))


def compare(cfg: TrainConfig, baseline: str, baseline_args: dict[str, Any] | None = None, seeds: int = 1,
            cache_dir: str | Path | None = None) -> CompareResult:
    """Train ``cfg`` (the user's model) and ``baseline`` for ``seeds`` seeds each and compare them."""
    from ..data import prepare_data
    from ..models import load_model, max_positions

    if cfg.objective != "clm":
        raise ConfigError(f"tierlab compare measures language models (--objective clm); this is --objective "
                          f"{cfg.objective}.", "compare the models as causal language models, or train them apart "
                          "and overlay them with tierlab report.")
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}.", "use --seeds 3 to tell a difference from noise.")
    if not cfg.eval_every:
        raise ConfigError("tierlab compare compares validation losses, and --eval-every 0 turns them off.",
                          "drop --eval-every 0 (or pass e.g. --eval-every 100).")
    for option, why in (("early_stop", "would end the sides after different numbers of tokens, and the table "
                                       "compares them at equal tokens"),
                        ("resume", "resumes its own runs by itself (run the same command again)"),
                        ("init_from", "trains both sides from scratch (the baseline could not take your weights)")):
        if getattr(cfg, option):
            flag = "--" + option.replace("_", "-")
            raise ConfigError(f"tierlab compare does not take {flag}: it {why}.", f"drop {flag}.")
    tokens = prepare_data(cfg.data, cfg.tokenizer, cfg.val_fraction, Path(cache_dir) if cache_dir else None,
                          cfg.text_field)
    vocab = tokens.tokenizer.vocab_size
    user = load_model(cfg.model, cfg.model_args, vocab, cfg.causal_mask)
    model = Side(cfg.model, dict(cfg.model_args), count_parameters(user, vocab))
    if baseline in BASELINES:
        if baseline_args:
            raise ConfigError(f"--baseline-arg sets the size of a baseline model file; the built-in {baseline} is "
                              "sized to your model.", "drop --baseline-arg, or pass --baseline PATH.py with it.")
        # As many positions as the model (or the run's --seq-len): the same tables on both sides where they match.
        sized = size_baseline(baseline, model.counts.non_embedding, vocab, max_positions(user) or cfg.seq_len,
                              model_depth(user))
        other = Side(sized.model, sized.args, sized.counts, sized.describe())
        log.info("baseline %s sized to the model's %s non-embedding parameters: %s", baseline,
                 f"{model.counts.non_embedding:,}", sized.describe())
    else:
        path, _ = split_spec(baseline)
        if path.suffix != ".py" and not path.is_dir():
            raise ConfigError(f"--baseline {baseline!r} is neither gpt, llama nor a model file.",
                              "pass --baseline gpt, --baseline llama or --baseline PATH.py[:factory].")
        built = load_model(baseline, dict(baseline_args or {}), vocab)
        other = Side(baseline, dict(baseline_args or {}), count_parameters(built, vocab))
    del user
    root = Path(cfg.out) / (cfg.name or default_name(cfg.model, baseline))
    root.mkdir(parents=True, exist_ok=True)
    seed_list = [cfg.seed + k for k in range(seeds)]
    precision = cfg.precision
    for seed in seed_list:
        for name, side in zip(SIDES, (model, other)):
            run_cfg = cfg.replace(model=side.spec, model_args=side.args, seed=seed, out=str(root),
                                  name=f"{name}-seed{seed}", quiet=True, no_plots=True, precision=precision,
                                  resume="auto", allow_config_change=False)
            summary = _train(run_cfg, root)
            precision = summary.get("precision") or precision  # auto decides once; the other runs use its choice
            figures, curve = _figures(root / run_cfg.name, summary)
            side.runs.append(figures)
            side.curves.append(curve)
    equal = min((r["train_seconds"] for s in (model, other) for r in s.runs if r["train_seconds"]), default=None)
    for side in (model, other):
        for run, curve in zip(side.runs, side.curves):
            run["val_loss_equal_time"] = _loss_at(curve, equal) if equal else None
            run["latency_ms"] = _latency(root / run["run"], cfg.seq_len, cfg.device)
    metrics = {key: {name: spread([r[key] for r in side.runs]) for name, side in zip(SIDES, (model, other))}
               for key, _, _ in METRIC_ROWS}
    final = verdict([r["val_loss"] for r in model.runs], [r["val_loss"] for r in other.runs])
    timed = (verdict([r["val_loss_equal_time"] for r in model.runs], [r["val_loss_equal_time"] for r in other.runs])
             if equal and all(r["val_loss_equal_time"] is not None for s in (model, other) for r in s.runs)
             else None)
    result = CompareResult(root, seed_list, model, other, metrics, final, timed, equal, cfg.seq_len, precision)
    write_json_atomic(root / "compare.json", finite_tree(result.to_dict()))
    (root / "compare.md").write_text(result.markdown(), encoding="utf-8")
    from .plot import save_plot

    save_plot(result, root / "compare.png")
    return result


def shown(spec: str) -> str:
    """A model as tables and plots name it: a built-in's name, a file's name (and factory), not its whole path."""
    if "/" not in spec and not spec.endswith(".py") and ":" not in spec:
        return spec
    path, factory = split_spec(spec)
    return path.name + (f":{factory}" if factory else "")


def default_name(model: str, baseline: str) -> str:
    def stem(spec: str) -> str:
        return spec if "/" not in spec and not spec.endswith(".py") else split_spec(spec)[0].stem

    return f"compare-{stem(model)}-vs-{stem(baseline)}"


def _train(cfg: TrainConfig, root: Path) -> dict[str, Any]:
    """Train one side's run in its own process (or keep it, finished); its summary."""
    run_dir = root / cfg.name
    summary_path = run_dir / SUMMARY
    recorded = json.loads((run_dir / CONFIG).read_text()) if (run_dir / CONFIG).is_file() else None
    if recorded is not None:
        cfg = _with_resolved_defaults(cfg, recorded)
    if summary_path.is_file():
        done = json.loads(summary_path.read_text())
        if done.get("status") in FINISHED:
            _refuse_other_options(cfg, recorded or {}, run_dir)
            log.info("%s: kept (%s, %s steps)", cfg.name, done.get("status"), done.get("steps"))
            return done
    configs = root / ".configs"
    configs.mkdir(exist_ok=True)
    config_file = configs / f"{cfg.name}.json"
    write_json_atomic(config_file, cfg.to_dict())
    log.info("%s: training %s (%s steps)", cfg.name, cfg.model, cfg.max_steps or "default")
    started = time.perf_counter()
    child = subprocess.run([sys.executable, "-m", "tierlab", "train", "--config", str(config_file)],
                           capture_output=True, text=True, env=dict(os.environ), preexec_fn=_stop_with_parent)
    if child.returncode == 130:
        raise KeyboardInterrupt
    if child.returncode not in (0, 3):  # 3: diverged, a result like any other (its skipped steps say why)
        said = (child.stderr.strip().splitlines() or ["(no message)"])[-1].removeprefix("tierlab: error: ")
        raise UserError(f"The run {run_dir} stopped (exit {child.returncode}; once that is fixed, tierlab compare "
                        f"run again keeps the finished runs and resumes this one): {said}")
    log.info("%s: done in %.1f s", cfg.name, time.perf_counter() - started)
    return json.loads(summary_path.read_text())


def _with_resolved_defaults(cfg: TrainConfig, recorded: dict[str, Any]) -> TrainConfig:
    """``cfg`` with the options it leaves to their defaults (the warm-up) as the run already there resolved them.

    A run records the values it trained with (``recorded``, its config.json); asked again with ``None``,
    a resume would see a change.
    """
    return cfg.replace(**{k: v for k, v in recorded.items() if k in TrainConfig.__dataclass_fields__
                          and getattr(cfg, k) is None and v is not None})


def _stop_with_parent() -> None:
    """In the child, before it runs: on Linux, a SIGTERM when compare dies (even by SIGKILL), so the run
    checkpoints and stops instead of training on, orphaned; the next compare resumes it."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _refuse_other_options(cfg: TrainConfig, recorded: dict[str, Any], run_dir: Path) -> None:
    """A finished run is kept only when this comparison would train it with the same options (``recorded``)."""
    from ..train.resume import absolute_paths, check_same_run

    wanted = absolute_paths(cfg)
    try:
        check_same_run(wanted.replace(allow_config_change=False), recorded, run_dir)
    except ConfigError as err:
        changes = re.search(r"\(([^()]*)\)\.?$", err.problem)  # check_same_run's "(key: old -> new; ...)"
        raise ConfigError(f"{run_dir} was trained with other options than this comparison's "
                          f"({changes[1] if changes else err.problem}).",
                          "pass another --name for a new comparison, or the options this one was run with.") from None


def _figures(run_dir: Path, summary: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[int, float, float]]]:
    """One run's figures (final val loss and perplexity, throughput, memory, skips) and its val-loss curve."""
    from ..track.records import read_jsonl
    from .plot import eval_curve

    records = read_jsonl(run_dir / METRICS)
    curve, seconds = eval_curve(records)
    memory = [r["mem_peak_mb"] for r in records if r.get("kind") == "train" and r.get("mem_peak_mb") is not None]
    val = summary.get("final_val_loss")
    return {"run": run_dir.name, "status": summary.get("status"), "steps": summary.get("steps"),
            "tokens": summary.get("tokens"), "val_loss": val,
            "val_ppl": math.exp(min(val, 700.0)) if val is not None else None,
            "tokens_per_s": summary.get("median_tokens_per_s"), "peak_memory_mb": max(memory) if memory else None,
            "skipped_steps": summary.get("skipped_steps"), "train_seconds": seconds}, curve


def _loss_at(curve: list[tuple[int, float, float]], seconds: float) -> float | None:
    """The val loss of the last evaluation reached within ``seconds`` of training (None: none by then)."""
    reached = [loss for _, at, loss in curve if at <= seconds * (1 + 1e-9)]
    return reached[-1] if reached else None


def _latency(run_dir: Path, seq_len: int, device: str) -> float | None:
    """Median milliseconds of one forward pass, batch 1 x ``seq_len`` tokens, of the run's final model."""
    from ..run_reader import load
    from ..train.device import resolve_device, synchronize

    if not (run_dir / WEIGHTS).is_file():
        return None
    target = resolve_device(device)
    model, _ = load(run_dir, device=str(target))
    ids = torch.zeros(1, seq_len, dtype=torch.long, device=target)
    times = []
    with torch.no_grad():
        for i in range(LATENCY_REPEATS + 3):
            synchronize(target)
            started = time.perf_counter()
            model(ids)
            synchronize(target)
            if i >= 3:  # the first calls warm the kernels and caches up
                times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)
