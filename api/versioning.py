"""API versions: what we claim, what we accept, and the headers every response carries.

We implement API 1.50 semantics and accept every path prefix from ``/v1.24/`` to
``/v1.50/`` plus unversioned paths (docker-py's first request is an unversioned
``GET /version``). Out-of-range versions get dockerd's 400 messages. Only matched routes
are checked, as in dockerd: an unknown path stays a 404 whatever its prefix.

A route that needs a newer client declares it with ``@min_api_version("1.4x")``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler

from engine.errors import InvalidParameter
from engine.system.info import ENGINE_VERSION

API_VERSION = "1.50"
MIN_API_VERSION = "1.24"
MAX_VERSION: tuple[int, int] = (1, 50)
MIN_VERSION: tuple[int, int] = (1, 24)

# dockerd's matcher is /v{version:[0-9.]+}: /v1/_ping is a version error, not a 404.
VERSION_PATTERN = r"[0-9.]+"
VERSION_PREFIX = "/v{version:" + VERSION_PATTERN + "}"
_PREFIX_RE = re.compile(r"^/v(" + VERSION_PATTERN + r")(?=/|$)")

REQUEST_VERSION = web.RequestKey("api_version", tuple[int, int])
EXPERIMENTAL = web.AppKey("experimental", bool)

_MIN_VERSION_ATTR = "__wharfd_min_api_version__"

H = TypeVar("H", bound=Callable[..., object])


def compare_versions(left: str, right: str) -> int:
    """moby's versions.compare: dotted numeric, missing parts are 0, junk parts are 0."""
    lparts, rparts = left.split("."), right.split(".")
    for index in range(max(len(lparts), len(rparts))):
        lnum = _part(lparts, index)
        rnum = _part(rparts, index)
        if lnum != rnum:
            return 1 if lnum > rnum else -1
    return 0


def _part(parts: list[str], index: int) -> int:
    if index >= len(parts):
        return 0
    return int(parts[index]) if parts[index].isdigit() else 0


def parse_version(raw: str) -> tuple[int, int]:
    parts = raw.split(".")
    return (_part(parts, 0), _part(parts, 1))


def check_version(raw: str) -> tuple[int, int]:
    """The requested version as (major, minor), or InvalidParameter with dockerd's text."""
    if compare_versions(raw, API_VERSION) > 0:
        raise InvalidParameter(
            f"client version {raw} is too new. Maximum supported API version is {API_VERSION}"
        )
    if compare_versions(raw, MIN_API_VERSION) < 0:
        raise InvalidParameter(
            f"client version {raw} is too old. Minimum supported API version is "
            f"{MIN_API_VERSION}, please upgrade your client to a newer version"
        )
    return parse_version(raw)


def version_in_path(path: str) -> str | None:
    match = _PREFIX_RE.match(path)
    return match.group(1) if match else None


def request_version(request: web.Request) -> tuple[int, int]:
    """The API version of this request (unversioned paths are the newest version)."""
    version: tuple[int, int] = request.get(REQUEST_VERSION, MAX_VERSION)
    return version


def min_api_version(version: str) -> Callable[[H], H]:
    """Mark a handler as existing only from ``version`` on (dockerd's WithMinimumAPIVersion)."""

    def mark(handler: H) -> H:
        setattr(handler, _MIN_VERSION_ATTR, version)
        return handler

    return mark


def handler_min_version(handler: object) -> str | None:
    value = getattr(handler, _MIN_VERSION_ATTR, None)
    return value if isinstance(value, str) else None


def server_header() -> str:
    return f"Docker/{ENGINE_VERSION} (linux)"


def common_headers(request: web.Request | None = None) -> dict[str, str]:
    """Headers every response carries, for code that writes raw bytes (hijack, 101)."""
    experimental = bool(request.app.get(EXPERIMENTAL, False)) if request is not None else False
    return {
        "Api-Version": API_VERSION,
        "Server": server_header(),
        "Ostype": "linux",
        "Docker-Experimental": "true" if experimental else "false",
    }


@web.middleware
async def version_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Reject out-of-range versions on matched routes; record the version on the request."""
    raw = version_in_path(request.path)
    matched = request.match_info.http_exception is None
    if raw is not None and matched:
        version = check_version(raw)
        request[REQUEST_VERSION] = version
        needed = handler_min_version(request.match_info.handler)
        if needed is not None and compare_versions(raw, needed) < 0:
            route = request.match_info.route.resource
            template = route.canonical if route is not None else request.path
            # canonical is "/v{version}/..." for the versioned copy of the route
            template = template.removeprefix("/v{version}")
            raise InvalidParameter(
                f"{request.method} {template} requires minimum API version {needed}"
            )
    return await handler(request)


async def add_common_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare hook: runs for every response, streamed ones included.

    aiohttp has already set its own ``Server`` header by then, so assign, never setdefault.
    """
    response.headers.update(common_headers(request))
