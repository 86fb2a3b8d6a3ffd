"""Pure functions over the swarm's nodes: ``GET /nodes`` filters, lookup by reference,
and the checks of ``node update`` and ``node rm``.

They follow dockerd and swarmkit (``daemon/cluster/filters.go``, ``helpers.go``,
``controlapi/node.go``):

* a node's *name* is its ``Description.Hostname``: the ``name`` filter and lookups by
  name never read ``Spec.Name`` (swarmkit indexes nodes by hostname only);
* ``name`` and ``id`` filters are prefix matches, ``label`` matches the engine labels
  (``Description.Engine.Labels``), ``node.label`` the node's own ``Spec.Labels``;
  ``key`` alone asks for the key with any value;
* a reference is an exact ID, then an exact hostname, then a unique ID prefix.

Errors born in swarmkit keep gRPC's ``rpc error: code = … desc = `` prefix, as dockerd
passes them on (swarm-api-notes §2).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence

from engine.errors import InvalidParameter, NotFound
from engine.swarm.objects import AVAILABILITIES, ROLES, Node, NodeSpec

NODE_FILTERS = frozenset({"id", "label", "membership", "name", "node.label", "role"})
MEMBERSHIPS = ("accepted", "pending")
# Every node in a wharfd swarm was admitted with a valid token: none is ever pending.
MEMBERSHIP_OF_EVERY_NODE = "accepted"

_FAILED_PRECONDITION = "rpc error: code = FailedPrecondition desc = "


# --- filters ----------------------------------------------------------------------------


def check_node_filters(filters: Mapping[str, Sequence[str]]) -> None:
    """Unknown keys and values of ``role``/``membership`` that name nothing are refused
    (moby's filters.Validate and newListNodesFilters; "" is ignored there too)."""
    for key in filters:
        if key not in NODE_FILTERS:
            raise InvalidParameter(f"invalid filter '{key}'")
    for value in filters.get("role", ()):
        if value and value.lower() not in ROLES:
            raise InvalidParameter(f"Invalid role filter: '{value}'")
    for value in filters.get("membership", ()):
        if value and value.lower() not in MEMBERSHIPS:
            raise InvalidParameter(f"Invalid membership filter: '{value}'")


def filter_nodes(nodes: Iterable[Node], filters: Mapping[str, Sequence[str]]) -> list[Node]:
    """The nodes matching every filter (within one filter, any of its values), in order."""
    check_node_filters(filters)
    tests = _node_tests(filters)
    return [node for node in nodes if all(test(node) for test in tests)]


def _node_tests(filters: Mapping[str, Sequence[str]]) -> list[Callable[[Node], bool]]:
    tests: list[Callable[[Node], bool]] = []
    names = list(filters.get("name", ()))
    if names:
        tests.append(lambda node: _has_prefix(node.Description.Hostname, names))
    ids = list(filters.get("id", ()))
    if ids:
        tests.append(lambda node: _has_prefix(node.ID, ids))
    engine_labels = _labels_wanted(filters.get("label", ()))
    if engine_labels:
        tests.append(lambda node: _labels_match(node.Description.Engine.Labels, engine_labels))
    node_labels = _labels_wanted(filters.get("node.label", ()))
    if node_labels:
        tests.append(lambda node: _labels_match(node.Spec.Labels, node_labels))
    roles = {value.lower() for value in filters.get("role", ()) if value}
    if roles:
        tests.append(lambda node: node.Spec.Role in roles)
    memberships = {value.lower() for value in filters.get("membership", ()) if value}
    if memberships:
        tests.append(lambda _node: MEMBERSHIP_OF_EVERY_NODE in memberships)
    return tests


def _has_prefix(value: str, prefixes: Sequence[str]) -> bool:
    return any(value.startswith(prefix) for prefix in prefixes)


def _labels_wanted(values: Iterable[str]) -> dict[str, str]:
    """``key=value`` or ``key`` (any value) filter entries as a map, value "" = any."""
    wanted: dict[str, str] = {}
    for entry in values:
        key, _, value = entry.partition("=")
        wanted[key] = value
    return wanted


def _labels_match(labels: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return all(key in labels and (not value or labels[key] == value)
               for key, value in wanted.items())


# --- lookup -----------------------------------------------------------------------------


def node_not_found(ref: str) -> NotFound:
    return NotFound(f"node {ref} not found")


def find_node(nodes: Iterable[Node], ref: str) -> Node:
    """The node ``ref`` names: exact ID, then exact hostname, then unique ID prefix.
    Several nodes with that hostname, or several IDs with that prefix, are ambiguous
    (400); none is 404 ``node <ref> not found``."""
    candidates = list(nodes)
    if not ref:
        raise node_not_found(ref)
    for node in candidates:
        if node.ID == ref:
            return node
    matches = [node for node in candidates if node.Description.Hostname == ref]
    if not matches:
        matches = [node for node in candidates if node.ID.startswith(ref)]
    if not matches:
        raise node_not_found(ref)
    if len(matches) > 1:
        raise InvalidParameter(f"node {ref} is ambiguous ({len(matches)} matches found)")
    return matches[0]


# --- node update and removal --------------------------------------------------------------


def checked_node_spec(given: NodeSpec) -> NodeSpec:
    """The spec ``node update`` stores: Role and Availability in lower case (any case is
    accepted, an empty or unknown one is refused as dockerd refuses it); Name and Labels
    kept exactly, so the spec reads back as it was sent (docker-py compares it)."""
    role = given.Role.lower()
    if role not in ROLES:
        raise InvalidParameter(f"invalid Role: {go_quote(given.Role)}")
    availability = given.Availability.lower()
    if availability not in AVAILABILITIES:
        raise InvalidParameter(f"invalid Availability: {go_quote(given.Availability)}")
    return NodeSpec(Name=given.Name, Labels=dict(given.Labels), Role=role,
                    Availability=availability)


def go_quote(text: str) -> str:
    """Go's %q for the texts that reach it here (JSON's escapes are the same for them)."""
    return json.dumps(text, ensure_ascii=False)


def is_manager(node: Node) -> bool:
    return node.Spec.Role == "manager"


def check_demotion(nodes: Sequence[Node], node: Node, new_spec: NodeSpec) -> None:
    """A manager set to ``worker`` must leave a manager behind and must not cost the
    managers their quorum (swarmkit's demotion checks, over the nodes as read now)."""
    if not (is_manager(node) and new_spec.Role == "worker"):
        return
    managers = [other for other in nodes if is_manager(other)]
    if len(managers) == 1 and managers[0].ID == node.ID:
        raise InvalidParameter(
            _FAILED_PRECONDITION + "attempting to demote the last manager of the swarm")
    if not can_remove_manager(managers, node.ID):
        raise InvalidParameter(
            _FAILED_PRECONDITION
            + "can't remove member from the raft: this would result in a loss of quorum")


def can_remove_manager(managers: Sequence[Node], node_id: str) -> bool:
    """Whether the managers other than ``node_id`` that are reachable still make a
    quorum of the cluster without it."""
    remaining = [m for m in managers if m.ID != node_id]
    reachable = sum(1 for m in remaining if m.ManagerStatus is not None
                    and m.ManagerStatus.Reachability == "reachable")
    quorum = (len(managers) - 1) // 2 + 1
    return reachable >= quorum


def check_removal(node: Node, force: bool) -> None:
    """``node rm``: a manager must be demoted first (even with force); a ready node
    is removed only with force."""
    if is_manager(node) or node.ManagerStatus is not None:
        raise InvalidParameter(
            _FAILED_PRECONDITION + f"node {node.ID} is a cluster manager and is a member of "
            "the raft cluster. It must be demoted to worker before removal")
    if not force and node.Status.State == "ready":
        raise InvalidParameter(
            _FAILED_PRECONDITION + f"node {node.ID} is not down and can't be removed")
