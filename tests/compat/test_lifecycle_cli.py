"""Restart policies, pause/unpause, rename through the docker CLI (issue 4 items 3 and 5)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.harness.cli import DockerCLI

pytestmark = pytest.mark.root


def _state(cli: DockerCLI, name: str) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(cli.ok("inspect", "-f", "{{json .State}}", name))
    return state


def _restart_count(cli: DockerCLI, name: str) -> int:
    return int(cli.ok("inspect", "-f", "{{.RestartCount}}", name).strip())


def _until(predicate: Any, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_restart_always_grows_restart_count(docker_cli: DockerCLI) -> None:
    docker_cli.ok("run", "-d", "--restart=always", "--name", "r1", "busybox", "sh", "-c",
                  "sleep 0.3; exit 1")
    try:
        assert _until(lambda: _restart_count(docker_cli, "r1") >= 3, 20)
        # While waiting to restart, removal without force is refused.
        assert _until(lambda: _state(docker_cli, "r1")["Restarting"], 10)
        r = docker_cli("rm", "r1")
        if _state(docker_cli, "r1")["Restarting"]:
            assert r.returncode != 0
            assert "You cannot remove a restarting container" in r.stderr
        docker_cli.ok("stop", "r1")
        count = _restart_count(docker_cli, "r1")
        time.sleep(1.5)
        assert _restart_count(docker_cli, "r1") == count, "a stopped container restarted"
        assert _state(docker_cli, "r1")["Running"] is False
    finally:
        docker_cli("rm", "-f", "r1")


def test_on_failure_limit(docker_cli: DockerCLI) -> None:
    docker_cli.ok("run", "-d", "--restart=on-failure:3", "--name", "of3", "busybox", "sh",
                  "-c", "exit 3")
    try:
        def done() -> bool:
            state = _state(docker_cli, "of3")
            return not state["Running"] and _restart_count(docker_cli, "of3") == 3

        assert _until(done, 20)
        assert _state(docker_cli, "of3")["ExitCode"] == 3
        time.sleep(1)
        assert _restart_count(docker_cli, "of3") == 3
    finally:
        docker_cli("rm", "-f", "of3")


def test_on_failure_does_not_restart_success(docker_cli: DockerCLI) -> None:
    docker_cli.ok("run", "-d", "--restart=on-failure", "--name", "of0", "busybox", "true")
    try:
        assert _until(lambda: not _state(docker_cli, "of0")["Running"], 10)
        time.sleep(0.5)
        assert _restart_count(docker_cli, "of0") == 0
    finally:
        docker_cli("rm", "-f", "of0")


def test_pause_unpause(docker_cli: DockerCLI) -> None:
    docker_cli.ok("run", "-d", "--name", "p1", "busybox", "sleep", "600")
    try:
        docker_cli.ok("pause", "p1")
        state = _state(docker_cli, "p1")
        assert state["Paused"] is True and state["Status"] == "paused"
        assert "(Paused)" in docker_cli.ok("ps", "--filter", "name=p1", "--format", "{{.Status}}")
        r = docker_cli("pause", "p1")
        assert r.returncode != 0 and "is already paused" in r.stderr
        docker_cli.ok("unpause", "p1")
        assert _state(docker_cli, "p1")["Status"] == "running"
        r = docker_cli("unpause", "p1")
        assert r.returncode != 0 and "is not paused" in r.stderr
        # A paused container can be killed.
        docker_cli.ok("pause", "p1")
        docker_cli.ok("kill", "p1")
        assert _state(docker_cli, "p1")["Running"] is False
    finally:
        docker_cli("rm", "-f", "p1")


def test_rename(docker_cli: DockerCLI) -> None:
    docker_cli.ok("create", "--name", "old1", "busybox", "true")
    docker_cli.ok("create", "--name", "taken1", "busybox", "true")
    try:
        docker_cli.ok("rename", "old1", "new1")
        assert docker_cli.ok("inspect", "-f", "{{.Name}}", "new1").strip() == "/new1"
        r = docker_cli("rename", "new1", "taken1")
        assert r.returncode != 0 and "Error when allocating new name: Conflict." in r.stderr
        r = docker_cli("inspect", "old1")
        assert r.returncode != 0
    finally:
        docker_cli("rm", "-f", "new1", "old1", "taken1")


def test_container_prune_with_label_filter(docker_cli: DockerCLI) -> None:
    docker_cli.ok("create", "--label", "prune=yes", "--name", "pr1", "busybox", "true")
    docker_cli.ok("create", "--name", "pr2", "busybox", "true")
    docker_cli.ok("run", "-d", "--label", "prune=yes", "--name", "pr3", "busybox", "sleep", "60")
    try:
        out = docker_cli.ok("container", "prune", "-f", "--filter", "label=prune=yes")
        names = docker_cli.ok("ps", "-a", "--format", "{{.Names}}").split()
        assert "pr1" not in names and "pr2" in names and "pr3" in names
        assert "Total reclaimed space" in out
    finally:
        docker_cli("rm", "-f", "pr1", "pr2", "pr3")


def test_init_runs_tini_as_pid1(docker_cli: DockerCLI) -> None:
    out = docker_cli.ok("run", "--rm", "--init", "busybox", "cat", "/proc/1/cmdline")
    assert out.split("\0")[0] == "/sbin/docker-init"
    r = docker_cli("run", "--rm", "--init", "busybox", "sh", "-c", "exit 5")
    assert r.returncode == 5


def test_memory_limit_swap_default_and_update(docker_cli: DockerCLI) -> None:
    out = docker_cli.ok("run", "--memory=200M", "--rm", "busybox", "cat",
                        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                        "/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes")
    assert out.split() == [str(200 * 2**20), str(400 * 2**20)]
    docker_cli.ok("run", "-d", "--memory=200M", "--name", "upd1", "busybox", "sleep", "600")
    try:
        docker_cli.ok("update", "--memory", "300M", "upd1")
        cid = docker_cli.ok("inspect", "-f", "{{.Id}}", "upd1").strip()
        cgroup = Path("/sys/fs/cgroup/memory") / docker_cli.daemon.cgroup_parent.lstrip("/") / cid
        assert (cgroup / "memory.limit_in_bytes").read_text().strip() == str(300 * 2**20)
        hc = json.loads(docker_cli.ok("inspect", "-f", "{{json .HostConfig}}", "upd1"))
        assert hc["Memory"] == 300 * 2**20 and hc["MemorySwap"] == 400 * 2**20
        docker_cli.ok("update", "--restart", "on-failure:2", "upd1")
        hc = json.loads(docker_cli.ok("inspect", "-f", "{{json .HostConfig}}", "upd1"))
        assert hc["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 2}
    finally:
        docker_cli("rm", "-f", "upd1")


def test_bad_resources_are_400_at_create(docker_cli: DockerCLI) -> None:
    r = docker_cli("create", "--memory", "1k", "busybox")
    assert r.returncode != 0 and "Minimum memory limit allowed is 6MB" in r.stderr
    r = docker_cli("create", "--cpuset-cpus", "999", "busybox")
    assert r.returncode != 0 and "Requested CPUs are not available" in r.stderr


def test_json_file_rotation_keeps_the_tail(docker_cli: DockerCLI) -> None:
    docker_cli.ok("run", "-d", "--name", "rot1", "--log-opt", "max-size=20k",
                  "--log-opt", "max-file=3", "busybox", "sh", "-c",
                  "i=0; while [ $i -lt 6000 ]; do echo line-$i; i=$((i+1)); "
                  "[ $((i % 500)) -eq 0 ] && sleep 0.3; done")
    try:
        assert _until(lambda: not _state(docker_cli, "rot1")["Running"], 60)
        cid = docker_cli.ok("inspect", "-f", "{{.Id}}", "rot1").strip()
        files = sorted(p.name for p in (docker_cli.daemon.data_root / "containers" / cid).iterdir()
                       if p.name.startswith("ctr.log"))
        assert files[0] == "ctr.log" and 1 < len(files) <= 3, files
        lines = docker_cli.ok("logs", "rot1").splitlines()
        assert lines[-1] == "line-5999"
        numbers = [int(line.split("-")[1]) for line in lines]
        assert numbers == list(range(numbers[0], 6000)), "the retained lines are contiguous"
        assert numbers[0] > 0, "old lines were rotated away"
        assert docker_cli.ok("logs", "--tail", "2", "rot1").split() == ["line-5998", "line-5999"]
    finally:
        docker_cli("rm", "-f", "rot1")


def test_none_driver_and_bad_driver(docker_cli: DockerCLI) -> None:
    docker_cli.ok("run", "--name", "nolog", "--log-driver", "none", "busybox", "echo", "hi")
    try:
        r = docker_cli("logs", "nolog")
        assert r.returncode != 0
        assert "configured logging driver does not support reading" in r.stderr
    finally:
        docker_cli("rm", "-f", "nolog")
    r = docker_cli("create", "--log-driver", "nosuchdriver", "busybox")
    assert r.returncode != 0 and "no log driver named 'nosuchdriver'" in r.stderr


def test_logs_details(docker_cli: DockerCLI) -> None:
    docker_cli.ok("run", "--name", "det1", "--label", "team=a", "--log-opt", "labels=team",
                  "busybox", "echo", "hello")
    try:
        assert docker_cli.ok("logs", "--details", "det1") == "team=a hello\n"
    finally:
        docker_cli("rm", "-f", "det1")


def test_namespace_modes(docker_cli: DockerCLI) -> None:
    docker_cli.ok("run", "-d", "--name", "nsbase", "busybox", "sleep", "600")
    try:
        shared = docker_cli.ok("run", "--rm", "--pid", "container:nsbase", "busybox", "ps")
        assert "sleep 600" in shared
        own = docker_cli.ok("run", "--rm", "busybox", "ps")
        assert "sleep 600" not in own
        host_uts = docker_cli.ok("run", "--rm", "--uts", "host", "busybox", "hostname").strip()
        assert host_uts == Path("/proc/sys/kernel/hostname").read_text().strip()
        ipc_host = docker_cli.ok("run", "--rm", "--ipc", "host", "busybox", "readlink",
                                 "/proc/self/ns/ipc").strip()
        assert ipc_host == os.readlink("/proc/self/ns/ipc")
        cg = docker_cli.ok("run", "--rm", "--cgroupns", "private", "busybox", "cat",
                           "/proc/self/cgroup")
        assert all(line.endswith(":/") for line in cg.splitlines()), cg
    finally:
        docker_cli("rm", "-f", "nsbase")


def test_platform_mismatch_is_404(docker_cli: DockerCLI) -> None:
    r = docker_cli("create", "--pull", "never", "--platform", "linux/arm64", "busybox")
    assert r.returncode != 0
    assert "does not match the specified platform" in r.stderr
    docker_cli.ok("rm", docker_cli.ok("create", "--platform", "linux/amd64", "busybox").strip())


def test_oom_kill_is_reported(docker_cli: DockerCLI) -> None:
    since = str(int(time.time()))
    r = docker_cli("run", "--name", "oom1", "--memory", "8m", "--memory-swap", "8m", "busybox",
                   "sh", "-c", "x=$(head -c 50000000 /dev/zero | tr '\\0' a); echo ${#x}")
    try:
        assert r.returncode == 137
        state = _state(docker_cli, "oom1")
        assert state["OOMKilled"] is True and state["ExitCode"] == 137
        events = docker_cli.ok("events", "--since", since, "--until", str(int(time.time()) + 1),
                               "--filter", "event=oom", "--format", "{{.Actor.Attributes.name}}")
        assert events.split() == ["oom1"]
    finally:
        docker_cli("rm", "-f", "oom1")


def test_more_create_options(docker_cli: DockerCLI) -> None:
    r = docker_cli("run", "--rm", "--read-only", "busybox", "touch", "/x")
    assert r.returncode != 0 and "Read-only file system" in r.stderr
    docker_cli.ok("run", "--rm", "--read-only", "--tmpfs", "/tmp", "busybox", "touch", "/tmp/x")
    out = docker_cli.ok("run", "--rm", "--device", "/dev/null:/dev/mynull", "busybox", "sh",
                        "-c", "echo hi > /dev/mynull && echo written")
    assert out.strip() == "written"
    assert docker_cli.ok("run", "--rm", "--ulimit", "nofile=100:200", "busybox", "sh", "-c",
                         "ulimit -n; ulimit -Hn").split() == ["100", "200"]
    assert docker_cli.ok("run", "--rm", "--pids-limit", "10", "busybox", "cat",
                         "/sys/fs/cgroup/pids/pids.max").strip() == "10"
    assert docker_cli.ok("run", "--rm", "--cpus", "0.5", "busybox", "cat",
                         "/sys/fs/cgroup/cpu/cpu.cfs_quota_us").strip() == "50000"
