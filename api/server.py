"""Serving the app on already-open sockets, with Go net/http's limits and a graceful stop.

Why not plain ``web.SockSite``: two behaviours need our own protocol class.

* Header limits. Go accepts 1 MiB of request headers (plus 4 KiB slack) and answers
  ``431`` beyond; aiohttp defaults to 8 KiB per field and 128 fields and answers ``400``.
  We raise the limits (a 100 KB header and 5 000 headers must work: registry auth
  headers are large) and turn "too long / too many" into 431.
* Disconnect notice. Streaming handlers need to know when the client has gone
  (see ``api.lifecycle``); the protocol sets ``closed`` in ``connection_lost``.

Parse errors (no Host, bad Content-Length, garbage) are aiohttp's own 400s, with our
common headers and logged at debug level: a client sending garbage is not our error.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong

from api.tlsbridge import TLSBridge
from api.versioning import common_headers

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = (1 << 20) + 4096  # Go's http.DefaultMaxHeaderBytes and its slack
MAX_HEADERS = 8192
BACKLOG = 1024

HANDLER_OPTIONS: dict[str, Any] = {
    "max_line_size": MAX_HEADER_BYTES,
    "max_field_size": MAX_HEADER_BYTES,
    "max_headers": MAX_HEADERS,
    # After an early answer (413, an error before the body was read) aiohttp drains the
    # rest of the body for this long; its default (10 s) also holds up a graceful stop.
    "lingering_time": 1.0,
    # The remote address is empty on a unix socket; the request line is what matters.
    "access_log_format": '"%r" %s %b %Tfs "%{User-Agent}i"',
}


@dataclass
class Listener:
    """A bound socket to serve on; ``path`` is the unix socket file we created (removed at
    exit), None for sockets we were given (systemd owns those files)."""

    sock: socket.socket
    name: str
    path: Path | None = None
    tls: ssl.SSLContext | None = None  # TCP sockets with TLS on


_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def _peer_name(transport: asyncio.BaseTransport) -> str:
    """Who is on the other end: the address, or the process on a unix socket."""
    peer = transport.get_extra_info("peername")
    if peer:
        return str(peer)
    sock = transport.get_extra_info("socket")
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except (AttributeError, OSError):
        return "a unix socket client"
    pid, uid, _gid = _PEERCRED.unpack(raw)
    return f"a unix socket client (pid {pid}, uid {uid})"


def _headers_too_large(exc: BaseException) -> bool:
    if isinstance(exc, LineTooLong):
        return True
    return isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc)


class DockerRequestHandler(web.RequestHandler):
    """aiohttp's protocol with Go's 431 and a per-connection ``closed`` event."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.closed = asyncio.Event()
        self.peer = "a client"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.peer = _peer_name(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed.set()
        super().connection_lost(exc)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        # aiohttp names the client by its address, which is empty on a unix socket.
        if len(args) == 2 and args[0] == "Error handling request from %s" and not args[1]:
            args = (args[0], self.peer)
        super().log_exception(*args, **kw)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError):
            response = super().handle_error(request, status, exc, message)
            response.headers.update(common_headers())
            return response
        log.debug("bad request: %s", exc)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot report a bad request")
        if _headers_too_large(exc):
            status, message = 431, "431 Request Header Fields Too Large"
        response = web.Response(
            status=status, text=message or "Bad Request", content_type="text/plain"
        )
        response.headers.update(common_headers())
        response.force_close()
        return response


def _name_tls_peer(protocol: asyncio.Protocol, peer: str) -> None:
    # The app sees the bridge's socketpair; name the real client in its log lines.
    if isinstance(protocol, DockerRequestHandler):
        protocol.peer = f"{peer} (TLS)"


class ListenerSite(web.BaseSite):
    """Serve one listening socket with ``DockerRequestHandler`` (accepting starts here)."""

    def __init__(self, runner: web.BaseRunner, listener: Listener, backlog: int = BACKLOG):
        super().__init__(runner, backlog=backlog)
        self._listener = listener

    @property
    def name(self) -> str:
        return self._listener.name

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()

        def protocol() -> DockerRequestHandler:
            return DockerRequestHandler(server, loop=loop, **HANDLER_OPTIONS)

        tls = self._listener.tls
        if tls is None:
            self._server = await loop.create_server(
                protocol, sock=self._listener.sock, backlog=self._backlog
            )
            return

        def bridged() -> TLSBridge:
            return TLSBridge(tls, protocol, _name_tls_peer)

        # TLS is terminated in api.tlsbridge, not by the loop: see why there.
        self._server = await loop.create_server(
            bridged, sock=self._listener.sock, backlog=self._backlog
        )


class ApiServer:
    """AppRunner + one site per listener. ``stop`` is uvicorn's graceful sequence.

    ``stop``: close the listeners (no new connections), close idle keep-alive
    connections, run ``on_shutdown`` (followers end), give in-flight requests up to
    ``shutdown_timeout`` seconds, cancel the rest, then run the app's cleanup (engine).
    """

    def __init__(
        self, app: web.Application, listeners: Sequence[Listener], shutdown_timeout: float
    ) -> None:
        self._listeners = list(listeners)
        self._runner = web.AppRunner(
            app, handle_signals=False, shutdown_timeout=shutdown_timeout, **HANDLER_OPTIONS
        )

    @property
    def shutdown_timeout(self) -> float:
        return float(self._runner._shutdown_timeout)

    @shutdown_timeout.setter
    def shutdown_timeout(self, seconds: float) -> None:
        # shutdown-timeout is reloadable (SIGHUP); aiohttp reads the runner's value only
        # when it stops, and offers no setter.
        self._runner._shutdown_timeout = seconds

    async def start(self) -> None:
        """Run the app's startup (the engine starts here), then accept connections (the
        ones that arrived meanwhile wait in the listen backlog)."""
        await self._runner.setup()
        for listener in self._listeners:
            site = ListenerSite(self._runner, listener)
            await site.start()
            scheme = " (TLS)" if listener.tls is not None else ""
            log.info("API listen on %s%s", listener.name, scheme)

    async def stop(self) -> None:
        await self._runner.cleanup()
