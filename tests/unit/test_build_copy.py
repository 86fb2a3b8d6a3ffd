"""COPY/ADD file operations: source resolution, cache keys, copy rules, ADD archives,
--chown. Mirrors moby 20.10's classic builder."""

from __future__ import annotations

import gzip
import io
import lzma
import os
import stat
import tarfile
from pathlib import Path

import pytest

from engine.builder.copy import (
    CopySource,
    content_digest,
    copy_into,
    normalize_dest,
    parse_chown,
    resolve_sources,
)
from engine.errors import InvalidParameter

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown)")
MTIME_NS = 1_600_000_000_123_456_789


def write(path: Path, data: bytes = b"", mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)
    os.utime(path, ns=(MTIME_NS, MTIME_NS))
    return path


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    root = tmp_path / "ctx"
    write(root / "a.txt", b"A")
    write(root / "b.txt", b"B", 0o600)
    write(root / "run.sh", b"#!/bin/sh\n", 0o755)
    write(root / "dir/one", b"1")
    write(root / "dir/sub/two", b"2", 0o640)
    (root / "dir/link").symlink_to("one")
    os.link(root / "dir/one", root / "dir/hard")
    (root / "abslink").symlink_to("/dir")  # absolute: the context root
    (root / "etclink").symlink_to("/etc")  # nothing named etc in the context
    (root / "filelink").symlink_to("a.txt")
    return root


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "tmp").mkdir()
    (root / "app").mkdir()
    write(root / "etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
    return root


def names(sources: list[CopySource]) -> list[str]:
    return [s.rel for s in sources]


# ------------------------------------------------------------------ resolve_sources
def test_plain_sources(ctx: Path) -> None:
    found = resolve_sources(ctx, ["a.txt", "/dir", "./run.sh", "."])
    assert names(found) == ["a.txt", "dir", "run.sh", "."]
    assert [s.is_dir for s in found] == [False, True, False, True]
    assert found[3].real == ()


def test_forbidden_path(ctx: Path) -> None:
    with pytest.raises(InvalidParameter) as err:
        resolve_sources(ctx, ["../../../../etc/hostname"])
    assert str(err.value) == (
        "COPY failed: forbidden path outside the build context: ../../../../etc/hostname ()"
    )
    assert resolve_sources(ctx, ["dir/../a.txt"])[0].real == ("a.txt",)


def test_missing_source(ctx: Path) -> None:
    with pytest.raises(InvalidParameter) as err:
        resolve_sources(ctx, ["nope.txt"])
    assert str(err.value) == (
        "COPY failed: file not found in build context or excluded by .dockerignore: "
        "stat nope.txt: file does not exist"
    )
    with pytest.raises(InvalidParameter) as err:
        resolve_sources(ctx, ["nope.txt"], cmd="ADD", in_context=False)
    assert str(err.value) == "ADD failed: stat nope.txt: file does not exist"


def test_symlink_to_outside_is_not_followed_out(ctx: Path) -> None:
    with pytest.raises(InvalidParameter, match=r"file not found in build context.*stat etclink/"):
        resolve_sources(ctx, ["etclink/"])
    with pytest.raises(InvalidParameter, match="stat etclink/passwd: file does not exist"):
        resolve_sources(ctx, ["etclink/passwd"])


def test_symlinks_resolve_inside_the_root_last_one_too(ctx: Path) -> None:
    [mid] = resolve_sources(ctx, ["abslink/one"])
    assert mid.real == ("dir", "one") and mid.name == "one"
    [last] = resolve_sources(ctx, ["filelink"])
    assert last.real == ("a.txt",) and not last.is_dir and last.name == "filelink"
    [linked_dir] = resolve_sources(ctx, ["abslink"])
    assert linked_dir.is_dir and linked_dir.real == ("dir",)


def test_globs(ctx: Path) -> None:
    assert names(resolve_sources(ctx, ["*.txt"])) == ["a.txt", "b.txt"]
    assert names(resolve_sources(ctx, ["dir/*"])) == ["dir/hard", "dir/link", "dir/one", "dir/sub"]
    assert names(resolve_sources(ctx, ["[ab].t?t"])) == ["a.txt", "b.txt"]
    assert names(resolve_sources(ctx, ["[^a].txt"])) == ["b.txt"]
    assert names(resolve_sources(ctx, ["*/sub/*"])) == ["dir/sub/two"]
    assert names(resolve_sources(ctx, ["abslink/*"], allow_missing_globs=True)) == []
    with pytest.raises(InvalidParameter) as err:
        resolve_sources(ctx, ["*.nothing"])
    assert str(err.value) == "COPY failed: no source files were specified"
    # one glob empty, another pattern found something: fine
    assert names(resolve_sources(ctx, ["*.nothing", "a.txt"])) == ["a.txt"]
    assert names(resolve_sources(ctx, ["[", "a.txt"])) == ["a.txt"]  # malformed: no match


def test_glob_matching_a_symlink_follows_it(ctx: Path) -> None:
    [src] = resolve_sources(ctx, ["file*"])
    assert src.rel == "filelink" and src.real == ("a.txt",)


# ------------------------------------------------------------------ content_digest
def test_digest_forms(ctx: Path) -> None:
    one = content_digest(ctx, resolve_sources(ctx, ["a.txt"]))
    assert one.startswith("file:") and len(one) == 5 + 64
    assert content_digest(ctx, resolve_sources(ctx, ["dir"])).startswith("dir:")
    assert content_digest(ctx, resolve_sources(ctx, ["*.txt"])).startswith("multi:")
    assert content_digest(ctx, resolve_sources(ctx, ["."])).startswith("dir:")


def test_digest_ignores_mtime_and_owner_but_not_content_or_mode(ctx: Path) -> None:
    sources = resolve_sources(ctx, ["dir"])
    before = content_digest(ctx, sources)
    os.utime(ctx / "dir/sub/two", ns=(1, 1))
    if os.geteuid() == 0:
        os.chown(ctx / "dir/one", 1234, 1234)
    assert content_digest(ctx, sources) == before
    os.chmod(ctx / "dir/sub/two", 0o600)
    after_mode = content_digest(ctx, sources)
    assert after_mode != before
    (ctx / "dir/sub/two").write_bytes(b"3")
    assert content_digest(ctx, sources) != after_mode


def test_digest_of_symlinked_file_is_its_target(ctx: Path) -> None:
    assert content_digest(ctx, resolve_sources(ctx, ["filelink"])) == content_digest(
        ctx, resolve_sources(ctx, ["a.txt"])
    )


# ------------------------------------------------------------------ copy rules
def copy(ctx: Path, rootfs: Path, srcs: list[str], dest: str, workdir: str = "/", *,
         chown: tuple[int, int] | None = None, chmod: int | None = None,
         extract: bool = False) -> None:
    sources = resolve_sources(ctx, srcs)
    copy_into(ctx, sources, rootfs, dest, workdir, chown=chown, chmod=chmod,
              extract_archives=extract)


@pytest.mark.parametrize(("srcs", "dest", "workdir", "expected"), [
    (["a.txt"], "/new", "/", ["new"]),  # becomes that path
    (["a.txt"], "/new/", "/", ["new/a.txt"]),  # a directory
    (["a.txt"], "/app", "/", ["app/a.txt"]),  # existing directory: goes inside
    (["a.txt"], "rel", "/app", ["app/rel"]),  # relative to WORKDIR
    (["a.txt"], "rel/", "/app", ["app/rel/a.txt"]),
    (["a.txt"], ".", "/app", ["app/a.txt"]),
    (["a.txt", "b.txt"], "/multi/", "/", ["multi/a.txt", "multi/b.txt"]),
    (["*.txt"], "/globdir/", "/", ["globdir/a.txt", "globdir/b.txt"]),
    (["r*"], "/oneglob", "/", ["oneglob"]),  # one match: a plain destination is fine
    (["dir"], "/d", "/", ["d/one", "d/sub/two", "d/link", "d/hard"]),  # the contents
    (["dir/"], "/app", "/", ["app/one", "app/sub/two"]),
    (["filelink"], "/x/", "/", ["x/filelink"]),  # named after the link, content of target
    (["abslink"], "/viadir", "/", ["viadir/one", "viadir/sub/two"]),
])
def test_copy_rules(ctx: Path, rootfs: Path, srcs: list[str], dest: str, workdir: str,
                    expected: list[str]) -> None:
    copy(ctx, rootfs, srcs, dest, workdir)
    for rel in expected:
        assert os.path.lexists(rootfs / rel), rel


def test_file_content_mode_and_mtime(ctx: Path, rootfs: Path) -> None:
    copy(ctx, rootfs, ["run.sh", "b.txt", "filelink"], "/bin/")
    st = os.lstat(rootfs / "bin/run.sh")
    assert stat.S_IMODE(st.st_mode) == 0o755
    assert st.st_mtime_ns == MTIME_NS - MTIME_NS % 1_000_000_000  # whole seconds
    assert stat.S_IMODE(os.lstat(rootfs / "bin/b.txt").st_mode) == 0o600
    assert (rootfs / "bin/filelink").read_bytes() == b"A"
    assert not (rootfs / "bin/filelink").is_symlink()
    assert stat.S_IMODE(os.lstat(rootfs / "bin").st_mode) == 0o755


def test_directory_copy_keeps_symlinks_and_hardlinks(ctx: Path, rootfs: Path) -> None:
    copy(ctx, rootfs, ["dir"], "/d")
    assert os.readlink(rootfs / "d/link") == "one"
    assert os.lstat(rootfs / "d/one").st_ino == os.lstat(rootfs / "d/hard").st_ino
    assert stat.S_IMODE(os.lstat(rootfs / "d/sub/two").st_mode) == 0o640
    assert stat.S_IMODE(os.lstat(rootfs / "d").st_mode) == 0o755


def test_more_than_one_source_needs_a_slash(ctx: Path, rootfs: Path) -> None:
    with pytest.raises(InvalidParameter) as err:
        copy(ctx, rootfs, ["a.txt", "b.txt"], "/multi")
    assert str(err.value) == (
        "When using COPY with more than one source file, the destination must be a "
        "directory and end with a /"
    )
    with pytest.raises(InvalidParameter, match="more than one source"):
        copy(ctx, rootfs, ["*.txt"], ".", "/app")


def test_destination_symlinks_resolve_inside_the_rootfs(
    ctx: Path, rootfs: Path, tmp_path: Path
) -> None:
    host = tmp_path / "host-target"
    host.mkdir()
    (rootfs / "cfg").symlink_to(str(host))  # absolute: means <rootfs>/<host path>
    (rootfs / "up").symlink_to("../../../../../../")
    copy(ctx, rootfs, ["a.txt"], "/cfg/")
    copy(ctx, rootfs, ["b.txt"], "/up/escaped.txt")
    copy(ctx, rootfs, ["dir"], "/cfg/d")
    assert list(host.iterdir()) == []
    assert (rootfs / str(host).lstrip("/") / "a.txt").read_bytes() == b"A"
    assert (rootfs / str(host).lstrip("/") / "d/one").read_bytes() == b"1"
    assert (rootfs / "escaped.txt").read_bytes() == b"B"


def test_destination_symlink_as_final_component(ctx: Path, rootfs: Path) -> None:
    (rootfs / "linkdir").symlink_to("/app")
    (rootfs / "linkfile").symlink_to("/tmp/target-file")
    copy(ctx, rootfs, ["a.txt"], "/linkdir")  # an existing directory through the link
    copy(ctx, rootfs, ["b.txt"], "/linkfile")  # becomes the link's target
    assert (rootfs / "app/a.txt").read_bytes() == b"A"
    assert (rootfs / "tmp/target-file").read_bytes() == b"B"
    assert (rootfs / "linkfile").is_symlink()


def test_things_in_the_way_are_replaced(ctx: Path, rootfs: Path) -> None:
    (rootfs / "app/one").mkdir()
    write(rootfs / "app/one/inner", b"old")
    write(rootfs / "app/sub/keep", b"keep")
    (rootfs / "usr/bin").mkdir(parents=True)
    (rootfs / "app2").mkdir()
    (rootfs / "app2/sub").symlink_to("/usr/bin")
    copy(ctx, rootfs, ["dir"], "/app")
    assert (rootfs / "app/one").read_bytes() == b"1"  # a directory replaced by a file
    assert (rootfs / "app/sub/keep").read_bytes() == b"keep"  # directories merge
    copy(ctx, rootfs, ["dir"], "/app2")
    assert not (rootfs / "app2/sub").is_symlink()  # as dockerd's untar: replaced
    assert not (rootfs / "usr/bin/two").exists()


def test_copy_onto_a_file_in_the_way_of_a_directory_fails(ctx: Path, rootfs: Path) -> None:
    write(rootfs / "plain", b"x")
    with pytest.raises(InvalidParameter, match=r"failed to copy files: .*not a directory"):
        copy(ctx, rootfs, ["a.txt"], "/plain/x/y")


@ROOT_ONLY
def test_owner_default_is_root_not_the_context_owner(ctx: Path, rootfs: Path) -> None:
    os.chown(ctx / "a.txt", 1000, 1000)
    copy(ctx, rootfs, ["a.txt"], "/o/")
    assert (os.lstat(rootfs / "o/a.txt").st_uid, os.lstat(rootfs / "o").st_gid) == (0, 0)


@ROOT_ONLY
def test_chown_file_copy_owns_new_parents(ctx: Path, rootfs: Path) -> None:
    copy(ctx, rootfs, ["a.txt"], "/new/deep/", chown=(1000, 1001))
    for rel in ("new", "new/deep", "new/deep/a.txt"):
        st = os.lstat(rootfs / rel)
        assert (st.st_uid, st.st_gid) == (1000, 1001), rel
    assert os.lstat(rootfs / "app").st_uid == 0  # existing parents untouched


@ROOT_ONLY
def test_chown_directory_copy(ctx: Path, rootfs: Path) -> None:
    copy(ctx, rootfs, ["dir"], "/p/q", chown=(7, 8))
    assert os.lstat(rootfs / "p").st_uid == 0  # parents of a directory copy: root
    for rel in ("p/q", "p/q/one", "p/q/sub", "p/q/sub/two", "p/q/link"):
        st = os.lstat(rootfs / rel)
        assert (st.st_uid, st.st_gid) == (7, 8), rel
    copy(ctx, rootfs, ["dir"], "/app", chown=(7, 8))
    assert os.lstat(rootfs / "app").st_uid == 0  # an existing destination keeps its owner


def test_chmod_applies_to_every_copied_entry(ctx: Path, rootfs: Path) -> None:
    copy(ctx, rootfs, ["dir"], "/m", chmod=0o700)
    for rel in ("m/one", "m/sub", "m/sub/two"):
        assert stat.S_IMODE(os.lstat(rootfs / rel).st_mode) == 0o700, rel
    copy(ctx, rootfs, ["a.txt"], "/m2", chmod=0o640)
    assert stat.S_IMODE(os.lstat(rootfs / "m2").st_mode) == 0o640


def test_normalize_dest() -> None:
    assert normalize_dest("/app", "x") == "/app/x"
    assert normalize_dest("/app", "x/") == "/app/x/"
    assert normalize_dest("/app", "../x") == "/x"
    assert normalize_dest("/app", "/abs/") == "/abs/"
    assert normalize_dest("/", "./") == "/"


# ------------------------------------------------------------------ ADD archives
def _tar(entries: list[tuple[str, bytes]], **extra: object) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o640
            info.uid = info.gid = 123
            for key, value in extra.items():
                setattr(info, key, value)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("compress", [lambda b: b, gzip.compress, lzma.compress],
                         ids=["plain", "gzip", "xz"])
def test_add_extracts_archives_by_content(
    ctx: Path, rootfs: Path, compress: object
) -> None:
    write(ctx / "archive.bin", compress(_tar([("top/f.txt", b"inside")])))  # type: ignore[operator]
    copy(ctx, rootfs, ["archive.bin"], "/x", extract=True)  # no slash: still a directory
    assert (rootfs / "x/top/f.txt").read_bytes() == b"inside"
    assert stat.S_IMODE(os.lstat(rootfs / "x/top/f.txt").st_mode) == 0o640
    if os.geteuid() == 0:
        assert os.lstat(rootfs / "x/top/f.txt").st_uid == 123  # the archive's owner


def test_add_copies_non_archives_and_copy_never_extracts(ctx: Path, rootfs: Path) -> None:
    write(ctx / "notes.tar.gz", gzip.compress(b"just text, not a tar"))
    write(ctx / "real.tar", _tar([("f", b"x")]))
    copy(ctx, rootfs, ["notes.tar.gz"], "/n/", extract=True)
    copy(ctx, rootfs, ["real.tar"], "/c/")
    assert (rootfs / "n/notes.tar.gz").read_bytes() == gzip.compress(b"just text, not a tar")
    assert (rootfs / "c/real.tar").is_file()


def test_add_archive_cannot_escape(ctx: Path, rootfs: Path, tmp_path: Path) -> None:
    write(ctx / "evil.tar", _tar([("../../../../evil.txt", b"x")]))
    with pytest.raises(InvalidParameter, match='is outside of "/app"'):
        copy(ctx, rootfs, ["evil.tar"], "/app", extract=True)
    assert not (tmp_path / "evil.txt").exists()


def test_add_archive_symlinks_resolve_inside_the_rootfs(
    ctx: Path, rootfs: Path, tmp_path: Path
) -> None:
    host = tmp_path / "hostdir"
    host.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        link = tarfile.TarInfo("l")
        link.type = tarfile.SYMTYPE
        link.linkname = str(host)
        tar.addfile(link)
        f = tarfile.TarInfo("l/pwned")
        f.size = 1
        tar.addfile(f, io.BytesIO(b"x"))
    write(ctx / "links.tar", buf.getvalue())
    copy(ctx, rootfs, ["links.tar"], "/app", extract=True)
    assert list(host.iterdir()) == []
    assert (rootfs / str(host).lstrip("/") / "pwned").exists()


# ------------------------------------------------------------------ --chown
PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\nbin:x:1:1::/bin:/sbin/nologin\n"
    "alice:x:1000:1000::/h:/bin/sh\n"
)
GROUP = "root:x:0:\nbin:x:1:\nstaff:x:50:alice\n"


