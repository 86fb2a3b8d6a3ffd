"""SwarmManager: this node's part in a swarm (docs/swarm.md, "Flows").

It implements the API's ``SwarmBackend``: init, join, leave, inspect/update, unlock, the
nodes, and ``/info``'s Swarm section. Behind it, while the node is in a swarm (an
*active* membership): an etcd client of the managers' members, the node's heartbeat, a
watch of its own node document (role changes), and on managers the local etcd member,
the node-to-node HTTPS server (joins, certificates) and the leader election.

Errors clients depend on keep dockerd's texts (engine.swarm.objects). An etcd that does
not answer (no quorum) is the 503 ``The swarm does not have a leader…``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime

from engine.errors import (
    Conflict,
    EngineError,
    InvalidParameter,
    NotFound,
    NotSupported,
    Unavailable,
)
from engine.ids import new_swarm_id
from engine.layout import Layout
from engine.swarm import peers
from engine.swarm.admission import (
    Admission,
    ClusterSecrets,
    add_learner,
    cert_expiry,
    checked_availability,
    ip,
    manager_endpoints,
    new_unlock_key,
    quorum,
    while_etcd_is_busy,
)
from engine.swarm.ca import (
    CAMismatch,
    NodeRole,
    RootCA,
    load_certificate,
    new_join_token,
    new_node_key_and_csr,
    parse_join_token,
    renewal_time,
    verify_node_certificate,
)
from engine.swarm.etcd import ClusterMember, EtcdClient
from engine.swarm.liveness import (
    Election,
    Heartbeat,
    current_leader,
    mark_nodes_from_heartbeats,
)
from engine.swarm.localstate import (
    LocalState,
    SwarmFiles,
    advertise_address,
    host_description,
    split_host_port,
    unlock_key_fingerprint,
)
from engine.swarm.member import (
    EtcdMember,
    MemberConfig,
    MemberTLS,
    client_url_for,
)
from engine.swarm.nodes import (
    check_demotion,
    check_removal,
    checked_node_spec,
    filter_nodes,
    find_node,
)
from engine.swarm.objects import (
    ALREADY_IN_SWARM,
    MANAGER_NOT_READY,
    NOT_IN_SWARM_MANAGER,
    NOT_PART_OF_SWARM,
    SWARM_LOCKED,
    WORKER_NOT_MANAGER,
    Cluster,
    InitRequest,
    JoinRequest,
    LocalSwarmInfo,
    Node,
    NodeDescription,
    NodeManagerStatus,
    NodeSpec,
    NodeStatus,
    RemoteManager,
    Rotation,
    SwarmJoinTokens,
    SwarmSpec,
    prepare_init,
    prepare_join,
    spec_for_init,
    spec_for_update,
    timestamp_now,
    tls_info_for_root,
)
from engine.swarm.store import (
    CLUSTER_KEY,
    NODES_PREFIX,
    SECRETS_KEY,
    SwarmStore,
    alive_key,
    node_key,
)

log = logging.getLogger(__name__)


JOIN_TIMEOUT = 20.0
JOIN_TIMEOUT_TEXT = (
    "Timeout was reached before node joined. The attempt to join the swarm will continue "
    'in the background. Use the "docker info" command to see the current swarm status of '
    "your node."
)
INVALID_ARGUMENT = "rpc error: code = InvalidArgument desc = "
ETCD_TIMEOUT = 3.0  # one etcd request on one endpoint
HEALTH_TIMEOUT = 0.5  # a member's status probe when a node list is read (LAN: milliseconds)
MEMBER_PATIENCE = 30.0
PROMOTE_PATIENCE = 15.0
MANAGERS_REFRESH = 3.0
RENEWAL_CHECK = 3600.0  # the clock is looked at again at least hourly (it may jump)
RENEWAL_RETRY = 30.0
INFO_PATIENCE = 2.0  # /info answers without the cluster's counts rather than wait longer
LOCKED_LEAVE = ("Swarm is encrypted and locked. Please unlock it first or use `--force` to "
                "ignore this message.")
_LEAVE_PREFIX = ("You are attempting to leave the swarm on a node that is participating as "
                 "a manager. ")
_LEAVE_SUFFIX = ("The only way to restore a swarm that has lost consensus is to reinitialize "
                 "it with `--force-new-cluster`. Use `--force` to suppress this message.")


class _Membership:
    """Everything that runs while this node is in a swarm; closed on leave or shutdown."""

    def __init__(self, state: LocalState, root: RootCA, client: EtcdClient) -> None:
        self.state = state
        self.root = root
        self.client = client
        self.store = SwarmStore(client)
        self.heartbeat = Heartbeat(client, self.store, state.node_id)
        self.member: EtcdMember | None = None
        self.server: peers.PeerServer | None = None
        self.election: Election | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.manager_tasks: list[asyncio.Task[None]] = []
        self.member_ready = asyncio.Event()

    def spawn(self, coro: Awaitable[None], name: str, manager: bool = False) -> None:
        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("swarm task %s failed", name)

        task = asyncio.create_task(guarded(), name=name)
        (self.manager_tasks if manager else self.tasks).append(task)

    async def stop_manager_tasks(self) -> None:
        await _cancel(self.manager_tasks)
        self.manager_tasks = []

    async def close(self) -> None:
        await self.stop_manager_tasks()
        await _cancel(self.tasks)
        self.tasks = []
        if self.server is not None:
            await self.server.close()
            self.server = None
        await self.client.close()


async def _cancel(tasks: Sequence[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


class SwarmManager:
    """This node's swarm membership; one per daemon (``Engine.swarm``)."""

    def __init__(self, layout: Layout, engine_version: str) -> None:
        self._layout = layout
        self._files = SwarmFiles(layout)
        self._engine_version = engine_version
        self._lock = asyncio.Lock()
        self._m: _Membership | None = None
        self._pending = False  # a join is under way
        self._locked: LocalState | None = None  # autolock: restarted, key still sealed
        self._closing: set[asyncio.Task[None]] = set()  # memberships replaced, closing
        self._error = ""

    # ------------------------------------------------------------------ daemon lifecycle
    async def start(self) -> None:
        """Restore a membership from state.json without waiting for etcd: the API answers
        at once (calls needing the cluster say "being prepared" until it is there)."""
        state = await asyncio.to_thread(self._files.load_state)
        if state is None:
            # A crash during init/join before state.json: nothing of a swarm is kept.
            if await asyncio.to_thread(self._layout.swarm_dir.exists):
                await self._remove_leftovers()
            return
        if state.is_manager and await asyncio.to_thread(self._files.key_is_sealed):
            # Autolock: this daemon answers for the swarm only once unlocked. A member
            # still running from before (same boot) keeps serving the others with the
            # key copy under the exec root; after a reboot there is none until unlock.
            self._locked = state
            log.info("swarm: this manager is locked (autolock); waiting for its unlock key")
            return
        try:
            await asyncio.to_thread(self._files.unseal, "")
            await self._restore(state)
        except Exception as err:
            # The daemon still starts (containers do not depend on the swarm); /info
            # shows the swarm in error.
            log.exception("swarm: could not restore this node's membership")
            self._error = f"could not restore the swarm membership: {err}"

    async def _restore(self, state: LocalState) -> None:
        root = await asyncio.to_thread(self._files.load_root)
        membership = await self._open(state, root)
        if state.is_manager:
            member = self._member_for(state)
            membership.member = member
            if await member.adopt() is not None:
                # Our member kept running (live-restore): answer for the cluster at once.
                membership.member_ready.set()
            else:
                membership.spawn(self._bring_up_member(membership), "swarm-member")
        else:
            membership.member_ready.set()
        self._activate(membership)

    async def close(self) -> None:
        """Daemon shutdown: the member keeps running (live-restore) and the heartbeat
        lease is left to lapse on its own; only the lead is given up at once."""
        membership, self._m = self._m, None
        if membership is None:
            return
        if membership.election is not None:
            await membership.election.resign()
        await membership.close()

    async def _remove_leftovers(self) -> None:
        member = EtcdMember(self._layout, self._member_config_placeholder())
        with contextlib.suppress(EngineError):
            await member.remove()
        await asyncio.to_thread(self._files.remove_all)

    def _member_config_placeholder(self) -> MemberConfig:
        return MemberConfig("leftover", ip("127.0.0.1"), self._member_tls())

    # ------------------------------------------------------------------ building blocks
    def _member_tls(self) -> MemberTLS:
        return MemberTLS(self._files.ca_cert, self._files.node_cert, self._files.live_node_key)

    def _member_for(self, state: LocalState) -> EtcdMember:
        config = MemberConfig(state.node_id, ip(state.advertise_addr), self._member_tls(),
                              state.cluster_port)
        return EtcdMember(self._layout, config)

    async def _open(self, state: LocalState, root: RootCA) -> _Membership:
        client = EtcdClient(_own_endpoint_first(state), tls=self._member_tls().client_tls(),
                            timeout=ETCD_TIMEOUT, connect_timeout=1.0)
        await client.open()
        return _Membership(state, root, client)

    async def _bring_up_member(self, membership: _Membership) -> None:
        member = membership.member
        assert member is not None
        try:
            await member.start_or_adopt()
            await member.wait_healthy(MEMBER_PATIENCE)
        except EngineError as err:
            self._error = f"etcd member: {err}"
            log.error("swarm: the local etcd member did not come up: %s", err)
            return
        self._error = ""
        membership.member_ready.set()

    def _activate(self, membership: _Membership) -> None:
        """Start the node's loops (and a manager's) on an opened membership."""
        self._m = membership
        if membership.member_ready.is_set():
            self._error = ""
        membership.spawn(membership.heartbeat.run(), "swarm-heartbeat")
        membership.spawn(self._follow_own_node(membership), "swarm-self-watch")
        membership.spawn(self._follow_managers(membership), "swarm-managers")
        membership.spawn(self._renew_certificate(membership), "swarm-cert-renewal")
        if membership.state.is_manager:
            self._start_manager_work(membership)

    def _start_manager_work(self, membership: _Membership) -> None:
        membership.spawn(self._serve_peers(membership), "swarm-peers", manager=True)
        election = Election(membership.client, membership.state.node_id,
                            lambda: mark_nodes_from_heartbeats(membership.client,
                                                               membership.store))
        membership.election = election
        membership.spawn(self._after_member(membership, election.run), "swarm-election",
                         manager=True)

    async def _after_member(
        self, membership: _Membership, work: Callable[[], Awaitable[None]]
    ) -> None:
        await membership.member_ready.wait()
        await work()

    async def _serve_peers(self, membership: _Membership) -> None:
        state = membership.state
        host, port = split_host_port(state.listen_addr)
        tls = await asyncio.to_thread(peers.server_tls_context, self._files.node_cert,
                                      self._files.live_node_key, membership.root)
        admission = Admission(membership.client, membership.store, membership.root,
                              state.cluster_id, membership.member_ready)
        server = peers.PeerServer(admission, host, port, tls)
        await server.start()
        membership.server = server

    # ------------------------------------------------------------------ guards
    def _membership(self) -> _Membership:
        if self._locked is not None:
            raise Unavailable(SWARM_LOCKED)
        if self._m is None:
            raise Unavailable(NOT_IN_SWARM_MANAGER)
        return self._m

    def _manager(self) -> _Membership:
        """The membership if this node can answer for the cluster now, else dockerd's
        503 (not in a swarm / a worker / a manager not ready)."""
        membership = self._membership()
        if not membership.state.is_manager:
            raise Unavailable(WORKER_NOT_MANAGER)
        if not membership.member_ready.is_set():
            raise Unavailable(MANAGER_NOT_READY)
        return membership

    # ------------------------------------------------------------------ init
    async def init(self, request: InitRequest) -> str:
        async with self._lock:
            if self._locked is not None:
                raise Unavailable(ALREADY_IN_SWARM)
            if self._m is not None:
                if request.ForceNewCluster and self._m.state.is_manager:
                    return await self._force_new_cluster(self._m)
                raise Unavailable(ALREADY_IN_SWARM)
            return await self._init(request)

    async def _init(self, request: InitRequest) -> str:
        request = prepare_init(request)
        spec = spec_for_init(request.Spec, request.AutoLockManagers)
        if spec.CAConfig.SigningCACert or spec.CAConfig.SigningCAKey:
            # Never stored (the key would be readable in the cluster document), never
            # silently ignored either.
            raise NotSupported("a signing CA of your own is not supported by this daemon yet")
        availability = checked_availability(request.Availability)
        listen_host, listen_port = split_host_port(request.ListenAddr)
        address, cluster_port = await asyncio.to_thread(
            advertise_address, request.AdvertiseAddr, listen_host, listen_port)
        await asyncio.to_thread(_check_can_listen, listen_host, listen_port)
        root = await asyncio.to_thread(RootCA.create)
        cluster_id, node_id = new_swarm_id(), new_swarm_id()
        key, csr = await asyncio.to_thread(new_node_key_and_csr)
        cert = await asyncio.to_thread(
            root.sign_node_csr, csr, node_id, NodeRole.MANAGER, cluster_id,
            cert_expiry(spec), None, [ip(address)])
        unlock_key = new_unlock_key() if spec.EncryptionConfig.AutoLockManagers else ""
        state = LocalState(
            node_id=node_id, cluster_id=cluster_id, role="manager",
            listen_addr=request.ListenAddr, advertise_addr=address, cluster_port=cluster_port,
            data_path_addr=request.DataPathAddr,
            etcd_endpoints=[client_url_for(ip(address), cluster_port)],
            manager_addrs=[f"{address}:{cluster_port}"],
            sealed_with=unlock_key_fingerprint(unlock_key),
        )
        await asyncio.to_thread(self._files.save_certificates, root.bundle_pem, cert, key,
                                unlock_key)
        member = self._member_for(state)
        membership: _Membership | None = None
        try:
            await member.start_new(cluster_token=cluster_id)
            await member.wait_healthy(MEMBER_PATIENCE)
            membership = await self._open(state, root)
            membership.member = member
            now = timestamp_now()
            cluster = Cluster(
                ID=cluster_id, CreatedAt=now, UpdatedAt=now, Spec=spec,
                TLSInfo=tls_info_for_root(root.bundle_pem),
                DefaultAddrPool=list(request.DefaultAddrPool), SubnetSize=request.SubnetSize,
                DataPathPort=request.DataPathPort,
            )
            secrets = ClusterSecrets(
                worker_token=str(new_join_token(root)),
                manager_token=str(new_join_token(root)),
                ca_key=root.key_pem.decode(),
                unlock_key=unlock_key,
            )
            node = Node(
                ID=node_id, CreatedAt=now, UpdatedAt=now,
                Spec=NodeSpec(Role="manager", Availability=availability),
                Description=await asyncio.to_thread(self._description, root),
                Status=NodeStatus(State="ready", Addr=address),
                ManagerStatus=NodeManagerStatus(Addr=state.manager_addr),
            )
            store = membership.store
            await store.create(CLUSTER_KEY, cluster)
            await store.create(SECRETS_KEY, secrets)
            await store.create(node_key(node_id), node)
            await asyncio.to_thread(self._files.save_state, state)
        except BaseException:
            await self._undo_membership(membership, member)
            raise
        membership.member_ready.set()
        self._activate(membership)
        log.info("swarm initialised: node %s, cluster %s", node_id, cluster_id)
        return node_id

    async def _undo_membership(
        self, membership: _Membership | None, member: EtcdMember | None
    ) -> None:
        """A failed init or join leaves no swarm behind: loops closed, the etcd member
        stopped and its data gone, the node's files removed."""
        if membership is not None:
            await membership.close()
        if member is not None:
            with contextlib.suppress(EngineError):
                await member.remove()
        await asyncio.to_thread(self._files.remove_all)

    def _description(self, root: RootCA) -> NodeDescription:
        """Blocking (reads /proc): call it in a thread."""
        return host_description(self._engine_version, tls_info_for_root(root.bundle_pem))

    async def _force_new_cluster(self, membership: _Membership) -> str:
        """Recover a lost quorum: the local member becomes the only one, with the data."""
        member = membership.member or self._member_for(membership.state)
        membership.member = member
        membership.member_ready.clear()
        await membership.stop_manager_tasks()
        try:
            await member.force_new_cluster(MEMBER_PATIENCE)
        finally:
            membership.member_ready.set()
        state = membership.state.model_copy(update={
            "etcd_endpoints": [member.client_url],
            "manager_addrs": [membership.state.manager_addr],
        })
        await asyncio.to_thread(self._files.save_state, state)
        await membership.close()
        self._m = None
        fresh = await self._open(state, membership.root)
        fresh.member = member
        fresh.member_ready.set()
        self._activate(fresh)
        return state.node_id

    # ------------------------------------------------------------------ join
    async def join(self, request: JoinRequest) -> None:
        started = time.monotonic()
        async with self._lock:
            if self._m is not None or self._pending or self._locked is not None:
                raise Unavailable(ALREADY_IN_SWARM)
            self._pending = True
            try:
                membership = await self._join(prepare_join(request))
            finally:
                self._pending = False
        remaining = JOIN_TIMEOUT - (time.monotonic() - started)
        if not await self._wait_until_ready(membership, remaining):
            raise Unavailable(JOIN_TIMEOUT_TEXT)

    async def _join(self, request: JoinRequest) -> _Membership:
        token = request.JoinToken
        # A token that does not parse is refused by the daemon itself, before any call
        # (dockerd: plain "invalid join token", no gRPC prefix).
        parse_join_token(token)
        availability = checked_availability(request.Availability)
        listen_host, listen_port = split_host_port(request.ListenAddr)
        failures: list[str] = []
        for remote in request.RemoteAddrs:
            remote_host, _ = split_host_port(remote)
            try:
                bundle = await peers.fetch_root_bundle(remote, token)
            except CAMismatch:
                raise
            except Unavailable as err:
                failures.append(str(err))
                continue
            address, cluster_port = await asyncio.to_thread(
                advertise_address, request.AdvertiseAddr, listen_host, listen_port, remote_host)
            return await self._join_through(
                remote, bundle, token, request, availability, address, cluster_port)
        raise Unavailable("; ".join(failures) or "no manager to join")

    async def _join_through(
        self,
        remote: str,
        bundle: bytes,
        token: str,
        request: JoinRequest,
        availability: str,
        address: str,
        cluster_port: int,
    ) -> _Membership:
        key, csr = await asyncio.to_thread(new_node_key_and_csr)
        root = RootCA.from_pem(bundle)
        description = (await asyncio.to_thread(self._description, root)).model_dump(
            mode="json", exclude_none=True)
        try:
            answer = await peers.join(remote, bundle, peers.JoinPeerRequest(
                token=token, csr=csr.decode(), advertise_addr=address,
                listen_port=cluster_port, availability=availability,
                description=description,
            ))
        except InvalidParameter as err:
            raise InvalidParameter(INVALID_ARGUMENT + str(err)) from None
        await asyncio.to_thread(self._files.save_certificates, answer.ca_bundle.encode(),
                                answer.certificate.encode(), key)
        root = RootCA.from_pem(answer.ca_bundle.encode())
        state = LocalState(
            node_id=answer.node_id, cluster_id=answer.cluster_id, role=answer.role,
            listen_addr=request.ListenAddr, advertise_addr=address, cluster_port=cluster_port,
            data_path_addr=request.DataPathAddr, etcd_endpoints=answer.etcd_endpoints,
            manager_addrs=answer.manager_addrs,
        )
        membership: _Membership | None = None
        member: EtcdMember | None = None
        try:
            if state.is_manager:
                member = self._member_for(state)
                if answer.initial_cluster is None:
                    raise Unavailable("the manager sent no etcd cluster to join")
                await member.start_joining(answer.initial_cluster)
                await member.wait_healthy(MEMBER_PATIENCE)
                if answer.member_id is not None:
                    await self._promote_own_member(state, answer.member_id)
            membership = await self._open(state, root)
            membership.member = member
            await asyncio.to_thread(self._files.save_state, state)
        except BaseException:
            await self._undo_membership(membership, member)
            raise
        membership.member_ready.set()
        self._activate(membership)
        log.info("joined swarm %s as %s %s", state.cluster_id, state.role, state.node_id)
        return membership

    async def _wait_until_ready(self, membership: _Membership, patience: float) -> bool:
        """Until the leader has seen this node's heartbeat (its document says ready)."""
        deadline = time.monotonic() + max(patience, 0.0)
        key = node_key(membership.state.node_id)
        while time.monotonic() < deadline:
            with contextlib.suppress(Unavailable):
                stored = await membership.store.read(key, Node)
                if stored is not None and stored.doc.Status.State == "ready":
                    return True
            await asyncio.sleep(0.1)
        return False

    # ------------------------------------------------------------------ the joining side
    # of a manager (called by the peers server)
    async def _promote_own_member(self, state: LocalState, member_id: int) -> None:
        """Make our freshly started learner a voting member, through the other managers'
        members (a learner serves almost nothing itself)."""
        own = client_url_for(ip(state.advertise_addr), state.cluster_port)
        others = [e for e in state.etcd_endpoints if e != own]
        deadline = time.monotonic() + PROMOTE_PATIENCE
        async with EtcdClient(others, tls=self._member_tls().client_tls(),
                              timeout=ETCD_TIMEOUT, connect_timeout=1.0) as client:
            while True:
                try:
                    await client.member_promote(member_id)
                    return
                except EngineError as err:
                    with contextlib.suppress(EngineError):
                        # A promotion whose answer was lost may have happened.
                        members = await client.member_list()
                        if any(m.id == member_id and not m.is_learner for m in members):
                            return
                    if time.monotonic() > deadline:
                        raise Unavailable(f"etcd member not promoted: {err}") from err
                await asyncio.sleep(0.3)

    # ------------------------------------------------------------------ the managers
    async def _follow_managers(self, membership: _Membership) -> None:
        """Keep the managers' addresses (RemoteManagers, where certificates are asked
        for) and etcd endpoints current, so a worker that joined through one manager
        fails over to managers that came later."""
        while True:
            await asyncio.sleep(MANAGERS_REFRESH)
            try:
                nodes = await membership.store.read_prefix(NODES_PREFIX, Node)
                if membership.state.is_manager and self._m is membership:
                    await self._seal_as_the_cluster_says(membership)
            except Unavailable:
                continue
            addrs = sorted(n.doc.ManagerStatus.Addr for n in nodes
                           if n.doc.ManagerStatus is not None and n.doc.ManagerStatus.Addr)
            if not addrs or addrs == sorted(membership.state.manager_addrs):
                continue
            endpoints = [client_url_for(ip(host), port)
                         for host, port in map(split_host_port, addrs)]
            state = membership.state.model_copy(update={
                "manager_addrs": addrs, "etcd_endpoints": endpoints})
            if self._m is not membership:
                return
            await asyncio.to_thread(self._files.save_state, state)
            membership.state = state
            membership.client.set_endpoints(_own_endpoint_first(state))

    async def _renew_certificate(self, membership: _Membership) -> None:
        """Renew the node certificate at a random point between half and 80% of its
        lifetime (ca.renewal_time), from any manager; then reopen with it."""
        cert = load_certificate(await asyncio.to_thread(self._files.node_cert.read_bytes))
        due = renewal_time(cert)
        while True:
            wait = (due - datetime.now(UTC)).total_seconds()
            if wait <= 0:
                break
            await asyncio.sleep(min(wait, RENEWAL_CHECK))
        while True:
            try:
                async with self._lock:
                    if self._m is not membership:
                        return
                    await self._new_certificate(membership)
                    await self._reopen(membership, membership.state, membership.member)
                log.info("swarm: node certificate renewed")
                return
            except EngineError as err:
                log.warning("swarm: node certificate not renewed yet: %s", err)
                await asyncio.sleep(RENEWAL_RETRY)

    async def _seal_as_the_cluster_says(self, membership: _Membership) -> None:
        """Autolock on a manager: the node key on disk sealed with the current unlock key
        (plain when autolock is off); done again after a rotation."""
        secrets = await membership.store.read(SECRETS_KEY, ClusterSecrets)
        if secrets is None:
            return
        unlock_key = secrets.doc.unlock_key
        fingerprint = unlock_key_fingerprint(unlock_key)
        if fingerprint == membership.state.sealed_with:
            return
        await asyncio.to_thread(self._files.reseal, unlock_key)
        state = membership.state.model_copy(update={"sealed_with": fingerprint})
        await asyncio.to_thread(self._files.save_state, state)
        membership.state = state

    # ------------------------------------------------------------------ own role changes
    async def _follow_own_node(self, membership: _Membership) -> None:
        """Watch this node's document: a role that differs from our certificate's is a
        promotion or demotion to carry out here."""
        key = node_key(membership.state.node_id)
        while True:
            try:
                await membership.member_ready.wait()
                current = await membership.client.range_prefix(key)
                for kv in current.kvs:
                    if kv.key == key:
                        await self._on_own_node(membership, kv.value)
                async for event in membership.client.watch_prefix(key, current.revision + 1):
                    if event.kv.key != key:
                        continue
                    if event.type == "PUT":
                        await self._on_own_node(membership, event.kv.value)
                    elif not membership.state.is_manager:
                        self._after(self._removed(membership))
                        return
            except EngineError as err:
                # A role change that failed half way is tried again from a fresh read.
                log.warning("swarm: following our node: %s", err)
                await asyncio.sleep(1.0)

    def _after(self, work: Awaitable[None]) -> None:
        """Run ``work`` in a task of its own (it closes the membership whose loop asks)."""
        task = asyncio.get_running_loop().create_task(_logged(work))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _removed(self, membership: _Membership) -> None:
        """Our node was removed (``docker node rm --force``): leave locally, as the
        removed node can no longer be part of the swarm."""
        async with self._lock:
            if self._m is not membership:
                return
            log.warning("swarm: this node was removed from the swarm; leaving it")
            self._m = None
            await self._leave(membership)

    async def _on_own_node(self, membership: _Membership, value: bytes) -> None:
        node = Node.model_validate_json(value)
        wanted = node.Spec.Role
        if wanted == membership.state.role or wanted not in ("manager", "worker"):
            return
        async with self._lock:
            if self._m is not membership:
                return
            if wanted == "manager":
                await self._become_manager(membership)
            else:
                await self._become_worker(membership)

    async def _new_certificate(self, membership: _Membership) -> peers.CertificateAnswer:
        key, csr = await asyncio.to_thread(new_node_key_and_csr)
        state = membership.state
        answer = await peers.request_certificate(
            state.manager_addrs, membership.root.bundle_pem, self._files.node_cert,
            self._files.live_node_key, peers.CertificateRequest(csr=csr.decode()))
        await asyncio.to_thread(verify_node_certificate, answer.certificate.encode(),
                                membership.root)
        # Sealed again (with the current unlock key) by the managers loop if autolock is on.
        await asyncio.to_thread(self._files.save_certificates, answer.ca_bundle.encode(),
                                answer.certificate.encode(), key)
        membership.state = membership.state.model_copy(update={"sealed_with": ""})
        return answer

    async def _become_manager(self, membership: _Membership) -> None:
        answer = await self._new_certificate(membership)
        if answer.role != "manager":
            return
        membership.root = RootCA.from_pem(answer.ca_bundle.encode())
        state = membership.state.model_copy(update={"role": "manager"})
        member = self._member_for(state)
        initial, member_id = await add_learner(
            membership.client, state.node_id, ip(state.advertise_addr), state.cluster_port)
        await member.start_joining(initial)
        await member.wait_healthy(MEMBER_PATIENCE)
        await self._promote_own_member(state, member_id)

        def with_manager_status(node: Node) -> Node | None:
            if node.ManagerStatus is not None:
                return None
            return node.model_copy(update={
                "ManagerStatus": NodeManagerStatus(Addr=state.manager_addr),
                "UpdatedAt": timestamp_now()})

        await membership.store.modify(node_key(state.node_id), Node, with_manager_status)
        endpoints, manager_addrs = await manager_endpoints(membership.client, membership.store)
        state = state.model_copy(update={"etcd_endpoints": endpoints,
                                         "manager_addrs": manager_addrs})
        await asyncio.to_thread(self._files.save_state, state)
        await self._reopen(membership, state, member)
        log.info("this node is now a swarm manager")

    async def _become_worker(self, membership: _Membership) -> None:
        answer = await self._new_certificate(membership)
        if answer.role != "worker":
            return
        await asyncio.to_thread(self._files.reseal, "")  # autolock is for managers only
        await membership.stop_manager_tasks()
        if membership.election is not None:
            await membership.election.resign()
        if membership.server is not None:
            await membership.server.close()
            membership.server = None
        try:
            await self._remove_member_of(membership, membership.state.node_id)
        except EngineError as err:
            log.warning("demoted: our etcd member was not removed: %s", err)
        member = membership.member or self._member_for(membership.state)
        with contextlib.suppress(EngineError):
            await member.remove()
        own = member.client_url
        state = membership.state.model_copy(update={
            "role": "worker",
            "sealed_with": "",
            "etcd_endpoints": [e for e in membership.state.etcd_endpoints if e != own],
            "manager_addrs": [a for a in membership.state.manager_addrs
                              if a != membership.state.manager_addr],
        })
        await asyncio.to_thread(self._files.save_state, state)
        await self._reopen(membership, state, None)
        log.info("this node is now a swarm worker")

    async def _reopen(
        self, old: _Membership, state: LocalState, member: EtcdMember | None
    ) -> None:
        """Replace the membership's client and loops for a new role (from inside a loop
        of the old one: it is closed by a task of its own after this returns)."""
        # The old leader work and listener go first: the new ones take the same port.
        await old.stop_manager_tasks()
        if old.election is not None:
            await old.election.resign()
        if old.server is not None:
            await old.server.close()
            old.server = None
        root = await asyncio.to_thread(self._files.load_root)
        fresh = await self._open(state, root)
        fresh.member = member
        fresh.member_ready.set()
        self._m = fresh
        self._activate(fresh)
        self._after(old.close())

    # ------------------------------------------------------------------ leave
    async def leave(self, force: bool) -> None:
        async with self._lock:
            if self._locked is not None:
                if not force:
                    raise Unavailable(LOCKED_LEAVE)
                await self._leave_locked(self._locked)
                return
            membership = self._m
            if membership is None:
                raise Unavailable(NOT_PART_OF_SWARM)
            if membership.state.is_manager and not force:
                raise Unavailable(await self._leave_refusal(membership))
            self._m = None
            await self._leave(membership)

    async def _leave_locked(self, state: LocalState) -> None:
        """Forced leave of a locked manager: its member and files go (the others still
        count it until it is removed there, as with dockerd)."""
        with contextlib.suppress(EngineError):
            await self._member_for(state).remove()
        await asyncio.to_thread(self._files.remove_all)
        self._locked = None
        log.info("left the swarm (it was locked)")

    async def _leave_refusal(self, membership: _Membership) -> str:
        message = _LEAVE_PREFIX
        if not membership.member_ready.is_set():
            return message + "Doing so may lose the consensus of your cluster. " + _LEAVE_SUFFIX
        try:
            nodes = await self._read_nodes(membership)
        except Unavailable:
            return message + _LEAVE_SUFFIX
        managers = [n for n in nodes if n.ManagerStatus is not None]
        reachable = sum(1 for n in managers if n.ManagerStatus is not None
                        and n.ManagerStatus.Reachability == "reachable")
        unreachable = len(managers) - reachable
        if reachable - 2 <= unreachable:  # removing us costs the quorum
            if reachable == 1 and unreachable == 0:
                return (message + "Removing the last manager erases all current state of the "
                        "swarm. Use `--force` to ignore this message. ")
            message += (f"Removing this node leaves {reachable - 1} managers out of "
                        f"{reachable + unreachable}. Without a Raft quorum your swarm will be "
                        "inaccessible. ")
        return message + _LEAVE_SUFFIX

    async def _leave(self, membership: _Membership) -> None:
        state = membership.state
        await membership.stop_manager_tasks()
        if membership.election is not None:
            await membership.election.resign()
        if state.is_manager:
            try:
                await self._remove_member_of(membership, state.node_id)
            except EngineError as err:
                log.warning("leaving: our etcd member was not removed: %s", err)
        with contextlib.suppress(EngineError):
            await membership.heartbeat.stop(revoke=True)
        await membership.close()
        member = membership.member or (self._member_for(state) if state.is_manager else None)
        if member is not None:
            with contextlib.suppress(EngineError):
                await member.remove()
        await asyncio.to_thread(self._files.remove_all)
        log.info("left the swarm")

    # ------------------------------------------------------------------ cluster
    async def inspect(self) -> Cluster:
        membership = self._manager()
        async with quorum():
            cluster = await membership.store.read_required(CLUSTER_KEY, Cluster,
                                                           "the swarm has no cluster")
            secrets = await membership.store.read_required(SECRETS_KEY, ClusterSecrets,
                                                           "the swarm has no secrets")
        doc = cluster.doc.model_copy(deep=True)
        doc.JoinTokens = SwarmJoinTokens(Worker=secrets.doc.worker_token,
                                         Manager=secrets.doc.manager_token)
        return doc

    async def update(self, spec: SwarmSpec, version: int, rotate: Rotation) -> None:
        membership = self._manager()
        new_spec = spec_for_update(spec)
        store = membership.store
        async with quorum():
            cluster = await store.read_required(CLUSTER_KEY, Cluster, "the swarm has no cluster")
            _refuse_ca_rotation(cluster.doc.Spec, new_spec)
            doc = cluster.doc.model_copy(deep=True)
            doc.Spec = new_spec
            doc.UpdatedAt = timestamp_now()
            await store.replace(CLUSTER_KEY, doc, version)
            autolock = new_spec.EncryptionConfig.AutoLockManagers

            def rotated(secrets: ClusterSecrets) -> ClusterSecrets | None:
                changed = secrets.model_copy()
                if rotate.worker_token:
                    changed.worker_token = str(parse_join_token(secrets.worker_token).rotated())
                if rotate.manager_token:
                    changed.manager_token = str(
                        parse_join_token(secrets.manager_token).rotated())
                if autolock and (rotate.unlock_key or not secrets.unlock_key):
                    changed.unlock_key = new_unlock_key()
                if not autolock:
                    changed.unlock_key = ""
                return None if changed == secrets else changed

            await store.modify(SECRETS_KEY, ClusterSecrets, rotated)
        await self._seal_as_the_cluster_says(membership)

    async def unlock_key(self) -> str:
        membership = self._manager()
        async with quorum():
            secrets = await membership.store.read_required(SECRETS_KEY, ClusterSecrets,
                                                           "the swarm has no secrets")
        return secrets.doc.unlock_key

    async def unlock(self, key: str) -> None:
        async with self._lock:
            state = self._locked
            if state is None:
                if self._m is None:
                    raise Unavailable(NOT_IN_SWARM_MANAGER)
                raise Conflict("swarm is not locked")
            await asyncio.to_thread(self._files.unseal, key)
            self._locked = None
            await self._restore(state)
            log.info("swarm unlocked")

    # ------------------------------------------------------------------ /info
    async def local_info(self) -> LocalSwarmInfo:
        membership = self._m
        if self._locked is not None:
            return LocalSwarmInfo(NodeID=self._locked.node_id,
                                  NodeAddr=self._locked.advertise_addr, LocalNodeState="locked")
        if membership is None:
            return LocalSwarmInfo(LocalNodeState="pending" if self._pending else "inactive")
        state = membership.state
        info = LocalSwarmInfo(
            NodeID=state.node_id, NodeAddr=state.advertise_addr,
            LocalNodeState="active" if not self._error else "error", Error=self._error,
            ControlAvailable=state.is_manager,
        )
        remote = [RemoteManager(NodeID="", Addr=a) for a in state.manager_addrs]
        nodes: list[Node] = []
        cluster = None
        if membership.member_ready.is_set():
            try:
                async with asyncio.timeout(INFO_PATIENCE):
                    nodes = [n.doc for n in await membership.store.read_prefix(
                        NODES_PREFIX, Node)]
                    if state.is_manager:
                        cluster = await membership.store.read(CLUSTER_KEY, Cluster)
            except (Unavailable, TimeoutError):
                pass
        managers = [n for n in nodes if n.ManagerStatus is not None]
        if managers:
            remote = [RemoteManager(NodeID=n.ID, Addr=n.ManagerStatus.Addr)
                      for n in managers if n.ManagerStatus is not None]
        if state.is_manager and nodes:
            info.Nodes, info.Managers = len(nodes), len(managers)
        if cluster is not None:
            info.Cluster = cluster.doc
        info.RemoteManagers = sorted(remote, key=lambda r: r.Addr)
        return info

    # ------------------------------------------------------------------ nodes
    async def _read_nodes(self, membership: _Membership) -> list[Node]:
        """Every node, with ManagerStatus.Leader and Reachability as of now."""
        async with quorum():
            stored = await membership.store.read_prefix(NODES_PREFIX, Node)
            leader = await current_leader(membership.client)
            members = await membership.client.member_list()
        healthy = await self._healthy_members(membership, members)
        nodes = []
        for item in stored:
            node = item.doc
            if node.ManagerStatus is not None:
                status = node.ManagerStatus.model_copy()
                status.Leader = node.ID == leader
                reachable = healthy.get(node.ID, False) and node.Status.State != "down"
                status.Reachability = "reachable" if reachable else "unreachable"
                node = node.model_copy(update={"ManagerStatus": status})
            nodes.append(node)
        return nodes

    async def _healthy_members(
        self, membership: _Membership, members: Sequence[ClusterMember]
    ) -> dict[str, bool]:
        """Node id (the member's name) → whether its member answers now."""
        statuses = await membership.client.member_statuses(members, HEALTH_TIMEOUT)
        return {m.name: statuses.get(m.id) is not None for m in members if m.name}

    async def list_nodes(self, filters: Mapping[str, Sequence[str]]) -> list[Node]:
        membership = self._manager()
        return filter_nodes(await self._read_nodes(membership), filters)

    async def get_node(self, ref: str) -> Node:
        membership = self._manager()
        return find_node(await self._read_nodes(membership), ref)

    async def update_node(self, ref: str, version: int, spec: NodeSpec) -> None:
        membership = self._manager()
        new_spec = checked_node_spec(spec)
        nodes = await self._read_nodes(membership)
        node = find_node(nodes, ref)
        check_demotion(nodes, node, new_spec)
        async with quorum():
            stored = await membership.store.read(node_key(node.ID), Node)
            if stored is None:
                raise NotFound(f"node {ref} not found")
            doc = stored.doc.model_copy(deep=True)
            demoted = doc.Spec.Role == "manager" and new_spec.Role == "worker"
            doc.Spec = new_spec
            doc.UpdatedAt = timestamp_now()
            if demoted:
                doc.ManagerStatus = None
            await membership.store.replace(node_key(node.ID), doc, version)
        if demoted:
            try:
                await self._remove_member_of(membership, node.ID)
            except EngineError as err:
                # The node removes its own member when it sees its demotion.
                log.warning("etcd member of demoted node %s not removed: %s", node.ID, err)

    async def _remove_member_of(self, membership: _Membership, node_id: str) -> None:
        """A demoted or leaving manager's etcd member goes at once, so the quorum is
        counted without it even if that node is down and never notices. The last member
        is never removed (that would leave no cluster)."""
        members = await membership.client.member_list()
        ids = [m.id for m in members if m.name == node_id]
        if ids and len(members) > 1:
            await while_etcd_is_busy(lambda: membership.client.member_remove(ids[0]))

    async def remove_node(self, ref: str, force: bool) -> None:
        membership = self._manager()
        node = find_node(await self._read_nodes(membership), ref)
        check_removal(node, force)
        async with quorum():
            await membership.store.delete(node_key(node.ID))
            await membership.client.delete(alive_key(node.ID))


