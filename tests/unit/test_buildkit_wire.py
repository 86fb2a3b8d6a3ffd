"""BuildKit's transport in process: gRPC framing, our HTTP/2 gRPC server and client
talking to each other (flow control, status, cancellation), and the ``/grpc`` and
``/session`` upgrades of the real app (exact 101 bytes, dockerd's errors), driven at
the byte level with ``h2`` as the client's side.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import h2.config
import h2.connection
import h2.events
import pytest
import pytest_asyncio

from api.app import Mount, build_app
from api.listeners import close_listeners, open_unix_listener
from api.routers import grpc as grpc_router
from api.server import ApiServer
from engine.builder.buildkit.control import BuildKitFront
from engine.builder.buildkit.frontend import check_syntax, options_from_attrs
from engine.builder.buildkit.grpcwire import (
    Code,
    GrpcClientConnection,
    GrpcError,
    GrpcServerConnection,
    MessageDecoder,
    ServerCall,
    decode_grpc_message,
    encode_grpc_message,
    frame_message,
)
from engine.builder.buildkit.proto import wire_pb2 as pb
from engine.builder.manager import BuildManager
from tests.harness import rawhttp
from tests.unit.test_app import short_tmp  # noqa: F401  (fixture)

# ------------------------------------------------------------------ framing


def test_decoder_splits_messages_across_chunks() -> None:
    data = frame_message(b"one") + frame_message(b"") + frame_message(b"x" * 70000)
    decoder = MessageDecoder()
    got: list[bytes] = []
    for i in range(0, len(data), 7):
        got += decoder.feed(data[i:i + 7])
    assert got == [b"one", b"", b"x" * 70000]
    assert decoder.pending == 0


def test_decoder_refuses_compressed_and_oversized() -> None:
    with pytest.raises(GrpcError) as exc:
        MessageDecoder().feed(b"\x01\x00\x00\x00\x01a")
    assert exc.value.code == Code.UNIMPLEMENTED
    with pytest.raises(GrpcError) as exc:
        MessageDecoder(limit=10).feed(b"\x00\x00\x00\x00\x0b")
    assert exc.value.code == Code.INVALID_ARGUMENT


def test_grpc_message_percent_encoding() -> None:
    text = "failed: 100% done — é\nnext"
    encoded = encode_grpc_message(text)
    assert all(" " <= c <= "~" for c in encoded)
    assert "%25" in encoded and "\n" not in encoded
    assert decode_grpc_message(encoded) == text


# ------------------------------------------------------------------ our server ↔ our client


class _Pipe:
    """One direction-pair of an in-memory socket."""

    def __init__(self, inbox: asyncio.Queue[bytes], outbox: asyncio.Queue[bytes]) -> None:
        self._inbox = inbox
        self._outbox = outbox

    async def read(self) -> bytes:
        return await self._inbox.get()

    async def write(self, data: bytes) -> None:
        self._outbox.put_nowait(data)


def _pipes() -> tuple[_Pipe, _Pipe]:
    a: asyncio.Queue[bytes] = asyncio.Queue()
    b: asyncio.Queue[bytes] = asyncio.Queue()
    return _Pipe(a, b), _Pipe(b, a)


async def _echo(call: ServerCall) -> None:
    await call.send(await call.receive_one())


async def _count(call: ServerCall) -> None:
    n = int(await call.receive_one())
    for i in range(n):
        await call.send(str(i).encode())


async def _fail(call: ServerCall) -> None:
    await call.receive_one()
    raise GrpcError(Code.NOT_FOUND, "no such job x — 100%")


@pytest_asyncio.fixture
async def loop_pair() -> AsyncIterator[tuple[GrpcClientConnection, dict[str, Any]]]:
    server_io, client_io = _pipes()
    state: dict[str, Any] = {"cancelled": asyncio.Event()}

    async def hang(call: ServerCall) -> None:
        await call.receive_one()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            state["cancelled"].set()
            raise

    server = GrpcServerConnection(server_io, {"/t/Echo": _echo, "/t/Count": _count,
                                              "/t/Fail": _fail, "/t/Hang": hang})
    serving = asyncio.create_task(server.serve())
    client = GrpcClientConnection(client_io)
    await client.start()
    try:
        yield client, state
    finally:
        await client.aclose()
        server_io._inbox.put_nowait(b"")  # EOF for the server
        await asyncio.wait_for(serving, 5)


@pytest.mark.asyncio
async def test_unary_big_message_crosses_flow_control(
        loop_pair: tuple[GrpcClientConnection, dict[str, Any]]) -> None:
    client, _ = loop_pair
    payload = bytes(range(256)) * (12 * 1024)  # 3 MiB: three times the 1 MiB window
    assert await client.unary("/t/Echo", payload) == payload


@pytest.mark.asyncio
async def test_server_stream_and_status(
        loop_pair: tuple[GrpcClientConnection, dict[str, Any]]) -> None:
    client, _ = loop_pair
    call = await client.open("/t/Count")
    await call.send(b"5")
    await call.done_sending()
    got = []
    while (m := await call.receive()) is not None:
        got.append(m)
    assert got == [b"0", b"1", b"2", b"3", b"4"]
    with pytest.raises(GrpcError) as exc:
        await client.unary("/t/Fail", b"")
    assert exc.value.code == Code.NOT_FOUND
    assert exc.value.message == "no such job x — 100%"
    with pytest.raises(GrpcError) as exc:
        await client.unary("/t/Nope", b"")
    assert exc.value.code == Code.UNIMPLEMENTED


@pytest.mark.asyncio
async def test_client_cancel_cancels_the_handler(
        loop_pair: tuple[GrpcClientConnection, dict[str, Any]]) -> None:
    client, state = loop_pair
    call = await client.open("/t/Hang")
    await call.send(b"")
    await asyncio.sleep(0.05)
    await call.cancel()
    await asyncio.wait_for(state["cancelled"].wait(), 5)


# ------------------------------------------------------------------ the upgrades, real app

SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"


@pytest_asyncio.fixture
async def socket_path(short_tmp: Path) -> AsyncIterator[str]:  # noqa: F811
    front = BuildKitFront(cast(BuildManager, None), "amd64")  # no build in these tests
    app = build_app([Mount(grpc_router.routes, grpc_router.BACKEND, front)])
    path = short_tmp / "api.sock"
    listener = await asyncio.to_thread(open_unix_listener, path, None)
    server = ApiServer(app, [listener], shutdown_timeout=5)
    await server.start()
    try:
        yield str(path)
    finally:
        await server.stop()
        await asyncio.to_thread(close_listeners, [listener])


def _upgrade(path: str, url: str, extra: str = "") -> tuple[socket.socket, bytes]:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(5)
    sock.connect(path)
    sock.sendall(f"POST {url} HTTP/1.1\r\nHost: api.moby.localhost\r\n"
                 f"User-Agent: Go-http-client/1.1\r\nContent-Length: 0\r\n"
                 f"Connection: Upgrade\r\nUpgrade: h2c\r\n{extra}\r\n".encode())
    data = b""
    while len(data) < len(SWITCHING):
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return sock, data


def _list_workers_over_h2(path: str, url: str) -> tuple[bytes, pb.ListWorkersResponse, str]:
    sock, head = _upgrade(path, url)
    with sock:
        assert head.startswith(SWITCHING), head
        # the daemon's SETTINGS come at once, before the client says anything
        early = head[len(SWITCHING):]
        while not early:
            early = sock.recv(65536)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding="utf-8"))
        conn.initiate_connection()
        events = conn.receive_data(early)
        assert any(isinstance(e, h2.events.RemoteSettingsChanged) for e in events)
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(":method", "POST"), (":scheme", "http"),
                                (":path", "/moby.buildkit.v1.Control/ListWorkers"),
                                (":authority", "localhost"),
                                ("content-type", "application/grpc"), ("te", "trailers")])
        conn.send_data(sid, frame_message(pb.ListWorkersRequest().SerializeToString()),
                       end_stream=True)
        sock.sendall(conn.data_to_send())
        body, status = b"", ""
        done = False
        while not done:
            chunk = sock.recv(65536)
            assert chunk
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.DataReceived):
                    body += event.data
                elif isinstance(event, h2.events.TrailersReceived):
                    status = dict(event.headers)["grpc-status"]
                elif isinstance(event, h2.events.StreamEnded):
                    done = True
            sock.sendall(conn.data_to_send())
        messages = MessageDecoder().feed(body)
        assert len(messages) == 1
        return head[:len(SWITCHING)], pb.ListWorkersResponse.FromString(messages[0]), status


@pytest.mark.asyncio
@pytest.mark.parametrize("url", ["/grpc", "/v1.41/grpc"])
async def test_grpc_upgrade_serves_list_workers(socket_path: str, url: str) -> None:
    head, workers, status = await asyncio.to_thread(_list_workers_over_h2, socket_path, url)
    assert head == SWITCHING
    assert status == "0"
    assert len(workers.record) == 1
    record = workers.record[0]
    assert [(p.OS, p.Architecture) for p in record.platforms] == [("linux", "amd64")]
    assert "org.mobyproject.buildkit.worker.snapshotter" not in record.Labels


def _session_preface(path: str) -> bytes:
    sock, head = _upgrade(path, "/session",
                          "X-Docker-Expose-Session-Uuid: s1x\r\n"
                          "X-Docker-Expose-Session-Grpc-Method: /grpc.health.v1.Health/Check\r\n")
    with sock:
        assert head.startswith(SWITCHING), head
        data = head[len(SWITCHING):]
        while len(data) < 24:
            chunk = sock.recv(65536)
            assert chunk
            data += chunk
        # a second session with the same id is refused while this one is connected
        dup = rawhttp.send_raw(path, b"POST /session HTTP/1.1\r\nHost: x\r\nConnection: Upgrade"
                               b"\r\nUpgrade: h2c\r\nX-Docker-Expose-Session-Uuid: s1x\r\n"
                               b"Content-Length: 0\r\n\r\n", 5.0)
        assert dup.status == 400
        assert json.loads(dup.body) == {"message": "session s1x already exists"}
        return data


@pytest.mark.asyncio
async def test_session_upgrade_makes_the_daemon_the_http2_client(socket_path: str) -> None:
    data = await asyncio.to_thread(_session_preface, socket_path)
    assert data.startswith(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")


@pytest.mark.asyncio
@pytest.mark.parametrize(("url", "upgrade", "status", "message"), [
    ("/grpc", None, 500, "no upgrade proto in request"),
    ("/grpc", "foo", 500, "protocol foo not supported"),
    ("/session", None, 400, "no upgrade proto in request"),
    ("/v1.41/session", "foo", 400, "protocol foo not supported"),
])
async def test_malformed_upgrades_get_dockerds_errors(
        socket_path: str, url: str, upgrade: str | None, status: int, message: str) -> None:
    extra = f"Connection: Upgrade\r\nUpgrade: {upgrade}\r\n" if upgrade else ""
    raw = (f"POST {url} HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: 0\r\n"
           f"X-Docker-Expose-Session-Uuid: s2\r\n\r\n").encode()
    resp = await asyncio.to_thread(rawhttp.send_raw, socket_path, raw, 5.0)
    assert resp.status == status
    assert json.loads(resp.body) == {"message": message}


@pytest.mark.asyncio
async def test_get_grpc_is_not_a_route(socket_path: str) -> None:
    resp = await asyncio.to_thread(
        rawhttp.send_raw, socket_path,
        b"GET /grpc HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n", 5.0)
    assert resp.status == 404
    assert json.loads(resp.body) == {"message": "page not found"}


# ------------------------------------------------------------------ the frontend's inputs


@pytest.mark.parametrize("syntax", ["docker/dockerfile:1", "docker/dockerfile:1.7-labs",
                                    "docker.io/docker/dockerfile:1.4.3", "docker/dockerfile"])
def test_builtin_syntax_directives_are_accepted(syntax: str) -> None:
    check_syntax(f"# syntax={syntax}\nFROM busybox\n".encode())


def test_other_frontend_images_are_refused_by_name() -> None:
    with pytest.raises(GrpcError) as exc:
        check_syntax(b"# syntax=example.com/my/frontend:2\nFROM busybox\n")
    assert exc.value.code == Code.UNIMPLEMENTED
    assert "custom Dockerfile frontend example.com/my/frontend:2" in exc.value.message


def test_frontend_attributes_become_build_options() -> None:
    options = options_from_attrs({
        "filename": "Dockerfile.app", "target": "final", "build-arg:A": "1",
        "label:l": "v", "no-cache": "", "add-hosts": "h=1.2.3.4,g=5.6.7.8",
        "force-network-mode": "none", "image-resolve-mode": "pull", "shm-size": "1024",
        "platform": "linux/amd64"})
    assert (options.dockerfile, options.target, dict(options.build_args),
            dict(options.labels)) == ("Dockerfile.app", "final", {"A": "1"}, {"l": "v"})
    assert options.no_cache and options.pull and options.force_remove
    assert options.limits.extra_hosts == ("h:1.2.3.4", "g:5.6.7.8")
    assert (options.limits.network_mode, options.limits.shm_size) == ("none", 1024)
    for attr in ("context:extra", "requestid", "build-arg:BUILDKIT_SYNTAX"):
        with pytest.raises(GrpcError) as exc:
            options_from_attrs({attr: "x"})
        assert exc.value.code == Code.UNIMPLEMENTED
