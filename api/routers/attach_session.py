"""One attach session, whichever connection carries it.

``POST /containers/{id}/attach`` (a hijacked HTTP connection) and
``GET /containers/{id}/attach/ws`` (a websocket) differ only in how bytes reach the
client and how its going away is noticed. What the session does is the same: follow
live output when ``stream`` is set (replaying the log first with ``logs``), only replay
the log with ``logs`` alone, and end quietly when the client leaves or the daemon shuts
down, the container carrying on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from api import lifecycle, params
from engine.containers import detachkeys
from engine.containers.logs import LogRecord
from engine.containers.streams import StreamSet

WriteOutput = Callable[[int, bytes], Awaitable[None]]


class AttachSessionBackend(Protocol):
    async def attach(
        self, ref: str, streams: StreamSet, *, use_stdin: bool, logs: bool = False
    ) -> None: ...
    def logs(
        self, ref: str, *, stdout: bool = True, stderr: bool = True, since_nano: int | None = None,
        until_nano: int | None = None, tail: int | None = None, follow: bool = False,
    ) -> AsyncIterator[LogRecord]: ...


@dataclass(frozen=True)
class AttachChoice:
    """What the client asked of the session (the attach query parameters)."""

    stdin: bool
    stdout: bool
    stderr: bool
    logs: bool
    stream: bool
    detach_keys: bytes

    @classmethod
    def from_query(cls, request: web.Request, *, streams_chosen: bool = True) -> AttachChoice:
        """``streams_chosen=False``: the API version ignores stdin/stdout/stderr (all on)."""
        every_stream = not streams_chosen
        return cls(
            stdin=every_stream or params.bool_param(request, "stdin"),
            stdout=every_stream or params.bool_param(request, "stdout"),
            stderr=every_stream or params.bool_param(request, "stderr"),
            logs=params.bool_param(request, "logs"),
            stream=params.bool_param(request, "stream"),
            detach_keys=detachkeys.parse(request.query.get("detachKeys") or None),
        )


async def run_attach_session(
    request: web.Request,
    backend: AttachSessionBackend,
    container_id: str,
    choice: AttachChoice,
    *,
    write_output: WriteOutput,
    read_stdin: Callable[[], Awaitable[bytes]],
    client_gone: Callable[[], Awaitable[object]],
) -> None:
    """Serve the session until it ends; a client that went away ends it without error."""
    shutting_down = lifecycle.shutting_down(request.app)

    async def client_gone_or_shutdown() -> None:
        await lifecycle.first_of([shutting_down], client_gone())

    streams = StreamSet(
        write_output=write_output,
        read_stdin=read_stdin if choice.stdin else None,
        wait_closed=client_gone_or_shutdown,
        stdout=choice.stdout,
        stderr=choice.stderr,
        detach_keys=choice.detach_keys,
    )
    try:
        if choice.stream:
            await backend.attach(container_id, streams, use_stdin=choice.stdin, logs=choice.logs)
        elif choice.logs:
            records = backend.logs(container_id, stdout=choice.stdout, stderr=choice.stderr)
            async for record in records:
                await write_output(record.stream, record.data)
    except (ConnectionError, OSError):
        pass  # the client went away: the session ends, the container carries on
