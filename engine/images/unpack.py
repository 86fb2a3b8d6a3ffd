"""Extract a layer tar into a snapshot directory, safely, in one pass.

``unpack(source, root, writer)`` runs in a worker thread. It reads ``source`` (plain tar,
or gzip / bzip2 / xz — zstd too when the ``zstandard`` module is present — told apart by
their magic bytes), hashes the *uncompressed* stream (the layer's diff_id), tees those
bytes into a content-store writer when one is given, and extracts every entry below
``root``.

Containment (CVE-2014-6407; reliability B26/A8). Nothing is ever created outside ``root``:

- Entry names are cleaned lexically: ``.`` and empty components vanish, ``..`` pops one
  component and stops at the root (the same result as extracting inside a chroot), a
  leading ``/`` means the root. ``../../x`` lands at ``<root>/x``.
- Parent directories are opened one component at a time with ``openat(O_NOFOLLOW)``
  starting from an fd of ``root``. A parent that is a symlink written by this layer is
  resolved *inside* the root, as a chroot would (absolute targets restart at the root,
  ``..`` stops there), with a limit of 40 links. The final component is never followed:
  it is created with ``O_CREAT|O_EXCL|O_NOFOLLOW``, ``mknodat``, ``symlinkat``, ``linkat``
  without ``AT_SYMLINK_FOLLOW``, and an existing entry is unlinked (or, for a directory,
  removed with fd-based ``rmtree``) before being replaced.
- Symlink targets are stored verbatim: they may point anywhere, they are only data here.
- Hardlink targets are cleaned and resolved the same way, so they name a file inside the
  root; a target that does not exist is an ``invalid hardlink`` error.

Whiteouts (OCI / AUFS): ``.wh.<name>`` becomes an overlay whiteout (char device 0:0 named
``<name>``); ``.wh..wh..opq`` sets ``trusted.overlay.opaque=y`` on its directory; other
``.wh..wh.*`` entries (AUFS bookkeeping) are skipped. Image-supplied ``trusted.overlay.*``
xattrs are dropped: only we may steer overlayfs.

Metadata: owner (numeric uid/gid, when running as root), mode (set after chown, which
clears set-id bits), xattrs (``SCHILY.xattr.*`` and ``LIBARCHIVE.xattr.*`` PAX records;
ENOTSUP/EPERM ignored as dockerd does), and mtimes (directories last, after their
children are written).
"""

from __future__ import annotations

import asyncio
import base64
import bz2
import errno
import hashlib
import logging
import lzma
import os
import shutil
import stat
import threading
import urllib.parse
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from engine.errors import EngineError, InvalidParameter
from engine.images.pipes import ThreadJob
from engine.images.tarstream import TarFormatError, TarMember, TarReader
from engine.pathnames import clean_components
from engine.store.content import ContentWriter

T = TypeVar("T")

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # read/write size: big reads keep the per-call overhead negligible
_MAX_SYMLINKS = 40  # as the kernel's MAXSYMLINKS
WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"

_GZIP_MAGIC = b"\x1f\x8b"
_BZIP2_MAGIC = b"BZh"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_IGNORED_XATTR_ERRORS = (errno.ENOTSUP, errno.EPERM)


class UnpackError(InvalidParameter):
    """The archive is malformed or tries something we refuse (400)."""


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class UnpackResult:
    diff_id: str  # sha256 of the uncompressed stream
    tar_size: int  # bytes of the uncompressed stream
    size: int  # bytes of content unpacked (Docker's layer size: files + symlink targets)
    entries: int
    compression: str  # "none", "gzip", "bzip2", "xz" or "zstd"


