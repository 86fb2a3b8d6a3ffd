"""engine.swarm.nodes: GET /nodes filters, lookup by reference, node update/rm checks."""

from __future__ import annotations

import re
from typing import Any

import pytest

from engine.errors import InvalidParameter, NotFound
from engine.swarm import nodes as n
from engine.swarm.objects import (
    EngineDescription,
    Node,
    NodeDescription,
    NodeManagerStatus,
    NodeSpec,
    NodeStatus,
)


def exactly(category: type[Exception], text: str) -> Any:
    return pytest.raises(category, match=f"^{re.escape(text)}$")


def make_node(node_id: str, hostname: str, role: str = "worker", *, state: str = "ready",
              labels: dict[str, str] | None = None,
              engine_labels: dict[str, str] | None = None,
              reachability: str = "reachable", name: str = "") -> Node:
    manager = NodeManagerStatus(Reachability=reachability, Addr=f"{hostname}:2377")
    return Node(
        ID=node_id,
        Spec=NodeSpec(Name=name, Labels=labels or {}, Role=role, Availability="active"),
        Description=NodeDescription(
            Hostname=hostname, Engine=EngineDescription(Labels=engine_labels or {})),
        Status=NodeStatus(State=state, Addr=hostname),
        ManagerStatus=manager if role == "manager" else None,
    )


NODES = [
    make_node("aaaa1111", "h1", "manager", labels={"zone": "a"}, engine_labels={"ssd": "1"}),
    make_node("aaaa2222", "h2", labels={"zone": "b", "gpu": ""}, name="named"),
    make_node("bbbb3333", "web-1", engine_labels={"ssd": "0"}),
]


def ids(nodes: list[Node]) -> list[str]:
    return [node.ID for node in nodes]


@pytest.mark.parametrize(("filters", "expected"), [
    ({}, ["aaaa1111", "aaaa2222", "bbbb3333"]),
    ({"id": ["aaaa"]}, ["aaaa1111", "aaaa2222"]),
    ({"id": ["aaaa2", "bbbb"]}, ["aaaa2222", "bbbb3333"]),
    ({"name": ["h"]}, ["aaaa1111", "aaaa2222"]),
    ({"name": ["web"]}, ["bbbb3333"]),
    ({"name": ["named"]}, []),  # Spec.Name is not the node's name
    ({"name": ["H1"]}, []),  # case matters
    ({"name": [""]}, ["aaaa1111", "aaaa2222", "bbbb3333"]),
    ({"role": ["manager"]}, ["aaaa1111"]),
    ({"role": ["Worker"]}, ["aaaa2222", "bbbb3333"]),
    ({"role": ["worker", "manager"]}, ["aaaa1111", "aaaa2222", "bbbb3333"]),
    ({"role": [""]}, ["aaaa1111", "aaaa2222", "bbbb3333"]),
    ({"membership": ["accepted"]}, ["aaaa1111", "aaaa2222", "bbbb3333"]),
    ({"membership": ["pending"]}, []),
    ({"node.label": ["zone"]}, ["aaaa1111", "aaaa2222"]),
    ({"node.label": ["zone=b"]}, ["aaaa2222"]),
    ({"node.label": ["zone=b", "gpu"]}, ["aaaa2222"]),
    ({"node.label": ["zone=a", "gpu"]}, []),
    ({"label": ["ssd"]}, ["aaaa1111", "bbbb3333"]),
    ({"label": ["ssd=0"]}, ["bbbb3333"]),
    ({"label": ["zone"]}, []),  # engine labels, not the node's
    ({"id": ["aaaa"], "role": ["worker"]}, ["aaaa2222"]),
])
def test_filters(filters: dict[str, list[str]], expected: list[str]) -> None:
    assert ids(n.filter_nodes(NODES, filters)) == expected


@pytest.mark.parametrize(("filters", "message"), [
    ({"status": ["ready"]}, "invalid filter 'status'"),
    ({"role": ["boss"]}, "Invalid role filter: 'boss'"),
    ({"membership": ["maybe"]}, "Invalid membership filter: 'maybe'"),
])
def test_bad_filters(filters: dict[str, list[str]], message: str) -> None:
    with exactly(InvalidParameter, message):
        n.filter_nodes(NODES, filters)


