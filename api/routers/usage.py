"""``GET /system/df`` (`docker system df`, docker-py ``df()``)."""

from __future__ import annotations

import time
from typing import Any, Protocol

from aiohttp import web

from api.errors import json_response
from api.models.containers import list_item as container_item
from api.routers.images import list_item as image_item
from api.routers.volumes import volume_body
from api.versioning import request_version
from engine.errors import InvalidParameter
from engine.system.usage import DiskUsageReport

_KINDS = frozenset({"container", "image", "volume", "build-cache"})


class UsageBackend(Protocol):
    async def report(self, kinds: frozenset[str]) -> DiskUsageReport: ...


BACKEND: web.AppKey[UsageBackend] = web.AppKey("usage", UsageBackend)
routes = web.RouteTableDef()


@routes.get("/system/df")
async def get_system_df(request: web.Request) -> web.Response:
    kinds = frozenset(request.query.getall("type", []))
    if kinds - _KINDS:
        raise InvalidParameter(f"unknown object type: {sorted(kinds - _KINDS)[0]}")
    report = await request.app[BACKEND].report(kinds)
    return json_response(_body(report, request_version(request), kinds or _KINDS))


def _body(
    report: DiskUsageReport, version: tuple[int, int], kinds: frozenset[str]
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if "image" in kinds:
        body["LayersSize"] = report.layers_size
        images = []
        for image in report.images:
            item = image_item(image.view, version)
            item["SharedSize"] = image.shared_size
            item["Containers"] = image.containers
            images.append(item)
        body["Images"] = images
    if "container" in kinds:
        now = time.time()
        containers = []
        for container in report.containers:
            item = container_item(container.view, now)
            item["SizeRw"] = container.size_rw
            item["SizeRootFs"] = container.size_root_fs
            containers.append(item)
        body["Containers"] = containers
    if "volume" in kinds:
        volumes = []
        for view, usage in report.volumes:
            item = volume_body(view)
            item["UsageData"] = {"Size": usage.size, "RefCount": usage.ref_count}
            volumes.append(item)
        body["Volumes"] = volumes
    if "build-cache" in kinds:
        body["BuildCache"] = []
    return body
