"""API sockets, the pid file lock and sd_notify, in process (the daemon-level versions of
these checks are in tests/integration/test_daemon_main.py)."""

from __future__ import annotations

import errno
import grp
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.listeners import (
    HostSpec,
    ListenerError,
    activated_listeners,
    close_listeners,
    open_listeners,
    open_unix_listener,
    parse_host,
    socket_gid,
    take_activated_fds,
)
from api.notify import Notifier
from api.pidfile import PidFile, PidFileLocked


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="wt-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --- -H parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "spec"),
    [
        ("unix:///run/x.sock", HostSpec("unix", "/run/x.sock")),
        ("unix://", HostSpec("unix", "/run/wharfd.sock")),
        ("", HostSpec("unix", "/run/wharfd.sock")),
        ("fd://", HostSpec("fd", "")),
        ("fd://*", HostSpec("fd", "")),
        ("fd://3", HostSpec("fd", "3")),
        ("tcp://0.0.0.0:2376", HostSpec("tcp", "0.0.0.0:2376")),
        ("tcp://10.0.0.1", HostSpec("tcp", "10.0.0.1:2375")),  # dockerd's default port
        ("tcp://:2376", HostSpec("tcp", "localhost:2376")),  # and default host
        ("tcp://", HostSpec("tcp", "localhost:2375")),
        ("10.0.0.1:2376", HostSpec("tcp", "10.0.0.1:2376")),  # no scheme: tcp
        ("TCP://[::1]:2376", HostSpec("tcp", "[::1]:2376")),
    ],
)
def test_parse_host(raw: str, spec: HostSpec) -> None:
    assert parse_host(raw) == spec


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("https://0.0.0.0:2375", "https:// listeners are not supported"),
        ("tcp://0.0.0.0:2375/path", "Invalid bind address format"),
        ("tcp://0.0.0.0:99999", "Invalid bind address format"),
        ("tcp://0.0.0.0:0", "Invalid bind address format"),
        ("/run/x.sock", "Invalid bind address format"),
        ("unix://relative.sock", "must be absolute"),
        ("unix:///" + "x" * 120, "too long"),
        ("fd://abc", "Invalid bind address format"),
        ("gopher://x", "Invalid bind address format"),
    ],
)
def test_parse_host_errors(raw: str, message: str) -> None:
    with pytest.raises(ListenerError, match=message):
        parse_host(raw)


# --- unix sockets ------------------------------------------------------------------------------


def _docker_gid() -> int | None:
    try:
        return grp.getgrnam("docker").gr_gid
    except KeyError:
        return None


def test_socket_gid() -> None:
    assert socket_gid("") is None
    assert socket_gid("123") == 123
    assert socket_gid("root") == 0
    assert socket_gid("docker") == _docker_gid()  # missing default group: a warning, None
    with pytest.raises(ListenerError, match="group no-such-group-x not found"):
        socket_gid("no-such-group-x")


def test_unix_listener_mode_group_and_listening_before_serving(short_tmp: Path) -> None:
    path = short_tmp / "sub" / "api.sock"
    listener = open_unix_listener(path, gid=0)
    try:
        info = path.stat()
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o660
        if os.geteuid() == 0:
            assert (info.st_uid, info.st_gid) == (0, 0)
        # listening before anything serves it: an early client is queued, not refused
        probe = socket.socket(socket.AF_UNIX)
        probe.connect(str(path))
        probe.close()
        assert listener.path == path and listener.name == str(path)
    finally:
        close_listeners([listener])
    assert not path.exists()


@pytest.mark.skipif(os.geteuid() != 0 or _docker_gid() is None, reason="needs root and docker")
def test_unix_listener_group_docker(short_tmp: Path) -> None:
    listener = open_unix_listener(short_tmp / "api.sock", gid=_docker_gid())
    try:
        assert (short_tmp / "api.sock").stat().st_gid == _docker_gid()
    finally:
        close_listeners([listener])


def test_stale_socket_is_replaced(short_tmp: Path) -> None:
    path = short_tmp / "api.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, as after kill -9
    listener = open_unix_listener(path, gid=None)
    close_listeners([listener])


def test_live_socket_is_not_stolen(short_tmp: Path) -> None:
    path = short_tmp / "api.sock"
    live = socket.socket(socket.AF_UNIX)
    live.bind(str(path))
    live.listen(1)
    try:
        with pytest.raises(ListenerError, match="another daemon is listening"):
            open_unix_listener(path, gid=None)
        assert path.exists()
    finally:
        live.close()


def test_non_socket_file_is_not_removed(short_tmp: Path) -> None:
    path = short_tmp / "api.sock"
    path.write_text("precious")
    with pytest.raises(ListenerError, match="is not a socket"):
        open_unix_listener(path, gid=None)
    assert path.read_text() == "precious"


