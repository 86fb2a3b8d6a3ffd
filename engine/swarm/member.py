"""The local etcd member of a swarm manager: a detached process wharfd starts, adopts, stops.

The member outlives wharfd exactly as conmon does: it is launched through a short-lived
``sh`` in a session of its own (``start_new_session``), which backgrounds etcd and exits,
so etcd is never wharfd's child (reparented to init, or the nearest subreaper): no
SIGCHLD, no reaping, the same code path whether this wharfd or an earlier one started it.
stdin is /dev/null, stdout and stderr go to ``<data-root>/swarm/etcd.log``. Its pid is in
``<exec-root>/swarm/etcd.pid`` (written atomically); its data in ``<data-root>/swarm/etcd``.

Finding our member again (after a wharfd restart, or a crash between the launch and the
pid file): the pid file's process counts only if ``/proc/<pid>/cmdline`` is etcd with our
``--data-dir``; failing that, ``/proc`` is searched for such a process (there is at most
one: etcd locks its data dir, and a second one started on it would hang on the lock).

Signals go through a pidfd opened before the identity check, so a pid reused after the
check can never be signalled; waiting for the exit is the pidfd becoming readable.

Flags and timeouts are explained in docs/swarm.md ("The etcd member").
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import ipaddress
import logging
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509

from engine.errors import Conflict, InvalidParameter, NotFound, SystemError_, Unavailable
from engine.layout import Layout
from engine.store.atomic import atomic_write
from engine.swarm.ca import NodeRole
from engine.swarm.etcd import EtcdClient, EtcdTLS

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_T = TypeVar("_T")

CLIENT_PORT_OFFSET = 2  # etcd client port = cluster (ListenAddr) port + 2: 2379 for 2377
PEER_PORT_OFFSET = 3  # etcd peer port = cluster port + 3: 2380

# Raft timing for a LAN (see docs/swarm.md): a heartbeat every 100 ms, a new election
# after 1 s without one. Failover takes about one election timeout plus a round of votes.
HEARTBEAT_INTERVAL_MS = 100
ELECTION_TIMEOUT_MS = 1000
# A small store: snapshot the raft log every 10k entries (less memory, quicker catch-up
# of a new member than etcd's 100k), keep 3 snapshots and WAL files, and refuse writes
# (alarm NOSPACE) past 512 MiB of backend, far beyond what swarm state needs.
SNAPSHOT_COUNT = 10_000
MAX_SNAPSHOT_FILES = 3
MAX_WAL_FILES = 3
QUOTA_BACKEND_BYTES = 512 * 1024 * 1024
# Keep 10 minutes of history: a watcher that lost its stream resumes from its last
# revision within that; older starts get WatchCompacted and read afresh.
COMPACTION_RETENTION = "10m"

LAUNCH_PATIENCE = 10.0  # seconds for the launcher sh to report etcd's pid
KILL_PATIENCE = 5.0  # after SIGKILL
LOG_ROTATE_BYTES = 8 * 1024 * 1024  # etcd.log is moved to etcd.log.1 past this, at a start
_POLL = 0.2

# Positional: $1 the log file, then etcd's argv. The background job is etcd itself (no
# subshell in between); $! is its pid. sh exits at once, so etcd is reparented.
_LAUNCHER = 'log=$1; shift; "$@" </dev/null >>"$log" 2>&1 & echo $!'
# etcd reads ETCD_* variables as flags: it gets a clean environment, not wharfd's.
_ETCD_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}


class StartMode(enum.Enum):
    NEW = "new"  # a new one-member cluster
    JOIN = "join"  # a member just added to a running cluster (member_add first)
    RESTART = "restart"  # from the data dir; etcd ignores --initial-* then
    FORCE_NEW_CLUSTER = "force-new-cluster"  # from the data dir, as the only member


@dataclass(frozen=True)
class MemberTLS:
    """PEM files etcd is given: the swarm root CA and this node's certificate and key
    (a manager certificate with the advertise address as an IP SAN)."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def client_tls(self) -> EtcdTLS:
        """The same files for our own client of the cluster."""
        return EtcdTLS(str(self.ca_file), str(self.cert_file), str(self.key_file))


