"""Exits are never lost (issue 10, faults): a full data root, a stopped daemon, a daemon
killed while a container crash-loops or while `docker commit` has it paused.

wharfd-specific: these kill or freeze the daemon and fill its data root, which the
dockerd reference cannot be put through the same way (its state lives in containerd).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.harness.cli import DockerCLI
from tests.harness.crash import armed_with, own_wharfd
from tests.harness.daemon import DaemonProcess, pid_alive

pytestmark = [pytest.mark.root, pytest.mark.slow]

TRAP_TERM_EXIT_3 = 'trap "exit 3" TERM; while true; do sleep 0.1; done'


@pytest.fixture
def small_wharfd(busybox_tar: Path) -> Iterator[DaemonProcess]:
    """A daemon whose data root is a 48 MiB tmpfs of its own (unmounted by cleanup)."""
    with own_wharfd(busybox_tar, data_tmpfs_mb=48) as daemon:
        yield daemon


def _state(cli: DockerCLI, name: str) -> dict[str, object]:
    state: dict[str, object] = json.loads(cli.ok("inspect", "-f", "{{json .State}}", name))
    return state


def _fill(path: Path) -> None:
    """Write zeros until the filesystem under ``path`` has no space left (big writes
    first, then small ones for what partly used blocks still hold)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 4096, 512):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)


def _saved_status(daemon: DaemonProcess, name: str) -> str:
    """The status in wharfd's state row (read beside the daemon: SQLite WAL allows it)."""
    with contextlib.closing(sqlite3.connect(f"file:{daemon.data_root}/engine.db?mode=ro",
                                            uri=True)) as db:
        row = db.execute("SELECT state FROM containers WHERE name = ?", (name,)).fetchone()
    return str(json.loads(row[0])["status"]) if row else ""


