"""``docker cp`` and ``docker export``: stat, tar out and tar in, inside a container root.

All functions here block (call them off the event loop); ``stream_from_thread`` turns a
blocking tar writer into an async iterator of chunks without holding the tar in memory.

Path safety (reliability B22/B23; CVE-2018-15664, CVE-2019-14271, CVE-2021-41089) comes
from ``rootscope``: every path is resolved below an fd of the root, component by
component, symlinks interpreted by us inside the root. On top of that:

- Reading: only regular files are ever opened for reading (pinned with ``O_PATH``,
  checked, reopened through ``/proc/self/fd``); device nodes and FIFOs are archived as
  headers only, sockets skipped. Nothing is executed or loaded from the container.
- Writing (PUT): an entry name must stay below the extraction point lexically (else
  ``"<name>" is outside of "<dest>"``), a relative symlink target too (``invalid
  symlink``), a hardlink target too (``invalid hardlink``), as dockerd checks them.
  Parents are resolved chroot-style (an entry below a symlink to ``/`` lands at the
  container's ``/``). Files are created with ``O_EXCL|O_NOFOLLOW``; an existing entry
  is unlinked first, never opened; owner, mode and times are set through descriptors
  of what we created, so no host file can be chowned or chmodded through a link.
  Device nodes are refused.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import stat
import tarfile
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from engine import rootscope
from engine.errors import InvalidParameter
from engine.images.unpack import Readable, open_uncompressed
from engine.rootscope import DIR_FLAGS, PATH_FLAGS, Target

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # bytes handed to the event loop at a time
_QUEUED_CHUNKS = 4  # chunks a tar writer may run ahead of the client
_BLOCK = 512
_TAR_READ_BUFSIZE = 64 * 1024

# Go's os.FileMode bits: what the CLI decodes from X-Docker-Container-Path-Stat.
MODE_DIR = 1 << 31
MODE_SYMLINK = 1 << 27
MODE_DEVICE = 1 << 26
MODE_NAMED_PIPE = 1 << 25
MODE_SOCKET = 1 << 24
MODE_SETUID = 1 << 23
MODE_SETGID = 1 << 22
MODE_CHAR_DEVICE = 1 << 21
MODE_STICKY = 1 << 20
MODE_IRREGULAR = 1 << 19

_TYPE_BITS = {
    stat.S_IFREG: 0,
    stat.S_IFDIR: MODE_DIR,
    stat.S_IFLNK: MODE_SYMLINK,
    stat.S_IFBLK: MODE_DEVICE,
    stat.S_IFCHR: MODE_DEVICE | MODE_CHAR_DEVICE,
    stat.S_IFIFO: MODE_NAMED_PIPE,
    stat.S_IFSOCK: MODE_SOCKET,
}
_CAPABILITY_XATTR = "security.capability"


class ArchiveError(InvalidParameter):
    """The uploaded archive is malformed or asks for something refused (400)."""


class ExtractionPointError(InvalidParameter):
    """The PUT destination exists but is not a directory (400, dockerd's wording)."""

    def __init__(self) -> None:
        super().__init__("extraction point is not a directory")


class Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


# =========================================================================== stat
def go_file_mode(st_mode: int) -> int:
    """A Unix ``st_mode`` as Go's ``os.FileMode`` (type bits high, permissions low)."""
    mode = st_mode & 0o777 | _TYPE_BITS.get(stat.S_IFMT(st_mode), MODE_IRREGULAR)
    if st_mode & stat.S_ISUID:
        mode |= MODE_SETUID
    if st_mode & stat.S_ISGID:
        mode |= MODE_SETGID
    if st_mode & stat.S_ISVTX:
        mode |= MODE_STICKY
    return mode


def rfc3339_nano(ns: int) -> str:
    """Go's ``time.Time`` JSON form in UTC: nanoseconds without trailing zeros."""
    seconds, frac = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        stamp += "." + f"{frac:09d}".rstrip("0")
    return stamp + "Z"


def go_quote(text: str) -> str:
    """Roughly Go's ``%q``: dockerd quotes paths that way in its archive errors."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _go_base(path: str) -> str:
    """Go's ``filepath.Base``."""
    if path == "":
        return "."
    stripped = path.rstrip("/")
    if stripped == "":
        return "/"
    return stripped.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class ArchivePath:
    """A request's ``path`` as dockerd reads it: cleaned, with a trailing ``/`` or
    ``/.`` meaning "follow the last component" and naming the tar's top entry."""

    parts: list[str]
    follow: bool  # trailing "/" or "/.": the last component is followed
    name: str  # Go's filepath.Base of the absolute path: the stat name and tar rebase

    @classmethod
    def parse(cls, path: str) -> ArchivePath:
        parts = rootscope.clean(path)
        absolute = rootscope.join(parts)
        current_dir = _go_base(path) == "."
        if current_dir:
            absolute = absolute.rstrip("/") + "/."
        elif path.endswith("/") and not absolute.endswith("/"):
            absolute += "/"
        return cls(parts, current_dir or path.endswith("/"), _go_base(absolute))


@dataclass(frozen=True)
class PathStat:
    name: str
    size: int
    mode: int
    mtime: str
    link_target: str

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "size": self.size, "mode": self.mode,
                "mtime": self.mtime, "linkTarget": self.link_target}


