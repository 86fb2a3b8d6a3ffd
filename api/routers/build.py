"""Build router: the classic builder's ``POST /build`` and ``POST /build/prune``
(api-notes §3.9, §3.10).

The query is moby's ``newImageBuildOptions`` (booleans case-insensitive: docker-py sends
``q=False``); the body is the context tar, streamed to the engine, never read whole.
The answer is a JSON progress stream: errors found before the first message (a bad
tag, the context, the Dockerfile) are plain HTTP errors, later ones end the stream with
``errorDetail`` (a failed RUN carries its exit code, which the CLI exits with).
``version=2`` (BuildKit) is refused: this daemon has no BuildKit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Protocol

from aiohttp import web

from api import params
from api.errors import json_response
from api.jsontext import replace_lone_surrogates
from api.models.gojson import decode
from api.models.hostconfig import HostConfig
from api.routers.images import ProgressStream
from engine.builder.manager import BuildPruneReport
from engine.builder.options import BuildOptions, RunLimits
from engine.errors import InvalidParameter, NotSupported, Unavailable
from engine.images.auth import decode_registry_config
from engine.images.progress import ProgressSink

_UPLOAD_CHUNK = 1 << 16
# How often a running build checks that its client is still connected (seconds).
_CLIENT_CHECK = 0.25

log = logging.getLogger(__name__)


class BuildBackend(Protocol):
    async def build(
        self, body: AsyncIterator[bytes], options: BuildOptions, sink: ProgressSink
    ) -> str: ...
    async def prune(self) -> BuildPruneReport: ...


BACKEND: web.AppKey[BuildBackend] = web.AppKey("build", BuildBackend)
routes = web.RouteTableDef()


@routes.post("/build")
async def post_build(request: web.Request) -> web.StreamResponse:
    options = build_options(request)
    backend = request.app[BACKEND]
    body = request.content.iter_chunked(_UPLOAD_CHUNK)

    async def build(sink: ProgressSink) -> None:
        await _cancelled_if_client_leaves(request, backend.build(body, options, sink))

    return await ProgressStream(request).run(build)


async def _cancelled_if_client_leaves(request: web.Request, work: Awaitable[str]) -> None:
    """Run the build while its client is connected; cancel it when the client goes (as
    dockerd does: a RUN's container is killed, nothing is tagged). A quiet RUN writes
    nothing, so the connection is watched rather than waiting for a failed write."""
    build = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_client_gone(request))
    cancelled = False
    try:
        await asyncio.wait({build, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not build.done():
            log.info("POST /build: the client went away, cancelling the build")
            cancelled = build.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await build
    if cancelled:
        raise Unavailable("the build was cancelled: its client went away")
    build.result()  # the build's own error, if any


async def _client_gone(request: web.Request) -> None:
    while True:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        await asyncio.sleep(_CLIENT_CHECK)


@routes.post("/build/prune")
async def post_build_prune(request: web.Request) -> web.Response:
    # Filters, ``all`` and ``keep-storage`` shape BuildKit's cache; the classic cache
    # is one set of entries, all of which go.
    params.filters_param(request, frozenset({"until", "unused-for", "id", "parent", "type",
                                             "description", "inuse", "shared", "private"}))
    report = await request.app[BACKEND].prune()
    return json_response({"CachesDeleted": report.deleted or None,
                          "SpaceReclaimed": report.space_reclaimed})


@routes.post("/build/cancel")
async def post_build_cancel(_request: web.Request) -> web.Response:
    raise NotSupported("build cancellation is a BuildKit feature; this daemon has no BuildKit")


# ------------------------------------------------------------------ the query
def build_options(request: web.Request) -> BuildOptions:
    query = request.query
    version = query.get("version", "1")
    if version == "2":
        raise InvalidParameter(
            "BuildKit is not supported by this daemon: build with the classic builder "
            "(DOCKER_BUILDKIT=0)")
    if version != "1":
        raise InvalidParameter(f"unsupported builder version {version!r}")
    if query.get("securityopt"):
        raise InvalidParameter("The daemon on this platform does not support setting "
                               "security options on build")
    force_remove = params.bool_param(request, "forcerm")
    options = BuildOptions(
        dockerfile=query.get("dockerfile") or "Dockerfile",
        remote=query.get("remote", ""),
        tags=tuple(t for t in query.getall("t", []) if t),
        build_args=_json_map(query.get("buildargs"), "buildargs", allow_null=True),
        labels={k: v or "" for k, v in
                _json_map(query.get("labels"), "labels", allow_null=False).items()},
        target=query.get("target", ""),
        no_cache=params.bool_param(request, "nocache"),
        pull=params.bool_param(request, "pull"),
        remove=params.bool_param(request, "rm", True) or force_remove,
        force_remove=force_remove,
        cache_from=tuple(_json_list(query.get("cachefrom"), "cachefrom")),
        platform=query.get("platform", ""),
        quiet=params.bool_param(request, "q"),
        limits=RunLimits(
            network_mode=query.get("networkmode", "") if query.get("networkmode") != "default"
            else "",
            shm_size=params.int_param(request, "shmsize", 0) or 0,
            memory=params.int_param(request, "memory", 0) or 0,
            memory_swap=params.int_param(request, "memswap", 0) or 0,
            cpu_shares=params.int_param(request, "cpushares", 0) or 0,
            cpuset_cpus=query.get("cpusetcpus", ""),
            cpu_period=params.int_param(request, "cpuperiod", 0) or 0,
            cpu_quota=params.int_param(request, "cpuquota", 0) or 0,
            cgroup_parent=query.get("cgroupparent", ""),
            # the CLI joins them with commas, docker-py repeats the parameter
            extra_hosts=tuple(h for v in query.getall("extrahosts", []) for h in v.split(",")
                              if h),
            ulimits=tuple(_json_list(query.get("ulimits"), "ulimits")),
        ),
        registry_auth=decode_registry_config(request.headers.get("X-Registry-Config")),
    )
    # The RUN steps' HostConfig is typed like a create body's before the build starts.
    decode(HostConfig, options.limits.host_config(), "container.HostConfig")
    return options


def _json_map(raw: str | None, name: str, allow_null: bool) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        raise InvalidParameter(f"failed to parse {name}: invalid JSON") from None
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(v, str) or (allow_null and v is None) for v in value.values()
    ):
        raise InvalidParameter(f"failed to parse {name}: expected a map of strings")
    for key, text in value.items():
        if "\x00" in key or "\x00" in (text or ""):
            # build args become a RUN step's environment, which cannot carry NUL
            raise InvalidParameter(
                f"invalid {name}: NUL byte (\\x00) not allowed: {key!r}"
            )
    return replace_lone_surrogates(value)  # type: ignore[no-any-return]


def _json_list(raw: str | None, name: str) -> list[Any]:
    if not raw:
        return []
    try:
        value = json.loads(raw)
    except ValueError:
        raise InvalidParameter(f"failed to parse {name}: invalid JSON") from None
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidParameter(f"failed to parse {name}: expected a list")
    return value
