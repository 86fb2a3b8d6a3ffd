"""engine.swarm.store against a real etcd 3.4 member in the test's own namespace: the
document's Version is the key's mod_revision, a stale version is dockerd's 500 text, and
internal writers retry from a fresh read instead of overwriting.

wharfd-only (dockerd keeps its swarm store in raft inside the daemon).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from api.errors import status_for
from engine.errors import Conflict
from engine.swarm.etcd import EtcdClient
from engine.swarm.objects import Node, NodeSpec
from engine.swarm.store import OUT_OF_SEQUENCE, SwarmStore, UpdateOutOfSequence
from tests.harness.etcd import EtcdMember, thread_in_netns
from tests.harness.netns import NetNS

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a network namespace"),
    pytest.mark.skipif(not os.path.exists("/usr/bin/etcd"), reason="etcd-server not installed"),
]


@pytest.fixture(scope="module")
def member() -> Iterator[EtcdMember]:
    with NetNS() as netns, EtcdMember(netns) as etcd:
        yield etcd


@pytest.fixture
def inside(member: EtcdMember) -> Iterator[EtcdMember]:
    """Run the test (its event loop's sockets) inside the member's namespace."""
    with thread_in_netns(member.netns):
        yield member


@pytest_asyncio.fixture
async def store(inside: EtcdMember, request: pytest.FixtureRequest) -> AsyncIterator[SwarmStore]:
    async with EtcdClient([inside.client_url]) as client:
        await client.delete_prefix(f"/t/{request.node.name}/")
        yield SwarmStore(client)


def _node(node_id: str, labels: dict[str, str] | None = None) -> Node:
    return Node(ID=node_id, Spec=NodeSpec(Labels=labels or {}, Role="worker",
                                          Availability="active"))


@pytest.mark.asyncio
async def test_version_is_the_keys_mod_revision(
    store: SwarmStore, request: pytest.FixtureRequest
) -> None:
    key = f"/t/{request.node.name}/n1"
    revision = await store.create(key, _node("n1"))
    stored = await store.read(key, Node)
    assert stored is not None
    assert stored.version == revision and stored.doc.Version.Index == revision
    # the stored JSON carries no Version of its own: the key's revision is the one truth
    raw = await store.client.get(key)
    assert raw is not None and b'"Version"' not in raw.value
    # an unrelated write elsewhere moves the store-wide counter, not this document
    await store.client.put(f"/t/{request.node.name}/other", b"x")
    again = await store.read(key, Node)
    assert again is not None and again.version == revision
    with pytest.raises(Conflict):
        await store.create(key, _node("n1"))


@pytest.mark.asyncio
async def test_a_stale_version_is_dockerds_500(
    store: SwarmStore, request: pytest.FixtureRequest
) -> None:
    key = f"/t/{request.node.name}/n1"
    first = await store.create(key, _node("n1"))
    second = await store.replace(key, _node("n1", {"a": "1"}), first)
    assert second > first
    with pytest.raises(UpdateOutOfSequence) as stale:
        await store.replace(key, _node("n1", {"b": "2"}), first)
    assert str(stale.value) == OUT_OF_SEQUENCE
    assert OUT_OF_SEQUENCE == "rpc error: code = Unknown desc = update out of sequence"
    assert status_for(stale.value) == 500
    current = await store.read(key, Node)
    assert current is not None and current.doc.Spec.Labels == {"a": "1"}


@pytest.mark.asyncio
async def test_internal_writers_retry_from_a_fresh_read(
    store: SwarmStore, request: pytest.FixtureRequest
) -> None:
    key = f"/t/{request.node.name}/n1"
    await store.create(key, _node("n1"))

    async def add_label(name: str) -> None:
        def change(node: Node) -> Node:
            updated = node.model_copy(deep=True)
            updated.Spec.Labels[name] = "yes"
            return updated

        await store.modify(key, Node, change)

    await asyncio.gather(*(add_label(f"l{i}") for i in range(8)))
    final = await store.read(key, Node)
    assert final is not None
    assert final.doc.Spec.Labels == {f"l{i}": "yes" for i in range(8)}  # none lost