@dataclass(frozen=True)
class MemberConfig:
    """Who the member is and where it listens. ``name`` is the node id."""

    name: str
    advertise_address: IPAddress
    tls: MemberTLS
    cluster_port: int = 2377

    @property
    def client_port(self) -> int:
        return self.cluster_port + CLIENT_PORT_OFFSET

    @property
    def peer_port(self) -> int:
        return self.cluster_port + PEER_PORT_OFFSET

    @property
    def client_url(self) -> str:
        return _https_url(self.advertise_address, self.client_port)

    @property
    def peer_url(self) -> str:
        return _https_url(self.advertise_address, self.peer_port)


def _https_url(address: IPAddress, port: int) -> str:
    host = f"[{address}]" if address.version == 6 else str(address)
    return f"https://{host}:{port}"


def client_url_for(address: IPAddress, cluster_port: int = 2377) -> str:
    """The etcd client URL of the manager that advertises ``address`` and ``cluster_port``."""
    return _https_url(address, cluster_port + CLIENT_PORT_OFFSET)


def peer_url_for(address: IPAddress, cluster_port: int = 2377) -> str:
    """The etcd peer URL of that manager (what ``member_add`` is given)."""
    return _https_url(address, cluster_port + PEER_PORT_OFFSET)


def member_argv(
    binary: str,
    config: MemberConfig,
    data_dir: Path,
    mode: StartMode,
    initial_cluster: str | None = None,
    cluster_token: str | None = None,
) -> list[str]:
    """etcd's command line for ``mode`` (pure; tested without starting anything)."""
    tls = config.tls
    argv = [
        binary,
        f"--name={config.name}",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={config.client_url}",
        f"--advertise-client-urls={config.client_url}",
        f"--listen-peer-urls={config.peer_url}",
        f"--initial-advertise-peer-urls={config.peer_url}",
        f"--cert-file={tls.cert_file}",
        f"--key-file={tls.key_file}",
        f"--trusted-ca-file={tls.ca_file}",
        "--client-cert-auth",
        f"--peer-cert-file={tls.cert_file}",
        f"--peer-key-file={tls.key_file}",
        f"--peer-trusted-ca-file={tls.ca_file}",
        "--peer-client-cert-auth",
        # Any node certificate may be a client (workers read the store), but only a
        # manager's (DNS SAN "swarm-manager") may talk raft on the peer port.
        f"--peer-cert-allowed-hostname={NodeRole.MANAGER.ou}",
        f"--heartbeat-interval={HEARTBEAT_INTERVAL_MS}",
        f"--election-timeout={ELECTION_TIMEOUT_MS}",
        # A member back from a partition must not depose a healthy leader by bumping
        # the term: it first asks (pre-vote) whether it could win.
        "--pre-vote=true",
        f"--snapshot-count={SNAPSHOT_COUNT}",
        f"--max-snapshots={MAX_SNAPSHOT_FILES}",
        f"--max-wals={MAX_WAL_FILES}",
        f"--quota-backend-bytes={QUOTA_BACKEND_BYTES}",
        "--auto-compaction-mode=periodic",
        f"--auto-compaction-retention={COMPACTION_RETENTION}",
        "--enable-v2=false",
        "--logger=zap",
        "--log-outputs=stderr",
        "--log-level=warn",
    ]
    if mode is StartMode.NEW:
        if not cluster_token:
            raise InvalidParameter("a new etcd cluster needs a cluster token")
        argv += [
            f"--initial-cluster={config.name}={config.peer_url}",
            "--initial-cluster-state=new",
            # Seeds the cluster and member IDs: members of two swarms never look alike.
            f"--initial-cluster-token={cluster_token}",
        ]
    elif mode is StartMode.JOIN:
        if not initial_cluster:
            raise InvalidParameter("joining an etcd cluster needs the initial cluster")
        argv += [f"--initial-cluster={initial_cluster}", "--initial-cluster-state=existing"]
    elif mode is StartMode.FORCE_NEW_CLUSTER:
        argv.append("--force-new-cluster")
    return argv


