"""A container's stdio as the engine sees it: one monitor connection, many attach sessions.

The daemon keeps exactly one connection to conmon's attach socket per running container.
Its output is fanned out to every attach session; stdin from sessions goes into it. Stdin
that arrives before the container runs is kept and delivered at start (``echo x | docker
run -i`` sends its input and EOF before it even calls start).

Sessions are handed to the engine as a ``StreamSet`` of async callables, so nothing here
knows about HTTP or sockets (architecture: the API owns the hijack).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from engine.runtime.base import AttachConnection

log = logging.getLogger(__name__)

STDOUT = 1
STDERR = 2
DRAIN_TIMEOUT = 5.0


@dataclass
class StreamSet:
    """One attach session's ends, provided by the API layer.

    ``write_output(stream, data)`` raises ``ConnectionError`` once the client is gone;
    ``read_stdin()`` returns b"" at the client's EOF (half-close); ``wait_closed()``
    returns once the client is gone for good (a half-close is not that).
    """

    write_output: Callable[[int, bytes], Awaitable[None]]
    read_stdin: Callable[[], Awaitable[bytes]] | None = None
    wait_closed: Callable[[], Awaitable[None]] | None = None
    stdout: bool = True
    stderr: bool = True
    detach_keys: bytes = b"\x10\x11"  # ctrl-p ctrl-q


@dataclass(eq=False)
class Session:
    streams: StreamSet
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def wants(self, stream: int) -> bool:
        return self.streams.stdout if stream == STDOUT else self.streams.stderr

    def end(self) -> None:
        self.done.set()


class ContainerIO:
    def __init__(self) -> None:
        self._sessions: set[Session] = set()
        self._conn: AttachConnection | None = None
        self._pump: asyncio.Task[None] | None = None
        self._pending_stdin: list[bytes] = []
        self._stdin_closed = False
        self._pending_close = False

    # --- sessions -------------------------------------------------------------------
    def add_session(self, streams: StreamSet) -> Session:
        session = Session(streams)
        self._sessions.add(session)
        return session

    def remove_session(self, session: Session) -> None:
        self._sessions.discard(session)
        session.end()

    def end_sessions(self) -> None:
        for session in list(self._sessions):
            self.remove_session(session)

    # --- the monitor connection -------------------------------------------------------
    async def connect(self, conn: AttachConnection) -> None:
        """Adopt a fresh connection to a (re)started container and deliver pending stdin."""
        self._conn = conn
        self._stdin_closed = False
        pending, self._pending_stdin = self._pending_stdin, []
        for chunk in pending:
            await conn.send(chunk)
        if self._pending_close:
            await self._close_conn_stdin()
        self._pump = asyncio.create_task(self._run_pump(conn), name="attach-pump")

    async def _run_pump(self, conn: AttachConnection) -> None:
        while True:
            try:
                item = await conn.recv()
            except OSError:
                item = None
            if item is None:
                return
            stream, data = item
            for session in list(self._sessions):
                if not session.wants(stream):
                    continue
                try:
                    await session.streams.write_output(stream, data)
                except (ConnectionError, OSError):
                    self.remove_session(session)

    async def drain(self) -> None:
        """Wait until the container's output is fully delivered (conmon closed the socket)."""
        pump = self._pump
        if pump is None:
            return
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(pump), DRAIN_TIMEOUT)

    def disconnect(self) -> None:
        """Drop the connection without touching the container (daemon shutdown)."""
        if self._pump is not None:
            self._pump.cancel()
            self._pump = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._pending_close = False

    async def finish_run(self) -> None:
        """After the container exited: deliver the last output, then end every session."""
        await self.drain()
        self.disconnect()
        self.end_sessions()

    # --- stdin ------------------------------------------------------------------------
    async def write_stdin(self, data: bytes) -> None:
        if self._conn is None:
            self._pending_stdin.append(data)
            return
        if not self._stdin_closed:
            await self._conn.send(data)

    async def close_stdin(self) -> None:
        if self._conn is None:
            self._pending_close = True
            return
        await self._close_conn_stdin()

    async def _close_conn_stdin(self) -> None:
        if self._conn is not None and not self._stdin_closed:
            self._stdin_closed = True
            self._pending_close = False
            with contextlib.suppress(OSError):
                await self._conn.close_stdin()
