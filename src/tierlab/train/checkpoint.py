"""Checkpoints: atomic writes, a `latest` pointer, pruning, and loading that never runs code.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so
``torch.load(..., weights_only=True)`` can read it: a checkpoint file can never execute
code.  Each write goes to a temporary file that is flushed, fsynced and renamed into
place; the `latest` pointer is replaced the same way after it, so a crash at any instant
leaves the previous checkpoint loadable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import random
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..atomic import atomic_path, atomic_write, follow_umask, write_json_atomic
from ..disk import continue_fix, os_error_in, write_failed
from ..errors import UserError
from ..run_files import CKPT_DIR, LATEST
from . import identity

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
    """The checkpoint the `latest` pointer names (or the newest file if the pointer is missing).

    The pointer may only name a checkpoint file of this run's own folder: anything else
    (a path, binary bytes, a directory in its place) is refused plainly.
    """
    directory = checkpoint_dir(run_dir)
    pointer = directory / LATEST
    if pointer.exists() or pointer.is_symlink():
        raw = pointer.read_bytes()[:200] if pointer.is_file() and not pointer.is_symlink() else None
        name = _decoded(raw)
        if name is None or not _NAME.match(name):
            shown = "not a file" if raw is None else repr(name) if name is not None else "binary bytes"
            raise CheckpointError(f"{pointer} must hold the name of a checkpoint in {directory} (like "
                                  f"step-00000040.pt), but holds {shown}.",
                                  "delete it (the newest checkpoint is then used), or "
                                  + _newest_good(run_dir))
        if (directory / name).is_file():
            return directory / name
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def _decoded(raw: bytes | None) -> str | None:
    try:
        return raw.decode("utf-8").strip() if raw is not None else None
    except UnicodeDecodeError:
        return None


def sidecar(path: Path) -> Path:
    """The checksum file written with a checkpoint: step-N.pt.json (run id, step, sha256, bytes)."""
    return path.with_name(path.name + ".json")


class _HashingWriter:
    """A file that hashes what is written through it: the checksum costs no second read."""

    def __init__(self, fh):
        self._fh, self.sha256, self.size = fh, hashlib.sha256(), 0

    def write(self, data) -> int:
        written = self._fh.write(data)
        self.sha256.update(memoryview(data)[:written] if written is not None else data)
        self.size += written if written is not None else len(data)
        return written

    def __getattr__(self, name):
        return getattr(self._fh, name)


def verify_checkpoint(path: Path, run_dir: Path) -> None:
    """Refuse a checkpoint that is not this run's or whose bytes changed since it was written.

    A run made before tierlab wrote run ids (no run.json) has nothing to check against: its
    checkpoints are taken as they are. Verified files are remembered for the process (by
    path, size and modification time), so a resume hashes its checkpoint once.
    """
    own = identity.run_id(run_dir)
    if own is None:
        return
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, own)
    if key in _VERIFIED:
        return
    try:
        meta = json.loads(sidecar(path).read_bytes())
    except (OSError, ValueError):
        meta = None
    if not isinstance(meta, dict) or not {"run_id", "sha256"} <= set(meta):
        raise CheckpointError(f"Checkpoint {path} has no readable checksum file ({sidecar(path).name}): it was not "
                              "written by this run, or its checksum was lost.", _newest_good(run_dir, path))
    if meta["run_id"] != own:
        raise CheckpointError(f"Checkpoint {path} belongs to another run (run id {str(meta['run_id'])[:12]}..., this "
                              f"run is {own[:12]}...): resuming it would mix two runs.",
                              "resume that run from its own directory; here, " + _newest_good(run_dir, path))
    if stat.st_size != meta.get("bytes", stat.st_size) or identity.file_sha256(path) != meta["sha256"]:
        raise CheckpointError(f"Checkpoint {path} is damaged: its content no longer matches the checksum written "
                              "with it.", _newest_good(run_dir, path))
    _VERIFIED.add(key)


_VERIFIED: set[tuple] = set()


def _newest_good(run_dir: Path, but: Path | None = None) -> str:
    """The fix naming the newest checkpoint of the run that verifies, or saying there is none."""
    for candidate in reversed(list_checkpoints(run_dir)):
        if but is not None and candidate.resolve() == but.resolve():
            continue
        try:
            verify_checkpoint(candidate, run_dir)
        except CheckpointError:
            continue
        return f"resume from the newest intact checkpoint: --resume {candidate}"
    return "no intact checkpoint of this run remains: start a new run (--init-from can take trained weights)."


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep: int, run_id: str | None = None) -> Path:
    """Write ``state`` as the checkpoint of ``step`` atomically with its checksum file, move `latest`, prune."""
    directory = checkpoint_dir(run_dir)
    directory.mkdir(exist_ok=True)
    path = directory / checkpoint_name(step)
    started, in_place = time.perf_counter(), False
    try:
        with atomic_path(path) as tmp, tmp.open("wb") as fh:
            writer = _HashingWriter(fh)
            torch.save({"format": FORMAT, **state}, writer)
        in_place = True  # the file is there; it is a checkpoint once its checksum file and `latest` are too
        write_json_atomic(sidecar(path), {"run_id": run_id, "step": step, "sha256": writer.sha256.hexdigest(),
                                          "bytes": writer.size})
        atomic_write(directory / LATEST, path.name)
    except Exception as exc:
        if os_error_in(exc) is None:  # torch.save's RuntimeError over an OSError counts; anything else is a bug
            raise
        if in_place:  # not named by `latest`, and perhaps without its checksum file: not a checkpoint
            for unfinished in (path, sidecar(path)):
                unfinished.unlink(missing_ok=True)
        previous = latest_or_none(run_dir)
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        raise write_failed(path, exc, kept, continue_fix(run_dir), CheckpointError) from None
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
        sidecar(old).unlink(missing_ok=True)
    log.info("checkpoint %s (%.2f s)", path, time.perf_counter() - started)
    return path


def latest_or_none(run_dir: Path) -> Path | None:
    try:
        return latest_checkpoint(run_dir)
    except CheckpointError:  # a garbled `latest` must not hide the error being reported
        return None


def load_checkpoint(path: Path, mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; corrupted or unsafe files are refused plainly.

    ``mmap``: map the tensors instead of reading them (for a look at the config only: the
    tensors' bytes are then read from disk only if touched).
    """
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist.", "pass a run directory or a .pt checkpoint file.")
    if not _starts_like_a_zip(path):  # what torch.save writes (a truncated one still starts like one)
        raise CheckpointError(f"{path} is not a checkpoint: a PyTorch checkpoint is a zip archive, and this file is "
                              f"not one ({_first_bytes(path)}).", _offer_previous(path))
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


def _starts_like_a_zip(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def _first_bytes(path: Path) -> str:
    head = path.read_bytes()[:8] if path.stat().st_size else b""
    return f"it starts with {head!r}" if head else "it is empty"


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


def save_weights(path: Path, model: torch.nn.Module, gathered: dict[str, Any] | None = None) -> None:
    """Weights as safetensors (model.safetensors, best.safetensors), atomically: a write that fails leaves the
    previous file as it was.  ``gathered``: the full state of a sharded (--fsdp) model, gathered onto this rank."""
    from safetensors.torch import save_file, save_model

    with atomic_path(path) as tmp:
        if gathered is None:
            save_model(model, str(tmp))
        else:
            # Tied weights (an output head sharing the embedding) appear under both names: keep one.
            names = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
            save_file({k: v.contiguous() for k, v in gathered.items() if k in names}, str(tmp))
    follow_umask(path)  # safetensors writes 0600
