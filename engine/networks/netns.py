"""Persistent network namespaces, made without spawning a process.

``unshare(CLONE_NEWNET)`` changes only the calling *thread*'s namespace, so a short-lived
thread can make a fresh namespace, bind-mount its ``/proc/thread-self/ns/net`` onto a file
under the exec root (which keeps it alive with no process in it), bring ``lo`` up, and
exit. The daemon's own threads never change namespace.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct
import threading
from pathlib import Path

_CLONE_NEWNET = 0x40000000
_MS_BIND = 4096
_MNT_DETACH = 2
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _bring_loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


def _create_in_thread(path: Path, outcome: list[BaseException | None]) -> None:
    try:
        _check(_libc.unshare(_CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        _bring_loopback_up()
        source = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
        _check(_libc.mount(source, str(path).encode(), None, _MS_BIND, None), "bind netns")
        outcome.append(None)
    except BaseException as exc:  # reported to the caller, which re-raises
        outcome.append(exc)


def create(path: Path) -> None:
    """Make a new network namespace with ``lo`` up, pinned at ``path``. Blocking."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDONLY | os.O_EXCL, 0o444)
    os.close(fd)
    outcome: list[BaseException | None] = []
    # The thread ends right after, taking its changed namespace with it.
    worker = threading.Thread(target=_create_in_thread, args=(path, outcome), daemon=True)
    worker.start()
    worker.join()
    if outcome and outcome[0] is not None:
        path.unlink(missing_ok=True)
        raise outcome[0]


def delete(path: Path) -> None:
    """Unpin and remove a namespace made by ``create``; missing is fine. Blocking."""
    if _libc.umount2(str(path).encode(), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise OSError(err, f"umount {path}: {os.strerror(err)}")
    path.unlink(missing_ok=True)
