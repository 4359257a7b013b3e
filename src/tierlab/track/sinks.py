"""Experiment trackers: TensorBoard and Weights & Biases, fed the same records as metrics.jsonl.

Each sink gets the run's resolved config at ``start``, every metric record (``kind`` train
or eval) through ``log`` and every event through ``event``.  Metric names are the ones of
metrics.jsonl (``loss``, ``loss_scale``, ``skipped_steps``, ``val_loss``, ...), so a chart in
either tool reads like the local records.  Sinks may fail; :mod:`.trackers` makes sure that
never reaches training.
"""

from __future__ import annotations

import importlib.util
import json
import os
import uuid
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError

NON_METRIC = ("kind", "step")


def require(module: str, extra: str) -> None:
    """A missing optional dependency is a user error that says what to install."""
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"The {extra} tracker needs the '{module}' package, which is not installed.",
                          f"pip install 'tierlab[{extra}]' (or pip install {module}).")


def numeric_items(record: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in record.items()
            if k not in NON_METRIC and isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoardSink:
    """Event files in ``<run>/tensorboard``: scalars ``train/<name>`` and ``eval/<name>``, events as text."""

    name = "tensorboard"
    option = "tensorboard"  # the TrainConfig field that turns it on
    package = "tensorboard"  # the optional dependency it needs (and the tierlab extra that installs it)

    @classmethod
    def from_options(cls, run_dir: Path, options: Mapping[str, Any]) -> TensorBoardSink:
        return cls(run_dir / "tensorboard")

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.writer = None

    def clear(self) -> None:
        """Remove the event files written before (``tierlab sync``: the records are the source, written once)."""
        for old in self.log_dir.glob("events.out.tfevents.*"):
            old.unlink()

    def start(self, config: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", 0)

    def log(self, record: dict[str, Any]) -> None:
        for key, value in numeric_items(record).items():
            self.writer.add_scalar(f"{record['kind']}/{key}", value, record["step"])

    def event(self, record: dict[str, Any]) -> None:
        self.writer.add_text(f"events/{record['event']}", json.dumps(record), record.get("step") or 0)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class WandbSink:
    """A W&B run with the same metric names, the resolved config, and events as a table (and alerts)."""

    name = "wandb"
    option = "wandb"  # --wandb PROJECT
    package = "wandb"

    @classmethod
    def from_options(cls, run_dir: Path, options: Mapping[str, Any]) -> WandbSink:
        return cls(options.get("wandb") or "tierlab", options.get("wandb_entity"), options.get("wandb_mode"), run_dir,
                   options.get("name") or run_dir.name, float(options.get("tracker_timeout") or DEFAULT_TIMEOUT))

    def __init__(self, project: str, entity: str | None, mode: str | None, run_dir: Path, run_name: str,
                 timeout: float = 30.0):
        self.project, self.entity, self.run_dir, self.run_name = project, entity, run_dir, run_name
        self.mode = mode or os.environ.get("WANDB_MODE") or "online"
        self.timeout = timeout
        self.run = None
        self.events: list[list[Any]] = []

    def clear(self) -> None:
        """Nothing to clear: a second sync logs into the same W&B run (one per tierlab run), which keeps the steps it
        already has."""

    def start(self, config: dict[str, Any]) -> None:
        # W&B's own error reporting sends to the same server, and at exit it waits ~10 s for one
        # that does not answer, after the run is over; the user's own setting wins.
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
        import wandb

        self.run = wandb.init(project=self.project, entity=self.entity, mode=self.mode, dir=str(self.run_dir),
                              name=self.run_name, id=_wandb_id(self.run_dir), resume="allow", config=config,
                              reinit="finish_previous", settings=_bounded(wandb, self.timeout))

    def log(self, record: dict[str, Any]) -> None:
        self.run.log(numeric_items(record), step=record["step"])

    def event(self, record: dict[str, Any]) -> None:
        details = {k: v for k, v in record.items() if k not in ("event", "time", "step")}
        self.events.append([record.get("step"), record["event"], record.get("time"), json.dumps(details)])
        if record["event"] in ("diverged", "tracker_disabled") and self.mode == "online":
            import wandb

            self.run.alert(title=f"tierlab: {record['event']}", text=details.get("diagnosis", json.dumps(details)),
                           level=wandb.AlertLevel.WARN)

    def close(self) -> None:
        if self.run is None:
            return
        import wandb

        if self.events:
            self.run.log({"events": wandb.Table(columns=["step", "event", "time", "details"], data=self.events)})
        self.run.finish()


DEFAULT_TIMEOUT = 30.0


def _bounded(wandb, timeout: float):
    """W&B settings that bound its waits: starting (default 90 s) and the upload at finish (default: forever).

    A server that accepts connections and never answers then costs a run ``timeout``
    seconds at its start (W&B is turned off, said once) and at most that at its end.
    """
    wanted = {"init_timeout": timeout, "finish_timeout": timeout}
    known = getattr(wandb.Settings, "model_fields", wanted)  # older wandb releases lack finish_timeout
    return wandb.Settings(**{k: v for k, v in wanted.items() if k in known})


def _wandb_id(run_dir: Path) -> str:
    """One W&B run per tierlab run, kept across resumes (stored in the run directory)."""
    path = run_dir / "wandb-id.txt"
    if path.is_file():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:12]
    path.write_text(run_id)
    return run_id


# Every tracker tierlab can feed, by name (`tierlab sync --to NAME`); adding one is a class above
# and an entry here, plus the TrainConfig option that turns it on.
SINKS = {sink.name: sink for sink in (TensorBoardSink, WandbSink)}


def make_sink(kind: str, run_dir: Path, options: Mapping[str, Any]):
    """A sink of ``kind`` for ``run_dir``, set up from a run's ``options``; a missing package is a user error.

    Constructing a sink touches nothing on disk or the network (that happens in ``start``), so
    it can run before the run directory exists.
    """
    sink = SINKS[kind]
    require(sink.package, sink.package)
    return sink.from_options(run_dir, options)


def make_sinks(options: Mapping[str, Any], run_dir: Path) -> list:
    """The sinks a run's options turn on (``--tensorboard``, ``--wandb PROJECT``), in SINKS' order."""
    return [make_sink(name, run_dir, options) for name, sink in SINKS.items() if options.get(sink.option)]
