"""The aiohttp application: middlewares, routes (each twice), typed backends, lifecycle.

Router convention: ``api/routers/<area>.py`` exports ``routes: web.RouteTableDef`` and
``BACKEND: web.AppKey[<its Protocol>]``. ``build_app`` takes ``Mount``s (routes, key,
backend) so tests can serve any subset of routers over fakes; ``make_app`` mounts every
router over one ``Engine`` and wraps ``engine.start()``/``engine.close()`` in a
``cleanup_ctx`` (startup runs before the first connection is accepted, cleanup after
the last request finished).

Every route is registered unversioned and under ``/v{version}``: aiohttp resolves routes
before middlewares run, so the prefix has to be part of the route.

Middlewares, outermost first:
1. errors: engine errors, pydantic errors, aiohttp's HTTP exceptions and anything else
   become ``{"message": ...}`` with ``Content-Type: application/json`` (api/errors.py);
2. path: ``.``/``..`` segments and ``//`` get a 301 to the cleaned path (Go's mux), so
   ``/containers/../info`` never reaches a greedy ``/containers/{name:.*}`` route;
3. version: out-of-range ``/vX.Y`` prefixes are rejected (api/versioning.py).
The common headers (``Api-Version``, ``Server``, ``Ostype``, ``Docker-Experimental``) are
added in ``on_response_prepare``, so streamed responses and errors carry them too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import posixpath
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler

from api import lifecycle
from api.errors import response_for_exception, response_for_http_exception
from api.params import MAX_JSON_BODY
from api.routers import events, system
from api.versioning import (
    EXPERIMENTAL,
    VERSION_PREFIX,
    add_common_headers,
    version_middleware,
)
from engine.system.info import SystemFacts

if TYPE_CHECKING:
    from engine.daemon import Engine

log = logging.getLogger(__name__)

B = TypeVar("B")


@dataclass(frozen=True)
class Mount(Generic[B]):
    """One router: its routes and the backend stored under its typed key."""

    routes: web.RouteTableDef
    key: web.AppKey[B]
    backend: B


Lifecycle = Callable[[web.Application], AsyncIterator[None]]


# --- middlewares --------------------------------------------------------------------


PREPARED_RESPONSE = web.RequestKey("prepared_response", web.StreamResponse)
# What the access log shows for a request whose client left before it was answered
# (nginx's convention); nothing is sent, the connection is gone.
CLIENT_CLOSED_REQUEST = 499


async def remember_prepared_response(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare hook: the error middleware needs the stream a handler started."""
    request[PREPARED_RESPONSE] = response


def client_gone(request: web.Request) -> bool:
    """The client's connection is closed (or closing): nothing we send will arrive."""
    closed = lifecycle.connection_closed(request)
    if closed is not None and closed.is_set():
        return True
    transport = request.transport
    return transport is None or transport.is_closing()


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    where = f"{request.method} {request.path}"
    try:
        return await handler(request)
    except web.HTTPException as exc:
        return response_for_http_exception(exc, where)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        gone = isinstance(exc, ConnectionError) and client_gone(request)
        if request.writer.output_size == 0:
            if gone:
                # Gone while we read its body or before we answered: not an error of ours.
                log.debug("%s: client went away: %s", where, exc)
                return web.Response(status=CLIENT_CLOSED_REQUEST)
            return response_for_exception(exc, where)
        # A stream has started: no status can be sent any more.
        if gone:
            log.debug("%s: client went away mid-response: %s", where, exc)
        else:
            log.error("Handler for %s failed mid-response: %s", where, exc, exc_info=exc)
            # Cut the connection so the client sees a truncated stream, not a clean end.
            if request.transport is not None:
                request.transport.close()
        # aiohttp ends the started response (its write_eof fails quietly on a closed
        # connection) instead of logging a second traceback of its own.
        return request.get(PREPARED_RESPONSE) or web.Response(status=CLIENT_CLOSED_REQUEST)


def clean_path(path: str) -> str:
    """Go's path.Clean for URL paths (keeps a trailing slash, as gorilla/mux does)."""
    if path == "":
        return "/"
    cleaned = posixpath.normpath(path)
    # normpath keeps a leading "//" (POSIX allows it to mean something else).
    cleaned = "/" + cleaned.lstrip("/")
    if path.endswith("/") and cleaned != "/":
        cleaned += "/"
    return cleaned


@web.middleware
async def path_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    cleaned = clean_path(request.path)
    if cleaned != request.path:
        location = request.rel_url.with_path(cleaned)
        raise web.HTTPMovedPermanently(location=str(location))
    return await handler(request)


# --- application --------------------------------------------------------------------


