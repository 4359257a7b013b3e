"""``tierlab.train``: everything between "here is a model and a corpus" and a finished run.

Set-up order matters for the user: every check that can fail on bad input (config, data,
model, vocabulary, sequence length, precision) runs *before* the run directory is
created, so a mistake costs nothing and never touches an existing run.

Under torchrun every process runs :func:`train`; only rank 0 touches the file system
(run directory, checkpoints, trackers, plots), and it alone decides what to do with an
existing directory.  All ranks read the same checkpoint on resume, so the run directory
must be on a file system every machine sees.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import signal
import statistics
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import numpy as np
import torch
from safetensors.torch import save_file, save_model
from torch import nn

from ..atomic import write_json_atomic
from ..config import TrainConfig, normalize_keys
from ..data import TokenData, prepare_data
from ..data.sampler import block_at, eval_starts
from ..errors import ConfigError, DataError, ModelError, UserError
from ..models import (CAUSAL_FIX, PROBABILITIES_FIX, eval_mode, every_position, extract_logits, future_leak,
                      load_model, looks_like_probabilities, max_positions, vocab_fix)
from ..run_files import DASHBOARD
from ..track import Discard, EventLog, JsonlWriter
from ..track.sinks import make_sink
from ..track.trackers import Trackers
from .checkpoint import load_checkpoint
from .compile import compile_model
from .distributed import Dist, full_model_state, setup
from .guards import Diverged
from .init_from import load_initial_weights
from .loop import Trainer
from .memory import is_out_of_memory, out_of_memory
from .auto_precision import AutoProbe
from .precision import PrecisionDecision, PrecisionPolicy, decide_precision, low_precision_weights
from .resume import (
    absolute_paths,
    base_config,
    check_same_data,
    check_same_model,
    check_same_run,
    find_checkpoint,
    model_fingerprint,
    set_aside,
)
from .run import (
    CONFIG,
    EVENTS,
    METRICS,
    SUMMARY,
    WEIGHTS,
    Run,
    default_run_name,
    follow_umask,
)
from .schedule import default_warmup

if TYPE_CHECKING:
    from ..progress import Progress

log = logging.getLogger(__name__)

DEFAULT_MAX_STEPS = 400


def train(model_or_path: nn.Module | str | None = None, data: str | None = None,
          config: TrainConfig | Mapping[str, Any] | None = None, *,
          progress: Progress | None = None, cache_dir: str | Path | None = None, **options: Any) -> Run:
    """Train ``model_or_path`` (a module, ``"tiny-gpt"`` or ``"path.py[:factory]"``) on ``data``.

    ``config`` is a :class:`TrainConfig` or a dict of its fields, and any field can also be
    given as a keyword (``train(model, "corpus.txt", max_steps=500, precision="fp16")``),
    which wins over ``config``; ``model_or_path`` and ``data``, when given, override the
    config's ``model`` and ``data`` (a module may also come as ``model=``).  With ``resume``
    set, continues that run from its checkpoint (see :func:`resume`).  Returns the
    :class:`Run`.  Raises :class:`UserError` for anything the user can fix (an unknown
    keyword included) and :class:`Diverged` when training stops for non-finite values.
    """
    if isinstance(options.get("model"), nn.Module):  # train(model=my_module): the module, as given positionally
        if model_or_path is not None:
            raise ConfigError("train() got two models: a positional one and model=.", "pass the model once.")
        model_or_path = options.pop("model")
    if isinstance(config, TrainConfig):
        cfg = config.replace(**normalize_keys(options, "train()")) if options else config
    else:
        cfg = TrainConfig.from_mapping({**dict(config or {}), **options}, "train()" if options else "config")
    if isinstance(model_or_path, str):
        cfg = cfg.replace(model=model_or_path)
    elif model_or_path is not None and not isinstance(model_or_path, nn.Module):
        raise ModelError(f"train() got a {type(model_or_path).__name__} as the model.",
                         "pass a torch.nn.Module, 'tiny-gpt' or the path of a model file.")
    if data is not None:
        cfg = cfg.replace(data=str(data))
    if cfg.fsdp and cfg.compile:
        raise ConfigError("--fsdp and --compile were both given.", "drop --compile (tierlab does not compile sharded "
                                                                   "models yet) or --fsdp.")
    dist, device = setup(cfg.device, cfg.dist_timeout, cfg.fsdp)  # torchrun: join the job (a no-op otherwise)
    run = _train(model_or_path, cfg, dist, device, progress if dist.is_main else None, cache_dir)
    dist.close()  # only after a clean finish: on an error the process exits and torchrun ends the job
    return run


def _train(model_or_path: nn.Module | str | None, cfg: TrainConfig, dist: Dist, device: torch.device,
           progress: Progress | None, cache_dir: str | Path | None) -> Run:
    # --- what to resume, if anything -----------------------------------------------------
    cfg = absolute_paths(cfg)  # recorded in config.json and checkpoints: valid from any directory
    ckpt_path, resume_state = None, None
    if cfg.resume:
        run_dir, ckpt_path = find_checkpoint(cfg.resume, cfg.out, cfg.name)
        if ckpt_path is not None:
            resume_state = load_checkpoint(ckpt_path)
            cfg = cfg.replace(out=str(run_dir.parent), name=run_dir.name)
            check_same_run(cfg, resume_state["config"], ckpt_path)
        elif run_dir.exists():
            if dist.is_main:
                set_aside(run_dir)
    if cfg.name is None:
        cfg = cfg.replace(name=dist.broadcast(default_run_name()))  # one name for all ranks
    run_dir = Path(cfg.out) / cfg.name
    # Every rank checks (the same file system, before any rank writes) so that a mistake is
    # one plain error on each, not one error and broken collectives elsewhere.
    if resume_state is None and (dist.is_main or not cfg.resume):
        _refuse_existing(run_dir)
    if resume_state is not None and resume_state.get("sharding") != ("fsdp" if dist.sharded else None):
        was = "with --fsdp under torchrun" if resume_state.get("sharding") else "without --fsdp"
        raise ConfigError(f"{ckpt_path} was written {was}: its optimizer state is laid out for that.",
                          "resume it the same way (--fsdp and torchrun, or neither).")
    saved_world = len(resume_state.get("ranks", [None])) if resume_state is not None else dist.world_size
    if saved_world != dist.world_size:
        log.warning("%s was written by %d process(es) and is resumed by %d: the global batch and the order of the "
                    "batches change from here on", ckpt_path, saved_world, dist.world_size)

    # Trackers only on rank 0; before anything runs: a missing tracker package is a user error.
    sinks = _make_sinks(cfg, run_dir) if dist.is_main else []
    seed_everything(cfg.seed)  # the same on every rank: DDP starts from rank 0's weights anyway
    # Rank 0 fills the token cache, the others then read it.
    tokens = dist.main_first(lambda: prepare_data(cfg.data, cfg.tokenizer, cfg.val_fraction,
                                                  Path(cache_dir) if cache_dir else None, cfg.text_field))
    if resume_state is not None:
        check_same_data(resume_state, tokens.tokenizer.identity, tokens.corpus_hash, ckpt_path)
    max_steps = cfg.max_steps or _steps_for_epochs(cfg, tokens)
    if cfg.warmup_steps is None:
        cfg = cfg.replace(warmup_steps=default_warmup(max_steps))
    if cfg.warmup_steps > max_steps:  # warm-up only (==) is a legitimate schedule
        raise ConfigError(f"--warmup-steps ({cfg.warmup_steps}) is longer than the run ({max_steps} steps).",
                          "shorten the warm-up or train longer.")
    check_sizes(cfg, tokens)

    model = build_or_adopt(model_or_path, cfg, tokens.tokenizer.vocab_size)
    if isinstance(model_or_path, nn.Module) and resume_state is None:
        cfg = cfg.replace(model=f"<in-memory {type(model).__name__}>")
    if resume_state is not None:
        check_same_model(resume_state, model, ckpt_path)
    init_source = (load_initial_weights(model, cfg.init_from, tokens.tokenizer.identity)
                   if cfg.init_from and resume_state is None else None)  # a resume has its own weights
    model.to(device)
    vocab = probe_model(model, cfg, tokens, device)
    block = first_block(tokens, cfg)  # a real training-shaped batch for the set-up passes
    # Every rank trains in rank 0's precision, even where each measured its own.
    decision = dist.broadcast(decide_for_run(cfg, device, model, block, max_steps, resume_state,
                                             Path(cache_dir) if cache_dir else None))
    policy = PrecisionPolicy(decision, device, cfg.loss_scale_init, cfg.loss_scale_growth_interval)
    policy.check_model(model)
    weights_warning = low_precision_warning(model, say=dist.is_main)
    net = dist.wrap(model, device, block[:, :-1])  # DDP (or FSDP2) under torchrun
    if dist.rank:
        torch.manual_seed(cfg.seed + dist.rank)  # different dropout masks on each rank
    loss_fn, compile_seconds = None, None
    if cfg.compile:  # compiled now, before the run directory exists: a failure costs nothing
        try:
            loss_fn, compile_seconds = compile_model(net, block, policy, device, cfg.compile_mode)
        except Exception as exc:
            if is_out_of_memory(exc):  # the compile pass runs the training shape: too big for the device
                raise out_of_memory(exc, cfg, device, "while compiling (one training step)") from None
            raise

    # --- every check passed: only now is the run directory written -------------------------
    if dist.is_main:
        metrics, events = _open_run_dir(run_dir, cfg, tokens, resume_state)
    else:
        metrics, events = Discard(), Discard()
    identity = {"config": cfg.replace(resume=None, allow_config_change=False).to_dict(),
                "tokenizer": tokens.tokenizer.identity, "corpus_sha256": tokens.corpus_hash,
                "model_fingerprint": model_fingerprint(model)}
    trackers = Trackers(sinks, events.emit_local)
    trackers.start(identity["config"])
    metrics.listener, events.listener = trackers.log, trackers.event
    trainer = Trainer(net, tokens, cfg, policy, device, run_dir, metrics, events, max_steps, identity, progress,
                      loss_fn, dist)
    if resume_state is not None:
        trainer.load_state_dict(resume_state)
        events.emit("resume", step=trainer.state.step, checkpoint=str(ckpt_path), max_steps=max_steps,
                    world_size=dist.world_size, world_size_before=saved_world)
        log.info("resumed %s at step %d", ckpt_path, trainer.state.step)
    else:
        events.emit("run_start", device=str(device), torch=torch.__version__, max_steps=max_steps,
                    params=sum(p.numel() for p in model.parameters()), vocab_size=vocab,
                    tokenizer=tokens.tokenizer.identity, corpus_sha256=tokens.corpus_hash,
                    train_tokens=len(tokens.train), val_tokens=len(tokens.val), world_size=dist.world_size,
                    global_batch_size=trainer.global_batch, tokens_per_step=trainer.tokens_per_step)
    if init_source is not None:
        events.emit("init_from", weights=str(init_source.path), tokenizer=init_source.tokenizer)
    events.emit("precision", **decision.as_event(), weights_warning=weights_warning)
    if compile_seconds is not None:
        events.emit("compiled", step=trainer.state.step, seconds=compile_seconds)
    log.info("precision: %s (%s)", decision.used, decision.reason)
    log.info("global batch: %d sequences x %d micro-batches x %d process(es) = %d sequences, %d tokens per step",
             cfg.batch_size, cfg.grad_accum, dist.world_size, trainer.global_batch, trainer.tokens_per_step)
    if decision.warning:
        log.warning("%s", decision.warning)

    started, status = time.perf_counter(), "failed"
    try:
        with _graceful_stop(trainer, repeat_window_s=3.0 if dist.active else 0.0):
            trainer.fit()
        status = "completed"
    except KeyboardInterrupt as exc:
        status = "interrupted"
        events.emit("interrupted", step=trainer.state.step)
        raise Interrupted(run_dir, trainer.state.step) from exc
    except Diverged:
        status = "diverged"
        raise
    except StopTraining as stop:  # asked for by the caller (e.g. a search pruning this trial)
        status = stop.status
        events.emit("stopped", step=trainer.state.step, status=stop.status, reason=stop.reason)
        raise
    except Exception as exc:
        if is_out_of_memory(exc):
            raise out_of_memory(exc, cfg, device, f"at step {trainer.state.step + 1}", run_dir) from None
        if dist.active:  # one line naming the rank next to the traceback (torchrun's report names it too)
            log.error("rank %d of %d failed at step %d: %s: %s%s", dist.rank, dist.world_size, trainer.state.step + 1,
                      type(exc).__name__, str(exc).strip().splitlines()[0] if str(exc).strip() else "",
                      " (another rank failed or stopped answering first: see its output)"
                      if "closed by peer" in str(exc) or "timed out" in str(exc).lower() else "")
        raise
    finally:
        _close_run(run_dir, model, trainer, decision, status, time.perf_counter() - started, metrics, events,
                   compile_seconds, dist)
        trackers.close()
        if not cfg.no_plots and dist.is_main:
            _write_dashboard(run_dir)
    dist.barrier()  # every rank returns once rank 0 has written the summary
    log.info("run finished: %s (%d steps)", run_dir, trainer.state.step)
    return Run(run_dir, model)


class Interrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or SIGTERM, closed and (unless aborted at once) checkpointed at ``step``.

    Still a KeyboardInterrupt, so callers that stop on one keep doing so; it carries the run
    directory, so the CLI can say how to continue.
    """

    def __init__(self, run_dir: Path, step: int):
        super().__init__(f"interrupted at step {step}")
        self.run_dir, self.step = run_dir, step


