"""The run directory's one owner: creating it, opening its record files, closing it with a summary, reading it.

File names come from :mod:`tierlab.run_files`; every write goes through
:mod:`tierlab.atomic` or the append-only record writers in :mod:`tierlab.track`.
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from torch import nn

from ..atomic import remove_leftovers, write_json_atomic
from ..config import TrainConfig
from ..disk import STORAGE_ERRNOS, continue_fix, describe, free_space, is_storage_error, os_error_in, write_failed
from ..errors import ConfigError, UserError
from ..run_files import CKPT_DIR, CONFIG, DASHBOARD, EVENTS, METRICS, SUMMARY, WEIGHTS
from ..track import EventLog, JsonlWriter, read_jsonl
from ..track.records import finite_or_none
from . import identity
from .checkpoint import latest_or_none, save_weights
from .distributed import Dist, full_model_state
from .guards import Diverged

if TYPE_CHECKING:
    from ..data import TokenData
    from .run_lock import RunLock
    from .loop import Trainer
    from .precision import PrecisionDecision

log = logging.getLogger(__name__)


def default_run_name() -> str:
    return time.strftime("run-%Y%m%d-%H%M%S")


@dataclass
class Run:
    """A finished (or stopped) run: its directory, plus the model when trained in-process."""

    dir: Path
    model: nn.Module | None = field(default=None, repr=False)

    @classmethod
    def load(cls, path: str | Path) -> "Run":
        return cls(Path(path))

    @property
    def config(self) -> dict[str, Any]:
        return json.loads((self.dir / CONFIG).read_text())

    @property
    def summary(self) -> dict[str, Any]:
        return json.loads((self.dir / SUMMARY).read_text())

    @property
    def weights_path(self) -> Path:
        return self.dir / WEIGHTS

    def metrics(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Records of metrics.jsonl; ``kind="train"`` or ``"eval"`` selects one kind."""
        return [r for r in read_jsonl(self.dir / METRICS) if kind is None or r.get("kind") == kind]

    def plot(self):
        """The dashboard as a matplotlib Figure (displays itself in a notebook)."""
        from ..track.plots import dashboard

        return dashboard([self.dir])

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        return [r for r in read_jsonl(self.dir / EVENTS) if event is None or r.get("event") == event]


def refuse_existing(run_dir: Path) -> None:
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise ConfigError(f"Run directory {str(run_dir)!r} already exists and is not empty.",
                          "choose another --name, or delete that directory if you no longer need it.")


def open_run_dir(run_dir: Path, cfg: TrainConfig, tokens: TokenData, resume_state: dict[str, Any] | None,
                 lock: RunLock) -> tuple[JsonlWriter, EventLog]:
    """Create (or, on resume, cut back) the run directory's files; unwritable places are user errors."""
    if resume_state is not None:  # before anything is written: records that lost part of their history are refused
        for name, key in ((METRICS, "metrics"), (EVENTS, "events")):
            check_history(run_dir / name, resume_state["records"][key])
    existed, claimed = run_dir.is_dir(), False
    try:
        run_dir.mkdir(parents=True, exist_ok=True)  # an empty folder made beforehand (a job script's) is fine
        if resume_state is None:
            claim(run_dir)
            claimed = True
        lock.acquire()  # (a resume holds it already)
        _remove_leftovers(run_dir)
        if identity.read(run_dir) is None:  # a new run (or one from before run ids): its id from now on
            identity.create(run_dir, cfg.model)
        write_json_atomic(run_dir / CONFIG, cfg.replace(resume=None, allow_config_change=False).to_dict())
        tokens.save(run_dir)  # the tokenizer (and a classification's labels)
        metrics, events = JsonlWriter(run_dir / METRICS), EventLog(run_dir / EVENTS)
    except OSError as exc:
        if claimed:  # a new run's half-made directory would block its --name: everything in it is this run's
            _unmake(run_dir, keep_folder=existed)
        space = f" ({free_space(run_dir)})" if exc.errno in STORAGE_ERRNOS else ""
        fix = ("free space on its disk (or make the directory writable) and run the same command again"
               if resume_state is not None else
               "choose a writable place with --out DIR (and free disk space if it is full)")
        raise UserError(f"Cannot write the run directory {str(run_dir)!r}: {describe(exc)}{space}.", fix + ".") from None
    if resume_state is not None:
        # Records written after the checkpoint would be written again: cut them off.
        metrics.truncate(resume_state["records"]["metrics"])
        events.truncate(resume_state["records"]["events"])
    return metrics, events