# =========================================================================== streams
class ChunkPipe:
    """Bytes from the event loop (``feed``, async) to a worker thread (``read``, blocking),
    with a bounded buffer so a fast client cannot outrun the disk."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_buffered: int = 8 * CHUNK) -> None:
        self._loop = loop
        self._max = max_buffered
        self._cond = threading.Condition()
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._eof = False
        self._error: BaseException | None = None
        self._consumer_gone = False
        self._space = asyncio.Event()

    async def feed(self, source: AsyncIterator[bytes]) -> None:
        """Copy ``source`` into the pipe; stops early when the reader is gone."""
        try:
            async for chunk in source:
                if chunk and not await self._put(bytes(chunk)):
                    return
        except BaseException as exc:
            self.fail(exc)
            raise
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    async def _put(self, chunk: bytes) -> bool:
        while True:
            with self._cond:
                if self._consumer_gone:
                    return False
                if self._buffered < self._max:
                    self._chunks.append(chunk)
                    self._buffered += len(chunk)
                    self._cond.notify_all()
                    return True
                self._space.clear()
            await self._space.wait()

    def fail(self, exc: BaseException) -> None:
        """Make the reader raise (the producer broke or the work is being abandoned)."""
        with self._cond:
            if self._error is None:
                self._error = exc
            self._cond.notify_all()

    def close_reader(self) -> None:
        """The reader is done: release a producer waiting for space."""
        with self._cond:
            self._consumer_gone = True
            self._chunks.clear()
            self._buffered = 0
        self._loop.call_soon_threadsafe(self._space.set)

    def read(self, n: int = -1, /) -> bytes:
        with self._cond:
            while not self._chunks and not self._eof and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise UnpackError(f"reading the archive failed: {self._error or 'aborted'}")
            if not self._chunks:
                return b""
            chunk = self._chunks.popleft()
            if 0 <= n < len(chunk):
                self._chunks.appendleft(chunk[n:])
                chunk = chunk[:n]
            self._buffered -= len(chunk)
        self._loop.call_soon_threadsafe(self._space.set)
        return chunk


async def run_fed(
    chunks: AsyncIterator[bytes], fn: Callable[..., T], *args: Any, name: str, aborted: str
) -> T:
    """Run the blocking ``fn(pipe, *args)`` in a thread of its own, ``pipe`` delivering
    ``chunks`` (a request body, read on the event loop) through a bounded buffer. When
    ``fn`` fails or the caller is cancelled, the thread is told to stop (``aborted`` is
    what its reads then raise) and awaited, so that the caller may remove what it was
    writing as soon as this returns."""
    pipe = ChunkPipe(asyncio.get_running_loop())
    feeder = asyncio.ensure_future(pipe.feed(chunks))
    job = ThreadJob(fn, pipe, *args, name=name)
    try:
        return await job.result()
    except BaseException:
        pipe.fail(EngineError(aborted))
        await job.settle()
        raise
    finally:
        pipe.close_reader()
        if not feeder.done():
            feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)


class _Prefixed:
    """``source`` with some already-read bytes put back in front."""

    def __init__(self, head: bytes, source: Readable) -> None:
        self._head = head
        self._source = source

    def read(self, n: int = -1, /) -> bytes:
        if self._head:
            if 0 <= n < len(self._head):
                out, self._head = self._head[:n], self._head[n:]
                return out
            out, self._head = self._head, b""
            return out
        return self._source.read(n if n >= 0 else CHUNK)


class _Decompressor(Protocol):
    @property
    def eof(self) -> bool: ...
    @property
    def unused_data(self) -> bytes: ...


class _Decompressing:
    """Concatenated gzip / bzip2 / xz members → plain bytes, never more than ``n`` at a
    time (a small bomb cannot balloon memory)."""

    def __init__(self, source: Readable, kind: str, magic: bytes) -> None:
        self._source = source
        self._kind = kind
        self._magic = magic
        self._dec: Any = self._new()
        self._input = b""  # compressed bytes not yet given to the decompressor
        self._member_started = False
        self._done = False

    def _new(self) -> Any:
        if self._kind == "gzip":
            return zlib.decompressobj(wbits=31)
        if self._kind == "bzip2":
            return bz2.BZ2Decompressor()
        return lzma.LZMADecompressor()

    def read(self, n: int = -1, /) -> bytes:
        limit = n if n > 0 else CHUNK
        while not self._done:
            out = self._step(limit)
            if out:
                return out
        return b""

    def _step(self, limit: int) -> bytes:
        if self._dec.eof:
            return self._next_member()
        if not self._input and self._needs_input():
            self._input = self._source.read(CHUNK)
            if not self._input:
                if self._member_started:
                    raise UnpackError(f"unexpected end of {self._kind} stream")
                self._done = True
                return b""
        data, self._input = self._input, b""
        self._member_started = True
        try:
            if self._kind == "gzip":
                out: bytes = self._dec.decompress(data, limit)
                self._input = self._dec.unconsumed_tail
            else:
                out = self._dec.decompress(data, max_length=limit)
        except (zlib.error, OSError, EOFError, lzma.LZMAError) as exc:
            raise UnpackError(f"invalid {self._kind} stream: {exc}") from None
        return out

    def _needs_input(self) -> bool:
        if self._kind == "gzip":
            return True  # zlib hands back unconsumed input itself
        return bool(self._dec.needs_input)

    def _next_member(self) -> bytes:
        rest = self._dec.unused_data + self._input
        self._input = b""
        while len(rest) < len(self._magic):
            more = self._source.read(CHUNK)
            if not more:
                break
            rest += more
        if rest.startswith(self._magic):
            self._dec = self._new()
            self._input = rest
            self._member_started = False
            return b""
        if rest.strip(b"\0"):
            log.warning("unpack: ignoring %d bytes after the %s stream", len(rest), self._kind)
        while self._source.read(CHUNK):  # consume the request body to its end
            pass
        self._done = True
        return b""


class _Tee:
    """Uncompressed bytes: hashed once (by the writer when there is one, not at all when
    the caller already knows the digest) and counted."""

    def __init__(self, source: Readable, writer: ContentWriter | None, hash_stream: bool) -> None:
        self._source = source
        self._writer = writer
        self._hash = hashlib.sha256() if writer is None and hash_stream else None
        self.size = 0

    def read(self, n: int = -1, /) -> bytes:
        data = self._source.read(n if n >= 0 else CHUNK)
        if data:
            self.size += len(data)
            if self._writer is not None:
                self._writer.write(data)
            elif self._hash is not None:
                self._hash.update(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass

    @property
    def digest(self) -> str:
        """The stream's sha256 ("" when it was not hashed)."""
        if self._writer is not None:
            return self._writer.digest
        if self._hash is None:
            return ""
        return "sha256:" + self._hash.hexdigest()


