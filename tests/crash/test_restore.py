"""Daemon crash and restart: containers survive with the same PIDs, exits that happened
while the daemon was down are recorded with their real codes (reliability.md F2, F9, F12,
F17, F21; issue 2 item 7)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.cli import DockerCLI
from tests.harness.crash import own_wharfd
from tests.harness.daemon import DaemonProcess, pid_alive

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def no_live_restore_wharfd(busybox_tar: Path) -> Iterator[DaemonProcess]:
    with own_wharfd(busybox_tar, extra_args=["--live-restore=false"]) as daemon:
        yield daemon


def _state(cli: DockerCLI, name: str) -> dict[str, object]:
    import json

    out = cli.ok("inspect", "-f", "{{json .State}}", name)
    state: dict[str, object] = json.loads(out)
    return state


def _start_set(cli: DockerCLI) -> None:
    cli.ok("run", "-d", "--name", "ticker", "busybox", "sh", "-c",
           'trap "exit 0" TERM; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done')
    cli.ok("run", "-d", "--name", "short", "busybox", "sh", "-c", "sleep 2; exit 7")
    cli.ok("run", "-d", "--rm", "--name", "auto", "busybox", "sleep", "600")


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_containers_survive_daemon_restart(wharfd: DaemonProcess, how: int) -> None:
    cli = DockerCLI(wharfd)
    _start_set(cli)
    pids = {name: int(_state(cli, name)["Pid"]) for name in ("ticker", "short", "auto")}  # type: ignore[call-overload]
    wharfd.stop(how)
    if how == signal.SIGTERM:
        assert not Path(wharfd.socket).exists(), "socket left behind after a clean stop"
    time.sleep(3)  # "short" exits while the daemon is down
    assert pid_alive(pids["ticker"]) and pid_alive(pids["auto"])
    wharfd.start()  # immediately after a kill -9: the pid file lock is free (F9)

    ticker = _state(cli, "ticker")
    assert ticker["Running"] is True and ticker["Pid"] == pids["ticker"]
    assert _state(cli, "auto")["Pid"] == pids["auto"]
    short = _state(cli, "short")
    assert short["Status"] == "exited" and short["ExitCode"] == 7
    names = cli.ok("ps", "--format", "{{.Names}}").split()
    assert sorted(names) == ["auto", "ticker"]

    logs = cli.ok("logs", "--tail", "3", "ticker").splitlines()
    assert len(logs) == 3 and all(line.startswith("tick ") for line in logs)
    # Live output still flows after the restart: attach, then stop ends it with code 0.
    attach = cli.popen("attach", "ticker")
    time.sleep(1)
    cli.ok("stop", "ticker")
    out, _ = attach.communicate(timeout=20)
    assert b"tick" in out
    assert _state(cli, "ticker")["ExitCode"] == 0
    assert not pid_alive(pids["ticker"])

    # An AutoRemove container that survived is removed once it exits (F2, upstream rule).
    cli.ok("kill", "auto")
    deadline = time.time() + 10
    while time.time() < deadline and "auto" in cli.ok("ps", "-a", "--format", "{{.Names}}"):
        time.sleep(0.1)
    assert "auto" not in cli.ok("ps", "-a", "--format", "{{.Names}}")


def test_exit_code_of_failed_start_persists(wharfd: DaemonProcess) -> None:
    cli = DockerCLI(wharfd)
    r = cli("run", "--name", "bad", "busybox", "/relx/nonexistent")
    assert r.returncode == 127
    wharfd.kill9()
    wharfd.start()
    state = _state(cli, "bad")
    assert state["ExitCode"] == 127
    assert "no such file or directory" in str(state["Error"])


def test_wait_after_kill_while_down(wharfd: DaemonProcess) -> None:
    cli = DockerCLI(wharfd)
    cli.ok("run", "-d", "--name", "victim", "busybox", "sleep", "600")
    pid = int(_state(cli, "victim")["Pid"])  # type: ignore[call-overload]
    wharfd.kill9()
    # A signal without a handler does not reach a namespace's init from outside, so use
    # the one that always does.
    os.kill(pid, signal.SIGKILL)
    wharfd.start()
    started = time.time()
    r = cli("wait", "victim")
    assert time.time() - started < 5
    assert r.stdout.strip() == "137"


def test_rm_after_monitor_killed(wharfd: DaemonProcess) -> None:
    cli = DockerCLI(wharfd)
    cli.ok("run", "-d", "--name", "orphan", "busybox", "sleep", "600")
    cid = cli.ok("inspect", "-f", "{{.Id}}", "orphan").strip()
    conmon_pid = int((wharfd.exec_root / "conmon" / cid / "conmon.pid").read_text())
    os.kill(conmon_pid, signal.SIGKILL)
    cli.ok("rm", "-f", "orphan")
    assert "orphan" not in cli.ok("ps", "-a", "--format", "{{.Names}}")


def test_no_live_restore_stops_containers(no_live_restore_wharfd: DaemonProcess) -> None:
    daemon = no_live_restore_wharfd
    cli = DockerCLI(daemon)
    cli.ok("run", "-d", "--name", "c1", "busybox", "sh", "-c",
           'trap "exit 0" TERM; while true; do sleep 0.1; done')
    pid = int(_state(cli, "c1")["Pid"])  # type: ignore[call-overload]
    daemon.stop(signal.SIGTERM)
    assert not pid_alive(pid)
    daemon.start()
    assert _state(cli, "c1")["Status"] == "exited"


def test_simulated_reboot(wharfd: DaemonProcess) -> None:
    """F20: kill everything, make the boot id differ, start: running containers are
    exited with 255 and `always` ones run again."""
    cli = DockerCLI(wharfd)
    cli.ok("run", "-d", "--name", "plain", "busybox", "sleep", "600")
    cli.ok("run", "-d", "--name", "always1", "--restart", "always", "busybox", "sleep", "600")
    ids = {name: cli.ok("inspect", "-f", "{{.Id}}", name).strip() for name in ("plain", "always1")}
    wharfd.kill9()
    for cid in ids.values():
        conmon = int((wharfd.exec_root / "conmon" / cid / "conmon.pid").read_text())
        pid = int((wharfd.data_root / "containers" / cid / "pidfile").read_text())
        for victim in (pid, conmon):
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
    (wharfd.exec_root / "boot_id").write_text("00000000-0000-0000-0000-000000000000\n")
    wharfd.start()
    plain = _state(cli, "plain")
    assert plain["Status"] == "exited" and plain["ExitCode"] == 255
    deadline = time.time() + 10
    while time.time() < deadline and _state(cli, "always1")["Status"] != "running":
        time.sleep(0.1)
    assert _state(cli, "always1")["Status"] == "running"
    # Started by the daemon, not by the restart manager: RestartCount unchanged (F1).
    assert cli.ok("inspect", "-f", "{{.RestartCount}}", "always1").strip() == "0"
    cli.ok("rm", "-f", "plain", "always1")


def test_f1_kill9_without_live_restore(no_live_restore_wharfd: DaemonProcess) -> None:
    """F1: after a kill -9, a daemon without live-restore stops what survived; restart
    policies (unless-stopped too) bring theirs back with new PIDs, RestartCount unchanged."""
    daemon = no_live_restore_wharfd
    cli = DockerCLI(daemon)
    cli.ok("run", "-d", "--name", "nopolicy", "busybox", "sleep", "600")
    cli.ok("run", "-d", "--name", "us1", "--restart", "unless-stopped", "busybox",
           "sleep", "600")
    cli.ok("run", "-d", "--name", "al1", "--restart", "always", "busybox", "sleep", "600")
    pids = {n: int(_state(cli, n)["Pid"]) for n in ("nopolicy", "us1", "al1")}  # type: ignore[call-overload]
    daemon.kill9()
    daemon.start()
    deadline = time.time() + 20
    def settled() -> bool:
        return (_state(cli, "nopolicy")["Status"] == "exited"
                and all(_state(cli, n)["Status"] == "running"
                        and _state(cli, n)["Pid"] != pids[n] for n in ("us1", "al1")))
    while time.time() < deadline and not settled():
        time.sleep(0.2)
    assert settled()
    assert not pid_alive(pids["nopolicy"])
    for name in ("us1", "al1"):
        assert cli.ok("inspect", "-f", "{{.RestartCount}}", name).strip() == "0"
