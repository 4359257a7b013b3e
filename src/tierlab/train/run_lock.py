"""One live writer per run directory: an OS lock that dies with the process that holds it.

``flock`` on ``<run>/.lock`` is taken before anything in the directory is written (a new
run right after claiming it, a resume before it reads its checkpoint) and held until the
run is closed. The kernel drops it when the process ends, however it ends (SIGKILL
included), so a stale lock never blocks a resume; the pid and host written into the file
are only there to say who holds it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from pathlib import Path

from ..errors import ConfigError
from ..run_files import LOCK

log = logging.getLogger(__name__)

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; runs are not locked there
    fcntl = None


class RunInUse(ConfigError):
    """Another live process writes this run directory."""


class RunLock(contextlib.AbstractContextManager):
    def __init__(self, run_dir: Path):
        self.run_dir, self._fd = run_dir, None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`RunInUse` naming the holder; a no-op when already held."""
        if self._fd is not None or fcntl is None:
            return
        path = self.run_dir / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise RunInUse(f"Run directory {str(self.run_dir)!r} is in use by another tierlab process "
                           f"({holder or 'pid unknown'}).",
                           "wait for it to finish or stop it (Ctrl-C checkpoints it), then resume; or choose "
                           "another --name.") from None
        except OSError as exc:  # a file system without locks (some network mounts): say so, go on
            os.close(fd)
            log.warning("cannot lock %s (%s): a second process could write this run at the same time", path,
                        exc.strerror or exc)
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}, since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:  # a set-up error before the run began: the lock goes with the object
        self.release()


class NoLock(RunLock):
    """What ranks other than 0 hold under torchrun: they write nothing in the run directory."""

    def __init__(self) -> None:
        super().__init__(Path("."))

    def acquire(self) -> None:
        return


def _read(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        return ""
