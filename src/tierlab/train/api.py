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
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import torch
from torch import nn

from ..config import TrainConfig, normalize_keys
from ..data import LabelledData
from ..errors import ConfigError, ModelError, UserError
from ..track import Discard
from ..track import sinks as tracker_sinks
from ..track.trackers import Trackers
from . import identity
from .checkpoint import load_checkpoint
from .compile import block_compiler, compile_model
from .distributed import Dist, setup
from .failures import model_failure
from .guards import Diverged
from .loop import Trainer
from .objective import Classification, classification_for
from .memory import is_out_of_memory, out_of_memory
from .precision import PrecisionPolicy
from .resume import absolute_paths, check_same_run, find_checkpoint, layered, model_fingerprint, set_aside
from .run import Run, close_run, default_run_name, open_run_dir, refuse_existing, write_dashboard
from .run_lock import NoLock, RunLock
from .setup import Prepared, decide_for_run, prepare
from .speedups import Speedups, choose_speedups

if TYPE_CHECKING:
    from ..progress import Progress

log = logging.getLogger(__name__)


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
    dist, device = setup(cfg.device, cfg.dist_timeout, cfg.fsdp)  # torchrun: join the job (a no-op otherwise)
    run = _train(model_or_path, cfg, dist, device, progress if dist.is_main else None, cache_dir)
    dist.close()  # only after a clean finish: on an error the process exits and torchrun ends the job
    return run


def _train(model_or_path: nn.Module | str | None, cfg: TrainConfig, dist: Dist, device: torch.device,
           progress: Progress | None, cache_dir: str | Path | None) -> Run:
    cfg, ckpt_path, resume_state, lock = _what_to_resume(absolute_paths(cfg), dist)
    with lock:  # held from here (a resume) or from the directory's creation (a new run) to the end
        return _train_owned(model_or_path, cfg, dist, device, progress, Path(cache_dir) if cache_dir else None,
                            ckpt_path, resume_state, lock)


