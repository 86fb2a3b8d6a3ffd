"""Layer extraction: containment (CVE-2014-6407, B26), whiteouts, metadata, diff ids."""

from __future__ import annotations

import asyncio
import bz2
import gzip
import hashlib
import io
import lzma
import os
import stat
import tarfile
import tempfile
import traceback
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.images.unpack import ChunkPipe, UnpackError, clean_components, unpack
from engine.layout import Layout
from engine.store.atomic import ensure_dir
from engine.store.content import ContentStore

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, mknod, xattrs)")
MTIME = 1_600_000_000


# ------------------------------------------------------------------ tar building
def _info(name: str, kind: bytes, mode: int = 0o644, **extra: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = MTIME
    for key, value in extra.items():
        setattr(info, key, value)
    return info


def reg(name: str, data: bytes = b"", mode: int = 0o644, **extra: object) -> tuple[
    tarfile.TarInfo, bytes
]:
    info = _info(name, tarfile.REGTYPE, mode, **extra)
    info.size = len(data)
    return info, data


def dir_(name: str, mode: int = 0o755, **extra: object) -> tuple[tarfile.TarInfo, bytes]:
    return _info(name, tarfile.DIRTYPE, mode, **extra), b""


def sym(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    return _info(name, tarfile.SYMTYPE, 0o777, linkname=target), b""


def hard(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    return _info(name, tarfile.LNKTYPE, 0o644, linkname=target), b""


def dev(name: str, major: int, minor: int) -> tuple[tarfile.TarInfo, bytes]:
    return _info(name, tarfile.CHRTYPE, 0o666, devmajor=major, devminor=minor), b""


def make_tar(entries: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    (tmp_path / "outside").mkdir()
    return path


def extract(root: Path, entries: list[tuple[tarfile.TarInfo, bytes]]) -> None:
    unpack(io.BytesIO(make_tar(entries)), root)


def outside_untouched(root: Path) -> None:
    parent = root.parent
    assert sorted(os.listdir(parent)) == ["outside", "root"], os.listdir(parent)
    assert os.listdir(parent / "outside") == []


def confined(body: Callable[[Path, Path], None]) -> None:
    """Run ``body(root, outside)`` in a forked child chrooted into a fresh scratch dir that
    holds only ``root/`` and ``outside/``. Containment tests feed archives built to break
    out; if a regression ever let one through, it lands in the scratch dir (and fails the
    test) instead of on the machine running the tests. Without root: run in place."""
    with tempfile.TemporaryDirectory(prefix="wharfd-unpack-") as tmp:
        base = Path(tmp)
        (base / "root").mkdir()
        (base / "outside").mkdir()
        if os.geteuid() != 0:
            body(base / "root", base / "outside")
            return
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe
            code = 1
            try:
                os.close(read_end)
                os.chroot(base)
                os.chdir("/")
                body(Path("/root"), Path("/outside"))
                code = 0
            except BaseException:
                os.write(write_end, traceback.format_exc().encode()[-8000:])
            finally:
                os._exit(code)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as report:
            message = report.read().decode(errors="replace")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, message


# ------------------------------------------------------------------ basics
def test_tree_metadata_and_diff_id(root: Path) -> None:
    entries = [
        dir_("./", mode=0o755),
        dir_("./bin", mode=0o711),
        reg("./bin/tool", b"#!/bin/sh\necho hi\n" * 100, mode=0o4755, uid=1000, gid=1000),
        sym("./bin/sh", "tool"),
        dir_("./etc", mode=0o755),
        reg("./etc/empty", b"", mode=0o600),
        hard("./etc/tool-link", "bin/tool"),
        reg("./big", os.urandom(3 * 1024 * 1024 + 17)),
    ]
    data = make_tar(entries)
    result = unpack(io.BytesIO(data), root)
    assert result.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert result.tar_size == len(data)
    assert result.entries == len(entries)
    assert result.size == sum(len(d) for _, d in entries) + len("tool")
    tool = root / "bin" / "tool"
    assert tool.read_bytes() == entries[2][1]
    st_tool = tool.stat()
    assert stat.S_IMODE(st_tool.st_mode) == 0o4755
    if os.geteuid() == 0:
        assert (st_tool.st_uid, st_tool.st_gid) == (1000, 1000)
    assert st_tool.st_mtime == MTIME
    assert os.readlink(root / "bin" / "sh") == "tool"
    assert (root / "etc" / "tool-link").stat().st_ino == st_tool.st_ino
    assert stat.S_IMODE((root / "bin").stat().st_mode) == 0o711
    assert (root / "bin").stat().st_mtime == MTIME  # set after its children were written
    assert (root / "big").read_bytes() == entries[-1][1]


@pytest.mark.parametrize(
    "compress",
    [
        gzip.compress,
        bz2.compress,
        lzma.compress,
        lambda d: gzip.compress(d[:5000]) + gzip.compress(d[5000:]),
    ],
    ids=["gzip", "bzip2", "xz", "gzip-multimember"],
)
def test_compressed_streams_hash_the_plain_tar(root: Path, compress: object) -> None:
    data = make_tar([reg("a", b"x" * 100_000), reg("b", os.urandom(70_000))])
    packed = compress(data)  # type: ignore[operator]
    result = unpack(io.BytesIO(packed), root)
    assert result.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert (root / "a").read_bytes() == b"x" * 100_000


def test_tee_into_content_writer(tmp_path: Path, root: Path) -> None:
    layout = Layout(data_root=tmp_path / "data", exec_root=tmp_path / "run")
    for path, mode in layout.persistent_dirs():
        ensure_dir(path, mode)
    store = ContentStore(layout)
    data = make_tar([reg("f", b"payload")])
    with store.open_writer("layer-test") as writer:
        result = unpack(io.BytesIO(gzip.compress(data)), root, writer)
        assert writer.commit() == result.diff_id
    assert store.path(result.diff_id).read_bytes() == data


def test_garbage_truncated_and_empty(root: Path) -> None:
    with pytest.raises(UnpackError):
        unpack(io.BytesIO(b"this is not a tar archive" * 40), root)
    data = make_tar([reg("f", b"z" * 10_000)])
    with pytest.raises(UnpackError):
        unpack(io.BytesIO(data[:2048]), root)
    with pytest.raises(UnpackError):
        unpack(io.BytesIO(gzip.compress(data)[:100]), root)
    empty = unpack(io.BytesIO(b""), root)
    assert empty.diff_id == "sha256:" + hashlib.sha256(b"").hexdigest()


def test_later_entries_replace_earlier_ones() -> None:
    confined(_later_entries_replace_earlier_ones)


def _later_entries_replace_earlier_ones(root: Path, outside: Path) -> None:
    victim = outside / "victim"
    victim.write_bytes(b"host data")
    extract(root, [
        sym("f", str(victim)),  # a symlink to a host file …
        reg("f", b"new"),  # … replaced, never written through
        dir_("d"), reg("d/inner", b"1"),
        reg("d", b"file now"),  # a directory replaced by a file
        reg("g", b"file"), dir_("g"),  # and the other way round
    ])
    assert victim.read_bytes() == b"host data"
    victim.unlink()
    assert (root / "f").read_bytes() == b"new" and not (root / "f").is_symlink()
    assert (root / "d").read_bytes() == b"file now"
    assert (root / "g").is_dir()
    outside_untouched(root)


# ------------------------------------------------------------------ containment
def test_dotdot_and_absolute_names_are_clamped() -> None:
    confined(_dotdot_and_absolute_names_are_clamped)


def _dotdot_and_absolute_names_are_clamped(root: Path, outside: Path) -> None:
    extract(root, [reg("../../x", b"1"), reg("/abs/y", b"2"), reg("a/../../../z", b"3")])
    assert (root / "x").read_bytes() == b"1"
    assert (root / "abs" / "y").read_bytes() == b"2"
    assert (root / "z").read_bytes() == b"3"
    outside_untouched(root)


def test_symlink_then_write_stays_inside() -> None:
    confined(_symlink_then_write_stays_inside)


def _symlink_then_write_stays_inside(root: Path, outside: Path) -> None:
    extract(root, [
        sym("evil", "/"),
        reg("evil/etc/pwned", b"1"),
        sym("evil2", "../../../../../../" + str(outside).lstrip("/")),
        reg("evil2/pwned", b"2"),
        sym("evil3", str(outside)),
        reg("evil3/pwned3", b"3"),
        dir_("sub"),
        sym("sub/up", "../.."),
        reg("sub/up/outside/pwned4", b"4"),
    ])
    outside_untouched(root)
    assert (root / "etc" / "pwned").read_bytes() == b"1"
    assert (root / str(outside).lstrip("/") / "pwned3").read_bytes() == b"3"
    assert (root / "outside" / "pwned4").read_bytes() == b"4"


def test_symlink_loop_is_an_error() -> None:
    confined(_symlink_loop_is_an_error)


def _symlink_loop_is_an_error(root: Path, outside: Path) -> None:
    with pytest.raises(UnpackError, match="too many levels"):
        extract(root, [sym("a", "b"), sym("b", "a"), reg("a/x", b"")])
    outside_untouched(root)


def test_hardlinks_must_resolve_inside() -> None:
    confined(_hardlinks_must_resolve_inside)


def _hardlinks_must_resolve_inside(root: Path, outside: Path) -> None:
    secret = outside / "secret"
    secret.write_bytes(b"host secret")
    with pytest.raises(UnpackError, match="invalid hardlink"):
        extract(root, [hard("hl", str(secret))])  # → <root>/tmp/…/secret: not there
    with pytest.raises(UnpackError, match="invalid hardlink"):
        extract(root, [hard("hl2", "../../etc/hostname")])
    extract(root, [
        dir_("etc"), reg("etc/hostname", b"inside"),
        hard("hl3", "../../etc/hostname"),  # clamped: the layer's own etc/hostname
        sym("d", "/"), hard("hl4", "d/etc/hostname"),  # through an in-layer symlink
    ])
    assert (root / "hl3").read_bytes() == b"inside"
    assert (root / "hl4").stat().st_ino == (root / "etc" / "hostname").stat().st_ino
    assert secret.stat().st_nlink == 1 and secret.read_bytes() == b"host secret"
    secret.unlink()
    outside_untouched(root)


def test_hardlink_to_a_symlink_links_the_symlink() -> None:
    confined(_hardlink_to_a_symlink_links_the_symlink)


def _hardlink_to_a_symlink_links_the_symlink(root: Path, outside: Path) -> None:
    extract(root, [sym("s", str(outside)), hard("h", "s")])
    assert (root / "h").is_symlink()
    outside_untouched(root)


@pytest.mark.parametrize(
    ("name", "parts"),
    [("a/b", ["a", "b"]), ("./a//b/", ["a", "b"]), ("../../a", ["a"]), ("/", []),
     ("a/../../b/./c", ["b", "c"]), ("..", [])],
)
def test_clean_components(name: str, parts: list[str]) -> None:
    assert clean_components(name) == parts


# ------------------------------------------------------------------ whiteouts and nodes
@ROOT_ONLY
def test_whiteouts(root: Path) -> None:
    extract(root, [
        dir_("dir"),
        reg("dir/.wh..wh..opq", b""),
        reg(".wh.gone", b""),
        reg("dir/.wh.file", b""),
        reg(".wh..wh.plnk", b""),  # AUFS bookkeeping: ignored
    ])
    for path in (root / "gone", root / "dir" / "file"):
        st_white = os.lstat(path)
        assert stat.S_ISCHR(st_white.st_mode) and st_white.st_rdev == os.makedev(0, 0)
    assert os.getxattr(root / "dir", "trusted.overlay.opaque") == b"y"
    assert not (root / ".wh..wh.plnk").exists()
    with pytest.raises(UnpackError, match="invalid whiteout"):
        extract(root, [reg(".wh.", b"")])


@ROOT_ONLY
def test_devices_xattrs_and_overlay_xattrs_dropped(root: Path) -> None:
    f_info, f_data = reg("f", b"x")
    f_info.pax_headers = {
        "SCHILY.xattr.user.note": "hello",
        "SCHILY.xattr.trusted.overlay.redirect": "/etc",
    }
    extract(root, [dev("null", 1, 3), (f_info, f_data), reg("fifo-later", b"")])
    st_dev = os.lstat(root / "null")
    assert stat.S_ISCHR(st_dev.st_mode) and st_dev.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(st_dev.st_mode) == 0o666
    assert os.getxattr(root / "f", "user.note") == b"hello"
    assert "trusted.overlay.redirect" not in os.listxattr(root / "f")


# ------------------------------------------------------------------ async feeding
@pytest.mark.asyncio
async def test_chunk_pipe_feeds_a_worker(tmp_path: Path) -> None:
    data = make_tar([reg("f", os.urandom(5 * 1024 * 1024))])
    dest = tmp_path / "dest"
    await asyncio.to_thread(dest.mkdir)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 65536):
            yield data[i:i + 65536]

    pipe = ChunkPipe(asyncio.get_running_loop(), max_buffered=256 * 1024)
    feeder = asyncio.ensure_future(pipe.feed(chunks()))
    result = await asyncio.to_thread(unpack, pipe, dest)
    await feeder
    assert result.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.asyncio
async def test_chunk_pipe_producer_failure_stops_the_worker(tmp_path: Path) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield make_tar([reg("f", b"x" * 4096)])[:1024]
        raise ConnectionResetError("client went away")

    dest = tmp_path / "dest"
    await asyncio.to_thread(dest.mkdir)
    pipe = ChunkPipe(asyncio.get_running_loop())
    feeder = asyncio.ensure_future(pipe.feed(broken()))
    with pytest.raises(UnpackError, match="client went away"):
        await asyncio.to_thread(unpack, pipe, dest)
    with pytest.raises(ConnectionResetError):
        await feeder


# ------------------------------------------------------------------ property: containment
_PARTS = st.sampled_from(["a", "l", "l", "..", ".", "outside", "x"])
_NAME = st.builds(
    lambda lead, parts: lead + "/".join(parts),
    st.sampled_from(["", "", "", "/", "./", "../"]),
    st.lists(_PARTS, min_size=1, max_size=3),
)
_TARGET = st.sampled_from(
    ["/", "..", "../..", "../../outside", "@OUTSIDE@", "@OUTSIDE@", "@OUTSIDE@/sentinel",
     "a", "/a", "l", "../outside/sentinel", "/../../outside", "a/../..", ""]
)
_ESCAPES = [
    [("sym", "l", "@OUTSIDE@"), ("reg", "l/x", "")],
    [("sym", "l", "../.."), ("reg", "l/outside/x", "")],
    [("sym", "l", "@OUTSIDE@/sentinel"), ("reg", "l", "")],
    [("sym", "l", "@OUTSIDE@"), ("hard", "h", "l/sentinel")],
    [("hard", "h", "@OUTSIDE@/sentinel")],
    [("sym", "l", "@OUTSIDE@/sentinel"), ("hard", "h", "l")],
    [("hard", "h", "../outside/sentinel")],
    [("reg", "../outside/x", "")],
    [("sym", "a", "/"), ("sym", "a/l", "@OUTSIDE@"), ("dir", "a/l/x", ""), ("opq", "a/l", "")],
    [("sym", "l", "@OUTSIDE@"), ("wh", "l", "")],
]


@st.composite
def _entries(draw: st.DrawFn) -> list[tuple[str, str, str]]:
    kinds = st.sampled_from(["reg", "dir", "sym", "hard", "wh", "opq"])
    return draw(st.lists(st.tuples(kinds, _NAME, _TARGET | _NAME), min_size=1, max_size=12))


def _build(spec: list[tuple[str, str, str]], outside: Path) -> bytes:
    entries = []
    for kind, name, target in spec:
        target = target.replace("@OUTSIDE@", str(outside))
        if kind == "reg":
            entries.append(reg(name, b"data"))
        elif kind == "dir":
            entries.append(dir_(name))
        elif kind == "sym":
            entries.append(sym(name, target))
        elif kind == "hard":
            entries.append(hard(name, target))
        elif kind == "wh":
            entries.append(reg(name.rstrip("/") + "/.wh.x", b""))
        else:
            entries.append(reg(name.rstrip("/") + "/.wh..wh..opq", b""))
    return make_tar(entries)


def _examples(fn: Any) -> Any:
    """The known escape shapes, always tried before the random ones."""
    for spec in _ESCAPES:
        fn = example(spec)(fn)
    return fn


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@_examples
@given(_entries())
def test_random_archives_never_escape(spec: list[tuple[str, str, str]]) -> None:
    confined(lambda root, outside: _never_escapes(spec, root, outside))


def _never_escapes(spec: list[tuple[str, str, str]], root: Path, outside: Path) -> None:
    base = root.parent
    sentinel = outside / "sentinel"
    sentinel.write_bytes(b"keep")
    os.chmod(sentinel, 0o600)
    data = _build(spec, outside)
    try:
        unpack(io.BytesIO(data), root, same_owner=False)
    except UnpackError:
        pass
    assert sorted(os.listdir(base)) == ["outside", "root"]
    assert os.listdir(outside) == ["sentinel"]
    st_s = sentinel.stat()
    assert sentinel.read_bytes() == b"keep"
    assert (st_s.st_nlink, stat.S_IMODE(st_s.st_mode)) == (1, 0o600)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                assert path.resolve().is_relative_to(root.resolve())
