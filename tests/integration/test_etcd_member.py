"""engine.swarm.member: real etcd 3.4 members on the hosts of a test LAN, with mutual TLS
from engine.swarm.ca.

Three hosts (tests/harness/cluster.py, no daemons): each member runs in its host's network
namespace on 192.168.77.<i>. The test's event loop runs inside h1's namespace
(``thread_in_netns``); a member of another host is spawned while the loop's thread is in
that host's namespace (the launched process keeps the namespace of the thread that
forked it). Every member is stopped by pid at the end of its test, and a safety net
kills by pid whatever etcd still runs on a test's data dir.

wharfd-only: dockerd keeps its swarm store in raft inside the daemon; there is nothing to
run --against-dockerd.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import secrets
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
import uvloop

from engine.errors import NotFound, Unavailable
from engine.layout import Layout
from engine.swarm.ca import NodeRole, RootCA, new_node_key_and_csr
from engine.swarm.etcd import (
    EtcdClient,
    EtcdTLS,
    MemberChangeRefused,
    WatchEvent,
    initial_cluster,
)
from engine.swarm.member import EtcdMember, MemberConfig, MemberTLS
from tests.conftest import ClusterFactory
from tests.harness.cluster import Cluster, Host
from tests.harness.etcd import thread_in_netns

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(not os.path.exists("/usr/bin/etcd"), reason="etcd-server not installed"),
]

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_ID = "testcluster0123456789abcde"


@dataclass
class Manager:
    host: Host
    layout: Layout
    member: EtcdMember

    @property
    def name(self) -> str:
        return self.member.config.name


@pytest.fixture(scope="module")
def lan(module_cluster: ClusterFactory) -> Cluster:
    return module_cluster(3, client=False, start_daemons=False)


@pytest.fixture(scope="module")
def root_ca() -> RootCA:
    return RootCA.create()


def _write_node_files(
    root: RootCA, directory: Path, node_id: str, role: NodeRole, address: str
) -> MemberTLS:
    directory.mkdir(parents=True, exist_ok=True)
    key, csr = new_node_key_and_csr()
    cert = root.sign_node_csr(
        csr, node_id, role, CLUSTER_ID, addresses=[ipaddress.ip_address(address)]
    )
    tls = MemberTLS(directory / "ca.crt", directory / "node.crt", directory / "node.key")
    tls.ca_file.write_bytes(root.bundle_pem)
    tls.cert_file.write_bytes(cert)
    tls.key_file.write_bytes(key)
    return tls


def _etcd_pids_of(data_dir: Path) -> list[int]:
    """Every live etcd whose --data-dir is ``data_dir`` (scanned, not from the pid file)."""
    flag = f"--data-dir={data_dir}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == b"etcd" and flag in argv:
            found.append(int(entry.name))
    return found


@pytest.fixture
def managers(lan: Cluster, root_ca: RootCA, tmp_path: Path) -> Iterator[list[Manager]]:
    """One (not started) member per host, node ids fresh for the test; afterwards a safety
    net SIGKILLs, by pid, any etcd still running on one of the test's data dirs."""
    out = []
    for host in lan.hosts:
        node_id = f"{host.hostname}{secrets.token_hex(6)}"
        base = tmp_path / host.hostname
        tls = _write_node_files(root_ca, base / "certs", node_id, NodeRole.MANAGER, host.address)
        layout = Layout(base / "data", base / "exec")
        config = MemberConfig(node_id, ipaddress.ip_address(host.address), tls)
        out.append(Manager(host, layout, EtcdMember(layout, config)))
    yield out
    leaked = [pid for m in out for pid in _etcd_pids_of(m.layout.swarm_etcd_data_dir)]
    for pid in leaked:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not leaked, f"etcd members left running: {leaked}"


@pytest.fixture
def on_h1(lan: Cluster) -> Iterator[None]:
    with thread_in_netns(lan.hosts[0].netns):
        yield


@pytest_asyncio.fixture
async def stopped_after(managers: list[Manager], on_h1: None) -> AsyncIterator[list[Manager]]:
    """The managers, each member stopped (by pid, through stop()) after the test."""
    yield managers
    for m in managers:
        await m.member.stop()


