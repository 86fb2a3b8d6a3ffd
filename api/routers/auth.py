"""Auth router: ``POST /auth`` (``docker login``): check credentials against the
registry they name (api-notes §3.14). Success is ``200 {"Status":"Login Succeeded",
"IdentityToken":…}``; wrong credentials are a 401 with the registry's verdict. The
credentials are never logged nor repeated in a message."""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from api import params
from api.errors import json_response
from api.models.auth import check_auth_body
from engine.images.auth import AuthConfig, auth_from_object


class AuthBackend(Protocol):
    async def login(self, auth: AuthConfig) -> str: ...


BACKEND: web.AppKey[AuthBackend] = web.AppKey("auth", AuthBackend)
routes = web.RouteTableDef()


@routes.post("/auth")
async def post_auth(request: web.Request) -> web.Response:
    body = check_auth_body(await params.read_json(request))
    token = await request.app[BACKEND].login(auth_from_object(body))
    return json_response({"Status": "Login Succeeded", "IdentityToken": token})
