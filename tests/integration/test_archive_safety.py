"""Archive path safety through the real daemon (reliability.md B22, B23; A8: CVE-2018-15664,
CVE-2019-14271, CVE-2021-41089).

Every malicious tar entry and query path of B22 is sent to a running and to a created
container. The daemon's roots live under the harness's temporary directory, so "outside"
is observable: after every request, the paths a naive extractor would have hit (host
``/``, ``/tmp``, ``/etc``, and the daemon's own directories next to the container root)
are checked, and host file modes and link counts must be unchanged.

With ``--against-dockerd`` the same requests go to dockerd 20.10; where it answers 500
(or creates the device node) the test accepts that, as B22's "Observed" column records.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import secrets
import stat
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.harness import rawhttp
from tests.harness.cli import DockerCLI
from tests.harness.daemon import BaseDaemon

pytestmark = pytest.mark.root

LOOP = "while true; do sleep 3600; done"
MARK = "relx" + secrets.token_hex(3)  # in every name we write: found anywhere = a leak
HOST_FILES = ("/etc/hostname", "/etc/passwd", "/etc/shadow", "/etc/hosts", "/etc/group")
MTIME = 1_700_000_000


# =========================================================================== helpers
def _entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes | None = b"",
           **extra: Any) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = extra.pop("mode", 0o644)
    info.mtime = MTIME
    for key, value in extra.items():
        setattr(info, key, value)
    if kind != tarfile.REGTYPE:
        data = None
    return info, data


def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _put(daemon: BaseDaemon, ref: str, path: str | None, body: bytes,
         no_overwrite: bool = True) -> rawhttp.Response:
    query = []
    if path is not None:
        query.append("path=" + quote(path, safe=""))
    if no_overwrite:
        query.append("noOverwriteDirNonDir=true")
    return daemon.api("PUT", f"/v1.41/containers/{ref}/archive?" + "&".join(query), body,
                      headers={"Content-Type": "text/plain"})


def _get(daemon: BaseDaemon, ref: str, path: str, method: str = "GET") -> rawhttp.Response:
    return daemon.api(method, f"/v1.41/containers/{ref}/archive?path={quote(path, safe='')}")


def _stat_header(resp: rawhttp.Response) -> dict[str, Any]:
    raw = resp.header("X-Docker-Container-Path-Stat")
    assert raw, resp.headers
    data = json.loads(base64.standard_b64decode(raw))
    assert isinstance(data, dict)
    return data


def _message(resp: rawhttp.Response) -> str:
    message = resp.json()["message"]
    assert isinstance(message, str)
    return message


def _members(body: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(body)) as tf:
        for member in tf:
            f = tf.extractfile(member) if member.isfile() else None
            out[member.name] = (member, f.read() if f else b"")
    return out


def _fingerprint(path: str) -> tuple[int, int, int, int, int, str] | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    digest = ""
    if stat.S_ISREG(st.st_mode):
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return (st.st_mode, st.st_uid, st.st_gid, st.st_nlink, st.st_size, digest)


class HostWatch:
    """What must never change: host files, and no name with MARK outside a container
    root. A container root here is the merged dir or an upper dir (``.../fs`` for
    wharfd's snapshots, ``.../diff`` for dockerd's overlay2)."""

    def __init__(self, daemon: BaseDaemon) -> None:
        self.daemon = daemon
        self.files = {p: _fingerprint(p) for p in HOST_FILES}
        self.tops = {d: set(os.listdir(d)) for d in ("/", "/tmp", "/etc")}

    def leaks(self, legit: set[str]) -> list[str]:
        """Host paths holding MARK that are not ``<container root><a legit path>``."""
        found = []
        for top, before in self.tops.items():
            found += [os.path.join(top, n) for n in set(os.listdir(top)) - before if MARK in n]
        for dirpath, dirnames, filenames in os.walk(self.daemon.tmp):
            # A mounted container root is the container's own view (and walking it would
            # keep it busy when the daemon unmounts a stopped container's root): its
            # files are seen through the snapshot upper directories instead.
            dirnames[:] = [d for d in dirnames if not os.path.ismount(os.path.join(dirpath, d))]
            for name in dirnames + filenames:
                if MARK not in name:
                    continue
                full = os.path.join(dirpath, name)
                if not any(_inside_container_root(full, p) for p in legit):
                    found.append(full)
        return found

    def assert_clean(self, legit: set[str]) -> None:
        assert self.leaks(legit) == []
        assert {p: _fingerprint(p) for p in HOST_FILES} == self.files


def _inside_container_root(full: str, container_path: str) -> bool:
    """``full`` is ``<root>/<container_path>/...`` for a root that is a container's."""
    index = full.find(container_path)
    while index >= 0:
        prefix = full[:index]
        if prefix.endswith(("/fs", "/diff", "/rootfs", "/merged")):
            return True
        index = full.find(container_path, index + 1)
    return False