def _unmake(run_dir: Path, keep_folder: bool) -> None:
    if not keep_folder:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    for entry in run_dir.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _remove_leftovers(run_dir: Path) -> None:
    """Temporary files of writes a kill cut short (a half-written checkpoint): this process owns the run now."""
    removed = remove_leftovers(run_dir) + remove_leftovers(run_dir / CKPT_DIR)
    if removed:
        log.info("removed %d temporary file(s) left by a write that was cut short: %s", len(removed),
                 ", ".join(p.name for p in removed))


def check_history(path: Path, offset: int) -> None:
    """Refuse a resume whose records file no longer holds what it held at the checkpoint (``offset`` bytes).

    Cutting it back to the offset is how a resume drops records written after the
    checkpoint; a file shorter than that, or one whose byte before the offset is not the end
    of a record, lost history (deleted, truncated, edited), and appending to it would hide
    that -- or glue the next record onto a torn line.
    """
    what = f"{path.name} of {str(path.parent)!r}"
    fix = ("restore the file (from a backup or a copy of the run), or start a new run from the trained weights: "
           f"tierlab train --init-from {path.parent} --name NEW")
    if offset and not path.is_file():
        raise UserError(f"The {what} was deleted: the checkpoint being resumed recorded {offset:,} bytes of it.", fix)
    if not offset:
        return
    size = path.stat().st_size
    if size < offset:
        raise UserError(f"The {what} is shorter than when the checkpoint was written ({size:,} of {offset:,} bytes): "
                        "part of its history was cut off.", fix)
    with path.open("rb") as fh:
        fh.seek(offset - 1)
        if fh.read(1) != b"\n":
            raise UserError(f"The {what} was changed before the checkpoint's position ({offset:,} bytes): that byte is "
                            "not the end of a record.", fix)


def claim(run_dir: Path) -> None:
    """Take a new run directory by creating its metrics file exclusively.

    Of two runs started with one --name at the same moment, the second stops here: the
    emptiness check before only looked.
    """
    try:
        (run_dir / METRICS).open("x").close()
    except FileExistsError:
        raise ConfigError(f"Run directory {str(run_dir)!r} was just taken by another run of the same --name.",
                          "choose another --name.") from None


