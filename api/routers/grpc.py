"""BuildKit's upgrades: ``POST /grpc`` (wharfd serves Control and LLBBridge over HTTP/2)
and ``POST /session`` (wharfd calls the client's FileSync/Auth/Secrets over HTTP/2).

Both answer dockerd's bare ``101 Switching Protocols`` with ``Upgrade: h2c`` and then
speak prior-knowledge HTTP/2 on the hijacked socket (buildkit-notes §4). Malformed
upgrades get dockerd's errors: 500 on ``/grpc``, 400 on ``/session``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from aiohttp import web

from api.streams import hijack_h2c, hijacked_response
from engine.builder.buildkit.grpcwire import ByteStream
from engine.errors import InvalidParameter, SystemError_

log = logging.getLogger(__name__)

SESSION_UUID = "X-Docker-Expose-Session-Uuid"
SESSION_SHAREDKEY = "X-Docker-Expose-Session-Sharedkey"
SESSION_METHOD = "X-Docker-Expose-Session-Grpc-Method"


class GrpcBackend(Protocol):
    async def serve_grpc(self, io: ByteStream) -> None: ...
    def check_session(self, session_id: str) -> None: ...
    async def serve_session(self, io: ByteStream, session_id: str, shared_key: str,
                            methods: Sequence[str]) -> None: ...


BACKEND: web.AppKey[GrpcBackend] = web.AppKey("grpc", GrpcBackend)
routes = web.RouteTableDef()


def _upgrade_problem(request: web.Request) -> str | None:
    upgrade = request.headers.get("Upgrade", "")
    if not upgrade:
        return "no upgrade proto in request"
    if upgrade.lower() != "h2c":
        return f"protocol {upgrade} not supported"
    return None


@routes.post("/grpc")
async def post_grpc(request: web.Request) -> web.StreamResponse:
    problem = _upgrade_problem(request)
    if problem:
        raise SystemError_(problem)
    io = await hijack_h2c(request)
    try:
        await request.app[BACKEND].serve_grpc(io)
    finally:
        await io.finish()
    return hijacked_response()


@routes.post("/session")
async def post_session(request: web.Request) -> web.StreamResponse:
    problem = _upgrade_problem(request)
    if problem:
        raise InvalidParameter(problem)
    backend = request.app[BACKEND]
    session_id = request.headers.get(SESSION_UUID, "")
    backend.check_session(session_id)
    methods = [m.strip() for value in request.headers.getall(SESSION_METHOD, [])
               for m in value.split(",") if m.strip()]
    io = await hijack_h2c(request)
    try:
        await backend.serve_session(io, session_id,
                                    request.headers.get(SESSION_SHAREDKEY, ""), methods)
    finally:
        await io.finish()
    return hijacked_response()
