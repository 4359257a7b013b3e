"""The ``tierlab`` command line: parses arguments, sets up what a person sees, maps errors to exit codes.

Exit codes: 0 success, 2 a user error (one plain line, no traceback), 3 training diverged,
130 interrupted.  Each subcommand is one module here with ``add_parser(sub)`` and
``run(ns) -> exit code``; what several share (options, defaults, path checks) is in
:mod:`.common`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import NoReturn, Sequence

from .. import __version__
from ..disk import STORAGE_ERRNOS, describe, free_space, os_error_in
from ..errors import UserError
from . import analyze, bench, compare, export, report, sample, search, sync, train, validate
from .common import EXIT_INTERRUPTED, EXIT_USER_ERROR, Parser
from .train import config_from_args

__all__ = ["EXIT_INTERRUPTED", "EXIT_USER_ERROR", "build_parser", "config_from_args", "main"]

log = logging.getLogger("tierlab")

# In the order `tierlab --help` lists them.
COMMANDS = {"train": train, "sample": sample, "validate": validate, "report": report, "bench": bench,
            "search": search, "analyze": analyze, "export": export, "sync": sync, "compare": compare}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="tierlab", description="Check a hand-built PyTorch transformer and train it fast "
                                                "and safely in mixed precision.")
    parser.add_argument("--version", action="version", version=f"tierlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for command in COMMANDS.values():
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if "TORCHELASTIC_ERROR_FILE" in os.environ:
        # Under torchrun: an unexpected exception is also written where torchrun reads it,
        # so its failure report shows this rank's error, not "To enable traceback see ...".
        from torch.distributed.elastic.multiprocessing.errors import record

        _leave_job(record(_main)(argv))  # success too: see _leave_job
    return _main(argv)


def _import_deferring_ctrl_c():
    """Import torch (through tierlab.train) with a Ctrl-C held until the import is done, then honoured.

    A KeyboardInterrupt raised inside a C extension's import is not always a KeyboardInterrupt
    by the time it leaves it: numpy turns it into an ImportError with a traceback, other
    libraries swallow it. Held for the second or two the import takes, it is an ordinary
    interrupted command (exit 130) every time.
    """
    held: list[int] = []
    previous = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        from ..train.guards import Diverged
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if held:
        raise KeyboardInterrupt
    return Diverged


def _leave_job(code: int) -> NoReturn:
    """End a torchrun worker without the interpreter's teardown, whatever its exit code (0, 2, 3 or 130).

    The ranks leave at different moments, and the process group's background threads, torn
    down by a normal exit, can abort the process ("terminate called without an active
    exception", SIGABRT): torchrun then reports a crash instead of tierlab's exit code (4 in
    36 runs of a two-rank user error on a busy machine; after a successful --fsdp run too,
    seen once in a full suite on 2 busy cores).
    Everything tierlab writes is closed by now (the run's ``finally``); the streams and
    log handlers are flushed here.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _main(argv: Sequence[str] | None) -> int:
    from ..launch import torchrun_rank

    rank = torchrun_rank()
    who = f"tierlab (rank {rank})" if rank else "tierlab"
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.command is None:
        parser.print_help()
        return EXIT_USER_ERROR
    if ns.command in ("bench", "search") and rank is not None:
        sys.stderr.write(f"{who}: error: tierlab {ns.command} runs in one process, not under torchrun. Fix: run "
                         f"`tierlab {ns.command} ...` directly (on a GPU machine it uses one GPU).\n")
        return EXIT_USER_ERROR
    try:
        return _run(ns, who)
    except KeyboardInterrupt:  # also while torch is still being imported: no traceback either way
        sys.stderr.write(f"{who}: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _run(ns: argparse.Namespace, who: str) -> int:
    """The command, with its user errors and divergence turned into their exit codes."""
    Diverged = _import_deferring_ctrl_c()

    try:
        return COMMANDS[ns.command].run(ns)
    except UserError as err:
        sys.stderr.write(f"{who}: error: {err}\n")
        return EXIT_USER_ERROR
    except Diverged as err:
        sys.stderr.write(f"{who}: {err}\n")
        return Diverged.exit_code
    except Exception as exc:
        # The last net for a write a full (or failing) disk refused where no plainer message was made:
        # an output file of report, analyze, bench, export.  A bug still gets its traceback.
        found = os_error_in(exc)
        if found is None or found.errno not in STORAGE_ERRNOS:
            raise
        where = f" ({found.filename}; {free_space(Path(found.filename))})" if found.filename else ""
        sys.stderr.write(f"{who}: error: A write failed: {describe(found)}{where}. "
                         "Fix: free space (or write to another disk) and run the command again.\n")
        return EXIT_USER_ERROR
