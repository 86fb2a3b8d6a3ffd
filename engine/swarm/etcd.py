"""The one etcd client of the engine: key/value, compare-and-swap, leases and watches.

It talks to etcd 3.4's JSON gateway (``/v3/...``, keys and values base64) over aiohttp,
which the import contract in pyproject allows here; docs/decisions.md says why this and
not a gRPC client. Every call tries the endpoints in turn on a connection failure and
sticks to the one that answered; when none answers the caller gets
:class:`engine.errors.Unavailable` (time bounds: :class:`EtcdClient`). Membership calls
(list, add, remove, promote) and per-member status serve the swarm's etcd members
(engine/swarm/member.py). Nothing here blocks the event loop (the TLS files are
read in a thread).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from engine.errors import (
    Conflict,
    EngineError,
    InvalidParameter,
    NotFound,
    SystemError_,
    Unavailable,
)

log = logging.getLogger(__name__)

# gRPC status codes the gateway puts in its error bodies.
_GRPC_NOT_FOUND = 5
_GRPC_FAILED_PRECONDITION = 9
_GRPC_UNAVAILABLE = 14


class OutOfSequence(EngineError):
    """A compare-and-swap lost: the key changed since the caller read ``expected``.

    dockerd answers a stale ``?version=`` with a 500 ``update out of sequence``; the
    caller maps this error to exactly that.
    """

    def __init__(self, key: str, expected: int) -> None:
        super().__init__("update out of sequence")
        self.key = key
        self.expected = expected


class ClusterNotReady(Unavailable):
    """etcd refused a member change for now ("unhealthy cluster"): with the change, the
    members connected to the leader for at least 5 s would not make a quorum. Right after
    a member started (or the leader did) this clears by itself within 5 s; member_add and
    member_promote wait that long before raising it."""


class MemberChangeRefused(Conflict):
    """etcd refused a member change outright (gRPC FailedPrecondition): the peer URL is
    already a member's, the removal would leave too few started members for a quorum, a
    learner is not in sync yet, ..."""


class WatchCompacted(EngineError):
    """The watch's start revision was compacted away; the caller must read afresh."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"etcd watch: revision compacted (oldest kept: {compact_revision})")
        self.compact_revision = compact_revision


@dataclass(frozen=True)
class EtcdTLS:
    """Client TLS: the CA that signed the members' certificates and our own pair."""

    ca_file: str
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True)
class RangeResult:
    """The keys read, and the store revision the read saw (for a watch to start after)."""

    kvs: list[KeyValue]
    revision: int


@dataclass(frozen=True)
class WatchEvent:
    type: Literal["PUT", "DELETE"]
    kv: KeyValue  # for a DELETE: the key and the deleting revision, value empty

    @property
    def revision(self) -> int:
        return self.kv.mod_revision


@dataclass(frozen=True)
class ClusterMember:
    """One member as etcd's member list shows it. ``id`` is etcd's uint64 member ID.

    A member that was added but has not started yet has an empty ``name`` and no client
    URLs: it takes its name from its own ``--name`` when it first talks to the cluster.
    """

    id: int
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    is_learner: bool

    @property
    def started(self) -> bool:
        return bool(self.name)


@dataclass(frozen=True)
class EndpointStatus:
    """What one member says about itself (``/v3/maintenance/status``); a local answer,
    given even when the member has no leader."""

    endpoint: str
    member_id: int
    leader: int  # 0: the member knows no leader now
    raft_term: int
    raft_index: int
    db_size: int
    version: str
    is_learner: bool
    errors: tuple[str, ...]  # active alarms, e.g. "NOSPACE"

    @property
    def has_leader(self) -> bool:
        return self.leader != 0

    @property
    def is_leader(self) -> bool:
        return self.leader != 0 and self.leader == self.member_id


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def _prefix_end(prefix: str) -> str:
    """etcd's range_end for "every key starting with prefix" (last byte + 1)."""
    raw = bytearray(prefix.encode())
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return _b64(bytes(raw))
        raw.pop()
    return _b64(b"\0")  # empty prefix: the whole keyspace


