"""The build context: receiving the request body's tar, and the Dockerfile in it.

``receive_context`` streams the body (plain tar, or gzip / bzip2 / xz — ``--compress``)
through a bounded pipe into a worker thread that extracts it below ``dest``; the event
loop only hands chunks over. Then, still in the thread, it reads the Dockerfile and
applies ``.dockerignore`` (moby ``builder/remotecontext/detect.go``).

Containment (reliability B25, CVE-2014-6407). dockerd extracts the context inside a
chroot of the context directory (``chrootarchive.Untar``); we get the same result
without one:

- Entry names are cleaned lexically and clamped at the context root: ``../x`` lands at
  ``x``, ``/abs/y`` at ``abs/y`` (what the chroot does to dockerd).
- Parent directories are resolved one component at a time with ``openat(O_NOFOLLOW)``
  (``engine.rootscope``): a symlink met on the way is resolved *inside* the
  context, as in a chroot, so ``link -> /etc`` followed by ``link/x`` writes
  ``<ctx>/etc/x``. The last component is never followed (``O_EXCL|O_NOFOLLOW``,
  ``symlinkat``, ``linkat`` without ``AT_SYMLINK_FOLLOW``).
- A hardlink must name an entry already extracted into the context (its name resolved the
  same way); anything else is refused.
- Device nodes and FIFOs are skipped: a context is files for COPY, and a node would only
  be a way to reach host devices. Ownership is not restored (the builder resets it to
  root or ``--chown`` when copying); modes and mtimes are.

The same extractor (``SafeExtractor``) serves ``ADD`` of a local archive (engine.builder
.copy), in its "contained" mode: names are relative to the destination directory and
one that climbs out of it is an error, as dockerd's ``breakoutError``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from engine import rootscope
from engine.builder.ignore import IgnoreRules, clean_path
from engine.errors import InvalidParameter
from engine.images.tarstream import TarFormatError, TarMember, TarReader
from engine.images.unpack import CHUNK, Readable, UnpackError, make_room, open_uncompressed, run_fed
from engine.pathnames import clean_components

log = logging.getLogger(__name__)

DEFAULT_DOCKERFILE = "Dockerfile"
DOCKERIGNORE = ".dockerignore"
MAX_DOCKERFILE = 32 << 20  # a Dockerfile is text for the parser, held in memory whole


class ContextError(InvalidParameter):
    """The context is not a tar we accept (400)."""


@dataclass
class BuildContext:
    """An extracted context. ``root`` belongs to the caller (it removes it)."""

    root: Path
    dockerfile: str  # the Dockerfile's name in the context, as found ("dockerfile" fallback)
    dockerfile_text: bytes
    ignore: IgnoreRules = field(default_factory=IgnoreRules.empty)
    entries: int = 0

    @property
    def source_root(self) -> Path:
        """Where COPY/ADD sources are looked up (``resolve_sources``' ``src_root``)."""
        return self.root


# =========================================================================== receiving
async def receive_context(
    chunks: AsyncIterator[bytes], dest: Path, dockerfile: str
) -> BuildContext:
    """Extract the request body into ``dest`` (an empty directory the caller made and
    removes) and read the Dockerfile. Errors are InvalidParameter with dockerd's text."""
    return await run_fed(chunks, prepare_context, dest, dockerfile,
                         name="wharfd-build-context", aborted="build context upload aborted")


def prepare_context(source: Readable, dest: Path, dockerfile: str) -> BuildContext:
    """The blocking part of ``receive_context`` (also usable from a thread directly)."""
    try:
        entries = extract_context(source, dest)
        name, text = read_dockerfile(dest, dockerfile)
        rules = apply_dockerignore(dest)
    except RecursionError:
        # The walks recurse per directory level; only a crafted context gets this deep.
        raise ContextError("invalid build context: directory tree too deep") from None
    return BuildContext(dest, name, text, rules, entries)


def extract_context(source: Readable, dest: Path) -> int:
    """Extract the (possibly compressed) context tar; returns the number of entries."""
    try:
        plain, compression = open_uncompressed(source)
        if compression == "zstd":
            # dockerd 20.10 does not accept zstd contexts either; no client sends them.
            raise ContextError("invalid build context: zstd compression is not supported")
        root_fd = rootscope.open_root(dest)
        try:
            extractor = SafeExtractor(root_fd, (), clamp=True)
            return extractor.extract(plain, "build context")
        finally:
            os.close(root_fd)
    except ContextError:
        raise
    except UnpackError as exc:
        raise ContextError(f"invalid build context: {exc}") from None


# =========================================================================== extraction
class SafeExtractor:
    """Extract a tar below ``base`` (real directory parts) of the tree held by
    ``root_fd``, never writing outside that tree. Blocking.

    ``clamp``: a name climbing above ``base`` is clamped at it (contexts); otherwise it
    is an error (ADD). ``keep_owner``: restore numeric owners (ADD keeps the archive's
    owners, as dockerd). ``devices``: create device nodes and FIFOs (ADD, as root)."""

    def __init__(
        self, root_fd: int, base: tuple[str, ...], *, clamp: bool,
        keep_owner: bool = False, devices: bool = False, display_base: str = "/",
    ) -> None:
        self._root_fd = root_fd
        self._base = base
        self._clamp = clamp
        self._keep_owner = keep_owner and os.geteuid() == 0
        self._devices = devices and os.geteuid() == 0
        self._display_base = display_base
        self._parent: rootscope.Target | None = None
        self._parent_key: tuple[str, ...] | None = None
        self._dirs: dict[tuple[str, ...], TarMember] = {}
        self.entries = 0

    # -- driving -------------------------------------------------------------------------
    def extract(self, plain: Readable, what: str) -> int:
        archive = TarReader(plain)
        try:
            for member in archive:
                self.entries += 1
                try:
                    self._add(member, archive)
                except (InvalidParameter, TarFormatError):
                    raise
                except (OSError, ValueError, OverflowError) as exc:
                    raise ContextError(
                        f"invalid {what}: extracting {member.name!r}: {_os_text(exc)}"
                    ) from None
            self._finish_dirs()
        except TarFormatError as exc:
            raise ContextError(f"invalid {what}: {exc}") from None
        finally:
            self._drop_parent()
        return self.entries

    def _path(self, name: str) -> list[str]:
        """The entry's path below the root (base + the cleaned name)."""
        if self._clamp:
            return [*self._base, *clean_components(name)]
        rel = clean_path(name.lstrip("/") or ".")
        if rel == ".." or rel.startswith("../"):
            # dockerd's breakoutError text
            raise InvalidParameter(f'"{name}" is outside of "{self._display_base}"')
        return [*self._base, *clean_components(rel)]

    def _add(self, member: TarMember, archive: TarReader) -> None:
        parts = self._path(member.name)
        if len(parts) <= len(self._base):
            if member.isdir():
                self._dirs[tuple(parts)] = member  # the base itself takes the metadata
            return
        if member.isdir():
            self._directory(parts, member)
        elif member.isreg():
            self._regular(parts, member, archive)
        elif member.issym():
            self._symlink(parts, member)
        elif member.islnk():
            self._hardlink(parts, member)
        elif (member.ischr() or member.isblk() or member.isfifo()) and self._devices:
            self._device(parts, member)
        else:
            log.debug("build: skipping %s (tar type %r)", member.name, member.type)

    # -- parents -------------------------------------------------------------------------
    def _parent_of(self, parts: list[str]) -> tuple[int, str]:
        """The directory holding the last component (resolved chroot-style inside the
        root, missing ones created 0755) and that component's name."""
        key = tuple(parts[:-1])
        if key != self._parent_key or self._parent is None:
            self._drop_parent()
            self._parent = open_dir_in_scope(self._root_fd, list(key), create=True)
            self._parent_key = key
        return self._parent.dir_fd, parts[-1]

    def _drop_parent(self) -> None:
        if self._parent is not None:
            self._parent.close()
        self._parent, self._parent_key = None, None

    def _clear(self, dir_fd: int, name: str, keep_dir: bool) -> None:
        if make_room(dir_fd, name, keep_dir):
            # The cached parent may have been reached through what just went away.
            self._drop_parent()

    # -- entry kinds ---------------------------------------------------------------------
    def _directory(self, parts: list[str], member: TarMember) -> None:
        dir_fd, name = self._parent_of(parts)
        self._clear(dir_fd, name, keep_dir=True)
        dir_fd, name = self._parent_of(parts)
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=dir_fd)  # the real mode comes last (_finish_dirs)
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        real = self._parent.parts if self._parent is not None else ()
        if stat.S_ISDIR(st.st_mode):
            self._dirs[(*real, name)] = member

    def _regular(self, parts: list[str], member: TarMember, archive: TarReader) -> None:
        dir_fd, name = self._parent_of(parts)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
        except FileExistsError:
            self._clear(dir_fd, name, keep_dir=False)
            dir_fd, name = self._parent_of(parts)
            fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
        try:
            _copy_data(archive, fd, member.size, member.name)
            if self._keep_owner:
                os.fchown(fd, member.uid, member.gid)
            os.fchmod(fd, member.mode & 0o7777)  # after chown, which clears set-id bits
            os.utime(fd, ns=_times_ns(member))
        finally:
            os.close(fd)

    def _symlink(self, parts: list[str], member: TarMember) -> None:
        dir_fd, name = self._parent_of(parts)
        self._clear(dir_fd, name, keep_dir=False)
        dir_fd, name = self._parent_of(parts)
        os.symlink(member.linkname, name, dir_fd=dir_fd)  # a target is only data here
        if self._keep_owner:
            os.chown(name, member.uid, member.gid, dir_fd=dir_fd, follow_symlinks=False)
        os.utime(name, ns=_times_ns(member), dir_fd=dir_fd, follow_symlinks=False)

    def _hardlink(self, parts: list[str], member: TarMember) -> None:
        target = self._path(member.linkname)
        outside = ContextError(
            f"invalid hardlink {member.name!r} -> {member.linkname!r}: "
            "hardlink target outside the build context"
            if self._clamp else
            f"invalid hardlink {member.name!r} -> {member.linkname!r}: target not found"
        )
        if len(target) <= len(self._base):
            raise outside
        try:
            held = rootscope.resolve(self._root_fd, target, follow_last=False)
        except (FileNotFoundError, NotADirectoryError):
            raise outside from None
        with held:
            try:
                src = held.lstat()
            except FileNotFoundError:
                raise outside from None
            if stat.S_ISDIR(src.st_mode) or held.name is None:
                raise ContextError(f"invalid hardlink {member.name!r}: target is a directory")
            dir_fd, name = self._parent_of(parts)
            try:
                dst = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if (dst.st_dev, dst.st_ino) == (src.st_dev, src.st_ino):
                    return  # already that file
            except FileNotFoundError:
                pass
            self._clear(dir_fd, name, keep_dir=False)
            dir_fd, name = self._parent_of(parts)
            os.link(held.name, name, src_dir_fd=held.dir_fd, dst_dir_fd=dir_fd,
                    follow_symlinks=False)

    def _device(self, parts: list[str], member: TarMember) -> None:
        dir_fd, name = self._parent_of(parts)
        self._clear(dir_fd, name, keep_dir=False)
        dir_fd, name = self._parent_of(parts)
        if member.isfifo():
            os.mkfifo(name, 0o600, dir_fd=dir_fd)
        else:
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(name, kind | 0o600, os.makedev(member.devmajor, member.devminor),
                     dir_fd=dir_fd)
        if self._keep_owner:
            os.chown(name, member.uid, member.gid, dir_fd=dir_fd, follow_symlinks=False)
        # O_PATH: opening a FIFO or a device for real could block or act on hardware.
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            os.chmod(f"/proc/self/fd/{fd}", member.mode & 0o7777)
        finally:
            os.close(fd)
        os.utime(name, ns=_times_ns(member), dir_fd=dir_fd, follow_symlinks=False)

    # -- the end -------------------------------------------------------------------------
    def _finish_dirs(self) -> None:
        """Directory owners, modes and times last (children changed the times, and a
        read-only mode would have stopped us), deepest first."""
        self._drop_parent()
        for path in sorted(self._dirs, key=len, reverse=True):
            member = self._dirs[path]
            try:
                fd = open_real_dir(self._root_fd, path)
            except OSError:
                continue  # replaced by a later entry
            try:
                if self._keep_owner:
                    os.fchown(fd, member.uid, member.gid)
                os.fchmod(fd, member.mode & 0o7777)
                os.utime(fd, ns=_times_ns(member))
            finally:
                os.close(fd)


