"""``GET /containers/{id}/attach/ws``: attach over a websocket, as dockerd does.

dockerd (container_routes.go ``wsContainersAttach``) serves this with x/net/websocket:

* output is never multiplexed (the websocket keeps the streams apart, dockerd says):
  each chunk the container prints is one frame, raw, stdout and stderr alike;
* frames are binary from API 1.28 on, text before;
* ``stdin``/``stdout``/``stderr`` count from API 1.42 on; before, all three are on;
* ``logs`` replays the log first, ``stream`` follows live output; ``detachKeys`` as
  for the hijacked attach;
* what the client sends (text or binary frames) is the container's stdin; its close
  frame (or its going away) ends the session, not the container.

Errors before the upgrade (no such container, bad detach keys) are plain HTTP errors.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from aiohttp import WSMsgType, web

from api.routers.attach_session import AttachChoice, AttachSessionBackend, run_attach_session
from api.versioning import request_version
from engine.containers.model import ContainerView

BINARY_FROM = (1, 28)
STREAM_CHOICE_FROM = (1, 42)


class AttachBackend(AttachSessionBackend, Protocol):
    def get(self, ref: str) -> ContainerView: ...


BACKEND: web.AppKey[AttachBackend] = web.AppKey("attach_ws", AttachBackend)
routes = web.RouteTableDef()


class _ClientSide:
    """The one reader of the websocket: stdin chunks in a queue, b"" at the end."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self._ws = ws
        self._stdin: asyncio.Queue[bytes] = asyncio.Queue()
        self.gone = asyncio.Event()

    async def run(self) -> None:
        try:
            async for message in self._ws:
                if message.type == WSMsgType.BINARY:
                    self._stdin.put_nowait(message.data)
                elif message.type == WSMsgType.TEXT:
                    self._stdin.put_nowait(message.data.encode())
        finally:
            self._stdin.put_nowait(b"")
            self.gone.set()

    async def read_stdin(self) -> bytes:
        return await self._stdin.get()


@routes.get("/containers/{name}/attach/ws")
async def get_containers_attach_ws(request: web.Request) -> web.WebSocketResponse:
    backend = request.app[BACKEND]
    view = backend.get(request.match_info["name"])
    version = request_version(request)
    choice = AttachChoice.from_query(request, streams_chosen=version >= STREAM_CHOICE_FROM)
    binary = version >= BINARY_FROM

    ws = web.WebSocketResponse()
    await ws.prepare(request)
    client = _ClientSide(ws)
    reader = asyncio.ensure_future(client.run())

    async def write_output(_stream_id: int, data: bytes) -> None:
        if ws.closed or client.gone.is_set():
            raise ConnectionResetError("websocket closed")
        if binary:
            await ws.send_bytes(data)
        else:
            await ws.send_str(data.decode("utf-8", "replace"))

    try:
        await run_attach_session(
            request, backend, view.id, choice, write_output=write_output,
            read_stdin=client.read_stdin, client_gone=client.gone.wait,
        )
    finally:
        with contextlib.suppress(ConnectionError, OSError):
            await ws.close()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    return ws