class StopTraining(Exception):
    """Raised by a ``progress`` callback to end a run early; the run closes with ``status`` (e.g. "pruned")."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def resume(run_or_checkpoint: str | Path, changes: Mapping[str, Any] | None = None, *,
           model: nn.Module | None = None, progress: Progress | None = None,
           cache_dir: str | Path | None = None) -> Run:
    """Continue a run from its latest checkpoint (or the given checkpoint file).

    ``changes`` are options to alter (e.g. ``{"max_steps": 2000, "allow_config_change": True}``);
    everything else comes from the checkpoint. Pass ``model`` for a run trained on an
    in-memory module.
    """
    values = base_config(str(run_or_checkpoint), "runs", None)
    values = {**values, **dict(changes or {}), "resume": str(run_or_checkpoint)}
    return train(model, None, TrainConfig.from_mapping(values, "resume"), progress=progress, cache_dir=cache_dir)


def _open_run_dir(run_dir: Path, cfg: TrainConfig, tokens: TokenData,
                  resume_state: dict[str, Any] | None) -> tuple[JsonlWriter, EventLog]:
    """Create (or, on resume, cut back) the run directory's files; unwritable places are user errors."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)  # an empty folder made beforehand (a job script's) is fine
        if resume_state is None:
            _claim(run_dir)
        write_json_atomic(run_dir / CONFIG, cfg.replace(resume=None, allow_config_change=False).to_dict())
        tokens.tokenizer.save(run_dir)
        metrics, events = JsonlWriter(run_dir / METRICS), EventLog(run_dir / EVENTS)
    except OSError as exc:
        raise UserError(f"Cannot write the run directory {str(run_dir)!r}: {exc.strerror or exc}.",
                        "choose a writable place with --out DIR (and free disk space if it is full).") from None
    if resume_state is not None:
        # Records written after the checkpoint would be written again: cut them off.
        metrics.truncate(resume_state["records"]["metrics"])
        events.truncate(resume_state["records"]["events"])
    return metrics, events


