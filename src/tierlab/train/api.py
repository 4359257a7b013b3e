"""``tierlab.train``: everything between "here is a model and a corpus" and a finished run.

Set-up order matters for the user: every check that can fail on bad input (config, data,
model, vocabulary, sequence length, precision) runs *before* the run directory is
created, so a mistake costs nothing and never touches an existing run.
"""

from __future__ import annotations

import logging
import math
import random
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import torch
from safetensors.torch import save_model
from torch import nn

from ..config import TrainConfig
from ..data import TokenData, prepare_data
from ..errors import ConfigError, DataError, ModelError, UserError
from ..models import extract_logits, load_model, max_positions
from ..track import EventLog, JsonlWriter
from .device import resolve_device
from .loop import Trainer
from .precision import PrecisionPolicy, decide_precision
from .run import CONFIG, EVENTS, METRICS, SUMMARY, Run, default_run_name, write_json_atomic
from .schedule import default_warmup

if TYPE_CHECKING:
    from ..progress import Progress

log = logging.getLogger(__name__)

DEFAULT_MAX_STEPS = 400


def train(model_or_path: nn.Module | str | None = None, data: str | None = None,
          config: TrainConfig | Mapping[str, Any] | None = None, *,
          progress: Progress | None = None, cache_dir: str | Path | None = None) -> Run:
    """Train ``model_or_path`` (a module, ``"tiny-gpt"`` or ``"path.py[:factory]"``) on ``data``.

    ``config`` is a :class:`TrainConfig` or a dict of its fields; ``model_or_path`` and
    ``data``, when given, override the config's ``model`` and ``data``.  Returns the
    :class:`Run`.  Raises :class:`UserError` for anything the user can fix.
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_mapping(dict(config or {}), "config")
    if isinstance(model_or_path, str):
        cfg = cfg.replace(model=model_or_path)
    elif model_or_path is not None and not isinstance(model_or_path, nn.Module):
        raise ModelError(f"train() got a {type(model_or_path).__name__} as the model.",
                         "pass a torch.nn.Module, 'tiny-gpt' or the path of a model file.")
    if data is not None:
        cfg = cfg.replace(data=str(data))
    if cfg.name is None:
        cfg = cfg.replace(name=default_run_name())

    run_dir = Path(cfg.out) / cfg.name
    _refuse_existing(run_dir)
    device = resolve_device(cfg.device)
    _seed_everything(cfg.seed)
    tokens = prepare_data(cfg.data, cfg.tokenizer, cfg.val_fraction, Path(cache_dir) if cache_dir else None)
    max_steps = cfg.max_steps or _steps_for_epochs(cfg, tokens)
    if cfg.warmup_steps is None:
        cfg = cfg.replace(warmup_steps=default_warmup(max_steps))
    if cfg.warmup_steps >= max_steps and cfg.warmup_steps > 0:
        raise ConfigError(f"--warmup-steps ({cfg.warmup_steps}) must be smaller than the run ({max_steps} steps).",
                          "shorten the warm-up or train longer.")
    _check_sizes(cfg, tokens)

    if isinstance(model_or_path, nn.Module):
        model = model_or_path
        cfg = cfg.replace(model=f"<in-memory {type(model).__name__}>")
    else:
        model = load_model(cfg.model, cfg.model_args, tokens.tokenizer.vocab_size)
    model.to(device)
    vocab = _probe_model(model, cfg, tokens, device)
    decision = decide_precision(cfg.precision, device, cfg.strict_precision)
    policy = PrecisionPolicy(decision, device, cfg.loss_scale_init, cfg.loss_scale_growth_interval)
    policy.check_model(model)

    # --- every check passed: only now does the run directory come into being -------------
    run_dir.mkdir(parents=True)
    write_json_atomic(run_dir / CONFIG, cfg.to_dict())
    tokens.tokenizer.save(run_dir)
    metrics, events = JsonlWriter(run_dir / METRICS), EventLog(run_dir / EVENTS)
    events.emit("run_start", device=str(device), torch=torch.__version__, max_steps=max_steps,
                params=sum(p.numel() for p in model.parameters()), vocab_size=vocab,
                tokenizer=tokens.tokenizer.identity, corpus_sha256=tokens.corpus_hash,
                train_tokens=len(tokens.train), val_tokens=len(tokens.val))
    events.emit("precision", **decision.as_event())
    log.info("precision: %s (%s)", decision.used, decision.reason)
    if decision.warning:
        log.warning("%s", decision.warning)

    trainer = Trainer(model, tokens, cfg, policy, device, metrics, events, max_steps, progress)
    started, status = time.perf_counter(), "failed"
    try:
        trainer.fit()
        status = "completed"
    except KeyboardInterrupt:
        status = "interrupted"
        events.emit("interrupted", step=trainer.state.step)
        raise
    finally:
        if trainer.buffered:  # steps done since the last log step still get their record
            trainer.flush()
        wall = time.perf_counter() - started
        summary = {
            "status": status, "steps": trainer.state.step, "tokens": trainer.state.step * trainer.tokens_per_step,
            "final_loss": trainer.state.last_loss, "final_val_loss": trainer.state.last_val_loss,
            "best_val_loss": trainer.state.best_val_loss, "precision": decision.used,
            "precision_requested": decision.requested, "skipped_steps": trainer.state.skipped_steps,
            "final_loss_scale": trainer.state.loss_scale, "wall_seconds": wall,
            "median_tokens_per_s": statistics.median(trainer.state.tokens_per_s) if trainer.state.tokens_per_s
            else None,
        }
        save_model(model, str(run_dir / "model.safetensors"))
        write_json_atomic(run_dir / SUMMARY, {k: _finite_or_none(v) for k, v in summary.items()})
        events.emit("run_end", status=status, steps=trainer.state.step, wall_seconds=wall)
        metrics.close()
        events.close()
    log.info("run finished: %s (%d steps, %.1f s)", run_dir, trainer.state.step, wall)
    return Run(run_dir, model)


def _refuse_existing(run_dir: Path) -> None:
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise ConfigError(f"Run directory {str(run_dir)!r} already exists and is not empty.",
                          "choose another --name, or delete that directory if you no longer need it.")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _steps_for_epochs(cfg: TrainConfig, tokens: TokenData) -> int:
    if cfg.epochs is None:
        return DEFAULT_MAX_STEPS
    per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum
    return max(1, math.ceil(cfg.epochs * len(tokens.train) / per_step))


def _check_sizes(cfg: TrainConfig, tokens: TokenData) -> None:
    need = cfg.seq_len + 1
    if len(tokens.train) < need:
        raise DataError(f"The training split has {len(tokens.train)} tokens, fewer than one block of "
                        f"--seq-len + 1 = {need}.", "use a larger corpus or a smaller --seq-len.")
    if cfg.eval_every and len(tokens.val) < need:
        raise DataError(f"The validation split ({cfg.val_fraction:.0%} of the corpus) has {len(tokens.val)} "
                        f"tokens, fewer than one block of --seq-len + 1 = {need}.",
                        "use a larger corpus, a larger --val-fraction, a smaller --seq-len, or --eval-every 0.")


def _probe_model(model: nn.Module, cfg: TrainConfig, tokens: TokenData, device: torch.device) -> int:
    """One forward pass at the training shape; returns the model's vocabulary size (V).

    Catches, before any training, the mistakes that otherwise surface as an opaque CUDA
    assert or a shape error deep inside cross-entropy.
    """
    limit = max_positions(model)
    if limit is not None and cfg.seq_len > limit:
        raise ModelError(f"--seq-len {cfg.seq_len} is longer than the model's {limit} positions.",
                         f"use --seq-len {limit} or less, or build the model with more positions.")
    probe = torch.zeros(2, cfg.seq_len, dtype=torch.long, device=device)
    probe[:, 1::2] = min(tokens.max_id, 1) if tokens.max_id >= 0 else 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(probe)
    except UserError:
        raise
    except Exception as exc:
        raise ModelError(f"The model's forward pass failed on input_ids of shape [2, {cfg.seq_len}]: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}.",
                         "make forward(input_ids) accept a LongTensor [B, T] (try a smaller --seq-len if the "
                         "model has fewer positions).") from None
    finally:
        model.train(was_training)
    logits = extract_logits(output)
    if logits.dim() != 3 or tuple(logits.shape[:2]) != (2, cfg.seq_len):
        raise ModelError(f"The model returned logits of shape {list(logits.shape)} for input_ids [2, {cfg.seq_len}].",
                         f"return logits [B, T, V] = [2, {cfg.seq_len}, vocab_size]: one row per position.")
    if not logits.is_floating_point():
        raise ModelError(f"The model returned {logits.dtype} logits.", "return floating-point logits.")
    vocab = logits.size(-1)
    if tokens.max_id >= vocab:
        raise DataError(f"The data holds token id {tokens.max_id} but the model has only {vocab} outputs "
                        f"(ids 0..{vocab - 1}); tokenizer {tokens.tokenizer.identity} has "
                        f"{tokens.tokenizer.vocab_size} tokens.",
                        f"build the model with vocab_size >= {tokens.tokenizer.vocab_size} "
                        f"(e.g. --model-arg vocab_size={tokens.tokenizer.vocab_size}) or use a smaller tokenizer.")
    return vocab


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