def _stat_of(root_fd: int, request: ArchivePath, target: Target) -> PathStat:
    st = target.lstat()
    if request.follow and not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", target.path)
    link = ""
    if stat.S_ISLNK(st.st_mode):
        link = rootscope.resolved_path(root_fd, request.parts)
    return PathStat(request.name, st.st_size, go_file_mode(st.st_mode),
                    rfc3339_nano(st.st_mtime_ns), link)


def stat_path(rootfs: Path, path: str) -> PathStat:
    """The ``X-Docker-Container-Path-Stat`` of ``path``. FileNotFoundError when missing;
    NotADirectoryError when a directory was asked for (trailing ``/``) and is not one."""
    request = ArchivePath.parse(path)
    root_fd = rootscope.open_root(rootfs)
    try:
        with rootscope.resolve(root_fd, request.parts, follow_last=request.follow) as target:
            return _stat_of(root_fd, request, target)
    finally:
        os.close(root_fd)


# =========================================================================== tar out
class _TarOut:
    """A tar stream written entry by entry (headers from tarfile, no member list kept),
    ending like Go's writer: two zero blocks, no record padding."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._links: dict[tuple[int, int], str] = {}

    def add(self, info: tarfile.TarInfo, data_fd: int | None = None) -> None:
        self._sink.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        if data_fd is not None and info.size:
            _copy_exact(data_fd, info.size, self._sink)
            tail = info.size % _BLOCK
            if tail:
                self._sink.write(b"\0" * (_BLOCK - tail))

    def link_name(self, st: os.stat_result, arcname: str) -> str | None:
        """The first name of an inode already archived (a hardlink), else remember it."""
        if stat.S_ISDIR(st.st_mode) or st.st_nlink < 2:
            return None
        key = (st.st_dev, st.st_ino)
        first = self._links.get(key)
        if first is None:
            self._links[key] = arcname
        return first

    def close(self) -> None:
        self._sink.write(b"\0" * (2 * _BLOCK))


def _copy_exact(fd: int, size: int, sink: Sink) -> None:
    """``size`` bytes of ``fd``: a file that shrank meanwhile is padded with zeros and one
    that grew is cut, so the tar stays well-formed while a container writes."""
    left = size
    while left:
        data = os.read(fd, min(CHUNK, left))
        if not data:
            sink.write(b"\0" * left)
            return
        sink.write(data)
        left -= len(data)


def _header(arcname: str, st: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(arcname)
    info.mode = st.st_mode & 0o7777
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname = info.gname = ""
    info.mtime = int(st.st_mtime)
    info.size = 0
    return info


def _xattr_headers(parent_fd: int, name: str, info: tarfile.TarInfo) -> None:
    # File capabilities, as dockerd archives them (the only xattr it keeps).
    try:
        value = os.getxattr(f"/proc/self/fd/{parent_fd}/{name}", _CAPABILITY_XATTR,
                            follow_symlinks=False)
    except OSError:
        return
    info.pax_headers = {"SCHILY.xattr." + _CAPABILITY_XATTR:
                        value.decode("utf-8", "surrogateescape")}


class _TreeWriter:
    """Archive a directory tree below descriptors, never following a symlink.

    With ``devices``, a directory on any other device is archived as an empty one:
    a running container's ``/proc``, ``/sys`` and ``/dev`` are not walked (``mountview``).
    """

    def __init__(self, out: _TarOut, devices: frozenset[int] | None = None) -> None:
        self._out = out
        self._devices = devices

    def _descends(self, st: os.stat_result) -> bool:
        return self._devices is None or st.st_dev in self._devices

    def entry(self, parent_fd: int, name: str, arcname: str) -> None:
        """One entry (recursing into directories) at ``arcname``."""
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            return  # gone meanwhile
        except OSError as exc:
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            self._non_dir(parent_fd, name, arcname)
            return
        try:
            self.directory(fd, arcname, include_self=True)
        finally:
            os.close(fd)

    def directory(self, fd: int, arcname: str, include_self: bool) -> None:
        """A directory held by ``fd`` and everything below it, depth first, names in
        byte order (Go's filepath.Walk)."""
        st = os.fstat(fd)
        if include_self:
            info = _header(arcname, st)
            info.type = tarfile.DIRTYPE
            self._out.add(info)
        if not self._descends(st):
            return
        stack: list[tuple[int, str, Iterator[str]]] = []
        try:
            names = _sorted_names(fd)
            stack.append((os.dup(fd), arcname, names))
            while stack:
                dir_fd, prefix, names = stack[-1]
                name = next(names, None)
                if name is None:
                    os.close(stack.pop()[0])
                    continue
                child_arc = _arc_join(prefix, name)
                child = self._open_child_dir(dir_fd, name, child_arc)
                if child is not None:
                    stack.append((child, child_arc, iter(())))  # owned by the stack now
                    stack[-1] = (child, child_arc, _sorted_names(child))
        finally:
            for dir_fd, _, _ in stack:
                os.close(dir_fd)

    def _open_child_dir(self, dir_fd: int, name: str, arcname: str) -> int | None:
        """Archive one child; return its descriptor when it is a directory to descend."""
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            self._non_dir(dir_fd, name, arcname)
            return None
        try:
            st = os.fstat(fd)
            info = _header(arcname, st)
            info.type = tarfile.DIRTYPE
            self._out.add(info)  # raises when the reader went away: close fd then
        except BaseException:
            os.close(fd)
            raise
        if not self._descends(st):
            os.close(fd)
            return None
        return fd

    def _non_dir(self, parent_fd: int, name: str, arcname: str) -> None:
        try:
            pinned = os.open(name, PATH_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            return
        try:
            st = os.fstat(pinned)
            info = _header(arcname, st)
            first = self._out.link_name(st, arcname)
            if first is not None:
                info.type, info.linkname = tarfile.LNKTYPE, first
                self._out.add(info)
                return
            kind = stat.S_IFMT(st.st_mode)
            if kind == stat.S_IFREG:
                self._regular(pinned, parent_fd, name, info, st)
                return
            if kind == stat.S_IFSOCK:
                log.debug("archive: skipping socket %s", arcname)
                return
            _special_header(info, st, pinned)
            self._out.add(info)
        finally:
            os.close(pinned)

    def _regular(
        self, pinned: int, parent_fd: int, name: str, info: tarfile.TarInfo, st: os.stat_result
    ) -> None:
        info.type = tarfile.REGTYPE
        info.size = st.st_size
        _xattr_headers(parent_fd, name, info)
        # Reopen the very inode we checked (it is a regular file): no device is opened.
        fd = os.open(f"/proc/self/fd/{pinned}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._out.add(info, fd)
        finally:
            os.close(fd)


def _special_header(info: tarfile.TarInfo, st: os.stat_result, pinned: int) -> None:
    kind = stat.S_IFMT(st.st_mode)
    if kind == stat.S_IFLNK:
        info.type = tarfile.SYMTYPE
        # readlinkat(fd, "") reads the very link we pinned, even if its name is gone.
        info.linkname = os.readlink("", dir_fd=pinned)
    elif kind in (stat.S_IFCHR, stat.S_IFBLK):
        info.type = tarfile.CHRTYPE if kind == stat.S_IFCHR else tarfile.BLKTYPE
        info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    elif kind == stat.S_IFIFO:
        info.type = tarfile.FIFOTYPE


def _sorted_names(fd: int) -> Iterator[str]:
    return iter(sorted(os.listdir(fd), key=os.fsencode))


def _arc_join(prefix: str, name: str) -> str:
    if prefix == "":
        return name
    if prefix.endswith("/"):
        return prefix + name
    return f"{prefix}/{name}"


class ArchiveSource:
    """A path opened for GET archive: its stat (sent first, as a header) and a writer
    of its tar. Holds descriptors until ``close``."""

    def __init__(
        self, root_fd: int, target: Target, path_stat: PathStat,
        devices: frozenset[int] | None = None,
    ) -> None:
        self._root_fd = root_fd
        self._target = target
        self.stat = path_stat
        self._devices = devices

    def write_to(self, sink: Sink) -> None:
        out = _TarOut(sink)
        writer = _TreeWriter(out, self._devices)
        target = self._target
        if target.name is None:
            writer.directory(target.dir_fd, self.stat.name, include_self=True)
        else:
            writer.entry(target.dir_fd, target.name, self.stat.name)
        out.close()

    def close(self) -> None:
        self._target.close()
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1


def open_archive(
    rootfs: Path, path: str, devices: frozenset[int] | None = None
) -> ArchiveSource:
    """Resolve and stat ``path`` for GET archive (errors as ``stat_path``); with
    ``devices``, directories on other devices are archived empty (``_TreeWriter``)."""
    request = ArchivePath.parse(path)
    root_fd = rootscope.open_root(rootfs)
    try:
        target = rootscope.resolve(root_fd, request.parts, follow_last=request.follow)
        try:
            return ArchiveSource(root_fd, target, _stat_of(root_fd, request, target), devices)
        except BaseException:
            target.close()
            raise
    except BaseException:
        os.close(root_fd)
        raise


class RootfsExport:
    """``docker export``: the whole root as a tar, names relative (``bin/``, ``bin/sh``)."""

    def __init__(self, rootfs: Path) -> None:
        self._root_fd = rootscope.open_root(rootfs)

    def write_to(self, sink: Sink) -> None:
        out = _TarOut(sink)
        _TreeWriter(out).directory(self._root_fd, "", include_self=False)
        out.close()

    def close(self) -> None:
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1


# =========================================================================== streaming
class _ThreadSink:
    """The producer thread's ``write``: gathers bytes into chunks and hands each to the
    event loop; blocks while ``_QUEUED_CHUNKS`` chunks wait for the client."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[bytes | BaseException | None]
    ) -> None:
        self._loop = loop
        self._queue = queue
        self._buffer = bytearray()
        self.slots = threading.Semaphore(_QUEUED_CHUNKS)
        self.cancelled = threading.Event()

    def write(self, data: bytes, /) -> int:
        if self.cancelled.is_set():
            raise _Abandoned()
        self._buffer += data
        if len(self._buffer) >= CHUNK:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if not self._buffer:
            return
        self.slots.acquire()
        if self.cancelled.is_set():
            raise _Abandoned()
        chunk, self._buffer = bytes(self._buffer), bytearray()
        self.put(chunk)

    def put(self, item: bytes | BaseException | None) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:
            self.cancelled.set()  # the loop is closed: nobody reads any more

    def abandon(self) -> None:
        self.cancelled.set()
        for _ in range(_QUEUED_CHUNKS + 1):
            self.slots.release()


class _Abandoned(Exception):
    """The reader went away; the producer stops."""


async def stream_from_thread(producer: Callable[[Sink], None]) -> AsyncGenerator[bytes, None]:
    """Run ``producer(sink)`` in a thread of its own and yield what it writes, in chunks
    of about ``CHUNK`` bytes. A producer error is raised here after the chunks before it.
    Closing the iterator early stops the producer and waits for it, so the caller may
    release what the producer reads (a mounted rootfs) right after."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
    sink = _ThreadSink(loop, queue)
    finished = asyncio.Event()

    def run() -> None:
        outcome: BaseException | None = None
        try:
            producer(sink)
            sink.flush()
        except _Abandoned:
            pass
        except BaseException as exc:
            outcome = exc
        sink.put(outcome)
        try:
            loop.call_soon_threadsafe(finished.set)
        except RuntimeError:
            pass

    thread = threading.Thread(target=run, name="tar-writer", daemon=True)
    thread.start()
    try:
        while True:
            item = await queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            sink.slots.release()
            yield item
    finally:
        sink.abandon()
        await asyncio.shield(finished.wait())


async def run_in_thread(fn: Callable[[], object]) -> None:
    """``fn()`` in a thread of its own (not the default pool: it may wait on a slow client
    for long), awaited even if the caller is cancelled meanwhile."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def settle(exc: BaseException | None) -> None:
        if future.done():
            return
        if exc is None:
            future.set_result(None)
        else:
            future.set_exception(exc)

    def run() -> None:
        outcome: BaseException | None = None
        try:
            fn()
        except BaseException as exc:
            outcome = exc
        try:
            loop.call_soon_threadsafe(settle, outcome)
        except RuntimeError:
            pass

    threading.Thread(target=run, name="tar-reader", daemon=True).start()
    await asyncio.shield(future)


# =========================================================================== tar in
@dataclass(frozen=True)
class ExtractOptions:
    no_overwrite_dir_non_dir: bool = False
    owner: tuple[int, int] | None = None  # chown every entry to this (copyUIDGID + User)
    same_owner: bool = True  # apply the archive's (or ``owner``'s) ids; needs root


@dataclass
class _DirTimes:
    parts: tuple[str, ...]
    atime_ns: int
    mtime_ns: int


class _Extractor:
    def __init__(self, root_fd: int, dest: Target, options: ExtractOptions) -> None:
        self._root_fd = root_fd
        self._dest_parts = list(dest.parts)
        self._dest = dest.path
        self._options = options
        self._parent: tuple[tuple[str, ...], Target] | None = None
        self._dir_times: list[_DirTimes] = []

    def close(self) -> None:
        self._forget_parent()

    # -- names -----------------------------------------------------------------------
    def _entry_parts(self, name: str) -> list[str]:
        """The entry's components below the destination; ``..`` may not climb above it."""
        parts: list[str] = []
        rooted = name.startswith("/")  # Go's Clean drops ".." right after a leading "/"
        for part in name.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if not parts and rooted:
                    continue
                if not parts:
                    raise ArchiveError(f"{go_quote(name)} is outside of {go_quote(self._dest)}")
                parts.pop()
                continue
            parts.append(part)
        return parts

    def _lexical(self, parts: list[str]) -> str:
        return rootscope.join([*self._dest_parts, *parts])

    def _inside_dest(self, path: str) -> bool:
        return self._dest == "/" or path == self._dest or path.startswith(self._dest + "/")

    def _parent_of(self, parts: list[str]) -> Target:
        key = tuple(parts[:-1])
        if self._parent is None or self._parent[0] != key:
            self._forget_parent()
            target = rootscope.resolve(
                self._root_fd, [*self._dest_parts, *key], follow_last=True, create_dirs=True
            )
            try:
                fd = target.open_dir()
            except FileNotFoundError:
                fd = _mkdir_open(target)
            except OSError as exc:
                target.close()
                if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                    raise ArchiveError(
                        f"{self._lexical(list(key))}: not a directory"
                    ) from None
                raise
            parent = Target(fd, None, target.parts)
            target.close()
            self._parent = (key, parent)
        return self._parent[1]

    def _forget_parent(self) -> None:
        if self._parent is not None:
            self._parent[1].close()
            self._parent = None

    # -- one entry -----------------------------------------------------------------------
    def add(self, member: tarfile.TarInfo, archive: tarfile.TarFile) -> None:
        parts = self._entry_parts(member.name)
        if not parts:
            if member.isdir():
                self._dest_meta(member)
                return
            raise ArchiveError(
                f'cannot overwrite directory "{self._dest}" with non-directory "{self._dest}"'
            )
        if member.ischr() or member.isblk():
            raise ArchiveError(
                f'refusing to create device node "{self._lexical(parts)}": device nodes '
                "cannot be copied into a container"
            )
        if member.issym():
            self._check_symlink(parts, member)
        if member.islnk():
            self._link_parts(member)  # refuse an escaping target before creating anything
        if not (member.isdir() or member.isreg() or member.issym() or member.islnk()
                or member.isfifo()):
            log.debug("archive: skipping %s (tar type %r)", member.name, member.type)
            return
        parent = self._parent_of(parts)
        name = parts[-1]
        self._make_room(parent, name, parts, member)
        if member.isdir():
            self._directory(parent, name, member)
        elif member.isreg():
            self._regular(parent, name, member, archive)
        elif member.issym():
            os.symlink(member.linkname, name, dir_fd=parent.dir_fd)
            self._finish_node(parent, name, member, chmod=False)
        elif member.islnk():
            self._hardlink(parent, name, parts, member)
        else:
            os.mkfifo(name, 0o600, dir_fd=parent.dir_fd)
            self._finish_node(parent, name, member, chmod=True)

    def _check_symlink(self, parts: list[str], member: tarfile.TarInfo) -> None:
        # As dockerd: a relative target must stay below the extraction point. An
        # absolute one is fine: it resolves inside the container's root anyway.
        if member.linkname.startswith("/"):
            return
        entry = self._lexical(parts)
        target = rootscope.join(rootscope.clean(entry.rsplit("/", 1)[0] + "/" + member.linkname))
        if not self._inside_dest(target):
            raise ArchiveError(f"invalid symlink {go_quote(entry)} -> {go_quote(member.linkname)}")

    def _make_room(
        self, parent: Target, name: str, parts: list[str], member: tarfile.TarInfo
    ) -> None:
        """Later entries replace earlier ones; directories merge with directories."""
        try:
            st = os.stat(name, dir_fd=parent.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        existing_dir = stat.S_ISDIR(st.st_mode)
        if self._options.no_overwrite_dir_non_dir and existing_dir != member.isdir():
            what = ("directory", "non-directory") if existing_dir else ("non-directory",
                                                                         "directory")
            raise ArchiveError(
                f'cannot overwrite {what[0]} "{self._lexical(parts)}" with {what[1]} '
                f'"{self._dest}"'
            )
        if existing_dir and member.isdir():
            return
        if member.islnk() and _same_inode_as_link(self._root_fd, self._link_parts(member), st):
            return
        if existing_dir:
            shutil.rmtree(name, dir_fd=parent.dir_fd)
        else:
            os.unlink(name, dir_fd=parent.dir_fd)

    def _directory(self, parent: Target, name: str, member: tarfile.TarInfo) -> None:
        try:
            os.mkdir(name, 0o700, dir_fd=parent.dir_fd)
        except FileExistsError:
            pass  # merging into an existing directory: it takes the new metadata
        fd = os.open(name, DIR_FLAGS, dir_fd=parent.dir_fd)
        try:
            self._fd_meta(fd, member)
        finally:
            os.close(fd)
        atime, mtime = _times_ns(member)
        self._dir_times.append(_DirTimes((*parent.dir_parts, name), atime, mtime))

    def _dest_meta(self, member: tarfile.TarInfo) -> None:
        """A ``./`` entry: the extraction point itself takes its metadata (as dockerd)."""
        target = rootscope.resolve(self._root_fd, self._dest_parts, follow_last=True)
        with target:
            fd = target.open_dir()
        try:
            self._fd_meta(fd, member)
        finally:
            os.close(fd)
        atime, mtime = _times_ns(member)
        self._dir_times.append(_DirTimes(tuple(self._dest_parts), atime, mtime))

    def _regular(
        self, parent: Target, name: str, member: tarfile.TarInfo, archive: tarfile.TarFile
    ) -> None:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=parent.dir_fd)
        try:
            if member.size:
                source = archive.extractfile(member)
                if source is None:
                    raise ArchiveError(f"{member.name}: no data")
                _copy_in(source, fd, member.size)
            self._fd_meta(fd, member)
            os.utime(fd, ns=_times_ns(member))
        finally:
            os.close(fd)

    def _link_parts(self, member: tarfile.TarInfo) -> list[str]:
        """The hardlink target below the destination (names in a tar are relative to
        its root, which is the extraction point; a leading ``/`` changes nothing)."""
        target = rootscope.clean(self._dest + "/" + member.linkname)
        if not self._inside_dest(rootscope.join(target)):
            raise ArchiveError(
                f"invalid hardlink {go_quote(rootscope.join(target))} -> "
                f"{go_quote(member.linkname)}"
            )
        return target

    def _hardlink(
        self, parent: Target, name: str, parts: list[str], member: tarfile.TarInfo
    ) -> None:
        target_parts = self._link_parts(member)
        missing = ArchiveError(
            f"link {rootscope.join(target_parts)} {self._lexical(parts)}: no such file or "
            "directory"
        )
        try:
            source = rootscope.resolve(self._root_fd, target_parts, follow_last=False)
        except (FileNotFoundError, NotADirectoryError):
            raise missing from None
        with source:
            if source.name is None:
                raise ArchiveError(f"invalid hardlink {member.name!r}: target is a directory")
            try:
                st = source.lstat()
            except FileNotFoundError:
                raise missing from None
            if stat.S_ISDIR(st.st_mode):
                raise ArchiveError(f"invalid hardlink {member.name!r}: target is a directory")
            try:
                os.link(source.name, name, src_dir_fd=source.dir_fd, dst_dir_fd=parent.dir_fd,
                        follow_symlinks=False)
            except FileExistsError:
                pass  # already that very file (checked in _make_room)

    # -- metadata -------------------------------------------------------------------
    def _ids(self, member: tarfile.TarInfo) -> tuple[int, int]:
        return self._options.owner or (member.uid, member.gid)

    def _fd_meta(self, fd: int, member: tarfile.TarInfo) -> None:
        if self._options.same_owner:
            os.fchown(fd, *self._ids(member))
        os.fchmod(fd, member.mode & 0o7777)  # after chown, which clears set-id bits
        for key, value in _xattrs_of(member):
            _set_xattr(fd, key, value)

    def _finish_node(self, parent: Target, name: str, member: tarfile.TarInfo,
                     chmod: bool) -> None:
        """Owner, mode and times of a symlink or FIFO, never through it."""
        if self._options.same_owner:
            os.chown(name, *self._ids(member), dir_fd=parent.dir_fd, follow_symlinks=False)
        if chmod:
            # O_PATH pins the node without opening it (a FIFO open would block); chmod
            # through /proc/self/fd then acts on exactly that inode, checked a FIFO.
            pinned = os.open(name, PATH_FLAGS, dir_fd=parent.dir_fd)
            try:
                if stat.S_ISFIFO(os.fstat(pinned).st_mode):
                    os.chmod(f"/proc/self/fd/{pinned}", member.mode & 0o7777)
            finally:
                os.close(pinned)
        os.utime(name, ns=_times_ns(member), dir_fd=parent.dir_fd, follow_symlinks=False)

    def finish(self) -> None:
        """Directory times last (their children changed them), deepest first."""
        self._forget_parent()
        latest = {entry.parts: entry for entry in self._dir_times}
        for parts in sorted(latest, key=len, reverse=True):
            entry = latest[parts]
            try:
                with rootscope.resolve(self._root_fd, list(parts), follow_last=False) as t:
                    fd = t.open_dir()
            except OSError:
                continue  # replaced by a later entry
            try:
                os.utime(fd, ns=(entry.atime_ns, entry.mtime_ns))
            finally:
                os.close(fd)


def _mkdir_open(target: Target) -> int:
    assert target.name is not None
    try:
        os.mkdir(target.name, 0o755, dir_fd=target.dir_fd)
    except FileExistsError:
        pass
    return target.open_dir()


def _same_inode_as_link(root_fd: int, parts: list[str], st: os.stat_result) -> bool:
    try:
        with rootscope.resolve(root_fd, parts, follow_last=False) as source:
            src = source.lstat()
    except OSError:
        return False
    return (src.st_dev, src.st_ino) == (st.st_dev, st.st_ino)


def _times_ns(member: tarfile.TarInfo) -> tuple[int, int]:
    mtime = int(float(member.mtime) * 1_000_000_000)
    atime_text = member.pax_headers.get("atime")
    try:
        atime = int(float(atime_text) * 1_000_000_000) if atime_text else mtime
    except ValueError:
        atime = mtime
    return atime, mtime


def _xattrs_of(member: tarfile.TarInfo) -> list[tuple[str, bytes]]:
    found = []
    for key, value in member.pax_headers.items():
        if not key.startswith("SCHILY.xattr."):
            continue
        name = key[len("SCHILY.xattr."):]
        if name.startswith("trusted."):
            continue  # overlayfs (and other privileged) state is never taken from a client
        found.append((name, value.encode("utf-8", "surrogateescape")))
    return found


def _set_xattr(fd: int, name: str, value: bytes) -> None:
    try:
        os.setxattr(fd, name, value)
    except OSError as exc:
        if exc.errno not in (errno.ENOTSUP, errno.EPERM):
            raise


def _copy_in(source: Readable, fd: int, size: int) -> None:
    left = size
    while left > 0:
        data = source.read(min(CHUNK, left))
        if not data:
            raise ArchiveError("unexpected EOF")
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        left -= len(data)


class _Counting:
    def __init__(self, source: Readable) -> None:
        self._source = source
        self.size = 0

    def read(self, n: int = -1, /) -> bytes:
        data = self._source.read(n)
        self.size += len(data)
        return data


def open_extraction_point(root_fd: int, path: str) -> Target:
    """The PUT destination, followed to the end: FileNotFoundError when missing,
    ``ExtractionPointError`` when it is not a directory."""
    try:
        target = rootscope.resolve(root_fd, rootscope.clean(path), follow_last=True)
    except NotADirectoryError:
        raise FileNotFoundError(errno.ENOENT, "not found", path) from None
    try:
        if not stat.S_ISDIR(target.lstat().st_mode):
            raise ExtractionPointError()
    except BaseException:
        target.close()
        raise
    return target


def extract_tar(
    rootfs: Path, path: str, source: Readable, options: ExtractOptions,
    check_dest: Callable[[tuple[str, ...]], None] | None = None,
) -> None:
    """Extract the (possibly compressed) tar ``source`` at ``path`` inside ``rootfs``.
    ``check_dest`` sees the extraction point's real path (symlinks resolved) before
    anything is written, and may refuse it (a read-only mount)."""
    root_fd = rootscope.open_root(rootfs)
    try:
        with open_extraction_point(root_fd, path) as dest:
            if check_dest is not None:
                check_dest(dest.parts)
            extractor = _Extractor(root_fd, dest, options)
        try:
            _extract_all(source, extractor)
            extractor.finish()
        finally:
            extractor.close()
    finally:
        os.close(root_fd)


def _extract_all(source: Readable, extractor: _Extractor) -> None:
    try:
        plain, _ = open_uncompressed(source)
    except InvalidParameter as exc:
        raise ArchiveError(str(exc)) from None
    counted = _Counting(plain)
    try:
        archive = tarfile.open(fileobj=counted, mode="r|",  # type: ignore[call-overload]
                               bufsize=_TAR_READ_BUFSIZE)
    except tarfile.ReadError:
        if counted.size == 0:
            return  # an empty body: nothing to extract (dockerd answers 200 too)
        raise ArchiveError("archive/tar: invalid tar header") from None
    try:
        for member in archive:
            try:
                extractor.add(member, archive)
            except ArchiveError:
                raise
            except (OSError, ValueError, OverflowError) as exc:
                raise ArchiveError(f"extracting {member.name!r}: {_describe(exc)}") from exc
    except tarfile.ReadError as exc:
        message = "unexpected EOF" if "unexpected end" in str(exc) else (
            "archive/tar: invalid tar header")
        raise ArchiveError(message) from None
    except tarfile.TarError:
        raise ArchiveError("archive/tar: invalid tar header") from None
    finally:
        archive.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc)


# =========================================================================== users
def resolve_user(rootfs: Path, user: str) -> tuple[int, int]:
    """``Config.User`` (``name``, ``uid``, ``name:group``, ``uid:gid``) as ids, looked up
    in the container's own /etc/passwd and /etc/group (read safely, never executed)."""
    name, _, group = user.partition(":")
    root_fd = rootscope.open_root(rootfs)
    try:
        passwd = _table(rootscope.read_small_file(root_fd, "/etc/passwd"))
        groups = _table(rootscope.read_small_file(root_fd, "/etc/group"))
    finally:
        os.close(root_fd)
    uid, gid = _lookup_user(name, passwd)
    if group:
        gid = _lookup_id(group, groups, "group")
    return uid, gid


def _table(data: bytes | None) -> list[list[str]]:
    if not data:
        return []
    return [line.split(":") for line in data.decode("utf-8", "replace").splitlines()
            if line and not line.startswith("#")]


def _lookup_user(name: str, passwd: list[list[str]]) -> tuple[int, int]:
    for row in passwd:
        if len(row) >= 4 and (row[0] == name or row[2] == name):
            try:
                return int(row[2]), int(row[3])
            except ValueError:
                continue
    if name.isdigit():
        return int(name), 0  # numeric users need no passwd entry
    raise InvalidParameter(f"unable to find user {name}: no matching entries in passwd file")


def _lookup_id(name: str, table: list[list[str]], what: str) -> int:
    for row in table:
        if len(row) >= 3 and (row[0] == name or row[2] == name):
            try:
                return int(row[2])
            except ValueError:
                continue
    if name.isdigit():
        return int(name)
    raise InvalidParameter(f"unable to find {what} {name}: no matching entries in {what} file")
