"""The swarm's core through the docker CLI on several hosts (tests/harness/cluster.py):
init, join with worker and manager tokens, nodes, leave/rm, liveness, leader failover and
a manager's restart. Broader scenarios and faults live in the swarm scenario tests.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.harness.cli import import_busybox
from tests.harness.cluster import Cluster, Host

pytestmark = [pytest.mark.root, pytest.mark.slow]

ClusterFactory = Callable[..., Cluster]
HEARTBEAT = 1.0  # seconds: swarm init --dispatcher-heartbeat 1s


def _ok(host: Host, *args: str, timeout: float = 60) -> str:
    result = host.docker(*args, timeout=timeout)
    assert result.returncode == 0, f"docker {' '.join(args)} on {host.hostname}: {result.stderr}"
    return str(result.stdout)


def _init(host: Host, *extra: str) -> str:
    _ok(host, "swarm", "init", "--advertise-addr", host.address, *extra)
    return _ok(host, "info", "--format", "{{.Swarm.NodeID}}").strip()


def _token(host: Host, role: str) -> str:
    return _ok(host, "swarm", "join-token", "-q", role).strip()


def _join(host: Host, manager: Host, role: str) -> str:
    out = _ok(host, "swarm", "join", "--token", _token(manager, role), f"{manager.address}:2377")
    return out


def _nodes(host: Host) -> list[dict[str, Any]]:
    out = _ok(host, "node", "ls", "--format", "{{json .}}")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _inspect(host: Host, ref: str) -> dict[str, Any]:
    node: dict[str, Any] = json.loads(_ok(host, "node", "inspect", ref))[0]
    return node


def _by_hostname(host: Host) -> dict[str, dict[str, Any]]:
    return {n["Hostname"]: n for n in _nodes(host)}


def _eventually(check: Callable[[], bool], within: float, step: float = 0.2) -> float:
    """Seconds until ``check()`` held; fails the test after ``within`` seconds."""
    start = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - start
        except AssertionError:
            pass
        if time.monotonic() - start > within:
            raise AssertionError(f"not true within {within}s")
        time.sleep(step)


def test_init_join_and_node_ls(cluster: ClusterFactory) -> None:
    c = cluster(3)
    h1, h2, h3 = c.hosts
    out = _ok(h1, "swarm", "init", "--advertise-addr", h1.address)
    assert "Swarm initialized: current node (" in out
    assert f"{h1.address}:2377" in out  # the join command names ManagerStatus.Addr

    assert "This node joined a swarm as a worker." in _join(h2, h1, "worker")
    assert "This node joined a swarm as a manager." in _join(h3, h1, "manager")

    nodes = _by_hostname(h1)
    assert set(nodes) == {"h1", "h2", "h3"}
    assert all(n["Status"] == "Ready" and n["Availability"] == "Active" for n in nodes.values())
    assert nodes["h1"]["ManagerStatus"] == "Leader"
    assert nodes["h2"]["ManagerStatus"] == ""
    assert nodes["h3"]["ManagerStatus"] == "Reachable"
    assert nodes["h1"]["Self"] is True

    # the second manager answers for the cluster too; the worker refuses
    assert set(_by_hostname(h3)) == {"h1", "h2", "h3"}
    refused = h2.docker("node", "ls")
    assert refused.returncode != 0
    assert "Worker nodes can't be used to view or modify cluster state" in refused.stderr

    info = json.loads(_ok(h3, "info", "--format", "{{json .Swarm}}"))
    assert info["LocalNodeState"] == "active" and info["ControlAvailable"] is True
    assert info["Nodes"] == 3 and info["Managers"] == 2
    worker = json.loads(_ok(h2, "info", "--format", "{{json .Swarm}}"))
    assert worker["ControlAvailable"] is False
    assert {m["Addr"] for m in worker["RemoteManagers"]} >= {f"{h1.address}:2377"}

    inspected = _inspect(h1, "h2")
    assert inspected["Description"]["Hostname"] == "h2"
    assert inspected["Status"]["Addr"] == h2.address
    assert inspected["Spec"] == {"Labels": {}, "Role": "worker", "Availability": "active"}
    assert len(inspected["ID"]) == 25


def test_wrong_tokens_are_refused_and_nothing_is_joined(cluster: ClusterFactory) -> None:
    c = cluster(3)
    h1, h2, h3 = c.hosts
    _init(h1)
    worker_token = _token(h1, "worker")
    wrong_secret = worker_token[:-25] + "0" * 25
    refused = h2.docker("swarm", "join", "--token", wrong_secret, f"{h1.address}:2377")
    assert refused.returncode != 0
    assert "A valid join token is necessary to join this cluster" in refused.stderr

    # a token of another swarm (h3's own CA): h2 refuses h1 before sending anything
    _init(h3)
    foreign = _token(h3, "worker")
    refused = h2.docker("swarm", "join", "--token", foreign, f"{h1.address}:2377")
    assert refused.returncode != 0
    assert "remote CA does not match fingerprint" in refused.stderr

    state = json.loads(_ok(h2, "info", "--format", "{{json .Swarm}}"))
    assert state["LocalNodeState"] == "inactive"
    assert set(_by_hostname(h1)) == {"h1"}
    # and h2 can still join with the right token
    assert "as a worker" in _join(h2, h1, "worker")


def test_update_leave_and_rm(cluster: ClusterFactory) -> None:
    c = cluster(3)
    h1, h2, h3 = c.hosts
    _init(h1, "--dispatcher-heartbeat", "1s")
    _join(h2, h1, "worker")
    _join(h3, h1, "worker")

    _ok(h1, "node", "update", "--availability", "drain", "--label-add", "zone=a", "h3")
    node = _inspect(h1, "h3")
    assert node["Spec"] == {"Labels": {"zone": "a"}, "Role": "worker", "Availability": "drain"}
    pretty = _ok(h1, "node", "inspect", "--pretty", "h3")
    assert "Availability:\t\tDrain" in pretty or "Drain" in pretty

    # a stale version is dockerd's 500 "update out of sequence"
    stale = node["Version"]["Index"] - 1
    answer = h1.docker("node", "update", "--label-rm", "zone", "h3")  # bumps the version
    assert answer.returncode == 0
    assert _inspect(h1, "h3")["Version"]["Index"] > stale + 1

    # the sole manager cannot be demoted, a ready node cannot be removed
    refused = h1.docker("node", "demote", "h1")
    assert "attempting to demote the last manager of the swarm" in refused.stderr
    refused = h1.docker("node", "rm", "h3")
    assert "is not down and can't be removed" in refused.stderr
    refused = h1.docker("swarm", "leave")
    assert "Removing the last manager erases all current state of the swarm" in refused.stderr

    assert "Node left the swarm." in _ok(h3, "swarm", "leave")
    _eventually(lambda: _by_hostname(h1)["h3"]["Status"] == "Down", within=4 * HEARTBEAT)
    _ok(h1, "node", "rm", "h3")
    assert set(_by_hostname(h1)) == {"h1", "h2"}
    assert json.loads(_ok(h3, "info", "--format", "{{json .Swarm}}"))["LocalNodeState"] == (
        "inactive")

    # a ready worker goes only with --force, and then it is out of the swarm itself too
    _ok(h1, "node", "rm", "--force", "h2")
    assert set(_by_hostname(h1)) == {"h1"}
    _eventually(lambda: json.loads(_ok(h2, "info", "--format", "{{json .Swarm}}"))[
        "LocalNodeState"] == "inactive", within=10)
    assert "as a worker" in _join(h2, h1, "worker")


def test_worker_killed_goes_down_and_comes_back(
    cluster: ClusterFactory, busybox_tar: Path
) -> None:
    c = cluster(2)
    h1, h2 = c.hosts
    _init(h1, "--dispatcher-heartbeat", "1s")
    _join(h2, h1, "worker")
    import_busybox(h2.require_daemon(), busybox_tar)
    container = _ok(h2, "run", "-d", "busybox", "sleep", "600").strip()
    h2.kill9()
    took = _eventually(lambda: _by_hostname(h1)["h2"]["Status"] == "Down",
                       within=3 * HEARTBEAT + 2.0)
    assert took <= 3 * HEARTBEAT + 2.0
    h2.start()
    _eventually(lambda: _by_hostname(h1)["h2"]["Status"] == "Ready", within=10)
    state = json.loads(_ok(h2, "info", "--format", "{{json .Swarm}}"))
    assert state["LocalNodeState"] == "active"
    # live-restore in swarm mode: the worker's containers outlived its daemon
    assert _ok(h2, "inspect", "--format", "{{.State.Running}}", container).strip() == "true"


def test_leader_killed_another_manager_leads_and_writes(cluster: ClusterFactory) -> None:
    c = cluster(3)
    h1, h2, h3 = c.hosts
    _init(h1, "--dispatcher-heartbeat", "1s")
    _join(h2, h1, "manager")
    _join(h3, h1, "manager")
    assert _by_hostname(h2)["h1"]["ManagerStatus"] == "Leader"

    h1.kill9()
    started = time.monotonic()

    def new_leader() -> bool:
        leaders = [n["Hostname"] for n in _nodes(h2) if n["ManagerStatus"] == "Leader"]
        return leaders in (["h2"], ["h3"])

    _eventually(new_leader, within=15)
    _ok(h2, "node", "update", "--label-add", "after=failover", "h3")
    assert _inspect(h3, "h3")["Spec"]["Labels"] == {"after": "failover"}
    assert time.monotonic() - started < 15


def test_manager_restart_answers_at_once(cluster: ClusterFactory) -> None:
    c = cluster(2)
    h1, h2 = c.hosts
    _init(h1)
    _join(h2, h1, "manager")
    for restart in (h2.stop, h2.kill9):
        restart()
        h2.start()  # returns once /_ping answers
        # the first cluster call after the start is answered (its etcd member was adopted)
        assert {n["Hostname"] for n in _nodes(h2)} == {"h1", "h2"}
        info = json.loads(_ok(h2, "info", "--format", "{{json .Swarm}}"))
        assert info["LocalNodeState"] == "active" and info["ControlAvailable"] is True


def test_quorum_lost_answers_503_and_force_new_cluster_recovers(
    cluster: ClusterFactory,
) -> None:
    c = cluster(3)
    h1, h2, h3 = c.hosts
    _init(h1, "--dispatcher-heartbeat", "1s")
    _join(h2, h1, "manager")
    _join(h3, h1, "manager")
    h2.disconnect("link")
    h3.disconnect("link")

    def refused_without_quorum() -> bool:
        answer = h1.docker("node", "ls", timeout=30)
        return answer.returncode != 0 and (
            "The swarm does not have a leader. It's possible that too few managers are "
            "online. Make sure more than half of the managers are online." in answer.stderr)

    _eventually(refused_without_quorum, within=20, step=0.5)
    refused = h1.docker("node", "update", "--label-add", "x=y", "h1", timeout=30)
    assert refused.returncode != 0 and "does not have a leader" in refused.stderr

    started = time.monotonic()
    _ok(h1, "swarm", "init", "--force-new-cluster", "--advertise-addr", h1.address)
    nodes = _by_hostname(h1)
    assert nodes["h1"]["ManagerStatus"] == "Leader"
    assert nodes["h2"]["ManagerStatus"] == "Unreachable"
    _ok(h1, "node", "update", "--label-add", "recovered=yes", "h1")
    assert _inspect(h1, "h1")["Spec"]["Labels"] == {"recovered": "yes"}
    assert time.monotonic() - started < 30


def test_autolock_a_restarted_manager_stays_locked_until_unlocked(
    cluster: ClusterFactory,
) -> None:
    c = cluster(1, client=False)
    (h1,) = c.hosts
    # a cluster port that is taken fails the init at once, leaving no swarm behind
    taken = subprocess.Popen(h1.wrap(["busybox", "nc", "-l", "-p", "2377"]),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _eventually(lambda: "2377" in h1.run(["ss", "-ltn"]).stdout, within=5)
        refused = h1.docker("swarm", "init", "--advertise-addr", h1.address)
        assert "failed to listen on remote API address" in refused.stderr
        assert json.loads(_ok(h1, "info", "--format", "{{json .Swarm}}"))[
            "LocalNodeState"] == "inactive"
    finally:
        taken.kill()
        taken.wait()
    _init(h1, "--autolock")
    key = _ok(h1, "swarm", "unlock-key", "-q").strip()
    assert key.startswith("SWMKEY-1-")
    h1.stop()
    h1.start()
    info = json.loads(_ok(h1, "info", "--format", "{{json .Swarm}}"))
    assert info["LocalNodeState"] == "locked"
    refused = h1.docker("node", "ls")
    assert "Swarm is encrypted and needs to be unlocked" in refused.stderr
    wrong = h1.docker("swarm", "unlock", input="SWMKEY-1-" + "A" * 43 + "\n")
    assert "invalid key provided" in wrong.stderr
    _ok_input = h1.docker("swarm", "unlock", input=key + "\n")
    assert _ok_input.returncode == 0, _ok_input.stderr
    _eventually(lambda: len(_nodes(h1)) == 1, within=15)
    again = h1.docker("swarm", "unlock", input=key + "\n")
    assert "swarm is not locked" in again.stderr

    # a rotated key seals the node key anew: the old one no longer unlocks
    _ok(h1, "swarm", "unlock-key", "--rotate")
    new_key = _ok(h1, "swarm", "unlock-key", "-q").strip()
    assert new_key != key
    h1.stop()
    h1.start()
    assert "invalid key provided" in h1.docker("swarm", "unlock", input=key + "\n").stderr
    assert h1.docker("swarm", "unlock", input=new_key + "\n").returncode == 0


def test_promote_and_demote(cluster: ClusterFactory) -> None:
    c = cluster(3, client=False)
    h1, h2, h3 = c.hosts
    _init(h1, "--dispatcher-heartbeat", "1s")
    _join(h2, h1, "worker")
    _join(h3, h1, "worker")
    _ok(h1, "node", "promote", "h2", "h3")

    def managers_reachable() -> bool:
        nodes = _by_hostname(h1)
        return all(nodes[h]["ManagerStatus"] == "Reachable" for h in ("h2", "h3"))

    _eventually(managers_reachable, within=20)
    for host in (h2, h3):
        info = json.loads(_ok(host, "info", "--format", "{{json .Swarm}}"))
        assert info["ControlAvailable"] is True and info["Managers"] == 3
    assert _by_hostname(h3)["h1"]["ManagerStatus"] == "Leader"

    _ok(h1, "node", "demote", "h3")
    _eventually(lambda: not json.loads(
        _ok(h3, "info", "--format", "{{json .Swarm}}"))["ControlAvailable"], within=15)
    nodes = _by_hostname(h2)
    assert nodes["h3"]["ManagerStatus"] == "" and nodes["h3"]["Status"] == "Ready"
    assert "Worker nodes can't be used" in h3.docker("node", "ls").stderr
    # a demoted node can leave without --force and be removed
    _ok(h3, "swarm", "leave")
    _eventually(lambda: _by_hostname(h1)["h3"]["Status"] == "Down", within=5)
    _ok(h2, "node", "rm", "h3")
    assert set(_by_hostname(h1)) == {"h1", "h2"}


def test_ca_rotation_is_refused_not_faked(cluster: ClusterFactory) -> None:
    c = cluster(1, client=False)
    (h1,) = c.hosts
    _init(h1)
    before = _ok(h1, "swarm", "ca")
    refused = h1.docker("swarm", "ca", "--rotate", timeout=30)
    assert refused.returncode != 0
    assert "CA rotation is not supported by this daemon yet" in refused.stderr
    assert _ok(h1, "swarm", "ca") == before