# =========================================================================== fixtures
@pytest.fixture(scope="module")
def containers(daemon: BaseDaemon) -> Iterator[dict[str, str]]:
    cli = DockerCLI(daemon)
    names = {"running": f"arun-{MARK}", "created": f"acre-{MARK}"}
    cli.ok("run", "-d", "--name", names["running"], "busybox", "sh", "-c", LOOP)
    cli.ok("create", "--name", names["created"], "busybox", "sh", "-c", LOOP)
    for name in names.values():
        # an in-container link to "/" and to /etc, and a file only the container has
        setup = _tar(_entry("rootlink", tarfile.SYMTYPE, linkname="/"),
                     _entry("etclink", tarfile.SYMTYPE, linkname="/etc"),
                     _entry("shadowlink", tarfile.SYMTYPE, linkname="/etc/shadow"),
                     _entry(f"marker-{MARK}", data=b"container file\n"))
        resp = _put(daemon, name, "/tmp", setup)
        assert resp.status == 200, resp.text
    yield names
    cli("rm", "-f", *names.values())


@pytest.fixture(params=["running", "created"])
def target(request: pytest.FixtureRequest, containers: dict[str, str]) -> str:
    return containers[request.param]


@pytest.fixture
def watch(daemon: BaseDaemon) -> HostWatch:
    return HostWatch(daemon)


LEGIT = {"/tmp/", f"/marker-{MARK}", f"/x_evil-{MARK}", f"/through-{MARK}"}


def _error_status(resp: rawhttp.Response, wharfd: int, against_dockerd: bool) -> None:
    allowed = {wharfd, 500} if against_dockerd else {wharfd}
    assert resp.status in allowed, (resp.status, resp.text)
    assert resp.header("Content-Type") == "application/json"


# =========================================================================== B22
def test_b22_dotdot_entry(daemon: BaseDaemon, target: str, watch: HostWatch,
                          against_dockerd: bool) -> None:
    resp = _put(daemon, target, "/tmp", _tar(_entry(f"../../../../x-{MARK}", data=b"x")))
    _error_status(resp, 400, against_dockerd)
    assert f'"../../../../x-{MARK}" is outside of "/tmp"' in _message(resp)
    watch.assert_clean(LEGIT)


def test_b22_absolute_entry_is_relative_to_the_point(daemon: BaseDaemon, target: str,
                                                     watch: HostWatch) -> None:
    resp = _put(daemon, target, "/tmp", _tar(_entry(f"/abs-{MARK}", data=b"a")))
    assert resp.status == 200, resp.text
    assert _get(daemon, target, f"/tmp/abs-{MARK}", "HEAD").status == 200
    watch.assert_clean(LEGIT)


def test_b22_entry_below_a_link_to_root(daemon: BaseDaemon, target: str,
                                        watch: HostWatch) -> None:
    resp = _put(daemon, target, "/tmp", _tar(
        _entry(f"evil-{MARK}", tarfile.SYMTYPE, linkname="/"),
        _entry(f"evil-{MARK}/x_evil-{MARK}", data=b"e")))
    assert resp.status == 200, resp.text
    landed = _get(daemon, target, f"/x_evil-{MARK}")
    assert landed.status == 200
    assert _members(landed.body)[f"x_evil-{MARK}"][1] == b"e"
    assert not os.path.exists(f"/x_evil-{MARK}")
    watch.assert_clean(LEGIT)


