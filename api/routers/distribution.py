"""Distribution router: ``GET /distribution/{name}/json`` (what a registry holds under a
name: the manifest's descriptor and its platforms; used by compose and ``docker
manifest``/``buildx imagetools``-style clients)."""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web

from api.errors import json_response
from engine.images.auth import AuthConfig, decode_registry_auth


class DistributionBackend(Protocol):
    async def distribution_inspect(self, name: str, auth: AuthConfig) -> dict[str, Any]: ...


BACKEND: web.AppKey[DistributionBackend] = web.AppKey("distribution", DistributionBackend)
routes = web.RouteTableDef()


@routes.get("/distribution/{name:.*}/json")
async def get_distribution_json(request: web.Request) -> web.Response:
    auth = decode_registry_auth(request.headers.get("X-Registry-Auth"))
    body = await request.app[BACKEND].distribution_inspect(request.match_info["name"], auth)
    return json_response(body)
