"""Finding what to resume, and refusing a resume that would not continue the same run."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from ..config import IDENTITY_OPTIONS, PATH_OPTIONS, PLACE_OPTIONS, SESSION_OPTIONS, TrainConfig
from ..errors import ConfigError
from .checkpoint import CKPT_DIR, CheckpointError, latest_checkpoint, load_checkpoint, verify_checkpoint

log = logging.getLogger(__name__)

# Identity options that name a file: their content is checked on resume (the corpus by sha256,
# the tokenizer by its hash, the model by its parameter shapes), so the path itself may differ.
SOURCE_OPTIONS = tuple(k for k in PATH_OPTIONS if k in IDENTITY_OPTIONS)


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the files it names (--model PATH.py, --data, --tokenizer PATH) as absolute paths.

    A run's config.json and checkpoints record them, and a resume or ``--config`` reuses
    them: recorded relative to the directory the run was started from, they would name
    nothing (or another file) from anywhere else. Names that are not existing files
    (``demo``, ``tiny-gpt``, ``byte``, ``bpe:512``, a path that a later check reports
    missing) stay as given.
    """
    from ..data.corpus import is_pattern
    from ..models.loader import absolute_spec

    model = absolute_spec(cfg.model)
    changes = {"model": model} if model != cfg.model else {}
    for key in (k for k in PATH_OPTIONS if k != "model"):  # the model spec may carry a :factory
        value = getattr(cfg, key)
        if value is not None and value != "demo" and (Path(value).exists() or (key == "data" and is_pattern(value))):
            changes[key] = os.path.abspath(value)  # ".." folded, symlinks kept as named (a pattern: its folder)
    return cfg.replace(**changes) if changes else cfg


def _same_source(key: str, recorded: Any, now: Any) -> bool:
    """Whether a path-valued option names the same source (see SOURCE_OPTIONS): the same file name, and factory."""
    if recorded == now or not isinstance(recorded, str) or not isinstance(now, str):
        return recorded == now
    if key == "model":
        from ..models.loader import split_spec

        (a, fa), (b, fb) = split_spec(recorded), split_spec(now)
        return a.suffix == b.suffix == ".py" and a.name == b.name and fa == fb
    builtin = ("demo", "byte")
    if recorded in builtin or now in builtin or recorded.startswith("bpe:") or now.startswith("bpe:"):
        return False
    return True  # two paths: the corpus and tokenizer checks compare what they hold


def find_checkpoint(resume: str, out: str, name: str | None) -> tuple[Path, Path | None]:
    """(run directory, checkpoint or None) for ``--resume PATH|auto``.

    ``auto`` with no checkpoint returns None: the caller starts fresh.
    """
    if resume == "auto":
        if not name:
            raise ConfigError("--resume auto needs --name to know which run to continue.",
                              "add --name NAME (the same name on every restart).")
        run_dir = Path(out) / name
        ckpt = latest_checkpoint(run_dir) if run_dir.is_dir() else None
        if ckpt is not None:
            verify_checkpoint(ckpt, run_dir)
        return run_dir, ckpt
    path = Path(resume)
    if path.is_dir():
        ckpt = latest_checkpoint(path)
        if ckpt is None:
            raise CheckpointError(f"Run {str(path)!r} has no checkpoint to resume from.",
                                  "start a new run, or check --ckpt-every for future runs.")
        verify_checkpoint(ckpt, path)
        return path, ckpt
    if path.is_file():
        run_dir = path.parent.parent if path.parent.name == CKPT_DIR else path.parent
        verify_checkpoint(path, run_dir)
        return run_dir, path
    raise CheckpointError(f"There is no run or checkpoint at {str(path)!r} to resume.",
                          "pass a run directory (e.g. runs/NAME) or a checkpoint file, or --resume auto --name NAME.")


def base_config(resume: str, out: str, name: str | None) -> dict[str, Any] | None:
    """The config recorded in the checkpoint a resume would load (None: nothing to resume).

    The checkpoint is memory-mapped: only its small pickled header is read here, and the
    weights and optimizer state once, when the resume loads them.
    """
    _, ckpt = find_checkpoint(resume, out, name)
    return None if ckpt is None else dict(load_checkpoint(ckpt, mmap=True)["config"])


