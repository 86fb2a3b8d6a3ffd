"""A stopped container's volumes and binds, made visible inside its mounted rootfs for
`docker cp`, as they are when it runs.

Each mount point is resolved inside the rootfs chroot-style (``rootscope``), pinned with
``O_PATH|O_NOFOLLOW`` and mounted onto through ``/proc/self/fd``: a symlink planted in the
image cannot redirect the mount to the host. The caller detaches the whole rootfs tree
afterwards (``MNT_DETACH`` takes these submounts along).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from engine import rootscope
from engine.snapshots import mount as mounting
from engine.snapshots.base import Mount


def bind_mounts(rootfs: Path, mounts: Iterable[Mapping[str, Any]]) -> None:
    """Bind every ``volume``/``bind`` entry of inspect's ``Mounts`` into ``rootfs``."""
    for entry in mounts:
        if entry.get("Type") not in ("volume", "bind"):
            continue
        source = str(entry.get("Source") or "")
        if not source or not os.path.exists(source):
            continue
        with contextlib.suppress(OSError, mounting.MountError):
            _bind_one(rootfs, source, str(entry.get("Destination") or ""),
                      read_only=not entry.get("RW", True))


def _bind_one(rootfs: Path, source: str, destination: str, *, read_only: bool) -> None:
    root_fd = rootscope.open_root(rootfs)
    try:
        parts = rootscope.clean(destination)
        with rootscope.resolve(root_fd, parts, follow_last=True, create_dirs=True) as target:
            if target.name is None:
                return  # a mount over the root itself: nothing to show
            _ensure_mount_point(target.dir_fd, target.name, os.path.isdir(source))
            pinned = os.open(target.name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC,
                             dir_fd=target.dir_fd)
            try:
                options = ("rbind", "ro") if read_only else ("rbind",)
                mounting.mount([Mount("bind", source, options)], Path(f"/proc/self/fd/{pinned}"))
            finally:
                os.close(pinned)
    finally:
        os.close(root_fd)


def _ensure_mount_point(dir_fd: int, name: str, directory: bool) -> None:
    try:
        os.lstat(name, dir_fd=dir_fd)
        return
    except FileNotFoundError:
        pass
    if directory:
        os.mkdir(name, 0o755, dir_fd=dir_fd)
    else:
        os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o644, dir_fd=dir_fd))
