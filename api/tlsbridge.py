"""TLS for the TCP sockets, in front of the app, with half-close.

Why not ``loop.create_server(ssl=…)``: asyncio's (and uvloop's) TLS transport closes the
whole connection when the client sends ``close_notify``. The docker CLI sends exactly that
when it is done writing to a hijacked stream (``docker run`` without ``-i`` does so at
once; Go's ``tls.Conn.CloseWrite``) and then waits for the container's output, which is
lost if the connection closes. Over TCP and unix sockets the same moment is a half-close
(``eof_received`` returning True keeps the other direction open); TLS needs the same.

So each TLS connection is terminated here with an ``ssl.SSLObject`` over memory BIOs and
bridged to the app over a socketpair: the app serves a plain stream socket as it does for
unix clients, and ``close_notify`` from the client becomes a half-close (``SHUT_WR``) of
that socketpair. What the app writes is encrypted and sent; when the app closes, we send
``close_notify`` and close. Back-pressure crosses the bridge both ways (pause reading one
side while the other's write buffer is full).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from typing import cast

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0
READ_SIZE = 64 * 1024

AppProtocolFactory = Callable[[], asyncio.Protocol]


class _AppSide(asyncio.Protocol):
    """Our end of the socketpair: bytes the app wrote, to be encrypted for the client."""

    def __init__(self, bridge: TLSBridge) -> None:
        self._bridge = bridge

    def data_received(self, data: bytes) -> None:
        self._bridge.from_app(data)

    def eof_received(self) -> bool:
        self._bridge.app_done()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._bridge.app_done()

    def pause_writing(self) -> None:
        self._bridge.pause_client()

    def resume_writing(self) -> None:
        self._bridge.resume_client()


class TLSBridge(asyncio.Protocol):
    """One client connection: TLS on the outside, a plain socketpair to the app inside."""

    def __init__(
        self,
        context: ssl.SSLContext,
        app_factory: AppProtocolFactory,
        on_app_connected: Callable[[asyncio.Protocol, str], None] | None = None,
    ) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._app_factory = app_factory
        self._on_app_connected = on_app_connected
        self._client: asyncio.Transport | None = None
        self._app: asyncio.Transport | None = None
        self._pending: list[bytes] = []  # plaintext read before the app side was ready
        self._pending_eof = False
        self._handshaken = False
        self._closed = False
        self._timer: asyncio.TimerHandle | None = None
        self._connecting: asyncio.Task[None] | None = None
        self.peer = "a TLS client"

    # --- the client's side ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they have its methods.
        self._client = cast(asyncio.Transport, transport)
        self.peer = str(self._client.get_extra_info("peername") or self.peer)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(HANDSHAKE_TIMEOUT, self._handshake_timed_out)

    def data_received(self, data: bytes) -> None:
        self._incoming.write(data)
        if not self._handshaken and not self._handshake():
            return
        self._read_plaintext()
        self._flush()

    def eof_received(self) -> bool:
        # TCP FIN without close_notify: the client is done writing; keep answering.
        self._incoming.write_eof()
        self._to_app_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._app is not None:
            self._app.close()
        elif self._connecting is not None:
            self._connecting.cancel()

    def pause_writing(self) -> None:
        if self._app is not None:
            self._app.pause_reading()

    def resume_writing(self) -> None:
        if self._app is not None:
            self._app.resume_reading()

    def pause_client(self) -> None:
        if self._client is not None and not self._closed:
            self._client.pause_reading()

    def resume_client(self) -> None:
        if self._client is not None and not self._closed:
            self._client.resume_reading()

    # --- TLS --------------------------------------------------------------------------
    def _handshake(self) -> bool:
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return False
        except (ssl.SSLError, OSError) as exc:
            # A client without a certificate, or with one our CA did not sign: the alert
            # is in the outgoing BIO; send it and hang up.
            log.debug("TLS handshake with %s failed: %s", self.peer, exc)
            self._flush()
            self._close_client()
            return False
        self._handshaken = True
        if self._timer is not None:
            self._timer.cancel()
        self._flush()
        self._connecting = asyncio.get_running_loop().create_task(self._connect_app())
        return True

    def _handshake_timed_out(self) -> None:
        if not self._handshaken:
            log.debug("TLS handshake with %s timed out", self.peer)
            self._close_client()

    def _read_plaintext(self) -> None:
        while True:
            try:
                chunk = self._tls.read(READ_SIZE)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLZeroReturnError:  # close_notify: the client is done writing
                self._to_app_eof()
                return
            except (ssl.SSLError, OSError) as exc:
                log.debug("TLS error from %s: %s", self.peer, exc)
                self._close_client()
                return
            if not chunk:
                self._to_app_eof()
                return
            self._to_app(chunk)

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data and self._client is not None and not self._client.is_closing():
            self._client.write(data)

    def _close_client(self) -> None:
        if self._client is not None and not self._client.is_closing():
            self._client.close()

    # --- the app's side ---------------------------------------------------------------
    async def _connect_app(self) -> None:
        loop = asyncio.get_running_loop()
        app_end, our_end = socket.socketpair()
        try:
            _transport, protocol = await loop.connect_accepted_socket(
                self._app_factory, app_end
            )
            raw, _ = await loop.create_connection(lambda: _AppSide(self), sock=our_end)
        except BaseException:
            app_end.close()
            our_end.close()
            raise
        transport: asyncio.Transport = raw
        if self._on_app_connected is not None:
            self._on_app_connected(protocol, self.peer)
        if self._closed:
            transport.close()
            return
        self._app = transport
        for chunk in self._pending:
            transport.write(chunk)
        self._pending.clear()
        if self._pending_eof:
            transport.write_eof()

    def _to_app(self, chunk: bytes) -> None:
        if self._app is None:
            self._pending.append(chunk)
        elif not self._app.is_closing():
            self._app.write(chunk)

    def _to_app_eof(self) -> None:
        if self._app is None:
            self._pending_eof = True
        elif not self._app.is_closing() and self._app.can_write_eof():
            self._app.write_eof()

    def from_app(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            self._tls.write(data)
        except (ssl.SSLError, OSError) as exc:
            log.debug("cannot send to %s: %s", self.peer, exc)
            self._close_client()
            return
        self._flush()

    def app_done(self) -> None:
        """The app closed its side: say close_notify, send what is left, hang up."""
        if self._closed or self._client is None or self._client.is_closing():
            return
        try:
            self._tls.unwrap()
        except (ssl.SSLError, OSError):
            pass  # the peer's close_notify has not arrived; ours is in the BIO anyway
        self._flush()
        self._close_client()
