"""engine.swarm.etcd against a real etcd 3.4 member in the test's own network namespace.

wharfd-only: this is the engine's etcd client, dockerd has no counterpart (its swarm
store is raft inside the daemon), so there is nothing to run --against-dockerd.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
import pytest_asyncio

from engine.errors import Unavailable
from engine.swarm.etcd import EtcdClient, EtcdTLS, OutOfSequence, WatchCompacted, WatchEvent
from tests.harness.etcd import EtcdMember, thread_in_netns
from tests.harness.netns import NetNS

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a network namespace"),
    pytest.mark.skipif(not os.path.exists("/usr/bin/etcd"), reason="etcd-server not installed"),
]

DEAD_ENDPOINT = "http://127.0.0.1:2999"  # nothing listens there inside the namespace


@pytest_asyncio.fixture
async def etcd(
    inside_etcd: EtcdMember, request: pytest.FixtureRequest
) -> AsyncIterator[EtcdClient]:
    async with EtcdClient([inside_etcd.client_url]) as client:
        await client.delete_prefix(f"/t/{request.node.name}/")
        yield client


def _prefix(request: pytest.FixtureRequest) -> str:
    return f"/t/{request.node.name}/"


@pytest.mark.asyncio
async def test_put_get_range(etcd: EtcdClient, request: pytest.FixtureRequest) -> None:
    p = _prefix(request)
    rev_a = await etcd.put(p + "a", b"1")
    rev_b = await etcd.put(p + "b", b"\x00binary\xff")
    await etcd.put(p.rstrip("/") + "x", b"outside the prefix")
    assert rev_b > rev_a

    kv = await etcd.get(p + "a")
    assert kv is not None and kv.value == b"1" and kv.mod_revision == rev_a
    assert await etcd.get(p + "missing") is None

    result = await etcd.range_prefix(p)
    assert [(kv.key, kv.value) for kv in result.kvs] == [
        (p + "a", b"1"),
        (p + "b", b"\x00binary\xff"),
    ]
    assert result.revision >= rev_b

    assert await etcd.delete(p + "a") == 1
    assert await etcd.get(p + "a") is None


@pytest.mark.asyncio
async def test_compare_and_swap(etcd: EtcdClient, request: pytest.FixtureRequest) -> None:
    key = _prefix(request) + "svc"
    created = await etcd.put_if_mod_revision(key, b"v1", 0)  # 0: must not exist yet
    with pytest.raises(OutOfSequence):
        await etcd.put_if_mod_revision(key, b"again", 0)

    updated = await etcd.put_if_mod_revision(key, b"v2", created)
    # A writer still holding the first read loses, and nothing is overwritten.
    with pytest.raises(OutOfSequence) as lost:
        await etcd.put_if_mod_revision(key, b"stale", created)
    assert str(lost.value) == "update out of sequence"
    kv = await etcd.get(key)
    assert kv is not None and kv.value == b"v2" and kv.mod_revision == updated

    with pytest.raises(OutOfSequence):
        await etcd.delete_if_mod_revision(key, created)
    await etcd.delete_if_mod_revision(key, updated)
    assert await etcd.get(key) is None


@pytest.mark.asyncio
async def test_lease_expiry_and_keepalive(etcd: EtcdClient, request: pytest.FixtureRequest) -> None:
    p = _prefix(request)
    lapsing = await etcd.grant_lease(2)
    kept = await etcd.grant_lease(2)
    await etcd.put(p + "lapsing", b"x", lease=lapsing)
    await etcd.put(p + "kept", b"x", lease=kept)
    keeper = etcd.keep_alive(kept, 2)

    deadline = time.monotonic() + 6
    while await etcd.get(p + "lapsing") is not None:
        assert time.monotonic() < deadline, "key of an expired lease still there"
        await asyncio.sleep(0.2)
    assert await etcd.get(p + "kept") is not None
    await asyncio.sleep(1.5)  # well past the 2 s TTL since the grant
    assert await etcd.get(p + "kept") is not None
    assert not keeper.lost.is_set()

    await keeper.close()
    await etcd.revoke_lease(kept)
    assert await etcd.get(p + "kept") is None
    await etcd.revoke_lease(lapsing)  # already gone: not an error


@pytest.mark.asyncio
async def test_keeper_reports_a_lost_lease(etcd: EtcdClient) -> None:
    lease = await etcd.grant_lease(2)
    keeper = etcd.keep_alive(lease, 2)
    await etcd.revoke_lease(lease)  # as if it had lapsed while we could not renew
    await asyncio.wait_for(keeper.lost.wait(), 3)
    await keeper.close()


async def _collect(stream: AsyncIterator[WatchEvent], n: int) -> list[WatchEvent]:
    events: list[WatchEvent] = []
    async for event in stream:
        events.append(event)
        if len(events) == n:
            break
    return events


@pytest.mark.asyncio
async def test_watch_in_order_and_from_revision(
    etcd: EtcdClient, request: pytest.FixtureRequest
) -> None:
    p = _prefix(request)
    start = (await etcd.range_prefix(p)).revision + 1
    watcher = asyncio.create_task(_collect(etcd.watch_prefix(p, start), 4))
    await asyncio.sleep(0.3)
    r1 = await etcd.put(p + "a", b"1")
    r2 = await etcd.put(p + "b", b"2")
    r3 = await etcd.put(p + "a", b"3")
    assert await etcd.delete(p + "a") == 1
    r4 = (await etcd.range_prefix(p)).revision  # the delete's revision: nothing else writes
    events = await asyncio.wait_for(watcher, 5)
    assert [(e.type, e.kv.key, e.kv.value, e.revision) for e in events] == [
        ("PUT", p + "a", b"1", r1),
        ("PUT", p + "b", b"2", r2),
        ("PUT", p + "a", b"3", r3),
        ("DELETE", p + "a", b"", r4),
    ]
    # Watching again from the middle replays the history from there.
    replay = await asyncio.wait_for(_collect(etcd.watch_prefix(p, r2), 3), 5)
    assert [e.revision for e in replay] == [r2, r3, r4]


@pytest.mark.asyncio
async def test_watch_from_a_compacted_revision_says_so(
    etcd: EtcdClient, inside_etcd: EtcdMember, request: pytest.FixtureRequest
) -> None:
    p = _prefix(request)
    old = await etcd.put(p + "k", b"1")
    now = await etcd.put(p + "k", b"2")
    async with aiohttp.ClientSession() as raw:  # compaction is the member's job, not ours
        answer = await raw.post(
            inside_etcd.client_url + "/v3/kv/compaction", json={"revision": now})
        assert answer.status == 200
    with pytest.raises(WatchCompacted) as compacted:
        await asyncio.wait_for(_collect(etcd.watch_prefix(p, old), 1), 5)
    assert compacted.value.compact_revision == now


class _DroppableProxy:
    """TCP proxy inside the namespace whose connections the test can cut."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def drop_all(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()

    async def close(self) -> None:
        self.drop_all()
        if self.server is not None:
            self.server.close()


