"""A run directory and the :class:`Run` handle that reads it."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..run_files import CONFIG, EVENTS, METRICS, SUMMARY, WEIGHTS  # noqa: F401 - re-exported for the run's readers
from ..track import read_jsonl


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
