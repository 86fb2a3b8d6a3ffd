"""Self-tests of the pure parts of the test harness (no daemon, no root needed)."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import socket
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.harness import rawhttp
from tests.harness.busybox import (
    BusyboxUnavailable,
    build_rootfs,
    docker_archive,
    find_static_busybox,
    is_static_elf,
    rootfs_tar,
)
from tests.harness.daemon import REPO_ROOT, DaemonProcess, DockerdReference


@pytest.fixture(scope="module")
def busybox() -> Path:
    try:
        return find_static_busybox()
    except BusyboxUnavailable as e:
        pytest.skip(str(e))


def test_static_elf_detection(busybox: Path) -> None:
    assert is_static_elf(busybox)
    dynamic = shutil.which("ls")
    assert dynamic is not None
    assert not is_static_elf(Path(dynamic))
    assert not is_static_elf(Path(__file__))


def test_rootfs_and_tar(busybox: Path, tmp_path: Path) -> None:
    root = build_rootfs(tmp_path / "rootfs", busybox)
    assert (root / "bin" / "busybox").read_bytes() == busybox.read_bytes()
    assert (root / "bin" / "sh").is_symlink() and (root / "bin" / "sh").resolve() == (
        root / "bin" / "busybox"
    )
    users = [ln.split(":") for ln in (root / "etc" / "passwd").read_text().splitlines()]
    assert [(u[0], u[2]) for u in users] == [("root", "0"), ("nobody", "65534"), ("user", "1000")]
    data = rootfs_tar(root)
    assert data == rootfs_tar(root), "the tar is not reproducible"
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["./bin/sh"].issym() and members["./bin/sh"].linkname == "busybox"
    assert members["./bin/busybox"].isreg() and members["./bin/busybox"].mode == 0o755
    assert members["./tmp"].isdir() and members["./tmp"].mode == 0o1777
    for d in ("./proc", "./sys", "./dev", "./etc", "./root"):
        assert members[d].isdir(), d
    assert all(m.uid == 0 or m.name == "./home/user" for m in members.values())


def test_docker_archive_layout() -> None:
    layer = b"pretend this is a layer tar"
    data = docker_archive([layer], ["example:1"], cmd=["echo", "hi"])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        assert len(manifest) == 1 and manifest[0]["RepoTags"] == ["example:1"]
        config_bytes = tar.extractfile(manifest[0]["Config"]).read()  # type: ignore[union-attr]
        layer_bytes = tar.extractfile(manifest[0]["Layers"][0]).read()  # type: ignore[union-attr]
    assert manifest[0]["Config"] == hashlib.sha256(config_bytes).hexdigest() + ".json"
    config = json.loads(config_bytes)
    assert layer_bytes == layer
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]
    assert config["config"]["Cmd"] == ["echo", "hi"]


# -- stdcopy ------------------------------------------------------------------------------------

def frame(stream: int, payload: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


frames_st = st.lists(st.tuples(st.sampled_from([1, 2]), st.binary(max_size=300)), max_size=20)


@given(frames_st, st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=10))
def test_demux_whole_and_incremental(frames: list[tuple[int, bytes]], cuts: list[int]) -> None:
    data = b"".join(frame(s, p) for s, p in frames)
    out = b"".join(p for s, p in frames if s == 1)
    err = b"".join(p for s, p in frames if s == 2)
    assert rawhttp.demux(data) == (out, err)
    d = rawhttp.Demuxer()
    pos, i = 0, 0
    while pos < len(data):
        step = cuts[i % len(cuts)]
        d.feed(data[pos : pos + step])
        pos += step
        i += 1
    assert (bytes(d.stdout), bytes(d.stderr)) == (out, err)
    assert d.pending == 0


def test_demux_truncated() -> None:
    with pytest.raises(rawhttp.HTTPError):
        rawhttp.demux(frame(1, b"hello")[:-1])
    with pytest.raises(rawhttp.HTTPError):
        rawhttp.demux(b"\x01\x00\x00")


def test_demux_large_is_linear() -> None:
    data = frame(1, b"x" * 10) * 200_000  # 3.6 MB of small frames
    out, err = rawhttp.demux(data)
    assert len(out) == 2_000_000 and err == b""


# -- raw HTTP client against a scripted unix-socket server ---------------------------------------

@pytest.fixture
def scripted_server(tmp_path: Path) -> Iterator[tuple[str, list[bytes], list[bytes]]]:
    """A server answering each request with the next canned response; records requests."""
    path = str(tmp_path / "s.sock")
    responses: list[bytes] = []
    received: list[bytes] = []
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                buf = b""
                while responses:
                    while b"\r\n\r\n" not in buf:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        buf += chunk
                    if b"\r\n\r\n" not in buf:
                        break
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    received.append(head)
                    conn.sendall(responses.pop(0))

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield path, responses, received
    srv.close()


def test_rawhttp_chunked_and_keepalive(scripted_server: tuple[str, list[bytes], list[bytes]]
                                       ) -> None:
    path, responses, received = scripted_server
    responses += [
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n"
        b'{"a": true}',
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\nApi-Version: 1.50\r\n\r\n",
    ]
    with rawhttp.Connection(path, timeout=5) as c:
        r1 = c.request("GET", "/info")
        assert r1.status == 200 and r1.json() == {"a": True}
        r2 = c.request("POST", "/x", {"k": 1})
        assert r2.chunked and r2.body == b"hello world"
        r3 = c.request("DELETE", "/y")
        assert r3.status == 204 and r3.header("api-version") == "1.50" and r3.body == b""
    assert received[0].startswith(b"GET /info HTTP/1.1\r\nHost: docker")
    assert b"Content-Type: application/json" in received[1]


def test_rawhttp_send_raw_reads_error(scripted_server: tuple[str, list[bytes], list[bytes]]
                                      ) -> None:
    path, responses, _ = scripted_server
    responses.append(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\nConnection: close\r\n"
                     b"\r\nno")
    r = rawhttp.send_raw(path, b"GARBAGE / HTTP/1.1\r\n\r\n")
    assert (r.status, r.reason, r.body) == (400, "Bad Request", b"no")


# -- daemon command lines -----------------------------------------------------------------------

def test_daemon_argv_uses_repo_venv_and_private_roots() -> None:
    d = DaemonProcess()
    try:
        argv = d.argv()
        assert argv[0] == str(REPO_ROOT / ".venv" / "bin" / "wharfd")
        flags = dict(zip(argv[1::2], argv[2::2], strict=False))
        assert flags["--data-root"].startswith(str(d.tmp))
        assert flags["--exec-root"].startswith(str(d.tmp))
        assert flags["-H"] == d.docker_host and d.docker_host.startswith("unix:///")
        assert flags["--cgroup-parent"].startswith("/wharfd-test-")
        env = d.env
        assert env["DOCKER_HOST"] == d.docker_host
        assert env["DOCKER_CONFIG"] == str(d.docker_config)
        assert not any(Path(d.docker_config).iterdir())
    finally:
        d.cleanup()
    assert not d.tmp.exists()


def test_dockerd_argv_touches_no_host_networking() -> None:
    d = DockerdReference()
    try:
        argv = d.argv()
        for flag in ("--bridge=none", "--iptables=false", "--ip6tables=false"):
            assert flag in argv
        assert "--containerd" not in argv  # dockerd manages its own, under the temp roots
    finally:
        d.cleanup()
