"""Run records: metrics and events."""

from .records import Discard, EventLog, JsonlWriter, read_jsonl

__all__ = ["Discard", "EventLog", "JsonlWriter", "read_jsonl"]
