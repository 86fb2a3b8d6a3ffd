"""Volumes router: list, create, inspect, remove, prune (api-notes §2.7, §5.4).

Handlers parse, call the backend, serialise; engine errors propagate to the single
mapping in api/errors.py. The fixed routes (``/volumes/create``, ``/volumes/prune``) are
registered before the greedy ``/volumes/{name:.*}`` ones.

Version gate: before API 1.42, prune removed every unused volume; from 1.42 only
anonymous ones unless the ``all=true`` filter is given (moby's router adds ``all`` for
older clients, and so do we).
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from aiohttp import web

from api import params
from api.errors import json_response
from api.jsontext import encode_each, json_body_response
from api.models.gojson import Text, WireModel, decode
from api.versioning import request_version
from engine.volumes.manager import LIST_FILTERS, PRUNE_FILTERS, VolumeView


class VolumeBackend(Protocol):
    def get(self, name: str) -> VolumeView: ...
    def list(
        self, filters: Mapping[str, Sequence[str]] | None = None
    ) -> builtins.list[VolumeView]: ...
    async def create(
        self,
        name: str | None = None,
        driver: str | None = "local",
        driver_opts: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> VolumeView: ...
    async def remove(self, name: str, force: bool = False) -> None: ...
    async def prune(
        self, filters: Mapping[str, Sequence[str]] | None = None, all_: bool = False
    ) -> tuple[builtins.list[str], int]: ...


BACKEND: web.AppKey[VolumeBackend] = web.AppKey("volumes", VolumeBackend)
routes = web.RouteTableDef()


def _backend(request: web.Request) -> VolumeBackend:
    return request.app[BACKEND]


class VolumeCreateBody(WireModel):
    """``volume.CreateOptions`` (ClusterVolumeSpec is swarm's: ignored)."""

    GO_NAME = "CreateOptions"

    Name: Text = ""
    Driver: Text = ""
    DriverOpts: dict[Text, Text] | None = None
    Labels: dict[Text, Text] | None = None


def parse_create_body(data: Any) -> VolumeCreateBody:
    if data is None:
        return VolumeCreateBody()
    return decode(VolumeCreateBody, data, "volume.CreateOptions")


# ------------------------------------------------------------------ fixed routes first
@routes.get("/volumes")
async def get_volumes(request: web.Request) -> web.Response:
    filters = params.filters_param(request, LIST_FILTERS)
    views = _backend(request).list(filters)
    volumes = encode_each(views, volume_body, lambda v: f"volume {v.name!r}", "volumes")
    return web.Response(body=b'{"Volumes":' + volumes + b',"Warnings":null}',
                        content_type="application/json")


@routes.post("/volumes/create")
async def post_volumes_create(request: web.Request) -> web.Response:
    body = parse_create_body(await params.read_json(request))
    view = await _backend(request).create(
        name=body.Name or None,
        driver=body.Driver or "local",
        driver_opts=body.DriverOpts,
        labels=body.Labels,
    )
    return json_body_response(volume_body(view), status=201)


@routes.post("/volumes/prune")
async def post_volumes_prune(request: web.Request) -> web.Response:
    filters = params.filters_param(request, PRUNE_FILTERS)
    all_ = request_version(request) < (1, 42)
    deleted, reclaimed = await _backend(request).prune(filters, all_=all_)
    return json_response({"VolumesDeleted": deleted, "SpaceReclaimed": reclaimed})


# ------------------------------------------------------------------ greedy routes
@routes.get("/volumes/{name:.*}")
async def get_volumes_inspect(request: web.Request) -> web.Response:
    view = _backend(request).get(request.match_info["name"])
    return json_body_response(volume_body(view))


@routes.delete("/volumes/{name:.*}")
async def delete_volumes(request: web.Request) -> web.Response:
    await _backend(request).remove(
        request.match_info["name"], force=params.bool_param(request, "force")
    )
    return web.Response(status=204)


# ------------------------------------------------------------------ wire shape
def volume_body(view: VolumeView) -> dict[str, Any]:
    """moby's ``volume.Volume`` (keys in its order); ``Options`` null when none were given,
    ``Labels`` always an object (docker-py iterates it)."""
    return {
        "CreatedAt": view.created_text,
        "Driver": view.driver,
        "Labels": dict(view.labels),
        "Mountpoint": str(view.mountpoint),
        "Name": view.name,
        "Options": dict(view.options) if view.options is not None else None,
        "Scope": "local",
    }
