"""Node liveness and leadership, all on etcd leases.

- :class:`Heartbeat` (every node): ``alive/<node id>`` on a lease of 3 times the swarm's
  ``Dispatcher.HeartbeatPeriod``, renewed every period. A node whose daemon dies stops
  renewing, etcd drops the key when the lease lapses.
- :class:`Election` (every manager): create-if-absent of ``leader`` on a short lease of
  its own; the holder runs the leader's work until its lease is lost, the others watch the
  key and try again when it goes.
- :func:`mark_nodes_from_heartbeats` (the leader's work in part 1): every node document's
  ``Status.State`` follows its ``alive/`` key, ``ready`` while it is there and ``down``
  when it goes; each change is a compare-and-swap write, so Version bumps as in swarmkit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Coroutine
from typing import Any

from engine.errors import NotFound, Unavailable
from engine.swarm.etcd import EtcdClient, OutOfSequence, WatchCompacted
from engine.swarm.objects import SECOND, Cluster, Node, effective_heartbeat_period, timestamp_now
from engine.swarm.store import (
    ALIVE_PREFIX,
    CLUSTER_KEY,
    LEADER_KEY,
    NODES_PREFIX,
    SwarmStore,
    alive_key,
    node_id_of_key,
    node_key,
)

log = logging.getLogger(__name__)

# A node is down within this many heartbeat periods (swarmkit's grace multiplier). Its
# lease is a second shorter than that, since etcd notices a lapsed lease up to half a
# second late and the leader still has to write the node down; the lease is renewed
# twice a period, so one late renewal does not take a live node down. etcd refuses
# leases shorter than its own minimum (about 2 s).
HEARTBEAT_GRACE = 3
RENEWALS_PER_PERIOD = 2
MIN_LEASE_TTL = 2
# The leader's claim: as short as etcd allows, so that a dead leader's host is replaced
# quickly (etcd also extends every lease by its TTL when its own leader changes).
LEADER_LEASE_TTL = 2
RETRY_DELAY = 0.5
DOWN_MESSAGE = "heartbeat failure"


class Heartbeat:
    """Keeps ``alive/<node id>`` on a lease; ``ok`` says etcd answered the last beat."""

    def __init__(self, client: EtcdClient, store: SwarmStore, node_id: str) -> None:
        self._client, self._store, self._node_id = client, store, node_id
        self.ok = asyncio.Event()
        self.period = 5.0
        self._lease = 0
        self._ttl = 0

    async def run(self) -> None:
        while True:
            try:
                await self._beat()
                self.ok.set()
            except (Unavailable, NotFound) as err:
                self.ok.clear()
                log.warning("swarm heartbeat failed: %s", err)
            renewal = self.period / RENEWALS_PER_PERIOD
            await asyncio.sleep(renewal if self.ok.is_set() else min(renewal, 1.0))

    async def _beat(self) -> None:
        cluster = await self._store.read(CLUSTER_KEY, Cluster)
        if cluster is not None:
            self.period = effective_heartbeat_period(cluster.doc.Spec) / SECOND
        ttl = max(math.ceil(HEARTBEAT_GRACE * self.period) - 1, MIN_LEASE_TTL)
        if self._lease and ttl == self._ttl:
            try:
                await self._client.keepalive_once(self._lease)
                return
            except NotFound:
                self._lease = 0  # lapsed (etcd was away too long): take a new one now
        old = self._lease
        lease = await self._client.grant_lease(ttl)
        await self._client.put(alive_key(self._node_id), b"", lease)
        self._lease, self._ttl = lease, ttl
        if old:
            await self._client.revoke_lease(old)  # no key is on it any more

    async def stop(self, revoke: bool) -> None:
        """``revoke``: the node leaves, its key goes at once (it is marked down)."""
        if revoke and self._lease:
            with contextlib.suppress(Unavailable):
                await self._client.revoke_lease(self._lease)
        self._lease = 0


class Election:
    """Contest ``leader``; while held, run ``work`` (restarted if it ever returns)."""

    def __init__(
        self,
        client: EtcdClient,
        node_id: str,
        work: Callable[[], Coroutine[Any, Any, None]],
    ) -> None:
        self._client, self._node_id, self._work = client, node_id, work
        self.is_leader = False
        self._lease = 0

    async def run(self) -> None:
        await self._drop_stale_claim()
        while True:
            try:
                await self._contest_once()
            except (Unavailable, NotFound) as err:
                log.info("swarm leader election: %s", err)
                await asyncio.sleep(RETRY_DELAY)

    async def _drop_stale_claim(self) -> None:
        """A claim in our name is our previous run's (this daemon restarted): release it
        instead of waiting for its lease to lapse."""
        with contextlib.suppress(Unavailable, OutOfSequence):
            kv = await self._client.get(LEADER_KEY)
            if kv is not None and kv.value.decode() == self._node_id:
                await self._client.delete_if_mod_revision(LEADER_KEY, kv.mod_revision)

    async def _contest_once(self) -> None:
        lease = await self._client.grant_lease(LEADER_LEASE_TTL)
        try:
            await self._client.put_if_mod_revision(
                LEADER_KEY, self._node_id.encode(), 0, lease
            )
        except OutOfSequence:
            await self._client.revoke_lease(lease)
            await self._wait_for_vacancy()
            return
        keeper = self._client.keep_alive(lease, LEADER_LEASE_TTL)
        self._lease = lease
        self.is_leader = True
        log.info("this node is the swarm leader")
        work = asyncio.create_task(self._work(), name="swarm-leader-work")
        lost = asyncio.create_task(keeper.lost.wait())
        try:
            await asyncio.wait({work, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.is_leader = False
            self._lease = 0
            for task in (work, lost):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await keeper.close()
        log.info("this node is no longer the swarm leader")

    async def _wait_for_vacancy(self) -> None:
        current = await self._client.range_prefix(LEADER_KEY)
        if not any(kv.key == LEADER_KEY for kv in current.kvs):
            return
        async for event in self._client.watch_prefix(LEADER_KEY, current.revision + 1):
            if event.kv.key == LEADER_KEY and event.type == "DELETE":
                return

    async def resign(self) -> None:
        """Give the lead up at once (a clean shutdown or leave): others need not wait."""
        if self._lease:
            with contextlib.suppress(Unavailable):
                await self._client.revoke_lease(self._lease)


async def current_leader(client: EtcdClient) -> str:
    kv = await client.get(LEADER_KEY)
    return kv.value.decode() if kv is not None else ""


async def set_node_state(store: SwarmStore, node_id: str, state: str) -> None:
    def change(node: Node) -> Node | None:
        message = DOWN_MESSAGE if state == "down" else ""
        if node.Status.State == state and node.Status.Message == message:
            return None
        updated = node.model_copy(deep=True)
        updated.Status.State = state
        updated.Status.Message = message
        updated.UpdatedAt = timestamp_now()
        return updated

    await store.modify(node_key(node_id), Node, change)


async def mark_nodes_from_heartbeats(client: EtcdClient, store: SwarmStore) -> None:
    """The leader's liveness loop: reconcile every node once, then follow ``alive/``."""
    while True:
        try:
            alive = await client.range_prefix(ALIVE_PREFIX)
            alive_ids = {node_id_of_key(kv.key, ALIVE_PREFIX) for kv in alive.kvs}
            for stored in await store.read_prefix(NODES_PREFIX, Node):
                node_id = stored.doc.ID
                await set_node_state(store, node_id, "ready" if node_id in alive_ids else "down")
            async for event in client.watch_prefix(ALIVE_PREFIX, alive.revision + 1):
                node_id = node_id_of_key(event.kv.key, ALIVE_PREFIX)
                await set_node_state(store, node_id, "ready" if event.type == "PUT" else "down")
        except (Unavailable, WatchCompacted) as err:
            log.info("swarm liveness: %s; reading again", err)
            await asyncio.sleep(RETRY_DELAY)