def open_dir_in_scope(
    root_fd: int, parts: list[str], *, create: bool, mode: int = 0o755
) -> rootscope.Target:
    """``parts`` as a directory below ``root_fd``, every symlink (the last one too)
    resolved inside the root; missing directories are made when ``create``. The Target
    holds the directory itself (``name`` None, ``dir_parts`` its real path)."""
    target = rootscope.resolve(root_fd, parts, follow_last=True, create_dirs=create)
    with target:
        if target.name is None:
            return rootscope.Target(os.dup(target.dir_fd), None, target.dir_parts)
        if create:
            try:
                os.mkdir(target.name, mode, dir_fd=target.dir_fd)
            except FileExistsError:
                pass
        try:
            fd = target.open_dir()
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", target.path) from None
            raise
        return rootscope.Target(fd, None, target.parts)


def open_real_dir(root_fd: int, parts: tuple[str, ...]) -> int:
    """Open a path made of real directories only (never through a symlink)."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            child = os.open(part, rootscope.DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _times_ns(member: TarMember) -> tuple[int, int]:
    mtime = int(float(member.mtime) * 1_000_000_000)
    return mtime, mtime


def _copy_data(archive: TarReader, fd: int, size: int, name: str) -> None:
    remaining = size
    while remaining > 0:
        data = archive.read(min(CHUNK, remaining))
        if not data:
            raise TarFormatError(f"{name}: unexpected end of archive data")
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        remaining -= len(data)


def _os_text(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc)


# =========================================================================== Dockerfile
def forbidden(path: str) -> InvalidParameter:
    """dockerd's error for a path climbing out of the context (its ``FullPath``)."""
    return InvalidParameter(f"forbidden path outside the build context: {path} ()")