@contextlib.contextmanager
def on(host: Host) -> Iterator[None]:
    """Spawn on ``host``: the loop's thread is in its namespace meanwhile."""
    with thread_in_netns(host.netns):
        yield


async def _alive(pid: int) -> bool:
    return await asyncio.to_thread(os.path.exists, f"/proc/{pid}/cmdline") and bool(
        await asyncio.to_thread(Path(f"/proc/{pid}/cmdline").read_bytes)
    )


async def _etcd_pids(m: Manager) -> list[int]:
    return await asyncio.to_thread(_etcd_pids_of, m.layout.swarm_etcd_data_dir)


async def _grow(managers: list[Manager]) -> None:
    """A cluster of every manager: the first starts it, the others join one by one."""
    first = managers[0].member
    await first.start_new(CLUSTER_ID)
    await first.wait_healthy(30)
    async with first.client() as client:
        for m in managers[1:]:
            new_id, members = await client.member_add([m.member.peer_url])
            with on(m.host):
                await m.member.start_joining(initial_cluster(members, new_id, m.name))
            await m.member.wait_healthy(30)


def _all_endpoints(managers: list[Manager], leader_patience: float = 3.0) -> EtcdClient:
    return EtcdClient(
        [m.member.client_url for m in managers],
        tls=managers[0].member.config.tls.client_tls(),
        timeout=2.0,
        leader_patience=leader_patience,
    )


# -- one member --------------------------------------------------------------------------------


def _proc_facts(pid: int) -> tuple[int, int, str, str, str]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    ppid = int(stat.rsplit(")", 1)[1].split()[1])
    return (
        os.getsid(pid),
        ppid,
        os.readlink(f"/proc/{pid}/fd/0"),
        os.readlink(f"/proc/{pid}/fd/1"),
        os.readlink(f"/proc/{pid}/fd/2"),
    )


@pytest.mark.asyncio
async def test_new_member_serves_over_mutual_tls(stopped_after: list[Manager]) -> None:
    m = stopped_after[0]
    await m.member.start_new(CLUSTER_ID)
    await m.member.wait_healthy(30)
    pid = m.member.pid
    assert pid is not None

    # Detached: another session (the launcher's), not our child, stdin /dev/null, output
    # to the log, pid recorded.
    sid, ppid, stdin, stdout, stderr = await asyncio.to_thread(_proc_facts, pid)
    assert sid != os.getsid(0)
    assert ppid != os.getpid()
    assert stdin == "/dev/null"
    assert stdout == stderr == str(m.layout.swarm_etcd_log)
    pid_text = await asyncio.to_thread(m.layout.swarm_etcd_pidfile.read_text)
    assert pid_text.strip() == str(pid)

    async with m.member.client() as client:
        revision = await client.put("/t/k", b"over mutual TLS")
        kv = await client.get("/t/k")
        assert kv is not None and kv.value == b"over mutual TLS" and kv.mod_revision == revision
        (only,) = await client.member_list()
        assert (only.name, only.peer_urls, only.client_urls) == (
            m.name,
            (m.member.peer_url,),
            (m.member.client_url,),
        )
        status = await client.endpoint_status(m.member.client_url)
        assert status.is_leader and status.member_id == only.id and status.version.startswith("3.4")

    # The swarm CA alone is not enough: etcd wants a client certificate.
    tls = m.member.config.tls
    async with EtcdClient([m.member.client_url], tls=EtcdTLS(str(tls.ca_file))) as anonymous:
        with pytest.raises(Unavailable):
            await anonymous.get("/t/k")


def _tls_context(tls: MemberTLS) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(tls.ca_file))
    context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return context


async def _peer_port_answers(url: str, tls: MemberTLS) -> bool:
    context = await asyncio.to_thread(_tls_context, tls)
    timeout = aiohttp.ClientTimeout(total=5)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(url + "/members", ssl=context) as resp:
                return resp.status == 200
    except (aiohttp.ClientError, OSError):
        return False