@pytest.mark.parametrize(("spec", "expected"), [
    ("1000", (1000, 1000)),
    ("1000:50", (1000, 50)),
    ("alice:staff", (1000, 50)),
    ("bin", (1, 1)),  # user string used as the group name too
    ("alice:0", (1000, 0)),
    ("0:staff", (0, 50)),
])
def test_parse_chown(spec: str, expected: tuple[int, int]) -> None:
    assert parse_chown(spec, PASSWD, GROUP) == expected


def test_parse_chown_errors() -> None:
    prefix = "unable to convert uid/gid chown string to host mapping: "
    with pytest.raises(InvalidParameter) as err:
        parse_chown("bob", PASSWD, GROUP)
    assert str(err.value) == prefix + "can't find uid for user bob: no such user: bob"
    with pytest.raises(InvalidParameter) as err:
        parse_chown("root:bob", PASSWD, GROUP)
    assert str(err.value) == prefix + "can't find gid for group bob: no such group: bob"
    with pytest.raises(InvalidParameter) as err:
        parse_chown("alice", PASSWD, GROUP)  # no group named alice
    assert str(err.value) == prefix + "can't find gid for group alice: no such group: alice"
    with pytest.raises(InvalidParameter, match="invalid chown string format: bob:1:555"):
        parse_chown("bob:1:555", PASSWD, GROUP)
    with pytest.raises(InvalidParameter, match="open /etc/passwd: no such file"):
        parse_chown("alice:0", None, GROUP)
