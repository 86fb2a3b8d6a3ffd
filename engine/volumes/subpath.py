"""Volume subpath mounts (API 1.45, ``VolumeOptions.Subpath``), race-free.

The subpath is opened inside the volume by ``engine.rootscope`` with ``beneath``: one
component at a time with ``O_NOFOLLOW``; a symlink is followed only while it stays
inside the volume (a relative one; an absolute target or a ``..`` above the volume's
root is an escape). The opened directory (or file) is then bind-mounted, through
``/proc/self/fd/N``, onto a mount point of the daemon's own under the exec root, and
that stable path is what the runtime binds into the container. Whatever the container
(or anyone) swaps in the volume afterwards, the mount is of the inode that was checked.

Errors in dockerd's words (daemon/internal/safepath): a missing subpath is
``cannot access path <subpath>: ...`` (not found), an escaping one ``path concatenation
escapes the base directory: <volume>/<subpath>`` (invalid parameter). Both are found at
start, as dockerd finds them: the subpath may appear or change between create and start.

Blocking: call through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from engine import rootscope
from engine.errors import InvalidParameter, NotFound
from engine.snapshots import mount as mounting
from engine.snapshots.base import Mount
from engine.volumes import local


def open_beneath(data: Path, subpath: str) -> int:
    """An ``O_PATH`` descriptor of ``subpath`` inside ``data``."""
    root_fd = rootscope.open_root(data)
    try:
        parts = subpath.split("/")
        try:
            with rootscope.resolve(root_fd, parts, follow_last=True, beneath=True) as target:
                if target.name is None:
                    return os.dup(target.dir_fd)
                return os.open(target.name, rootscope.PATH_FLAGS, dir_fd=target.dir_fd)
        except rootscope.EscapesRoot:
            raise InvalidParameter(
                f"path concatenation escapes the base directory: {data}/{subpath}"
            ) from None
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise NotFound(f"cannot access path {subpath}: lstat {data}/{subpath}: "
                           f"{(exc.strerror or 'no such file or directory').lower()}") from None
    finally:
        os.close(root_fd)


def bind_subpath(data: Path, subpath: str, mount_point: Path) -> None:
    """Bind ``subpath`` of the volume directory ``data`` onto ``mount_point`` (made here,
    a directory or a file as the subpath is)."""
    fd = open_beneath(data, subpath)
    try:
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        mount_point.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if local.is_mounted(mount_point):
            mounting.unmount(mount_point, detach=True)  # a crash's leftover
        if is_dir:
            mount_point.mkdir(exist_ok=True)
        else:
            mount_point.touch(exist_ok=True)
        # private: the helper mount must not propagate anywhere (the container's own
        # bind of it takes the propagation the user asked for).
        mounting.mount([Mount("bind", f"/proc/self/fd/{fd}", ("bind", "private"))],
                       mount_point)
    finally:
        os.close(fd)


def release(mount_dir: Path) -> None:
    """Detach every subpath mount of a container (under ``mount_dir``) and remove the
    mount points. Never a recursive delete: a mount point still mounted holds volume
    data, so only empty directories and the empty files made here are removed."""
    for point in sorted(local.mount_points_under(mount_dir), key=len, reverse=True):
        with contextlib.suppress(mounting.MountError):
            mounting.unmount(Path(point), detach=True)
    if not mount_dir.is_dir() or local.mount_points_under(mount_dir):
        return
    for entry in mount_dir.iterdir():
        with contextlib.suppress(OSError):
            if entry.is_dir() and not entry.is_symlink():
                entry.rmdir()
            elif entry.stat(follow_symlinks=False).st_size == 0:
                entry.unlink()
    with contextlib.suppress(OSError):
        mount_dir.rmdir()
