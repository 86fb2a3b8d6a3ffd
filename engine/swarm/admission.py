"""A manager's side of the node-to-node calls: admitting a joiner and issuing certificates.

:class:`Admission` is what the peers server (engine.swarm.peers) calls on a manager. A
join checks the token's secret against ``cluster-secrets``, signs the joiner's CSR (node
ID as CN, role as OU, its advertise address as IP SAN), creates its node document and,
for a manager, adds its etcd member as a learner. A certificate request gets a new
certificate for the role the caller's node document says now (renewal, promotion,
demotion). Also the small rules the cluster code shares with it: dockerd's no-quorum
text, etcd's passing refusals of member changes, the secrets document.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from secrets import token_bytes
from typing import TypeVar

from pydantic import BaseModel

from engine.errors import Conflict, InvalidParameter, Unavailable
from engine.ids import new_swarm_id
from engine.swarm import peers
from engine.swarm.ca import (
    NodeIdentity,
    NodeRole,
    RootCA,
    parse_join_token,
    role_for_join_token,
)
from engine.swarm.etcd import EtcdClient, initial_cluster
from engine.swarm.member import client_url_for, peer_url_for
from engine.swarm.objects import (
    AVAILABILITIES,
    MANAGER_NOT_READY,
    NO_LEADER,
    Cluster,
    Node,
    SwarmSpec,
    effective_node_cert_expiry,
    timestamp_now,
)
from engine.swarm.store import CLUSTER_KEY, NODES_PREFIX, SECRETS_KEY, SwarmStore, node_key

log = logging.getLogger(__name__)

T = TypeVar("T")

MEMBER_CHANGE_PATIENCE = 15.0
# etcd refuses these member changes for a moment only (see while_etcd_is_busy).
_PASSING_REFUSALS = ("unhealthy cluster", "too many learner members")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ClusterSecrets(BaseModel):
    """``cluster-secrets``: what only managers should read (see docs/swarm.md)."""

    worker_token: str
    manager_token: str
    ca_key: str
    unlock_key: str = ""


@contextlib.asynccontextmanager
async def quorum() -> AsyncIterator[None]:
    """etcd not answering at all means no quorum among the managers: dockerd's text."""
    try:
        yield
    except Unavailable as err:
        if str(err).startswith("etcd"):
            raise Unavailable(NO_LEADER) from err
        raise


async def while_etcd_is_busy(call: Callable[[], Awaitable[T]]) -> T:
    """etcd refuses a membership change until every member has been connected for its
    health interval (5 s), and takes one learner at a time: a change right after another
    (two managers joining or promoted together) waits here."""
    deadline = time.monotonic() + MEMBER_CHANGE_PATIENCE
    while True:
        try:
            return await call()
        except (Unavailable, Conflict) as err:
            passing = any(text in str(err) for text in _PASSING_REFUSALS)
            if not passing or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