def add_routes(app: web.Application, routes: web.RouteTableDef) -> None:
    """Register each route unversioned and under the /v{version} prefix."""
    for route in routes:
        if not isinstance(route, web.RouteDef):
            raise TypeError(f"only plain routes are supported, not {route!r}")
        web.RouteDef(route.method, route.path, route.handler, dict(route.kwargs)).register(
            app.router
        )
        versioned = {k: v for k, v in route.kwargs.items() if k != "name"}
        web.RouteDef(route.method, VERSION_PREFIX + route.path, route.handler, versioned).register(
            app.router
        )


def build_app(
    mounts: Sequence[Mount[Any]],
    *,
    experimental: bool = False,
    lifecycle_ctx: Lifecycle | None = None,
) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware, path_middleware, version_middleware],
        client_max_size=MAX_JSON_BODY,
    )
    app[EXPERIMENTAL] = experimental
    lifecycle.install(app)
    app.on_response_prepare.append(add_common_headers)
    app.on_response_prepare.append(remember_prepared_response)
    if lifecycle_ctx is not None:
        app.cleanup_ctx.append(lifecycle_ctx)
    for mount in mounts:
        app[mount.key] = mount.backend
        add_routes(app, mount.routes)
    return app


# --- the engine behind the routers ----------------------------------------------------


class _ContainerCounts(Protocol):
    def counts(self) -> Mapping[str, int]: ...


class _ImageCount(Protocol):
    def count(self) -> int: ...


class _Listeners(Protocol):
    @property
    def listener_count(self) -> int: ...


class _Facts(Protocol):
    def facts(self) -> SystemFacts: ...


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


class EngineSystem:
    """SystemBackend over the engine's parts (all answers come from memory)."""

    def __init__(
        self,
        info: _Facts,
        containers: _ContainerCounts,
        images: _ImageCount,
        bus: _Listeners,
    ) -> None:
        self._info, self._containers, self._images, self._bus = info, containers, images, bus

    def facts(self) -> SystemFacts:
        return self._info.facts()

    async def counts(self) -> system.Counts:
        containers = self._containers.counts()
        return system.Counts(
            containers=containers.get("total", 0),
            running=containers.get("running", 0),
            paused=containers.get("paused", 0),
            stopped=containers.get("stopped", 0),
            images=self._images.count(),
            event_listeners=self._bus.listener_count,
            # listdir of /proc is a syscall burst: keep it off the event loop.
            open_fds=await asyncio.to_thread(_open_fds),
            tasks=len(asyncio.all_tasks()),
        )


def engine_lifecycle(engine: Engine) -> Lifecycle:
    async def run(app: web.Application) -> AsyncIterator[None]:
        try:
            await engine.start()
        except BaseException:
            # A half-started engine still holds the database and child tasks.
            try:
                await engine.close()
            except Exception:
                log.exception("closing the engine after a failed start")
            raise
        yield
        await engine.close()

    return run


def make_app(engine: Engine) -> web.Application:
    # Imported here so that build_app (and the system/events routers) can be used and
    # tested before every router and the whole engine are in place.
    from api.routers import (
        attach_ws,
        auth,
        build,
        container_files,
        containers,
        distribution,
        exec,
        images,
        networks,
        nodes,
        swarm,
        usage,
        volumes,
    )

    mounts: list[Mount[Any]] = [
        Mount(
            system.routes,
            system.BACKEND,
            EngineSystem(engine.system, engine.containers, engine.images, engine.events),
        ),
        Mount(events.routes, events.BACKEND, engine.events),
        Mount(images.routes, images.BACKEND, engine.images),
        Mount(images.commit_routes, images.COMMIT_BACKEND,
              images.EngineCommit(engine.images, engine.containers)),
        Mount(distribution.routes, distribution.BACKEND, engine.images),
        Mount(auth.routes, auth.BACKEND, engine.images),
        Mount(containers.routes, containers.BACKEND, engine.containers),
        Mount(attach_ws.routes, attach_ws.BACKEND, engine.containers),
        Mount(exec.routes, exec.BACKEND, engine.execs),
        Mount(container_files.routes, container_files.BACKEND, engine.container_files),
        Mount(volumes.routes, volumes.BACKEND, engine.volumes),
        Mount(usage.routes, usage.BACKEND, engine.usage),
        Mount(build.routes, build.BACKEND, engine.builder),
        Mount(networks.routes, networks.BACKEND,
              networks.EngineNetworks(engine.networks, engine.containers)),
        # One backend for /swarm and /nodes (and /info's Swarm section reads it).
        Mount(swarm.routes, swarm.BACKEND, engine.swarm),
        Mount(nodes.routes, swarm.BACKEND, engine.swarm),
    ]
    return build_app(
        mounts, experimental=engine.config.experimental, lifecycle_ctx=engine_lifecycle(engine)
    )