def _claim(run_dir: Path) -> None:
    """Take a new run directory by creating its metrics file exclusively.

    Of two runs started with one --name at the same moment, the second stops here: the
    emptiness check before only looked.
    """
    try:
        (run_dir / METRICS).open("x").close()
    except FileExistsError:
        raise ConfigError(f"Run directory {str(run_dir)!r} was just taken by another run of the same --name.",
                          "choose another --name.") from None


def _close_run(run_dir: Path, model: nn.Module, trainer: Trainer, decision, status: str, wall: float,
               metrics: JsonlWriter, events: EventLog, compile_seconds: float | None, dist: Dist) -> None:
    # Steps done since the last log step still get their record.  With several processes
    # that read is a collective, and a run ends between log steps only when something went
    # wrong on some rank, which may be gone: the record is left out rather than risk a hang.
    if trainer.buffered and not dist.active:
        try:
            trainer.flush()
        except Diverged:
            pass  # already diverging or interrupted: the record is written, the verdict stands
    state = trainer.state
    summary = {
        "status": status, "steps": state.step, "tokens": state.step * trainer.tokens_per_step,
        "final_loss": state.last_loss, "final_val_loss": state.last_val_loss,
        "best_val_loss": state.best_val_loss, "precision": decision.used,
        "precision_requested": decision.requested, "precision_reason": decision.reason,
        "precision_measured": decision.measured, "skipped_steps": state.skipped_steps,
        "final_loss_scale": state.loss_scale, "wall_seconds": wall,
        "median_tokens_per_s": statistics.median(state.tokens_per_s) if state.tokens_per_s else None,
        "rollbacks": trainer.guard.state.rollbacks, "compile_seconds": compile_seconds,
        "world_size": dist.world_size, "global_batch_size": trainer.global_batch,
    }
    weights = None
    if dist.sharded and status != "failed":  # gathering the shards is a collective: only when all ranks are here
        weights = full_model_state(model)
    if not dist.is_main:
        return
    if not dist.sharded:
        save_model(model, str(run_dir / WEIGHTS))
        follow_umask(run_dir / WEIGHTS)  # safetensors writes 0600
    elif weights:
        # Tied weights (an output head sharing the embedding) appear under both names: keep one.
        names = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
        save_file({k: v.contiguous() for k, v in weights.items() if k in names}, str(run_dir / WEIGHTS))
        follow_umask(run_dir / WEIGHTS)
    else:
        log.warning("the sharded weights could not be gathered after the failure: the last checkpoint holds them")
    write_json_atomic(run_dir / SUMMARY, {k: _finite_or_none(v) for k, v in summary.items()})
    events.emit("run_end", status=status, steps=state.step, wall_seconds=wall)
    metrics.close()
    events.close()


