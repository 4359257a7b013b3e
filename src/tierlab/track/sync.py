"""``tierlab sync``: replay a run's local records into a tracker, so nothing an outage missed is lost."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from ..run_files import CONFIG, EVENTS, METRICS
from .records import read_jsonl
from .sinks import make_sink


def sync_run(run_dir: Path, to: str, project: str | None = None, entity: str | None = None,
             mode: str | None = None, timeout: float | None = None) -> dict[str, int]:
    config = json.loads((run_dir / CONFIG).read_text()) if (run_dir / CONFIG).is_file() else {}
    given = {"wandb": project, "wandb_entity": entity, "wandb_mode": mode, "tracker_timeout": timeout}
    sink = make_sink(to, run_dir, {**config, **{k: v for k, v in given.items() if v}})
    metrics, events = read_jsonl(run_dir / METRICS), read_jsonl(run_dir / EVENTS)
    sink.clear()  # files of its own (TensorBoard): a second sync replaces the first, never doubles it
    try:
        sink.start(config)
        try:
            for record in metrics:
                sink.log(record)
            for record in events:
                sink.event(record)
        finally:
            sink.close()
    except Exception as exc:  # noqa: BLE001 - a tracker's own errors (a server that does not answer), said plainly
        if isinstance(exc, UserError):
            raise
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else "no detail"
        raise UserError(f"Could not sync {run_dir} to {to}: {type(exc).__name__}: {first}",
                        "check that the server is reachable (for W&B: WANDB_BASE_URL, the network, the API key) and "
                        "sync again (--timeout SECONDS waits longer); the run's records and weights are unchanged.") \
            from None
    return {"metrics": len(metrics), "events": len(events)}
