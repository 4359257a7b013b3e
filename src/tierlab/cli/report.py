"""``tierlab report``: dashboard.png for one or several runs and a summary table."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..disk import is_storage_error, write_failed
from ..run_files import DASHBOARD
from .common import image_path, run_dirs


def add_parser(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser("report", help="write dashboard.png for one or several runs and print a summary table",
                            description="Plot loss, learning rate, gradient norm, loss scale (with skipped steps), "
                                        "throughput and validation accuracy (and macro-F1 with a confusion matrix for a "
                                        "classifier); several runs are overlaid.")
    report.add_argument("runs", nargs="+", help="run directories")
    report.add_argument("--out", default=None, metavar="PNG",
                        help="where to write the image (default: RUN/dashboard.png for one run, ./dashboard.png "
                             "for several)")


def run(ns: argparse.Namespace) -> int:
    from ..track.plots import confusion_table, save_dashboard, summary_table

    dirs = run_dirs(ns.runs)
    if ns.out:
        out = image_path(ns.out, DASHBOARD, "--out")
    else:
        out = dirs[0] / DASHBOARD if len(dirs) == 1 else Path(DASHBOARD)
    try:
        save_dashboard(dirs, out)
    except Exception as exc:
        if not is_storage_error(exc):
            raise
        raise write_failed(out, exc, "the runs are untouched", "free space, or write it elsewhere with --out PATH.") \
            from None
    print(summary_table(dirs))
    for d in dirs:  # classification runs: what was confused with what
        table = confusion_table(d)
        if table:
            print("\n" + table)
    print(f"dashboard: {out}")
    return 0