def _until(check: object, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return bool(check())  # type: ignore[operator]


def _assert_exit_3_survives_kill9(daemon: DaemonProcess, cli: DockerCLI) -> None:
    """Once there is room again, victim's exit (code 3) reaches its row: a kill -9 and
    a restart still show it."""
    assert _until(lambda: _saved_status(daemon, "victim") == "exited", 10)
    daemon.kill9()
    daemon.start()
    state = _state(cli, "victim")
    assert state["Status"] == "exited" and state["ExitCode"] == 3, state


def test_exit_recorded_while_data_root_is_full(small_wharfd: DaemonProcess) -> None:
    daemon = small_wharfd
    cli = DockerCLI(daemon)
    cli.ok("run", "-d", "--name", "victim", "busybox", "sh", "-c", TRAP_TERM_EXIT_3)
    pid = int(_state(cli, "victim")["Pid"])  # type: ignore[call-overload]
    filler = daemon.data_root / "filler"
    _fill(filler)
    log_mark = daemon.log_size()

    cli.ok("kill", "-s", "TERM", "victim")
    # Waiters and inspect learn the exit from conmon's exit file even though the row
    # cannot be written.
    waited = cli("wait", "victim", timeout=15)
    assert waited.returncode == 0, waited.stderr
    assert waited.stdout.strip() == "3"
    state = _state(cli, "victim")
    assert state["Running"] is False and state["Status"] == "exited", state
    assert state["ExitCode"] == 3
    assert not pid_alive(pid), "the container's process is still alive"

    # A request that must write says why it cannot, and nothing is wedged.
    created = cli("create", "--name", "later", "busybox", "true", timeout=30)
    assert created.returncode != 0
    assert ("no space left on device" in created.stderr
            or "database or disk is full" in created.stderr), created.stderr
    assert "Task exception was never retrieved" not in daemon.log_text(log_mark)

    filler.unlink()
    # Once there is room the exit is committed: it survives a kill -9.
    _assert_exit_3_survives_kill9(daemon, cli)
    # And the daemon works normally again.
    assert cli.ok("run", "--rm", "busybox", "echo", "ok").strip() == "ok"
    cli.ok("start", "victim")
    assert _state(cli, "victim")["Running"] is True


def test_restore_while_data_root_is_full(small_wharfd: DaemonProcess) -> None:
    """A container that exits while the daemon is down, restored with no room to write
    its exit: it is shown exited, and the row lands once there is room."""
    daemon = small_wharfd
    cli = DockerCLI(daemon)
    cli.ok("run", "-d", "--name", "victim", "busybox", "sh", "-c", TRAP_TERM_EXIT_3)
    pid = int(_state(cli, "victim")["Pid"])  # type: ignore[call-overload]
    daemon.kill9()
    os.kill(pid, signal.SIGTERM)
    filler = daemon.data_root / "filler"
    _fill(filler)
    daemon.start()
    state = _state(cli, "victim")
    assert state["Status"] == "exited" and state["ExitCode"] == 3, state
    waited = cli("wait", "victim", timeout=15)
    assert waited.stdout.strip() == "3"
    filler.unlink()
    _assert_exit_3_survives_kill9(daemon, cli)


def _unix_time(stamp: str) -> float:
    """RFC 3339 with nanoseconds (as inspect shows it) → unix seconds."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    base = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return base.timestamp() + float(f"0.{fraction or '0'}")


def test_finished_at_is_when_it_exited(wharfd: DaemonProcess) -> None:
    """An exit seen after the daemon was frozen carries the exit's time, not the thaw's."""
    cli = DockerCLI(wharfd)
    cli.ok("run", "-d", "--name", "victim", "busybox", "sh", "-c", TRAP_TERM_EXIT_3)
    pid = int(_state(cli, "victim")["Pid"])  # type: ignore[call-overload]
    assert wharfd.pid is not None
    os.kill(wharfd.pid, signal.SIGSTOP)
    try:
        exited_at = time.time()
        os.kill(pid, signal.SIGTERM)
        time.sleep(4)
    finally:
        os.kill(wharfd.pid, signal.SIGCONT)
    assert _until(lambda: _state(cli, "victim")["Status"] == "exited", 10)
    state = _state(cli, "victim")
    assert state["ExitCode"] == 3
    finished = _unix_time(str(state["FinishedAt"]))
    assert abs(finished - exited_at) < 1.5, (state["FinishedAt"], exited_at)


def test_failed_start_at_daemon_start_falls_back_to_backoff(wharfd: DaemonProcess) -> None:
    """A crash-looping `--restart` container killed with the daemon while it waits to
    restart, whose start then fails at daemon start (its bind source went): the policy
    keeps retrying, so it runs again once the source is back, and it can be removed."""
    cli = DockerCLI(wharfd)
    source = wharfd.tmp / "bind-src"
    source.mkdir()
    cli.ok("run", "-d", "--name", "loop", "--restart", "on-failure:50",
           "--mount", f"type=bind,source={source},target=/x",
           "busybox", "sh", "-c", "sleep 0.2; exit 1")

    def waiting_to_restart() -> bool:
        state = _state(cli, "loop")
        count = int(cli.ok("inspect", "-f", "{{.RestartCount}}", "loop"))
        return state["Status"] == "restarting" and count >= 3

    assert _until(waiting_to_restart, 30)
    wharfd.kill9()
    source.rmdir()
    wharfd.start()
    count_at_start = int(cli.ok("inspect", "-f", "{{.RestartCount}}", "loop"))
    # The start at daemon start fails; the policy retries with its backoff.
    assert _until(
        lambda: int(cli.ok("inspect", "-f", "{{.RestartCount}}", "loop")) > count_at_start, 10
    ), _state(cli, "loop")
    assert "no such file or directory" in str(_state(cli, "loop")["Error"]).lower()
    source.mkdir()
    assert _until(lambda: _state(cli, "loop")["Status"] == "running", 15), _state(cli, "loop")
    cli.ok("stop", "-t", "0", "loop")
    cli.ok("rm", "loop")


def test_kill9_during_commit_does_not_leave_it_paused(wharfd: DaemonProcess) -> None:
    """dockerd leaves a container paused when it dies inside `docker commit`; wharfd
    records that commit paused it and restore thaws it."""
    cli = DockerCLI(wharfd)
    cli.ok("run", "-d", "--name", "busy", "busybox", "sh", "-c",
           "echo data > /file; while true; do sleep 0.1; done")
    pid = int(_state(cli, "busy")["Pid"])  # type: ignore[call-overload]
    with armed_with(wharfd, "commit_while_paused"):  # SIGTERM: the container keeps running
        result = cli("commit", "busy", "snap:1")
        assert result.returncode != 0  # the daemon died inside the commit
    wharfd.start()
    state = _state(cli, "busy")
    assert state["Status"] == "running" and state["Paused"] is False, state
    assert state["Pid"] == pid
    # Really thawed: the container still does work (an exec needs a running process).
    assert cli.ok("exec", "busy", "cat", "/file").strip() == "data"
