"""The daemon's pid file, held with an exclusive ``flock`` for the daemon's lifetime.

Whether another daemon runs is decided by the lock, not by the pid written in the file:
after ``kill -9`` the file stays behind but its lock died with the process, so a restart
a moment later succeeds (reliability F9); while a live daemon holds the lock, a second
one refuses with the holder's pid. The descriptor is close-on-exec, so the containers'
monitors (which outlive us) never inherit the lock.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class PidFileLocked(Exception):
    """Another live daemon holds the pid file."""


class PidFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise PidFileLocked(
                f"pid file {self.path} is locked by a running daemon (pid {holder}); "
                "ensure wharfd is not running"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        """Remove the file, then drop the lock (in that order: a successor that wins the
        lock must never see its file deleted by us)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None