def read_upto(source: Readable, n: int) -> bytes:
    """Up to ``n`` bytes: fewer only at the end of the stream."""
    head = b""
    while len(head) < n:
        more = source.read(n - len(head))
        if not more:
            break
        head += more
    return head


def open_uncompressed(source: Readable) -> tuple[Readable, str]:
    """Detect the compression by magic; returns the plain stream and its name."""
    head = read_upto(source, 6)
    stream: Readable = _Prefixed(head, source)
    if head.startswith(_GZIP_MAGIC):
        return _Decompressing(stream, "gzip", _GZIP_MAGIC), "gzip"
    if head.startswith(_BZIP2_MAGIC):
        return _Decompressing(stream, "bzip2", _BZIP2_MAGIC), "bzip2"
    if head.startswith(_XZ_MAGIC):
        return _Decompressing(stream, "xz", _XZ_MAGIC), "xz"
    if head.startswith(_ZSTD_MAGIC):
        return _zstd_reader(stream), "zstd"
    return stream, "none"


def _zstd_reader(stream: Readable) -> Readable:
    try:
        import zstandard  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise UnpackError("zstd-compressed layers need the zstandard module") from None
    reader: Readable = zstandard.ZstdDecompressor().stream_reader(
        stream,  # type: ignore[arg-type]  # any object with read() will do
        read_across_frames=True,
    )
    return reader


# =========================================================================== paths