class EtcdMember:
    """This node's etcd member. Nothing here blocks the event loop.

    Lifecycle: :meth:`start_new` (swarm init) or :meth:`start_joining` (after the cluster
    ran ``member_add`` for us), then :meth:`wait_healthy`; at a wharfd start
    :meth:`start_or_adopt`; :meth:`force_new_cluster` to recover a lost quorum;
    :meth:`stop` and :meth:`remove` on leave or demotion. In flows::

        init     await m.start_new(cluster_id); await m.wait_healthy()
        join     (a manager) new_id, members = await client.member_add([peer_url_for(ip)])
                 (the joiner) await m.start_joining(initial_cluster(members, new_id, node_id))
                 await m.wait_healthy()
        restart  await m.start_or_adopt(); then wait_healthy (the API answers meanwhile)
        leave    await client.member_remove(await m.member_id()); await m.remove()
        recover  await m.force_new_cluster()
    """

    def __init__(self, layout: Layout, config: MemberConfig, binary: str | None = None) -> None:
        self.config = config
        self.data_dir = layout.swarm_etcd_data_dir
        self.log_file = layout.swarm_etcd_log
        self.pid_file = layout.swarm_etcd_pidfile
        self._binary = binary
        self._pid: int | None = None
        # One start, stop or recovery at a time: two starts would launch two processes.
        self._lock = asyncio.Lock()

    # -- facts -----------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """The pid of the member this object started or adopted (None before/after)."""
        return self._pid

    @property
    def client_url(self) -> str:
        return self.config.client_url

    @property
    def peer_url(self) -> str:
        return self.config.peer_url

    def client(self, timeout: float = 5.0) -> EtcdClient:
        """An (unopened) client of this member alone, with the node's certificate."""
        return EtcdClient([self.client_url], tls=self.config.tls.client_tls(), timeout=timeout)

    async def has_data(self) -> bool:
        """True when the data dir holds a member (etcd then restarts from it)."""
        return await asyncio.to_thread(_has_wal, self.data_dir)

    async def is_running(self) -> bool:
        return await self.adopt() is not None

    async def member_id(self) -> int:
        """This member's etcd ID (for member_remove), as the running member reports it."""
        async with self.client() as client:
            return (await client.endpoint_status(self.client_url)).member_id

    # -- finding a running member ----------------------------------------------------------
    async def adopt(self) -> int | None:
        """The pid of our running member, adopted, or None when none runs."""
        self._pid = await asyncio.to_thread(self._locate)
        return self._pid

    def _locate(self) -> int | None:
        recorded = _read_pid(self.pid_file)
        if recorded is not None and _is_etcd_of(recorded, self.data_dir):
            return recorded
        found = _find_etcd_of(self.data_dir)
        if found is not None:
            log.info("adopting etcd member %d (pid file said %s)", found, recorded)
            self._write_pid_file(found)
        elif recorded is not None:
            _unlink(self.pid_file)
        return found

    # -- starting ----------------------------------------------------------------------------
    async def start_new(self, cluster_token: str) -> None:
        """Start a new one-member cluster (swarm init). The data dir must be empty."""
        async with self._lock:
            await self._start_fresh(StartMode.NEW, cluster_token=cluster_token)

    async def start_joining(self, initial_cluster: str) -> None:
        """Start as the member the cluster just added (``EtcdClient.member_add``);
        ``initial_cluster`` from :func:`engine.swarm.etcd.initial_cluster`. If it then
        does not become healthy, the caller removes the added member (``member_remove``)
        and this one's files (:meth:`remove`) before trying again."""
        async with self._lock:
            await self._start_fresh(StartMode.JOIN, initial_cluster=initial_cluster)

    async def start_or_adopt(self) -> bool:
        """After a wharfd (or machine) restart: adopt the running member, else start it
        again from its data dir. Returns True when a running member was adopted."""
        async with self._lock:
            if await self.adopt() is not None:
                return True
            if not await self.has_data():
                raise NotFound(f"no etcd member data in {self.data_dir}")
            await self._spawn(StartMode.RESTART)
            return False

    async def force_new_cluster(self, patience: float = 30.0) -> None:
        """Recover from a lost quorum: this member becomes the only member, keeping the
        data. etcd rewrites the membership at a start with ``--force-new-cluster``; the
        member is then restarted without the flag (etcd's advice), so the flag is never
        on the command line a later adoption finds. Returns once it is healthy."""
        async with self._lock:
            await self._stop()
            if not await self.has_data():
                raise NotFound(f"no etcd member data in {self.data_dir}")
            await self._spawn(StartMode.FORCE_NEW_CLUSTER)
            await self.wait_healthy(patience)
            await self._stop()
            await self._spawn(StartMode.RESTART)
            await self.wait_healthy(patience)

    async def _start_fresh(
        self, mode: StartMode, initial_cluster: str | None = None, cluster_token: str | None = None
    ) -> None:
        if await self.adopt() is not None:
            raise Conflict(f"an etcd member is already running (pid {self._pid})")
        if await self.has_data():
            raise Conflict(f"{self.data_dir} already holds an etcd member; remove it first")
        # Without a WAL the directory is what a start that never got going left (etcd
        # would bootstrap over it, keeping a stale backend file): start from nothing.
        await asyncio.to_thread(shutil.rmtree, self.data_dir, True)
        await self._spawn(mode, initial_cluster=initial_cluster, cluster_token=cluster_token)

    async def _spawn(
        self, mode: StartMode, initial_cluster: str | None = None, cluster_token: str | None = None
    ) -> None:
        binary = await asyncio.to_thread(self._prepare)
        argv = member_argv(binary, self.config, self.data_dir, mode, initial_cluster, cluster_token)
        pid = await _in_a_new_thread(_launch, argv, self.log_file)
        await asyncio.to_thread(self._write_pid_file, pid)
        self._pid = pid
        log.info("started etcd member %s (%s) as pid %d", self.config.name, mode.value, pid)

    def _prepare(self) -> str:
        """Directories, the certificate check, the log file; returns the etcd binary."""
        binary = self._binary or shutil.which("etcd") or "/usr/bin/etcd"
        if not os.access(binary, os.X_OK):
            raise SystemError_(f"etcd not found: {binary}")
        _check_certificate_names(self.config.tls.cert_file, self.config.advertise_address)
        for directory in (self.data_dir.parent, self.pid_file.parent):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if self.log_file.stat().st_size > LOG_ROTATE_BYTES:
                os.replace(self.log_file, self.log_file.with_name(self.log_file.name + ".1"))
        os.close(os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        return binary

    def _write_pid_file(self, pid: int) -> None:
        self.pid_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write(self.pid_file, f"{pid}\n".encode(), mode=0o644)

    # -- health ------------------------------------------------------------------------------
    async def wait_healthy(self, patience: float = 30.0) -> None:
        """Until the member serves linearizable reads over TLS (it has a leader and is in
        the quorum; a learner: it knows the leader). Unavailable with the log's tail when
        it exits or is not healthy within ``patience`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience
        async with self.client() as client:
            while True:
                if not await self.is_running():
                    tail = await asyncio.to_thread(_log_tail, self.log_file)
                    raise Unavailable(f"etcd member is not running; its log ends: {tail}")
                remaining = deadline - loop.time()
                if await client.endpoint_healthy(self.client_url, min(2.0, max(remaining, 0.1))):
                    return
                if loop.time() >= deadline:
                    tail = await asyncio.to_thread(_log_tail, self.log_file)
                    raise Unavailable(
                        f"etcd member not healthy after {patience:g}s; its log ends: {tail}"
                    )
                await asyncio.sleep(_POLL)

    # -- stopping ------------------------------------------------------------------------------
    async def stop(self, patience: float = 10.0) -> None:
        """SIGTERM, up to ``patience`` seconds for it to go, then SIGKILL; by pid only.
        Not running is not an error. The pid file goes."""
        async with self._lock:
            await self._stop(patience)

    async def _stop(self, patience: float = 10.0) -> None:
        pid = await self.adopt()  # the pid file's process if it is ours, else a search
        if pid is not None:
            await self._terminate(pid, patience)
        self._pid = None
        await asyncio.to_thread(_unlink, self.pid_file)

    async def _terminate(self, pid: int, patience: float) -> None:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        try:
            # The pidfd pins the process: it is the one checked here, not a reused pid.
            if not await asyncio.to_thread(_is_etcd_of, pid, self.data_dir):
                return
            if not _signal(pidfd, signal.SIGTERM):
                return
            try:
                async with asyncio.timeout(patience):
                    await _readable(pidfd)
                return
            except TimeoutError:
                log.warning("etcd member %d ignored SIGTERM for %gs: killing it", pid, patience)
            if _signal(pidfd, signal.SIGKILL):
                try:
                    async with asyncio.timeout(KILL_PATIENCE):
                        await _readable(pidfd)
                except TimeoutError:
                    raise SystemError_(f"etcd member {pid} survived SIGKILL") from None
        finally:
            os.close(pidfd)

    async def remove(self) -> None:
        """Stop the member and delete its data, log and pid file (leave, demotion)."""
        async with self._lock:
            await self._stop()
            await asyncio.to_thread(self._remove_files)

    def _remove_files(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)
        for path in (self.log_file, self.log_file.with_name(self.log_file.name + ".1")):
            _unlink(path)


# -- processes ------------------------------------------------------------------------------


def _launch(argv: list[str], log_file: Path) -> int:
    """Run the launcher sh (blocking); returns etcd's pid.

    The standard library's subprocess, not the event loop's: uvloop's children inherit
    copies of their stdio sockets and of a loop pipe above fd 2 (close_fds does not reach
    them), which the backgrounded etcd would keep open for its whole life (so the
    launcher's output never ended) along with whatever else leaked. subprocess closes
    every descriptor above 2 in the child.
    """
    with subprocess.Popen(
        ["/bin/sh", "-c", _LAUNCHER, "wharfd-etcd-launcher", str(log_file), *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_ETCD_ENV,
        cwd="/",
        start_new_session=True,
        close_fds=True,
    ) as launcher:
        try:
            out, err = launcher.communicate(timeout=LAUNCH_PATIENCE)
        except subprocess.TimeoutExpired:
            launcher.kill()
            launcher.wait()
            raise SystemError_("etcd launcher did not answer") from None
    try:
        return int(out.strip())
    except ValueError:
        raise SystemError_(
            f"etcd launcher failed ({launcher.returncode}): {err.decode(errors='replace')}"
        ) from None


async def _in_a_new_thread(fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)`` in a thread started for it. Unlike a pool thread, which keeps the
    namespaces it was created in, a new thread starts in the caller's current ones: the
    launched member lives in the network namespace the caller is in (the tests start the
    members of several hosts from one event loop)."""
    outcome: concurrent.futures.Future[_T] = concurrent.futures.Future()

    def run() -> None:
        if not outcome.set_running_or_notify_cancel():
            return
        try:
            outcome.set_result(fn(*args))
        except BaseException as error:  # handed to the awaiting coroutine
            outcome.set_exception(error)

    threading.Thread(target=run, name="etcd-launcher", daemon=True).start()
    return await asyncio.wrap_future(outcome)


def _cmdline(pid: int) -> list[str]:
    """A process's argv; empty for a zombie, a kernel thread, or a process gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]]


def _is_etcd_of(pid: int, data_dir: Path) -> bool:
    argv = _cmdline(pid)
    return bool(argv) and os.path.basename(argv[0]) == "etcd" and f"--data-dir={data_dir}" in argv


def _pids() -> Iterator[int]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            yield int(entry.name)


def _find_etcd_of(data_dir: Path) -> int | None:
    for pid in _pids():
        if _is_etcd_of(pid, data_dir):
            return pid
    return None


def _signal(pidfd: int, sig: signal.Signals) -> bool:
    """False when the process has already exited."""
    try:
        signal.pidfd_send_signal(pidfd, sig)
    except ProcessLookupError:
        return False
    return True


async def _readable(fd: int) -> None:
    """Until ``fd`` is readable: a pidfd is, once its process has exited."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def on_readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


# -- files ------------------------------------------------------------------------------------


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _has_wal(data_dir: Path) -> bool:
    """What etcd itself checks to restart from data: WAL files in member/wal."""
    wal_dir = data_dir / "member" / "wal"
    try:
        return any(name.endswith(".wal") for name in os.listdir(wal_dir))
    except OSError:
        return False


def _log_tail(path: Path, size: int = 2000) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(f.seek(0, os.SEEK_END) - size, 0))
            return f.read().decode(errors="replace").strip()
    except OSError as err:
        return f"(no log: {err})"


def _check_certificate_names(cert_file: Path, address: IPAddress) -> None:
    """etcd's peers and clients dial ``https://<ip>:port`` and check that IP in the
    certificate, and peers accept only managers' certificates: a node certificate without
    either would start, then fail handshakes. Say so at once instead (the CA adds the IP:
    ``sign_node_csr(addresses=[...])``)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except (OSError, ValueError) as err:
        raise InvalidParameter(f"etcd member certificate {cert_file}: {err}") from err
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = x509.SubjectAlternativeName([])
    if address not in sans.get_values_for_type(x509.IPAddress):
        raise InvalidParameter(
            f"node certificate has no IP SAN for the advertise address {address}: "
            "etcd peers and clients could not verify it"
        )
    if NodeRole.MANAGER.ou not in sans.get_values_for_type(x509.DNSName):
        raise InvalidParameter(
            "node certificate is not a manager's: the other members would refuse it "
            "on their peer port (--peer-cert-allowed-hostname)"
        )