def escapes(path: str) -> bool:
    """Whether ``filepath.Join(root, path)`` leaves ``root`` (a leading ``/`` cannot)."""
    if path.startswith("/"):
        return False
    cleaned = clean_path(path)
    return cleaned == ".." or cleaned.startswith("../")


def read_dockerfile(root: Path, dockerfile: str) -> tuple[str, bytes]:
    """The Dockerfile's name (after the lowercase fallback) and its content.

    As moby's ``withDockerfileFromContext``: the name is a path in the context (a
    symlink is followed inside the context only); a missing default ``Dockerfile``
    falls back to ``dockerfile``."""
    name = dockerfile or DEFAULT_DOCKERFILE
    if escapes(name):
        raise forbidden(name)
    text = _read_in_scope(root, name)
    if text is None and name == DEFAULT_DOCKERFILE:
        lower = name.lower()
        text = _read_in_scope(root, lower)
        if text is not None:
            name = lower
    if text is None:
        raise InvalidParameter(f"Cannot locate specified Dockerfile: {name}")
    if not text:
        raise InvalidParameter(f"the Dockerfile ({name}) cannot be empty")
    return name, text


def _read_in_scope(root: Path, name: str) -> bytes | None:
    """A file's content, every symlink resolved inside ``root``; None when missing."""
    root_fd = rootscope.open_root(root)
    try:
        try:
            target = rootscope.resolve(root_fd, rootscope.clean(name), follow_last=True)
        except (FileNotFoundError, NotADirectoryError):
            return None
        with target:
            try:
                st = target.lstat()
            except FileNotFoundError:
                return None
            if not stat.S_ISREG(st.st_mode) or target.name is None:
                raise InvalidParameter(
                    f"unexpected error reading Dockerfile: read {name}: is not a regular file"
                )
            fd = rootscope.open_regular(target.dir_fd, target.name)
            if fd is None:
                return None
        try:
            return _read_fd(fd, name)
        finally:
            os.close(fd)
    finally:
        os.close(root_fd)