class _Root:
    """An fd on the layer root and walks below it that never leave it."""

    def __init__(self, root: Path) -> None:
        self.fd = os.open(root, _DIR_FLAGS)
        self._cache_key: tuple[str, ...] | None = None
        self._cache_fd = -1
        self._cache_path: tuple[str, ...] = ()
        self._cache_owner: tuple[int, int] | None = None

    def default_owner(self) -> tuple[int, int]:
        """Who owns a file created in the cached parent: us, or our uid and the
        directory's group when it is set-gid."""
        if self._cache_owner is None:
            st = os.fstat(self._cache_fd)
            gid = st.st_gid if st.st_mode & stat.S_ISGID else os.getegid()
            self._cache_owner = (os.geteuid(), gid)
        return self._cache_owner

    def close(self) -> None:
        if self._cache_fd >= 0:
            os.close(self._cache_fd)
            self._cache_fd = -1
        os.close(self.fd)

    def invalidate(self) -> None:
        """Forget the cached parent. Its fd stays open (a caller may be using it) until
        the next ``parent_of`` replaces it."""
        self._cache_key = None

    def parent_of(self, components: list[str], create: bool = True) -> tuple[int, tuple[str, ...]]:
        """An fd (owned by the cache: do not close) on the directory that holds the last
        component, and that directory's real path below the root."""
        key = tuple(components[:-1])
        if key != self._cache_key:
            fd, path = self.open_dir(list(key), create=create)
            old = self._cache_fd
            self._cache_key, self._cache_fd, self._cache_path = key, fd, path
            self._cache_owner = None
            if old >= 0:
                os.close(old)
        return self._cache_fd, self._cache_path

    def open_dir(self, components: list[str], create: bool) -> tuple[int, tuple[str, ...]]:
        """Open ``components`` as a directory below the root (caller closes the fd),
        following symlinks chroot-style, creating missing directories when asked."""
        pending = deque(components)
        resolved: list[str] = []
        fd = os.dup(self.fd)
        links = 0
        try:
            while pending:
                part = pending.popleft()
                if part in ("", "."):
                    continue
                if part == "..":
                    if resolved:
                        resolved.pop()
                    os.close(fd)
                    fd = -1
                    fd = self._walk_real(resolved)
                    continue
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(part, 0o755, dir_fd=fd)
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                    if not stat.S_ISLNK(st.st_mode):
                        raise UnpackError(
                            f"{'/'.join(components)}: {'/'.join([*resolved, part])} is not a "
                            "directory"
                        ) from None
                    links += 1
                    if links > _MAX_SYMLINKS:
                        raise UnpackError(
                            f"{'/'.join(components)}: too many levels of symbolic links"
                        ) from None
                    target = os.readlink(part, dir_fd=fd)
                    pending.extendleft(reversed(target.split("/")))
                    if target.startswith("/"):
                        resolved = []
                        os.close(fd)
                        fd = -1
                        fd = os.dup(self.fd)
                    continue
                os.close(fd)
                fd = child
                resolved.append(part)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
        return fd, tuple(resolved)

    def _walk_real(self, components: list[str]) -> int:
        """Open a path already known to consist of real directories (no symlinks)."""
        fd = os.dup(self.fd)
        try:
            for part in components:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd


# =========================================================================== extraction
@dataclass
class _DirTimes:
    path: tuple[str, ...]
    atime_ns: int
    mtime_ns: int


