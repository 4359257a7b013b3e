"""A run directory and the :class:`Run` handle that reads it."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..track import read_jsonl

CONFIG, METRICS, EVENTS, SUMMARY, WEIGHTS = ("config.json", "metrics.jsonl", "events.jsonl", "summary.json",
                                             "model.safetensors")


def default_run_name() -> str:
    return time.strftime("run-%Y%m%d-%H%M%S")


def write_json_atomic(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


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
