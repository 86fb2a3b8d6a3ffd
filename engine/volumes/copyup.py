"""Populate an empty volume from the image's content at the mount destination.

dockerd copies ``<rootfs>/<destination>`` into a volume that is empty when a container
first uses it (``-v name:/path`` without ``nocopy``, image ``VOLUME``s), keeping owners,
modes, times, extended attributes, hard links and symlinks (as links, never followed).

The rootfs is the image's, so it is untrusted: the destination is resolved by
``engine.rootscope`` as if the rootfs were "/" (an absolute symlink restarts at the
rootfs, ".." stops there), one component at a time through directory descriptors opened
with ``O_NOFOLLOW``; the copy
then works only through descriptors and ``*at`` calls, so no symlink in the image, and
none a running container plants in a shared volume meanwhile, can lead outside.

Blocking: call it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from engine import rootscope
from engine.errors import InvalidParameter

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20
_IGNORED_XATTR_ERRORS = (errno.ENOTSUP, errno.EPERM, errno.EACCES, errno.EINVAL, errno.E2BIG)


@dataclass(frozen=True)
class _Found:
    """The destination inside the rootfs: an open directory, or what else is there."""

    fd: int | None  # O_RDONLY directory descriptor when it is a directory
    exists: bool


def _resolve_in_root(root_fd: int, path: str) -> _Found:
    """``path`` resolved by the one in-root resolver (``rootscope``), last symlink
    followed too, as dockerd follows the mount destination."""
    try:
        with rootscope.resolve(root_fd, rootscope.clean(path), follow_last=True) as target:
            if not stat.S_ISDIR(target.lstat().st_mode):
                return _Found(None, True)
            return _Found(target.open_dir(), True)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
            return _Found(None, False)
        raise


@contextlib.contextmanager
def _opened(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


# ------------------------------------------------------------------ metadata
def _copy_xattrs(src: int | str, dst: int | str) -> None:
    try:
        names = os.listxattr(src, follow_symlinks=False) if isinstance(src, str) \
            else os.listxattr(src)
    except OSError as exc:
        if exc.errno in _IGNORED_XATTR_ERRORS:
            return
        raise
    for name in names:
        try:
            if isinstance(src, str):
                value = os.getxattr(src, name, follow_symlinks=False)
            else:
                value = os.getxattr(src, name)
            if isinstance(dst, str):
                os.setxattr(dst, name, value, follow_symlinks=False)
            else:
                os.setxattr(dst, name, value)
        except OSError as exc:
            if exc.errno not in (*_IGNORED_XATTR_ERRORS, errno.ENODATA):
                raise


def _apply_fd(dst: int, src: int, st: os.stat_result) -> None:
    """Owner, then mode (chown clears set-id bits), then xattrs (chown drops file
    capabilities), then times."""
    os.fchown(dst, st.st_uid, st.st_gid)
    os.fchmod(dst, stat.S_IMODE(st.st_mode))
    _copy_xattrs(src, dst)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


def _apply_special(dir_fd: int, name: str, st: os.stat_result) -> None:
    """Metadata of a node that cannot be opened for writing (device, fifo)."""
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    with _opened(fd):
        if not stat.S_ISLNK(os.fstat(fd).st_mode):
            proc = f"/proc/self/fd/{fd}"
            os.chown(proc, st.st_uid, st.st_gid)
            os.chmod(proc, stat.S_IMODE(st.st_mode))
    os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dir_fd, follow_symlinks=False)


# ------------------------------------------------------------------ copying
@dataclass
class _Copy:
    dst_root: int
    links: dict[tuple[int, int], tuple[tuple[str, ...], str]] = field(default_factory=dict)


def _copy_data(src: int, dst: int) -> None:
    try:
        while os.copy_file_range(src, dst, _CHUNK):
            pass
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP,
                             errno.EBADF):
            raise
    os.lseek(src, 0, os.SEEK_SET)
    os.lseek(dst, 0, os.SEEK_SET)
    os.ftruncate(dst, 0)
    while chunk := os.read(src, _CHUNK):
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view):]


def _copy_file(src_dir: int, dst_dir: int, name: str, st: os.stat_result) -> None:
    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                  dir_fd=src_dir)
    with _opened(src):
        if not stat.S_ISREG(os.fstat(src).st_mode):
            return  # replaced since the stat: not what we listed
        dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600, dir_fd=dst_dir)
        with _opened(dst):
            _copy_data(src, dst)
            _apply_fd(dst, src, st)


def _open_relative(root: int, parts: tuple[str, ...]) -> int:
    fd = os.dup(root)
    for part in parts:
        with _opened(fd):
            fd = os.open(part, _PATH_FLAGS, dir_fd=fd)
    return fd


def _link(ctx: _Copy, first: tuple[tuple[str, ...], str], dst_dir: int, name: str) -> None:
    parent = _open_relative(ctx.dst_root, first[0])
    with _opened(parent):
        os.link(first[1], name, src_dir_fd=parent, dst_dir_fd=dst_dir, follow_symlinks=False)


def _copy_entry(
    ctx: _Copy, src_dir: int, dst_dir: int, rel: tuple[str, ...], name: str
) -> None:
    st = os.stat(name, dir_fd=src_dir, follow_symlinks=False)
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        os.mkdir(name, 0o700, dir_fd=dst_dir)
        with _opened(os.open(name, _DIR_FLAGS, dir_fd=src_dir)) as s, \
                _opened(os.open(name, _DIR_FLAGS, dir_fd=dst_dir)) as d:
            _copy_tree(ctx, s, d, (*rel, name))
            _apply_fd(d, s, st)
        return
    key = (st.st_dev, st.st_ino)
    if st.st_nlink > 1 and key in ctx.links:
        _link(ctx, ctx.links[key], dst_dir, name)
        return
    if stat.S_ISREG(mode):
        _copy_file(src_dir, dst_dir, name, st)
    elif stat.S_ISLNK(mode):
        os.symlink(os.readlink(name, dir_fd=src_dir), name, dir_fd=dst_dir)
        os.chown(name, st.st_uid, st.st_gid, dir_fd=dst_dir, follow_symlinks=False)
        os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dst_dir,
                 follow_symlinks=False)
    elif stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        os.mknod(name, mode, st.st_rdev, dir_fd=dst_dir)
        _apply_special(dst_dir, name, st)
    else:
        return  # sockets are not copied
    if st.st_nlink > 1:
        ctx.links[key] = (rel, name)


def _copy_tree(ctx: _Copy, src_dir: int, dst_dir: int, rel: tuple[str, ...]) -> None:
    with os.scandir(src_dir) as entries:
        names = [entry.name for entry in entries]
    for name in names:
        try:
            _copy_entry(ctx, src_dir, dst_dir, rel, name)
        except FileNotFoundError:
            continue  # gone since the listing


def populate(rootfs: Path, destination: str, volume_data: Path, *, refuse_file: bool) -> bool:
    """Copy the rootfs's ``destination`` into ``volume_data`` if that is empty.

    Returns True when something was copied. Nothing happens when the destination does
    not exist in the image or is not a directory; with ``refuse_file`` (an image
    ``VOLUME``) a file there is dockerd's error ``cannot mount volume over existing file``.
    """
    root_fd = os.open(rootfs, _DIR_FLAGS)
    with _opened(root_fd):
        found = _resolve_in_root(root_fd, destination)
    if found.fd is None:
        if found.exists and refuse_file:
            raise InvalidParameter(
                f"cannot mount volume over existing file, file exists {rootfs}{destination}"
            )
        return False
    with _opened(found.fd) as src:
        with _opened(os.open(volume_data, _DIR_FLAGS)) as dst:
            if os.listdir(dst):
                return False  # the volume has data: never mix the image's into it
            _copy_tree(_Copy(dst_root=dst), src, dst, ())
            _apply_fd(dst, src, os.fstat(src))
            os.fsync(dst)
    return True