def _train_owned(model_or_path: nn.Module | str | None, cfg: TrainConfig, dist: Dist, device: torch.device,
                 progress: Progress | None, cache: Path | None, ckpt_path: Path | None,
                 resume_state: dict[str, Any] | None, lock: RunLock) -> Run:
    run_dir = Path(cfg.out) / cfg.name
    # Trackers only on rank 0; before anything runs: a missing tracker package is a user error.
    sinks = tracker_sinks.make_sinks(cfg.to_dict(), run_dir) if dist.is_main else []
    prepared = prepare(model_or_path, cfg, device, dist=dist, cache_dir=cache, resume_state=resume_state,
                       ckpt_path=ckpt_path)
    cfg, model = prepared.cfg, prepared.model
    classify = classification_for(cfg.objective, prepared.tokens, cfg.pool)
    # Every rank trains in rank 0's precision, even where each measured its own.
    decision = dist.broadcast(decide_for_run(cfg, device, model, prepared.block, prepared.max_steps, resume_state,
                                             cache, classify))
    policy = PrecisionPolicy(decision, device, cfg.loss_scale_init, cfg.loss_scale_growth_interval)
    policy.check_model(model)
    policy.prepare_model(model, cfg.batch_size * cfg.seq_len, cfg.fp8_layers)  # fp8: the linear layers that gain become fp8
    speedups = choose_speedups(cfg, model, prepared.block, device, policy, classify)
    per_block = cfg.compile and dist.sharded  # --fsdp --compile: each block compiled, then sharded
    net = dist.wrap(model, device, prepared.block[:, :-1],  # DDP (or FSDP2) under torchrun
                    block_compiler(cfg.compile_mode) if per_block else None)
    if dist.rank:
        torch.manual_seed(cfg.seed + dist.rank)  # different dropout masks on each rank
    loss_fn, compile_seconds = (_compile(net, prepared, policy, device, classify, speedups, whole=not per_block)
                                if cfg.compile else (None, None))

    # --- every check passed: only now is the run directory written -------------------------
    if dist.is_main:
        metrics, events = open_run_dir(run_dir, cfg, prepared.tokens, resume_state, lock)
    else:
        metrics, events = Discard(), Discard()
    run_info = identity.read(run_dir) if dist.is_main else None
    recorded = {"config": cfg.replace(resume=None, allow_config_change=False).to_dict(),
                "tokenizer": prepared.tokens.tokenizer.identity, "corpus_sha256": prepared.tokens.corpus_hash,
                "model_fingerprint": model_fingerprint(model), "run_id": run_info["run_id"] if run_info else None}
    trackers = Trackers(sinks, events.emit_local)
    with _signals_held(f"once the trackers have started (at most {cfg.tracker_timeout:g} s)", bool(sinks)) as held:
        trackers.start(recorded["config"])  # (W&B's start, waiting on a server, would swallow a Ctrl-C)
    metrics.listener, events.listener = trackers.log, trackers.event
    trainer = Trainer(net, prepared.tokens, cfg, policy, device, run_dir, metrics, events, prepared.max_steps,
                      recorded, progress, loss_fn, dist, speedups.head, speedups.attention)
    trainer.stop_requested = bool(held)  # a Ctrl-C while they started: stop after the first step, checkpointed
    _announce(trainer, prepared, resume_state, ckpt_path, compile_seconds, speedups)
    started, status, failure = time.perf_counter(), "failed", None
    try:
        status = _fit(trainer, run_dir)
    except BaseException as exc:
        failure, status = exc, _ending(exc)
        if status != "failed" or not isinstance(exc, Exception) or isinstance(exc, UserError) or not dist.is_main:
            raise
        # Failed before its first step, a new run leaves nothing behind (its --name stays free).
        removed = resume_state is None and trainer.state.step == 0
        plain = model_failure(exc, model, trainer.state.step + 1, run_dir, removed)
        if plain is None:
            raise  # not the model's code: a traceback to report
        _close(run_dir, model, trainer, decision, status, started, metrics, events, compile_seconds, dist, trackers,
               plots=False, failure=exc)
        if removed:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise plain from None
    finally:
        if not metrics.closed:
            _close(run_dir, model, trainer, decision, status, started, metrics, events, compile_seconds, dist,
                   trackers, plots=not cfg.no_plots, failure=failure)
    dist.barrier()  # every rank returns once rank 0 has written the summary
    log.info("run finished: %s (%d steps)", run_dir, trainer.state.step)
    return Run(run_dir, model)


def _close(run_dir: Path, model: nn.Module, trainer: Trainer, decision, status: str, started: float, metrics, events,
           compile_seconds: float | None, dist: Dist, trackers: Trackers, plots: bool,
           failure: BaseException | None) -> None:
    """Close the run; the records and trackers are closed whatever happens (a failed write included)."""
    try:
        close_run(run_dir, model, trainer, decision, status, time.perf_counter() - started, metrics, events,
                  compile_seconds, dist, failure)
    finally:
        trackers.close()  # before the records close: a tracker failing now is one more tracker_failed event
        metrics.close()
        events.close()
    if plots and dist.is_main:
        write_dashboard(run_dir, failed=failure is not None)


def _ending(exc: BaseException) -> str:
    """The status a run ends with when ``exc`` ends it."""
    if isinstance(exc, StopTraining):
        return exc.status
    if isinstance(exc, Interrupted):
        return "interrupted"
    return "diverged" if isinstance(exc, Diverged) else "failed"


