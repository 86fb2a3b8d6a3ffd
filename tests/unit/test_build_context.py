"""Build context reception: extraction containment (reliability B25), compression,
Dockerfile lookup, .dockerignore."""

from __future__ import annotations

import asyncio
import bz2
import gzip
import io
import lzma
import os
import stat
import tarfile
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.builder.context import (
    BuildContext,
    prepare_context,
    read_dockerfile,
    read_in_root,
    receive_context,
)
from engine.errors import InvalidParameter

MTIME = 1_600_000_000
Entry = tuple[tarfile.TarInfo, bytes]


# ------------------------------------------------------------------ tar building
def _info(name: str, kind: bytes, mode: int, **extra: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = MTIME
    info.uid = info.gid = 4242  # the client's owner: must not matter
    for key, value in extra.items():
        setattr(info, key, value)
    return info


def reg(name: str, data: bytes = b"", mode: int = 0o644) -> Entry:
    info = _info(name, tarfile.REGTYPE, mode)
    info.size = len(data)
    return info, data


def dir_(name: str, mode: int = 0o755) -> Entry:
    return _info(name, tarfile.DIRTYPE, mode), b""


def sym(name: str, target: str) -> Entry:
    return _info(name, tarfile.SYMTYPE, 0o777, linkname=target), b""


def hard(name: str, target: str) -> Entry:
    return _info(name, tarfile.LNKTYPE, 0o644, linkname=target), b""


def make_tar(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


DOCKERFILE = reg("Dockerfile", b"FROM busybox\nCOPY . /ctx\n")


def prepare(tmp_path: Path, body: bytes, dockerfile: str = "Dockerfile") -> BuildContext:
    dest = Path(tempfile.mkdtemp(dir=tmp_path, prefix="ctx"))  # fresh for every call
    return prepare_context(io.BytesIO(body), dest, dockerfile)


# ------------------------------------------------------------------ extraction
@pytest.mark.parametrize("compress", [
    lambda b: b, gzip.compress, bz2.compress, lzma.compress,
], ids=["plain", "gzip", "bzip2", "xz"])
def test_compressed_contexts(tmp_path: Path, compress: object) -> None:
    body = make_tar([DOCKERFILE, dir_("sub", 0o750), reg("sub/run.sh", b"#!/bin/sh\n", 0o755)])
    ctx = prepare(tmp_path, compress(body))  # type: ignore[operator]
    assert ctx.dockerfile == "Dockerfile"
    assert ctx.dockerfile_text.startswith(b"FROM busybox")
    assert ctx.source_root == ctx.root and ctx.root.parent == tmp_path
    st = os.lstat(ctx.root / "sub/run.sh")
    assert stat.S_IMODE(st.st_mode) == 0o755 and st.st_mtime == MTIME
    st_dir = os.lstat(ctx.root / "sub")
    assert stat.S_IMODE(st_dir.st_mode) == 0o750 and st_dir.st_mtime == MTIME
    assert (ctx.root / "sub/run.sh").read_bytes() == b"#!/bin/sh\n"


def test_dotdot_entries_are_clamped_into_the_context(tmp_path: Path) -> None:
    outside = tmp_path / "relx-escape.txt"  # the context's parent
    ctx = prepare(tmp_path, make_tar([
        DOCKERFILE, reg("../relx-escape.txt", b"esc"), reg("a/../../../b/c.txt", b"c"),
    ]))
    assert (ctx.root / "relx-escape.txt").read_bytes() == b"esc"
    assert (ctx.root / "b/c.txt").read_bytes() == b"c"
    assert not outside.exists()


def test_absolute_names_are_made_relative(tmp_path: Path) -> None:
    ctx = prepare(tmp_path, make_tar([DOCKERFILE, reg("/etc/abs-name.txt", b"abs")]))
    assert (ctx.root / "etc/abs-name.txt").read_bytes() == b"abs"


def test_symlink_parent_resolved_inside_the_context(tmp_path: Path) -> None:
    marker = f"wharfd-test-{uuid.uuid4().hex}"
    victim = tmp_path / "victim"
    victim.mkdir()
    ctx = prepare(tmp_path, make_tar([
        DOCKERFILE,
        sym("link", "/etc"),
        reg(f"link/{marker}", b"pwned"),
        sym("rel", "../../victim"),
        reg("rel/x", b"pwned"),
    ]))
    assert not Path("/etc", marker).exists()
    assert not (victim / "x").exists()
    assert os.readlink(ctx.root / "link") == "/etc"  # kept as a symlink, as data
    assert (ctx.root / "etc" / marker).read_bytes() == b"pwned"  # chroot-style
    assert (ctx.root / "victim/x").read_bytes() == b"pwned"


def test_symlink_replaced_by_a_file_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "target.txt"
    target.write_bytes(b"keep")
    ctx = prepare(tmp_path, make_tar([DOCKERFILE, sym("f", str(target)), reg("f", b"new")]))
    assert target.read_bytes() == b"keep"
    assert not (ctx.root / "f").is_symlink()
    assert (ctx.root / "f").read_bytes() == b"new"


def test_hardlink_outside_the_context_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameter, match="hardlink target outside the build context"):
        prepare(tmp_path, make_tar([DOCKERFILE, hard("hl", "/etc/shadow")]))
    with pytest.raises(InvalidParameter, match="hardlink target outside the build context"):
        prepare(tmp_path, make_tar([DOCKERFILE, hard("h2", "../../../etc/passwd")]))


def test_hardlink_through_a_symlink_stays_inside(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameter, match="outside the build context"):
        prepare(tmp_path, make_tar([DOCKERFILE, sym("l", "/etc"), hard("h", "l/passwd")]))


def test_hardlink_inside_the_context(tmp_path: Path) -> None:
    ctx = prepare(tmp_path, make_tar([DOCKERFILE, reg("a", b"data"), hard("b", "a")]))
    assert os.lstat(ctx.root / "a").st_ino == os.lstat(ctx.root / "b").st_ino


def test_devices_and_fifos_are_skipped(tmp_path: Path) -> None:
    null = _info("null", tarfile.CHRTYPE, 0o666, devmajor=1, devminor=3)
    fifo = _info("fifo", tarfile.FIFOTYPE, 0o644)
    ctx = prepare(tmp_path, make_tar([DOCKERFILE, (null, b""), (fifo, b"")]))
    assert not os.path.lexists(ctx.root / "null")
    assert not os.path.lexists(ctx.root / "fifo")


def test_later_entries_replace_earlier_ones(tmp_path: Path) -> None:
    ctx = prepare(tmp_path, make_tar([
        DOCKERFILE, reg("x/f", b"1"), reg("x", b"now a file"), dir_("y"), reg("y/keep", b"k"),
        dir_("y", 0o700),
    ]))
    assert (ctx.root / "x").read_bytes() == b"now a file"
    assert (ctx.root / "y/keep").read_bytes() == b"k"
    assert stat.S_IMODE(os.lstat(ctx.root / "y").st_mode) == 0o700


def test_owner_is_not_restored(tmp_path: Path) -> None:
    ctx = prepare(tmp_path, make_tar([DOCKERFILE, reg("f", b"x")]))
    assert os.lstat(ctx.root / "f").st_uid == os.geteuid()


@pytest.mark.parametrize("body", [
    b"this is not a tar archive at all" * 40,
    b"short garbage",
    b"\x1f\x8b\x08\x00garbage-after-gzip-magic",
    b"BZh9garbage",
])
def test_garbage_is_invalid_parameter(tmp_path: Path, body: bytes) -> None:
    with pytest.raises(InvalidParameter, match="invalid build context"):
        prepare(tmp_path, body)


def test_empty_body_has_no_dockerfile(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameter, match=r"^Cannot locate specified Dockerfile: Dockerfile$"):
        prepare(tmp_path, b"")


# ------------------------------------------------------------------ the Dockerfile
def test_dockerfile_outside_the_context_is_forbidden(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameter) as err:
        prepare(tmp_path, make_tar([DOCKERFILE]), "../../etc/passwd")
    assert str(err.value) == "forbidden path outside the build context: ../../etc/passwd ()"


def test_missing_dockerfile(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameter) as err:
        prepare(tmp_path, make_tar([reg("other", b"x")]))
    assert str(err.value) == "Cannot locate specified Dockerfile: Dockerfile"
    with pytest.raises(InvalidParameter, match=r"^Cannot locate specified Dockerfile: sub/Df$"):
        prepare(tmp_path, make_tar([reg("other", b"x")]), "sub/Df")


def test_lowercase_dockerfile_fallback_only_for_the_default(tmp_path: Path) -> None:
    ctx = prepare(tmp_path, make_tar([reg("dockerfile", b"FROM scratch\n")]))
    assert ctx.dockerfile == "dockerfile" and ctx.dockerfile_text == b"FROM scratch\n"
    with pytest.raises(InvalidParameter, match="Cannot locate specified Dockerfile: DF"):
        prepare(tmp_path, make_tar([reg("df", b"FROM scratch\n")]), "DF")


def test_dockerfile_in_a_subdirectory_and_absolute(tmp_path: Path) -> None:
    body = make_tar([reg("build/Dockerfile.dev", b"FROM a\n")])
    assert prepare(tmp_path, body, "build/Dockerfile.dev").dockerfile_text == b"FROM a\n"
    assert prepare(tmp_path, body, "/build/Dockerfile.dev").dockerfile_text == b"FROM a\n"
    assert prepare(tmp_path, body, "x/../build/Dockerfile.dev").dockerfile_text == b"FROM a\n"


def test_symlinked_dockerfile_resolves_inside_the_context(tmp_path: Path) -> None:
    ctx = prepare(tmp_path, make_tar([
        reg("real/Df", b"FROM inside\n"), sym("Dockerfile", "/real/Df"),
    ]))
    assert ctx.dockerfile_text == b"FROM inside\n"
    with pytest.raises(InvalidParameter, match="Cannot locate specified Dockerfile"):
        prepare(tmp_path, make_tar([sym("Dockerfile", "/etc/passwd")]))


def test_empty_dockerfile(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameter, match=r"the Dockerfile \(Dockerfile\) cannot be empty"):
        prepare(tmp_path, make_tar([reg("Dockerfile", b"")]))


def test_dockerfile_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameter, match="reading Dockerfile"):
        prepare(tmp_path, make_tar([dir_("Dockerfile")]))


