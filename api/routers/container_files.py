"""Container files and figures: archive (``docker cp``), export, changes, top, stats.

Handlers parse, call the backend, serialise; engine errors propagate to the single
mapping in api/errors.py. Streamed answers (tar, stats) look at the first piece before
sending the status line, so a missing container or path is still a proper 404.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Protocol

from aiohttp import web

from api import lifecycle, params
from api.errors import json_bytes, json_response
from engine.containers.archive import PathStat
from engine.errors import InvalidParameter

STAT_HEADER = "X-Docker-Container-Path-Stat"
TAR_CONTENT_TYPE = "application/x-tar"
_BODY_CHUNK = 1 << 20


class ContainerFilesBackend(Protocol):
    async def stat_path(self, ref: str, path: str) -> PathStat: ...
    def get_archive(
        self, ref: str, path: str
    ) -> contextlib.AbstractAsyncContextManager[tuple[PathStat, AsyncIterator[bytes]]]: ...
    async def put_archive(
        self, ref: str, path: str, body: AsyncIterator[bytes], *,
        no_overwrite_dir_non_dir: bool = False, copy_uid_gid: bool = False,
    ) -> None: ...
    def export(self, ref: str) -> contextlib.AbstractAsyncContextManager[AsyncIterator[bytes]]: ...
    async def changes(self, ref: str) -> list[dict[str, object]] | None: ...
    async def top(self, ref: str, ps_args: str = "") -> dict[str, Any]: ...
    def stats(
        self, ref: str, *, stream: bool = True, one_shot: bool = False
    ) -> AsyncGenerator[dict[str, Any], None]: ...


BACKEND: web.AppKey[ContainerFilesBackend] = web.AppKey(
    "container_files", ContainerFilesBackend
)
routes = web.RouteTableDef()


def _backend(request: web.Request) -> ContainerFilesBackend:
    return request.app[BACKEND]


def _path(request: web.Request) -> str:
    path = request.query.get("path", "")
    if not path:
        raise InvalidParameter("bad parameter: path cannot be empty")
    if "\x00" in path:
        # No file name holds one; the kernel would refuse it deeper down (EINVAL).
        raise InvalidParameter(f"invalid path {path!r}: NUL byte (\\x00) not allowed")
    return path


def stat_header(path_stat: PathStat) -> str:
    """Standard base64 (with padding) of the stat JSON, as the CLI and docker-py decode."""
    return base64.b64encode(json.dumps(path_stat.to_json(), separators=(",", ":"),
                                       ensure_ascii=False).encode()).decode()


async def _stream_tar(
    request: web.Request, chunks: AsyncIterator[bytes], headers: dict[str, str]
) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers={"Content-Type": TAR_CONTENT_TYPE,
                                                       **headers})
    response.enable_chunked_encoding()
    await response.prepare(request)
    async for chunk in chunks:
        await response.write(chunk)
    await response.write_eof()
    return response


@routes.head("/containers/{name}/archive")
async def head_containers_archive(request: web.Request) -> web.Response:
    path_stat = await _backend(request).stat_path(request.match_info["name"], _path(request))
    return web.Response(status=200, headers={STAT_HEADER: stat_header(path_stat)})


@routes.get("/containers/{name}/archive")
async def get_containers_archive(request: web.Request) -> web.StreamResponse:
    backend = _backend(request)
    async with backend.get_archive(request.match_info["name"], _path(request)) as (st, chunks):
        return await _stream_tar(request, chunks, {STAT_HEADER: stat_header(st)})


@routes.put("/containers/{name}/archive")
async def put_containers_archive(request: web.Request) -> web.Response:
    await _backend(request).put_archive(
        request.match_info["name"],
        _path(request),
        request.content.iter_chunked(_BODY_CHUNK),
        no_overwrite_dir_non_dir=params.bool_param(request, "noOverwriteDirNonDir"),
        copy_uid_gid=params.bool_param(request, "copyUIDGID"),
    )
    return web.Response(status=200)


@routes.get("/containers/{name}/export")
async def get_containers_export(request: web.Request) -> web.StreamResponse:
    async with _backend(request).export(request.match_info["name"]) as chunks:
        return await _stream_tar(request, chunks, {})


@routes.get("/containers/{name}/changes")
async def get_containers_changes(request: web.Request) -> web.Response:
    return json_response(await _backend(request).changes(request.match_info["name"]))


@routes.get("/containers/{name}/top")
async def get_containers_top(request: web.Request) -> web.Response:
    ps_args = request.query.get("ps_args", "")
    return json_response(await _backend(request).top(request.match_info["name"], ps_args))


@routes.get("/containers/{name}/stats")
async def get_containers_stats(request: web.Request) -> web.StreamResponse:
    stream = params.bool_param(request, "stream", default=True)
    one_shot = params.bool_param(request, "one-shot")
    if stream and one_shot:
        raise InvalidParameter("cannot have stream=true and one-shot=true")
    docs = _backend(request).stats(request.match_info["name"], stream=stream,
                                   one_shot=one_shot)
    async with contextlib.aclosing(docs):
        first = await anext(docs)  # errors (no such container) before the status line
        if not stream:
            return web.Response(body=json_bytes(first) + b"\n", status=200,
                                content_type="application/json")
        response = web.StreamResponse(status=200,
                                      headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(json_bytes(first) + b"\n")
        async with contextlib.aclosing(lifecycle.follow(request, docs)) as following:
            async for doc in following:
                await response.write(json_bytes(doc) + b"\n")
        await response.write_eof()
        return response
