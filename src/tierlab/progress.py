"""What a person sees while training: a progress bar on a terminal, plain lines otherwise.

Library code only logs; this module (used by the CLI) decides where those logs go.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Any, Iterator, Protocol

from .launch import torchrun_rank


class Progress(Protocol):
    def start(self, total_steps: int) -> None: ...

    def update(self, record: dict[str, Any]) -> None: ...


class BarProgress:
    """A tqdm bar showing step, loss, tokens/s and the fp16 loss scale."""

    def __init__(self, stream):
        self.stream = stream
        self.bar = None
        self.step = 0

    def start(self, total_steps: int) -> None:
        from tqdm import tqdm

        # A terminal that reports no size (some pseudo-terminals, CI runners) would get no bar
        # at all from tqdm: give it a plain 100 x 24 instead.  The size is asked of the bar's
        # own terminal: $COLUMNS (which shutil reads first) may describe another one.
        try:
            size = os.get_terminal_size(self.stream.fileno())
        except (AttributeError, OSError, ValueError):
            size = os.terminal_size((0, 0))
        sized = size.columns > 0 and size.lines > 0
        self.bar = tqdm(total=total_steps, unit="step", file=self.stream, dynamic_ncols=sized,
                        ncols=None if sized else 100, nrows=None if sized else 24)

    def update(self, record: dict[str, Any]) -> None:
        if self.bar is None:
            return
        if record["kind"] == "train":
            self.bar.update(record["step"] - self.step)
            self.step = record["step"]
            post = {"loss": f"{record['loss']:.4f}", "tok/s": f"{record['tokens_per_s']:.0f}"}
            if record["loss_scale"] is not None:
                post["scale"] = f"{record['loss_scale']:g}"
            if record["skipped_steps"]:
                post["skipped"] = record["skipped_steps"]
            self.bar.set_postfix(post, refresh=False)
        else:
            self.bar.write(f"step {record['step']}: val_loss {record['val_loss']:.4f} "
                           f"val_acc {record['val_acc']:.3f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _TqdmHandler(logging.Handler):
    """Log lines printed above the bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


@contextlib.contextmanager
def console(quiet: bool = False, stream=None) -> Iterator[Progress | None]:
    stream = stream or sys.stdout
    logger = logging.getLogger("tierlab")
    metrics_logger = logging.getLogger("tierlab.metrics")
    saved = (logger.level, logger.handlers[:], logger.propagate, metrics_logger.level)
    logger.handlers.clear()
    logger.propagate = False
    bar = None
    rank = torchrun_rank()
    if rank:  # ranks other than 0 of a torchrun job: rank 0 speaks for the job, the others only warn
        logger.setLevel(logging.WARNING)
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"[rank {rank}] %(levelname)s: %(message)s"))
    elif quiet:
        logger.setLevel(logging.ERROR)
        handler = logging.StreamHandler(sys.stderr)
    elif stream.isatty():
        logger.setLevel(logging.INFO)
        metrics_logger.setLevel(logging.WARNING)  # the bar shows them
        handler = _TqdmHandler()
        bar = BarProgress(stream)
    else:
        logger.setLevel(logging.INFO)
        handler = logging.StreamHandler(stream)
    if not rank:
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s" if quiet else "%(message)s"))
    logger.addHandler(handler)
    try:
        yield bar
    finally:
        if bar is not None:
            bar.close()
        logger.setLevel(saved[0])
        logger.handlers[:] = saved[1]
        logger.propagate = saved[2]
        metrics_logger.setLevel(saved[3])


@contextlib.contextmanager
def quieted(*names: str) -> Iterator[None]:
    """Raise the named loggers to WARNING inside the block (e.g. a search's per-trial training lines)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
