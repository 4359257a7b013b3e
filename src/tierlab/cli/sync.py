"""``tierlab sync``: replay a run's local records into W&B or TensorBoard (e.g. after an outage)."""

from __future__ import annotations

import argparse
import math

from ..config import WANDB_MODES
from ..errors import UserError
from ..track.sinks import SINKS
from .common import run_dirs


def add_parser(sub: argparse._SubParsersAction) -> None:
    sync = sub.add_parser("sync", help="replay a run's local records into a tracker (e.g. after an outage)",
                          description="Send every record of metrics.jsonl and events.jsonl to W&B or TensorBoard.")
    sync.add_argument("run", help="run directory")
    sync.add_argument("--to", required=True, choices=list(SINKS))
    sync.add_argument("--wandb", dest="project", default=None, metavar="PROJECT",
                      help="W&B project (default: the run's --wandb, else tierlab)")
    sync.add_argument("--wandb-entity", default=None)
    sync.add_argument("--wandb-mode", default=None, choices=WANDB_MODES)
    sync.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                      help="seconds the tracker may take to start and to finish uploading (default: the run's "
                           "--tracker-timeout, else 30)")


def run(ns: argparse.Namespace) -> int:
    from ..track.sync import sync_run

    if ns.timeout is not None and not (math.isfinite(ns.timeout) and ns.timeout > 0):
        raise UserError(f"--timeout must be a positive number of seconds, got {ns.timeout}.", "pass e.g. --timeout 30.")
    (run_dir,) = run_dirs([ns.run])
    count = sync_run(run_dir, ns.to, ns.project, ns.wandb_entity, ns.wandb_mode, ns.timeout)
    print(f"synced {count['metrics']} metric records and {count['events']} events of {run_dir} to {ns.to}")
    return 0
