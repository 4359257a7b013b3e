"""The run directory's one owner: creating it, opening its record files, closing it with a summary, reading it.

File names come from :mod:`tierlab.run_files`; every write goes through
:mod:`tierlab.atomic` or the append-only record writers in :mod:`tierlab.track`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors.torch import save_file, save_model
from torch import nn

from ..atomic import write_json_atomic
from ..config import TrainConfig
from ..errors import ConfigError, UserError
from ..run_files import CONFIG, DASHBOARD, EVENTS, METRICS, SUMMARY, WEIGHTS
from ..track import EventLog, JsonlWriter, read_jsonl
from . import identity
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


def follow_umask(path: Path) -> None:
    """Give ``path`` the mode a plain open() or mkdir() gives: 0o666 (a file) or 0o777 (a folder) less the umask.

    safetensors writes through a temporary file (mode 0600) and tempfile.mkdtemp makes 0700
    folders, while everything else tierlab writes follows the user's umask (0644 and 0755
    under the usual 022).
    """
    base = 0o777 if Path(path).is_dir() else 0o666
    os.chmod(path, base & ~_umask())


def _umask() -> int:
    try:
        with open("/proc/self/status") as fh:  # Linux: read without changing it
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)  # elsewhere: set and put back (in between, the strictest mask, never a looser one)
    os.umask(mask)
    return mask


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
    try:
        run_dir.mkdir(parents=True, exist_ok=True)  # an empty folder made beforehand (a job script's) is fine
        if resume_state is None:
            claim(run_dir)
        lock.acquire()  # (a resume holds it already)
        if identity.read(run_dir) is None:  # a new run (or one from before run ids): its id from now on
            identity.create(run_dir, cfg.model)
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
        "status": status, "steps": state.step, "tokens": state.tokens,
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
    write_json_atomic(run_dir / SUMMARY, {k: finite_or_none(v) for k, v in summary.items()})
    events.emit("run_end", status=status, steps=state.step, wall_seconds=wall)


def finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_dashboard(run_dir: Path) -> None:
    """dashboard.png at the end of a run; a plotting problem is logged, never fatal."""
    try:
        from ..track.plots import save_dashboard

        save_dashboard([run_dir], run_dir / DASHBOARD)
        log.info("dashboard: %s", run_dir / DASHBOARD)
    except Exception as exc:  # noqa: BLE001 - the run itself is complete and on disk
        log.warning("could not write dashboard.png: %s: %s", type(exc).__name__, exc)
