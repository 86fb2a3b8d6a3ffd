"""Paths inside a root (a container's filesystem, a volume, a build context), resolved
from the host as a chroot would.

The one in-root resolver: ``docker cp`` (archive HEAD/GET/PUT), export, the user lookup
for the OCI spec, a volume's copy-up from the image, volume subpaths and the builder's
COPY all go through it. The rules, all enforced here:

- Every lookup starts at an open descriptor of the root and goes one component at a
  time with ``openat(O_NOFOLLOW)``: the kernel never follows a symlink for us.
- A symlink met on the way is read (``readlinkat``) and its target is resolved by us,
  *inside* the root: an absolute target restarts at the root, ``..`` stops there. So a
  crafted link, or a link swapped in while we walk (CVE-2018-15664), cannot lead out.
- ``..`` drops a descriptor we already hold; we never open a real parent directory, so
  a directory moved away while we walk cannot take us above the root either.
- Nothing is opened for reading unless it is a regular file or a directory: other
  entries are opened with ``O_PATH`` only (opening a device node or a FIFO could block
  or act on hardware).

The request path itself is cleaned lexically first (as dockerd does with Go's
``filepath.Join``), so its own ``..`` never climbs above ``/``; only ``..`` found in
symlink targets is handled during the walk.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from engine.pathnames import clean_components

MAX_SYMLINKS = 40  # as the kernel's MAXSYMLINKS
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE_RETRIES = 8


clean = clean_components


def join(parts: list[str] | tuple[str, ...]) -> str:
    return "/" + "/".join(parts)


def open_root(rootfs: Path) -> int:
    """A descriptor of the root directory (the caller closes it).

    The root's own path is the daemon's (a layout path, a temporary directory, or
    ``/proc/self/fd/N`` of a root the daemon holds open), never a client's, so its last
    component is followed: that is how a held container root is named. Everything
    below it is resolved without following anything."""
    return os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


@dataclass
class Target:
    """Where a path led: a directory we hold and one name in it.

    ``name`` is None when the path is that directory itself (the root, or a path ending
    in ``..`` through a symlink). ``dir_parts`` is the directory's real path below the
    root. The caller owns ``dir_fd`` (use ``with``)."""

    dir_fd: int
    name: str | None
    dir_parts: tuple[str, ...]

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1

    @property
    def parts(self) -> tuple[str, ...]:
        return self.dir_parts if self.name is None else (*self.dir_parts, self.name)

    @property
    def path(self) -> str:
        return join(self.parts)

    def lstat(self) -> os.stat_result:
        """The entry itself (not followed); FileNotFoundError when it does not exist."""
        if self.name is None:
            return os.fstat(self.dir_fd)
        return os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)

    def open_dir(self) -> int:
        """A new descriptor of the entry as a directory (never through a symlink)."""
        if self.name is None:
            return os.dup(self.dir_fd)
        return os.open(self.name, DIR_FLAGS, dir_fd=self.dir_fd)


class EscapesRoot(OSError):
    """A ``beneath`` walk would leave its root (``..`` above it, an absolute symlink):
    refused, as ``openat2(RESOLVE_BENEATH)`` refuses it with EXDEV."""

    def __init__(self, path: str) -> None:
        super().__init__(errno.EXDEV, "path escapes its root", path)


@dataclass
class _Walk:
    """The directories held so far, from the root down (the root's fd is not owned).

    ``beneath``: leaving the root is an error (``EscapesRoot``) instead of stopping at it
    as a chroot does; for a volume's subpath, where the root is not a container's "/"."""

    root_fd: int
    fds: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    links: int = 0
    beneath: bool = False

    @property
    def top(self) -> int:
        return self.fds[-1] if self.fds else self.root_fd

    def push(self, fd: int, name: str) -> None:
        self.fds.append(fd)
        self.names.append(name)

    def up(self) -> None:
        if not self.fds and self.beneath:
            raise EscapesRoot("..")
        if self.fds:
            os.close(self.fds.pop())
            self.names.pop()

    def to_root(self) -> None:
        while self.fds:
            self.up()

    def take(self, name: str | None) -> Target:
        """Hand the top directory over to a Target; the walk keeps nothing of it."""
        if self.fds:
            fd = self.fds.pop()
            parts = tuple(self.names)
            self.names.pop()
        else:
            fd = os.dup(self.root_fd)
            parts = ()
        return Target(fd, name, parts)

    def close(self) -> None:
        self.to_root()

    def follow(self, name: str, pending: deque[str]) -> None:
        """Queue the target of the symlink ``name`` (in the top directory) in its place."""
        self.links += 1
        if self.links > MAX_SYMLINKS:
            raise OSError(errno.ELOOP, "too many levels of symbolic links", join(self.names))
        target = os.readlink(name, dir_fd=self.top)
        if target.startswith("/"):
            if self.beneath:
                raise EscapesRoot(target)
            self.to_root()
        pending.extendleft(reversed(target.split("/")))


def _named_steps(walk: _Walk, pending: deque[str]) -> Iterator[str]:
    """Take ``pending``'s components one by one, ``..`` done on ``walk`` and empty or
    ``.`` ones skipped: the names left to look up. What the caller queues meanwhile (a
    symlink's target) is taken too."""
    while pending:
        part = pending.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            walk.up()
            continue
        yield part


def _is_last(pending: deque[str]) -> bool:
    return all(p in ("", ".") for p in pending)


def resolve(
    root_fd: int, parts: list[str], *, follow_last: bool, create_dirs: bool = False,
    beneath: bool = False,
) -> Target:
    """Resolve ``parts`` below ``root_fd``: every directory on the way is followed
    chroot-style; the last component is followed only when ``follow_last``. With
    ``beneath``, a walk that would leave the root raises ``EscapesRoot`` instead.

    A missing last component is not an error here (``Target.lstat`` tells). A missing
    directory on the way is ``FileNotFoundError`` unless ``create_dirs`` (then made
    0755); a non-directory on the way is ``NotADirectoryError``."""
    walk = _Walk(root_fd, beneath=beneath)
    pending = deque(parts)
    retries = 0
    try:
        for part in _named_steps(walk, pending):
            if _is_last(pending):
                if follow_last and _is_symlink(walk.top, part):
                    walk.follow(part, pending)
                    continue
                return walk.take(part)
            try:
                fd = os.open(part, DIR_FLAGS, dir_fd=walk.top)
            except FileNotFoundError:
                if not create_dirs or retries >= _CREATE_RETRIES:
                    raise
                retries += 1
                _mkdir(walk.top, part)
                pending.appendleft(part)
                continue
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                if not _is_symlink(walk.top, part):
                    raise NotADirectoryError(
                        errno.ENOTDIR, "not a directory", join([*walk.names, part])
                    ) from None
                walk.follow(part, pending)
                continue
            walk.push(fd, part)
        return walk.take(None)
    finally:
        walk.close()


def resolved_path(root_fd: int, parts: list[str]) -> str:
    """The path ``parts`` leads to with every symlink followed in scope (dockerd's
    ``linkTarget``). Where a component is missing the rest is taken lexically."""
    walk = _Walk(root_fd)
    pending = deque(parts)
    try:
        for part in _named_steps(walk, pending):
            try:
                st = os.stat(part, dir_fd=walk.top, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                return join(clean("/".join([*walk.names, part, *pending])))
            if stat.S_ISLNK(st.st_mode):
                walk.follow(part, pending)
            elif stat.S_ISDIR(st.st_mode) and not _is_last(pending):
                walk.push(os.open(part, DIR_FLAGS, dir_fd=walk.top), part)
            else:
                return join(clean("/".join([*walk.names, part, *pending])))
        return join(walk.names)
    finally:
        walk.close()


def _is_symlink(dir_fd: int, name: str) -> bool:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return stat.S_ISLNK(st.st_mode)


def _mkdir(dir_fd: int, name: str) -> None:
    try:
        os.mkdir(name, 0o755, dir_fd=dir_fd)
    except FileExistsError:
        pass  # made meanwhile (or a symlink: the retry sees it)


def read_small_file(root_fd: int, path: str, limit: int = 4 << 20) -> bytes | None:
    """A regular file's content (at most ``limit`` bytes), None when missing or not a
    regular file. Opened by ``O_PATH`` first, so nothing else is ever opened."""
    try:
        with resolve(root_fd, clean(path), follow_last=True) as target:
            if target.name is None:
                return None
            fd = open_regular(target.dir_fd, target.name)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if fd is None:
        return None
    try:
        chunks: list[bytes] = []
        size = 0
        while size < limit:
            data = os.read(fd, min(1 << 16, limit - size))
            if not data:
                break
            chunks.append(data)
            size += len(data)
        return b"".join(chunks)
    finally:
        os.close(fd)


def open_regular(dir_fd: int, name: str) -> int | None:
    """``name`` opened for reading if (and only if) it is a regular file, else None.

    The entry is pinned with ``O_PATH|O_NOFOLLOW``, checked with ``fstat``, and only
    then reopened through ``/proc/self/fd``: the inode checked is the inode read, even
    if the name is swapped for a device node in between."""
    try:
        pinned = os.open(name, PATH_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(pinned).st_mode):
            return None
        return os.open(f"/proc/self/fd/{pinned}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(pinned)