def test_open_listeners_closes_what_it_opened_on_error(short_tmp: Path) -> None:
    first = short_tmp / "a.sock"
    with pytest.raises(ListenerError):
        open_listeners([f"unix://{first}", "fd://"], "", {})
    assert not first.exists()


# --- socket activation ---------------------------------------------------------------------------


def test_take_activated_fds_for_us() -> None:
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b", "X": "1"}
    assert take_activated_fds(env) == [3, 4]
    assert env == {"X": "1"}  # children never see them


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"LISTEN_FDS": "1"},
        {"LISTEN_PID": "1", "LISTEN_FDS": "1"},
        {"LISTEN_PID": "x", "LISTEN_FDS": "1"},
    ],
)
def test_take_activated_fds_not_for_us(env: dict[str, str]) -> None:
    assert take_activated_fds(env) == []
    assert "LISTEN_FDS" not in env and "LISTEN_PID" not in env


def test_activated_listeners_wrap_given_fds() -> None:
    server = socket.socket(socket.AF_UNIX)
    fd = server.detach()
    os.set_inheritable(fd, True)
    listeners = activated_listeners(HostSpec("fd", ""), [fd])
    try:
        assert [item.name for item in listeners] == [f"fd://{fd}"]
        assert listeners[0].path is None  # systemd's file: never removed by us
        assert os.get_inheritable(fd) is False
    finally:
        close_listeners(listeners)


def test_activated_listeners_errors() -> None:
    with pytest.raises(ListenerError, match="no sockets found via socket activation"):
        activated_listeners(HostSpec("fd", ""), [])
    with pytest.raises(ListenerError, match="fd://7 was not passed"):
        activated_listeners(HostSpec("fd", "7"), [3])


# --- pid file (F9) --------------------------------------------------------------------------------

HOLDER = """
import sys, time
from pathlib import Path
from api.pidfile import PidFile
PidFile(Path(sys.argv[1])).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def _holder(path: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_pidfile_written_and_removed(short_tmp: Path) -> None:
    pidfile = PidFile(short_tmp / "run" / "wharfd.pid")
    pidfile.acquire()
    assert pidfile.path.read_text() == f"{os.getpid()}\n"
    pidfile.release()
    assert not pidfile.path.exists()
    pidfile.release()  # idempotent


def test_pidfile_refused_while_a_live_daemon_holds_it_then_taken_after_kill9(
    short_tmp: Path,
) -> None:
    path = short_tmp / "wharfd.pid"
    holder = _holder(path)
    try:
        with pytest.raises(
            PidFileLocked, match=rf"locked by a running daemon \(pid {holder.pid}\)"
        ):
            PidFile(path).acquire()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    # the file is still there with the dead pid: that alone must not block a restart
    assert path.read_text().strip() == str(holder.pid)
    pidfile = PidFile(path)
    pidfile.acquire()
    assert path.read_text().strip() == str(os.getpid())
    pidfile.release()


def test_pidfile_fd_is_not_inherited(short_tmp: Path) -> None:
    pidfile = PidFile(short_tmp / "wharfd.pid")
    pidfile.acquire()
    try:
        assert pidfile._fd is not None and os.get_inheritable(pidfile._fd) is False
    finally:
        pidfile.release()


# --- sd_notify ------------------------------------------------------------------------------------


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def test_notify_path_socket(short_tmp: Path) -> None:
    address = str(short_tmp / "notify")
    receiver = _receiver(address)
    env = {"NOTIFY_SOCKET": address}
    notifier = Notifier.from_environ(env)
    assert env == {}  # conmon must not inherit it
    try:
        assert notifier.notify("READY=1") and notifier.notify("STOPPING=1")
        assert receiver.recv(100) == b"READY=1"
        assert receiver.recv(100) == b"STOPPING=1"
    finally:
        receiver.close()


def test_notify_abstract_socket() -> None:
    name = f"wharfd-test-{os.getpid()}-{time.monotonic_ns()}"
    receiver = _receiver("\0" + name)
    try:
        assert Notifier(f"@{name}").notify("READY=1")
        assert receiver.recv(100) == b"READY=1"
    finally:
        receiver.close()


def test_notify_disabled_or_unreachable(short_tmp: Path) -> None:
    assert Notifier.from_environ({}).enabled is False
    assert Notifier(None).notify("READY=1") is False
    assert Notifier(str(short_tmp / "nobody")).notify("READY=1") is False


def test_errno_of_refused_connect_is_what_we_expect(short_tmp: Path) -> None:
    # _remove_stale relies on ECONNREFUSED for a socket file without a listener
    path = short_tmp / "s"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    probe = socket.socket(socket.AF_UNIX)
    try:
        with pytest.raises(OSError) as caught:
            probe.connect(str(path))
        assert caught.value.errno == errno.ECONNREFUSED
    finally:
        probe.close()