class _Extractor:
    def __init__(self, root: Path, same_owner: bool) -> None:
        self._root = _Root(root)
        self._same_owner = same_owner
        self._umask = _current_umask()
        self._dir_times: list[_DirTimes] = []
        self.size = 0
        self.entries = 0

    def close(self) -> None:
        self._root.close()

    # -- one entry -------------------------------------------------------------------
    def add(self, member: TarMember, archive: TarReader) -> None:
        self.entries += 1
        parts = clean_components(member.name)
        if not parts:
            if member.isdir():
                self._apply_dir_meta(self._root.fd, (), member)
            return  # the root itself can only be a directory
        base = parts[-1]
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(parts, member)
            return
        if member.isdir():
            self._directory(parts, member)
        elif member.isreg():
            self._regular(parts, member, archive)
        elif member.issym():
            self._symlink(parts, member)
        elif member.islnk():
            self._hardlink(parts, member)
        elif member.ischr() or member.isblk() or member.isfifo():
            self._device(parts, member)
        else:
            log.debug("unpack: skipping %s (tar type %r)", member.name, member.type)

    def _whiteout(self, parts: list[str], member: TarMember) -> None:
        base = parts[-1]
        parent_fd, _ = self._root.parent_of(parts)
        if base == WHITEOUT_OPAQUE:
            _set_xattr_fd(parent_fd, OPAQUE_XATTR, b"y", strict=True)
            return
        if base.startswith(WHITEOUT_META_PREFIX):
            return  # AUFS bookkeeping (.wh..wh.plnk, .wh..wh.aufs): meaningless here
        name = base[len(WHITEOUT_PREFIX):]
        if name in ("", ".", ".."):
            raise UnpackError(f"invalid whiteout entry {member.name!r}")
        self._clear(parent_fd, name, keep_dir=False)
        os.mknod(name, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=parent_fd)
        if self._same_owner:
            os.chown(name, member.uid, member.gid, dir_fd=parent_fd, follow_symlinks=False)

    def _directory(self, parts: list[str], member: TarMember) -> None:
        parent_fd, parent_path = self._root.parent_of(parts)
        name = parts[-1]
        self._clear(parent_fd, name, keep_dir=True)
        try:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            pass  # an existing directory takes the new metadata
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        try:
            self._apply_dir_meta(fd, (*parent_path, name), member)
        finally:
            os.close(fd)

    def _apply_dir_meta(self, fd: int, path: tuple[str, ...], member: TarMember) -> None:
        if self._same_owner:
            os.fchown(fd, member.uid, member.gid)
        os.fchmod(fd, member.mode & 0o7777)
        _apply_xattrs_fd(fd, member)
        atime, mtime = _times_ns(member)
        self._dir_times.append(_DirTimes(path, atime, mtime))

    def _regular(self, parts: list[str], member: TarMember, archive: TarReader) -> None:
        parent_fd, _ = self._root.parent_of(parts)
        name = parts[-1]
        mode = member.mode & 0o7777
        # Most entries are plain files owned by root with ordinary modes: created with
        # their final mode and owner they need no fchmod/fchown (a layer of many small
        # files is bound by syscalls per file).
        plain = mode & ~0o777 == 0 and mode & self._umask == 0
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, mode if plain else 0o600, dir_fd=parent_fd)
        except FileExistsError:
            self._clear(parent_fd, name, keep_dir=False)
            parent_fd, _ = self._root.parent_of(parts)
            fd = os.open(name, flags, mode if plain else 0o600, dir_fd=parent_fd)
        try:
            if member.size:
                _copy(archive, fd, member.size, member.name)
            if self._same_owner and (member.uid, member.gid) != self._root.default_owner():
                os.fchown(fd, member.uid, member.gid)
                plain = False  # chown may have cleared bits: set the mode again
            if not plain:
                os.fchmod(fd, mode)  # after chown, which clears set-id bits
            if member.pax_headers:
                _apply_xattrs_fd(fd, member)
            os.utime(fd, ns=_times_ns(member))
        finally:
            os.close(fd)
        self.size += member.size

    def _symlink(self, parts: list[str], member: TarMember) -> None:
        parent_fd, _ = self._root.parent_of(parts)
        name = parts[-1]
        self._clear(parent_fd, name, keep_dir=False)
        os.symlink(member.linkname, name, dir_fd=parent_fd)
        self._finish_special(parent_fd, name, member, chmod=False)
        self.size += len(os.fsencode(member.linkname))

    def _hardlink(self, parts: list[str], member: TarMember) -> None:
        target = clean_components(member.linkname)
        if not target:
            raise UnpackError(f"invalid hardlink {member.name!r} -> {member.linkname!r}")
        try:
            target_fd, _ = self._root.open_dir(target[:-1], create=False)
        except (FileNotFoundError, NotADirectoryError):
            raise UnpackError(
                f"invalid hardlink {member.name!r} -> {member.linkname!r}: target not found"
            ) from None
        try:
            parent_fd, _ = self._root.parent_of(parts)
            name = parts[-1]
            try:
                src = os.stat(target[-1], dir_fd=target_fd, follow_symlinks=False)
            except FileNotFoundError:
                raise UnpackError(
                    f"invalid hardlink {member.name!r} -> {member.linkname!r}: target not found"
                ) from None
            if stat.S_ISDIR(src.st_mode):
                raise UnpackError(f"invalid hardlink {member.name!r}: target is a directory")
            try:
                dst = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
                if (dst.st_dev, dst.st_ino) == (src.st_dev, src.st_ino):
                    return  # already that file
            except FileNotFoundError:
                pass
            self._clear(parent_fd, name, keep_dir=False)
            os.link(
                target[-1], name, src_dir_fd=target_fd, dst_dir_fd=parent_fd,
                follow_symlinks=False,
            )
        finally:
            os.close(target_fd)

    def _device(self, parts: list[str], member: TarMember) -> None:
        if not self._same_owner and not member.isfifo():
            log.warning("unpack: not root, skipping device node %s", member.name)
            return
        parent_fd, _ = self._root.parent_of(parts)
        name = parts[-1]
        self._clear(parent_fd, name, keep_dir=False)
        if member.isfifo():
            os.mkfifo(name, 0o600, dir_fd=parent_fd)
        else:
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(
                name, kind | 0o600, os.makedev(member.devmajor, member.devminor),
                dir_fd=parent_fd,
            )
        self._finish_special(parent_fd, name, member, chmod=True)

    def _finish_special(
        self, parent_fd: int, name: str, member: TarMember, chmod: bool
    ) -> None:
        """Owner, mode, xattrs and times of a symlink or node, never through it."""
        if self._same_owner:
            os.chown(name, member.uid, member.gid, dir_fd=parent_fd, follow_symlinks=False)
        if chmod:
            # O_PATH opens the node itself (opening a FIFO or device for real could block
            # or act on hardware); /proc/self/fd/<n> then names exactly that inode.
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
            try:
                os.chmod(f"/proc/self/fd/{fd}", member.mode & 0o7777)
            finally:
                os.close(fd)
        # The kernel follows the /proc magic link to the parent directory, then takes
        # ``name`` itself without following it (lsetxattr): no *at() variant needed.
        for key, value in _xattrs_of(member):
            _set_xattr_path(f"/proc/self/fd/{parent_fd}/{name}", key, value)
        os.utime(name, ns=_times_ns(member), dir_fd=parent_fd, follow_symlinks=False)

    def _clear(self, parent_fd: int, name: str, keep_dir: bool) -> None:
        if make_room(parent_fd, name, keep_dir):
            # A cached parent may have been resolved through (or inside) what went away.
            self._root.invalidate()

    # -- the end -------------------------------------------------------------------------
    def finish(self) -> None:
        """Directory times last (writing children changed them), deepest first."""
        self._root.invalidate()
        latest: dict[tuple[str, ...], _DirTimes] = {}
        for entry in self._dir_times:
            latest[entry.path] = entry
        for path in sorted(latest, key=len, reverse=True):
            entry = latest[path]
            try:
                fd = self._root._walk_real(list(path))
            except OSError:
                continue  # replaced by a later entry
            try:
                os.utime(fd, ns=(entry.atime_ns, entry.mtime_ns))
            finally:
                os.close(fd)


