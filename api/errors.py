"""THE mapping from engine error categories to HTTP, and Docker-shaped JSON responses.

| category (engine.errors)        | status |
|---------------------------------|--------|
| NotFound                        | 404    |
| InvalidParameter                | 400    |
| pydantic ValidationError        | 400    |
| Conflict                        | 409    |
| NotModified                     | 304 (empty body) |
| Forbidden                       | 403    |
| Unauthorized                    | 401    |
| Unavailable                     | 503    |
| NotSupported                    | 501    |
| SystemError_, EngineError, any other exception | 500 (logged with traceback) |

Handlers never pick a status for an error: they raise, and the error middleware in
``api.app`` calls ``response_for_exception``. aiohttp's own HTTP exceptions (no route,
body too large, redirects) go through ``response_for_http_exception``.

Logging is for operators, as dockerd's: a 5xx is ours, logged at error level with its
traceback; a 4xx is the client's, one debug line ``Handler for GET /path returned error:
<status> <message>`` (the access log has the request line as well).

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

PAGE_NOT_FOUND = "page not found"


def status_for(exc: BaseException) -> int:
    if isinstance(exc, ValidationError):
        return 400
    for category in type(exc).__mro__:
        if category in STATUS_BY_CATEGORY:
            return STATUS_BY_CATEGORY[category]
    return 500


def json_bytes(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=json_bytes(data), status=status, content_type="application/json")


def error_response(status: int, message: str) -> web.Response:
    if status == 304:
        return web.Response(status=304)
    return json_response({"message": message}, status=status)


def response_for_exception(exc: BaseException, where: str = "") -> web.Response:
    """``where`` is ``"<METHOD> <path>"`` of the request, for the log line."""
    status = status_for(exc)
    if isinstance(exc, ValidationError):
        message = _validation_message(exc)
    else:
        message = str(exc) or type(exc).__name__
    log_failure(where, status, message, exc)
    return error_response(status, message)


def log_failure(where: str, status: int, message: str, exc: BaseException) -> None:
    """One line for a client's error, the traceback only for ours (5xx)."""
    subject = f"Handler for {where} returned error" if where else "request failed"
    if status >= 500:
        log.error("%s: %s", subject, message, exc_info=exc)
    else:
        log.debug("%s: %d %s", subject, status, message)


def response_for_http_exception(exc: web.HTTPException, where: str = "") -> web.Response:
    """aiohttp's exceptions, in Docker's shape.

    No route and wrong method are both ``404 page not found``, as dockerd answers both
    (its router sends method mismatches to the not-found handler). Redirects keep their
    ``Location`` and have no body.
    """
    if exc.status in (404, 405):
        return error_response(404, PAGE_NOT_FOUND)
    if 300 <= exc.status < 400:
        response = web.Response(status=exc.status)
        location = exc.headers.get("Location")
        if location is not None:
            response.headers["Location"] = location
        return response
    message = exc.text or exc.reason
    # aiohttp's default text is "<status>: <reason>"; the reason alone reads better.
    if message == f"{exc.status}: {exc.reason}":
        message = exc.reason
    log_failure(where, exc.status, message, exc)
    return error_response(exc.status, message)


def _validation_message(exc: ValidationError) -> str:
    details = exc.errors()
    if not details:
        return "invalid JSON"
    first = details[0]
    location = ".".join(str(part) for part in first.get("loc", ()))
    message = first.get("msg", "invalid value")
    return f"invalid JSON: {location}: {message}" if location else f"invalid JSON: {message}"
