"""Run records: metrics and events."""

from .records import EventLog, JsonlWriter, read_jsonl

__all__ = ["EventLog", "JsonlWriter", "read_jsonl"]