@pytest.mark.parametrize(("ref", "expected"), [
    ("aaaa1111", "aaaa1111"),
    ("h2", "aaaa2222"),
    ("web-1", "bbbb3333"),
    ("bbbb", "bbbb3333"),
    ("aaaa2", "aaaa2222"),
])
def test_find_node(ref: str, expected: str) -> None:
    assert n.find_node(NODES, ref).ID == expected


def test_exact_id_beats_hostname_and_hostname_beats_prefix() -> None:
    tricky = [make_node("h2h2h2", "x"), make_node("zzzz", "h2h2h2"), make_node("h2aaa", "y")]
    assert n.find_node(tricky, "h2h2h2").ID == "h2h2h2"
    assert n.find_node([*tricky[1:], make_node("zz2", "h2")], "h2").ID == "zz2"


def test_find_node_errors() -> None:
    with exactly(NotFound, "node foobar01 not found"):
        n.find_node(NODES, "foobar01")
    with exactly(NotFound, "node named not found"):
        n.find_node(NODES, "named")
    with exactly(InvalidParameter, "node aaaa is ambiguous (2 matches found)"):
        n.find_node(NODES, "aaaa")
    twins = [make_node("a1", "same"), make_node("b2", "same")]
    with exactly(InvalidParameter, "node same is ambiguous (2 matches found)"):
        n.find_node(twins, "same")
    with exactly(NotFound, "node  not found"):
        n.find_node(NODES, "")


def test_checked_node_spec_round_trips_exactly() -> None:
    given = NodeSpec(Name="node-name", Labels={"foo": "bar"}, Role="worker",
                     Availability="drain")
    assert n.checked_node_spec(given) == given
    assert n.checked_node_spec(NodeSpec(Role="Manager", Availability="PAUSE")) == NodeSpec(
        Role="manager", Availability="pause")


@pytest.mark.parametrize(("spec", "message"), [
    (NodeSpec(Availability="active"), 'invalid Role: ""'),
    (NodeSpec(Role="boss", Availability="active"), 'invalid Role: "boss"'),
    (NodeSpec(Role="worker"), 'invalid Availability: ""'),
    (NodeSpec(Role="worker", Availability="off"), 'invalid Availability: "off"'),
])
def test_checked_node_spec_refuses(spec: NodeSpec, message: str) -> None:
    with exactly(InvalidParameter, message):
        n.checked_node_spec(spec)


def test_demoting_the_last_manager_is_refused() -> None:
    with exactly(InvalidParameter, "rpc error: code = FailedPrecondition desc = "
                 "attempting to demote the last manager of the swarm"):
        n.check_demotion(NODES, NODES[0], NodeSpec(Role="worker", Availability="active"))
    n.check_demotion(NODES, NODES[0], NodeSpec(Role="manager", Availability="drain"))
    n.check_demotion(NODES, NODES[1], NodeSpec(Role="worker", Availability="drain"))


def test_demotion_keeps_quorum() -> None:
    managers = [make_node("m1", "h1", "manager"), make_node("m2", "h2", "manager"),
                make_node("m3", "h3", "manager", reachability="unreachable")]
    with exactly(InvalidParameter, "rpc error: code = FailedPrecondition desc = can't "
                 "remove member from the raft: this would result in a loss of quorum"):
        n.check_demotion(managers, managers[0], NodeSpec(Role="worker", Availability="active"))
    # removing the unreachable one leaves two of two reachable
    n.check_demotion(managers, managers[2], NodeSpec(Role="worker", Availability="active"))
    healthy = [m.model_copy(update={"ManagerStatus": NodeManagerStatus(
        Reachability="reachable")}) for m in managers]
    n.check_demotion(healthy, healthy[0], NodeSpec(Role="worker", Availability="active"))


def test_removal_checks() -> None:
    with exactly(InvalidParameter, "rpc error: code = FailedPrecondition desc = node "
                 "aaaa1111 is a cluster manager and is a member of the raft cluster. It "
                 "must be demoted to worker before removal"):
        n.check_removal(NODES[0], force=True)
    with exactly(InvalidParameter, "rpc error: code = FailedPrecondition desc = node "
                 "aaaa2222 is not down and can't be removed"):
        n.check_removal(NODES[1], force=False)
    n.check_removal(NODES[1], force=True)
    n.check_removal(make_node("d", "down-host", state="down"), force=False)
