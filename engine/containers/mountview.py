"""A container's mounts as ``docker cp`` sees them, and its rootfs mounted without stacking.

Which root a copy works in (decided here, documented in docs/containers.md):

- **Running (or paused)**: the container's own root, ``/proc/<pid>/root``. Path lookups
  from a descriptor of it walk the container's mount namespace, so volumes, binds,
  ``--volumes-from``, tmpfs and the network files are exactly what the container sees,
  and a file copied in is one the container reads. The descriptor is checked to be the
  container's root (same inode as the host-side rootfs mount) before use, so a pid
  reused after an exit cannot lead anywhere else. Archives do not descend into the
  kernel's file systems there (``/proc``, ``/sys``, ``/dev``...): only into the root's
  and the mounts' own devices, as dockerd's view shows them as empty directories.
- **Created or stopped**: the rw snapshot mounted at the usual place with every volume
  and bind bound into it (each mount point resolved inside the rootfs chroot-style by
  ``engine.rootscope``, pinned with ``O_PATH|O_NOFOLLOW`` and mounted through
  ``/proc/self/fd``, so a symlink planted in the image cannot redirect a mount to the
  host). A tmpfs has no content while the container is not running; there, as on
  dockerd, the directory underneath it is what is seen.

Writes follow dockerd's rule (daemon/archive.go ``checkIfPathIsInAVolume``): the
extraction point, symlinks resolved, inside a read-only mount is refused with ``mounted
volume is marked read-only``; outside every mount, a ``--read-only`` root with
``container rootfs is marked read-only``. Unlike dockerd, a running container's tmpfs
counts as a (writable) mount, since the copy lands in it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import rootscope
from engine.errors import EngineError, InvalidParameter
from engine.snapshots import mount as mounting
from engine.snapshots.base import Mount
from engine.volumes import local
from engine.volumes import subpath as volume_subpath

_STALE_ROUNDS = 64  # a stack deeper than this is not a crash's leftover


# ------------------------------------------------------------------ the mount table
@dataclass(frozen=True)
class MountPoint:
    parts: tuple[str, ...]  # the destination's components below the container's /
    writable: bool


@dataclass(frozen=True)
class MountTable:
    """What decides whether ``docker cp`` may write somewhere."""

    points: tuple[MountPoint, ...]
    readonly_rootfs: bool

    @classmethod
    def of(
        cls, mounts: Iterable[Mapping[str, Any]], host_config: Mapping[str, Any], *,
        running: bool,
    ) -> MountTable:
        """From inspect's ``Mounts`` and the HostConfig; a running container's
        ``--tmpfs`` mounts count too (they are not in ``Mounts``)."""
        points = [MountPoint(tuple(rootscope.clean(str(m.get("Destination") or ""))),
                             bool(m.get("RW", True)))
                  for m in mounts if m.get("Type") != "tmpfs" or running]
        if running:
            tmpfs = host_config.get("Tmpfs") or {}
            points += [MountPoint(tuple(rootscope.clean(dest)), True) for dest in tmpfs]
        return cls(tuple(points), bool(host_config.get("ReadonlyRootfs")))

    def covering(self, parts: Sequence[str]) -> MountPoint | None:
        """The innermost mount that ``parts`` is in (or is), None for the root's own."""
        best: MountPoint | None = None
        for point in self.points:
            n = len(point.parts)
            if tuple(parts[:n]) == point.parts and (best is None or n > len(best.parts)):
                best = point
        return best

    def check_writable(self, parts: Sequence[str]) -> None:
        """400 in dockerd's words when a copy into ``parts`` (a resolved path) would
        write into a read-only mount or a read-only root."""
        point = self.covering(parts)
        if point is not None and not point.writable:
            raise InvalidParameter("mounted volume is marked read-only")
        if point is None and self.readonly_rootfs:
            raise InvalidParameter("container rootfs is marked read-only")


# ------------------------------------------------------------------ running: /proc/<pid>/root
def open_running_root(pid: int, host_rootfs: Path) -> int | None:
    """A descriptor of the container's root in its own mount namespace, or None when
    ``pid`` is not (any more) a process rooted in ``host_rootfs``."""
    try:
        fd = os.open(f"/proc/{pid}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        ours, theirs = os.stat(host_rootfs), os.fstat(fd)
    except OSError:
        os.close(fd)
        return None
    if (ours.st_dev, ours.st_ino) != (theirs.st_dev, theirs.st_ino):
        os.close(fd)  # the process exited and its pid went to someone else
        return None
    return fd


def mount_devices(root: Path, destinations: Iterable[str]) -> frozenset[int]:
    """The devices an archive may descend into: the root's and each mount's."""
    root_fd = rootscope.open_root(root)
    try:
        devices = {os.fstat(root_fd).st_dev}
        for destination in destinations:
            with contextlib.suppress(OSError):
                parts = rootscope.clean(destination)
                with rootscope.resolve(root_fd, parts, follow_last=True) as target:
                    st = target.lstat()
                    if stat.S_ISDIR(st.st_mode):
                        devices.add(st.st_dev)
        return frozenset(devices)
    finally:
        os.close(root_fd)


# ------------------------------------------------------------------ created/stopped
def mount_rootfs(mounts: list[Mount], target: Path) -> None:
    """Mount the rw snapshot on ``target``, first detaching whatever a crash left there
    (a `cp` or start killed half-way): mounts never stack on a container's rootfs. The
    caller holds the container's lock and the container is not running."""
    detach_stale(target)
    mounting.mount(mounts, target)


def detach_stale(target: Path) -> None:
    for _ in range(_STALE_ROUNDS):
        if not local.mount_points_under(target):
            return
        mounting.unmount(target, detach=True)
        if local.is_mounted(target):
            continue
        # Something mounted below the rootfs but not on it: detach those one by one.
        for point in sorted(local.mount_points_under(target), key=len, reverse=True):
            mounting.unmount(Path(point), detach=True)
    raise mounting.MountError(f"{target}: still mounted after {_STALE_ROUNDS} detaches",
                               errno.EBUSY)


def bind_mounts(rootfs: Path, mounts: Iterable[Mapping[str, Any]]) -> None:
    """Bind every ``volume``/``bind`` entry of inspect's ``Mounts`` into ``rootfs``."""
    for entry in mounts:
        if entry.get("Type") not in ("volume", "bind"):
            continue
        source = str(entry.get("Source") or "")
        if not source or not os.path.exists(source):
            continue
        with contextlib.suppress(OSError, EngineError):
            _bind_one(rootfs, source, str(entry.get("Destination") or ""),
                      read_only=not entry.get("RW", True),
                      subpath=str(entry.get("Subpath") or ""))


def _bind_one(
    rootfs: Path, source: str, destination: str, *, read_only: bool, subpath: str
) -> None:
    if subpath:
        # Only that part of the volume, opened race-free as at start; it may have gone
        # since (then nothing is shown there, as nothing would be mounted).
        fd = volume_subpath.open_beneath(Path(source), subpath)
        try:
            _bind_one(rootfs, f"/proc/self/fd/{fd}", destination, read_only=read_only,
                      subpath="")
        finally:
            os.close(fd)
        return
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
