"""``docker diff`` (``GET /containers/{id}/changes``) from a container's overlay upper dir.

The answer is what comparing the container's view with the image's view gives (moby's
"naive" diff, the one dockerd's overlay2 driver uses on kernels like this one), computed
from the upper dir alone, looking into the image layers only for the names the upper dir
holds:

- an upper entry the image lacks: added (Kind 1), and so is everything below it;
- an upper entry the image has: modified (Kind 0) when type, permissions, owner, device
  number or file capabilities differ, or, for a non-directory, size or mtime. Directory
  sizes and mtimes are not compared: copy-up and runtime mountpoints change them;
- a whiteout (char device 0:0): the image's entry is deleted (Kind 2);
- an opaque directory (``trusted.overlay.opaque=y``): every image entry in it that the
  upper dir does not hold again is deleted;
- a directory with changes below it is reported modified, just before them;
- what dockerd keeps in its per-container init layer (``/etc/hosts``, ``/proc``, ...)
  is a runtime mountpoint here, never a change.

Order: depth first, names in byte order (dockerd's order for the non-naive walk; its
naive diff has no stable order). Nothing is followed: upper and layer directories are
walked by descriptor with ``O_NOFOLLOW``, and entries are only ``lstat``-ed.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine.rootscope import DIR_FLAGS

KIND_MODIFIED = 0
KIND_ADDED = 1
KIND_DELETED = 2

OPAQUE_XATTR = "trusted.overlay.opaque"
_CAPABILITY_XATTR = "security.capability"

# dockerd's init layer: mountpoints the runtime creates; never reported.
INIT_LAYER_PATHS = frozenset({
    "/.dockerenv", "/dev/console", "/dev/mqueue", "/dev/pts", "/dev/shm", "/etc/hostname",
    "/etc/hosts", "/etc/mtab", "/etc/resolv.conf", "/proc", "/sys",
})
# Their parents exist in dockerd's init layer even when the image lacks them.
INIT_LAYER_DIRS = frozenset({"/dev", "/etc"})


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(fd: int) -> bool:
    try:
        return os.getxattr(fd, OPAQUE_XATTR) == b"y"
    except OSError:
        return False


def _capability(dir_fd: int, name: str) -> bytes | None:
    try:
        return os.getxattr(f"/proc/self/fd/{dir_fd}/{name}", _CAPABILITY_XATTR,
                           follow_symlinks=False)
    except OSError:
        return None


def _same_time(a_ns: int, b_ns: int) -> bool:
    # As moby: equal seconds, and equal nanoseconds unless one side has none.
    a_sec, a_nsec = divmod(a_ns, 1_000_000_000)
    b_sec, b_nsec = divmod(b_ns, 1_000_000_000)
    return a_sec == b_sec and (a_nsec == b_nsec or a_nsec == 0 or b_nsec == 0)


@dataclass(frozen=True)
class _Found:
    st: os.stat_result
    dir_fd: int  # the layer directory holding it (for xattrs)


@dataclass
class _ImageDir:
    """One directory of the image's merged view: its descriptor in every layer that
    contributes (top first), ending at an opaque one."""

    fds: list[int] = field(default_factory=list)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def lookup(self, name: str) -> _Found | None:
        for fd in self.fds:
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            return None if _is_whiteout(st) else _Found(st, fd)
        return None

    def child(self, name: str) -> _ImageDir:
        """The image's view of directory ``name`` below this one."""
        fds: list[int] = []
        try:
            for fd in self.fds:
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    break  # a file or whiteout here hides the layers below
                try:
                    child = os.open(name, DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
                        break
                    raise
                fds.append(child)
                if _is_opaque(child):
                    break
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return _ImageDir(fds)

    def names(self) -> set[str]:
        """Names visible in the image's view of this directory."""
        visible: set[str] = set()
        hidden: set[str] = set()
        for fd in self.fds:
            for name in os.listdir(fd):
                if name in visible or name in hidden:
                    continue
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                (hidden if _is_whiteout(st) else visible).add(name)
        return visible


@dataclass
class _Frame:
    upper_fd: int
    image: _ImageDir
    path: str  # "" for the root
    names: Iterator[str]
    deleted: frozenset[str]  # image entries an opaque upper dir hides
    placeholder: int | None  # index in the output reserved for this directory
    changes_before: int  # changes recorded when the directory was entered

    def close(self) -> None:
        os.close(self.upper_fd)
        self.image.close()


def _differs(upper_fd: int, name: str, st: os.stat_result, found: _Found) -> bool:
    old = found.st
    if (st.st_mode, st.st_uid, st.st_gid, st.st_rdev) != (
            old.st_mode, old.st_uid, old.st_gid, old.st_rdev):
        return True
    if not stat.S_ISDIR(st.st_mode) and (
            st.st_size != old.st_size or not _same_time(st.st_mtime_ns, old.st_mtime_ns)):
        return True
    if stat.S_ISREG(st.st_mode):
        return _capability(upper_fd, name) != _capability(found.dir_fd, name)
    return False


class _Diff:
    def __init__(self) -> None:
        self.out: list[tuple[str, int | None]] = []
        self.count = 0
        self.frames: list[_Frame] = []

    def record(self, path: str, kind: int) -> None:
        self.out.append((path, kind))
        self.count += 1

    def enter(self, upper_fd: int, image: _ImageDir, path: str, recorded: bool) -> None:
        names = set(os.listdir(upper_fd))
        deleted = frozenset(image.names() - names) if _is_opaque(upper_fd) else frozenset()
        placeholder = None
        if not recorded and path:
            placeholder = len(self.out)
            self.out.append((path, None))
        ordered = iter(sorted(names | deleted, key=os.fsencode))
        self.frames.append(_Frame(upper_fd, image, path, ordered, deleted, placeholder,
                                  self.count))

    def leave(self) -> None:
        frame = self.frames.pop()
        frame.close()
        if frame.placeholder is not None and self.count > frame.changes_before:
            self.out[frame.placeholder] = (frame.path, KIND_MODIFIED)
            self.count += 1

    def step(self, frame: _Frame, name: str) -> None:
        path = f"{frame.path}/{name}"
        if path in INIT_LAYER_PATHS:
            return
        if name in frame.deleted:
            self.record(path, KIND_DELETED)
            return
        try:
            st = os.stat(name, dir_fd=frame.upper_fd, follow_symlinks=False)
        except FileNotFoundError:
            return  # removed while we walk
        found = frame.image.lookup(name)
        if _is_whiteout(st):
            if found is not None:
                self.record(path, KIND_DELETED)
            return
        recorded = True
        if found is None and path not in INIT_LAYER_DIRS:
            self.record(path, KIND_ADDED)
        elif found is not None and _differs(frame.upper_fd, name, st, found):
            self.record(path, KIND_MODIFIED)
        else:
            recorded = False
        if stat.S_ISDIR(st.st_mode):
            self._descend(frame, name, path, found, recorded)

    def _descend(self, frame: _Frame, name: str, path: str, found: _Found | None,
                 recorded: bool) -> None:
        try:
            upper_fd = os.open(name, DIR_FLAGS, dir_fd=frame.upper_fd)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                return  # replaced while we walk
            raise
        try:
            image = (frame.image.child(name)
                     if found is not None and stat.S_ISDIR(found.st.st_mode) else _ImageDir())
        except BaseException:
            os.close(upper_fd)
            raise
        try:
            self.enter(upper_fd, image, path, recorded)
        except BaseException:
            os.close(upper_fd)
            image.close()
            raise

    def run(self) -> None:
        while self.frames:
            frame = self.frames[-1]
            name = next(frame.names, None)
            if name is None:
                self.leave()
            else:
                self.step(frame, name)

    def close(self) -> None:
        while self.frames:
            self.frames.pop().close()

    def result(self) -> list[dict[str, object]]:
        return [{"Path": path, "Kind": kind} for path, kind in self.out if kind is not None]


def changes(upper: Path, lowers: Sequence[Path]) -> list[dict[str, object]]:
    """The container's changes, ``[{"Path": "/tmp", "Kind": 0}, ...]`` (blocking).

    ``upper`` is the rw layer's directory, ``lowers`` the image layers, top first (the
    order of overlay's ``lowerdir``)."""
    diff = _Diff()
    image = _ImageDir()
    try:
        for lower in lowers:
            image.fds.append(os.open(lower, DIR_FLAGS))
        upper_fd = os.open(upper, DIR_FLAGS)
    except BaseException:
        image.close()
        raise
    try:
        diff.enter(upper_fd, image, "", recorded=True)
    except BaseException:
        os.close(upper_fd)
        image.close()
        raise
    try:
        diff.run()
    finally:
        diff.close()
    return diff.result()


def lower_dirs_of(options: Sequence[str]) -> list[Path]:
    """The ``lowerdir=a:b`` of overlay mount options as paths, top first."""
    for option in options:
        key, sep, value = option.partition("=")
        if key == "lowerdir" and sep:
            return [Path(p) for p in value.split(":") if p]
    return []