def layered(file_values: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A run's option values: the checkpoint's (when resuming), then a config file's, then the overrides'.

    The one layering the CLI (``--config FILE`` and the command line) and :func:`tierlab.resume`
    use. How the first session's terminal looked (``quiet``) is not carried over.
    """
    def given(key: str, default: Any = None) -> Any:
        return overrides.get(key, file_values.get(key, default))

    for key in ("resume", "out", "name"):  # they find the checkpoint, before the config is checked
        if given(key) is not None and not isinstance(given(key), str):
            example = {"resume": "runs/NAME", "out": "runs"}.get(key, "NAME")
            raise ConfigError(f"Option --{key} must be a string, got {given(key)!r}.",
                              f'write it in quotes, e.g. {key} = "{example}".')
    values: dict[str, Any] = {}
    if given("resume"):
        values = base_config(given("resume"), given("out", "runs"), given("name")) or {}
        values.pop("quiet", None)
    return {**values, **file_values, **overrides}


def check_same_run(cfg: TrainConfig, recorded: dict[str, Any], ckpt: Path) -> None:
    """Refuse a resume whose options differ from the checkpoint's, naming every difference."""
    def differs(key: str) -> bool:
        if key not in recorded:
            return False
        if key in SOURCE_OPTIONS:
            return not _same_source(key, recorded[key], getattr(cfg, key))
        return recorded[key] != getattr(cfg, key)

    identity = [k for k in IDENTITY_OPTIONS if differs(k)]
    if identity:
        changes = "; ".join(f"{k}: {recorded[k]!r} -> {getattr(cfg, k)!r}" for k in identity)
        raise ConfigError(f"Cannot resume {ckpt}: it was trained with a different {', '.join(identity)} ({changes}).",
                          "resume with the recorded settings, or start a new run with --name.")
    skip = set(IDENTITY_OPTIONS) | set(SESSION_OPTIONS) | set(PLACE_OPTIONS)
    changed = [k for k in recorded if k not in skip and differs(k)]
    if changed and not cfg.allow_config_change:
        changes = "; ".join(f"{k}: {recorded[k]!r} -> {getattr(cfg, k)!r}" for k in changed)
        raise ConfigError(f"Resuming {ckpt} with changed options ({changes}).",
                          "add --allow-config-change to continue with the new values, or drop those options.")
    if changed:
        log.warning("resuming with changed options: %s", ", ".join(changed))


def check_same_data(state: dict[str, Any], tokenizer_identity: str, corpus_sha256: str, ckpt: Path) -> None:
    if state.get("tokenizer") != tokenizer_identity:
        raise ConfigError(f"Cannot resume {ckpt}: the tokenizer differs (checkpoint {state.get('tokenizer')}, "
                          f"now {tokenizer_identity}).", "use the run's tokenizer.json: --tokenizer RUN/tokenizer.json.")
    if state.get("corpus_sha256") != corpus_sha256:
        raise ConfigError(f"Cannot resume {ckpt}: the corpus changed since the checkpoint (sha256 "
                          f"{str(state.get('corpus_sha256'))[:12]}... -> {corpus_sha256[:12]}...).",
                          "restore the original data, or start a new run on the new data from these weights: "
                          f"tierlab train --init-from {ckpt.parent.parent} --data NEW (with the same --tokenizer).")


def model_fingerprint(model: nn.Module) -> dict[str, list[int]]:
    return {name: list(t.shape) for name, t in model.state_dict().items()}


def check_same_model(state: dict[str, Any], model: nn.Module, ckpt: Path) -> None:
    recorded, now = state.get("model_fingerprint", {}), model_fingerprint(model)
    if recorded == now:
        return
    missing = sorted(set(recorded) - set(now))[:3]
    extra = sorted(set(now) - set(recorded))[:3]
    shapes = [f"{k} {recorded[k]} -> {now[k]}" for k in sorted(set(recorded) & set(now)) if recorded[k] != now[k]][:3]
    detail = "; ".join(filter(None, [f"missing {', '.join(missing)}" if missing else "",
                                     f"new {', '.join(extra)}" if extra else "",
                                     f"shapes {', '.join(shapes)}" if shapes else ""]))
    raise ConfigError(f"Cannot resume {ckpt}: the model's parameters differ from the checkpoint's ({detail}).",
                      "resume with the model file and --model-arg values the run was started with.")


def set_aside(run_dir: Path) -> Path:
    """Move a run directory that has no checkpoint out of the way (``--resume auto``); nothing is deleted."""
    target = run_dir.with_name(f"{run_dir.name}.incomplete-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.rename(target)
    log.warning("%s had no checkpoint: moved it to %s and started fresh", run_dir, target)
    return target