def test_b22_relative_symlink_escape(daemon: BaseDaemon, target: str, watch: HostWatch,
                                     against_dockerd: bool) -> None:
    resp = _put(daemon, target, "/tmp", _tar(
        _entry(f"evil2-{MARK}", tarfile.SYMTYPE, linkname="../../../../../../../")))
    _error_status(resp, 400, against_dockerd)
    assert f'invalid symlink "/tmp/evil2-{MARK}" -> "../../../../../../../"' in _message(resp)
    watch.assert_clean(LEGIT)


def test_b22_absolute_hardlink(daemon: BaseDaemon, target: str, watch: HostWatch,
                               against_dockerd: bool) -> None:
    resp = _put(daemon, target, "/tmp", _tar(
        _entry(f"hl-{MARK}", tarfile.LNKTYPE, linkname="/etc/hostname")))
    _error_status(resp, 400, against_dockerd)
    assert f"link /tmp/etc/hostname /tmp/hl-{MARK}: no such file or directory" in _message(resp)
    watch.assert_clean(LEGIT)  # includes the host /etc/hostname link count


def test_b22_dotdot_hardlink(daemon: BaseDaemon, target: str, watch: HostWatch,
                             against_dockerd: bool) -> None:
    resp = _put(daemon, target, "/tmp", _tar(
        _entry(f"hl2-{MARK}", tarfile.LNKTYPE, linkname="../../etc/hostname")))
    _error_status(resp, 400, against_dockerd)
    assert 'invalid hardlink "/etc/hostname" -> "../../etc/hostname"' in _message(resp)
    watch.assert_clean(LEGIT)


def test_b22_char_device(daemon: BaseDaemon, target: str, watch: HostWatch,
                         against_dockerd: bool) -> None:
    resp = _put(daemon, target, "/tmp", _tar(
        _entry(f"null1-{MARK}", tarfile.CHRTYPE, devmajor=1, devminor=1)))
    if against_dockerd:
        assert resp.status == 200  # dockerd creates it (B22 "Observed")
    else:
        assert resp.status == 400, resp.text
        assert "device node" in _message(resp)
        assert _get(daemon, target, f"/tmp/null1-{MARK}", "HEAD").status == 404
    watch.assert_clean(LEGIT)


def test_b22_query_path_is_clamped(daemon: BaseDaemon, target: str, watch: HostWatch) -> None:
    resp = _put(daemon, target, "/../../../../tmp", _tar(_entry(f"q-{MARK}", data=b"q")))
    assert resp.status == 200, resp.text
    assert _get(daemon, target, f"/tmp/q-{MARK}", "HEAD").status == 200
    watch.assert_clean(LEGIT)


def test_b22_query_path_through_a_link_to_root(daemon: BaseDaemon, target: str,
                                               watch: HostWatch) -> None:
    resp = _put(daemon, target, "/tmp/rootlink", _tar(_entry(f"through-{MARK}", data=b"t")))
    assert resp.status == 200, resp.text
    assert _get(daemon, target, f"/through-{MARK}", "HEAD").status == 200
    assert not os.path.exists(f"/through-{MARK}")
    watch.assert_clean(LEGIT)


def test_b22_missing_path(daemon: BaseDaemon, target: str, watch: HostWatch) -> None:
    resp = _put(daemon, target, f"/nonexist-{MARK}", _tar(_entry("m", data=b"m")))
    assert resp.status == 404
    assert _message(resp) == f"Could not find the file /nonexist-{MARK} in container {target}"
    watch.assert_clean(LEGIT)


