"""Containers router: create, list, inspect, start, stop, kill, wait, attach, logs, remove.

Handlers parse, call the backend, serialise. Engine errors propagate to the single
mapping in api/errors.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

from aiohttp import web

from api import lifecycle, params
from api.errors import json_bytes, json_response
from api.jsontext import json_body_response, json_list_response
from api.models.containers import (
    inspect_body,
    list_item,
    parse_create_body,
    parse_update_body,
)
from api.routers.attach_session import AttachChoice, run_attach_session
from api.streams import MULTIPLEXED, RAW_STREAM, frame, hijack, hijacked_response
from api.timestamps import parse_unix_nano
from api.versioning import request_version
from engine.containers.logs import LogRecord, format_timestamp
from engine.containers.model import ContainerView
from engine.containers.streams import StreamSet
from engine.errors import InvalidParameter, NotFound


class ContainerBackend(Protocol):
    def get(self, ref: str) -> ContainerView: ...
    def inspect(self, ref: str) -> ContainerView: ...
    def log_path(self, container_id: str) -> Any: ...
    def mounts(self, container_id: str) -> list[dict[str, Any]]: ...
    def network_settings(self, container_id: str) -> dict[str, Any]: ...
    async def list_views(
        self, *, all_: bool, limit: int | None, filters: dict[str, list[str]]
    ) -> list[ContainerView]: ...
    async def create(
        self, body: dict[str, Any], name: str | None, platform: str | None = None
    ) -> tuple[str, list[str]]: ...
    async def start(self, ref: str) -> None: ...
    async def stop(
        self, ref: str, stop_timeout: int | None = None, signal_: str | None = None
    ) -> None: ...
    async def kill(self, ref: str, signal_: str | None = None) -> None: ...
    async def wait(self, ref: str, condition: str = "not-running") -> asyncio.Future[int]: ...
    def forget_waiter(self, future: asyncio.Future[int]) -> None: ...
    async def attach(
        self, ref: str, streams: StreamSet, *, use_stdin: bool, logs: bool = False
    ) -> None: ...
    async def resize(self, ref: str, height: int, width: int) -> None: ...
    def logs(
        self, ref: str, *, stdout: bool = True, stderr: bool = True, since_nano: int | None = None,
        until_nano: int | None = None, tail: int | None = None, follow: bool = False,
    ) -> AsyncIterator[LogRecord]: ...
    async def remove(self, ref: str, force: bool = False, volumes: bool = False) -> None: ...
    async def remove_link(self, link_name: str) -> None: ...
    def log_details(self, ref: str) -> bytes: ...
    async def prune(self, filters: dict[str, list[str]]) -> tuple[list[str], int]: ...
    async def update(self, ref: str, changes: dict[str, Any]) -> list[str]: ...
    async def pause(self, ref: str) -> None: ...
    async def unpause(self, ref: str) -> None: ...
    async def rename(self, ref: str, new_name: str) -> None: ...


BACKEND: web.AppKey[ContainerBackend] = web.AppKey("containers", ContainerBackend)
routes = web.RouteTableDef()

_LOG_FLUSH_BYTES = 256 * 1024


def _backend(request: web.Request) -> ContainerBackend:
    return request.app[BACKEND]


def _stream_content_type(request: web.Request, tty: bool) -> str:
    if tty or request_version(request) < (1, 42):
        return RAW_STREAM
    return MULTIPLEXED


SUBPATH_FROM = (1, 45)


def _refuse_newer_fields(body: dict[str, Any], version: tuple[int, int]) -> None:
    """Fields a client of an older API version cannot have meant, refused as dockerd does
    (silently ignoring a volume subpath would mount the whole volume instead)."""
    if version < SUBPATH_FROM:
        for mount in body["HostConfig"].get("Mounts") or []:
            if (mount.get("VolumeOptions") or {}).get("Subpath"):
                raise InvalidParameter("VolumeOptions.Subpath needs API v1.45 or newer")


@routes.post("/containers/create")
async def post_containers_create(request: web.Request) -> web.Response:
    body = parse_create_body(await params.read_json(request))
    _refuse_newer_fields(body, request_version(request))
    name = request.query.get("name") or None
    container_id, warnings = await _backend(request).create(
        body, name, request.query.get("platform") or None
    )
    return json_response({"Id": container_id, "Warnings": warnings}, status=201)


@routes.get("/containers/json")
async def get_containers_json(request: web.Request) -> web.Response:
    filters = params.filters_param(
        request,
        {"id", "name", "label", "status", "ancestor", "exited", "before", "since", "health",
         "isolation", "is-task", "network", "publish", "expose", "volume"},
    )
    limit = params.int_param(request, "limit")
    views = await _backend(request).list_views(
        all_=params.bool_param(request, "all"), limit=limit, filters=filters
    )
    now = time.time()
    backend = _backend(request)
    return json_list_response(
        views,
        lambda view: list_item(view, now, backend.mounts(view.id),
                               backend.network_settings(view.id)),
        lambda view: f"container {view.id}", "containers",
    )


@routes.post("/containers/prune")
async def post_containers_prune(request: web.Request) -> web.Response:
    filters = params.filters_param(request, {"until", "label", "label!"})
    deleted, reclaimed = await _backend(request).prune(filters)
    return json_response({"ContainersDeleted": deleted or None, "SpaceReclaimed": reclaimed})


@routes.get("/containers/{name}/json")
async def get_containers_inspect(request: web.Request) -> web.Response:
    backend = _backend(request)
    view = backend.inspect(request.match_info["name"])
    log_path = str(backend.log_path(view.id))
    bundle = log_path.rsplit("/", 1)[0]
    return json_body_response(
        inspect_body(view, log_path=log_path, bundle=bundle, mounts=backend.mounts(view.id),
                     network=backend.network_settings(view.id))
    )


@routes.post("/containers/{name}/start")
async def post_containers_start(request: web.Request) -> web.Response:
    await _backend(request).start(request.match_info["name"])
    return web.Response(status=204)


@routes.post("/containers/{name}/stop")
async def post_containers_stop(request: web.Request) -> web.Response:
    await _backend(request).stop(
        request.match_info["name"], params.int_param(request, "t"),
        request.query.get("signal") or None,
    )
    return web.Response(status=204)


@routes.post("/containers/{name}/restart")
async def post_containers_restart(request: web.Request) -> web.Response:
    backend = _backend(request)
    ref = request.match_info["name"]
    if backend.get(ref).running:
        with contextlib.suppress(Exception):
            await backend.stop(ref, params.int_param(request, "t"), request.query.get("signal"))
    await backend.start(ref)
    return web.Response(status=204)


@routes.post("/containers/{name}/kill")
async def post_containers_kill(request: web.Request) -> web.Response:
    await _backend(request).kill(request.match_info["name"], request.query.get("signal") or None)
    return web.Response(status=204)


@routes.post("/containers/{name}/wait")
async def post_containers_wait(request: web.Request) -> web.StreamResponse:
    backend = _backend(request)
    condition = request.query.get("condition") or "not-running"
    future = await backend.wait(request.match_info["name"], condition)
    # The CLI sends `start` only after these headers arrive: flush them before waiting.
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    try:
        await lifecycle.first_of(lifecycle.stop_signals(request), asyncio.shield(future))
    except BaseException:
        backend.forget_waiter(future)
        raise
    if not future.done():
        # The client left or the daemon is stopping: drop the waiter, end the body.
        backend.forget_waiter(future)
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response
    code = future.result()
    await response.write(json_bytes({"Error": None, "StatusCode": code}) + b"\n")
    await response.write_eof()
    return response


@routes.post("/containers/{name}/resize")
async def post_containers_resize(request: web.Request) -> web.Response:
    height = params.int_param(request, "h", 0) or 0
    width = params.int_param(request, "w", 0) or 0
    await _backend(request).resize(request.match_info["name"], height, width)
    return web.Response(status=200)


@routes.post("/containers/{name}/attach")
async def post_containers_attach(request: web.Request) -> web.StreamResponse:
    backend = _backend(request)
    view = backend.get(request.match_info["name"])
    tty = view.config.tty
    choice = AttachChoice.from_query(request)
    connection = await hijack(request, _stream_content_type(request, tty))

    async def write_output(stream_id: int, data: bytes) -> None:
        await connection.write(data if tty else frame(stream_id, data))

    try:
        await run_attach_session(
            request, backend, view.id, choice, write_output=write_output,
            read_stdin=connection.read, client_gone=connection.wait_closed,
        )
    finally:
        await connection.finish()
    return hijacked_response()


def _tail(raw: str | None) -> int | None:
    if raw is None or raw in ("", "all"):
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidParameter(f"invalid value for tail: {raw!r}") from None
    return None if value < 0 else value


@routes.get("/containers/{name}/logs")
async def get_containers_logs(request: web.Request) -> web.StreamResponse:
    backend = _backend(request)
    view = backend.get(request.match_info["name"])
    stdout = params.bool_param(request, "stdout")
    stderr = params.bool_param(request, "stderr")
    if not (stdout or stderr):
        raise InvalidParameter("Bad parameters: you must choose at least one stream")
    follow = params.bool_param(request, "follow")
    timestamps = params.bool_param(request, "timestamps")
    details = backend.log_details(view.id) if params.bool_param(request, "details") else b""
    records = backend.logs(
        view.id, stdout=stdout, stderr=stderr,
        since_nano=parse_unix_nano(request.query.get("since")),
        until_nano=parse_unix_nano(request.query.get("until")),
        tail=_tail(request.query.get("tail")), follow=follow,
    )
    tty = view.config.tty
    response = web.StreamResponse(
        status=200, headers={"Content-Type": _stream_content_type(request, tty)}
    )
    response.enable_chunked_encoding()
    await response.prepare(request)
    if follow:
        records = lifecycle.follow(request, records)
    try:
        await _write_log_records(response, records, tty=tty, follow=follow,
                                 timestamps=timestamps, details=details)
    except ConnectionError:
        return response  # the client went away; nothing more to say to it
    await response.write_eof()
    return response


async def _write_log_records(
    response: web.StreamResponse, records: AsyncIterator[LogRecord], *, tty: bool,
    follow: bool, timestamps: bool, details: bytes,
) -> None:
    pending: list[bytes] = []
    size = 0
    async for record in records:
        data = record.data
        if details:
            data = details + data
        if timestamps:
            data = format_timestamp(record.time_nano).encode() + b" " + data
        encoded = data if tty else frame(record.stream, data)
        pending.append(encoded)
        size += len(encoded)
        # Following: every line goes out at once. Otherwise: large writes for throughput.
        if follow or size >= _LOG_FLUSH_BYTES:
            await response.write(b"".join(pending))
            pending.clear()
            size = 0
    if pending:
        await response.write(b"".join(pending))


@routes.delete("/containers/{name}")
async def delete_containers(request: web.Request) -> web.Response:
    await _backend(request).remove(
        request.match_info["name"],
        force=params.bool_param(request, "force"),
        volumes=params.bool_param(request, "v"),
    )
    return web.Response(status=204)


@routes.delete("/containers/{parent}/{alias}")
async def delete_container_link(request: web.Request) -> web.Response:
    """A legacy link is addressed as a container named ``<parent>/<alias>``."""
    name = f"{request.match_info['parent']}/{request.match_info['alias']}"
    if not params.bool_param(request, "link"):
        raise NotFound(f"No such container: {name}")
    await _backend(request).remove_link(name)
    return web.Response(status=204)


@routes.post("/containers/{name}/pause")
async def post_containers_pause(request: web.Request) -> web.Response:
    await _backend(request).pause(request.match_info["name"])
    return web.Response(status=204)


@routes.post("/containers/{name}/unpause")
async def post_containers_unpause(request: web.Request) -> web.Response:
    await _backend(request).unpause(request.match_info["name"])
    return web.Response(status=204)


@routes.post("/containers/{name}/rename")
async def post_containers_rename(request: web.Request) -> web.Response:
    await _backend(request).rename(request.match_info["name"], request.query.get("name", ""))
    return web.Response(status=204)


@routes.post("/containers/{name}/update")
async def post_containers_update(request: web.Request) -> web.Response:
    changes = parse_update_body(await params.read_json(request))
    warnings = await _backend(request).update(request.match_info["name"], changes)
    return json_response({"Warnings": warnings or None})
