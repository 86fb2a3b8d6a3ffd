"""Forwarding a published port's ``[::]`` binding to a container that has no IPv6 address.

dockerd (with its default userland proxy) publishes an every-address port on ``[::]``
too, whatever the container's network, and its docker-proxy carries IPv6 clients to the
container's IPv4 address; ``docker port`` and ``compose ps`` show both bindings.
nftables cannot NAT from one address family to the other, so for these bindings the
daemon does what docker-proxy does, in its event loop, on the socket that already holds
the port (engine/networks/ports.py): TCP connections are spliced to the container, UDP
datagrams are relayed per client address (a flow is dropped after ``UDP_IDLE`` seconds
without traffic, docker-proxy's conntrack timeout). IPv4 clients, and IPv6 clients of a
container with IPv6, never pass through here: nftables' DNAT rules serve them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any

log = logging.getLogger(__name__)

UDP_IDLE = 90.0
_TCP_CHUNK = 64 * 1024


class TcpForwarder:
    """Accepts on a bound socket; each connection is spliced to ``target``."""

    def __init__(self, sock: socket.socket, target: tuple[str, int]) -> None:
        self._sock = sock
        self._target = target
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_client, sock=self._sock)

    async def _on_client(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(*self._target)
            except OSError as exc:
                log.debug("port proxy: %s:%d unreachable: %s", *self._target, exc)
                return
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()
        finally:
            writer.close()
            self._tasks.discard(task)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then pass the half-close on."""
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(_TCP_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


class _Upstream(asyncio.DatagramProtocol):
    """One client's flow to the container: replies go back from the published port."""

    def __init__(self, relay: UdpForwarder, client: tuple[str, int]) -> None:
        self._relay, self._client = relay, client

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._relay.reply(self._client, data)


class UdpForwarder(asyncio.DatagramProtocol):
    """Relays datagrams between clients of the published port and ``target``."""

    def __init__(self, sock: socket.socket, target: tuple[str, int]) -> None:
        self._sock = sock
        self._target = target
        self._transport: asyncio.DatagramTransport | None = None
        self._flows: dict[tuple[str, int], tuple[asyncio.DatagramTransport, float]] = {}
        self._pending: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(lambda: self, sock=self._sock)
        self._sweeper = asyncio.ensure_future(self._sweep())

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        client = (addr[0], addr[1])
        flow = self._flows.get(client)
        if flow is not None:
            flow[0].sendto(data)
            self._flows[client] = (flow[0], asyncio.get_running_loop().time())
            return
        task = asyncio.ensure_future(self._open_flow(client, data))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _open_flow(self, client: tuple[str, int], first: bytes) -> None:
        loop = asyncio.get_running_loop()
        try:
            upstream, _ = await loop.create_datagram_endpoint(
                lambda: _Upstream(self, client), remote_addr=self._target)
        except OSError as exc:
            log.debug("port proxy: %s:%d unreachable: %s", *self._target, exc)
            return
        self._flows[client] = (upstream, loop.time())
        upstream.sendto(first)

    def reply(self, client: tuple[str, int], data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(data, client)

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(UDP_IDLE / 3)
            now = loop.time()
            for client, (upstream, last) in list(self._flows.items()):
                if now - last > UDP_IDLE:
                    upstream.close()
                    del self._flows[client]

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in list(self._pending):
            task.cancel()
        for upstream, _ in self._flows.values():
            upstream.close()
        self._flows.clear()
        if self._transport is not None:
            self._transport.close()


Forwarder = TcpForwarder | UdpForwarder


async def forward(sock: socket.socket, proto: str, target: tuple[str, int]) -> Forwarder:
    """Start carrying traffic that reaches the bound ``sock`` to ``target``."""
    forwarder: Forwarder = (TcpForwarder(sock, target) if proto == "tcp"
                            else UdpForwarder(sock, target))
    await forwarder.start()
    return forwarder
