"""The ``wharfd`` process: sockets, pid file, signals, sd_notify, socket activation and
the HTTP foundation on the wire, with the stock docker CLI on top.

Every test runs twice: against ``wharfd`` over a fake engine (``python -m
tests.unit.api_fakes``: the real ``api.main`` with the engine replaced, so the process
behaviour can be checked before the engine is complete) and against the real
``wharfd`` console script (skipped until ``engine.daemon`` imports). Each daemon runs in
a network namespace of its own with its own roots (tests/harness/daemon.py) and is
stopped by PID.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.harness import rawhttp
from tests.harness.cli import run_docker
from tests.harness.daemon import (
    REPO_ROOT,
    BaseDaemon,
    DaemonStartError,
    wharfd_binary,
    wharfd_unavailable_reason,
)

pytestmark = pytest.mark.root

KINDS = ("fake", "real")


def _engine_importable() -> str | None:
    try:
        import engine.daemon  # noqa: F401
    except Exception as exc:  # an engine module that is missing or broken
        return f"engine.daemon does not import yet: {exc}"
    return None


class Wharfd(BaseDaemon):
    """wharfd from this repository, over the real engine or the fake one, optionally
    started through ``systemd-socket-activate`` (``-H fd://``)."""

    kind = "wharfd"
    helper_names = ("conmon",)

    def __init__(
        self,
        engine: str,
        extra_args: Sequence[str] = (),
        *,
        activate: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        base_env = {"PYTHONPATH": str(REPO_ROOT)}
        base_env.update(env or {})
        super().__init__(extra_args, env=base_env)
        self.engine = engine
        self.activate = activate
        self.config_file = self.tmp / "daemon.json"
        self.config_file.write_text("{}\n")

    def available(self) -> str | None:
        reason = wharfd_unavailable_reason()
        if reason is None and self.engine == "real":
            reason = _engine_importable()
        return reason

    def program(self) -> list[str]:
        if self.engine == "fake":
            return [sys.executable, "-m", "tests.unit.api_fakes"]
        return [str(wharfd_binary())]

    def argv(self) -> list[str]:
        args = [
            *self.program(),
            "--config-file",
            str(self.config_file),
            "--data-root",
            str(self.data_root),
            "--exec-root",
            str(self.exec_root),
            "--pidfile",
            str(self.pidfile),
            "-H",
            "fd://" if self.activate else self.docker_host,
            "--log-level",
            "debug",
            "--cgroup-parent",
            self.cgroup_parent,
            *self.extra_args,
        ]
        if not self.activate:
            return args
        # systemd-socket-activate passes only PATH on; name the rest explicitly
        passed = ["PYTHONPATH", "PYTHONUNBUFFERED", "PYTHONFAULTHANDLER", *self.extra_env]
        env_flags = [f"--setenv={name}" for name in dict.fromkeys(passed)]
        return ["systemd-socket-activate", "--listen", self.socket, *env_flags, *args]


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    engine = str(request.param)
    probe = Wharfd(engine)
    try:
        reason = probe.available()
    finally:
        probe.cleanup()
    if reason:
        pytest.skip(reason)
    return engine


@contextlib.contextmanager
def running(kind: str, *args: str, **kwargs: Any) -> Iterator[Wharfd]:
    d = Wharfd(kind, args, **kwargs)
    try:
        d.start()
        yield d
    finally:
        d.cleanup()


def _docker_gid() -> int | None:
    try:
        return grp.getgrnam("docker").gr_gid
    except KeyError:
        return None


# --- the socket, the pid file, signals ---------------------------------------------------------


def test_socket_is_0660_root_docker(kind: str) -> None:
    with running(kind) as d:
        info = os.stat(d.socket)
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o660
        assert info.st_uid == 0
        assert info.st_gid == (_docker_gid() if _docker_gid() is not None else 0)


def test_sigterm_exits_0_and_removes_socket_and_pidfile(kind: str) -> None:
    with running(kind) as d:
        assert d.pidfile.read_text().strip() == str(d.pid)
        start = time.monotonic()
        assert d.stop() == 0
        assert time.monotonic() - start < 20
        assert not os.path.exists(d.socket)
        assert not d.pidfile.exists()


def test_stale_socket_is_replaced(kind: str) -> None:
    d = Wharfd(kind)
    try:
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(d.socket)
        stale.close()  # what kill -9 leaves behind
        d.start()
        assert rawhttp.ping(d.socket)
    finally:
        d.cleanup()


def test_pidfile_lock_refuses_a_second_daemon_until_the_first_dies(kind: str) -> None:
    with running(kind) as first:
        second = Wharfd(kind)
        second.pidfile = first.pidfile
        try:
            with pytest.raises(DaemonStartError):
                second.start(timeout=15)
            assert second.proc is not None and second.proc.returncode == 1
            assert f"locked by a running daemon (pid {first.pid})" in second.log_text()
            assert not os.path.exists(second.socket)
            # F9: after kill -9 the file remains, but its lock died with the process
            first.kill9()
            assert first.pidfile.exists()
            second.start()
            assert first.pidfile.read_text().strip() == str(second.pid)
        finally:
            second.cleanup()


def test_sd_notify_ready_then_stopping(kind: str) -> None:
    d = Wharfd(kind)
    address = str(d.tmp / "notify.sock")
    d.extra_env["NOTIFY_SOCKET"] = address
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(address)
    receiver.settimeout(30)
    try:
        d.start()
        assert receiver.recv(256) == b"READY=1"
        assert d.stop() == 0
        assert receiver.recv(256) == b"STOPPING=1"
    finally:
        receiver.close()
        d.cleanup()


@pytest.mark.skipif(
    not os.path.exists("/usr/bin/systemd-socket-activate"),
    reason="systemd-socket-activate is not installed",
)
def test_socket_activation(kind: str) -> None:
    d = Wharfd(kind, activate=True)
    address = str(d.tmp / "notify.sock")
    d.extra_env["NOTIFY_SOCKET"] = address
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(address)
    receiver.settimeout(30)
    try:
        d.start()  # the first connection (the readiness ping) makes it exec wharfd
        assert receiver.recv(256) == b"READY=1"
        r = run_docker(d, "version")
        assert r.returncode == 0, r.stderr
        assert "fd://3" in d.log_text()
        assert d.stop() == 0
        # systemd owns the socket file: the daemon must leave it
        assert os.path.exists(d.socket)
    finally:
        receiver.close()
        d.cleanup()


@pytest.mark.skipif(
    not os.path.exists("/usr/bin/systemd-socket-activate"),
    reason="systemd-socket-activate is not installed",
)
def test_activated_socket_beside_tcp_and_reload_notifications(kind: str) -> None:
    """-H fd:// and -H tcp:// at once; SIGHUP says RELOADING=1, then READY=1 again."""
    d = Wharfd(kind, ["-H", "tcp://127.0.0.1:2375"], activate=True)
    address = str(d.tmp / "notify.sock")
    d.extra_env["NOTIFY_SOCKET"] = address
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(address)
    receiver.settimeout(30)
    try:
        d.start()
        assert receiver.recv(256) == b"READY=1"
        r = subprocess.run(
            d.netns.wrap(["docker", "-H", "tcp://127.0.0.1:2375", "version", "--format",
                          "{{.Server.Os}}"]),
            env=d.env, capture_output=True, text=True, timeout=60,
        )
        assert (r.returncode, r.stdout.strip()) == (0, "linux"), r.stderr
        assert d.pid is not None
        os.kill(d.pid, signal.SIGHUP)
        assert receiver.recv(256).startswith(b"RELOADING=1\nMONOTONIC_USEC=")
        assert receiver.recv(256) == b"READY=1"
        assert run_docker(d, "version").returncode == 0
    finally:
        receiver.close()
        d.cleanup()


def test_validate_with_the_console_script(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text('{"debug": true, "hosts": ["unix:///tmp/x.sock"]}')
    bad = tmp_path / "bad.json"
    bad.write_text('{"debug": true, "bogus": 1}')
    ok = subprocess.run(
        [str(wharfd_binary()), "--config-file", str(good), "--validate"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (ok.returncode, ok.stdout) == (0, "configuration OK\n"), ok.stderr
    ko = subprocess.run(
        [str(wharfd_binary()), "--config-file", str(bad), "--validate"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ko.returncode == 1
    assert "don't match any configuration option: bogus" in ko.stderr


# --- HTTP on the wire (B19, B28, L11) -------------------------------------------------------------


@pytest.fixture
def daemon_of(kind: str) -> Iterator[Wharfd]:
    with running(kind) as d:
        yield d


B28 = [
    (b"GET /_ping HTTP/1.1\r\n\r\n", 400),
    (b"POST /containers/create HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400),
    (
        b"POST /containers/create HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"Content-Length: 2\r\n\r\n{}",
        400,
    ),
    (b"HELLO\r\n\r\n", 400),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    (b"GET /containers/../info HTTP/1.1\r\nHost: x\r\n\r\n", 301),
]


def test_raw_http(daemon_of: Wharfd) -> None:
    for request, status in B28:
        resp = rawhttp.send_raw(daemon_of.socket, request, timeout=10)
        assert resp.status == status, request
    resp = rawhttp.send_raw(daemon_of.socket, B28[-1][0], timeout=10)
    assert resp.header("Location") == "/info"
    with rawhttp.Connection(daemon_of.socket, timeout=10) as conn:
        conn.send_raw(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
        assert [conn.read_response().body for _ in range(3)] == [b"OK"] * 3


def _status_while_sending(path: str, data: bytes) -> int:
    with rawhttp.Connection(path, timeout=20) as conn:

        def send() -> None:
            with contextlib.suppress(OSError):
                conn.send_raw(data)

        sender = threading.Thread(target=send)
        sender.start()
        try:
            return conn.read_head().status
        finally:
            sender.join()


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (b"X-Big: " + b"a" * 100_000 + b"\r\n", 200),
        (b"".join(b"X-H%d: v\r\n" % i for i in range(5000)), 200),
        (b"X-Big: " + b"a" * 1_100_000 + b"\r\n", 431),
    ],
    ids=["100KB", "5000-headers", "1.1MB"],
)
def test_header_limits(daemon_of: Wharfd, headers: bytes, status: int) -> None:
    data = b"GET /_ping HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"
    assert _status_while_sending(daemon_of.socket, data) == status


def test_versions_and_not_found(daemon_of: Wharfd) -> None:
    too_new = daemon_of.api("GET", "/v1.99/version")
    assert too_new.status == 400
    assert too_new.header("Content-Type") == "application/json"
    assert too_new.json() == {
        "message": "client version 1.99 is too new. Maximum supported API version is 1.50"
    }
    too_old = daemon_of.api("GET", "/v1.11/version")
    assert too_old.status == 400
    assert "Minimum supported API version is 1.24" in too_old.json()["message"]
    missing = daemon_of.api("GET", "/v1.50/nothing/here")
    assert (missing.status, missing.json()) == (404, {"message": "page not found"})
    for resp in (too_new, too_old, missing, daemon_of.api("GET", "/_ping")):
        assert resp.header("Api-Version") == "1.50"
        assert resp.header("Ostype") == "linux"
        assert (resp.header("Server") or "").startswith("Docker/")
        assert resp.header("Docker-Experimental") == "false"


def test_ping_head_and_get(daemon_of: Wharfd) -> None:
    head = daemon_of.api("HEAD", "/_ping")
    assert (head.status, head.header("Content-Length"), head.body) == (200, "0", b"")
    get = daemon_of.api("GET", "/_ping")
    assert (get.status, get.body) == (200, b"OK")
    assert get.header("Builder-Version") == "1"
    assert get.header("Swarm") == "inactive"


def test_events_stream_until(daemon_of: Wharfd) -> None:
    resp = daemon_of.api("GET", f"/events?since=0&until={time.time():.9f}")
    assert resp.status == 200
    assert resp.chunked and resp.header("Content-Type") == "application/json"
    for line in resp.body.splitlines():
        event = json.loads(line)
        assert {"Type", "Action", "Actor", "time", "timeNano"} <= set(event)


# --- the stock CLI --------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["version", "info"])
def test_docker_cli_prints_cleanly(daemon_of: Wharfd, command: str) -> None:
    r = run_docker(daemon_of, command)
    assert r.returncode == 0, r.stderr
    assert "Server:" in r.stdout
    if command == "version":
        assert re.search(r"API version:\s+1\.50 \(minimum version 1\.24\)", r.stdout)
    assert "errors pretty printing" not in r.stdout + r.stderr
    assert "downgraded" not in r.stdout
    unexpected = [line for line in r.stderr.splitlines() if not line.startswith("WARNING:")]
    assert unexpected == [], r.stderr


def test_engine_start_failure_exits_1_and_cleans_up() -> None:
    """The default runtime must work; crun 1.8 cannot run containers on a hybrid cgroup
    host, so asking for it as the default makes the engine refuse to start."""
    probe = Wharfd("real")
    reason = probe.available()
    probe.cleanup()
    if reason:
        pytest.skip(reason)
    crun_ok = subprocess.run(["crun", "--version"], capture_output=True).returncode == 0
    hybrid = os.path.isdir("/sys/fs/cgroup/unified") and os.path.isdir("/sys/fs/cgroup/memory")
    if not (crun_ok and hybrid):
        pytest.skip("needs crun on a hybrid cgroup host (where its probe fails)")
    d = Wharfd("real", ["--default-runtime", "crun"])
    try:
        with pytest.raises(DaemonStartError):
            d.start(timeout=30)
        assert d.proc is not None and d.proc.returncode == 1
        assert "failed to start daemon" in d.log_text()
        assert not os.path.exists(d.socket)
        assert not d.pidfile.exists()
    finally:
        d.cleanup()
