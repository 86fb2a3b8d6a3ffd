"""ContainerIO: pre-start stdin, fan-out, drain and session ends, with a fake connection."""

from __future__ import annotations

import asyncio

import pytest

from engine.containers.streams import ContainerIO, StreamSet


class FakeConn:
    def __init__(self) -> None:
        self.output: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue()
        self.stdin: list[bytes] = []
        self.stdin_closed = False
        self.closed = False

    async def recv(self) -> tuple[int, bytes] | None:
        return await self.output.get()

    async def send(self, data: bytes) -> None:
        self.stdin.append(data)

    async def close_stdin(self) -> None:
        self.stdin_closed = True

    def close(self) -> None:
        self.closed = True


@pytest.mark.asyncio
async def test_stdin_before_start_is_delivered_then_closed() -> None:
    io = ContainerIO()
    await io.write_stdin(b"line1\n")
    await io.close_stdin()
    conn = FakeConn()
    await io.connect(conn)
    assert conn.stdin == [b"line1\n"]
    assert conn.stdin_closed
    conn.output.put_nowait(None)
    await io.finish_run()


@pytest.mark.asyncio
async def test_output_fans_out_and_sessions_end_after_drain() -> None:
    io = ContainerIO()
    got: dict[str, list[tuple[int, bytes]]] = {"a": [], "b": []}

    def writer(key: str):  # type: ignore[no-untyped-def]
        async def write(stream: int, data: bytes) -> None:
            got[key].append((stream, data))
        return write

    a = io.add_session(StreamSet(write_output=writer("a")))
    b = io.add_session(StreamSet(write_output=writer("b"), stdout=False))
    conn = FakeConn()
    await io.connect(conn)
    conn.output.put_nowait((1, b"out"))
    conn.output.put_nowait((2, b"err"))
    conn.output.put_nowait(None)
    await io.finish_run()
    assert got["a"] == [(1, b"out"), (2, b"err")]
    assert got["b"] == [(2, b"err")]
    assert a.done.is_set() and b.done.is_set()
    assert conn.closed


@pytest.mark.asyncio
async def test_a_failing_client_is_dropped_without_stopping_others() -> None:
    io = ContainerIO()
    received: list[bytes] = []

    async def broken(stream: int, data: bytes) -> None:
        raise ConnectionResetError

    async def good(stream: int, data: bytes) -> None:
        received.append(data)

    bad = io.add_session(StreamSet(write_output=broken))
    io.add_session(StreamSet(write_output=good))
    conn = FakeConn()
    await io.connect(conn)
    conn.output.put_nowait((1, b"x"))
    conn.output.put_nowait((1, b"y"))
    conn.output.put_nowait(None)
    await io.finish_run()
    assert bad.done.is_set()
    assert received == [b"x", b"y"]
