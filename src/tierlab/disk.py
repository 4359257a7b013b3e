"""A write that failed for want of space (or a failing disk), said as one plain line.

A full disk does not always arrive as an ``OSError``: ``torch.save`` into a file object
turns the ``OSError`` its writer raised into a ``RuntimeError`` ("unexpected pos ...") with
the ``OSError`` only in its context, and safetensors (Rust) reports
"... (os error 28)" in a ``SafetensorError``.  :func:`os_error_in` finds the operating
system's error in any of these; :func:`write_failed` turns it into a :class:`WriteFailed`
that names the file, what went wrong, the space left there and what was kept.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

from .errors import UserError
from .run_files import CKPT_DIR, LATEST

# Errors of the storage itself (not of the path's name or permissions): the fix is free space or another disk.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG}
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


class WriteFailed(UserError):
    """Writing a file of the run (checkpoint, records, weights, summary, cache) failed: exit code 2."""


def os_error_in(exc: BaseException) -> OSError | None:
    """The ``OSError`` behind ``exc``: itself, one in its cause/context chain, or one a Rust library printed."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
            return current
        match = _RUST_OS_ERROR.search(str(current))
        if match:
            code = int(match.group(1))
            return OSError(code, os.strerror(code))
        current = current.__cause__ or current.__context__
    return None


def is_storage_error(exc: BaseException) -> bool:
    found = os_error_in(exc)
    return found is not None and found.errno in STORAGE_ERRNOS


def free_space(path: Path) -> str:
    """'1.2 MiB free on /mnt/x' for the file system holding ``path`` (or its nearest existing folder)."""
    place = Path(path).absolute()
    while not place.exists() and place != place.parent:
        place = place.parent
    try:
        free = shutil.disk_usage(place).free
    except OSError:
        return "free space unknown"
    return f"{_size(free)} free on {_mount_point(place)}"


def describe(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full" if exc.errno == errno.ENOSPC else "the disk quota is used up"
    return exc.strerror or str(exc)


def write_failed(path: Path, exc: BaseException, kept: str, fix: str,
                 kind: type[UserError] = WriteFailed) -> UserError:
    """A ``kind`` of error for ``path``: ``Writing PATH failed: the disk is full (0 B free on /x); KEPT. Fix: FIX``"""
    found = os_error_in(exc)
    what = describe(found) if found is not None else f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    return kind(f"Writing {path} failed: {what} ({free_space(path)}); {kept}.", fix)


def continue_fix(run_dir: Path) -> str:
    """How to go on after freeing space: resume from the run's checkpoint, or (none written yet) start it again.

    A run without a checkpoint cannot be resumed, and its directory blocks its --name:
    ``--resume auto`` sets such a directory aside (``NAME.incomplete-TIME``) and starts afresh.
    """
    run_dir = Path(run_dir)
    if (run_dir / CKPT_DIR / LATEST).is_file():
        return f"free space and continue the run with `tierlab train --resume {run_dir}`."
    return ("free space and run the same command again with `--resume auto` (no checkpoint was written: the run "
            f"starts afresh, and {run_dir.name} is kept aside as {run_dir.name}.incomplete-TIME).")


def _mount_point(path: Path) -> Path:
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
