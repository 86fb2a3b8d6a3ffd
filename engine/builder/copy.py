"""COPY and ADD: finding the sources, their cache key, and copying them into a rootfs.

Blocking functions: the build manager calls them with ``asyncio.to_thread``. The rules
mirror moby 20.10's classic builder (``builder/dockerfile/copy.go``, ``internals.go``,
``pkg/archive``):

Sources (``calcCopyInfo``)
    A leading ``/`` (one) and ``./`` are dropped: sources are relative to the source root
    (the context, or a stage's / image's rootfs for ``--from``). A path whose ``..``
    climbs above the root is ``forbidden path outside the build context``. Every symlink
    on the path is resolved *inside* the root — **the last one too**: dockerd resolves a
    source with ``ResolveScopedPath(path, true)`` and stats the result, so ``COPY link``
    copies what ``link`` points to (a file's content, or a directory's contents), named
    after ``link``; symlinks *inside* a copied directory stay symlinks. A link that leads
    nowhere inside the root (``link -> /etc`` in a context) is "file not found".
    Wildcards (``*``, ``?``, ``[``) are matched per path component as Go's
    ``filepath.Match`` against a walk of the root that does not enter symlinked
    directories; each match is then resolved as above.

Destination (``performCopyForInfo``)
    A relative destination is joined to WORKDIR. The destination itself is resolved
    in the rootfs (symlinks followed inside it). A directory source copies its
    *contents* into the destination (made if missing). A file goes *into* the
    destination when that ends in ``/`` or is an existing directory, else it becomes
    that path. More than one source needs a destination ending in ``/``.

Ownership and modes (``copyFile``, ``copyDirectory``, ``fixPermissions``)
    Everything copied belongs to ``--chown`` (default 0:0, never the context's owner).
    Parents made for a *file* belong to the chown owner too (``MkdirAllAndChownNew``
    with that identity); parents made for a *directory* copy or an ADD extraction are
    root's, and a destination directory made by the copy takes the chown owner. New
    directories are 0755. Modes are kept (``--chmod``, a BuildKit flag 20.10's classic
    builder rejected, replaces the mode of every copied entry). Modification times are
    kept, truncated to whole seconds (the tar headers dockerd copies through).
    An existing directory meets a directory: merged. Anything else in the way is
    replaced — even a symlink to a directory (``/bin -> usr/bin``) by a directory, as
    dockerd's untar does.

ADD of a local archive (``isArchivePath``)
    A source *file* whose content (plain, gzip, bzip2 or xz) starts with a tar header is
    extracted into the destination directory instead: entries keep the archive's owners
    (dockerd does not chown them), and a name climbing out of the destination is an
    error. Everything is resolved inside the rootfs.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine import rootscope
from engine.builder.context import (
    SafeExtractor,
    escapes,
    open_dir_in_scope,
    open_real_dir,
    read_in_root,
)
from engine.builder.ignore import clean_path
from engine.errors import InvalidParameter, SystemError_
from engine.images.tarstream import TarFormatError, TarReader
from engine.images.unpack import CHUNK, UnpackError, open_uncompressed

log = logging.getLogger(__name__)

_ROOT_OWNER = (0, 0)
_USER_ERRORS = (errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ELOOP, errno.ENOENT)


# =========================================================================== sources
@dataclass(frozen=True)
class CopySource:
    """One resolved source (moby's ``copyInfo``)."""

    rel: str  # the path as given (trimmed) or the wildcard match: its base names the copy
    real: tuple[str, ...]  # where it leads below the source root, every symlink followed
    is_dir: bool

    @property
    def name(self) -> str:
        """Go's ``filepath.Base(rel)``: the name a file takes inside a directory."""
        stripped = self.rel.rstrip("/")
        if not stripped:
            return "/" if self.rel else "."
        return stripped.rsplit("/", 1)[-1]


def resolve_sources(
    src_root: Path, patterns: Sequence[str], allow_missing_globs: bool = False, *,
    cmd: str = "COPY", in_context: bool = True,
) -> list[CopySource]:
    """The sources named by ``patterns`` (already variable-expanded), in dockerd's order.

    ``in_context`` False (``COPY --from``) drops the ".dockerignore" hint from the
    not-found message, as dockerd does. ``allow_missing_globs`` turns "nothing matched
    at all" into an empty list instead of dockerd's error."""
    root_fd = rootscope.open_root(src_root)
    try:
        found: list[CopySource] = []
        for orig in patterns:
            path = _trim_source(orig)
            if _has_wildcards(path):
                for rel in glob(root_fd, path):
                    found.append(_resolve_one(root_fd, rel, cmd, in_context))
            else:
                found.append(_resolve_one(root_fd, path, cmd, in_context))
    finally:
        os.close(root_fd)
    if not found and not allow_missing_globs:
        raise InvalidParameter(f"{cmd} failed: no source files were specified")
    return found


def _trim_source(path: str) -> str:
    if len(path) > 1 and path.startswith("/"):
        path = path[1:]
    return path.removeprefix("./")


def _has_wildcards(path: str) -> bool:
    """moby's ``containsWildcards``: ``*``, ``?`` or ``[`` not escaped by ``\\``."""
    i = 0
    while i < len(path):
        if path[i] == "\\":
            i += 2
            continue
        if path[i] in "*?[":
            return True
        i += 1
    return False


def _resolve_one(root_fd: int, path: str, cmd: str, in_context: bool) -> CopySource:
    if escapes(path):
        raise InvalidParameter(
            f"{cmd} failed: forbidden path outside the build context: {path} ()"
        )
    try:
        with rootscope.resolve(root_fd, rootscope.clean(path), follow_last=True) as target:
            st = target.lstat()
            real = target.parts
    except FileNotFoundError:
        hint = "file not found in build context or excluded by .dockerignore: "
        raise InvalidParameter(
            f"{cmd} failed: {hint if in_context else ''}stat {path}: file does not exist"
        ) from None
    except OSError as exc:
        raise InvalidParameter(f"{cmd} failed: stat {path}: {_reason(exc)}") from None
    return CopySource(path, real, stat.S_ISDIR(st.st_mode))


def glob(root_fd: int, pattern: str) -> list[str]:
    """Paths below the root matching ``pattern`` component by component (Go's
    ``filepath.Match`` over moby's lexical walk, which never enters symlinks)."""
    matchers = [_go_match_regex(part) for part in pattern.split("/")]
    return list(_glob_walk(root_fd, "", matchers, 0))


def _glob_walk(
    dir_fd: int, prefix: str, matchers: list[re.Pattern[str] | None], depth: int
) -> Iterator[str]:
    matcher = matchers[depth]
    if matcher is None:
        return  # a malformed pattern matches nothing (dockerd ignores the error)
    last = depth == len(matchers) - 1
    for name in sorted(os.listdir(dir_fd)):
        if matcher.fullmatch(name) is None:
            continue
        if last:
            yield prefix + name
            continue
        try:
            child = os.open(name, rootscope.DIR_FLAGS, dir_fd=dir_fd)
        except OSError:
            continue  # not a directory, or a symlink: the walk does not go there
        try:
            yield from _glob_walk(child, prefix + name + "/", matchers, depth + 1)
        finally:
            os.close(child)


def _go_match_regex(pattern: str) -> re.Pattern[str] | None:
    """One component of a Go ``filepath.Match`` pattern as a regexp (None: malformed)."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "\\":
            if i >= n:
                return None
            out.append(re.escape(pattern[i]))
            i += 1
        elif ch == "[":
            parsed = _go_class(pattern, i)
            if parsed is None:
                return None
            text, i = parsed
            out.append(text)
        else:
            out.append(re.escape(ch))
    try:
        return re.compile("".join(out), re.DOTALL)
    except re.error:
        return None


def _go_class(pattern: str, i: int) -> tuple[str, int] | None:
    """A ``[...]`` class starting after ``[``: its regexp and the index after ``]``."""
    n = len(pattern)
    negate = i < n and pattern[i] == "^"
    if negate:
        i += 1
    ranges = 0
    body: list[str] = []
    while True:
        if i >= n:
            return None
        if pattern[i] == "]" and ranges:
            i += 1
            break
        lo, i = _class_char(pattern, i)
        if lo is None:
            return None
        hi: str | None = lo
        if i < n and pattern[i] == "-":
            hi, i = _class_char(pattern, i + 1)
        if hi is None:
            return None
        ranges += 1
        if lo <= hi:  # Go accepts a reversed range; it matches nothing
            body.append(re.escape(lo) if lo == hi else f"{re.escape(lo)}-{re.escape(hi)}")
    if not body:
        return ("[^/]" if negate else "(?!)"), i
    return f"[{'^/' if negate else ''}{''.join(body)}]", i


def _class_char(pattern: str, i: int) -> tuple[str | None, int]:
    """Go's ``getEsc``: one (possibly escaped) character of a class."""
    n = len(pattern)
    if i >= n or pattern[i] in "-]":
        return None, i
    if pattern[i] == "\\":
        i += 1
        if i >= n:
            return None, i
    return pattern[i], i + 1


# =========================================================================== cache key
def content_digest(src_root: Path, sources: Sequence[CopySource]) -> str:
    """The sources' cache key, in the forms dockerd prints in the history
    (``COPY file:<hex> in /dest``): ``file:`` for a file, ``dir:`` for a directory,
    ``multi:`` over several.

    Each entry is hashed like moby's tarsum v1 (``NewFileHash``): the tar header fields
    name (relative to the source root, a directory with ``/``), mode, size, type, link
    target and device numbers — never the mtime — then the content. Unlike tarsum we
    leave out uid/gid/uname/gname too: the copy resets ownership, and the context's
    owners depend on the client machine. A directory is the sorted list of its entries'
    hashes (the directory included unless it is the root), joined by ``,`` and hashed."""
    root_fd = rootscope.open_root(src_root)
    try:
        hashes = [_source_hash(root_fd, source) for source in sources]
    except RecursionError:
        raise InvalidParameter("COPY failed: directory tree too deep") from None
    finally:
        os.close(root_fd)
    if len(hashes) == 1:
        return hashes[0]
    return _hash_list("multi", hashes)


def _hash_list(prefix: str, items: Sequence[str]) -> str:
    return prefix + ":" + hashlib.sha256(",".join(items).encode()).hexdigest()


def _source_hash(root_fd: int, source: CopySource) -> str:
    with rootscope.resolve(root_fd, list(source.real), follow_last=True) as target:
        st = target.lstat()
        if not stat.S_ISDIR(st.st_mode):
            assert target.name is not None  # only directories resolve to no name
            return "file:" + _entry_hash(target.dir_fd, target.name, "/".join(source.real), st)
        fd = target.open_dir()
    try:
        hashes: list[str] = []
        if source.real:
            hashes.append(_entry_hash(-1, "", "/".join(source.real), st))
        _hash_tree(fd, "/".join(source.real), hashes)
    finally:
        os.close(fd)
    return _hash_list("dir", sorted(hashes))


def _hash_tree(dir_fd: int, prefix: str, out: list[str]) -> None:
    for name in sorted(os.listdir(dir_fd)):
        rel = f"{prefix}/{name}" if prefix else name
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        out.append(_entry_hash(dir_fd, name, rel, st))
        if stat.S_ISDIR(st.st_mode):
            child = os.open(name, rootscope.DIR_FLAGS, dir_fd=dir_fd)
            try:
                _hash_tree(child, rel, out)
            finally:
                os.close(child)


_TYPEFLAGS = {
    stat.S_IFREG: "0", stat.S_IFLNK: "2", stat.S_IFCHR: "3", stat.S_IFBLK: "4",
    stat.S_IFDIR: "5", stat.S_IFIFO: "6",
}


def _entry_hash(dir_fd: int, name: str, rel: str, st: os.stat_result) -> str:
    kind = stat.S_IFMT(st.st_mode)
    link = os.readlink(name, dir_fd=dir_fd) if kind == stat.S_IFLNK else ""
    device = kind in (stat.S_IFCHR, stat.S_IFBLK)
    fields = (
        ("name", rel + "/" if kind == stat.S_IFDIR else rel),
        ("mode", str(stat.S_IMODE(st.st_mode))),
        ("size", str(st.st_size if kind == stat.S_IFREG else 0)),
        ("typeflag", _TYPEFLAGS.get(kind, "0")),
        ("linkname", link),
        ("devmajor", str(os.major(st.st_rdev) if device else 0)),
        ("devminor", str(os.minor(st.st_rdev) if device else 0)),
    )
    digest = hashlib.sha256()
    for key, value in fields:
        digest.update((key + value).encode("utf-8", "surrogateescape"))
    if kind == stat.S_IFREG and st.st_size:
        fd = rootscope.open_regular(dir_fd, name)
        if fd is not None:
            try:
                while data := os.read(fd, CHUNK):
                    digest.update(data)
            finally:
                os.close(fd)
    return digest.hexdigest()


# =========================================================================== copying
@dataclass
class _Copy:
    """What one copy applies to every entry it writes."""

    owner: tuple[int, int]
    chmod: int | None
    base_fd: int = -1  # the destination directory of a directory copy (hardlinks)
    links: dict[tuple[int, int], tuple[str, ...]] = field(default_factory=dict)

    def mode(self, st: os.stat_result) -> int:
        return self.chmod if self.chmod is not None else stat.S_IMODE(st.st_mode)


def normalize_dest(workdir: str, dest: str) -> str:
    """moby's ``normalizeDest``: a relative destination is joined to WORKDIR, keeping a
    trailing slash (which means "a directory")."""
    if dest.startswith("/"):
        return dest
    joined = clean_path("/" + workdir + "/" + dest)
    if dest.endswith("/") and not joined.endswith("/"):
        joined += "/"
    return joined


def copy_into(
    src_root: Path, sources: Sequence[CopySource], dest_root: Path, dest: str,
    workdir: str, *, chown: tuple[int, int] | None, chmod: int | None,
    extract_archives: bool, cmd: str = "COPY",
) -> None:
    """Copy ``sources`` (from ``resolve_sources`` on ``src_root``) to ``dest`` in the
    rootfs ``dest_root``, with Docker's rules (see the module docstring)."""
    if len(sources) > 1 and not dest.endswith("/"):
        raise InvalidParameter(
            f"When using {cmd} with more than one source file, the destination must be a "
            "directory and end with a /"
        )
    target = normalize_dest(workdir or "/", dest)
    src_fd = rootscope.open_root(src_root)
    try:
        dst_fd = rootscope.open_root(dest_root)
        try:
            for source in sources:
                job = _Copy(chown if chown is not None else _ROOT_OWNER, chmod)
                try:
                    _copy_source(src_fd, source, dst_fd, target, job, extract_archives)
                except InvalidParameter as exc:
                    raise InvalidParameter(f"failed to copy files: {exc}") from None
                except RecursionError:
                    raise InvalidParameter("failed to copy files: directory tree too deep") \
                        from None
                except OSError as exc:
                    text = f"failed to copy files: {_describe(exc)}"
                    if exc.errno in _USER_ERRORS:
                        raise InvalidParameter(text) from None
                    raise SystemError_(text) from exc
        finally:
            os.close(dst_fd)
    finally:
        os.close(src_fd)


def _copy_source(
    src_fd: int, source: CopySource, dst_fd: int, target: str, job: _Copy, extract: bool
) -> None:
    with rootscope.resolve(src_fd, list(source.real), follow_last=True) as src:
        st = src.lstat()
        if stat.S_ISDIR(st.st_mode):
            src_dir = src.open_dir()
            try:
                _copy_directory(src_dir, dst_fd, target, job)
            finally:
                os.close(src_dir)
            return
        assert src.name is not None
        if extract and stat.S_ISREG(st.st_mode) and is_archive(src.dir_fd, src.name):
            _extract_archive(src.dir_fd, src.name, dst_fd, target)
            return
        _copy_file(src.dir_fd, src.name, st, source.name, dst_fd, target, job)


def _dest_parts(dst_fd: int, target: str) -> list[str]:
    """The destination's real path: every existing symlink followed inside the rootfs
    (``ResolveScopedPath(dest, true)``), missing components taken as written."""
    return rootscope.clean(rootscope.resolved_path(dst_fd, rootscope.clean(target)))


def _is_dir(dst_fd: int, parts: list[str]) -> bool:
    try:
        fd = open_real_dir(dst_fd, tuple(parts))
    except OSError:
        return False
    os.close(fd)
    return True


def mkdir_all(root_fd: int, parts: list[str], owner: tuple[int, int]) -> rootscope.Target:
    """``parts`` as a directory (symlinks followed inside the root), each missing one
    made 0755 and owned by ``owner`` (idtools ``MkdirAllAndChownNew``: only new ones)."""
    for depth in range(1, len(parts) + 1):
        with rootscope.resolve(root_fd, parts[:depth], follow_last=True) as step:
            if step.name is None:
                continue
            try:
                st = step.lstat()
            except FileNotFoundError:
                os.mkdir(step.name, 0o700, dir_fd=step.dir_fd)
                fd = step.open_dir()
                try:
                    os.fchown(fd, *owner)
                    os.fchmod(fd, 0o755)  # exactly 0755, whatever the umask
                finally:
                    os.close(fd)
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(
                    errno.ENOTDIR, "not a directory", "mkdir " + rootscope.join(parts[:depth])
                )
    return open_dir_in_scope(root_fd, parts, create=False)


def _copy_directory(src_dir: int, dst_fd: int, target: str, job: _Copy) -> None:
    parts = _dest_parts(dst_fd, target)
    existed = _is_dir(dst_fd, parts)
    with mkdir_all(dst_fd, parts, _ROOT_OWNER) as dest:
        if not existed:
            os.fchown(dest.dir_fd, *job.owner)  # fixPermissions: a new destination is ours
        job.base_fd = dest.dir_fd
        _copy_children(src_dir, dest.dir_fd, (), job)


def _copy_children(src_dir: int, dst_dir: int, rel: tuple[str, ...], job: _Copy) -> None:
    for name in sorted(os.listdir(src_dir)):
        st = os.stat(name, dir_fd=src_dir, follow_symlinks=False)
        _copy_entry(src_dir, name, st, dst_dir, name, (*rel, name), job)


def _copy_file(
    src_dir: int, src_name: str, st: os.stat_result, base: str, dst_fd: int, target: str,
    job: _Copy,
) -> None:
    parts = _dest_parts(dst_fd, target)
    if target.endswith("/") or _is_dir(dst_fd, parts):
        parts = [*parts, base]
    if not parts:
        raise IsADirectoryError(errno.EISDIR, "is a directory", "/")
    with mkdir_all(dst_fd, parts[:-1], job.owner) as parent:
        _copy_entry(src_dir, src_name, st, parent.dir_fd, parts[-1], (), job)


def _copy_entry(
    src_dir: int, src_name: str, st: os.stat_result, dst_dir: int, name: str,
    rel: tuple[str, ...], job: _Copy,
) -> None:
    """One entry (a directory with everything below it); ``rel`` is its path below the
    destination directory of a directory copy (for hardlinks), () otherwise."""
    kind = stat.S_IFMT(st.st_mode)
    if kind == stat.S_IFDIR:
        _copy_dir_entry(src_dir, src_name, st, dst_dir, name, rel, job)
        return
    if kind == stat.S_IFSOCK:
        return  # tar cannot carry sockets: dockerd skips them too
    if kind == stat.S_IFREG and st.st_nlink > 1 and rel:
        first = job.links.get((st.st_dev, st.st_ino))
        if first is not None and _link_again(job, first, dst_dir, name):
            return
        job.links[(st.st_dev, st.st_ino)] = rel
    _clear(dst_dir, name, keep_dir=False)
    if kind == stat.S_IFREG:
        _write_regular(src_dir, src_name, st, dst_dir, name, job)
    elif kind == stat.S_IFLNK:
        os.symlink(os.readlink(src_name, dir_fd=src_dir), name, dir_fd=dst_dir)
        os.chown(name, *job.owner, dir_fd=dst_dir, follow_symlinks=False)
        os.utime(name, ns=_times(st), dir_fd=dst_dir, follow_symlinks=False)
    else:
        _write_node(st, dst_dir, name, job)


def _copy_dir_entry(
    src_dir: int, src_name: str, st: os.stat_result, dst_dir: int, name: str,
    rel: tuple[str, ...], job: _Copy,
) -> None:
    _clear(dst_dir, name, keep_dir=True)
    try:
        os.mkdir(name, 0o700, dir_fd=dst_dir)
    except FileExistsError:
        pass  # an existing directory: merged, and takes the new metadata
    child_dst = os.open(name, rootscope.DIR_FLAGS, dir_fd=dst_dir)
    try:
        child_src = os.open(src_name, rootscope.DIR_FLAGS, dir_fd=src_dir)
        try:
            _copy_children(child_src, child_dst, rel, job)
        finally:
            os.close(child_src)
        os.fchown(child_dst, *job.owner)
        os.fchmod(child_dst, job.mode(st))
        os.utime(child_dst, ns=_times(st))  # last: the children changed it
    finally:
        os.close(child_dst)


def _write_regular(
    src_dir: int, src_name: str, st: os.stat_result, dst_dir: int, name: str, job: _Copy
) -> None:
    src = rootscope.open_regular(src_dir, src_name)
    if src is None:
        raise FileNotFoundError(errno.ENOENT, "file vanished while copying", src_name)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        dst = os.open(name, flags, 0o600, dir_fd=dst_dir)
        try:
            _copy_content(src, dst)
            os.fchown(dst, *job.owner)
            os.fchmod(dst, job.mode(st))  # after chown, which clears set-id bits
            os.utime(dst, ns=_times(st))
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _write_node(st: os.stat_result, dst_dir: int, name: str, job: _Copy) -> None:
    if stat.S_ISFIFO(st.st_mode):
        os.mkfifo(name, 0o600, dir_fd=dst_dir)
    else:
        os.mknod(name, stat.S_IFMT(st.st_mode) | 0o600, st.st_rdev, dir_fd=dst_dir)
    os.chown(name, *job.owner, dir_fd=dst_dir, follow_symlinks=False)
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dst_dir)
    try:
        os.chmod(f"/proc/self/fd/{fd}", job.mode(st))  # never opened for real
    finally:
        os.close(fd)
    os.utime(name, ns=_times(st), dir_fd=dst_dir, follow_symlinks=False)


