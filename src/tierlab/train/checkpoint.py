"""Checkpoints: atomic writes, a `latest` pointer, pruning, and loading that never runs code.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so
``torch.load(..., weights_only=True)`` can read it: a checkpoint file can never execute
code.  Each write goes to a temporary file that is flushed, fsynced and renamed into
place; the `latest` pointer is replaced the same way after it, so a crash at any instant
leaves the previous checkpoint loadable.
"""

from __future__ import annotations

import errno
import logging
import pickle
import random
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..atomic import atomic_path, atomic_write
from ..errors import UserError
from ..run_files import CKPT_DIR, LATEST

if TYPE_CHECKING:
    from .distributed import Dist

log = logging.getLogger(__name__)

FORMAT = 1
_NAME = re.compile(r"^step-(\d{8})\.pt$")


class CheckpointError(UserError):
    """A checkpoint cannot be written or read; the message names the file and what to do."""


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / CKPT_DIR


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint files of a run, oldest first (temporary files are not listed)."""
    directory = checkpoint_dir(run_dir)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _NAME.match(p.name))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint the `latest` pointer names (or the newest file if the pointer is missing)."""
    pointer = checkpoint_dir(run_dir) / LATEST
    if pointer.is_file():
        target = checkpoint_dir(run_dir) / pointer.read_text().strip()
        if target.is_file():
            return target
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` as the checkpoint of ``step`` atomically, move `latest`, prune old ones."""
    directory = checkpoint_dir(run_dir)
    directory.mkdir(exist_ok=True)
    path = directory / checkpoint_name(step)
    started = time.perf_counter()
    try:
        with atomic_path(path) as tmp, tmp.open("wb") as fh:
            torch.save({"format": FORMAT, **state}, fh)
        atomic_write(directory / LATEST, path.name)
    except OSError as exc:
        previous = latest_checkpoint(run_dir)
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        what = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else f"{exc.strerror or exc}"
        raise CheckpointError(f"Writing checkpoint {path} failed: {what}; {kept}.",
                              "free space (or fix the directory) and continue with "
                              f"`tierlab train --resume {run_dir}`.") from None
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    log.info("checkpoint %s (%.2f s)", path, time.perf_counter() - started)
    return path


def load_checkpoint(path: Path, mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; corrupted or unsafe files are refused plainly.

    ``mmap``: map the tensors instead of reading them (for a look at the config only: the
    tensors' bytes are then read from disk only if touched).
    """
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist.", "pass a run directory or a .pt checkpoint file.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"Checkpoint {path} was refused: it holds objects that are not plain data "
                              f"(tensors, numbers, strings, lists, dicts), which could run code when loaded "
                              f"({str(exc).splitlines()[0][:160]}).",
                              "only load checkpoints written by tierlab; " + _offer_previous(path)) from None
    except Exception as exc:  # truncated zip, bad magic number, EOF: all mean "damaged"
        raise CheckpointError(f"Checkpoint {path} is damaged or truncated ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:160] if str(exc) else 'no detail'}).",
                              _offer_previous(path)) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a tierlab checkpoint (format {FORMAT}).", _offer_previous(path))
    return state


def _offer_previous(path: Path) -> str:
    others = [p for p in list_checkpoints(path.parent.parent) if p.name < path.name]
    if others:
        return f"resume from the previous one: --resume {others[-1]}"
    return "no earlier checkpoint exists in this run; start a new run."


# ---------------------------------------------------------------------------- RNG states
def rng_state(device: torch.device) -> dict[str, Any]:
    """Every random stream as plain data (lists and tensors), so weights_only loading works."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def newest_checkpoint_before(run_dir: Path, step: int | None) -> Path | None:
    """The newest checkpoint of ``run_dir`` taken before ``step`` (any step when None), or None."""
    found = list_checkpoints(run_dir)
    if step is not None:
        found = [p for p in found if int(p.stem.split("-")[1]) < step]
    return found[-1] if found else None


def own_part(state: dict[str, Any], dist: Dist) -> dict[str, Any]:
    """This rank's share of a checkpoint (random streams, sampler, unread rows).

    Resuming with another number of processes takes the parts round-robin: the run goes on,
    but (as the warning at start-up says) no longer draws the batches it would have drawn.
    """
    if "ranks" not in state:  # checkpoints of tierlab before multi-process support
        return {"rng": state["rng"], "sampler": state["sampler"], "window": state["window"]}
    parts = state["ranks"]
    return parts[dist.rank % len(parts)]