def test_b22_file_as_destination(daemon: BaseDaemon, target: str, watch: HostWatch,
                                 against_dockerd: bool) -> None:
    resp = _put(daemon, target, "/etc/passwd", _tar(_entry(f"m-{MARK}", data=b"m")))
    _error_status(resp, 400, against_dockerd)
    assert _message(resp) == "extraction point is not a directory"
    watch.assert_clean(LEGIT)


def test_b22_no_overwrite_dir_with_file(daemon: BaseDaemon, target: str, watch: HostWatch,
                                        against_dockerd: bool) -> None:
    resp = _put(daemon, target, "/", _tar(_entry("bin", data=b"not a dir")))
    _error_status(resp, 400, against_dockerd)
    assert 'cannot overwrite directory "/bin" with non-directory "/"' in _message(resp)
    bin_stat = _stat_header(_get(daemon, target, "/bin", "HEAD"))
    assert bin_stat["mode"] & (1 << 31)
    watch.assert_clean(LEGIT)


def test_b22_garbage_and_empty(daemon: BaseDaemon, target: str, watch: HostWatch,
                               against_dockerd: bool) -> None:
    resp = _put(daemon, target, "/tmp", b"this is not a tar file at all" * 40)
    _error_status(resp, 400, against_dockerd)
    assert "archive/tar: invalid tar header" in _message(resp)
    assert _put(daemon, target, "/tmp", b"").status == 200
    watch.assert_clean(LEGIT)


def test_b22_no_path(daemon: BaseDaemon, target: str) -> None:
    resp = _put(daemon, target, None, _tar(_entry("np", data=b"n")))
    assert resp.status == 400
    assert "path" in _message(resp) and "empty" in _message(resp)


def test_b22_chunked_upload(daemon: BaseDaemon, target: str) -> None:
    """The CLI sends the tar chunked, with Content-Type text/plain (captured)."""
    body = _tar(_entry(f"chunked-{MARK}", data=b"c" * 100_000))
    with rawhttp.Connection(daemon.socket) as conn:
        conn.send_request("PUT", f"/v1.41/containers/{target}/archive?path=%2Ftmp", body,
                          headers={"Content-Type": "text/plain"}, chunked=True)
        resp = conn.read_response("PUT")
    assert resp.status == 200, resp.text
    assert _stat_header(_get(daemon, target, f"/tmp/chunked-{MARK}", "HEAD"))["size"] == 100_000


# =========================================================================== B23
def test_b23_dotdot_query_reads_the_container_file(daemon: BaseDaemon, target: str) -> None:
    resp = _get(daemon, target, f"../../../../../tmp/marker-{MARK}")
    assert resp.status == 200
    assert resp.header("Content-Type") == "application/x-tar"
    assert _members(resp.body)[f"marker-{MARK}"][1] == b"container file\n"
    passwd = _get(daemon, target, "../../../../../etc/passwd")
    assert passwd.status == 200
    content = _members(passwd.body)["passwd"][1]
    assert content.startswith(b"root:x:0:0:") and content != Path("/etc/passwd").read_bytes()


def test_b23_symlink_to_shadow_is_not_followed(daemon: BaseDaemon, target: str) -> None:
    head = _get(daemon, target, "/tmp/shadowlink", "HEAD")
    assert head.status == 200 and head.body == b""
    st = _stat_header(head)
    assert st["name"] == "shadowlink" and st["linkTarget"] == "/etc/shadow"
    assert st["mode"] & (1 << 27)
    body = _get(daemon, target, "/tmp/shadowlink").body
    member, data = _members(body)["shadowlink"]
    assert member.issym() and member.linkname == "/etc/shadow" and data == b""
    host_shadow = Path("/etc/shadow").read_bytes()
    assert host_shadow not in body


def test_b23_through_a_symlinked_directory(daemon: BaseDaemon, target: str) -> None:
    resp = _get(daemon, target, "/tmp/etclink/passwd")
    assert resp.status == 200
    passwd = _members(resp.body)["passwd"][1]
    assert passwd.startswith(b"root:x:0:0:")
    assert passwd != Path("/etc/passwd").read_bytes()
    through_root = _get(daemon, target, "/tmp/rootlink/etc/passwd")
    assert _members(through_root.body)["passwd"][1] == passwd