async def _logged(work: Awaitable[None]) -> None:
    try:
        await work
    except Exception:
        log.exception("swarm: background work failed")


CA_ROTATION_UNSUPPORTED = "CA rotation is not supported by this daemon yet"


def _refuse_ca_rotation(current: SwarmSpec, wanted: SwarmSpec) -> None:
    """``swarm ca --rotate`` (a new ForceRotate, or a given signing CA) would start a root
    rotation; saying it succeeded would be a lie, so it is refused (501) until
    implemented (docs/swarm.md, known gaps)."""
    now, then = wanted.CAConfig, current.CAConfig
    if (now.ForceRotate != then.ForceRotate or now.SigningCACert != then.SigningCACert
            or now.SigningCAKey):
        raise NotSupported(CA_ROTATION_UNSUPPORTED)


def _check_can_listen(host: str, port: int) -> None:
    """Fail init/join at once (dockerd's text) when the cluster port is taken, rather
    than leave a node whose listener could not start."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise InvalidParameter(
                f"failed to listen on remote API address: listen tcp {host}:{port}: "
                f"bind: {err.strerror or err}") from None


def _own_endpoint_first(state: LocalState) -> list[str]:
    """A manager talks to its own member first (no network hop, and it is up whenever
    this node is)."""
    endpoints = list(state.etcd_endpoints)
    if state.is_manager:
        own = client_url_for(ip(state.advertise_addr), state.cluster_port)
        endpoints = [own] + [e for e in endpoints if e != own]
    return endpoints
