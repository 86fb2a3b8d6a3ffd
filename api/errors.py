"""THE mapping from engine error categories to HTTP, and Docker-shaped JSON responses.

The Go client compares ``Content-Type`` for equality with ``application/json``, so every
JSON body here is built from bytes (aiohttp appends ``; charset=utf-8`` to ``text=``).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from engine import errors

log = logging.getLogger(__name__)

STATUS_BY_CATEGORY: dict[type[errors.EngineError], int] = {
    errors.NotFound: 404,
    errors.InvalidParameter: 400,
    errors.Conflict: 409,
    errors.NotModified: 304,
    errors.Forbidden: 403,
    errors.Unauthorized: 401,
    errors.Unavailable: 503,
    errors.NotSupported: 501,
    errors.SystemError_: 500,
}


def status_for(exc: BaseException) -> int:
    if isinstance(exc, ValidationError):
        return 400
    for category in type(exc).__mro__:
        if category in STATUS_BY_CATEGORY:
            return STATUS_BY_CATEGORY[category]  # type: ignore[index]
    return 500


def json_bytes(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=json_bytes(data), status=status, content_type="application/json")


def error_response(status: int, message: str) -> web.Response:
    if status == 304:
        return web.Response(status=304)
    return json_response({"message": message}, status=status)


def response_for_exception(exc: BaseException) -> web.Response:
    status = status_for(exc)
    if status >= 500:
        log.error("request failed: %s", exc, exc_info=exc)
    if isinstance(exc, ValidationError):
        message = _validation_message(exc)
    else:
        message = str(exc)
    return error_response(status, message)


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    location = ".".join(str(part) for part in first.get("loc", ()))
    return f"invalid JSON: {location}: {first.get('msg', 'invalid value')}"