def test_b23_proc_and_missing(daemon: BaseDaemon, target: str) -> None:
    for path in ("/proc/self/environ", f"/nonexist-{MARK}"):
        resp = _get(daemon, target, path)
        assert resp.status == 404
        assert _message(resp) == f"Could not find the file {path} in container {target}"
        head = _get(daemon, target, path, "HEAD")
        assert head.status == 404 and head.body == b""


# =========================================================================== A8
def test_cve_2019_14271_nothing_is_loaded_from_the_container(daemon: BaseDaemon,
                                                             containers: dict[str, str]
                                                             ) -> None:
    """Plant NSS libraries where a chrooted helper would load them, then archive."""
    name = containers["running"]
    garbage = b"\x7fELF" + b"\xff" * 200
    planted = _tar(_entry("lib", tarfile.DIRTYPE, mode=0o755),
                   _entry("lib/libnss_files.so.2", data=garbage),
                   _entry("lib/x86_64-linux-gnu", tarfile.DIRTYPE, mode=0o755),
                   _entry("lib/x86_64-linux-gnu/libnss_files.so.2", data=garbage))
    assert _put(daemon, name, "/", planted, no_overwrite=False).status == 200
    assert _get(daemon, name, "/etc").status == 200
    assert _get(daemon, name, "/").status == 200
    assert daemon.api("GET", "/_ping").status == 200
    pid = daemon.pid
    assert pid is not None
    # no library below the data root (where container roots live) is mapped by the daemon
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    assert [m for m in maps if str(daemon.data_root) in m and ".so" in m] == []


def test_cve_2018_15664_swap_race(daemon: BaseDaemon, watch: HostWatch,
                                  against_dockerd: bool) -> None:
    """A container flips a directory to a link to "/" while we copy in and out."""
    cli = DockerCLI(daemon)
    name = f"arace-{MARK}"
    flip = ("mkdir -p /tmp/swap; while true; do mv /tmp/swap /tmp/swap.d; "
            "ln -s / /tmp/swap; rm /tmp/swap; mv /tmp/swap.d /tmp/swap; done")
    cli.ok("run", "-d", "--name", name, "busybox", "sh", "-c", flip)
    errors: list[str] = []
    try:
        deadline = time.monotonic() + 3.0
        rounds = 0
        while time.monotonic() < deadline:
            body = _tar(_entry(f"swap/race-{MARK}", data=b"r"))
            resp = _put(daemon, name, "/tmp", body, no_overwrite=False)
            if resp.status >= 500 and not against_dockerd:
                errors.append(resp.text)
            out = _get(daemon, name, "/tmp/swap/")
            assert Path("/etc/shadow").read_bytes() not in out.body
            rounds += 1
        assert rounds >= 5
    finally:
        cli("rm", "-f", name)
    assert not os.path.exists(f"/race-{MARK}")
    watch.assert_clean(LEGIT | {f"/race-{MARK}", f"/swap/race-{MARK}"})
    assert errors == [], errors[:3]


def test_threads_do_not_leak(daemon: BaseDaemon, containers: dict[str, str]) -> None:
    """Clients that leave mid-download leave no writer behind (the rootfs unmounts)."""
    name = containers["created"]
    for _ in range(5):
        with rawhttp.Connection(daemon.socket) as conn:
            conn.send_request("GET", f"/v1.41/containers/{name}/archive?path=%2F")
            head = conn.read_head()
            assert head.status == 200
            conn.recv_some()
    # the created container's rootfs is unmounted again once every stream ended
    deadline = time.monotonic() + 10
    while True:
        inspect = daemon.api_json("GET", f"/containers/{name}/json")
        merged = inspect["GraphDriver"]["Data"].get("MergedDir", "")
        if not merged or not os.path.ismount(merged):
            break
        assert time.monotonic() < deadline, "rootfs still mounted after the clients left"
        time.sleep(0.1)