def _what_to_resume(cfg: TrainConfig, dist: Dist) -> tuple[TrainConfig, Path | None, dict[str, Any] | None,
                                                           RunLock]:
    """(config, checkpoint, its state, the run's lock) for ``--resume``, or (config, None, None, lock) for a new run.

    A resume takes the run's lock before it reads anything, so a run another process is
    still writing is refused (exit 2) instead of written twice; a new run's lock is taken
    when its directory is created.

    The config gains the run's place (``out``, ``name``): a resume names it by its path, a
    new run without ``--name`` gets one name on all ranks.  Every rank checks (the same file
    system, before any rank writes) so that a mistake is one plain error on each, not one
    error and broken collectives elsewhere.
    """
    ckpt_path, resume_state, lock = None, None, NoLock()
    if cfg.resume:
        run_dir, ckpt_path = find_checkpoint(cfg.resume, cfg.out, cfg.name)
        if dist.is_main and run_dir.is_dir():
            lock = RunLock(run_dir)
            lock.acquire()  # RunInUse (exit 2) while another process writes it
        if ckpt_path is not None:
            resume_state = load_checkpoint(ckpt_path)
            cfg = cfg.replace(out=str(run_dir.parent), name=run_dir.name)
            if cfg.batch_size == "auto":  # found when the run started: searching again could pick another
                recorded = resume_state["config"]
                cfg = cfg.replace(batch_size=recorded["batch_size"], grad_accum=recorded["grad_accum"])
                log.info("--batch-size auto: resuming with the micro-batch the run found, %d x %d accumulation",
                         cfg.batch_size, cfg.grad_accum)
            check_same_run(cfg, resume_state["config"], ckpt_path)
            identity.check_model_source(run_dir, cfg.model, str(resume_state["config"].get("model")))
        elif run_dir.exists():
            if dist.is_main:
                set_aside(run_dir)  # not live: its lock is held here (it moves with the folder)
            lock.release()
    if cfg.name is None:
        cfg = cfg.replace(name=dist.broadcast(default_run_name()))  # one name for all ranks
    if resume_state is None and dist.is_main:
        lock = RunLock(Path(cfg.out) / cfg.name)  # taken by open_run_dir
    if resume_state is None and (dist.is_main or not cfg.resume):
        refuse_existing(Path(cfg.out) / cfg.name)
    if resume_state is not None and resume_state.get("sharding") != ("fsdp" if dist.sharded else None):
        was = "with --fsdp under torchrun" if resume_state.get("sharding") else "without --fsdp"
        raise ConfigError(f"{ckpt_path} was written {was}: its optimizer state is laid out for that.",
                          "resume it the same way (--fsdp and torchrun, or neither).")
    saved_world = len(resume_state.get("ranks", [None])) if resume_state is not None else dist.world_size
    if saved_world != dist.world_size:
        log.warning("%s was written by %d process(es) and is resumed by %d: the global batch and the order of the "
                    "batches change from here on", ckpt_path, saved_world, dist.world_size)
    return cfg, ckpt_path, resume_state, lock


def _compile(net: nn.Module, prepared: Prepared, policy: PrecisionPolicy, device: torch.device,
             classify: Classification | None, speedups: Speedups, whole: bool) -> tuple[Any, float]:
    """torch.compile now, before the run directory exists: a failure costs nothing."""
    try:
        return compile_model(net, prepared.block, policy, device, prepared.cfg.compile_mode, classify,
                             speedups.head, speedups.attention, whole)
    except Exception as exc:
        if is_out_of_memory(exc):  # the compile pass runs the training shape: too big for the device
            raise out_of_memory(exc, prepared.cfg, device, "while compiling (one training step)") from None
        raise


