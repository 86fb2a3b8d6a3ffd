"""A small BuildKit gRPC client for tests: ``POST /grpc`` on a daemon's socket, then
wharfd's own HTTP/2 gRPC client (engine.builder.buildkit.grpcwire) over it. For the
Control calls no installed client makes here (buildx is not on this machine: ``buildx
du``/``prune`` call DiskUsage and Prune).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from engine.builder.buildkit.grpcwire import GrpcClientConnection

T = TypeVar("T")
CONTROL = "/moby.buildkit.v1.Control/"


class _UnixStream:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self) -> bytes:
        return await self._reader.read(65536)

    async def write(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()


async def _with_control(socket: str, work: Callable[[GrpcClientConnection], Awaitable[T]]) -> T:
    reader, writer = await asyncio.open_unix_connection(socket)
    try:
        writer.write(b"POST /grpc HTTP/1.1\r\nHost: api.moby.localhost\r\nContent-Length: 0\r\n"
                     b"Connection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        conn = GrpcClientConnection(_UnixStream(reader, writer))
        await conn.start()
        try:
            return await work(conn)
        finally:
            await conn.aclose()
    finally:
        writer.close()


def unary(socket: str, method: str, request: bytes) -> bytes:
    """One unary Control call (raises GrpcError on a non-OK status)."""
    async def call(conn: GrpcClientConnection) -> bytes:
        return await conn.unary(CONTROL + method, request)
    return asyncio.run(_with_control(socket, call))


def server_stream(socket: str, method: str, request: bytes) -> list[bytes]:
    """A server-streaming Control call: every message until the OK status."""
    async def call(conn: GrpcClientConnection) -> list[bytes]:
        stream = await conn.open(CONTROL + method)
        await stream.send(request)
        await stream.done_sending()
        out = []
        while (message := await stream.receive()) is not None:
            out.append(message)
        return out
    return asyncio.run(_with_control(socket, call))
