"""Self-tests of the harness parts that need root: network namespaces, and the reference
dockerd started, used and cleaned up without leaving anything on the host."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness.cli import import_busybox, run_docker
from tests.harness.daemon import DockerdReference, dockerd_unavailable_reason, mounts_under
from tests.harness.netns import NetNS, list_test_netns

pytestmark = pytest.mark.root


def test_netns_create_delete() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    ns = NetNS()
    with ns:
        assert ns.name in list_test_netns()
        out = ns.run(["ip", "-o", "link"]).stdout.splitlines()
        assert len(out) == 1 and "lo" in out[0] and "UP" in out[0]
        # commands inside see the host's cgroup mounts (nsenter, not `ip netns exec`)
        host_cgroups = [ln for ln in Path("/proc/self/mountinfo").read_text().splitlines()
                        if " - cgroup" in ln]
        inside = ns.run(["cat", "/proc/self/mountinfo"]).stdout
        assert len([ln for ln in inside.splitlines() if " - cgroup" in ln]) == len(host_cgroups)
        p = ns.popen(["sleep", "30"])
        try:
            deadline = time.monotonic() + 5  # nsenter needs a moment to join the netns
            while p.pid not in ns.pids() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert p.pid in ns.pids()
        finally:
            p.kill()
            p.wait()
    assert ns.name not in list_test_netns()
    assert not ns.path.exists()


@pytest.fixture
def reference() -> DockerdReference:
    reason = dockerd_unavailable_reason()
    if reason:
        pytest.skip(reason)
    return DockerdReference()


def _assert_gone(d: DockerdReference) -> None:
    assert not d.tmp.exists()
    assert not mounts_under(d.tmp)
    assert not d.netns.exists
    assert not d.cgroup_dirs()


@pytest.mark.parametrize("how", ["clean", "daemon-killed"])
def test_reference_dockerd_runs_and_cleans_up(
    reference: DockerdReference, busybox_tar: Path, how: str
) -> None:
    d = reference
    trust_key = Path("/etc/docker/key.json")
    had_trust_key = trust_key.exists()
    try:
        d.start()
        import_busybox(d, busybox_tar)
        r = run_docker(d, "run", "--rm", "busybox", "echo", "hello")
        assert (r.returncode, r.stdout) == (0, "hello\n"), r.stderr
        r = run_docker(d, "run", "-d", "busybox", "sleep", "3600")
        assert r.returncode == 0, r.stderr
        assert d.cgroup_pids(), "the running container is not under the test's cgroup parent"
        assert {"dockerd", "containerd"} <= {
            Path(f"/proc/{p}/comm").read_text().strip() for p in d.netns_pids()
        }
        if how == "daemon-killed":
            d.kill9()
            assert d.leftover_pids(), "shim and container should outlive a SIGKILLed dockerd"
    finally:
        left = d.cleanup()
    assert left == {}
    _assert_gone(d)
    assert had_trust_key or not trust_key.exists(), "dockerd wrote /etc/docker/key.json"
    alive = subprocess.run(["ps", "-eo", "pid="], capture_output=True, text=True).stdout.split()
    assert str(d.pid) not in alive