@pytest.mark.asyncio
async def test_only_manager_certificates_talk_on_the_peer_port(
    stopped_after: list[Manager], root_ca: RootCA, tmp_path: Path
) -> None:
    """Workers hold node certificates from the same CA (they are etcd clients), but only a
    manager's certificate is accepted where raft messages come in."""
    m = stopped_after[0]
    worker_tls = await asyncio.to_thread(
        _write_node_files, root_ca, tmp_path / "worker", "w1", NodeRole.WORKER, m.host.address
    )
    await m.member.start_new(CLUSTER_ID)
    await m.member.wait_healthy(30)
    assert await _peer_port_answers(m.member.peer_url, m.member.config.tls)
    assert not await _peer_port_answers(m.member.peer_url, worker_tls)
    # ... while the worker may read and write as a client.
    async with EtcdClient([m.member.client_url], tls=worker_tls.client_tls()) as client:
        await client.put("/t/worker", b"w")


async def _spawn_sleep() -> subprocess.Popen[bytes]:
    return await asyncio.to_thread(subprocess.Popen, ["sleep", "60"])


@pytest.mark.asyncio
async def test_a_process_that_is_not_ours_is_not_adopted(stopped_after: list[Manager]) -> None:
    first, second = stopped_after[0], stopped_after[1]
    await first.member.start_new(CLUSTER_ID)
    await first.member.wait_healthy(30)
    assert first.member.pid is not None
    sleeper = await _spawn_sleep()
    try:
        # Another member's layout whose pid file names (a) a sleep, (b) an etcd on
        # another data dir: neither is adopted, neither is signalled by stop().
        for foreign in (sleeper.pid, first.member.pid):
            await asyncio.to_thread(_write_text, second.layout.swarm_etcd_pidfile, f"{foreign}\n")
            stranger = EtcdMember(second.layout, second.member.config)
            assert await stranger.adopt() is None
            assert not await stranger.is_running()
            await stranger.stop()
            assert await _alive(foreign)
            with pytest.raises(NotFound):  # nothing to restart from either
                await stranger.start_or_adopt()
        assert sleeper.poll() is None
        await first.member.wait_healthy(5)
    finally:
        sleeper.kill()
        await asyncio.to_thread(sleeper.wait)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.asyncio
async def test_adopted_after_a_wharfd_restart(stopped_after: list[Manager]) -> None:
    m = stopped_after[0]
    await m.member.start_new(CLUSTER_ID)
    await m.member.wait_healthy(30)
    async with m.member.client() as client:
        await client.put("/t/kept", b"across restarts")
    pid = m.member.pid

    # "wharfd restarted": a new object over the same paths adopts, starts nothing.
    again = EtcdMember(m.layout, m.member.config)
    assert await again.start_or_adopt() is True
    assert again.pid == pid
    assert await _etcd_pids(m) == [pid]
    await again.wait_healthy(10)

    # A crash between the launch and the pid file: found by its command line.
    await asyncio.to_thread(m.layout.swarm_etcd_pidfile.unlink)
    found = EtcdMember(m.layout, m.member.config)
    assert await found.start_or_adopt() is True
    assert found.pid == pid
    assert (await asyncio.to_thread(m.layout.swarm_etcd_pidfile.read_text)).strip() == str(pid)

    # Stopped (e.g. a reboot): started again from its data dir, the data kept.
    await found.stop()
    assert await _etcd_pids(m) == []
    assert not await asyncio.to_thread(m.layout.swarm_etcd_pidfile.exists)
    restarted = EtcdMember(m.layout, m.member.config)
    assert await restarted.start_or_adopt() is False
    assert restarted.pid not in (None, pid)
    await restarted.wait_healthy(30)
    async with restarted.client() as client:
        kv = await client.get("/t/kept")
        assert kv is not None and kv.value == b"across restarts"
    # start_new refuses a running member and existing data alike.
    with pytest.raises(Exception, match="already"):
        await restarted.start_new(CLUSTER_ID)
    await restarted.stop()
    with pytest.raises(Exception, match="already holds"):
        await restarted.start_new(CLUSTER_ID)
    await restarted.remove()
    assert not await restarted.has_data()