@contextlib.contextmanager
def _graceful_stop(trainer: Trainer, repeat_window_s: float = 0.0) -> Iterator[None]:
    """SIGINT/SIGTERM: finish the current step, checkpoint, then stop (exit 130). A second signal aborts.

    Under torchrun, Ctrl-C reaches each worker twice (from the terminal and forwarded by
    torchrun): a repeat within ``repeat_window_s`` of the first is the same request.  The
    ranks agree on stopping at the next log step, so all of them checkpoint the same step.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    first_signal: list[float] = []

    def handler(signum, frame):
        if trainer.stop_requested:
            if time.monotonic() - first_signal[0] < repeat_window_s:
                return
            raise KeyboardInterrupt
        trainer.stop_requested = True
        first_signal.append(time.monotonic())
        when = "at the next log step (all ranks together)" if repeat_window_s else "after this step"
        log.warning("%s: stopping %s with a checkpoint (press Ctrl-C again to abort at once)",
                    signal.Signals(signum).name, when)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _make_sinks(cfg: TrainConfig, run_dir: Path) -> list:
    sinks = [make_sink("tensorboard", run_dir)] if cfg.tensorboard else []
    if cfg.wandb:
        sinks.append(make_sink("wandb", run_dir, cfg.wandb, cfg.wandb_entity, cfg.wandb_mode, cfg.name))
    return sinks


def _write_dashboard(run_dir: Path) -> None:
    """dashboard.png at the end of a run; a plotting problem is logged, never fatal."""
    try:
        from ..track.plots import save_dashboard

        save_dashboard([run_dir], run_dir / DASHBOARD)
        log.info("dashboard: %s", run_dir / DASHBOARD)
    except Exception as exc:  # noqa: BLE001 - the run itself is complete and on disk
        log.warning("could not write dashboard.png: %s: %s", type(exc).__name__, exc)


def _refuse_existing(run_dir: Path) -> None:
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise ConfigError(f"Run directory {str(run_dir)!r} already exists and is not empty.",
                          "choose another --name, or delete that directory if you no longer need it.")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _steps_for_epochs(cfg: TrainConfig, tokens: TokenData) -> int:
    if cfg.epochs is None:
        return DEFAULT_MAX_STEPS
    per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum
    return max(1, math.ceil(cfg.epochs * len(tokens.train) / per_step))


def build_or_adopt(model_or_path: nn.Module | str | None, cfg: TrainConfig, vocab_size: int) -> nn.Module:
    """The run's model: the caller's module, or one built from ``cfg.model`` -- either way returning every position's logits.

    Shared by train and bench, so that a module that works in one works in the other
    (nanoGPT's last-position shortcut included, see :func:`~tierlab.models.every_position`).
    """
    if isinstance(model_or_path, nn.Module):
        every_position(model_or_path)
        return model_or_path
    return load_model(cfg.model, cfg.model_args, vocab_size)


def low_precision_warning(model: nn.Module, say: bool = True) -> str | None:
    """The warning for trainable weights stored in bf16/fp16 (logged when ``say``), or None."""
    stored_low = low_precision_weights(model)
    warning = f"{stored_low[0]}. Fix: {stored_low[1]}." if stored_low else None
    if warning and say:
        log.warning("%s", warning)
    return warning


def decide_for_run(cfg: TrainConfig, device: torch.device, model: nn.Module, block: torch.Tensor, max_steps: int,
                   resume_state: dict[str, Any] | None, cache_dir: Path | None) -> PrecisionDecision:
    """``--precision`` for this run: ``auto`` on a CPU with native bf16 measures the model at its batch shape.

    A resume with ``auto`` keeps the decision recorded when the run started (on the same
    kind of device), so a run does not change precision half-way because a probe was noisy.
    """
    recorded = ((resume_state or {}).get("precision") or {}).get("decision")
    if cfg.precision == "auto" and recorded and recorded.get("device_type") == device.type:
        reason = recorded["reason"]
        if not reason.endswith(KEPT_ON_RESUME):
            reason += KEPT_ON_RESUME
        return PrecisionDecision("auto", recorded["used"], reason, measured=recorded.get("measured"))
    probe = AutoProbe(model, block, device, max_steps * cfg.grad_accum, cache_dir, cfg.lr, cfg.clip_grad)
    return decide_precision(cfg.precision, device, cfg.strict_precision, measure=probe)


KEPT_ON_RESUME = " (decided when the run started; kept on resume)"


def first_block(tokens: TokenData, cfg: TrainConfig) -> torch.Tensor:
    """A real [B, T + 1] block of training tokens (evenly spaced offsets; draws nothing from the sampler)."""
    (starts,) = eval_starts(len(tokens.train), cfg.seq_len, cfg.batch_size, batches=1)
    return block_at(tokens.train, starts, cfg.seq_len)


def check_sizes(cfg: TrainConfig, tokens: TokenData) -> None:
    need = cfg.seq_len + 1
    if len(tokens.train) < need:
        raise DataError(f"The training split has {len(tokens.train)} tokens, fewer than one block of "
                        f"--seq-len + 1 = {need}.", "use a larger corpus or a smaller --seq-len.")
    if cfg.eval_every and len(tokens.val) < need:
        raise DataError(f"The validation split ({cfg.val_fraction:.0%} of the corpus) has {len(tokens.val)} "
                        f"tokens, fewer than one block of --seq-len + 1 = {need}.",
                        "use a larger corpus, a larger --val-fraction, a smaller --seq-len, or --eval-every 0.")


def probe_model(model: nn.Module, cfg: TrainConfig, tokens: TokenData, device: torch.device) -> int:
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
    try:
        with eval_mode(model), torch.no_grad():
            output = model(probe)
    except UserError:
        raise
    except Exception as exc:
        said = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        short = (_short_position_tables(model, cfg.seq_len, tokens.tokenizer.vocab_size)
                 if isinstance(exc, IndexError) else [])
        if short:  # the probe's ids are 0 and 1, so an index out of range is a position past a table's end
            name, rows = short[0]
            raise ModelError(f"The model's forward pass failed on input_ids of shape [2, {cfg.seq_len}] ({said}): "
                             f"its embedding {name!r} has {rows} rows, fewer than --seq-len {cfg.seq_len} "
                             "positions.", f"use --seq-len {rows} or less, or build the model with more "
                             "positions.") from None
        raise ModelError(f"The model's forward pass failed on input_ids of shape [2, {cfg.seq_len}]: {said}.",
                         "make forward(input_ids) accept a LongTensor [B, T] (try a smaller --seq-len if the "
                         "model has fewer positions).") from None
    logits = extract_logits(output)
    if logits.dim() != 3 or tuple(logits.shape[:2]) != (2, cfg.seq_len):
        raise ModelError(f"The model returned logits of shape {list(logits.shape)} for input_ids [2, {cfg.seq_len}].",
                         f"return logits [B, T, V] = [2, {cfg.seq_len}, vocab_size]: one row per position.")
    if not logits.is_floating_point():
        raise ModelError(f"The model returned {logits.dtype} logits.", "return floating-point logits.")
    if looks_like_probabilities(logits):
        raise ModelError(f"The model returns probabilities, not logits: every position's {logits.size(-1)} outputs "
                         "lie in [0, 1] and sum to 1.", PROBABILITIES_FIX + ".")
    _refuse_a_future_leak(model, probe[:1, :min(cfg.seq_len, 64)])
    vocab = logits.size(-1)
    if tokens.max_id >= vocab:
        raise DataError(f"The data holds token id {tokens.max_id} but the model has only {vocab} outputs "
                        f"(ids 0..{vocab - 1}); tokenizer {tokens.tokenizer.identity} has "
                        f"{tokens.tokenizer.vocab_size} tokens.",
                        vocab_fix(model, tokens.tokenizer.vocab_size) + ".")
    return vocab


def _refuse_a_future_leak(model: nn.Module, ids: torch.Tensor) -> None:
    """Stop when earlier positions see the last token: a bidirectional or off-by-one mask.

    Such a model learns to copy the next token and its loss means nothing; one more forward
    tells. ``tierlab validate`` walks every position and names the first that leaks.
    """
    length = ids.size(1)
    if length < 2:
        return
    with eval_mode(model), torch.no_grad():
        leak = future_leak(lambda x: extract_logits(model(x)), ids, length - 1, vocab=2)
    if leak is not None:
        raise ModelError(f"The model sees the future: its logits at earlier positions change when the last of "
                         f"{length} tokens changes (max diff {leak:.3g}), so training would teach it to copy the "
                         "next token and the loss would mean nothing.",
                         f"{CAUSAL_FIX}; for a Hugging Face model use its ...ForCausalLM class. "
                         "`tierlab validate --model ...` names the first position that leaks.")


def _short_position_tables(model: nn.Module, seq_len: int, vocab: int) -> list[tuple[str, int]]:
    """(name, rows) of the embeddings with fewer rows than ``seq_len``: position tables too short for it.

    A token table (as many rows as the tokenizer has tokens) is left out: a small vocabulary
    is shorter than a long sequence without being at fault.
    """
    return [(name, m.num_embeddings) for name, m in model.named_modules()
            if isinstance(m, nn.Embedding) and m.num_embeddings < seq_len and m.num_embeddings != vocab]


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


