"""Stream mechanics of the Docker API: hijacked connections and stdcopy frames.

aiohttp recognises ``Upgrade: tcp`` but closes the whole transport when the client
half-closes (its protocol's ``eof_received`` returns None). The Docker CLI half-closes
an attach connection right after the 101 when it has no stdin, and expects output to keep
flowing. So a hijacked connection gets a protocol of our own whose ``eof_received``
returns True; aiohttp's protocol is told about the end only once we are done with it.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque

from aiohttp import web

from api.versioning import common_headers

MULTIPLEXED = "application/vnd.docker.multiplexed-stream"
RAW_STREAM = "application/vnd.docker.raw-stream"
_READ_HIGH_WATER = 4 * 1024 * 1024
_FRAME_HEADER = struct.Struct(">BxxxL")


def frame(stream: int, data: bytes) -> bytes:
    """One stdcopy frame: stream byte, three zero bytes, big-endian length, payload."""
    return _FRAME_HEADER.pack(stream, len(data)) + data


class _HijackProtocol(asyncio.Protocol):
    def __init__(self, transport: asyncio.Transport, original: asyncio.BaseProtocol) -> None:
        self._transport = transport
        self._original = original
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._gone = asyncio.Event()
        self.eof = False
        self.lost = False
        self.released = False
        self._lost_exc: Exception | None = None

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        self._readable.set()
        if self._buffered > _READ_HIGH_WATER:
            self._transport.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        self._readable.set()
        return True  # keep the transport open: the client only closed its writing side

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.eof = True
        self._lost_exc = exc
        self._gone.set()
        self._readable.set()
        self._writable.set()
        if self.released:
            self._original.connection_lost(exc)

    async def read(self) -> bytes:
        while not self._chunks:
            if self.eof:
                return b""
            self._readable.clear()
            await self._readable.wait()
        data = self._chunks.popleft()
        self._buffered -= len(data)
        if self._buffered <= _READ_HIGH_WATER // 2 and not self.lost:
            self._transport.resume_reading()
        return data

    async def wait_writable(self) -> None:
        await self._writable.wait()

    async def wait_lost(self) -> None:
        await self._gone.wait()


class HijackedConnection:
    """The raw client connection after the 101: read stdin, write output, then finish."""

    def __init__(self, transport: asyncio.Transport, protocol: _HijackProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    @property
    def closed(self) -> bool:
        return self._protocol.lost or self._transport.is_closing()

    async def read(self) -> bytes:
        """Next bytes from the client; b"" once it half-closed or went away."""
        return await self._protocol.read()

    async def wait_closed(self) -> None:
        """Return once the client has gone away entirely (not on a half-close)."""
        await self._protocol.wait_lost()

    async def write(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionResetError("client connection closed")
        self._transport.write(data)
        if self._transport.get_write_buffer_size() > 0:
            await self._protocol.wait_writable()
            if self._protocol.lost:
                raise ConnectionResetError("client connection closed")

    async def finish(self) -> None:
        """Flush, send EOF, close; then hand the end of the connection back to aiohttp."""
        if not self._protocol.lost:
            await self._protocol.wait_writable()
            if self._transport.can_write_eof():
                self._transport.write_eof()
            self._transport.close()
        self._protocol.released = True
        if self._protocol.lost:
            self._protocol._original.connection_lost(None)


def _take_over(request: web.Request) -> HijackedConnection:
    """Swap aiohttp's protocol for ours on the request's connection; bytes aiohttp had
    already read past the request are handed on, not lost."""
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("client connection closed")
    original = transport.get_protocol()
    protocol = _HijackProtocol(transport, original)
    transport.set_protocol(protocol)
    leftover = request.content.read_nowait() if not request.content.at_eof() else b""
    if leftover:
        protocol.data_received(leftover)
    return HijackedConnection(transport, protocol)


async def hijack(request: web.Request, content_type: str) -> HijackedConnection:
    """Take the connection over from aiohttp and send the 101 (or 200 for old clients).

    The status line and headers are written on their own and drained before any stream
    data: docker-py reads the stream from the raw socket under http.client's buffer and
    loses bytes that arrive together with the headers.
    """
    connection = _take_over(request)
    upgrade = request.headers.get("Upgrade", "").lower() == "tcp"
    if upgrade:
        head = ["HTTP/1.1 101 UPGRADED", f"Content-Type: {content_type}",
                "Connection: Upgrade", "Upgrade: tcp"]
    else:
        head = ["HTTP/1.1 200 OK", f"Content-Type: {content_type}"]
    head += [f"{name}: {value}" for name, value in common_headers().items()]
    await connection.write(("\r\n".join(head) + "\r\n\r\n").encode())
    await asyncio.sleep(0)
    return connection


async def hijack_h2c(request: web.Request) -> HijackedConnection:
    """Take the connection over for BuildKit's HTTP/2 (``/grpc``, ``/session``) and send
    dockerd's exact 101: no other headers (buildkit-notes §4.2)."""
    connection = _take_over(request)
    await connection.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                           b"Upgrade: h2c\r\n\r\n")
    return connection


def hijacked_response() -> web.Response:
    """What a hijacking handler returns to aiohttp once the connection is finished.

    The transport is closed by then, so nothing of it reaches the client.
    """
    return web.Response(status=101)