def _int(value: Any) -> int:
    # The gateway writes int64 as strings and omits zero values.
    return int(value) if value is not None else 0


def _kv(raw: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=_unb64(raw.get("key")).decode(),
        value=_unb64(raw.get("value")),
        create_revision=_int(raw.get("create_revision")),
        mod_revision=_int(raw.get("mod_revision")),
        version=_int(raw.get("version")),
        lease=_int(raw.get("lease")),
    )


def _member(raw: dict[str, Any]) -> ClusterMember:
    return ClusterMember(
        id=_int(raw.get("ID")),
        name=raw.get("name") or "",
        peer_urls=tuple(raw.get("peerURLs") or ()),
        client_urls=tuple(raw.get("clientURLs") or ()),
        is_learner=bool(raw.get("isLearner")),
    )


def _members(answer: dict[str, Any]) -> list[ClusterMember]:
    return [_member(raw) for raw in answer.get("members") or []]


def initial_cluster(members: Sequence[ClusterMember], new_member_id: int, new_name: str) -> str:
    """``--initial-cluster`` for a member joining after ``member_add``: ``name=peerURL,...``.

    etcd checks a joining member's initial cluster against the live member list: same
    number of members, every peer URL matched (it takes the member IDs from that match,
    not the names). So every member is listed. The new member appears unnamed in the list
    until it starts: it is listed under ``new_name`` (the name it will start with). Any
    other unnamed member (another join still under way) gets a placeholder name, its ID
    in hex, because names must be unique in the flag and an empty one would merge them.
    """
    if not any(m.id == new_member_id for m in members):
        raise InvalidParameter(f"etcd member {new_member_id:x} is not in the member list")
    entries = []
    for member in members:
        if member.id == new_member_id:
            name = new_name
        else:
            name = member.name or f"{member.id:x}"
        entries += [f"{name}={url}" for url in member.peer_urls]
    return ",".join(entries)


def _revision(body: dict[str, Any]) -> int:
    return _int(body.get("header", {}).get("revision"))


class _EndpointDown(Exception):
    """One endpoint failed to answer (the request may have reached it)."""


class _NotSent(_EndpointDown):
    """The request surely did not take effect there: no connection, or no leader."""


class _NoLeader(_NotSent):
    """The member refused the request because it knows no leader now."""


# gRPC metadata through the gateway: a member that knows no leader refuses at once
# ("etcdserver: no leader") instead of holding the request until etcd's own request
# timeout (several seconds) while an election is under way or the quorum is lost.
_REQUIRE_LEADER = {"Grpc-Metadata-hasleader": "true"}
_NO_LEADER = "etcdserver: no leader"
_UNHEALTHY = "etcdserver: unhealthy cluster"
_LEARNER_REFUSES = "etcdserver: rpc not supported for learner"
_RAFT_STOPPED = "raft: stopped"
_SERVER_STOPPED = "etcdserver: server stopped"
_LEADER_POLL = 0.2  # seconds between rounds while the members know no leader
_MEMBER_CHANGE_PATIENCE = 10.0  # etcd counts a member as started 5 s after it connected


class LeaseKeeper:
    """Renews one lease in a task of its own until closed; ``lost`` is set if it expired."""

    def __init__(self, client: EtcdClient, lease_id: int, ttl: int) -> None:
        self.lease_id = lease_id
        self.lost = asyncio.Event()
        self._client = client
        self._interval = max(ttl / 3, 0.2)
        self._task = asyncio.create_task(self._run(), name=f"etcd-lease-{lease_id:x}")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._client.keepalive_once(self.lease_id)
            except NotFound:
                log.warning("etcd lease %x expired before it could be renewed", self.lease_id)
                self.lost.set()
                return
            except Unavailable as err:
                # Keep trying: the lease may still be alive when the cluster answers again.
                log.warning("etcd lease %x not renewed: %s", self.lease_id, err)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._client._keepers.discard(self)


