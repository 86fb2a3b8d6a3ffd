"""Exec router: create, start (hijacked or detached), resize, inspect.

``start`` checks what would refuse it (404, 409) before hijacking, so those are ordinary
JSON errors. After the 101 the engine relays the process's I/O; an error from then on is
written into the stream as text, as dockerd does. The engine records the exit code before
``start`` returns, and only then is the connection closed: the CLI asks
``GET /exec/{id}/json`` for it as soon as the stream ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from aiohttp import web

from api import lifecycle, params
from api.errors import json_response
from api.models.execs import check_exec_create, check_exec_start
from api.streams import MULTIPLEXED, RAW_STREAM, frame, hijack, hijacked_response
from api.versioning import request_version
from engine.containers.exec import console_size
from engine.containers.streams import STDOUT, StreamSet
from engine.errors import EngineError


class ExecBackend(Protocol):
    def create(self, container_ref: str, body: Mapping[str, Any]) -> str: ...
    def check_start(self, exec_id: str) -> object: ...
    async def start(
        self,
        exec_id: str,
        streams: StreamSet | None,
        *,
        detach: bool = False,
        tty: bool | None = None,
        size: tuple[int, int] | None = None,
    ) -> None: ...
    async def resize(self, exec_id: str, height: int, width: int) -> None: ...
    def inspect(self, exec_id: str) -> dict[str, Any]: ...


BACKEND: web.AppKey[ExecBackend] = web.AppKey("exec", ExecBackend)
routes = web.RouteTableDef()

# ConsoleSize exists from API 1.42; older clients' values are ignored (as dockerd does).
_CONSOLE_SIZE_SINCE = (1, 42)
_MULTIPLEXED_TYPE_SINCE = (1, 42)


def _backend(request: web.Request) -> ExecBackend:
    return request.app[BACKEND]


@routes.post("/containers/{name}/exec")
async def post_containers_exec(request: web.Request) -> web.Response:
    body = check_exec_create(await params.read_json(request))
    if request_version(request) < _CONSOLE_SIZE_SINCE:
        body.pop("ConsoleSize", None)
    exec_id = _backend(request).create(request.match_info["name"], body)
    return json_response({"Id": exec_id}, status=201)


@routes.post("/exec/{id}/start")
async def post_exec_start(request: web.Request) -> web.StreamResponse:
    backend = _backend(request)
    exec_id = request.match_info["id"]
    body = check_exec_start(await params.read_json(request))
    detach = bool(body.get("Detach"))
    tty = bool(body.get("Tty"))
    size = None
    if request_version(request) >= _CONSOLE_SIZE_SINCE:
        size = console_size(body.get("ConsoleSize"))
    backend.check_start(exec_id)
    if detach:
        await backend.start(exec_id, None, detach=True, tty=tty, size=size)
        return web.Response(status=200)
    # The start body's Tty decides the framing (as in dockerd); the media type also
    # depends on the version: below 1.42 it says raw-stream even for framed output.
    raw_type = tty or request_version(request) < _MULTIPLEXED_TYPE_SINCE
    connection = await hijack(request, RAW_STREAM if raw_type else MULTIPLEXED)

    async def write_output(stream_id: int, data: bytes) -> None:
        await connection.write(data if tty else frame(stream_id, data))

    streams = StreamSet(
        write_output=write_output,
        read_stdin=connection.read,
        wait_closed=connection.wait_closed,
    )
    run = asyncio.ensure_future(
        backend.start(exec_id, streams, detach=False, tty=tty, size=size)
    )
    try:
        await _until_done_or_shutdown(run, lifecycle.shutting_down(request.app))
        await _report_failure(run, write_output)
    finally:
        await connection.finish()
    return hijacked_response()


async def _until_done_or_shutdown(run: asyncio.Future[None], shutdown: asyncio.Event) -> None:
    """Wait for the session; a daemon shutdown ends it (the process keeps running)."""
    stop: asyncio.Future[Any] = asyncio.ensure_future(shutdown.wait())
    try:
        await asyncio.wait([run, stop], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
    if not run.done():
        run.cancel()
        await asyncio.wait({run})


async def _report_failure(
    run: asyncio.Future[None], write_output: Callable[[int, bytes], Awaitable[None]]
) -> None:
    """An error after the 101 can only travel in the stream: as text on stdout."""
    if run.cancelled():
        return
    exc = run.exception()
    if exc is None:
        return
    if not isinstance(exc, EngineError | ConnectionError | OSError):
        raise exc
    if isinstance(exc, EngineError):
        with contextlib.suppress(ConnectionError, OSError):
            await write_output(STDOUT, (exc.message + "\r\n").encode())


@routes.post("/exec/{id}/resize")
async def post_exec_resize(request: web.Request) -> web.Response:
    height = params.int_param(request, "h", 0) or 0
    width = params.int_param(request, "w", 0) or 0
    await _backend(request).resize(request.match_info["id"], height, width)
    return web.Response(status=200)


@routes.get("/exec/{id}/json")
async def get_exec_json(request: web.Request) -> web.Response:
    return json_response(_backend(request).inspect(request.match_info["id"]))