def close_run(run_dir: Path, model: nn.Module, trainer: Trainer, decision: PrecisionDecision, status: str, wall: float,
              metrics: JsonlWriter, events: EventLog, compile_seconds: float | None, dist: Dist,
              failure: BaseException | None = None) -> None:
    """Write the last record, the final weights, summary.json and the ``run_end`` event.

    After a ``failure`` (the run is ending with that error) closing is best effort: what
    cannot be written now (a full disk, most likely the same one) is logged, and ``failure``
    stays the error the user sees.  Without one, the first write that fails ends the run
    with that write's plain error -- after the rest were still tried, with status "failed".
    """
    closing = _Closing(run_dir, failure)
    # Steps done since the last log step still get their record.  With several processes
    # that read is a collective, and a run ends between log steps only when something went
    # wrong on some rank, which may be gone: the record is left out rather than risk a hang.
    if trainer.buffered and not dist.active:
        closing.attempt(run_dir / METRICS, _flush_unless_diverging, trainer)
    state = trainer.state
    weights = None
    if dist.sharded and status != "failed":  # gathering the shards is a collective: only when all ranks are here
        weights = full_model_state(model)
    if not dist.is_main:
        return
    if not dist.sharded or weights:
        closing.attempt(run_dir / WEIGHTS, save_weights, run_dir / WEIGHTS, model, weights)
    else:
        log.warning("the sharded weights could not be gathered after the failure: the last checkpoint holds them")
    status = "failed" if closing.error else status
    summary = {
        "status": status, "steps": state.step, "tokens": state.tokens,
        "final_loss": state.last_loss, "final_val_loss": state.last_val_loss,
        "best_val_loss": state.best_val_loss, "precision": decision.used,
        "precision_requested": decision.requested, "precision_reason": decision.reason,
        "precision_measured": decision.measured, "skipped_steps": state.skipped_steps,
        "final_loss_scale": state.loss_scale, "wall_seconds": wall,
        "median_tokens_per_s": statistics.median(state.tokens_per_s) if state.tokens_per_s else None,
        "rollbacks": trainer.guard.state.rollbacks, "compile_seconds": compile_seconds,
        "world_size": dist.world_size, "global_batch_size": trainer.global_batch,
        **{f"final_{k}": v for k, v in state.last_scores.items()},  # classify: final_val_acc, final_val_f1
    }
    if trainer.cfg.early_stop is not None:  # where best.safetensors comes from
        summary["best_step"] = state.best_step
    closing.attempt(run_dir / SUMMARY, write_json_atomic, run_dir / SUMMARY,
                    {k: finite_or_none(v) for k, v in summary.items()})
    status = "failed" if closing.error else status  # (the summary itself may have failed)
    closing.attempt(run_dir / EVENTS, events.emit, "run_end", status=status, steps=state.step, wall_seconds=wall)
    if closing.error:
        raise closing.error


def _flush_unless_diverging(trainer: Trainer) -> None:
    try:
        trainer.flush()
    except Diverged:
        pass  # already diverging or interrupted: the record is written, the verdict stands


class _Closing:
    """The writes that close a run, each tried in turn; the first that fails for want of space is kept."""

    def __init__(self, run_dir: Path, failure: BaseException | None):
        self.run_dir, self.failure = run_dir, failure
        self.error: UserError | None = None

    def attempt(self, path: Path, write: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        try:
            write(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - sorted below: a bug still raises
            if isinstance(exc, UserError):
                plain = exc
            elif os_error_in(exc) is not None:
                plain = write_failed(path, exc, self._kept(), continue_fix(self.run_dir))
            elif self.failure is None and self.error is None:
                raise
            else:
                plain = None
            if self.failure is not None or self.error is not None:  # the first error is the one reported
                log.warning("while closing the run: %s", plain or f"could not write {path.name}: "
                            f"{type(exc).__name__}: {exc}")
            else:
                self.error = plain

    def _kept(self) -> str:
        newest = latest_or_none(self.run_dir)
        return f"the last checkpoint {newest} is intact" if newest else "no checkpoint was written"


def write_dashboard(run_dir: Path, failed: bool = False) -> None:
    """dashboard.png at the end of a run; a plotting problem is logged, never fatal.

    A disk that cannot take the picture is another matter: the user must know the disk is
    full (exit 2, the file and the free space named), unless the run already ends with an
    error of its own (``failed``), which stays the one reported.
    """
    try:
        from ..track.plots import save_dashboard

        save_dashboard([run_dir], run_dir / DASHBOARD)
        log.info("dashboard: %s", run_dir / DASHBOARD)
    except Exception as exc:  # noqa: BLE001 - the run itself is complete and on disk
        if is_storage_error(exc) and not failed:
            raise write_failed(run_dir / DASHBOARD, exc, "the run itself is complete (summary.json and "
                               "model.safetensors are written)", f"free space and draw it with `tierlab report "
                               f"{run_dir}`.") from None
        log.warning("could not write dashboard.png: %s: %s", type(exc).__name__, exc)
