"""The embedded DNS resolver of containers on user-defined networks.

As dockerd, each such container gets a resolver at ``127.0.0.11:53`` (UDP and TCP)
inside its own namespace and a resolv.conf naming it. Our sockets are created inside
the container's namespace (a short thread joins it, see bridge.in_netns) and then
served by the daemon's event loop, so the resolver knows which container asks without
looking at addresses. Names of containers sharing a network with the asker (names,
aliases, short ids) are answered here (A records with their IPv4 addresses, AAAA with
their IPv6 ones on networks with EnableIPv6; a name of ours with no address of the
asked family gets an empty NOERROR answer, as dockerd's); anything else is forwarded
to the daemon's upstream servers, and answered SERVFAIL when there are none or they
do not answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from engine.networks import bridge

log = logging.getLogger(__name__)

RESOLVER_IP = "127.0.0.11"
TYPE_A = 1
TYPE_AAAA = 28
CLASS_IN = 1
TTL = 600
FORWARD_TIMEOUT = 2.0
RCODE_SERVFAIL = 2

Lookup = Callable[[str, str], list[str] | None]
"""(asking container id, lowercase name without the trailing dot) → its IPv4 and IPv6
addresses, or None when the name is not one of ours."""

_RECORDS = {TYPE_A: (socket.AF_INET, 4), TYPE_AAAA: (socket.AF_INET6, 16)}


@dataclass(frozen=True)
class Question:
    name: str          # as asked, without the trailing dot
    qtype: int
    qclass: int
    end: int           # offset just after the question


def parse_question(packet: bytes) -> Question | None:
    if len(packet) < 12 or struct.unpack("!H", packet[4:6])[0] < 1:
        return None
    offset, labels = 12, []
    while True:
        if offset >= len(packet):
            return None
        length = packet[offset]
        offset += 1
        if length == 0:
            break
        if length & 0xC0 or offset + length > len(packet):
            return None
        labels.append(packet[offset:offset + length].decode("ascii", "replace"))
        offset += length
    if offset + 4 > len(packet):
        return None
    qtype, qclass = struct.unpack("!HH", packet[offset:offset + 4])
    return Question(".".join(labels), qtype, qclass, offset + 4)


def _of_family(addresses: Sequence[str], family: int) -> list[bytes]:
    out = []
    for address in addresses:
        try:
            out.append(socket.inet_pton(family, address))
        except OSError:
            continue  # the other family
    return out


def answer(packet: bytes, question: Question, addresses: Sequence[str]) -> bytes:
    """A response to ``packet`` with A or AAAA records for those of ``addresses`` of the
    asked family (none for other types)."""
    family, size = _RECORDS.get(question.qtype, (0, 0))
    records = _of_family(addresses, family) if family else []
    rd = packet[2] & 0x01
    flags = 0x8400 | (rd << 8) | 0x0080  # QR, AA, RD as asked, RA
    header = packet[:2] + struct.pack("!HHHHH", flags, 1, len(records), 0, 0)
    body = packet[12:question.end]
    for packed in records:
        body += struct.pack("!HHHIH", 0xC00C, question.qtype, CLASS_IN, TTL, size)
        body += packed
    return header + body


def failure(packet: bytes, rcode: int = RCODE_SERVFAIL) -> bytes:
    if len(packet) < 12:
        return b""
    question = parse_question(packet)
    end = question.end if question is not None else 12
    qd = 1 if question is not None else 0
    rd = packet[2] & 0x01
    flags = 0x8080 | (rd << 8) | rcode
    return packet[:2] + struct.pack("!HHHHH", flags, qd, 0, 0, 0) + packet[12:end]


class Resolver:
    """Answers for every container; one pair of listening sockets per container."""

    def __init__(self, lookup: Lookup, upstreams: Callable[[str], list[str]]) -> None:
        self._lookup = lookup
        self._upstreams = upstreams
        self._servers: dict[str, tuple[asyncio.DatagramTransport, asyncio.Server]] = {}

    async def resolve(self, container_id: str, packet: bytes) -> bytes:
        question = parse_question(packet)
        if question is None:
            return failure(packet, 1)  # FORMERR
        if question.qclass == CLASS_IN:
            found = self._lookup(container_id, question.name.lower().rstrip("."))
            if found is not None:
                return answer(packet, question, found)
        return await self._forward(container_id, packet)

    async def _forward(self, container_id: str, packet: bytes) -> bytes:
        for server in self._upstreams(container_id):
            try:
                return await asyncio.wait_for(_ask_udp(server, packet), FORWARD_TIMEOUT)
            except (OSError, TimeoutError):
                continue
        return failure(packet)

    async def serve(self, container_id: str, netns: Path) -> None:
        """Listen at 127.0.0.11:53 inside ``netns`` for ``container_id``."""
        if container_id in self._servers:
            return
        udp, tcp = await asyncio.to_thread(bridge.in_netns, netns, _listening_sockets)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UDPProtocol(self, container_id), sock=udp
        )
        server = await asyncio.start_server(
            lambda r, w: self._tcp_client(container_id, r, w), sock=tcp
        )
        self._servers[container_id] = (transport, server)

    async def stop(self, container_id: str) -> None:
        entry = self._servers.pop(container_id, None)
        if entry is None:
            return
        transport, server = entry
        transport.close()
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()

    async def close(self) -> None:
        for container_id in list(self._servers):
            await self.stop(container_id)

    def serving(self) -> set[str]:
        return set(self._servers)

    async def _tcp_client(
        self, container_id: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                size = struct.unpack("!H", await reader.readexactly(2))[0]
                reply = await self.resolve(container_id, await reader.readexactly(size))
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def _listening_sockets() -> tuple[socket.socket, socket.socket]:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        for sock in (udp, tcp):
            sock.setblocking(False)
            sock.bind((RESOLVER_IP, 53))
        tcp.listen(64)
    except BaseException:
        udp.close()
        tcp.close()
        raise
    return udp, tcp


class _UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, resolver: Resolver, container_id: str) -> None:
        self._resolver = resolver
        self._container_id = container_id
        self._transport: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport does not subclass asyncio.DatagramTransport.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        task = asyncio.create_task(self._reply(data, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reply(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = await self._resolver.resolve(self._container_id, data)
        if reply and self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(reply, addr)


class _OneShot(asyncio.DatagramProtocol):
    def __init__(self, done: asyncio.Future[bytes]) -> None:
        self._done = done

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self._done.done():
            self._done.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self._done.done():
            self._done.set_exception(exc)


async def _ask_udp(server: str, packet: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes] = loop.create_future()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _OneShot(done), remote_addr=(server, 53)
    )
    try:
        transport.sendto(packet)
        return await done
    finally:
        transport.close()
