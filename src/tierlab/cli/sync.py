"""``tierlab sync``: replay a run's local records into W&B or TensorBoard (e.g. after an outage)."""

from __future__ import annotations

import argparse

from ..config import WANDB_MODES
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


def run(ns: argparse.Namespace) -> int:
    from ..track.sync import sync_run

    (run_dir,) = run_dirs([ns.run])
    count = sync_run(run_dir, ns.to, ns.project, ns.wandb_entity, ns.wandb_mode)
    print(f"synced {count['metrics']} metric records and {count['events']} events of {run_dir} to {ns.to}")
    return 0
