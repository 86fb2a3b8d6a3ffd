"""mount(2)/umount2(2) for snapshot mounts, through libc (ctypes).

Both functions block: call them through ``asyncio.to_thread``. Errors are
``MountError`` (a SystemError_) whose message carries strerror and what was mounted.

The overlay option limit. The kernel copies mount data into one page, so the whole
option string (``lowerdir=…,upperdir=…,workdir=…``) must stay below the page size
(4096 bytes here, ``os.sysconf("SC_PAGE_SIZE")``). With absolute paths such as
``/var/lib/wharfd/snapshots/<12 hex>/fs`` (≈ 45 bytes) that is ≈ 85 layers. When the
plain string does not fit, each lower directory is opened with ``O_PATH`` and named
``/proc/self/fd/<n>`` (≈ 18 bytes), which the kernel resolves at mount time; no chdir is
involved (chdir is process-wide, and the daemon has many threads). That raises the limit
to ≈ 220 layers, above Docker's own 125-layer image limit. Beyond it we fail with a clear
error rather than mount something else.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from engine.errors import SystemError_
from engine.snapshots.base import Mount

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MNT_DETACH = 0x2

_FLAGS: dict[str, tuple[bool, int]] = {
    # option: (clear instead of set, flag)
    "ro": (False, MS_RDONLY),
    "rw": (True, MS_RDONLY),
    "nosuid": (False, MS_NOSUID),
    "suid": (True, MS_NOSUID),
    "nodev": (False, MS_NODEV),
    "dev": (True, MS_NODEV),
    "noexec": (False, MS_NOEXEC),
    "exec": (True, MS_NOEXEC),
    "sync": (False, MS_SYNCHRONOUS),
    "async": (True, MS_SYNCHRONOUS),
    "noatime": (False, MS_NOATIME),
    "nodiratime": (False, MS_NODIRATIME),
    "relatime": (False, MS_RELATIME),
    "strictatime": (False, MS_STRICTATIME),
    "bind": (False, MS_BIND),
    "rbind": (False, MS_BIND | MS_REC),
    "remount": (False, MS_REMOUNT),
}
_PROPAGATION = {
    "private": MS_PRIVATE,
    "rprivate": MS_PRIVATE | MS_REC,
    "slave": MS_SLAVE,
    "rslave": MS_SLAVE | MS_REC,
    "shared": MS_SHARED,
    "rshared": MS_SHARED | MS_REC,
}

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MAX_OPTIONS = PAGE_SIZE - 1  # the kernel needs the terminating NUL inside the page


class MountError(SystemError_):
    def __init__(self, message: str, err: int) -> None:
        super().__init__(message)
        self.errno = err


_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        lib.mount.argtypes = [
            ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p,
        ]
        lib.mount.restype = ctypes.c_int
        lib.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        lib.umount2.restype = ctypes.c_int
        _libc = lib
    return _libc


def _bytes(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def _sys_mount(source: str | None, target: Path, fstype: str | None, flags: int, data: str) -> None:
    rc = _lib().mount(_bytes(source), os.fsencode(target), _bytes(fstype), flags,
                      _bytes(data) if data else None)
    if rc != 0:
        err = ctypes.get_errno()
        shown = data if len(data) <= 300 else data[:300] + "…"
        raise MountError(
            f"mount {fstype or 'bind'} {source} on {target} (options {shown!r}) failed: "
            f"{os.strerror(err)}",
            err,
        )


def parse_options(options: tuple[str, ...] | list[str]) -> tuple[int, int, str]:
    """Split mount options into (flags, propagation flags, data string)."""
    flags = 0
    propagation = 0
    data: list[str] = []
    for option in options:
        if option in _FLAGS:
            clear, flag = _FLAGS[option]
            flags = flags & ~flag if clear else flags | flag
        elif option in _PROPAGATION:
            propagation |= _PROPAGATION[option]
        else:
            data.append(option)
    return flags, propagation, ",".join(data)


@contextmanager
def _compact_lowerdirs(data: str) -> Iterator[str]:
    """Yield ``data`` itself when it fits in a page, else with lowerdirs as
    /proc/self/fd/<n> paths of O_PATH descriptors held open during the mount."""
    if len(data) <= MAX_OPTIONS:
        yield data
        return
    fds: list[int] = []
    try:
        parts = []
        for option in data.split(","):
            key, sep, value = option.partition("=")
            if key == "lowerdir" and sep:
                short = []
                for path in value.split(":"):
                    fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                    fds.append(fd)
                    short.append(f"/proc/self/fd/{fd}")
                option = "lowerdir=" + ":".join(short)
            parts.append(option)
        compact = ",".join(parts)
        if len(compact) > MAX_OPTIONS:
            raise MountError(
                f"overlay options are {len(compact)} bytes even with short lower paths; the "
                f"kernel limit is {MAX_OPTIONS} (page size {PAGE_SIZE}): too many layers",
                errno.E2BIG,
            )
        yield compact
    finally:
        for fd in fds:
            os.close(fd)


def _mount_one(m: Mount, target: Path) -> None:
    flags, propagation, data = parse_options(m.options)
    if m.type == "bind" or flags & MS_BIND:
        _sys_mount(m.source, target, None, flags | MS_BIND, data)
        if flags & MS_RDONLY:
            # A bind mount ignores MS_RDONLY on creation; it takes a remount to apply it.
            _sys_mount(None, target, None, flags | MS_BIND | MS_REMOUNT, "")
    else:
        with _compact_lowerdirs(data) as options:
            _sys_mount(m.source, target, m.type, flags, options)
    if propagation:
        _sys_mount(None, target, None, propagation, "")


def mount(mounts: list[Mount], target: Path) -> None:
    """Mount ``mounts`` on ``target`` in order (blocking). On failure nothing stays mounted."""
    done = 0
    try:
        for m in mounts:
            _mount_one(m, target)
            done += 1
    except BaseException:
        for _ in range(done):
            try:
                unmount(target, detach=True)
            except MountError:
                break
        raise


def unmount(target: Path, detach: bool = False) -> None:
    """Unmount ``target`` (blocking). A target that is not mounted, or is gone, is fine."""
    rc = _lib().umount2(os.fsencode(target), MNT_DETACH if detach else 0)
    if rc == 0:
        return
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOENT):
        return  # not a mount point (any more): the state the caller wants
    raise MountError(f"unmount {target} failed: {os.strerror(err)}", err)


def unmount_all(target: Path) -> None:
    """Unmount every mount stacked on ``target`` (blocking)."""
    for _ in range(64):
        if not os.path.ismount(target):
            return
        unmount(target)
    raise MountError(f"unmount {target}: still mounted after 64 attempts", errno.EBUSY)
