"""``docker import <url>`` (``POST /images/create?fromSrc=<url>``): the tar from a URL.

As dockerd (daemon/images/image_import.go, remotecontext.GetWithStatusError): a source
without a scheme is taken as ``http://``; the GET happens before anything is answered,
so its failure is a plain HTTP error: the server's 404 is a 404, 400 a 400, 401 a 401,
403 a 403, anything else from it a 500 with ``failed to GET <url> with status <status>:
<body>``; a name that does not resolve is a 404, any other connection failure a 500.
The body then streams into the import (any compression the import reads).

Blocking urllib in worker threads, as the builder's ``ADD <url>``: ``engine`` uses
aiohttp only for the registry client.
"""

from __future__ import annotations

import asyncio
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from http.client import HTTPResponse

from engine.errors import (
    EngineError,
    Forbidden,
    InvalidParameter,
    NotFound,
    SystemError_,
    Unauthorized,
)

TIMEOUT = 60.0
_CHUNK = 1 << 20
_BODY_IN_MESSAGE = 4096
_STATUS_ERRORS: dict[int, type[EngineError]] = {
    404: NotFound,
    400: InvalidParameter,
    401: Unauthorized,
    403: Forbidden,
}


def source_url(source: str) -> str:
    """dockerd's rule: no ``://`` means ``http://``; only http(s) can be fetched."""
    url = source if "://" in source else "http://" + source
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidParameter(f"invalid import source {source!r}: not an http(s) URL")
    return url


class UrlSource:
    """An open GET whose body is the image's tar."""

    def __init__(self, url: str, response: HTTPResponse) -> None:
        self.url = url
        self._response = response

    async def chunks(self) -> AsyncIterator[bytes]:
        while chunk := await asyncio.to_thread(self._response.read, _CHUNK):
            yield chunk

    async def close(self) -> None:
        await asyncio.to_thread(self._response.close)


async def open_url_source(source: str) -> UrlSource:
    url = source_url(source)
    response = await asyncio.to_thread(_get, url)
    return UrlSource(url, response)


def _get(url: str) -> HTTPResponse:
    try:
        response: HTTPResponse = urllib.request.urlopen(url, timeout=TIMEOUT)
    except urllib.error.HTTPError as exc:
        with exc:
            body = exc.read(_BODY_IN_MESSAGE).decode("utf-8", "replace").strip()
        category = _STATUS_ERRORS.get(exc.code, SystemError_)
        raise category(
            f"failed to GET {url} with status {exc.code} {exc.reason}: {body}"
        ) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, socket.gaierror):
            raise NotFound(f"Get {url!r}: {exc.reason}") from None
        raise SystemError_(f"Get {url!r}: {exc.reason}") from None
    except (OSError, ValueError) as exc:
        raise SystemError_(f"Get {url!r}: {exc}") from None
    return response