class EtcdClient:
    """A client of one etcd cluster. Use ``async with EtcdClient(...)`` or open/close.

    Time bounds: one request to one endpoint takes at most ``timeout`` seconds (its
    connection at most ``connect_timeout``); a round tries each endpoint at most once. A
    member without a leader (election under way, quorum lost) refuses at once, because
    every request asks for a leader (gRPC metadata ``hasleader``); while that is the only
    answer, rounds are repeated for ``leader_patience`` seconds, which rides through an
    election (about 1-2 s with the member's settings) and gives up on a lost quorum. So a
    call raises Unavailable within ``leader_patience + len(endpoints) * timeout``, in
    practice much sooner: a stopped member refuses the connection at once. Nothing waits
    for etcd's own request timeout (5 s + 2 election timeouts).
    Watches have no total timeout (they are long-lived streams); they end when their
    member loses its leader or connection and are reopened elsewhere (``watch_prefix``).
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        tls: EtcdTLS | None = None,
        timeout: float = 5.0,
        connect_timeout: float = 2.0,
        leader_patience: float = 3.0,
    ) -> None:
        if not endpoints:
            raise InvalidParameter("etcd: no endpoints given")
        self._endpoints = [e.rstrip("/") for e in endpoints]
        self._current = 0
        self._tls = tls
        self._connect = connect_timeout
        self._leader_patience = leader_patience
        self._request_timeout = timeout
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=connect_timeout)
        self._stream_timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout)
        self._session: aiohttp.ClientSession | None = None
        self._keepers: set[LeaseKeeper] = set()

    # -- lifecycle -----------------------------------------------------------------------
    async def open(self) -> None:
        ssl_context: ssl.SSLContext | bool = False
        if self._tls is not None:
            ssl_context = await asyncio.to_thread(self._ssl_context, self._tls)
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_context))

    @staticmethod
    def _ssl_context(tls: EtcdTLS) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=tls.ca_file)
        if tls.cert_file:
            context.load_cert_chain(tls.cert_file, tls.key_file)
        return context

    async def close(self) -> None:
        for keeper in list(self._keepers):
            await keeper.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> EtcdClient:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def set_endpoints(self, endpoints: Sequence[str]) -> None:
        """Replace the endpoints (managers joined or left); the next call starts with the
        first. Streams already open stay on their endpoint until they end."""
        if not endpoints:
            raise InvalidParameter("etcd: no endpoints given")
        self._endpoints = [e.rstrip("/") for e in endpoints]
        self._current = 0

    # -- transport -----------------------------------------------------------------------
    def _order(self) -> list[str]:
        """Endpoints starting with the one that answered last."""
        n = len(self._endpoints)
        return [self._endpoints[(self._current + i) % n] for i in range(n)]

    def _remember(self, endpoint: str) -> None:
        self._current = self._endpoints.index(endpoint)

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise Unavailable("etcd client is not open")
        return self._session

    async def _call(
        self,
        path: str,
        body: dict[str, Any],
        retry_after_send: bool = True,
        require_leader: bool = True,
    ) -> dict[str, Any]:
        """Post to the sticky endpoint, failing over to the next ones.

        A request that surely did not take effect (no connection, or the member answered
        that it has no leader) is tried on the next endpoint. One that may have been
        applied (sent, then no answer in time) is tried again elsewhere only when
        ``retry_after_send``: a compare-and-swap or a member change repeated after it was
        applied would fail or act twice, so those raise Unavailable at once and the next
        call starts on the next endpoint. When the only answers were "no leader", the
        round is repeated for up to ``leader_patience`` seconds: an election ends within
        that, a lost quorum does not.
        """
        session = self._require_session()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._leader_patience
        while True:
            failures: list[str] = []
            leaderless = False
            for endpoint in self._order():
                try:
                    answer = await self._post_once(
                        session, endpoint + path, body, self._timeout, require_leader
                    )
                except _NoLeader as err:
                    leaderless = True
                    failures.append(f"{endpoint}: {err}")
                    continue
                except _NotSent as err:
                    failures.append(f"{endpoint}: {err}")
                    continue
                except _EndpointDown as err:
                    failures.append(f"{endpoint}: {err}")
                    if retry_after_send:
                        continue
                    self._current = (self._endpoints.index(endpoint) + 1) % len(self._endpoints)
                    leaderless = False  # the request may be applied: no second round
                    break
                self._remember(endpoint)
                return answer
            if not leaderless or loop.time() >= deadline:
                raise Unavailable("etcd cluster unavailable: " + "; ".join(failures))
            await asyncio.sleep(_LEADER_POLL)

    async def _post_to(
        self,
        endpoint: str,
        path: str,
        body: dict[str, Any],
        patience: float,
        require_leader: bool = True,
    ) -> dict[str, Any]:
        """One request to one endpoint (no failover); Unavailable if it does not answer."""
        session = self._require_session()
        budget = aiohttp.ClientTimeout(total=patience, sock_connect=min(patience, self._connect))
        try:
            return await self._post_once(session, endpoint + path, body, budget, require_leader)
        except _EndpointDown as err:
            raise Unavailable(f"etcd member {endpoint} unavailable: {err}") from err

    async def _post_once(
        self,
        session: aiohttp.ClientSession,
        url: str,
        body: dict[str, Any],
        budget: aiohttp.ClientTimeout,
        require_leader: bool = True,
    ) -> dict[str, Any]:
        headers = _REQUIRE_LEADER if require_leader else None
        try:
            async with session.post(url, json=body, timeout=budget, headers=headers) as resp:
                text = await resp.text()
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as err:
            raise _NotSent(str(err) or type(err).__name__) from err
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            raise _EndpointDown(str(err) or type(err).__name__) from err
        try:
            answer: dict[str, Any] = json.loads(text) if text else {}
        except ValueError as err:
            raise _EndpointDown(f"not JSON (HTTP {resp.status})") from err
        if resp.status != 200:
            _raise_gateway_error(answer, resp.status)
        # Streaming endpoints (keepalive) wrap a single answer in "result".
        result = answer.get("result")
        return result if isinstance(result, dict) else answer

    # -- key/value -----------------------------------------------------------------------
    async def get(self, key: str) -> KeyValue | None:
        answer = await self._call("/v3/kv/range", {"key": _b64(key)})
        kvs = answer.get("kvs") or []
        return _kv(kvs[0]) if kvs else None

    async def range_prefix(self, prefix: str) -> RangeResult:
        answer = await self._call(
            "/v3/kv/range",
            {"key": _b64(prefix), "range_end": _prefix_end(prefix), "sort_order": "ASCEND"},
        )
        return RangeResult([_kv(kv) for kv in answer.get("kvs") or []], _revision(answer))

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Write unconditionally; returns the store revision of the write."""
        return _revision(await self._call("/v3/kv/put", _put_body(key, value, lease)))

    async def delete(self, key: str) -> int:
        """Returns how many keys went (0 or 1)."""
        answer = await self._call("/v3/kv/deleterange", {"key": _b64(key)})
        return _int(answer.get("deleted"))

    async def delete_prefix(self, prefix: str) -> int:
        answer = await self._call(
            "/v3/kv/deleterange", {"key": _b64(prefix), "range_end": _prefix_end(prefix)}
        )
        return _int(answer.get("deleted"))

    async def put_if_mod_revision(
        self, key: str, value: bytes, mod_revision: int, lease: int = 0
    ) -> int:
        """Write only if the key's mod_revision is still ``mod_revision`` (0: the key must
        not exist). Returns the new revision; raises :class:`OutOfSequence` otherwise."""
        return await self._compare_and(
            key, mod_revision, {"request_put": _put_body(key, value, lease)}
        )

    async def delete_if_mod_revision(self, key: str, mod_revision: int) -> int:
        """Delete only if the key's mod_revision is still ``mod_revision``."""
        return await self._compare_and(
            key, mod_revision, {"request_delete_range": {"key": _b64(key)}}
        )

    async def _compare_and(self, key: str, mod_revision: int, operation: dict[str, Any]) -> int:
        answer = await self._call(
            "/v3/kv/txn",
            {
                "compare": [
                    {
                        "key": _b64(key),
                        "target": "MOD",
                        "result": "EQUAL",
                        "mod_revision": str(mod_revision),
                    }
                ],
                "success": [operation],
            },
            retry_after_send=False,
        )
        if not answer.get("succeeded"):  # false is omitted by the gateway
            raise OutOfSequence(key, mod_revision)
        return _revision(answer)

    # -- leases --------------------------------------------------------------------------
    async def grant_lease(self, ttl: int) -> int:
        answer = await self._call("/v3/lease/grant", {"TTL": str(ttl)})
        if answer.get("error"):
            raise SystemError_(f"etcd lease grant: {answer['error']}")
        return _int(answer.get("ID"))

    async def keepalive_once(self, lease_id: int) -> int:
        """Renew once; returns the new TTL. An expired lease raises NotFound."""
        answer = await self._call("/v3/lease/keepalive", {"ID": str(lease_id)})
        ttl = _int(answer.get("TTL"))
        if ttl <= 0:
            raise NotFound(f"etcd lease {lease_id:x} not found")
        return ttl

    def keep_alive(self, lease_id: int, ttl: int) -> LeaseKeeper:
        """Start renewing; the keeper is closed by :meth:`LeaseKeeper.close` or ours."""
        keeper = LeaseKeeper(self, lease_id, ttl)
        self._keepers.add(keeper)
        return keeper

    async def revoke_lease(self, lease_id: int) -> None:
        """Revoke (its keys go at once). An already expired lease is not an error."""
        with contextlib.suppress(NotFound):
            await self._call("/v3/lease/revoke", {"ID": str(lease_id)})

    # -- membership ----------------------------------------------------------------------
    async def member_list(self, linearizable: bool = True) -> list[ClusterMember]:
        """The cluster's members.

        etcd 3.4 answers a member list from the answering member's own view, which is
        stale on a member cut off from the quorum (``linearizable`` in the request came
        with 3.5). So a linearizable read goes to the same member first: once it is
        served, that member has applied everything committed before it, membership
        changes included. ``linearizable=False`` skips that (and asks for no leader):
        the local view, answered even without a quorum."""
        if not linearizable:
            return _members(await self._call("/v3/cluster/member/list", {}, require_leader=False))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._leader_patience
        while True:
            await self._call("/v3/kv/range", _barrier_read())
            endpoint = self._endpoints[self._current]
            try:
                answer = await self._post_to(
                    endpoint, "/v3/cluster/member/list", {}, self._request_timeout
                )
            except Unavailable:
                # That member went between the two requests: again, on the next one.
                if loop.time() >= deadline:
                    raise
                self._current = (self._current + 1) % len(self._endpoints)
                continue
            return _members(answer)

    async def member_add(
        self, peer_urls: Sequence[str], learner: bool = False
    ) -> tuple[int, list[ClusterMember]]:
        """Add a member (it starts unnamed); returns its ID and the new member list, from
        which :func:`initial_cluster` builds the joiner's ``--initial-cluster``.

        A voting member counts towards the quorum at once: a 1-member cluster that adds one
        is unavailable until the new member runs. ``learner=True`` adds a non-voting member
        instead, promoted with :meth:`member_promote` once it has caught up. Waits up to
        10 s while etcd answers ClusterNotReady (a member started less than 5 s ago);
        MemberChangeRefused when the peer URL is already a member's.
        """
        body: dict[str, Any] = {"peerURLs": list(peer_urls)}
        if learner:
            body["isLearner"] = True
        answer = await self._member_change("/v3/cluster/member/add", body)
        new_id = _int(answer.get("member", {}).get("ID"))
        if not new_id:
            raise SystemError_("etcd member add: no member ID in the answer")
        return new_id, _members(answer)

    async def _member_change(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _MEMBER_CHANGE_PATIENCE
        while True:
            try:
                # A refusal is never applied, so asking again is safe; a lost answer is
                # not retried (the change may have happened).
                return await self._call(path, body, retry_after_send=False)
            except ClusterNotReady:
                if loop.time() >= deadline:
                    raise
            await asyncio.sleep(0.5)

    async def member_remove(self, member_id: int) -> list[ClusterMember]:
        """Remove a member; returns the members left. An unknown ID raises NotFound;
        MemberChangeRefused when the members left would have too few started ones for a
        quorum (etcd's strict reconfiguration check)."""
        answer = await self._member_change("/v3/cluster/member/remove", {"ID": str(member_id)})
        return _members(answer)

    async def member_promote(self, member_id: int) -> list[ClusterMember]:
        """Make a learner a voting member; MemberChangeRefused while it has not caught up
        with the leader (ask again a moment later)."""
        answer = await self._member_change("/v3/cluster/member/promote", {"ID": str(member_id)})
        return _members(answer)

    # -- per-endpoint probes -----------------------------------------------------------------
    async def endpoint_status(self, endpoint: str, patience: float = 2.0) -> EndpointStatus:
        """Ask one member (any client URL, not only this client's endpoints) for its status.

        Unavailable when it does not answer within ``patience`` seconds: that member is
        unreachable.
        """
        endpoint = endpoint.rstrip("/")
        # Answered from the member's own state, with or without a leader.
        answer = await self._post_to(
            endpoint, "/v3/maintenance/status", {}, patience, require_leader=False
        )
        header = answer.get("header", {})
        return EndpointStatus(
            endpoint=endpoint,
            member_id=_int(header.get("member_id")),
            leader=_int(answer.get("leader")),
            raft_term=_int(answer.get("raftTerm")),
            raft_index=_int(answer.get("raftIndex")),
            db_size=_int(answer.get("dbSize")),
            version=str(answer.get("version") or ""),
            is_learner=bool(answer.get("isLearner")),
            errors=tuple(str(e) for e in answer.get("errors") or ()),
        )

    async def member_statuses(
        self, members: Sequence[ClusterMember], patience: float = 1.0
    ) -> dict[int, EndpointStatus | None]:
        """Every member's status by member ID, asked concurrently on its first client URL;
        None for a member that did not answer within ``patience`` or has not started (no
        client URL): a manager's Reachability is ``reachable`` when its status is there."""

        async def one(member: ClusterMember) -> EndpointStatus | None:
            if not member.client_urls:
                return None
            try:
                return await self.endpoint_status(member.client_urls[0], patience)
            except EngineError:
                return None

        answers = await asyncio.gather(*(one(member) for member in members))
        return {member.id: answer for member, answer in zip(members, answers, strict=True)}

    async def endpoint_healthy(self, endpoint: str, patience: float = 2.0) -> bool:
        """True when that member answers, knows a leader, has no alarm, and serves a
        linearizable read (which goes through the leader: the member is in the quorum).
        A learner serves no such reads: it is healthy once it knows the leader."""
        try:
            status = await self.endpoint_status(endpoint, patience)
            if not status.has_leader or status.errors:
                return False
            if status.is_learner:
                return True
            await self._post_to(endpoint.rstrip("/"), "/v3/kv/range", _barrier_read(), patience)
        except EngineError:
            return False
        return True

    # -- watch ---------------------------------------------------------------------------
    async def watch_prefix(
        self,
        prefix: str,
        start_revision: int,
        retry_delay: float = 0.2,
        give_up_after: float = 10.0,
    ) -> AsyncIterator[WatchEvent]:
        """Every change under ``prefix`` from ``start_revision`` on, in order.

        A dropped stream is reopened (on any endpoint) from the revision after the last
        event seen, so no event is lost or repeated. Raises Unavailable once no endpoint
        has answered for ``give_up_after`` seconds; the caller stops by leaving the loop."""
        loop = asyncio.get_running_loop()
        next_revision = start_revision
        failing_since: float | None = None
        last_errors: dict[str, str] = {}
        while True:
            for endpoint in self._order():
                request = {
                    "create_request": {
                        "key": _b64(prefix),
                        "range_end": _prefix_end(prefix),
                        "start_revision": str(next_revision),
                    }
                }
                try:
                    async for event in self._watch_stream(endpoint, request):
                        self._remember(endpoint)
                        failing_since = None
                        next_revision = event.revision + 1
                        yield event
                except _EndpointDown as err:
                    last_errors[endpoint] = str(err)
                    if failing_since is None:
                        failing_since = loop.time()
                    continue
                break  # the stream ended without an error: reopen it
            if failing_since is not None and loop.time() - failing_since > give_up_after:
                detail = "; ".join(f"{e}: {m}" for e, m in last_errors.items())
                raise Unavailable("etcd cluster unavailable: " + detail)
            await asyncio.sleep(retry_delay)

    async def _watch_stream(
        self, endpoint: str, request: dict[str, Any]
    ) -> AsyncIterator[WatchEvent]:
        session = self._require_session()
        try:
            async with session.post(
                endpoint + "/v3/watch",
                json=request,
                timeout=self._stream_timeout,
                # A member cut off from the quorum ends the stream (no leader) instead of
                # keeping it open with no events: the loop then moves to another endpoint.
                headers=_REQUIRE_LEADER,
            ) as resp:
                if resp.status != 200:
                    raise _EndpointDown(f"watch: HTTP {resp.status}")
                buffer = b""
                async for chunk in resp.content.iter_any():
                    buffer += chunk
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        for event in _watch_events(line):
                            yield event
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            raise _EndpointDown(str(err) or type(err).__name__) from err


def _watch_events(line: bytes) -> list[WatchEvent]:
    if not line.strip():
        return []
    message = json.loads(line)
    if "error" in message:
        raise _EndpointDown(f"watch: {message['error'].get('message', message['error'])}")
    result = message.get("result", {})
    compact = _int(result.get("compact_revision"))
    if compact:
        raise WatchCompacted(compact)
    events = []
    for raw in result.get("events") or []:
        kind: Literal["PUT", "DELETE"] = "DELETE" if raw.get("type") == "DELETE" else "PUT"
        events.append(WatchEvent(kind, _kv(raw.get("kv", {}))))
    return events


def _barrier_read() -> dict[str, Any]:
    """A linearizable read of (at most) one key name: proof the member is in the quorum
    and has applied everything committed before it."""
    return {"key": _b64("/wharfd/barrier"), "keys_only": True, "limit": 1}


def _put_body(key: str, value: bytes, lease: int) -> dict[str, Any]:
    body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
    if lease:
        body["lease"] = str(lease)
    return body


def _raise_gateway_error(answer: dict[str, Any], status: int) -> None:
    code = _int(answer.get("code"))
    message = answer.get("message") or answer.get("error") or f"HTTP {status}"
    if code == _GRPC_UNAVAILABLE and message == _NO_LEADER:
        raise _NoLeader(str(message))
    if message == _LEARNER_REFUSES:
        raise _NotSent(str(message))  # a learner serves no writes nor linearizable reads
    if message == _RAFT_STOPPED:
        # A member just removed from the cluster (a demotion, a leave): its raft node
        # stopped before anything was proposed, so the next endpoint may take it.
        raise _NotSent(str(message))
    if message == _SERVER_STOPPED:
        raise _EndpointDown(str(message))  # stopping: what it had proposed may commit
    if code == _GRPC_UNAVAILABLE and message == _UNHEALTHY:
        raise ClusterNotReady(f"etcd: {message}")
    if code == _GRPC_FAILED_PRECONDITION:
        raise MemberChangeRefused(f"etcd: {message}")
    if code == _GRPC_UNAVAILABLE or status in (502, 503):
        raise _EndpointDown(str(message))
    if code == _GRPC_NOT_FOUND:
        raise NotFound(f"etcd: {message}")
    raise SystemError_(f"etcd: {message}")
