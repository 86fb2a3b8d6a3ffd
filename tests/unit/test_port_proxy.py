"""engine/networks/proxy.py: the ``[::]`` side of a published port carried to an IPv4
target, over loopback (a UDP and a TCP echo server stand in for the container)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from engine.networks import ports, proxy

pytestmark = pytest.mark.skipif(not ports.ipv6_listenable(), reason="no IPv6 on this host")


class _Echo(asyncio.DatagramProtocol):
    transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(b"echo:" + data, addr)


class _Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.got.put_nowait(data)


def _held(proto: str) -> tuple[socket.socket, int]:
    holder = ports.PortHolder()
    binding = holder.hold("c1", ports.Request(53, proto, "::", None))
    key = ("::", proto, binding.host_port)
    return holder._held[key][1], binding.host_port


@pytest.mark.asyncio
async def test_udp_datagrams_are_relayed_per_client() -> None:
    loop = asyncio.get_running_loop()
    echo, _ = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
    target = echo.get_extra_info("sockname")[:2]
    sock, port = await asyncio.to_thread(_held, "udp")
    forwarder = await proxy.forward(sock, "udp", target)
    clients = []
    try:
        for name in (b"a", b"b"):
            transport, client = await loop.create_datagram_endpoint(
                _Client, remote_addr=("::1", port), family=socket.AF_INET6)
            clients.append(transport)
            transport.sendto(name)
            assert await asyncio.wait_for(client.got.get(), 5) == b"echo:" + name
            transport.sendto(name + b"2")  # the same flow again
            assert await asyncio.wait_for(client.got.get(), 5) == b"echo:" + name + b"2"
    finally:
        for transport in clients:
            transport.close()
        forwarder.close()
        echo.close()


@pytest.mark.asyncio
async def test_tcp_connections_are_spliced_with_half_close() -> None:
    async def upper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # until the client's half-close
        writer.write(data.upper())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(upper, "127.0.0.1", 0)
    target = server.sockets[0].getsockname()[:2]
    sock, port = await asyncio.to_thread(_held, "tcp")
    forwarder = await proxy.forward(sock, "tcp", target)
    try:
        reader, writer = await asyncio.open_connection("::1", port)
        writer.write(b"over ipv6")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == b"OVER IPV6"
        writer.close()
    finally:
        forwarder.close()
        server.close()
