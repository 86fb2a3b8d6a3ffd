"""Bounded byte pipes between worker threads and between a thread and the event loop.

Image work is a pipeline (network → hash + blob file → decompress → untar, or file →
compress → network): each stage runs where it belongs (sockets on the loop, hashing and
file I/O in threads) and the stages overlap, because hashlib, zlib and os.write release
the GIL. ``engine.images.unpack.ChunkPipe`` carries bytes from the loop into a thread;
``ThreadPipe`` carries them from one thread to another and ``LoopQueue`` from a thread
back to the loop. Every pipe is bounded so a fast producer cannot fill memory.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, TypeVar

from engine.errors import InvalidParameter

DEFAULT_BUFFER = 8 << 20
T = TypeVar("T")


class PipeClosed(InvalidParameter):
    """The other end of a pipe went away (the stage failed or was abandoned)."""


class ThreadPipe:
    """Thread → thread. ``write`` blocks while ``max_buffered`` bytes wait; ``read``
    blocks until data, EOF (``close``) or a failure (``fail``)."""

    def __init__(self, max_buffered: int = DEFAULT_BUFFER) -> None:
        self._max = max_buffered
        self._cond = threading.Condition()
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._eof = False
        self._error: BaseException | None = None
        self._reader_gone = False

    # -- producer --------------------------------------------------------------------
    def write(self, data: bytes) -> bool:
        """Queue ``data``; False when the reader has gone (the producer may stop)."""
        if not data:
            return not self._reader_gone
        with self._cond:
            while self._buffered >= self._max and not self._reader_gone:
                self._cond.wait()
            if self._reader_gone:
                return False
            self._chunks.append(bytes(data))
            self._buffered += len(data)
            self._cond.notify_all()
            return True

    def close(self) -> None:
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        with self._cond:
            if self._error is None:
                self._error = exc
            self._cond.notify_all()

    @property
    def reader_gone(self) -> bool:
        return self._reader_gone

    # -- consumer --------------------------------------------------------------------
    def read(self, n: int = -1, /) -> bytes:
        with self._cond:
            while not self._chunks and not self._eof and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise PipeClosed(f"input failed: {self._error}")
            if not self._chunks:
                return b""
            chunk = self._chunks.popleft()
            if 0 <= n < len(chunk):
                self._chunks.appendleft(chunk[n:])
                chunk = chunk[:n]
            self._buffered -= len(chunk)
            self._cond.notify_all()
            return chunk

    def close_reader(self) -> None:
        """The consumer is done (or failed): release a producer blocked in ``write``."""
        with self._cond:
            self._reader_gone = True
            self._chunks.clear()
            self._buffered = 0
            self._cond.notify_all()


class LoopQueue:
    """Thread → event loop. The thread ``put``s (blocking when full), the loop ``get``s
    (b"" at the end; the producer's failure is raised there)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_buffered: int = DEFAULT_BUFFER) -> None:
        self._loop = loop
        self._max = max_buffered
        self._cond = threading.Condition()
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._eof = False
        self._error: BaseException | None = None
        self._consumer_gone = False
        self._ready = asyncio.Event()

    def _wake(self) -> None:
        self._loop.call_soon_threadsafe(self._ready.set)

    # -- producer (a worker thread) ------------------------------------------------------
    def put(self, data: bytes) -> None:
        """Queue ``data``; raises PipeClosed when the consumer went away."""
        if not data:
            return  # b"" is how the loop side sees the end: never queue it
        with self._cond:
            while self._buffered >= self._max and not self._consumer_gone:
                self._cond.wait()
            if self._consumer_gone:
                raise PipeClosed("the receiving side went away")
            self._chunks.append(bytes(data))
            self._buffered += len(data)
        self._wake()

    def close(self) -> None:
        with self._cond:
            self._eof = True
        self._wake()

    def fail(self, exc: BaseException) -> None:
        with self._cond:
            if self._error is None:
                self._error = exc
        self._wake()

    # -- consumer (the event loop) --------------------------------------------------------
    async def get(self) -> bytes:
        while True:
            with self._cond:
                if self._chunks:
                    chunk = self._chunks.popleft()
                    self._buffered -= len(chunk)
                    self._cond.notify_all()
                    return chunk
                if self._error is not None:
                    raise self._error
                if self._eof:
                    return b""
                self._ready.clear()
            await self._ready.wait()

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            chunk = await self.get()
            if not chunk:
                return
            yield chunk

    def close_consumer(self) -> None:
        """The loop side stopped reading: a producer blocked in ``put`` raises."""
        with self._cond:
            self._consumer_gone = True
            self._chunks.clear()
            self._buffered = 0
            self._cond.notify_all()


class ThreadJob(Generic[T]):
    """``fn(*args)`` on a thread of its own (long streaming work must not occupy the
    loop's shared executor for minutes). ``result()`` awaits it; after a failure or a
    cancellation elsewhere, ``settle()`` waits for the thread to leave before the
    caller cleans up what it was writing to."""

    def __init__(self, fn: Callable[..., T], *args: Any, name: str = "wharfd-image") -> None:
        loop = asyncio.get_running_loop()
        self._future: asyncio.Future[T] = loop.create_future()
        self._done = threading.Event()

        def run() -> None:
            try:
                value = fn(*args)
            except BaseException as exc:  # handed over to the awaiting task
                self._done.set()
                loop.call_soon_threadsafe(_set_exception, self._future, exc)
            else:
                self._done.set()
                loop.call_soon_threadsafe(_set_result, self._future, value)

        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()

    async def result(self) -> T:
        return await asyncio.shield(self._future)

    async def settle(self) -> None:
        """Wait until the thread has returned, whatever happens to the caller."""
        if not self._future.done():
            await asyncio.wait({self._future})
        if not self._future.cancelled():
            self._future.exception()  # retrieved: reported by result() or not at all


def _set_result(future: asyncio.Future[T], value: T) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
