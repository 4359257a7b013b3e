"""Trackers that cannot hurt training.

Every call into a sink passes through :class:`Trackers`, which catches ``Exception`` (never
``KeyboardInterrupt`` or ``SystemExit``), logs the first failure of each sink with its
name, the exception type and message, writes a ``tracker_failed`` event, and turns the sink
off after ``MAX_FAILURES`` consecutive failures.  The run directory's own files are written
first and independently, so an outage loses nothing: ``tierlab sync`` replays them later.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

log = logging.getLogger(__name__)

MAX_FAILURES = 3


class Trackers:
    def __init__(self, sinks: list, emit_event: Callable[..., Any]):
        self._sinks = list(sinks)
        self._failures = {id(s): 0 for s in self._sinks}
        self._warned: set[int] = set()
        self._emit = emit_event  # writes to events.jsonl only (not back into the sinks)

    @property
    def active(self) -> list[str]:
        return [s.name for s in self._sinks]

    def start(self, config: dict[str, Any]) -> None:
        for sink in list(self._sinks):
            if not self._call(sink, "start", config):
                # A sink that could not start cannot log: off at once.
                self._disable(sink, "it failed to start")

    def log(self, record: dict[str, Any]) -> None:
        for sink in list(self._sinks):
            self._call(sink, "log", record)

    def event(self, record: dict[str, Any]) -> None:
        for sink in list(self._sinks):
            self._call(sink, "event", record)

    def close(self) -> None:
        for sink in list(self._sinks):
            self._call(sink, "close")
        self._sinks.clear()

    def _call(self, sink, method: str, *args: Any) -> bool:
        try:
            getattr(sink, method)(*args)
        except Exception as exc:  # noqa: BLE001 - the isolation boundary: only Exception, never BaseException
            count = self._failures[id(sink)] = self._failures[id(sink)] + 1
            if id(sink) not in self._warned:
                self._warned.add(id(sink))
                log.warning("tracker %s failed in %s: %s: %s (training goes on; the run directory has "
                            "everything)", sink.name, method, type(exc).__name__, exc)
            self._emit("tracker_failed", sink=sink.name, call=method, error=type(exc).__name__,
                       message=str(exc)[:500], consecutive=count)
            if count >= MAX_FAILURES and sink in self._sinks:
                self._disable(sink, f"{MAX_FAILURES} consecutive failures")
            return False
        self._failures[id(sink)] = 0
        return True

    def _disable(self, sink, why: str) -> None:
        if sink in self._sinks:
            self._sinks.remove(sink)
            log.warning("tracker %s turned off for the rest of the run: %s", sink.name, why)
            self._emit("tracker_disabled", sink=sink.name, reason=why)
