"""gRPC over HTTP/2 on a hijacked connection, both roles, on top of the ``h2`` state machine.

BuildKit clients upgrade ``POST /grpc`` and ``POST /session`` to prior-knowledge HTTP/2
(buildkit-notes §4): on ``/grpc`` wharfd is the gRPC server, on ``/session`` the gRPC client
of services the build client exposes. Only what those conversations use is here: messages
are never compressed, requests to our server are unary, responses may stream, and our
client calls are unary or bidirectional streams (FileSync/DiffCopy).

gRPC framing (grpc/doc/PROTOCOL-HTTP2.md): each message is a 1-byte compressed flag, a
4-byte big-endian length and the protobuf bytes; the call ends with trailers carrying
``grpc-status`` and a percent-encoded ``grpc-message`` (or, when nothing was sent, one
"trailers-only" HEADERS frame).

Memory stays bounded: received bytes are acknowledged to the peer's flow control only
once the consumer has taken (most of) what is queued, so a fast sender cannot fill the
daemon; sending waits for the peer's window.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import struct
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

log = logging.getLogger(__name__)
# hpack and h2 log every header at debug level: far too much for a daemon's debug log.
for _noisy in ("hpack", "h2"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)

_PREFIX = struct.Struct(">BL")
# Largest message accepted (dockerd allows 16 MiB on /grpc: LLB definitions can be big).
MAX_MESSAGE = 16 << 20
_WINDOW = 1 << 20
# Queued messages of one stream beyond which received bytes are acknowledged only as the
# consumer takes them (backpressure through HTTP/2 flow control).
_QUEUE_SOFT_LIMIT = 4


class Code(enum.IntEnum):
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    FAILED_PRECONDITION = 9
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14


class GrpcError(Exception):
    """A call's non-OK status: raised by handlers to answer it, by the client on receipt."""

    def __init__(self, code: Code | int, message: str) -> None:
        super().__init__(message)
        self.code = Code(code) if code in Code._value2member_map_ else Code.UNKNOWN
        self.message = message

    def __str__(self) -> str:
        return self.message


class ByteStream(Protocol):
    """The hijacked socket: ``read`` returns b"" at EOF; ``write`` queues the bytes
    before its first await (so writes keep their order) and then waits for room."""

    async def read(self) -> bytes: ...
    async def write(self, data: bytes) -> None: ...


# ------------------------------------------------------------------ framing
def frame_message(payload: bytes) -> bytes:
    return _PREFIX.pack(0, len(payload)) + payload


class MessageDecoder:
    """Splits a stream's DATA bytes into gRPC messages."""

    def __init__(self, limit: int = MAX_MESSAGE) -> None:
        self._buffer = bytearray()
        self._limit = limit

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        out: list[bytes] = []
        while len(self._buffer) >= _PREFIX.size:
            compressed, length = _PREFIX.unpack_from(self._buffer)
            if compressed:
                raise GrpcError(Code.UNIMPLEMENTED, "compressed gRPC messages are not supported")
            if length > self._limit:
                raise GrpcError(Code.INVALID_ARGUMENT,
                                f"message of {length} bytes exceeds the {self._limit} limit")
            end = _PREFIX.size + length
            if len(self._buffer) < end:
                break
            out.append(bytes(self._buffer[_PREFIX.size:end]))
            del self._buffer[:end]
        return out

    @property
    def pending(self) -> int:
        return len(self._buffer)


def encode_grpc_message(text: str) -> str:
    """Percent-encoding of grpc-message: printable ASCII except '%' stays as is."""
    return "".join(c if " " <= c <= "~" and c != "%" else
                   "".join(f"%{b:02X}" for b in c.encode()) for c in text)


def decode_grpc_message(text: str) -> str:
    return urllib.parse.unquote(text, errors="replace")


# ------------------------------------------------------------------ streams
@dataclass(eq=False)
class _Stream:
    stream_id: int
    headers: dict[str, str] = field(default_factory=dict)
    trailers: dict[str, str] = field(default_factory=dict)
    inbox: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    decoder: MessageDecoder = field(default_factory=MessageDecoder)
    unacked: int = 0
    ended: bool = False  # the peer ended its side (or the stream/connection went)
    reset: bool = False
    handler: asyncio.Task[None] | None = None