def checked_availability(value: str) -> str:
    availability = (value or "active").lower()
    if availability not in AVAILABILITIES:
        raise InvalidParameter(f"invalid Availability: {value!r}")
    return availability


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def cert_expiry(spec: SwarmSpec) -> timedelta:
    return timedelta(microseconds=effective_node_cert_expiry(spec) // 1000)


def new_unlock_key() -> str:
    """``SWMKEY-1-`` and the key in unpadded standard base64 (swarm-api-notes §3)."""
    return "SWMKEY-1-" + base64.b64encode(token_bytes(32)).decode().rstrip("=")


async def add_learner(
    client: EtcdClient, node_id: str, address: IPAddress, cluster_port: int
) -> tuple[str, int]:
    """Add a manager's member as a *learner* (it does not count for the quorum until it
    has caught up and promoted itself: a joiner that never starts cannot take the quorum
    away); returns its ``--initial-cluster`` and member ID."""
    member_id, members = await while_etcd_is_busy(
        lambda: client.member_add([peer_url_for(address, cluster_port)], learner=True))
    return initial_cluster(members, member_id, node_id), member_id


async def manager_endpoints(
    client: EtcdClient, store: SwarmStore
) -> tuple[list[str], list[str]]:
    """The managers' etcd client URLs and cluster API addresses, as of now."""
    members = await client.member_list()
    endpoints = [url for m in members for url in m.client_urls]
    nodes = await store.read_prefix(NODES_PREFIX, Node)
    addrs = [n.doc.ManagerStatus.Addr for n in nodes
             if n.doc.ManagerStatus is not None and n.doc.ManagerStatus.Addr]
    return endpoints, addrs


class Admission:
    """The peers server's handlers on one manager (``peers.PeerHandlers``)."""

    def __init__(
        self,
        client: EtcdClient,
        store: SwarmStore,
        root: RootCA,
        cluster: str,
        ready: asyncio.Event,
    ) -> None:
        self._client, self._store, self._root = client, store, root
        self._cluster, self._ready = cluster, ready

    def root_bundle(self) -> bytes:
        return self._root.bundle_pem

    def cluster_id(self) -> str:
        return self._cluster

    def _require_ready(self) -> None:
        if not self._ready.is_set():
            raise Unavailable(MANAGER_NOT_READY)

    async def _read_cluster(self) -> tuple[ClusterSecrets, Cluster]:
        async with quorum():
            secrets = await self._store.read_required(SECRETS_KEY, ClusterSecrets,
                                                      "the swarm has no secrets")
            cluster = await self._store.read_required(CLUSTER_KEY, Cluster,
                                                      "the swarm has no cluster")
        return secrets.doc, cluster.doc

    async def handle_join(self, request: peers.JoinPeerRequest) -> peers.JoinPeerAnswer:
        self._require_ready()
        secrets, cluster = await self._read_cluster()
        role = role_for_join_token(request.token, parse_join_token(secrets.worker_token),
                                   parse_join_token(secrets.manager_token))
        if not 0 < request.listen_port < 65533:  # its etcd ports are +2 and +3
            raise InvalidParameter(f"invalid cluster port {request.listen_port}")
        try:
            address = ip(request.advertise_addr)
        except ValueError:
            raise InvalidParameter(
                f"invalid advertise address {request.advertise_addr!r}") from None
        root = RootCA.from_pem(self._root.bundle_pem, secrets.ca_key.encode())
        node_id = new_swarm_id()
        cert = await asyncio.to_thread(
            root.sign_node_csr, request.csr.encode(), node_id, role, self._cluster,
            cert_expiry(cluster.Spec), None, [address])
        manager_addr = f"{request.advertise_addr}:{request.listen_port}"
        node = _joining_node(node_id, role, request, manager_addr)
        async with quorum():
            # Read before the member is added: the answer lists the managers as they are.
            endpoints, manager_addrs = await manager_endpoints(self._client, self._store)
            await self._store.create(node_key(node_id), node)
            initial: str | None = None
            member_id: int | None = None
            if role is NodeRole.MANAGER:
                try:
                    initial, member_id = await add_learner(
                        self._client, node_id, address, request.listen_port)
                except BaseException:
                    await self._store.delete(node_key(node_id))
                    raise
        if role is NodeRole.MANAGER:
            endpoints.append(client_url_for(address, request.listen_port))
            manager_addrs.append(manager_addr)
        log.info("node %s joined as %s from %s", node_id, role.value, manager_addr)
        return peers.JoinPeerAnswer(
            node_id=node_id, cluster_id=self._cluster, role=role.value,
            ca_bundle=self._root.bundle_pem.decode(), certificate=cert.decode(),
            ca_key=secrets.ca_key if role is NodeRole.MANAGER else None,
            etcd_endpoints=endpoints, manager_addrs=manager_addrs,
            initial_cluster=initial, member_name=node_id if initial else None,
            member_id=member_id,
        )

    async def handle_certificate(
        self, caller: NodeIdentity, request: peers.CertificateRequest
    ) -> peers.CertificateAnswer:
        """A node's certificate for its role as its document says now (renewal, role
        change); a manager's answer carries the CA key."""
        self._require_ready()
        async with quorum():
            stored = await self._store.read_required(node_key(caller.node_id), Node,
                                                     f"node {caller.node_id} not found")
        secrets, cluster = await self._read_cluster()
        role = NodeRole(stored.doc.Spec.Role)
        root = RootCA.from_pem(self._root.bundle_pem, secrets.ca_key.encode())
        cert = await asyncio.to_thread(
            root.sign_node_csr, request.csr.encode(), caller.node_id, role, self._cluster,
            cert_expiry(cluster.Spec), None, [ip(stored.doc.Status.Addr)])
        return peers.CertificateAnswer(
            role=role.value, ca_bundle=self._root.bundle_pem.decode(),
            certificate=cert.decode(),
            ca_key=secrets.ca_key if role is NodeRole.MANAGER else None,
        )


def _joining_node(
    node_id: str, role: NodeRole, request: peers.JoinPeerRequest, manager_addr: str
) -> Node:
    """The joiner's document: ``unknown`` until the leader sees its heartbeat."""
    now = timestamp_now()
    return Node.model_validate({
        "ID": node_id, "CreatedAt": now, "UpdatedAt": now,
        "Spec": {"Labels": {}, "Role": role.value,
                 "Availability": checked_availability(request.availability)},
        "Description": request.description,
        "Status": {"State": "unknown", "Addr": request.advertise_addr},
        "ManagerStatus": {"Addr": manager_addr} if role is NodeRole.MANAGER else None,
    })
