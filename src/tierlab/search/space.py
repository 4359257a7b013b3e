"""The search space: which train options to vary and how, with the defaults and a TOML format.

A user space is a TOML file with one table per option::

    [lr]
    type = "float"       # float, int or categorical
    low = 1e-4
    high = 1e-2
    log = true           # sample the logarithm uniformly (float/int only)

    [batch_size]
    type = "categorical"
    choices = [8, 16, 32]

Keys are ``tierlab train`` options (``lr``, ``weight_decay``, ``clip_grad``, ...), model
arguments as ``model_args.NAME``, or ``warmup_fraction`` (warm-up as a fraction of the
trial's steps).  Every mistake is a :class:`~tierlab.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import TrainConfig, tomllib
from ..errors import ConfigError

# Options a trial must not vary: where it writes, how it runs, or how long it is.
_NOT_SEARCHABLE = ("model", "data", "tokenizer", "out", "name", "resume", "allow_config_change", "quiet",
                   "max_steps", "epochs", "tensorboard", "wandb", "wandb_entity", "wandb_mode", "device",
                   "eval_every", "log_every", "eval_batches", "val_fraction", "seed", "ckpt_every", "keep_ckpts")
WARMUP_FRACTION = "warmup_fraction"


@dataclass(frozen=True)
class Dimension:
    name: str
    kind: str  # float, int or categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial: Any) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)

    def describe(self) -> str:
        if self.kind == "categorical":
            return f"{self.name} in {list(self.choices)}"
        return f"{self.name} {self.kind} [{self.low:g}, {self.high:g}]{' log' if self.log else ''}"


DEFAULT_SPACE = (
    Dimension("lr", "float", 1e-4, 1e-2, log=True),
    Dimension(WARMUP_FRACTION, "float", 0.0, 0.2),
    Dimension("weight_decay", "float", 1e-3, 0.3, log=True),
    Dimension("batch_size", "categorical", choices=(8, 16, 32)),
)


def load_space(path: str | Path) -> tuple[Dimension, ...]:
    """Read and check a TOML search space."""
    tables = load_space_file(path)
    if not tables:
        raise ConfigError(f"Search space {str(path)!r} defines no options.", "add a table per option, e.g. [lr].")
    return tuple(_dimension(name, spec, str(path)) for name, spec in tables.items())


def load_space_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"Search space file {str(p)!r} does not exist.", "check the path given to --space.")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"Search space {str(p)!r} is not valid TOML: {exc}.", "fix the syntax.") from None
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key == "model_args" and isinstance(value, dict):  # [model_args.n_layer] tables
            flat.update({f"model_args.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def _dimension(name: str, spec: Any, source: str) -> Dimension:
    def bad(problem: str, fix: str) -> ConfigError:
        return ConfigError(f"Search space {source}, option {name!r}: {problem}", fix)

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if not (name in fields or name == WARMUP_FRACTION or name.startswith("model_args.")):
        raise bad("is not a train option.", f"use a `tierlab train` option (e.g. lr, weight_decay), "
                                            f"{WARMUP_FRACTION}, or model_args.NAME.")
    if name in _NOT_SEARCHABLE:
        raise bad("cannot be searched (it says where or how long a trial runs, not what it learns).",
                  "set it on the command line or in --config instead.")
    if not isinstance(spec, dict):
        raise bad("must be a table with a type.", 'write e.g. [lr] with type = "float", low = 1e-4, high = 1e-2.')
    kind = spec.get("type")
    unknown = set(spec) - {"type", "low", "high", "log", "choices"}
    if unknown:
        raise bad(f"unknown key(s) {', '.join(sorted(unknown))}.", "use type, low, high, log or choices.")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise bad("a categorical option needs a non-empty list `choices`.", "write e.g. choices = [8, 16, 32].")
        return _checked(Dimension(name, "categorical", choices=tuple(choices)), bad)
    if kind not in ("float", "int"):
        raise bad(f"type {kind!r} is not float, int or categorical.", 'write type = "float", "int" or "categorical".')
    low, high, log = spec.get("low"), spec.get("high"), spec.get("log", False)
    number = (int,) if kind == "int" else (int, float)
    if not all(isinstance(v, number) and not isinstance(v, bool) for v in (low, high)):
        raise bad(f"a {kind} option needs numbers `low` and `high`{' (whole numbers)' if kind == 'int' else ''}.",
                  "write e.g. low = 1e-4 and high = 1e-2.")
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise bad(f"low ({low}) must be smaller than high ({high}).", "swap or fix the bounds.")
    if not isinstance(log, bool):
        raise bad("`log` must be true or false.", "write log = true.")
    if log and low <= 0:
        raise bad(f"a log scale needs low > 0 (got {low}).", "raise low, or drop log = true.")
    return _checked(Dimension(name, kind, low, high, log), bad)


def _checked(dim: Dimension, bad) -> Dimension:
    """Every value at the edges (or every choice) must make a valid train config."""
    values = list(dim.choices) if dim.kind == "categorical" else [dim.low, dim.high]
    for value in values:
        try:
            apply_params(TrainConfig(max_steps=100), {dim.name: value}, 100)
        except ConfigError as err:
            raise bad(f"the value {value!r} is not valid: {err.problem}", "narrow the range.") from None
    return dim


def apply_params(base: TrainConfig, params: dict[str, Any], steps: int) -> TrainConfig:
    """The train config of a trial: ``base`` with the sampled ``params`` put in."""
    changes: dict[str, Any] = {}
    model_args = dict(base.model_args)
    for name, value in params.items():
        if name == WARMUP_FRACTION:
            changes["warmup_steps"] = int(round(value * steps)) if value * steps < steps - 1 else max(steps - 2, 0)
        elif name.startswith("model_args."):
            model_args[name.split(".", 1)[1]] = value
        else:
            changes[name] = value
    return TrainConfig.from_mapping({**base.to_dict(), **changes, "model_args": model_args}, "the search space")


def fmt_param(value: Any) -> str:
    """A sampled value as people read it in logs and summaries (floats to 4 significant digits)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
