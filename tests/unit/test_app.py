"""The API foundation in process: build_app over fakes, served by our own server code
(api.server: the protocol with Go's header limits) on a unix socket.

Raw-HTTP checks use the harness's byte-level client in a worker thread, so the event
loop (and its blocking-call check) only ever runs the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from pydantic import BaseModel

from api.app import Mount, build_app, clean_path
from api.listeners import close_listeners, open_unix_listener
from api.params import read_json
from api.server import ApiServer
from api.versioning import common_headers, min_api_version, request_version
from engine import errors
from engine.events import EventBus
from tests.harness import rawhttp
from tests.unit.api_fakes import fake_mounts

COMMON = ("Api-Version", "Server", "Ostype", "Docker-Experimental")

# --- a router of our own, to exercise the error mapping and version gates -----------------

TestBackend = dict[str, int]
TEST_KEY: web.AppKey[TestBackend] = web.AppKey("test", dict)
test_routes = web.RouteTableDef()


class _Body(BaseModel):
    Image: str


RAISES: dict[str, BaseException] = {
    "notfound": errors.NotFound("No such container: x"),
    "invalid": errors.InvalidParameter("bad parameter"),
    "conflict": errors.Conflict("in use"),
    "notmodified": errors.NotModified("already started"),
    "forbidden": errors.Forbidden("never"),
    "unauthorized": errors.Unauthorized("who are you"),
    "unavailable": errors.Unavailable("shutting down"),
    "notsupported": errors.NotSupported("not here"),
    "system": errors.SystemError_("disk on fire"),
    "bug": RuntimeError("unexpected"),
}


@test_routes.get("/raise/{what}")
async def raise_it(request: web.Request) -> web.Response:
    raise RAISES[request.match_info["what"]]


@test_routes.post("/validate")
async def validate(request: web.Request) -> web.Response:
    _Body.model_validate(await read_json(request))
    return web.Response(status=201)


@test_routes.get("/whatversion")
async def what_version(request: web.Request) -> web.Response:
    major, minor = request_version(request)
    request.app[TEST_KEY]["calls"] += 1
    return web.Response(text=f"{major}.{minor}")


@test_routes.get("/needs-new")
@min_api_version("1.45")
async def needs_new(request: web.Request) -> web.Response:
    return web.Response(text="ok")


@test_routes.get("/containers/{name:.*}/json")
async def greedy(request: web.Request) -> web.Response:
    request.app[TEST_KEY]["greedy"] += 1
    return web.Response(text=request.match_info["name"])


# --- serving ----------------------------------------------------------------------------------


@dataclass
class Served:
    socket: str
    bus: EventBus
    counters: TestBackend
    server: ApiServer

    def session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=self.socket))

    async def raw(self, data: bytes) -> rawhttp.Response:
        return await asyncio.to_thread(rawhttp.send_raw, self.socket, data, 5.0)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    # unix socket paths are limited to 108 bytes: pytest's tmp_path can be longer
    path = Path(tempfile.mkdtemp(prefix="wt-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest_asyncio.fixture
async def served(short_tmp: Path) -> AsyncIterator[Served]:
    bus = EventBus()
    counters: TestBackend = {"calls": 0, "greedy": 0}
    mounts: list[Mount[Any]] = [*fake_mounts(bus=bus), Mount(test_routes, TEST_KEY, counters)]
    app = build_app(mounts)
    path = short_tmp / "api.sock"
    listener = await asyncio.to_thread(open_unix_listener, path, None)
    server = ApiServer(app, [listener], shutdown_timeout=5)
    await server.start()
    try:
        yield Served(str(path), bus, counters, server)
    finally:
        await server.stop()
        await asyncio.to_thread(close_listeners, [listener])


def assert_common(headers: object) -> None:
    get = headers.get  # type: ignore[attr-defined]
    assert get("Api-Version") == "1.50"
    assert get("Server", "").startswith("Docker/") and get("Server", "").endswith(" (linux)")
    assert get("Ostype") == "linux"
    assert get("Docker-Experimental") == "false"


# --- /_ping, /version, /info ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_get_ping_exact_headers(served: Served) -> None:
    async with served.session() as s, s.get("http://d/_ping") as r:
        assert r.status == 200
        assert await r.read() == b"OK"
        assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert r.headers["Content-Length"] == "2"
        assert r.headers["Builder-Version"] == "1"
        assert r.headers["Swarm"] == "inactive"
        assert r.headers["Cache-Control"] == "no-cache, no-store, must-revalidate"
        assert r.headers["Pragma"] == "no-cache"
        assert_common(r.headers)


@pytest.mark.asyncio
async def test_head_ping(served: Served) -> None:
    resp = await served.raw(b"HEAD /_ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert resp.status == 200
    assert resp.header("Content-Length") == "0"
    assert resp.header("Content-Type") == "text/plain; charset=utf-8"
    assert resp.header("Builder-Version") == "1"
    assert resp.body == b""
    assert resp.header("Api-Version") == "1.50"


@pytest.mark.asyncio
async def test_version_body(served: Served) -> None:
    async with served.session() as s, s.get("http://d/version") as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "application/json"
        body = await r.json()
    assert body["ApiVersion"] == "1.50" and body["MinAPIVersion"] == "1.24"
    assert body["Os"] == "linux" and body["Arch"] == "amd64"
    engine = body["Components"][0]
    assert engine["Name"] == "Engine"
    assert engine["Details"]["ApiVersion"] == "1.50"
    assert engine["Details"]["MinAPIVersion"] == "1.24"
    runc = next(c for c in body["Components"] if c["Name"] == "runc")
    assert runc["Version"] == "1.1.5+ds1"
    assert runc["Details"]["GitCommit"] == "1.1.5+ds1-1+deb12u1"


@pytest.mark.asyncio
async def test_info_body(served: Served) -> None:
    async with served.session() as s, s.get("http://d/v1.50/info") as r:
        assert r.status == 200
        body = await r.json()
    assert (body["Containers"], body["ContainersRunning"], body["ContainersStopped"]) == (3, 1, 2)
    assert body["Images"] == 4
    assert body["Driver"] == "overlay2"
    assert body["DriverStatus"] == [["Backing Filesystem", "extfs"]]
    assert body["Swarm"]["LocalNodeState"] == "inactive"
    assert body["CgroupDriver"] == "cgroupfs" and body["CgroupVersion"] == "1"
    assert body["Runtimes"] == {"runc": {"path": "/usr/sbin/runc"}}
    assert body["DefaultRuntime"] == "runc"
    assert body["RuncCommit"] == {"ID": "1.1.5+ds1-1+deb12u1"}
    assert body["SecurityOptions"] == ["name=seccomp,profile=builtin"]
    assert body["LiveRestoreEnabled"] is True
    assert body["RegistryConfig"]["InsecureRegistryCIDRs"] == ["::1/128", "127.0.0.0/8"]
    assert isinstance(body["NCPU"], int) and isinstance(body["MemTotal"], int)
    assert body["SystemTime"].endswith("Z")


@pytest.mark.asyncio
async def test_version_and_info_are_fast(served: Served) -> None:
    async with served.session() as s:
        for path in ("/version", "/info"):
            times = []
            for _ in range(30):
                start = time.perf_counter()
                async with s.get(f"http://d{path}") as r:
                    await r.read()
                times.append(time.perf_counter() - start)
            # a round trip through client and server; the handler itself is far cheaper
            assert statistics.median(times) < 0.010, (path, statistics.median(times))


# --- common headers, errors, unknown routes -------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("what", "status"),
    [
        ("notfound", 404),
        ("invalid", 400),
        ("conflict", 409),
        ("forbidden", 403),
        ("unauthorized", 401),
        ("unavailable", 503),
        ("notsupported", 501),
        ("system", 500),
        ("bug", 500),
    ],
)
async def test_errors_are_json_with_exact_content_type(
    served: Served, what: str, status: int
) -> None:
    async with served.session() as s, s.get(f"http://d/v1.41/raise/{what}") as r:
        assert r.status == status
        assert r.headers["Content-Type"] == "application/json"
        body = json.loads(await r.read())
        assert body == {"message": str(RAISES[what])}
        assert_common(r.headers)


@pytest.mark.asyncio
async def test_not_modified_has_no_body(served: Served) -> None:
    async with served.session() as s, s.get("http://d/raise/notmodified") as r:
        assert r.status == 304
        assert await r.read() == b""
        assert_common(r.headers)


@pytest.mark.asyncio
async def test_validation_error_is_400(served: Served) -> None:
    async with served.session() as s:
        async with s.post("http://d/validate", json={"Image": 123}) as r:
            assert r.status == 400
            assert (await r.json())["message"].startswith("invalid JSON: Image")
        async with s.post("http://d/validate", json={"Image": "busybox"}) as r:
            assert r.status == 201


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        (b'{"Image":"busybox",', {"Content-Type": "application/json"}, "invalid JSON: "),
        (b'{"Image":"busybox"} xyz', {"Content-Type": "application/json"},
         "unexpected content after JSON"),
        (b'{"Image":"busybox"}', {"Content-Type": "text/plain"},
         "unsupported Content-Type header (text/plain): must be 'application/json'"),
        (b"[" * 100_000 + b"]" * 100_000, {"Content-Type": "application/json"}, "invalid JSON"),
    ],
)
async def test_bad_bodies_are_400(
    served: Served, body: bytes, headers: dict[str, str], message: str
) -> None:
    async with served.session() as s, s.post("http://d/validate", data=body, headers=headers) as r:
        assert r.status == 400
        assert r.headers["Content-Type"] == "application/json"
        assert (await r.json())["message"].startswith(message)


@pytest.mark.asyncio
async def test_body_over_limit_is_413_json(served: Served) -> None:
    body = b'{"Image":"' + b"a" * (66 * 1024 * 1024) + b'"}'
    headers = {"Content-Type": "application/json"}
    async with served.session() as s, s.post("http://d/validate", data=body, headers=headers) as r:
        assert r.status == 413
        assert r.headers["Content-Type"] == "application/json"
        assert "message" in await r.json()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/nothing"), ("GET", "/v1.50/nothing"), ("POST", "/_ping"), ("PUT", "/version"),
     ("GET", "/v1.99/nothing")],
)
async def test_unknown_route_and_method_are_json_404(
    served: Served, method: str, path: str
) -> None:
    async with served.session() as s, s.request(method, f"http://d{path}") as r:
        assert r.status == 404
        assert r.headers["Content-Type"] == "application/json"
        assert await r.json() == {"message": "page not found"}
        assert_common(r.headers)


def test_common_headers_for_raw_writers() -> None:
    headers = common_headers()
    assert set(headers) == set(COMMON)
    assert headers["Api-Version"] == "1.50"


# --- versions (B19) ------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("prefix", "status", "text"),
    [
        ("", 200, "1.50"),
        ("/v1.24", 200, "1.24"),
        ("/v1.41", 200, "1.41"),
        ("/v1.50", 200, "1.50"),
        ("/v1.51", 400,
         "client version 1.51 is too new. Maximum supported API version is 1.50"),
        ("/v1.99", 400,
         "client version 1.99 is too new. Maximum supported API version is 1.50"),
        ("/v2.0", 400, "client version 2.0 is too new. Maximum supported API version is 1.50"),
        ("/v1.23", 400,
         "client version 1.23 is too old. Minimum supported API version is 1.24, please "
         "upgrade your client to a newer version"),
        ("/v1.11", 400,
         "client version 1.11 is too old. Minimum supported API version is 1.24, please "
         "upgrade your client to a newer version"),
    ],
)
async def test_version_prefixes(served: Served, prefix: str, status: int, text: str) -> None:
    async with served.session() as s, s.get(f"http://d{prefix}/whatversion") as r:
        assert r.status == status
        assert_common(r.headers)
        if status == 200:
            assert await r.text() == text
        else:
            assert r.headers["Content-Type"] == "application/json"
            assert await r.json() == {"message": text}


@pytest.mark.asyncio
async def test_min_api_version_gate(served: Served) -> None:
    async with served.session() as s:
        async with s.get("http://d/v1.44/needs-new") as r:
            assert r.status == 400
            assert await r.json() == {
                "message": "GET /needs-new requires minimum API version 1.45"
            }
        for path in ("/v1.45/needs-new", "/needs-new"):
            async with s.get(f"http://d{path}") as r:
                assert r.status == 200


# --- raw HTTP (B28) and header limits (L11) --------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"GET /_ping HTTP/1.1\r\n\r\n", id="no-host"),
        pytest.param(b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
                     id="cl-abc"),
        pytest.param(b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                     b"Content-Length: 2\r\n\r\n{}", id="two-cl"),
        pytest.param(b"HELLO\r\n\r\n", id="garbage"),
        pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", id="h2-preface"),
        pytest.param(b"POST /validate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"zz\r\nhello\r\n0\r\n\r\n", id="bad-chunk"),
    ],
)
async def test_malformed_requests_are_400(served: Served, request_bytes: bytes) -> None:
    resp = await served.raw(request_bytes)
    assert resp.status == 400
    assert resp.header("Api-Version") == "1.50"


@pytest.mark.asyncio
async def test_content_length_with_chunked_is_never_smuggled(served: Served) -> None:
    # Go lets chunked win; llhttp rejects the pair outright (RFC 9112 §6.3 allows both).
    # Either way the 3 bytes of Content-Length are never taken as the body.
    body = b'{"Image":"busybox"}'
    resp = await served.raw(
        b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    )
    assert resp.status in (201, 400)


@pytest.mark.asyncio
async def test_http10_without_host_is_fine(served: Served) -> None:
    resp = await served.raw(b"GET /_ping HTTP/1.0\r\n\r\n")
    assert resp.status == 200


@pytest.mark.asyncio
async def test_pipelined_pings_answer_in_order(served: Served) -> None:
    def exchange() -> list[tuple[int, bytes]]:
        with rawhttp.Connection(served.socket, timeout=5) as conn:
            conn.send_raw(
                b"GET /whatversion HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /v1.41/whatversion HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /v1.24/whatversion HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            return [(r.status, r.body) for r in (conn.read_response() for _ in range(3))]

    assert await asyncio.to_thread(exchange) == [(200, b"1.50"), (200, b"1.41"), (200, b"1.24")]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("path", "location"),
    [
        ("/containers/../info", "/info"),
        ("/containers/%2e%2e/info", "/info"),
        ("/containers/a/../b/json", "/containers/b/json"),
        ("//_ping", "/_ping"),
        ("/v1.41/./version", "/v1.41/version"),
    ],
)
async def test_dot_segments_redirect_and_never_route(
    served: Served, path: str, location: str
) -> None:
    resp = await served.raw(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert resp.status == 301
    assert resp.header("Location") == location
    assert served.counters["greedy"] == 0


def test_clean_path() -> None:
    assert clean_path("/a/b/../c") == "/a/c"
    assert clean_path("/../x") == "/x"
    assert clean_path("/a//b/") == "/a/b/"
    assert clean_path("/images/localhost:5000/x:1/json") == "/images/localhost:5000/x:1/json"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param(b"X-Big: " + b"a" * 100_000 + b"\r\n", 200, id="100KB-header"),
        pytest.param(b"".join(b"X-H%d: v\r\n" % i for i in range(5000)), 200, id="5000-headers"),
        pytest.param(b"X-Big: " + b"a" * 1_100_000 + b"\r\n", 431, id="1.1MB-header"),
        pytest.param(b"".join(b"X-H%d: v\r\n" % i for i in range(10_000)), 431,
                     id="10000-headers"),
    ],
)
async def test_header_limits(served: Served, headers: bytes, status: int) -> None:
    data = b"GET /_ping HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"
    assert await asyncio.to_thread(_status_while_sending, served.socket, data) == status


def _status_while_sending(path: str, data: bytes) -> int:
    """Send from one thread while reading in another: the server may answer (431) and
    close before it has read everything, and the answer must still be seen."""
    with rawhttp.Connection(path, timeout=10) as conn:

        def send() -> None:
            with contextlib.suppress(OSError):
                conn.send_raw(data)

        sender = threading.Thread(target=send)
        sender.start()
        try:
            return conn.read_head().status
        finally:
            sender.join()


# --- events ----------------------------------------------------------------------------------


def _events_url(**query: str) -> str:
    from urllib.parse import urlencode

    return "/events" + ("?" + urlencode(query) if query else "")


async def _wait_listeners(bus: EventBus, count: int) -> None:
    for _ in range(200):
        if bus.listener_count == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"listener count {bus.listener_count}, expected {count}")


@pytest.mark.asyncio
async def test_events_stream_headers_then_one_object_per_event(served: Served) -> None:
    async with served.session() as s, s.get("http://d/v1.50/events") as r:
        # the headers arrived although no event exists yet
        assert r.status == 200
        assert r.headers["Content-Type"] == "application/json"
        assert r.headers["Transfer-Encoding"] == "chunked"
        assert_common(r.headers)
        await _wait_listeners(served.bus, 1)
        attrs = {"com.docker.compose.project": "p", "image": "busybox", "name": "evtest",
                 "exitCode": "3"}
        served.bus.emit("container", "die", "c" * 64, attrs)
        served.bus.emit("image", "tag", "sha256:" + "a" * 64, {"name": "busybox:latest"})
        first = json.loads(await asyncio.wait_for(r.content.readline(), 5))
        second = json.loads(await asyncio.wait_for(r.content.readline(), 5))
    assert list(first) == ["status", "id", "from", "Type", "Action", "Actor", "scope", "time",
                           "timeNano"]
    assert first["status"] == first["Action"] == "die"
    assert first["id"] == first["Actor"]["ID"] == "c" * 64
    assert first["from"] == "busybox"
    assert first["Actor"]["Attributes"] == attrs
    assert first["scope"] == "local"
    assert first["time"] == first["timeNano"] // 1_000_000_000
    assert second["Type"] == "image" and second["status"] == "tag" and "from" not in second
    await _wait_listeners(served.bus, 0)


@pytest.mark.asyncio
async def test_events_filters_both_forms(served: Served) -> None:
    now = time.time()
    served.bus.emit("container", "start", "c1", {"name": "a", "com.docker.compose.project": "p"})
    served.bus.emit("container", "start", "c2", {"name": "b"})
    served.bus.emit("image", "pull", "i1", {"name": "busybox"})
    until = f"{time.time() + 0.05:.9f}"
    for filters in (
        {"label": {"com.docker.compose.project=p": True}, "type": {"container": True}},
        {"label": ["com.docker.compose.project=p"], "type": ["container"]},
    ):
        url = _events_url(since=str(int(now) - 1), until=until, filters=json.dumps(filters))
        async with served.session() as s, s.get(f"http://d{url}") as r:
            assert r.status == 200
            lines = (await r.read()).splitlines()
        assert [json.loads(line)["Actor"]["ID"] for line in lines] == ["c1"]


@pytest.mark.asyncio
async def test_events_until_in_past_replays_and_ends(served: Served) -> None:
    served.bus.emit("container", "create", "c1", {"name": "x"})
    served.bus.emit("container", "destroy", "c1", {"name": "x"})
    until = f"{time.time():.9f}"
    async with served.session() as s, s.get(f"http://d/events?since=0&until={until}") as r:
        body = await asyncio.wait_for(r.read(), 5)
    assert [json.loads(line)["Action"] for line in body.splitlines()] == ["create", "destroy"]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"filters": '{"relx":["x"]}'}, "invalid filter 'relx'"),
        ({"filters": "{bad"}, "invalid filter: "),
        ({"since": "abc"}, "invalid value for since: "),
        ({"since": "100", "until": "1"}, "`since` time (100) cannot be after `until` time (1)"),
    ],
)
async def test_events_bad_parameters(
    served: Served, query: dict[str, str], message: str
) -> None:
    async with served.session() as s, s.get(f"http://d{_events_url(**query)}") as r:
        assert r.status == 400
        assert r.headers["Content-Type"] == "application/json"
        assert (await r.json())["message"].startswith(message)


@pytest.mark.asyncio
async def test_events_rfc3339_since(served: Served) -> None:
    served.bus.emit("container", "start", "c9", {"name": "x"})
    until = f"{time.time():.9f}"
    async with served.session() as s, s.get(
        f"http://d{_events_url(since='2020-01-01T00:00:00Z', until=until)}"
    ) as r:
        assert r.status == 200
        assert b'"c9"' in await r.read()


@pytest.mark.asyncio
async def test_events_follower_released_when_client_leaves(served: Served) -> None:
    def open_and_drop() -> None:
        with rawhttp.Connection(served.socket, timeout=5) as conn:
            conn.send_request("GET", "/events")
            assert conn.read_head().status == 200

    await asyncio.to_thread(open_and_drop)
    # no event is ever published: only the disconnect can end the handler
    await _wait_listeners(served.bus, 0)


@pytest.mark.asyncio
async def test_shutdown_ends_event_streams_at_once(served: Served) -> None:
    async with served.session() as s, s.get("http://d/events") as r:
        await _wait_listeners(served.bus, 1)
        start = time.monotonic()
        stop = asyncio.create_task(served.server.stop())
        assert await asyncio.wait_for(r.read(), 5) == b""
        await asyncio.wait_for(stop, 5)
    # far below the 5 s shutdown timeout: the stream ended, it was not waited out
    assert time.monotonic() - start < 2