def _announce(trainer: Trainer, prepared: Prepared, resume_state: dict[str, Any] | None, ckpt_path: Path | None,
              compile_seconds: float | None, speedups: Speedups) -> None:
    """The run's first events (run_start or resume, init_from, precision, compiled) and log lines."""
    events, dist, tokens, decision = trainer.events, trainer.dist, prepared.tokens, trainer.policy.decision
    if resume_state is not None:
        trainer.load_state_dict(resume_state)
        events.emit("resume", step=trainer.state.step, checkpoint=str(ckpt_path), max_steps=prepared.max_steps,
                    world_size=dist.world_size, world_size_before=len(resume_state.get("ranks", [None])))
        log.info("resumed %s at step %d", ckpt_path, trainer.state.step)
    else:
        objective: dict[str, Any] = {}  # (a clm run's records stay as they were)
        if trainer.cfg.objective == "mlm":
            objective = {"objective": "mlm", "mask_token_id": tokens.tokenizer.vocab_size}
        elif isinstance(tokens, LabelledData):  # rows, not a token stream: their counts and the classes
            objective = {**tokens.summary(), "pool": trainer.cfg.pool, "classes": prepared.vocab,
                         "vocab_size": tokens.pad_id + 1}  # (the embedding's rows: the tokenizer's and padding)
        events.emit("run_start", **{
            "device": str(trainer.device), "torch": torch.__version__, "max_steps": prepared.max_steps,
            "params": sum(p.numel() for p in trainer.model.parameters()), "vocab_size": prepared.vocab,
            "tokenizer": tokens.tokenizer.identity, "corpus_sha256": tokens.corpus_hash,
            "train_tokens": len(tokens.train), "val_tokens": len(tokens.val), "world_size": dist.world_size,
            "global_batch_size": trainer.global_batch, "tokens_per_step": trainer.tokens_per_step, **objective})
    if prepared.init_source is not None:
        events.emit("init_from", weights=str(prepared.init_source.path), tokenizer=prepared.init_source.tokenizer)
    if prepared.batch_event is not None:
        events.emit("batch_size", step=trainer.state.step, **prepared.batch_event)
    events.emit("precision", **decision.as_event(), weights_warning=prepared.weights_warning)
    if trainer.policy.fp8_plan is not None:
        events.emit("fp8", layers=[r.as_dict() for r in trainer.policy.fp8_plan])
    if compile_seconds is not None:
        events.emit("compiled", step=trainer.state.step, seconds=compile_seconds)
    if speedups.head is not None or speedups.attention.order:  # (a default run's records stay as they were)
        events.emit("speedups", step=trainer.state.step, **speedups.as_event())
    log.info("precision: %s (%s)", decision.used, decision.reason)
    log.info("global batch: %d sequences x %d micro-batches x %d process(es) = %d sequences, %d tokens per step",
             trainer.cfg.batch_size, trainer.cfg.grad_accum, dist.world_size, trainer.global_batch,
             trainer.tokens_per_step)
    if decision.warning:
        log.warning("%s", decision.warning)


def _fit(trainer: Trainer, run_dir: Path) -> str:
    """Train to the end and return "completed" (or "early_stopped"); every other ending is raised, as the caller
    needs to know it."""
    try:
        with _graceful_stop(trainer, repeat_window_s=3.0 if trainer.dist.active else 0.0):
            state = trainer.fit()
        return "early_stopped" if state.early_stopped else "completed"
    except KeyboardInterrupt as exc:
        trainer.events.emit("interrupted", step=trainer.state.step)
        raise Interrupted(run_dir, trainer.state.step) from exc
    except StopTraining as stop:  # asked for by the caller (e.g. a search pruning this trial)
        trainer.events.emit("stopped", step=trainer.state.step, status=stop.status, reason=stop.reason)
        raise
    except Diverged:
        raise
    except Exception as exc:
        dist = trainer.dist
        if is_out_of_memory(exc):
            raise out_of_memory(exc, trainer.cfg, trainer.device, f"at step {trainer.state.step + 1}",
                                run_dir) from None
        if dist.active:  # one line naming the rank next to the traceback (torchrun's report names it too)
            log.error("rank %d of %d failed at step %d: %s: %s%s", dist.rank, dist.world_size, trainer.state.step + 1,
                      type(exc).__name__, str(exc).strip().splitlines()[0] if str(exc).strip() else "",
                      " (another rank failed or stopped answering first: see its output)"
                      if "closed by peer" in str(exc) or "timed out" in str(exc).lower() else "")
        raise


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
    values = layered({}, {**dict(changes or {}), "resume": str(run_or_checkpoint)})
    return train(model, None, TrainConfig.from_mapping(values, "resume"), progress=progress, cache_dir=cache_dir)


@contextlib.contextmanager
def _signals_held(when: str, active: bool = True) -> Iterator[list[int]]:
    """SIGINT/SIGTERM noted, not acted on, for the block; the caller honours them after it (the list is not empty).

    A signal the process ignores (SIG_IGN, e.g. a background job's SIGINT) stays ignored.
    """
    held: list[int] = []
    if not active or threading.current_thread() is not threading.main_thread():
        yield held
        return

    def note(signum, frame):
        if not held:
            log.warning("%s: stopping %s, with a checkpoint", signal.Signals(signum).name, when)
        held.append(signum)

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)
                if signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        yield held
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


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
