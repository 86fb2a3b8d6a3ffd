"""docker cp / export / diff file work over temporary root filesystems: Go FileMode bits,
path resolution in a root (B23), tar out, tar in with its refusals (B22), the
symlink-swap race (CVE-2018-15664), overlay diff, and thread streaming."""

from __future__ import annotations

import asyncio
import io
import os
import stat
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from engine import rootscope
from engine.containers import archive, changes
from engine.containers.archive import ArchiveError, ExtractionPointError, ExtractOptions

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mknod, chown, xattrs)")
MTIME = 1_700_000_000


# =========================================================================== helpers
@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, Path]:
    """A container root and, next to it, a host directory that must never change."""
    root = tmp_path / "rootfs"
    host = tmp_path / "host"
    for d in ("etc", "tmp", "bin", "usr/lib", "proc", "data/sub"):
        (root / d).mkdir(parents=True)
    (root / "tmp").chmod(0o1777)
    (root / "etc/hostname").write_text("container\n")
    (root / "etc/shadow").write_text("root:*:1::::::\n")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1001::/:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\nstaff:x:50:\n")
    (root / "bin/busybox").write_bytes(b"\x7fELF" + b"\0" * 60)
    os.symlink("busybox", root / "bin/sh")
    os.symlink("/etc/shadow", root / "tmp/shadow-link")
    os.symlink("/usr/lib", root / "lib")
    os.symlink("../../../../../../..", root / "tmp/up")
    (root / "usr/lib/os-release").write_text("ID=test\n")
    (root / "data/sub/a.txt").write_text("a")
    os.link(root / "data/sub/a.txt", root / "data/hard.txt")
    host.mkdir()
    (host / "etc").mkdir()
    (host / "etc/shadow").write_text("HOST SECRET\n")
    (host / "etc/hostname").write_text("host\n")
    (host / "etc/hostname").chmod(0o600)
    return root, host