def test_read_dockerfile_for_the_cli_stdin_name(tmp_path: Path) -> None:
    name = ".dockerfile.0123456789abcdef0123"
    ctx = prepare(tmp_path, make_tar([reg(name, b"FROM stdin\n")]), name)
    assert ctx.dockerfile == name
    assert read_dockerfile(ctx.root, name) == (name, b"FROM stdin\n")


def test_read_in_root_stays_inside(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc/group").write_bytes(b"root:x:0:\n")
    (root / "etc/passwd").symlink_to("/etc/group")  # resolved inside the root
    (root / "etc/shadow").symlink_to("../../../../etc/nothing-here")
    (root / "etc/loop").symlink_to("/etc/loop")
    assert read_in_root(root, "/etc/passwd") == b"root:x:0:\n"
    assert read_in_root(root, "/etc/shadow") is None
    assert read_in_root(root, "/etc/loop") is None
    assert read_in_root(root, "/etc") is None


def test_very_deep_context_is_a_clear_error(tmp_path: Path) -> None:
    deep = "/".join(["d"] * 1500) + "/f"
    with pytest.raises(InvalidParameter, match="invalid build context"):
        prepare(tmp_path, make_tar([DOCKERFILE, reg(".dockerignore", b"nothing\n"),
                                    reg(deep, b"x")]))


# ------------------------------------------------------------------ .dockerignore
def test_dockerignore_applied_after_reading_the_dockerfile(tmp_path: Path) -> None:
    ignore = b"Dockerfile\n.dockerignore\n*.log\nsecret/\n!secret/public\nnode_modules\n"
    ctx = prepare(tmp_path, make_tar([
        DOCKERFILE,
        reg(".dockerignore", ignore),
        reg("app.py", b"x"),
        reg("debug.log", b"x"),
        reg("sub/deep.log", b"x"),  # "*.log" is anchored: stays
        reg("secret/key", b"x"),
        reg("secret/public", b"x"),
        reg("node_modules/a/b.js", b"x"),
    ]))
    assert ctx.dockerfile_text.startswith(b"FROM busybox")
    left = sorted(str(p.relative_to(ctx.root)) for p in ctx.root.rglob("*"))
    assert left == ["app.py", "secret", "secret/public", "sub", "sub/deep.log"]
    assert ctx.ignore.excludes("debug.log")


def test_dockerfile_and_dockerignore_kept_unless_ignored(tmp_path: Path) -> None:
    ctx = prepare(tmp_path, make_tar([DOCKERFILE, reg(".dockerignore", b"*.tmp\n"),
                                      reg("a.tmp", b"")]))
    assert (ctx.root / "Dockerfile").exists() and (ctx.root / ".dockerignore").exists()
    assert not (ctx.root / "a.tmp").exists()


def test_excluded_directory_emptied_by_exceptions_is_removed(tmp_path: Path) -> None:
    ctx = prepare(tmp_path, make_tar([
        DOCKERFILE, reg(".dockerignore", b"dir\n!dir/keep\n"), reg("dir/other", b"")
    ]))
    assert not (ctx.root / "dir").exists()


# ------------------------------------------------------------------ async reception
async def _chunks(data: bytes, size: int = 7000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]
        await asyncio.sleep(0)


@pytest.mark.asyncio
async def test_receive_context_streams_into_a_thread(tmp_path: Path) -> None:
    big = os.urandom(3 * 1024 * 1024)
    body = gzip.compress(make_tar([DOCKERFILE, reg("big.bin", big)]), compresslevel=1)
    dest = tmp_path / "ctx"
    await asyncio.to_thread(dest.mkdir)
    ctx = await receive_context(_chunks(body, 65536), dest, "Dockerfile")
    assert ctx.dockerfile_text.startswith(b"FROM")
    assert await asyncio.to_thread((dest / "big.bin").read_bytes) == big


@pytest.mark.asyncio
async def test_receive_context_errors(tmp_path: Path) -> None:
    dest = tmp_path / "ctx"
    await asyncio.to_thread(dest.mkdir)
    with pytest.raises(InvalidParameter, match="invalid build context"):
        await receive_context(_chunks(b"garbage" * 1000), dest, "Dockerfile")


@pytest.mark.asyncio
async def test_receive_context_client_gone(tmp_path: Path) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield make_tar([reg("f", b"x" * 100_000)])[:2048]
        raise ConnectionResetError("client went away")

    dest = tmp_path / "ctx"
    await asyncio.to_thread(dest.mkdir)
    with pytest.raises(InvalidParameter, match="client went away"):
        await receive_context(broken(), dest, "Dockerfile")


@pytest.mark.asyncio
async def test_receive_context_cancelled_waits_for_the_thread(tmp_path: Path) -> None:
    started = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield make_tar([reg("f", b"x" * 100_000)])[:2048]
        started.set()
        await asyncio.sleep(3600)
        yield b""

    dest = tmp_path / "ctx"
    await asyncio.to_thread(dest.mkdir)
    task = asyncio.ensure_future(receive_context(slow(), dest, "Dockerfile"))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