@pytest.mark.asyncio
async def test_watch_resumes_after_dropped_stream(
    etcd: EtcdClient, inside_etcd: EtcdMember, request: pytest.FixtureRequest
) -> None:
    p = _prefix(request)
    proxy = _DroppableProxy(int(inside_etcd.client_url.rsplit(":", 1)[1]))
    proxied = await proxy.start()
    try:
        async with EtcdClient([proxied]) as through_proxy:
            start = (await etcd.range_prefix(p)).revision + 1
            stream = through_proxy.watch_prefix(p, start, retry_delay=0.5)
            watcher = asyncio.create_task(_collect(stream, 4))
            await asyncio.sleep(0.3)
            revisions = [await etcd.put(p + "k", b"1"), await etcd.put(p + "k", b"2")]
            await asyncio.sleep(0.3)
            proxy.drop_all()  # the stream dies; the writes below happen while it is down
            revisions += [await etcd.put(p + "k", b"3"), await etcd.put(p + "k", b"4")]
            events = await asyncio.wait_for(watcher, 5)
        assert [e.revision for e in events] == revisions
        assert [e.kv.value for e in events] == [b"1", b"2", b"3", b"4"]
    finally:
        await proxy.close()


@pytest.mark.asyncio
async def test_unreachable_cluster_is_unavailable_quickly(inside_etcd: EtcdMember) -> None:
    async with EtcdClient([DEAD_ENDPOINT, "http://127.0.0.1:2998"]) as client:
        began = time.monotonic()
        with pytest.raises(Unavailable, match="etcd cluster unavailable"):
            await client.get("/t/anything")
        assert time.monotonic() - began < 2
        with pytest.raises(Unavailable):
            await _collect(client.watch_prefix("/t/", 1, retry_delay=0.1, give_up_after=0.5), 1)


@pytest.mark.asyncio
async def test_fails_over_to_the_next_endpoint(
    inside_etcd: EtcdMember, request: pytest.FixtureRequest
) -> None:
    key = _prefix(request) + "k"
    async with EtcdClient([DEAD_ENDPOINT, inside_etcd.client_url]) as client:
        revision = await client.put(key, b"v")
        kv = await client.get(key)
        assert kv is not None and kv.mod_revision == revision
        await client.delete(key)


@pytest.fixture
def tls_member() -> Iterator[EtcdMember]:
    with NetNS() as netns, EtcdMember(netns, tls=True) as member, thread_in_netns(netns):
        yield member


@pytest.mark.asyncio
async def test_tls_with_client_certificates(
    tls_member: EtcdMember, request: pytest.FixtureRequest
) -> None:
    """A member that requires client certificates (as swarm's will): with the CA and our
    pair the client works; without a certificate it is refused, as Unavailable."""
    key = _prefix(request) + "k"
    pki, url = tls_member.pki, tls_member.client_url
    assert pki is not None
    tls = EtcdTLS(str(pki.ca), str(pki.client_cert), str(pki.client_key))
    async with EtcdClient([url], tls=tls) as client:
        revision = await client.put(key, b"secret")
        kv = await client.get(key)
        assert kv is not None and kv.value == b"secret" and kv.mod_revision == revision
    async with EtcdClient([url], tls=EtcdTLS(str(pki.ca))) as anonymous:
        with pytest.raises(Unavailable, match="certificate"):
            await anonymous.get(key)