class _Connection:
    """One HTTP/2 connection over a ByteStream; subclasses decide what streams mean."""

    def __init__(self, io: ByteStream, client_side: bool) -> None:
        self._io = io
        config = h2.config.H2Configuration(client_side=client_side, header_encoding="utf-8")
        self._h2 = h2.connection.H2Connection(config=config)
        self._streams: dict[int, _Stream] = {}
        self._window_changed = asyncio.Event()
        self.closed = asyncio.Event()

    async def _start(self) -> None:
        self._h2.local_settings = h2.settings.Settings(
            client=self._h2.config.client_side,
            initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _WINDOW,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 250,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 1 << 20,
            })
        self._h2.initiate_connection()
        self._h2.increment_flow_control_window(_WINDOW - 65535)
        await self._flush()

    async def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data:
            await self._io.write(data)

    def _flush_soon(self) -> None:
        task = asyncio.ensure_future(self._flush())
        task.add_done_callback(_ignore_connection_errors)

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self._io.read()
                if not data:
                    break
                try:
                    events = self._h2.receive_data(data)
                except h2.exceptions.ProtocolError as exc:
                    log.debug("HTTP/2 protocol error from the client: %s", exc)
                    await self._flush()
                    break
                for event in events:
                    self._handle(event)
                await self._flush()
        except (ConnectionError, OSError):
            pass
        finally:
            self._connection_gone()

    def _connection_gone(self) -> None:
        self.closed.set()
        self._window_changed.set()
        for stream in list(self._streams.values()):
            self._end_stream(stream, reset=True)

    def _end_stream(self, stream: _Stream, reset: bool) -> None:
        if not stream.ended:
            stream.ended = True
            stream.inbox.put_nowait(None)
        if reset:
            stream.reset = True
            self._window_changed.set()
            if stream.handler is not None and not stream.handler.done():
                stream.handler.cancel()

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived | h2.events.ResponseReceived):
            assert event.stream_id is not None and event.headers is not None
            headers = _header_dict(event.headers)
            if isinstance(event, h2.events.RequestReceived):
                self._on_request(event.stream_id, headers)
            elif (stream := self._streams.get(event.stream_id)) is not None:
                stream.headers = headers
        elif isinstance(event, h2.events.TrailersReceived):
            assert event.stream_id is not None and event.headers is not None
            if (stream := self._streams.get(event.stream_id)) is not None:
                stream.trailers = _header_dict(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            self._on_data(event)
        elif isinstance(event, h2.events.StreamEnded):
            assert event.stream_id is not None
            if (stream := self._streams.get(event.stream_id)) is not None:
                self._end_stream(stream, reset=False)
        elif isinstance(event, h2.events.StreamReset):
            assert event.stream_id is not None
            if (stream := self._streams.pop(event.stream_id, None)) is not None:
                self._end_stream(stream, reset=True)
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self._window_changed.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._connection_gone()

    def _on_request(self, stream_id: int, headers: dict[str, str]) -> None:
        self._h2.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)

    def _on_data(self, event: h2.events.DataReceived) -> None:
        assert event.stream_id is not None and event.data is not None
        length = event.flow_controlled_length or 0
        stream = self._streams.get(event.stream_id)
        if stream is None or stream.ended:
            self._h2.acknowledge_received_data(length, event.stream_id)
            return
        try:
            messages = stream.decoder.feed(event.data)
        except GrpcError as exc:
            log.debug("stream %d: %s", event.stream_id, exc)
            self._h2.reset_stream(event.stream_id, h2.errors.ErrorCodes.PROTOCOL_ERROR)
            self._streams.pop(event.stream_id, None)
            self._end_stream(stream, reset=True)
            return
        for message in messages:
            stream.inbox.put_nowait(message)
        stream.unacked += length
        if stream.inbox.qsize() <= _QUEUE_SOFT_LIMIT:
            self._acknowledge(stream)

    def _acknowledge(self, stream: _Stream) -> None:
        if stream.unacked:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._h2.acknowledge_received_data(stream.unacked, stream.stream_id)
            stream.unacked = 0

    async def _receive(self, stream: _Stream) -> bytes | None:
        """The stream's next message; None once the peer ended its side."""
        message = await stream.inbox.get()
        if message is None:
            stream.inbox.put_nowait(None)  # later calls see the end too
            return None
        if stream.unacked and stream.inbox.qsize() <= _QUEUE_SOFT_LIMIT:
            self._acknowledge(stream)
            self._flush_soon()
        return message

    async def _send_data(self, stream: _Stream, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if stream.reset or self.closed.is_set():
                raise ConnectionResetError("the stream was closed by the peer")
            try:
                window = self._h2.local_flow_control_window(stream.stream_id)
            except h2.exceptions.StreamClosedError:
                raise ConnectionResetError("the stream was closed by the peer") from None
            size = min(window, self._h2.max_outbound_frame_size, len(view))
            if size <= 0:
                self._window_changed.clear()
                await self._window_changed.wait()
                continue
            self._h2.send_data(stream.stream_id, bytes(view[:size]))
            view = view[size:]
            await self._flush()

    async def _send_headers(self, stream: _Stream, headers: list[tuple[str, str]],
                            end_stream: bool = False) -> None:
        if stream.reset or self.closed.is_set():
            raise ConnectionResetError("the stream was closed by the peer")
        try:
            self._h2.send_headers(stream.stream_id, headers, end_stream=end_stream)
        except h2.exceptions.StreamClosedError:
            raise ConnectionResetError("the stream was closed by the peer") from None
        await self._flush()

    async def close(self) -> None:
        """Say goodbye (GOAWAY), if the connection is still there."""
        if not self.closed.is_set():
            with contextlib.suppress(h2.exceptions.ProtocolError, ConnectionError, OSError):
                self._h2.close_connection()
                await self._flush()


def _header_dict(headers: Iterable[tuple[str | bytes, str | bytes]]) -> dict[str, str]:
    """Header list to a dict; a repeated name keeps its values joined by commas (gRPC
    metadata's multi-value form, which filesync's followpaths and patterns use)."""
    out: dict[str, str] = {}
    for raw_name, raw_value in headers:
        name = raw_name if isinstance(raw_name, str) else raw_name.decode()
        value = raw_value if isinstance(raw_value, str) else raw_value.decode()
        out[name] = f"{out[name]},{value}" if name in out else value
    return out


def _ignore_connection_errors(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        exc = task.exception()
        if exc is not None and not isinstance(exc, ConnectionError | OSError):
            log.warning("HTTP/2 flush failed: %s", exc)


# ------------------------------------------------------------------ server
class ServerCall:
    """One incoming call: its path, metadata, request messages and our answer."""

    def __init__(self, conn: GrpcServerConnection, stream: _Stream) -> None:
        self._conn = conn
        self._stream = stream
        self.path = stream.headers.get(":path", "")
        self.metadata = {k: v for k, v in stream.headers.items() if not k.startswith(":")}
        self._headers_sent = False

    async def receive(self) -> bytes | None:
        return await self._conn._receive(self._stream)

    async def receive_one(self) -> bytes:
        message = await self.receive()
        if message is None:
            raise GrpcError(Code.INVALID_ARGUMENT, "the request message is missing")
        return message

    async def send_initial_metadata(self, metadata: Mapping[str, str] | None = None) -> None:
        if not self._headers_sent:
            self._headers_sent = True
            headers = [(":status", "200"), ("content-type", "application/grpc")]
            headers += list((metadata or {}).items())
            await self._conn._send_headers(self._stream, headers)

    async def send(self, message: bytes) -> None:
        await self.send_initial_metadata()
        await self._conn._send_data(self._stream, frame_message(message))

    async def finish(self, code: Code, message: str = "") -> None:
        status = [("grpc-status", str(int(code)))]
        if message:
            status.append(("grpc-message", encode_grpc_message(message)))
        if self._headers_sent:
            await self._conn._send_headers(self._stream, status, end_stream=True)
        else:
            self._headers_sent = True
            await self._conn._send_headers(
                self._stream,
                [(":status", "200"), ("content-type", "application/grpc"), *status],
                end_stream=True)


Handler = Callable[[ServerCall], Awaitable[None]]


class GrpcServerConnection(_Connection):
    """wharfd as the gRPC server of a hijacked ``/grpc`` connection.

    ``handlers`` maps a method path to a coroutine that reads the request from the call
    and sends its answer; it ends the call by returning (OK) or raising GrpcError. A
    client that resets the stream (cancellation) cancels the handler's task.
    """

    def __init__(self, io: ByteStream, handlers: Mapping[str, Handler]) -> None:
        super().__init__(io, client_side=False)
        self._handlers = handlers
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self) -> None:
        """Run until the client goes; then cancel what still runs."""
        try:
            await self._start()
            await self._read_loop()
        finally:
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    def _on_request(self, stream_id: int, headers: dict[str, str]) -> None:
        stream = _Stream(stream_id, headers=headers)
        self._streams[stream_id] = stream
        task = asyncio.create_task(self._run_handler(stream))
        stream.handler = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_handler(self, stream: _Stream) -> None:
        call = ServerCall(self, stream)
        handler = self._handlers.get(call.path)
        code, message = Code.OK, ""
        try:
            if handler is None:
                raise GrpcError(Code.UNIMPLEMENTED, f"unknown method {call.path}")
            await handler(call)
        except GrpcError as exc:
            code, message = exc.code, exc.message
        except asyncio.CancelledError:
            if stream.reset or self.closed.is_set():
                log.debug("gRPC %s: cancelled by the client", call.path)
                return  # the client cancelled the call: nobody to answer
            raise
        except (ConnectionError, OSError):
            return
        except Exception as exc:  # a bug must still answer the call, not hang it
            log.exception("gRPC handler %s failed", call.path)
            code, message = Code.UNKNOWN, str(exc) or type(exc).__name__
        finally:
            self._streams.pop(stream.stream_id, None)
        log.debug("gRPC %s: %s %s", call.path, code.name, message)
        with contextlib.suppress(ConnectionError, OSError):
            await call.finish(code, message)


# ------------------------------------------------------------------ client
class ClientCall:
    """One call we make: send requests, half-close, read responses, then the status."""

    def __init__(self, conn: GrpcClientConnection, stream: _Stream) -> None:
        self._conn = conn
        self._stream = stream

    async def send(self, message: bytes) -> None:
        await self._conn._send_data(self._stream, frame_message(message))

    async def send_many(self, messages: Iterable[bytes]) -> None:
        """Several messages in as few DATA frames as the peer's window allows."""
        await self._conn._send_data(self._stream, b"".join(map(frame_message, messages)))

    async def done_sending(self) -> None:
        if not self._stream.reset and not self._conn.closed.is_set():
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self._conn._h2.end_stream(self._stream.stream_id)
                await self._conn._flush()

    async def receive(self) -> bytes | None:
        """The next response message; None at the end of an OK call. A non-OK status
        (or a connection that went) raises GrpcError."""
        message = await self._conn._receive(self._stream)
        if message is None:
            self._raise_status()
        return message

    def _raise_status(self) -> None:
        stream = self._stream
        status = stream.trailers or stream.headers
        if "grpc-status" not in status:
            if stream.reset or self._conn.closed.is_set():
                raise GrpcError(Code.UNAVAILABLE, "the session connection was closed")
            raise GrpcError(Code.INTERNAL, "the response ended without a grpc-status")
        code = int(status["grpc-status"]) if status["grpc-status"].isdigit() else 2
        if code != 0:
            raise GrpcError(code, decode_grpc_message(status.get("grpc-message", "")))

    async def cancel(self) -> None:
        if not self._stream.ended and not self._conn.closed.is_set():
            with contextlib.suppress(h2.exceptions.ProtocolError, ConnectionError, OSError):
                self._conn._h2.reset_stream(self._stream.stream_id,
                                            h2.errors.ErrorCodes.CANCEL)
                await self._conn._flush()
        self._conn._streams.pop(self._stream.stream_id, None)


class GrpcClientConnection(_Connection):
    """wharfd as the gRPC client on a hijacked ``/session`` connection."""

    def __init__(self, io: ByteStream, authority: str = "localhost") -> None:
        super().__init__(io, client_side=True)
        self._authority = authority
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._start()
        self._reader = asyncio.create_task(self._read_loop())

    async def run_until_closed(self) -> None:
        if self._reader is not None:
            await self._reader

    async def open(self, path: str, metadata: Iterable[tuple[str, str]] = ()) -> ClientCall:
        if self.closed.is_set():
            raise GrpcError(Code.UNAVAILABLE, "the session connection was closed")
        stream_id = self._h2.get_next_available_stream_id()
        stream = _Stream(stream_id)
        self._streams[stream_id] = stream
        headers = [(":method", "POST"), (":scheme", "http"), (":path", path),
                   (":authority", self._authority), ("content-type", "application/grpc"),
                   ("te", "trailers"), *metadata]
        await self._send_headers(stream, headers)
        return ClientCall(self, stream)

    async def unary(self, path: str, request: bytes,
                    metadata: Iterable[tuple[str, str]] = ()) -> bytes:
        call = await self.open(path, metadata)
        try:
            await call.send(request)
            await call.done_sending()
            response = await call.receive()
            if response is None:
                raise GrpcError(Code.INTERNAL, f"{path} returned no message")
            while await call.receive() is not None:
                pass
            return response
        finally:
            await call.cancel()

    async def aclose(self) -> None:
        await self.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