def _read_fd(fd: int, name: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        data = os.read(fd, CHUNK)
        if not data:
            return b"".join(chunks)
        size += len(data)
        if size > MAX_DOCKERFILE:
            raise InvalidParameter(f"the Dockerfile ({name}) is too large")
        chunks.append(data)


def read_in_root(root: Path, path: str, limit: int = 4 << 20) -> bytes | None:
    """A small regular file of a rootfs (``/etc/passwd`` for ``--chown``), every symlink
    resolved inside ``root``; None when missing or not a regular file."""
    root_fd = rootscope.open_root(root)
    try:
        return rootscope.read_small_file(root_fd, path, limit)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None  # a symlink loop in the image: as good as missing
        raise
    finally:
        os.close(root_fd)


# =========================================================================== .dockerignore
def read_ignore_rules(root: Path) -> IgnoreRules:
    """The context's ``.dockerignore`` (none: no rules)."""
    text = _read_in_scope_plain(root, DOCKERIGNORE)
    if text is None:
        return IgnoreRules.empty()
    return IgnoreRules.parse(text.decode("utf-8", "surrogateescape"))


def _read_in_scope_plain(root: Path, name: str) -> bytes | None:
    try:
        return _read_in_scope(root, name)
    except InvalidParameter:
        return None  # a .dockerignore that is a directory (or such) is no .dockerignore


def apply_dockerignore(root: Path) -> IgnoreRules:
    """Remove what ``.dockerignore`` excludes; returns the rules.

    The client already left those files out, and sent the Dockerfile and .dockerignore
    anyway (the daemon needs them); dockerd's ``removeDockerfile`` then removes those two
    if they are excluded, so ``COPY . /`` does not copy them. We do the same and also
    filter everything else, for clients that did not (the Dockerfile was read first)."""
    rules = read_ignore_rules(root)
    if not rules:
        return rules
    root_fd = rootscope.open_root(root)
    try:
        _filter_dir(root_fd, "", rules)
    finally:
        os.close(root_fd)
    return rules


def _filter_dir(dir_fd: int, prefix: str, rules: IgnoreRules) -> None:
    """Walk (never through symlinks) and remove excluded entries, as the client's walk
    would have left them out: a skipped directory goes whole; a matched directory with
    exceptions inside is entered and kept only if something in it is kept."""
    for name in sorted(os.listdir(dir_fd)):
        rel = prefix + name
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            if rules.matches(rel):
                os.unlink(name, dir_fd=dir_fd)
            continue
        if rules.skips_dir(rel):
            shutil.rmtree(name, dir_fd=dir_fd)
            continue
        child = os.open(name, rootscope.DIR_FLAGS, dir_fd=dir_fd)
        try:
            _filter_dir(child, rel + "/", rules)
            empty = not os.listdir(child)
        finally:
            os.close(child)
        if empty and rules.matches(rel):
            os.rmdir(name, dir_fd=dir_fd)