# =========================================================================== metadata
def make_room(dir_fd: int, name: str, keep_dir: bool) -> bool:
    """Before extracting entry ``name``: later tar entries replace earlier ones, except
    that a directory stays for a directory entry (``keep_dir``; its metadata is then
    replaced). Returns whether something was removed."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        if keep_dir:
            return False
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)
    return True


def _times_ns(member: TarMember) -> tuple[int, int]:
    mtime = int(float(member.mtime) * 1_000_000_000)
    atime_text = member.pax_headers.get("atime")
    try:
        atime = int(float(atime_text) * 1_000_000_000) if atime_text else mtime
    except ValueError:
        atime = mtime
    return atime, mtime


def _xattrs_of(member: TarMember) -> list[tuple[str, bytes]]:
    found: list[tuple[str, bytes]] = []
    for key, value in member.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            name = key[len("SCHILY.xattr."):]
            data = value.encode("utf-8", "surrogateescape")
        elif key.startswith("LIBARCHIVE.xattr."):
            name = urllib.parse.unquote(key[len("LIBARCHIVE.xattr."):])
            try:
                data = base64.b64decode(value + "=" * (-len(value) % 4))
            except ValueError:
                continue
        else:
            continue
        if name.startswith("trusted.overlay."):
            continue  # never let an image steer overlayfs (redirects, opaque dirs, …)
        found.append((name, data))
    return found


def _apply_xattrs_fd(fd: int, member: TarMember) -> None:
    for name, value in _xattrs_of(member):
        _set_xattr_fd(fd, name, value, strict=False)


def _set_xattr_fd(fd: int, name: str, value: bytes, strict: bool) -> None:
    try:
        os.setxattr(fd, name, value)
    except OSError as exc:
        if strict or exc.errno not in _IGNORED_XATTR_ERRORS:
            raise


def _set_xattr_path(path: str, name: str, value: bytes) -> None:
    try:
        os.setxattr(path, name, value, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in _IGNORED_XATTR_ERRORS:
            raise


def _copy(source: Any, fd: int, size: int, name: str) -> None:
    remaining = size
    while remaining > 0:
        data = source.read(min(CHUNK, remaining))
        if not data:
            raise UnpackError(f"{name}: unexpected end of archive data")
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        remaining -= len(data)


# =========================================================================== entry point
def unpack(
    source: Readable,
    root: Path,
    writer: ContentWriter | None = None,
    same_owner: bool | None = None,
    on_entry: Callable[[int], None] | None = None,
    hash_stream: bool = True,
) -> UnpackResult:
    """Extract the (possibly compressed) tar ``source`` into ``root``. Blocking.

    ``writer`` receives the uncompressed stream (it is not committed here). ``same_owner``
    defaults to "running as root". ``on_entry(count)`` is called after each entry.
    ``hash_stream=False`` skips hashing when there is no writer (the caller hashes the
    same bytes elsewhere); ``diff_id`` is then empty."""
    plain, compression = open_uncompressed(source)
    tee = _Tee(plain, writer, hash_stream)
    extractor = _Extractor(root, os.geteuid() == 0 if same_owner is None else same_owner)
    try:
        _extract_all(tee, extractor, on_entry)
        extractor.finish()
        tee.drain()  # the diff_id covers the whole stream, padding included
    finally:
        extractor.close()
    return UnpackResult(
        diff_id=tee.digest,
        tar_size=tee.size,
        size=extractor.size,
        entries=extractor.entries,
        compression=compression,
    )


def _extract_all(
    tee: _Tee, extractor: _Extractor, on_entry: Callable[[int], None] | None
) -> None:
    archive = TarReader(tee)
    member: TarMember | None = None
    try:
        for member in archive:
            try:
                extractor.add(member, archive)
            except UnpackError:
                raise
            except (OSError, ValueError, OverflowError) as exc:
                if isinstance(exc, TarFormatError):
                    raise
                raise UnpackError(f"extracting {member.name!r}: {exc}") from exc
            if on_entry is not None:
                on_entry(extractor.entries)
    except TarFormatError as exc:
        raise UnpackError(f"invalid tar archive: {exc}") from None


def _current_umask() -> int:
    """The process umask, read without changing it (os.umask would, for every thread)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022