STAND_IN = """
import asyncio, ipaddress, json, sys, time
from pathlib import Path
from engine.layout import Layout
from engine.swarm.member import EtcdMember, MemberConfig, MemberTLS

args = json.loads(sys.argv[1])
tls = MemberTLS(*(Path(p) for p in args["tls"]))
config = MemberConfig(args["name"], ipaddress.ip_address(args["address"]), tls)
member = EtcdMember(Layout(Path(args["data_root"]), Path(args["exec_root"])), config)

async def main():
    await member.start_new("stand-in")
    await member.wait_healthy(30)

asyncio.run(main())
print(member.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.asyncio
async def test_member_outlives_a_killed_wharfd(stopped_after: list[Manager]) -> None:
    """A stand-in for wharfd starts the member and is SIGKILLed with its whole process
    group: the member runs on, and the next "wharfd" adopts it."""
    m = stopped_after[0]
    tls = m.member.config.tls
    args = {
        "tls": [str(tls.ca_file), str(tls.cert_file), str(tls.key_file)],
        "name": m.name,
        "address": m.host.address,
        "data_root": str(m.layout.data_root),
        "exec_root": str(m.layout.exec_root),
    }
    argv = await asyncio.to_thread(
        m.host.netns.wrap, [sys.executable, "-c", STAND_IN, json.dumps(args)]
    )
    stand_in = await asyncio.to_thread(
        subprocess.Popen,
        argv,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert stand_in.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(stand_in.stdout.readline), 60)
        pid = int(line)
    finally:
        os.killpg(stand_in.pid, signal.SIGKILL)
        await asyncio.to_thread(stand_in.wait)
    await asyncio.sleep(0.5)
    assert await _alive(pid)
    assert await m.member.start_or_adopt() is True
    assert m.member.pid == pid
    await m.member.wait_healthy(10)


@pytest.mark.asyncio
async def test_stop_kills_a_member_that_ignores_sigterm(stopped_after: list[Manager]) -> None:
    m = stopped_after[0]
    await m.member.start_new(CLUSTER_ID)
    await m.member.wait_healthy(30)
    pid = m.member.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # a stopped process does not act on SIGTERM
    began = time.monotonic()
    await m.member.stop(patience=1.0)
    assert time.monotonic() - began < 5
    assert await _etcd_pids(m) == []
    assert not await m.member.is_running()
    await m.member.stop()  # not running: nothing to do, no error


# -- three members -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.asyncio
async def test_three_members_grow_and_shrink(stopped_after: list[Manager]) -> None:
    managers = stopped_after
    await _grow(managers)
    async with _all_endpoints(managers) as client:
        members = await client.member_list()
        assert sorted(m.name for m in members) == sorted(m.name for m in managers)
        assert all(not m.is_learner and m.client_urls for m in members)

        revision = await client.put("/t/replicated", b"everywhere")
        leaders = set()
        for m in managers:  # every member has it, and they agree on the leader
            async with m.member.client() as one:
                kv = await one.get("/t/replicated")
                assert kv is not None and kv.mod_revision == revision
            leaders.add((await client.endpoint_status(m.member.client_url)).leader)
        assert len(leaders) == 1 and 0 not in leaders
        statuses = await client.member_statuses(members)
        assert all(status is not None and status.has_leader for status in statuses.values())

        third = next(x for x in members if x.name == managers[2].name)
        assert await managers[2].member.member_id() == third.id
        left = await client.member_remove(third.id)
        assert sorted(x.name for x in left) == sorted(m.name for m in managers[:2])
        with pytest.raises(NotFound):
            await client.member_remove(third.id)

        # A removed member learns it and exits by itself; stop() then finds nothing.
        deadline = time.monotonic() + 15
        while await managers[2].member.is_running():
            assert time.monotonic() < deadline, "removed member still running"
            await asyncio.sleep(0.2)
        await managers[2].member.remove()

        await client.put("/t/after-remove", b"two members")
        assert len(await client.member_list()) == 2


async def _next_event(stream: AsyncIterator[WatchEvent]) -> WatchEvent:
    async for event in stream:
        return event
    raise AssertionError("watch ended without an error")


@pytest.mark.slow
@pytest.mark.asyncio
async def test_quorum_loss_and_force_new_cluster(stopped_after: list[Manager]) -> None:
    managers = stopped_after
    await _grow(managers)
    by_id = {}
    async with _all_endpoints(managers, leader_patience=5.0) as client:
        await client.put("/t/before", b"kept")
        for m in managers:
            status = await client.endpoint_status(m.member.client_url)
            by_id[status.member_id] = m
        leader = by_id[status.leader]

        # The leader goes: the other two elect a new one; the client rides through the
        # election (it asks again while the members answer "no leader").
        assert leader.member.pid is not None
        os.kill(leader.member.pid, signal.SIGKILL)
        await client.put("/t/after-one", b"two of three")
        with pytest.raises(Unavailable):
            await client.endpoint_status(leader.member.client_url)
        statuses = await client.member_statuses(await client.member_list())
        reachable = {by_id[i].name for i, status in statuses.items() if status is not None}
        assert reachable == {m.name for m in managers if m is not leader}

    # A second one goes: no quorum. Calls fail with Unavailable in bounded time: at most
    # leader_patience + len(endpoints) * timeout (1 + 3 * 2 s here).
    survivor, victim = [m for m in managers if m is not leader]
    async with (
        _all_endpoints(managers, leader_patience=1.0) as client,
        survivor.member.client() as on_survivor,
    ):
        # A watch on the survivor ends too (it asks for a leader): a watcher is told,
        # instead of waiting for events that cannot come.
        start = (await on_survivor.range_prefix("/t/")).revision + 1
        stream = on_survivor.watch_prefix("/t/", start, retry_delay=0.2, give_up_after=2.0)
        watch = asyncio.create_task(_next_event(stream))
        await asyncio.sleep(0.3)
        assert victim.member.pid is not None
        os.kill(victim.member.pid, signal.SIGKILL)
        began = time.monotonic()
        with pytest.raises(Unavailable):
            await client.put("/t/lost", b"no quorum")
        assert time.monotonic() - began < 1.0 + 3 * 2.0 + 1
        deadline = time.monotonic() + 10
        while (await client.endpoint_status(survivor.member.client_url)).has_leader:
            assert time.monotonic() < deadline, "the survivor still believes in a leader"
            await asyncio.sleep(0.2)
        # Once the survivor knows it has no leader, calls fail after leader_patience.
        began = time.monotonic()
        with pytest.raises(Unavailable, match="no leader"):
            await client.put("/t/lost", b"no quorum")
        assert time.monotonic() - began < 1.0 + 1.5
        assert not await client.endpoint_healthy(survivor.member.client_url)
        # The member list: no current one without a quorum, the survivor's own view still.
        with pytest.raises(Unavailable):
            await client.member_list()
        local_view = await client.member_list(linearizable=False)
        assert sorted(m.name for m in local_view) == sorted(m.name for m in managers)
        # etcd ends leaderless watch streams after 3 election timeouts; the watch gives
        # up once no endpoint served one for give_up_after.
        with pytest.raises(Unavailable):
            await asyncio.wait_for(watch, 15)

    # Recovery: the survivor alone, with the data (restarted on its own host).
    with on(survivor.host):
        await survivor.member.force_new_cluster()
    async with survivor.member.client() as alone:
        kv = await alone.get("/t/before")
        assert kv is not None and kv.value == b"kept"
        after_one = await alone.get("/t/after-one")
        assert after_one is not None
        assert await alone.get("/t/lost") is None
        await alone.put("/t/recovered", b"writes work")
        (only,) = await alone.member_list()
        assert only.name == survivor.name
    # Restarted without the flag: a later adoption never sees --force-new-cluster.
    assert survivor.member.pid is not None
    cmdline = await asyncio.to_thread(Path(f"/proc/{survivor.member.pid}/cmdline").read_bytes)
    assert b"--force-new-cluster" not in cmdline

    for m in managers:
        await m.member.stop()
        assert await _etcd_pids(m) == []


@pytest.mark.asyncio
async def test_learner_joins_without_risking_the_quorum(stopped_after: list[Manager]) -> None:
    """Added as a learner, a member that has not started yet costs the cluster nothing
    (a voting one would leave a one-member cluster without quorum); promoted once in sync."""
    first, second = stopped_after[0], stopped_after[1]
    await first.member.start_new(CLUSTER_ID)
    await first.member.wait_healthy(30)
    async with first.member.client(timeout=2.0) as client:
        new_id, members = await client.member_add([second.member.peer_url], learner=True)
        assert [m.is_learner for m in members if m.id == new_id] == [True]
        await client.put("/t/while-learner-is-down", b"still writable")

        with on(second.host):
            await second.member.start_joining(initial_cluster(members, new_id, second.name))
        await second.member.wait_healthy(30)
        status = await client.endpoint_status(second.member.client_url)
        assert status.is_learner and status.has_leader
        # A learner refuses writes and linearizable reads: a client goes on to the next
        # endpoint, even with a compare-and-swap (the refusal is not a lost answer).
        endpoints = [second.member.client_url, first.member.client_url]
        async with EtcdClient(endpoints, tls=first.member.config.tls.client_tls()) as both:
            await both.put_if_mod_revision("/t/past-the-learner", b"x", 0)
        async with second.member.client() as learner_only:
            with pytest.raises(Unavailable, match="not supported for learner"):
                await learner_only.get("/t/past-the-learner")

        deadline = time.monotonic() + 15
        while True:
            try:
                promoted = await client.member_promote(new_id)
                break
            except MemberChangeRefused:  # not in sync yet
                assert time.monotonic() < deadline, "learner never caught up"
                await asyncio.sleep(0.3)
        assert [m.is_learner for m in promoted if m.id == new_id] == [False]
    await second.member.wait_healthy(10)
    async with second.member.client() as through_second:
        kv = await through_second.get("/t/while-learner-is-down")
        assert kv is not None and kv.value == b"still writable"


@pytest.mark.asyncio
async def test_a_join_the_cluster_does_not_expect_fails_clearly(
    stopped_after: list[Manager],
) -> None:
    """Joining without member_add first: etcd refuses to start, wait_healthy says so with
    the log's words, nothing keeps running, and remove() clears the way for a new try."""
    first, second = stopped_after[0], stopped_after[1]
    await first.member.start_new(CLUSTER_ID)
    await first.member.wait_healthy(30)
    unexpected = f"{first.name}={first.member.peer_url},{second.name}={second.member.peer_url}"
    with on(second.host):
        await second.member.start_joining(unexpected)
    with pytest.raises(Unavailable, match=r"(?s)not running.*member count is unequal"):
        await second.member.wait_healthy(30)
    assert await _etcd_pids(second) == []
    await second.member.remove()
    assert not await second.member.has_data()
    async with first.member.client() as client:
        assert [m.name for m in await client.member_list()] == [first.name]


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_partitioned_member_neither_serves_nor_disrupts(
    stopped_after: list[Manager],
) -> None:
    """A follower cut off the LAN refuses requests (no leader) while the majority writes
    on; back on the LAN it catches up without deposing the leader (pre-vote: its failed
    elections did not raise the term)."""
    managers = stopped_after
    await _grow(managers)
    async with _all_endpoints(managers) as client:
        by_url = {m.member.client_url: m for m in managers}
        statuses = {url: await client.endpoint_status(url) for url in by_url}
        leader_id = next(iter(statuses.values())).leader
        leader_url = next(u for u, st in statuses.items() if st.member_id == leader_id)
        cut = next(m for u, m in by_url.items() if u != leader_url)
        term_before = statuses[leader_url].raft_term

        await asyncio.to_thread(cut.host.disconnect, "nft")
        try:
            with on(cut.host):  # as the cut-off node's own wharfd sees it
                async with cut.member.client(timeout=2.0) as local:
                    deadline = time.monotonic() + 10
                    while (await local.endpoint_status(cut.member.client_url)).has_leader:
                        assert time.monotonic() < deadline, "cut-off member keeps its leader"
                        await asyncio.sleep(0.2)
                    with pytest.raises(Unavailable, match="no leader"):
                        await local.put("/t/cut-off", b"refused")
            during = await client.put("/t/during-partition", b"majority")
            await asyncio.sleep(3)  # several election timeouts on the cut-off side
        finally:
            await asyncio.to_thread(cut.host.reconnect)

        await cut.member.wait_healthy(30)
        async with cut.member.client() as through_cut:
            kv = await through_cut.get("/t/during-partition")
            assert kv is not None and kv.mod_revision == during
            assert await through_cut.get("/t/cut-off") is None
        after = await client.endpoint_status(leader_url)
        assert (after.leader, after.raft_term) == (leader_id, term_before)


