"""Restore reconciles every container with what the host says, whatever state its row
records (issue 10, faults): a daemon killed in the middle of starts or removals leaves
runc state, conmon, mounts, network namespaces and cgroups behind that the row does not
mention. After the restart a container is either running (adopted) or holds none of it.

wharfd-specific: the daemon is killed with SIGKILL mid-request, and the leftovers are
looked for in wharfd's own roots (runc --root, netns directory, rootfs mounts, cgroups).
"""

from __future__ import annotations

import json
import subprocess
import tarfile
import time

import pytest

from tests.harness.cli import DockerCLI
from tests.harness.crash import armed_with
from tests.harness.daemon import DaemonProcess, mounts_under
from tests.harness.rawhttp import Connection

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _inspect(cli: DockerCLI, ref: str) -> dict[str, object]:
    data: dict[str, object] = json.loads(cli.ok("inspect", ref))[0]
    return data


def _leftovers(daemon: DaemonProcess, cid: str) -> list[str]:
    """What of a run is still on the host for a container that is not running."""
    found = [f"mount {m}" for m in mounts_under(daemon.data_root / "containers" / cid)]
    if (daemon.exec_root / "netns" / cid).exists():
        found.append("netns")
    if (daemon.exec_root / "runtime" / cid).exists():
        found.append("runc state")
    conmon_pid = daemon.exec_root / "conmon" / cid / "conmon.pid"
    if conmon_pid.exists():
        found.append("conmon files")
    for top in daemon.cgroup_dirs():
        if any(top.rglob(cid)):
            found.append(f"cgroup under {top}")
    return found


def _kill_daemon_mid(daemon: DaemonProcess, cli: DockerCLI, argv_per: list[list[str]],
                     after: float) -> None:
    """Run the commands in parallel, SIGKILL the daemon ``after`` seconds later."""
    procs = [cli.popen(*argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for argv in argv_per]
    time.sleep(after)
    daemon.kill9()
    for proc in procs:
        proc.wait(timeout=30)


def _converged(daemon: DaemonProcess, cli: DockerCLI, names: list[str]) -> dict[str, object]:
    """Every named container that still exists is running or holds nothing of a run."""
    problems: dict[str, object] = {}
    for name in names:
        result = cli("inspect", name)
        if result.returncode != 0:
            continue  # removed
        data = json.loads(result.stdout)[0]
        if data["State"]["Running"]:
            continue
        left = _leftovers(daemon, data["Id"])
        if left:
            problems[name] = (data["State"]["Status"], left)
    return problems


# When the daemon dies: while runc init waits, while the processes run unrecorded.
@pytest.mark.parametrize("kill_after", [0.2, 0.35])
def test_starts_killed_midway_are_reconciled(wharfd: DaemonProcess, kill_after: float) -> None:
    cli = DockerCLI(wharfd)
    names = [f"s{i}" for i in range(6)]
    for name in names:
        cli.ok("create", "--name", name, "busybox", "sleep", "600")
    _kill_daemon_mid(wharfd, cli, [["start", name] for name in names], after=kill_after)
    wharfd.start()
    assert _converged(wharfd, cli, names) == {}
    # Every one can be started (no "container with given ID already exists") and removed.
    for name in names:
        if not _inspect(cli, name)["State"]["Running"]:  # type: ignore[index]
            cli.ok("start", name)
    for name in names:
        assert _inspect(cli, name)["State"]["Running"] is True  # type: ignore[index]
    cli.ok("rm", "-f", *names)


def test_removals_killed_midway_leave_nothing(wharfd: DaemonProcess) -> None:
    cli = DockerCLI(wharfd)
    names = [f"r{i}" for i in range(10)]
    for name in names:
        cli.ok("run", "-d", "--name", name, "busybox", "sleep", "600")
    ids = {name: str(_inspect(cli, name)["Id"]) for name in names}
    _kill_daemon_mid(wharfd, cli, [["rm", "-f", name] for name in names], after=0.4)
    wharfd.start()
    assert _converged(wharfd, cli, names) == {}
    remaining = [n for n in names if cli("inspect", n).returncode == 0]
    if remaining:
        cli.ok("rm", "-f", *remaining)
    for name, cid in ids.items():
        assert _leftovers(wharfd, cid) == [], name


def test_interrupted_cp_leaves_no_rootfs_mount(wharfd: DaemonProcess) -> None:
    """A `docker cp` into a created container holds its rootfs mounted while the tar
    arrives; killed then, restore unmounts it, and start/rm leave nothing either."""
    cli = DockerCLI(wharfd)
    cid = cli.ok("create", "--name", "target", "busybox", "sleep", "600").strip()
    mounted_at = wharfd.data_root / "containers" / cid
    with Connection(wharfd.socket) as conn:
        # The upload announces far more than it sends: the daemon waits inside cp.
        conn.send_raw(
            f"PUT /containers/{cid}/archive?path=/tmp HTTP/1.1\r\nHost: docker\r\n"
            "Content-Type: application/x-tar\r\nContent-Length: 10485760\r\n\r\n".encode()
            + _tar_header("big", 10 << 20)
        )
        deadline = time.time() + 10
        while time.time() < deadline and not mounts_under(mounted_at):
            time.sleep(0.05)
        assert mounts_under(mounted_at), "the upload never mounted the rootfs"
        wharfd.kill9()
    wharfd.start()
    assert mounts_under(mounted_at) == []
    cli.ok("start", "target")
    cli.ok("rm", "-f", "target")
    assert _leftovers(wharfd, cid) == []


def _tar_header(name: str, size: int) -> bytes:
    """A ustar header for a regular file (the body never follows)."""
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def test_start_killed_before_its_row_is_adopted(wharfd: DaemonProcess) -> None:
    """The daemon dies after `runc start` but before the row says running: the process
    runs, so restore adopts it (running, same pid), and it stops and goes cleanly."""
    cli = DockerCLI(wharfd)
    cid = cli.ok("create", "--name", "half", "busybox", "sleep", "600").strip()
    with armed_with(wharfd, "start_before_commit"):
        assert cli("start", "half").returncode != 0  # the daemon died inside it
    pid = int((wharfd.data_root / "containers" / cid / "pidfile").read_text())
    wharfd.start()
    state = _inspect(cli, "half")["State"]
    assert state["Running"] is True and state["Pid"] == pid, state  # type: ignore[index]
    cli.ok("stop", "-t", "1", "half")
    assert _leftovers(wharfd, cid) == []
    cli.ok("start", "half")
    cli.ok("rm", "-f", "half")
    assert _leftovers(wharfd, cid) == []
