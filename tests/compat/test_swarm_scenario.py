"""Issue 12: the seed's three-host swarm, step by step with the stock docker CLI 28, and
the CLI texts users read around it (init, join, info's Swarm section, join-token,
update, unlock-key with autolock, leave).

Every host is its own network + UTS namespace (tests/harness/cluster.py), so hostnames
are h1..h3 and addresses 192.168.77.1-3. Run with ``--against-dockerd`` to check the
expectations on dockerd 20.10 (every one passes there).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.harness.cluster import Cluster
from tests.harness.swarm import (
    CLUSTER_PORT,
    INIT_RE,
    JOIN_CMD_RE,
    fails,
    init,
    join,
    join_token,
    leader_hostname,
    new_leader,
    node_status,
    nodes,
    nodes_by_hostname,
    ok,
    swarm_info,
    wait_for,
    wait_managers_reachable,
)

pytestmark = pytest.mark.root

ClusterFactory = Callable[..., Cluster]

NODE_ID = re.compile(r"^[0-9a-z]{25}$")
WORKER_JOINED = "This node joined a swarm as a worker."
NODE_LEFT = "Node left the swarm."
MANAGER_LEAVE_WARNING = ("You are attempting to leave the swarm on a node that is "
                         "participating as a manager.")
SOLE_MANAGER_LEAVE = ("Removing the last manager erases all current state of the swarm. "
                      "Use `--force` to ignore this message.")
NOT_IN_SWARM_LEAVE = "This node is not part of a swarm"
WORKER_NOT_MANAGER = ("This node is not a swarm manager. Worker nodes can't be used to view "
                      "or modify cluster state. Please run this command on a manager node or "
                      "promote the current node to a manager.")
NOT_A_MANAGER_INACTIVE = ('This node is not a swarm manager. Use "docker swarm init" or '
                          '"docker swarm join" to connect this node to swarm and try again.')
UNLOCK_KEY = re.compile(r"SWMKEY-1-[A-Za-z0-9+/]{43}")


def pretty_fields(text: str) -> dict[str, str]:
    """``node inspect --pretty`` as ``{"Hostname": ..., "Status.State": ...}``: a line
    ``Key:`` with no value opens a section, indented lines belong to it."""
    out: dict[str, str] = {}
    section = ""
    for line in text.splitlines():
        if m := re.match(r"^(\S[^:]*):[ \t]*$", line):
            section = m.group(1)
        elif m := re.match(r"^(\S[^:]*):[ \t]+(\S.*)$", line):
            section = ""
            out[m.group(1)] = m.group(2).strip()
        elif section and (m := re.match(r"^\s+([^:]+):[ \t]+(\S.*)$", line)):
            out[f"{section}.{m.group(1)}"] = m.group(2).strip()
    return out


# -- the seed's scenario ---------------------------------------------------------------------

@pytest.mark.slow
def test_seed_three_host_scenario(cluster: ClusterFactory) -> None:
    c = cluster(3, client=False)
    h1, h2, h3 = c.hosts

    # h1$ docker swarm init --advertise-addr 192.168.77.1   (prints the join command)
    out = init(h1, "--dispatcher-heartbeat", "1s")
    m = INIT_RE.search(out)
    assert m, out
    h1_id = m.group("id")
    cmd = JOIN_CMD_RE.search(out)
    assert cmd, out
    assert cmd.group("addr") == f"{h1.address}:{CLUSTER_PORT}"
    token = cmd.group("token")

    # h2$, h3$ docker swarm join --token SWMTKN-1-... 192.168.77.1:2377
    for host in (h2, h3):
        assert join(host, token, h1).strip() == WORKER_JOINED

    # h1$ docker node ls: three Ready/Active, h1 Leader, hostnames h1..h3
    rows = nodes_by_hostname(h1)
    assert sorted(rows) == ["h1", "h2", "h3"]
    for row in rows.values():
        assert row["Status"] == "Ready", row
        assert row["Availability"] == "Active", row
        assert NODE_ID.match(row["ID"]), row
    assert rows["h1"]["ManagerStatus"] == "Leader"
    assert rows["h2"]["ManagerStatus"] == rows["h3"]["ManagerStatus"] == ""
    assert rows["h1"]["ID"] == h1_id
    assert rows["h1"]["Self"] is True
    assert len({r["ID"] for r in rows.values()}) == 3

    # h1$ docker node promote h2 h3
    out = ok(h1, "node", "promote", "h2", "h3")
    assert "Node h2 promoted to a manager in the swarm." in out
    assert "Node h3 promoted to a manager in the swarm." in out
    wait_managers_reachable(h1, ["h1", "h2", "h3"])

    # kill -9 <h1's daemon>; h2$ docker node ls  -> h2 or h3 Leader, h1 Down/Unreachable
    h1.kill9()
    leader = wait_for(lambda: new_leader(h2, "h1"), 60, "a new leader seen from h2")
    assert leader in ("h2", "h3")
    def h1_unreachable() -> dict[str, dict[str, Any]] | None:
        rows = nodes_by_hostname(h2)
        return rows if rows["h1"]["ManagerStatus"] == "Unreachable" else None

    rows = wait_for(h1_unreachable, 60, "h1 Unreachable seen from h2")
    assert rows["h1"]["Status"] in ("Down", "Unknown"), rows["h1"]
    # the other survivor answers too, with the same leader
    assert wait_for(lambda: leader_hostname(h3), 30, "the leader seen from h3") == leader

    # a new leader learns the survivors' state from their next heartbeats (dockerd shows
    # them Unknown until then)
    wait_for(lambda: all(node_status(h2, h) == "Ready" for h in ("h2", "h3")), 30,
             "h2 and h3 Ready seen from h2")

    # h2$ docker node update --availability drain h3; docker node inspect --pretty h3
    assert ok(h2, "node", "update", "--availability", "drain", "h3").strip() == "h3"
    pretty = ok(h2, "node", "inspect", "--pretty", "h3")
    fields = pretty_fields(pretty)
    assert fields["Hostname"] == "h3", pretty
    assert fields["Status.State"] == "Ready", pretty
    assert fields["Status.Availability"] == "Drain", pretty
    assert fields["Manager Status.Address"] == f"{h3.address}:{CLUSTER_PORT}", pretty
    assert fields["Manager Status.Raft Status"] == "Reachable", pretty
    assert fields["Manager Status.Leader"] == ("Yes" if leader == "h3" else "No"), pretty
    assert NODE_ID.match(fields["ID"]), pretty
    assert fields["Platform.Operating System"] == "linux", pretty
    assert fields["Engine Version"], pretty

    # h3$ docker swarm leave: h3 is a manager, the CLI warns and refuses
    r = fails(h3, "swarm", "leave")
    assert MANAGER_LEAVE_WARNING in r.stderr, r.stderr
    # with h1 dead a manager can only go once h1 is out of the managers: demote the dead
    # one, remove it, demote h3 (h2 alone keeps the quorum of one), then h3 leaves
    ok(h2, "node", "demote", "h1")
    assert ok(h2, "node", "rm", "h1").strip() == "h1"
    ok(h2, "node", "demote", "h3")  # when h3 leads, the leadership moves to h2
    wait_for(lambda: nodes_by_hostname(h2).get("h3", {}).get("ManagerStatus") == "",
             60, "h3 a worker")
    assert wait_for(lambda: leader_hostname(h2), 60, "h2 leader") == "h2"
    assert ok(h3, "swarm", "leave").strip() == NODE_LEFT
    assert swarm_info(h3)["LocalNodeState"] == "inactive"

    # h2$ docker node rm h3 (once h2 sees it down)
    wait_for(lambda: node_status(h2, "h3") == "Down", 60, "h3 Down after it left")
    assert ok(h2, "node", "rm", "h3").strip() == "h3"
    rows = nodes_by_hostname(h2)
    assert sorted(rows) == ["h2"]
    assert rows["h2"]["ManagerStatus"] == "Leader"


# -- the CLI texts around the swarm ------------------------------------------------------------

@pytest.fixture(scope="module")
def pair(module_cluster: ClusterFactory) -> Iterator[dict[str, Any]]:
    """h1 inits (default heartbeat), h2 joins as a worker; the CLI outputs are kept."""
    c = module_cluster(2, client=False)
    h1, h2 = c.hosts
    init_out = init(h1)
    token = join_token(h1, "worker")
    join_out = join(h2, token, h1)
    yield {"cluster": c, "h1": h1, "h2": h2, "init": init_out, "join": join_out,
           "token": token}


def test_init_prints_node_id_and_join_command(pair: dict[str, Any]) -> None:
    h1 = pair["h1"]
    out = pair["init"]
    m = INIT_RE.search(out)
    assert m, out
    assert swarm_info(h1)["NodeID"] == m.group("id")
    cmd = JOIN_CMD_RE.search(out)
    assert cmd, out
    assert cmd.group("token") == pair["token"]
    assert cmd.group("addr") == f"{h1.address}:{CLUSTER_PORT}"
    assert ("To add a manager to this swarm, run 'docker swarm join-token manager' and "
            "follow the instructions.") in out


def test_join_prints_worker_line(pair: dict[str, Any]) -> None:
    assert pair["join"].strip() == WORKER_JOINED


def test_init_or_join_again_is_refused(pair: dict[str, Any]) -> None:
    h1, h2 = pair["h1"], pair["h2"]
    again = ('This node is already part of a swarm. Use "docker swarm leave" to leave '
             'this swarm and join another one.')
    assert again in fails(h1, "swarm", "init", "--advertise-addr", h1.address).stderr
    assert again in fails(h2, "swarm", "join", "--token", pair["token"],
                          f"{h1.address}:{CLUSTER_PORT}").stderr


def test_info_swarm_section_on_the_manager(pair: dict[str, Any]) -> None:
    h1, h2 = pair["h1"], pair["h2"]
    s = swarm_info(h1)
    assert NODE_ID.match(s["NodeID"])
    assert s["NodeAddr"] == h1.address
    assert s["LocalNodeState"] == "active"
    assert s["ControlAvailable"] is True
    assert s["Error"] == ""
    assert s["Managers"] == 1
    assert s["Nodes"] == 2
    assert s["RemoteManagers"] == [{"NodeID": s["NodeID"],
                                    "Addr": f"{h1.address}:{CLUSTER_PORT}"}]
    cl = s["Cluster"]
    assert NODE_ID.match(cl["ID"])
    assert cl["Spec"]["Name"] == "default"
    assert cl["Spec"]["Labels"] == {}
    assert cl["Spec"]["Dispatcher"]["HeartbeatPeriod"] == 5_000_000_000
    assert cl["Spec"]["CAConfig"]["NodeCertExpiry"] == 7_776_000_000_000_000
    assert cl["DataPathPort"] == 4789
    assert cl["SubnetSize"] == 24
    assert "JoinTokens" not in cl
    # the same node id on both sides of the node list
    rows = nodes_by_hostname(h1)
    assert rows["h1"]["ID"] == s["NodeID"]
    assert rows["h2"]["ID"] == swarm_info(h2)["NodeID"]

    text = ok(h1, "info")
    section = text[text.index(" Swarm: active"):]
    for line in (f"  NodeID: {s['NodeID']}", "  Is Manager: true",
                 f"  ClusterID: {cl['ID']}", "  Managers: 1", "  Nodes: 2",
                 "  Data Path Port: 4789", "   Task History Retention Limit: 5",
                 "   Snapshot Interval: 10000", "   Heartbeat Tick: 1",
                 "   Election Tick: 10", "   Heartbeat Period: 5 seconds",
                 "   Expiry Duration: 3 months", "  Autolock Managers: false",
                 "  Root Rotation In Progress: false", f"  Node Address: {h1.address}",
                 f"   {h1.address}:{CLUSTER_PORT}"):
        assert f"\n{line}\n" in section, (line, section)


def test_info_swarm_section_on_a_worker(pair: dict[str, Any]) -> None:
    h1, h2 = pair["h1"], pair["h2"]
    s = swarm_info(h2)
    assert NODE_ID.match(s["NodeID"])
    assert s["NodeAddr"] == h2.address
    assert s["LocalNodeState"] == "active"
    assert s["ControlAvailable"] is False
    assert [m["Addr"] for m in s["RemoteManagers"]] == [f"{h1.address}:{CLUSTER_PORT}"]
    assert s["RemoteManagers"][0]["NodeID"] == swarm_info(h1)["NodeID"]
    # Managers/Nodes/Cluster are a manager's only
    assert not s.get("Managers") and not s.get("Nodes") and not s.get("Cluster")
    text = ok(h2, "info")
    assert "\n  Is Manager: false\n" in text
    assert f"\n  Node Address: {h2.address}\n" in text
    # a worker cannot read cluster state
    assert WORKER_NOT_MANAGER in fails(h2, "node", "ls").stderr


def test_join_token_quiet_and_rotate(pair: dict[str, Any]) -> None:
    h1 = pair["h1"]
    worker = join_token(h1, "worker")
    manager = join_token(h1, "manager")
    token = re.compile(r"^SWMTKN-1-[0-9a-z]{50}-[0-9a-z]{25}$")
    assert token.match(worker) and token.match(manager), (worker, manager)
    # one CA: the digest part is shared, the secrets differ
    assert worker.split("-")[2] == manager.split("-")[2]
    assert worker != manager
    full = ok(h1, "swarm", "join-token", "manager")
    assert "To add a manager to this swarm, run the following command:" in full
    assert f"docker swarm join --token {manager} {h1.address}:{CLUSTER_PORT}" in full

    rotated = ok(h1, "swarm", "join-token", "--rotate", "worker")
    assert "Successfully rotated worker join token." in rotated
    new_worker = join_token(h1, "worker")
    assert new_worker != worker
    assert new_worker.split("-")[2] == worker.split("-")[2]
    assert f"docker swarm join --token {new_worker} " in rotated
    assert join_token(h1, "manager") == manager  # the other role's token is left alone
    assert ok(h1, "swarm", "join-token", "-q", "--rotate", "manager").strip() != manager


def test_swarm_update_changes_the_spec(pair: dict[str, Any]) -> None:
    h1 = pair["h1"]
    before = swarm_info(h1)["Cluster"]
    out = ok(h1, "swarm", "update", "--dispatcher-heartbeat", "2s",
             "--task-history-limit", "7")
    assert out.strip() == "Swarm updated."
    after = swarm_info(h1)["Cluster"]
    assert after["Spec"]["Dispatcher"]["HeartbeatPeriod"] == 2_000_000_000
    assert after["Spec"]["Orchestration"]["TaskHistoryRetentionLimit"] == 7
    assert after["Version"]["Index"] > before["Version"]["Index"]
    # what was not named keeps its value
    assert after["Spec"]["CAConfig"] == before["Spec"]["CAConfig"]
    assert "   Heartbeat Period: 2 seconds\n" in ok(h1, "info")
    ok(h1, "swarm", "update", "--dispatcher-heartbeat", "5s", "--task-history-limit", "5")


def test_autolock_and_unlock_key(pair: dict[str, Any]) -> None:
    h1 = pair["h1"]
    out = ok(h1, "swarm", "update", "--autolock=true")
    assert out.startswith("Swarm updated.\n"), out
    key = UNLOCK_KEY.search(out)
    assert key, out
    assert "docker swarm unlock" in out
    assert swarm_info(h1)["Cluster"]["Spec"]["EncryptionConfig"]["AutoLockManagers"] is True
    assert ok(h1, "swarm", "unlock-key", "-q").strip() == key.group(0)
    full = ok(h1, "swarm", "unlock-key")
    assert key.group(0) in full
    rotated = ok(h1, "swarm", "unlock-key", "--rotate")
    assert "Successfully rotated manager unlock key." in rotated
    new_key = ok(h1, "swarm", "unlock-key", "-q").strip()
    assert UNLOCK_KEY.fullmatch(new_key) and new_key != key.group(0)
    assert new_key in rotated
    # not locked: unlock is refused
    r = h1.docker("swarm", "unlock", input=new_key + "\n")
    assert r.returncode != 0
    assert "swarm is not locked" in r.stderr
    ok(h1, "swarm", "update", "--autolock=false")
    assert swarm_info(h1)["Cluster"]["Spec"]["EncryptionConfig"]["AutoLockManagers"] is False
    assert "no unlock key is set" in fails(h1, "swarm", "unlock-key").stderr


def test_leave_texts(pair: dict[str, Any]) -> None:
    """Last in the module: h2 leaves, then the sole manager h1 (only with --force)."""
    h1, h2 = pair["h1"], pair["h2"]
    assert ok(h2, "swarm", "leave").strip() == NODE_LEFT
    assert swarm_info(h2)["LocalNodeState"] == "inactive"
    assert NOT_IN_SWARM_LEAVE in fails(h2, "swarm", "leave").stderr
    assert NOT_A_MANAGER_INACTIVE in fails(h2, "node", "ls").stderr
    wait_for(lambda: node_status(h1, "h2") == "Down", 60, "h2 Down on h1 after it left")

    r = fails(h1, "swarm", "leave")
    assert MANAGER_LEAVE_WARNING in r.stderr and SOLE_MANAGER_LEAVE in r.stderr, r.stderr
    assert swarm_info(h1)["LocalNodeState"] == "active"  # refused: still in
    assert ok(h1, "swarm", "leave", "--force").strip() == NODE_LEFT
    s = swarm_info(h1)
    assert s["LocalNodeState"] == "inactive"
    assert s["NodeID"] == ""
    assert NOT_A_MANAGER_INACTIVE in fails(h1, "node", "ls").stderr
    # a node that left can start a new swarm of its own
    assert INIT_RE.search(init(h1))
    assert [r["Hostname"] for r in nodes(h1)] == ["h1"]


# -- a restarted manager of an autolocked swarm stays locked ------------------------------------

LOCKED = ('Swarm is encrypted and needs to be unlocked before it can be used. Please use '
          '"docker swarm unlock" to unlock it.')


@pytest.mark.slow
def test_autolocked_manager_restarts_locked(cluster: ClusterFactory) -> None:
    c = cluster(1, client=False)
    (h1,) = c.hosts
    out = init(h1, "--autolock")
    key = UNLOCK_KEY.search(out)
    assert key, out
    h1.restart()
    s = wait_for(lambda: (i := swarm_info(h1))["LocalNodeState"] == "locked" and i,
                 30, "locked after the restart")
    assert s["ControlAvailable"] is False
    assert LOCKED in fails(h1, "node", "ls").stderr
    r = h1.docker("swarm", "unlock", input="SWMKEY-1-" + "A" * 43 + "\n")
    assert r.returncode != 0
    assert "invalid key" in r.stderr, r.stderr
    r = h1.docker("swarm", "unlock", input=key.group(0) + "\n")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: swarm_info(h1)["LocalNodeState"] == "active", 30, "active after unlock")
    rows = wait_for(lambda: nodes(h1), 30, "node ls after unlock")
    assert [(r["Hostname"], r["ManagerStatus"]) for r in rows] == [("h1", "Leader")]


def test_manager_join_and_the_quorum_warning_on_leave(cluster: ClusterFactory) -> None:
    c = cluster(2, client=False)
    h1, h2 = c.hosts
    init(h1)
    out = join(h2, join_token(h1, "manager"), h1)
    assert out.strip() == "This node joined a swarm as a manager."
    s = swarm_info(h2)
    assert s["ControlAvailable"] is True
    assert s["Managers"] == 2 and s["Nodes"] == 2
    assert sorted(m["Addr"] for m in s["RemoteManagers"]) == sorted(
        f"{h.address}:{CLUSTER_PORT}" for h in (h1, h2))
    wait_for(lambda: nodes_by_hostname(h1)["h2"]["ManagerStatus"] == "Reachable", 30,
             "h2 Reachable")
    assert nodes_by_hostname(h2)["h1"]["ManagerStatus"] == "Leader"
    # one of two managers leaving loses the quorum: refused with the reason
    r = fails(h2, "swarm", "leave")
    for part in (MANAGER_LEAVE_WARNING, "Removing this node leaves 1 managers out of 2.",
                 "Use `--force` to suppress this message."):
        assert part in r.stderr, r.stderr
    assert swarm_info(h2)["LocalNodeState"] == "active"
    # demoted first, it leaves as a worker
    assert "Manager h2 demoted in the swarm." in ok(h1, "node", "demote", "h2")
    wait_for(lambda: swarm_info(h2)["ControlAvailable"] is False, 30, "h2 a worker")
    assert ok(h2, "swarm", "leave").strip() == NODE_LEFT
    wait_for(lambda: node_status(h1, "h2") == "Down", 30, "h2 Down after it left")
    assert nodes_by_hostname(h1)["h1"]["ManagerStatus"] == "Leader"
