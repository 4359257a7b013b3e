"""Files that are either the old version or the new one, never half-written: one way to write them.

Everything tierlab writes for keeps -- checkpoints, the run's JSON, the token cache, search
outputs -- goes through :func:`atomic_path`: the data is written to a temporary name beside
the target (same folder, so the rename cannot cross file systems), flushed to disk, and
renamed over the target; the folder is then synced so the rename survives a power loss.
A crash or a full disk leaves the previous file and, at most, nothing else (the temporary
is removed on error).  Temporary names are ``.NAME.tmpPID.EXT``: hidden, unique per
process (several search workers may write one file), and with the target's extension, so a
writer that picks its format from the name (matplotlib) still does.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator


_TEMPORARY = re.compile(r"^\..+\.tmp(\d+)(\.[^.]*)?$")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to; on success it replaces ``path``."""
    path = Path(path)
    tmp = temporary_name(path, os.getpid())
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # a full disk may only say so here: raised, and the old file stays
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def temporary_name(path: Path, pid: int) -> Path:
    return path.with_name(f".{path.stem}.tmp{pid}{path.suffix}")


def remove_leftovers(folder: Path, dead_writers_only: bool = False) -> list[Path]:
    """Remove the temporary files that writes killed half-way (SIGKILL, power loss) left in ``folder``.

    A folder one process owns (a run directory, under its lock) is cleaned whole; in a
    shared one (the token cache) ``dead_writers_only`` spares the files of processes on this
    machine that are still alive.
    """
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if not match or not entry.is_file() or (dead_writers_only and _alive(int(match.group(1)))):
            continue
        with contextlib.suppress(OSError):
            entry.unlink()
            removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # someone else's process (or a number that is no pid): leave its file alone
    return True


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8, newlines untranslated) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8", newline="")


def write_json_atomic(path: Path, value: Any) -> None:
    atomic_write(path, json.dumps(value, indent=2) + "\n")


def _fsync_dir(path: Path) -> None:
    """Make a rename in folder ``path`` durable (POSIX); a no-op where folders cannot be opened or synced."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def follow_umask(path: Path) -> None:
    """Give ``path`` the mode a plain open() or mkdir() gives: 0o666 (a file) or 0o777 (a folder) less the umask.

    safetensors writes through a temporary file (mode 0600) and tempfile.mkdtemp makes 0700
    folders, while everything else tierlab writes follows the user's umask (0644 and 0755
    under the usual 022).
    """
    base = 0o777 if Path(path).is_dir() else 0o666
    os.chmod(path, base & ~_umask())


def _umask() -> int:
    try:
        with open("/proc/self/status") as fh:  # Linux: read without changing it
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)  # elsewhere: set and put back (in between, the strictest mask, never a looser one)
    os.umask(mask)
    return mask