def snapshot(path: Path) -> dict[str, tuple[int, int, int, bytes | str]]:
    """Every entry below ``path``: mode, uid, size and content (or link target)."""
    out: dict[str, tuple[int, int, int, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            content: bytes | str = b""
            if stat.S_ISLNK(st.st_mode):
                content = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                content = p.read_bytes()
            out[str(p.relative_to(path))] = (st.st_mode, st.st_uid, st.st_size, content)
    return out


def tar_of(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def entry(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, **extra: object
          ) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = MTIME
    for key, value in extra.items():
        setattr(info, key, value)
    return info


def extract(root: Path, path: str, data: bytes, **options: object) -> None:
    opts = ExtractOptions(**options)  # type: ignore[arg-type]
    archive.extract_tar(root, path, io.BytesIO(data), opts)


def write_archive(root: Path, path: str) -> tuple[archive.PathStat, bytes]:
    source = archive.open_archive(root, path)
    buf = io.BytesIO()
    try:
        source.write_to(buf)
    finally:
        source.close()
    return source.stat, buf.getvalue()


def names_of(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return [m.name + ("/" if m.isdir() and m.name != "/" else "") for m in tf]


# =========================================================================== FileMode
@pytest.mark.parametrize(("st_mode", "go_mode"), [
    (stat.S_IFDIR | 0o755, 2147484141),  # captured: {"name":"etc","mode":2147484141}
    (stat.S_IFLNK | 0o777, 134218239),  # captured: /bin/sh
    (stat.S_IFREG | 0o644, 420),  # captured: a.txt
    (stat.S_IFDIR | 0o1777, 2148532735),  # captured: /tmp (sticky)
    (stat.S_IFDIR | 0o555, 2147484013),  # captured: /proc
    (stat.S_IFREG | 0o4755, (1 << 23) | 0o755),
    (stat.S_IFREG | 0o2755, (1 << 22) | 0o755),
    (stat.S_IFCHR | 0o666, (1 << 26) | (1 << 21) | 0o666),
    (stat.S_IFBLK | 0o660, (1 << 26) | 0o660),
    (stat.S_IFIFO | 0o600, (1 << 25) | 0o600),
    (stat.S_IFSOCK | 0o755, (1 << 24) | 0o755),
])
def test_go_file_mode(st_mode: int, go_mode: int) -> None:
    assert archive.go_file_mode(st_mode) == go_mode


def test_go_file_mode_is_dir_bit() -> None:
    """The CLI decides copy semantics on Mode.IsDir(): a raw st_mode reads as a file."""
    assert archive.go_file_mode(stat.S_IFDIR | 0o755) & (1 << 31)
    assert not (stat.S_IFDIR | 0o755) & (1 << 31)


def test_rfc3339_nano() -> None:
    assert archive.rfc3339_nano(1_795_811_494 * 10**9) == "2026-11-27T20:31:34Z"
    assert archive.rfc3339_nano(1_795_819_521_965_024_222) == "2026-11-27T22:45:21.965024222Z"
    assert archive.rfc3339_nano(1_795_819_521_500_000_000) == "2026-11-27T22:45:21.5Z"


@pytest.mark.parametrize(("path", "parts", "follow", "name"), [
    ("/etc", ["etc"], False, "etc"),
    ("/etc/", ["etc"], True, "etc"),
    ("/etc/.", ["etc"], True, "."),
    ("/", [], True, "/"),
    (".", [], True, "."),
    ("/bin/sh", ["bin", "sh"], False, "sh"),
    ("/../../../../etc/hostname", ["etc", "hostname"], False, "hostname"),
    ("tmp//a/../b", ["tmp", "b"], False, "b"),
])
def test_archive_path_parse(path: str, parts: list[str], follow: bool, name: str) -> None:
    parsed = archive.ArchivePath.parse(path)
    assert (parsed.parts, parsed.follow, parsed.name) == (parts, follow, name)


# =========================================================================== stat (B23)
def test_stat_captured_shapes(world: tuple[Path, Path]) -> None:
    root, _ = world
    sh = archive.stat_path(root, "/bin/sh")
    assert (sh.name, sh.size, sh.mode, sh.link_target) == ("sh", 7, 134218239, "/bin/busybox")
    tmp = archive.stat_path(root, "/tmp")
    assert tmp.mode == 2148532735 and tmp.link_target == ""
    assert archive.stat_path(root, "/").name == "/"
    assert archive.stat_path(root, "/etc/.").name == "."


def test_stat_stays_in_the_root(world: tuple[Path, Path]) -> None:
    root, _ = world
    hostname = archive.stat_path(root, "../../../../../etc/hostname")
    assert hostname.size == len("container\n")
    link = archive.stat_path(root, "/tmp/shadow-link")
    assert link.mode & archive.MODE_SYMLINK and link.link_target == "/etc/shadow"
    through = archive.stat_path(root, "/lib/os-release")  # via a symlinked directory
    assert through.size == len("ID=test\n")
    up = archive.stat_path(root, "/tmp/up/")  # a link climbing out: clamped at "/"
    assert up.mode & archive.MODE_DIR
    with pytest.raises(FileNotFoundError):
        archive.stat_path(root, "/proc/self/environ")
    with pytest.raises(FileNotFoundError):
        archive.stat_path(root, "/nonexist")
    with pytest.raises(NotADirectoryError):
        archive.stat_path(root, "/bin/sh/")


def test_link_target_of_dangling_and_looping_links(world: tuple[Path, Path]) -> None:
    root, _ = world
    os.symlink("/missing/dir/file", root / "dangling")
    assert archive.stat_path(root, "/dangling").link_target == "/missing/dir/file"
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    with pytest.raises(OSError):
        archive.stat_path(root, "/loop1/")


# =========================================================================== tar out
def test_tar_names_rooted_at_the_basename(world: tuple[Path, Path]) -> None:
    root, _ = world
    st, data = write_archive(root, "/etc")
    assert st.name == "etc"
    assert names_of(data) == ["etc/", "etc/group", "etc/hostname", "etc/passwd", "etc/shadow"]
    _, data = write_archive(root, "/etc/.")
    assert names_of(data)[:2] == ["./", "./group"]
    _, data = write_archive(root, "/bin/sh")
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        (only,) = tf.getmembers()
    assert only.name == "sh" and only.issym() and only.linkname == "busybox"
    _, data = write_archive(root, "/lib/")  # trailing slash: the link's directory
    assert names_of(data) == ["lib/", "lib/os-release"]
    _, data = write_archive(root, "/")
    assert names_of(data)[:3] == ["/", "/bin/", "/bin/busybox"]
    assert data.endswith(b"\0" * 1024) and len(data) % 512 == 0


def test_tar_never_follows_links_out(world: tuple[Path, Path]) -> None:
    root, _ = world
    _, data = write_archive(root, "/tmp")
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        members = {m.name: m for m in tf}
        assert members["tmp/shadow-link"].issym()
        assert members["tmp/up"].issym()
        assert b"HOST SECRET" not in data
    # `docker cp -L` asks for the stat's linkTarget: the container's file, not the host's
    target = archive.stat_path(root, "/tmp/shadow-link").link_target
    _, data = write_archive(root, target)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        member = tf.next()
        assert member is not None
        extracted = tf.extractfile(member)
        assert extracted is not None and extracted.read() == b"root:*:1::::::\n"


def test_tar_hardlinks_and_content(world: tuple[Path, Path]) -> None:
    root, _ = world
    _, data = write_archive(root, "/data")
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        members = {m.name: m for m in tf.getmembers()}
        assert members["data/hard.txt"].isfile()
        assert members["data/sub/a.txt"].islnk()
        assert members["data/sub/a.txt"].linkname == "data/hard.txt"
        f = tf.extractfile(members["data/hard.txt"])
        assert f is not None and f.read() == b"a"


@ROOT_ONLY
def test_tar_special_files_are_headers_only(world: tuple[Path, Path]) -> None:
    """A FIFO or device node is archived, never opened (opening a FIFO would block)."""
    root, _ = world
    os.mkfifo(root / "tmp/fifo")
    os.mknod(root / "tmp/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    _, data = write_archive(root, "/tmp")
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        members = {m.name: m for m in tf.getmembers()}
    assert members["tmp/fifo"].isfifo()
    assert members["tmp/null"].ischr() and (members["tmp/null"].devmajor,
                                            members["tmp/null"].devminor) == (1, 3)


def test_export_names_are_relative(world: tuple[Path, Path]) -> None:
    root, _ = world
    export = archive.RootfsExport(root)
    buf = io.BytesIO()
    try:
        export.write_to(buf)
    finally:
        export.close()
    names = names_of(buf.getvalue())
    assert names[0] == "bin/" and "bin/busybox" in names and "./" not in names
    assert not any(n.startswith("/") for n in names)


# =========================================================================== tar in (B22)
def test_extract_plain_file_and_directory(world: tuple[Path, Path]) -> None:
    root, _ = world
    data = tar_of((entry("dir", tarfile.DIRTYPE, 0o750), None), (entry("dir/f", mode=0o640), b"x"),
                  (entry("a.txt"), b"hello"))
    extract(root, "/tmp", data, same_owner=False)
    assert (root / "tmp/a.txt").read_text() == "hello"
    assert stat.S_IMODE((root / "tmp/dir").stat().st_mode) == 0o750
    assert (root / "tmp/dir").stat().st_mtime == MTIME  # directory times set last
    assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o1777  # the point is untouched


def test_extract_fifo_and_symlink_metadata(world: tuple[Path, Path]) -> None:
    root, _ = world
    data = tar_of((entry("pipe", tarfile.FIFOTYPE, 0o640), None),
                  (entry("link", tarfile.SYMTYPE, linkname="/etc/passwd"), None))
    extract(root, "/tmp", data, same_owner=False)
    st = (root / "tmp/pipe").lstat()
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    assert os.readlink(root / "tmp/link") == "/etc/passwd"
    assert (root / "tmp/link").lstat().st_mtime == MTIME


@pytest.mark.parametrize(("members", "message"), [
    ([(entry("../../../../x"), b"x")], '"../../../../x" is outside of "/tmp"'),
    ([(entry("a/../../x"), b"x")], '"a/../../x" is outside of "/tmp"'),
    ([(entry("evil2", tarfile.SYMTYPE, linkname="../../../../../../../"), None)],
     'invalid symlink "/tmp/evil2" -> "../../../../../../../"'),
    ([(entry("relok", tarfile.SYMTYPE, linkname="../etc/passwd"), None)],
     'invalid symlink "/tmp/relok" -> "../etc/passwd"'),
    ([(entry("hl2", tarfile.LNKTYPE, linkname="../../etc/hostname"), None)],
     'invalid hardlink "/etc/hostname" -> "../../etc/hostname"'),
    ([(entry("hl", tarfile.LNKTYPE, linkname="/etc/hostname"), None)],
     "link /tmp/etc/hostname /tmp/hl: no such file or directory"),
    ([(entry("null1", tarfile.CHRTYPE, devmajor=1, devminor=1), None)],
     'refusing to create device node "/tmp/null1"'),
])
def test_extract_refusals(world: tuple[Path, Path], members: list[tuple[tarfile.TarInfo,
                          bytes | None]], message: str) -> None:
    root, host = world
    before = snapshot(host), snapshot(root)
    with pytest.raises(ArchiveError, match=message.replace("(", r"\(")):
        extract(root, "/tmp", tar_of(*members))
    assert (snapshot(host), snapshot(root)) == before


def test_extract_absolute_and_link_parents_stay_in_root(world: tuple[Path, Path]) -> None:
    root, host = world
    before = snapshot(host)
    data = tar_of((entry("/abs"), b"a"),
                  (entry("/../x_rooted"), b"r"),
                  (entry("evil", tarfile.SYMTYPE, linkname="/"), None),
                  (entry("evil/x_evil"), b"e"),
                  (entry("hostlink", tarfile.SYMTYPE, linkname=str(host / "etc")), None),
                  (entry("hostlink/hostname"), b"pwned"))
    extract(root, "/tmp", data)
    assert (root / "tmp/abs").read_text() == "a"  # relative to the extraction point
    assert (root / "tmp/x_rooted").read_text() == "r"
    assert (root / "x_evil").read_text() == "e"  # below a link to "/": the container's /
    assert (root / str(host / "etc").lstrip("/") / "hostname").read_text() == "pwned"
    assert snapshot(host) == before


def test_extract_query_path_is_clamped_and_resolved_in_root(world: tuple[Path, Path]) -> None:
    root, host = world
    before = snapshot(host)
    extract(root, "/../../../../tmp", tar_of((entry("q"), b"q")))
    assert (root / "tmp/q").exists()
    extract(root, "/tmp/up", tar_of((entry("through-up"), b"u")))  # link climbing out
    assert (root / "through-up").exists()
    os.symlink(str(host), root / "hostdir")
    with pytest.raises(FileNotFoundError):
        extract(root, "/hostdir", tar_of((entry("h"), b"h")))  # host path means nothing
    assert snapshot(host) == before


def test_extract_point_errors(world: tuple[Path, Path]) -> None:
    root, _ = world
    with pytest.raises(FileNotFoundError):
        extract(root, "/nonexist", tar_of((entry("m"), b"m")))
    with pytest.raises(ExtractionPointError, match="extraction point is not a directory"):
        extract(root, "/etc/passwd", tar_of((entry("m"), b"m")))
    with pytest.raises(ArchiveError, match="archive/tar: invalid tar header"):
        extract(root, "/tmp", b"this is not a tar file at all" * 40)
    extract(root, "/tmp", b"")  # an empty body is fine


def test_extract_truncated_archive(world: tuple[Path, Path]) -> None:
    root, _ = world
    data = tar_of((entry("big"), b"x" * 5000))
    with pytest.raises(ArchiveError, match="unexpected EOF"):
        extract(root, "/tmp", data[:2048])


def test_no_overwrite_dir_non_dir(world: tuple[Path, Path]) -> None:
    root, _ = world
    with pytest.raises(ArchiveError,
                       match='cannot overwrite directory "/bin" with non-directory "/"'):
        extract(root, "/", tar_of((entry("bin"), b"q")), no_overwrite_dir_non_dir=True)
    with pytest.raises(ArchiveError, match='cannot overwrite non-directory "/etc/passwd" '
                                           'with directory "/"'):
        extract(root, "/", tar_of((entry("etc/passwd", tarfile.DIRTYPE, 0o755), None)),
                no_overwrite_dir_non_dir=True)
    assert (root / "bin/busybox").exists()
    extract(root, "/", tar_of((entry("etc/passwd"), b"new")), no_overwrite_dir_non_dir=True)
    assert (root / "etc/passwd").read_text() == "new"


def test_replacing_a_symlink_never_writes_through_it(world: tuple[Path, Path]) -> None:
    root, host = world
    os.symlink(str(host / "etc/hostname"), root / "tmp/target")
    before = snapshot(host)
    extract(root, "/tmp", tar_of((entry("target", mode=0o777), b"replaced")))
    assert not (root / "tmp/target").is_symlink()
    assert (root / "tmp/target").read_text() == "replaced"
    assert snapshot(host) == before  # content and mode 0600 (CVE-2021-41089)


@ROOT_ONLY
def test_owner_mode_and_copy_uid_gid(world: tuple[Path, Path]) -> None:
    root, _ = world
    extract(root, "/tmp", tar_of((entry("owned", mode=0o4755, uid=1234, gid=4321), b"o")))
    st = (root / "tmp/owned").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 4321, 0o4755)
    assert archive.resolve_user(root, "user") == (1000, 1001)
    assert archive.resolve_user(root, "user:staff") == (1000, 50)
    assert archive.resolve_user(root, "4242") == (4242, 0)
    extract(root, "/tmp", tar_of((entry("mine", uid=7, gid=7), b"m")), owner=(1000, 1001))
    assert ((root / "tmp/mine").stat().st_uid, (root / "tmp/mine").stat().st_gid) == (1000, 1001)


def test_gzip_body_is_accepted(world: tuple[Path, Path]) -> None:
    import gzip

    root, _ = world
    extract(root, "/tmp", gzip.compress(tar_of((entry("gz"), b"z"))))
    assert (root / "tmp/gz").read_text() == "z"


# =========================================================================== the race
def _swapper(root: Path, outside: Path, stop: threading.Event) -> None:
    """A container process swapping a directory for links out of the root, forever."""
    victim = root / "tmp/swap"
    spare = root / "tmp/swap.dir"
    targets = [str(outside), "../../../../../../../../" + str(outside).lstrip("/")]
    i = 0
    while not stop.is_set():
        try:
            if victim.is_symlink():
                victim.unlink()
                os.rename(spare, victim) if spare.exists() else victim.mkdir()
            else:
                if victim.exists():
                    os.rename(victim, spare)
                os.symlink(targets[i % 2], victim)
        except OSError:
            pass
        i += 1


def test_symlink_swap_race_cannot_escape(world: tuple[Path, Path]) -> None:
    """CVE-2018-15664: extraction and archiving while a directory flips to a link."""
    root, host = world
    outside = host / "etc"
    (root / "tmp/swap").mkdir()
    (root / "tmp/swap/inside.txt").write_text("inside")
    before = snapshot(host)
    stop = threading.Event()
    swapper = threading.Thread(target=_swapper, args=(root, outside, stop), daemon=True)
    swapper.start()
    try:
        deadline = time.monotonic() + 2.0
        rounds = 0
        while time.monotonic() < deadline:
            data = tar_of((entry("swap/written"), b"w"), (entry("swap/hostname", mode=0o777),
                                                         b"pwned"))
            try:
                extract(root, "/tmp", data)
            except (ArchiveError, OSError):
                pass
            try:
                _, out = write_archive(root, "/tmp/swap/")
                assert b"HOST SECRET" not in out and b"host\n" not in out
            except OSError:
                pass
            rounds += 1
    finally:
        stop.set()
        swapper.join()
    assert rounds > 10
    assert snapshot(host) == before


# =========================================================================== diff
def _whiteout(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))


@ROOT_ONLY
def test_changes_kinds_order_and_parents(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    for d in ("bin", "etc", "tmp", "opq", "usr/share"):
        (lower / d).mkdir(parents=True)
    for f in ("bin/ls", "bin/cat", "etc/passwd", "etc/group", "opq/old1", "opq/keep"):
        (lower / f).write_text("x")
    os.utime(lower / "etc/passwd", (MTIME, MTIME))
    os.symlink("/proc/mounts", lower / "etc/mtab-ish")
    # the container: deleted /bin/ls and /etc/group, appended to /etc/passwd, new /a/b/c/f,
    # /tmp/new, recreated /opq (opaque, with "keep" again), and runtime mountpoints
    for d in ("bin", "etc", "tmp", "a/b/c", "opq", "proc", "dev/pts"):
        (upper / d).mkdir(parents=True, exist_ok=True)
    _whiteout(upper / "bin/ls")
    _whiteout(upper / "etc/group")
    (upper / "etc/passwd").write_text("x+more")
    (upper / "a/b/c/f").write_text("f")
    (upper / "tmp/new").write_text("")
    os.setxattr(upper / "opq", changes.OPAQUE_XATTR, b"y")
    (upper / "opq/keep").write_text("x")
    os.utime(upper / "opq/keep", (MTIME, MTIME))
    os.utime(lower / "opq/keep", (MTIME, MTIME))
    for f in ("etc/hosts", "etc/hostname", "etc/resolv.conf"):
        (upper / f).write_text("")
    found = changes.changes(upper, [lower])
    assert found == [
        {"Path": "/a", "Kind": 1}, {"Path": "/a/b", "Kind": 1}, {"Path": "/a/b/c", "Kind": 1},
        {"Path": "/a/b/c/f", "Kind": 1},
        {"Path": "/bin", "Kind": 0}, {"Path": "/bin/ls", "Kind": 2},
        {"Path": "/etc", "Kind": 0}, {"Path": "/etc/group", "Kind": 2},
        {"Path": "/etc/passwd", "Kind": 0},
        {"Path": "/opq", "Kind": 0}, {"Path": "/opq/old1", "Kind": 2},
        {"Path": "/tmp", "Kind": 0}, {"Path": "/tmp/new", "Kind": 1},
    ]


@ROOT_ONLY
def test_changes_layers_whiteouts_and_metadata(tmp_path: Path) -> None:
    top_layer, base, upper = tmp_path / "l1", tmp_path / "l0", tmp_path / "upper"
    (base / "d").mkdir(parents=True)
    (base / "d/gone-in-image").write_text("x")
    (base / "d/mode").write_text("x")
    (top_layer / "d").mkdir(parents=True)
    _whiteout(top_layer / "d/gone-in-image")
    (upper / "d").mkdir(parents=True)
    (upper / "d/gone-in-image").write_text("back")  # deleted by the image: added here
    (upper / "d/mode").write_text("x")
    st = (base / "d/mode").stat()
    os.utime(upper / "d/mode", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.chmod(upper / "d/mode", 0o600)
    _whiteout(upper / "d/never-existed")  # nothing to delete in the image: not reported
    assert changes.changes(upper, [top_layer, base]) == [
        {"Path": "/d", "Kind": 0}, {"Path": "/d/gone-in-image", "Kind": 1},
        {"Path": "/d/mode", "Kind": 0},
    ]


def test_changes_empty_and_lowerdir_option(tmp_path: Path) -> None:
    (tmp_path / "upper").mkdir()
    (tmp_path / "lower").mkdir()
    assert changes.changes(tmp_path / "upper", [tmp_path / "lower"]) == []
    assert changes.lower_dirs_of(("lowerdir=/a/fs:/b/fs", "upperdir=/c", "workdir=/w")) == [
        Path("/a/fs"), Path("/b/fs")]


def test_changes_does_not_follow_links(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    lower.mkdir()
    os.symlink(str(tmp_path / "outside"), lower / "link")  # an image symlink to the host
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/file").write_text("x")
    (upper / "link").mkdir(parents=True)  # the container made a directory there
    (upper / "link/file").write_text("x")
    assert changes.changes(upper, [lower]) == [
        {"Path": "/link", "Kind": 0}, {"Path": "/link/file", "Kind": 1}]


# =========================================================================== streaming
def _producer(total: int) -> Callable[[archive.Sink], None]:
    def produce(sink: archive.Sink) -> None:
        block = b"x" * 65536
        for _ in range(total // len(block)):
            sink.write(block)
    return produce


@pytest.mark.asyncio
async def test_stream_from_thread_yields_everything() -> None:
    total = 5 * archive.CHUNK
    received = 0
    async for chunk in archive.stream_from_thread(_producer(total)):
        received += len(chunk)
    assert received == total


@pytest.mark.asyncio
async def test_stream_from_thread_stops_the_producer_when_closed() -> None:
    written: list[int] = []
    done = threading.Event()

    def endless(sink: archive.Sink) -> None:
        try:
            while True:
                sink.write(b"y" * 65536)
                written.append(1)
        finally:
            done.set()

    stream = archive.stream_from_thread(endless)
    await anext(stream)
    await stream.aclose()
    assert done.is_set()  # aclose waited for the producer to finish
    assert len(written) < 200  # bounded read-ahead, not unbounded buffering


@pytest.mark.asyncio
async def test_stream_from_thread_raises_the_producer_error() -> None:
    def failing(sink: archive.Sink) -> None:
        sink.write(b"z" * (archive.CHUNK + 1))
        raise OSError(5, "Input/output error")

    chunks = []
    with pytest.raises(OSError, match="Input/output error"):
        async for chunk in archive.stream_from_thread(failing):
            chunks.append(chunk)
    assert sum(map(len, chunks)) >= archive.CHUNK


def test_read_small_file_only_reads_regular_files(world: tuple[Path, Path]) -> None:
    root, _ = world
    fd = rootscope.open_root(root)
    try:
        assert rootscope.read_small_file(fd, "/etc/hostname") == b"container\n"
        assert rootscope.read_small_file(fd, "/tmp/shadow-link") == b"root:*:1::::::\n"
        assert rootscope.read_small_file(fd, "/etc") is None
        assert rootscope.read_small_file(fd, "/missing") is None
    finally:
        os.close(fd)


def _wide_tree(root: Path) -> None:
    for i in range(40):
        (root / f"d{i:02d}" / "sub").mkdir(parents=True)
        (root / f"d{i:02d}" / "sub" / "f").write_bytes(os.urandom(64 * 1024))


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.asyncio
async def test_abandoned_download_leaves_no_descriptor(tmp_path: Path) -> None:
    """A client leaving mid-tar must not leave a descriptor in the root (the daemon
    could not unmount a stopped container's root: EBUSY)."""
    root = tmp_path / "rootfs"
    await asyncio.to_thread(_wide_tree, root)
    before = await asyncio.to_thread(_open_fds)
    source = await asyncio.to_thread(archive.open_archive, root, "/")
    chunks = archive.stream_from_thread(source.write_to)
    await anext(chunks)
    await chunks.aclose()
    await asyncio.to_thread(source.close)
    assert await asyncio.to_thread(_open_fds) == before