async def _served_certificate(url: str, tls: MemberTLS) -> bytes:
    """The certificate (DER) the member presents on a new TLS connection."""
    context = await asyncio.to_thread(_tls_context, tls)
    host, port = url.removeprefix("https://").rsplit(":", 1)
    _, writer = await asyncio.open_connection(host, int(port), ssl=context)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert isinstance(der, bytes)
        return der
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


@pytest.mark.asyncio
async def test_a_renewed_certificate_is_served_without_a_restart(
    stopped_after: list[Manager], root_ca: RootCA, tmp_path: Path
) -> None:
    """etcd reads its certificate and key at every handshake: renewing the node
    certificate (files replaced atomically, same paths) needs no restart of the member."""
    m = stopped_after[0]
    tls = m.member.config.tls
    await m.member.start_new(CLUSTER_ID)
    await m.member.wait_healthy(30)
    before = await _served_certificate(m.member.client_url, tls)
    assert before == ssl.PEM_cert_to_DER_cert(await asyncio.to_thread(tls.cert_file.read_text))

    renewed = await asyncio.to_thread(
        _write_node_files,
        root_ca,
        tmp_path / "renewed",
        m.name,
        NodeRole.MANAGER,
        m.host.address,
    )
    for new, old in ((renewed.key_file, tls.key_file), (renewed.cert_file, tls.cert_file)):
        await asyncio.to_thread(os.replace, new, old)
    pid = m.member.pid
    for url in (m.member.client_url, m.member.peer_url):
        served = await _served_certificate(url, tls)
        assert served != before
        assert served == ssl.PEM_cert_to_DER_cert(await asyncio.to_thread(tls.cert_file.read_text))
    assert m.member.pid == pid and await m.member.is_running()
    async with m.member.client() as client:
        await client.put("/t/after-renewal", b"ok")


