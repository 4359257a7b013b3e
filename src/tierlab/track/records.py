"""The run directory's records: metrics.jsonl and events.jsonl, one JSON object per line.

These files are the source of truth for a run.  Each line is written whole and flushed
at once, so a crash loses at most the line being written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from ..disk import continue_fix, write_failed

log = logging.getLogger(__name__)


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN/Infinity: a non-finite number is written as null (events say what it was)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def finite_tree(value: Any) -> Any:
    """``value`` with every non-finite number in it, however nested, as null (a whole JSON document)."""
    if isinstance(value, dict):
        return {k: finite_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_tree(v) for v in value]
    return finite_or_none(value)


class JsonlWriter:
    """An append-only JSONL file: each record is written whole with one system call, or not at all.

    Unbuffered on purpose: a record that a full disk cut short is cut off again at once (a
    shrinking truncate needs no space), so the file never holds a torn line that the next
    record would be glued onto, and no buffer keeps the failed bytes to write them later.
    """

    def __init__(self, path: Path):
        self.path = path
        self._fh = path.open("ab", buffering=0)
        self._size = self._fh.seek(0, 2)
        # Called with each record after it is safely on disk (the trackers' fan-out).
        self.listener: Callable[[dict[str, Any]], None] | None = None

    def write(self, record: dict[str, Any], forward: bool = True) -> dict[str, Any]:
        """Append ``record``; returns it as written (non-finite numbers as None)."""
        clean = {k: finite_or_none(v) for k, v in record.items()}
        self._append((json.dumps(clean) + "\n").encode("utf-8"))
        if forward and self.listener is not None:
            self.listener(clean)
        return clean

    def _append(self, data: bytes) -> None:
        view, start = memoryview(data), self._size
        try:
            while view:
                written = self._fh.write(view)  # a full disk may take part of it, then refuse the rest
                view = view[written:]
        except OSError as exc:
            with contextlib.suppress(OSError):  # (a failing disk may refuse this too: the resume check then tells)
                self._fh.truncate(start)
            raise write_failed(self.path, exc, "the records before this one are intact",
                               continue_fix(self.path.parent)) from None
        self._size += len(data)

    def tell(self) -> int:
        """Bytes written so far: a checkpoint records it so a resume can cut the file back."""
        return self._size

    def truncate(self, size: int) -> None:
        """Cut the file back to ``size`` bytes (records written after a checkpoint)."""
        self._size = min(size, self._size)
        self._fh.truncate(self._size)

    def close(self) -> None:
        self._fh.close()

    @property
    def closed(self) -> bool:
        return self._fh.closed


class EventLog(JsonlWriter):
    """events.jsonl: things that happened, each with its type, a UTC timestamp and details."""

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        record = _event(event, fields)
        self.write(record)
        return record

    def emit_local(self, event: str, **fields: Any) -> None:
        """Write an event to the file only (the trackers' own failures must not loop back into them)."""
        self.write(_event(event, fields), forward=False)

    @contextlib.contextmanager
    def provisional(self, event: str, **fields: Any) -> Iterator[dict[str, Any]]:
        """An event about what the block does (a checkpoint written): it stands only if the block succeeds.

        It is written first, so that what the block records (a checkpoint's record offsets)
        includes it; on any error it is cut off again, and the trackers hear of it only after.
        """
        start = self._size
        written = self.write(_event(event, fields), forward=False)
        try:
            yield written
        except BaseException:
            self.truncate(start)
            raise
        if self.listener is not None:
            self.listener(written)


def _event(event: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {"event": event, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **fields}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All complete records of a JSONL file: a torn last line from a crash is ignored, other unreadable lines
    (not UTF-8, not JSON: an edited or damaged file) are skipped with one warning naming how many."""
    records = []
    if not path.is_file():
        return records
    lines = path.read_bytes().splitlines()
    bad = 0
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))  # bytes: decoded as UTF-8 here, so a bad byte is a ValueError too
        except ValueError:
            bad += number < len(lines)  # (the last line may be one a crash tore)
    if bad:
        log.warning("%s: %d unreadable line(s) skipped (not UTF-8 JSON)", path, bad)
    return records


class Discard:
    """Stands in for metrics.jsonl and events.jsonl on ranks other than 0, which write nothing."""

    listener = None

    def write(self, record: dict[str, Any], forward: bool = True) -> None:
        pass

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        return {"event": event, **fields}

    def emit_local(self, event: str, **fields: Any) -> None:
        pass

    def tell(self) -> int:
        return 0

    closed = False

    def truncate(self, size: int) -> None:
        pass

    def close(self) -> None:
        pass