def _link_again(job: _Copy, first: tuple[str, ...], dst_dir: int, name: str) -> bool:
    """Hardlinks inside a copied directory stay hardlinks (tar records them so)."""
    try:
        holder = open_real_dir(job.base_fd, first[:-1])
    except OSError:
        return False
    try:
        _clear(dst_dir, name, keep_dir=False)
        os.link(first[-1], name, src_dir_fd=holder, dst_dir_fd=dst_dir,
                follow_symlinks=False)
    except OSError:
        return False
    finally:
        os.close(holder)
    return True


def _clear(dir_fd: int, name: str, keep_dir: bool) -> None:
    """Make room: whatever is in the way goes, except a directory for a directory."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        if not keep_dir:
            shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


def _copy_content(src: int, dst: int) -> None:
    """Kernel-side copy (reflinks where the file system can); plain reads otherwise."""
    try:
        while os.copy_file_range(src, dst, CHUNK * 8):
            pass
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP,
                             errno.EPERM, errno.EBADF):
            raise
    # copy_file_range advanced both offsets as far as it got: carry on from there.
    while data := os.read(src, CHUNK):
        view = memoryview(data)
        while view:
            view = view[os.write(dst, view):]


def _times(st: os.stat_result) -> tuple[int, int]:
    """mtime to the second (dockerd's tar headers), atime the same (as its untar)."""
    mtime = st.st_mtime_ns - st.st_mtime_ns % 1_000_000_000
    return mtime, mtime


# =========================================================================== ADD archives
class _FdReader:
    def __init__(self, fd: int) -> None:
        self._fd = fd

    def read(self, n: int = -1, /) -> bytes:
        return os.read(self._fd, n if n >= 0 else CHUNK)


def is_archive(dir_fd: int, name: str) -> bool:
    """moby's ``isArchivePath``: the (decompressed) content starts with a tar header.
    Only the compressions dockerd 20.10 knows count (not zstd)."""
    fd = rootscope.open_regular(dir_fd, name)
    if fd is None:
        return False
    try:
        plain, compression = open_uncompressed(_FdReader(fd))
        if compression == "zstd":
            return False
        return TarReader(plain).next() is not None
    except (TarFormatError, UnpackError, OSError, EOFError):
        return False
    finally:
        os.close(fd)


def _extract_archive(src_dir: int, src_name: str, dst_fd: int, target: str) -> None:
    parts = _dest_parts(dst_fd, target)
    fd = rootscope.open_regular(src_dir, src_name)
    if fd is None:
        raise FileNotFoundError(errno.ENOENT, "file vanished while copying", src_name)
    try:
        with mkdir_all(dst_fd, parts, _ROOT_OWNER) as dest:
            plain, _ = open_uncompressed(_FdReader(fd))
            extractor = SafeExtractor(
                dst_fd, dest.dir_parts, clamp=False, keep_owner=True, devices=True,
                display_base=rootscope.join(parts),
            )
            extractor.extract(plain, "archive")
    except UnpackError as exc:
        raise InvalidParameter(str(exc)) from None
    finally:
        os.close(fd)


def make_workdir(dest_root: Path, path: str) -> None:
    """WORKDIR's directory and its missing parents, root-owned 0755, symlinks on the way
    followed inside the rootfs (as a COPY destination is)."""
    root_fd = rootscope.open_root(dest_root)
    try:
        with mkdir_all(root_fd, _dest_parts(root_fd, path), _ROOT_OWNER):
            pass
    finally:
        os.close(root_fd)


# =========================================================================== --chown
def parse_chown(spec: str, passwd: str | None, group: str | None) -> tuple[int, int]:
    """``--chown=user[:group]`` to numbers, as 20.10's ``parseChownFlag``: numbers are
    taken as they are, names are looked up in the rootfs' ``/etc/passwd`` and
    ``/etc/group`` (their text, or None when missing). Without a group the *user*
    string is used as the group too (``--chown=bin`` is bin:bin, by group name)."""
    parts = spec.split(":")
    if len(parts) > 2:
        raise InvalidParameter(_chown_error(f"invalid chown string format: {spec}"))
    user_text, group_text = (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    uid = _lookup(user_text, passwd, "/etc/passwd", "user")
    gid = _lookup(group_text, group, "/etc/group", "group")
    return uid, gid


def chown_ids(dest_root: Path, spec: str) -> tuple[int, int]:
    """``--chown`` with its names looked up in the destination's own /etc/passwd and
    /etc/group (read inside the rootfs)."""
    passwd = read_in_root(dest_root, "/etc/passwd")
    group = read_in_root(dest_root, "/etc/group")
    return parse_chown(
        spec,
        passwd.decode("utf-8", "replace") if passwd is not None else None,
        group.decode("utf-8", "replace") if group is not None else None,
    )


_NUMBER = re.compile(r"[+-]?[0-9]+")


def _lookup(name: str, table: str | None, path: str, kind: str) -> int:
    what = f"can't find uid for user {name}" if kind == "user" else \
        f"can't find gid for group {name}"
    if _NUMBER.fullmatch(name):
        number = int(name)
        if not 0 <= number < 2**32 - 1:
            raise InvalidParameter(_chown_error(f"{what}: invalid id {name}"))
        return number
    if table is None:
        raise InvalidParameter(_chown_error(f"{what}: open {path}: no such file or directory"))
    for line in table.splitlines():
        fields = line.strip().split(":")
        if len(fields) >= 3 and fields[0] == name:
            try:
                return int(fields[2])
            except ValueError:
                return 0  # libcontainer's parser leaves a malformed id at 0
    raise InvalidParameter(_chown_error(f"{what}: no such {kind}: {name}"))


def _chown_error(text: str) -> str:
    return f"unable to convert uid/gid chown string to host mapping: {text}"


# =========================================================================== errors
def _reason(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


def _describe(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{_reason(exc)}"