def _fd_targets(pid: int) -> dict[int, str]:
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            out[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
    return out


def _signal_masks(pid: int) -> dict[str, int]:
    masks = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("SigBlk", "SigIgn"):
            masks[name] = int(value.strip(), 16)
    return masks


def test_started_from_uvloop_the_member_holds_nothing_of_ours(
    managers: list[Manager], lan: Cluster
) -> None:
    """wharfd runs uvloop, whose children inherit copies of their stdio sockets and of a
    loop pipe above fd 2: a member launched that way would hold them (and its launcher's
    output would never end). Launched from uvloop, the member has /dev/null and its log
    as stdio and no descriptor shared with us."""
    m = managers[0]

    async def scenario() -> tuple[float, dict[int, str], dict[str, int], float]:
        began = time.monotonic()
        try:
            await m.member.start_new(CLUSTER_ID)
            took = time.monotonic() - began
            await m.member.wait_healthy(30)
            assert m.member.pid is not None
            fds = await asyncio.to_thread(_fd_targets, m.member.pid)
            masks = await asyncio.to_thread(_signal_masks, m.member.pid)
        finally:
            stopping = time.monotonic()
            await m.member.stop()
        return took, fds, masks, time.monotonic() - stopping

    with thread_in_netns(lan.hosts[0].netns):
        took, fds, masks, stop_took = uvloop.run(scenario())
    assert took < 5
    # SIGTERM reaches it (neither blocked nor ignored), so stop needs no SIGKILL.
    assert not masks["SigBlk"] & (1 << (signal.SIGTERM - 1))
    assert not masks["SigIgn"] & (1 << (signal.SIGTERM - 1))
    assert stop_took < 5
    assert fds[0] == "/dev/null"
    assert fds[1] == fds[2] == str(m.layout.swarm_etcd_log)
    ours = {t for t in _fd_targets(os.getpid()).values() if t.startswith(("pipe:", "socket:"))}
    assert not [fd for fd, t in fds.items() if fd > 2 and (t == "/dev/null" or t in ours)]
    assert _etcd_pids_of(m.layout.swarm_etcd_data_dir) == []
