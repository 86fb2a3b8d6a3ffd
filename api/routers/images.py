"""Images router: import (``POST /images/create?fromSrc=-``), list, inspect, history, tag,
remove.

Handlers parse, call the backend, serialise; engine errors propagate to the single
mapping in api/errors.py. Fixed routes are registered before the greedy ``{name:.*}``
ones, because image names contain ``/``, ``:`` and ``@``.

Wire shapes follow api-notes §5.4 and moby v28 (API 1.50), with the version gates that
matter to old clients: ``VirtualSize`` before 1.44, ``Container``/``ContainerConfig``
before 1.45, ``<none>:<none>`` for untagged images before 1.43, and the legacy
container-config fields of image ``Config`` before 1.50.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from api import params
from api.errors import json_bytes, json_response
from api.versioning import request_version
from engine.errors import InvalidParameter, NotSupported
from engine.images.manager import LIST_FILTERS, ImageView, container_config, parse_rfc3339

_UPLOAD_CHUNK = 1 << 20
# Fields of image Config from API 1.50 on (moby: dockerspec.DockerOCIImageConfig, all
# omitempty); older versions get the whole legacy container.Config.
_OCI_CONFIG_FIELDS = (
    "User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "Volumes", "WorkingDir", "Labels",
    "StopSignal", "ArgsEscaped", "Healthcheck", "OnBuild", "Shell",
)


class ImageBackend(Protocol):
    async def import_image(
        self,
        stream: AsyncIterator[bytes],
        repo: str | None = None,
        tag: str | None = None,
        changes: Sequence[str] = (),
        message: str = "",
        platform: str | None = None,
    ) -> str: ...
    def resolve(self, ref: str) -> ImageView: ...
    async def lower_dirs(self, image_id: str) -> builtins.list[Path]: ...
    async def tag(self, ref: str, repo: str, tag: str | None) -> str: ...
    async def remove(
        self, ref: str, force: bool = False, noprune: bool = False
    ) -> builtins.list[dict[str, str]]: ...
    def list(
        self, all: bool = False, filters: Mapping[str, Sequence[str]] | None = None
    ) -> builtins.list[ImageView]: ...


BACKEND: web.AppKey[ImageBackend] = web.AppKey("images", ImageBackend)
routes = web.RouteTableDef()


def _backend(request: web.Request) -> ImageBackend:
    return request.app[BACKEND]


# ------------------------------------------------------------------ fixed routes first
@routes.post("/images/create")
async def post_images_create(request: web.Request) -> web.StreamResponse:
    query = request.query
    if query.get("fromImage"):
        raise NotSupported("pull is not implemented yet")
    source = query.get("fromSrc", "")
    if not source:
        raise InvalidParameter("either fromImage or fromSrc must be set")
    if source != "-":
        raise NotSupported("import from a URL is not implemented yet: use fromSrc=-")
    image_id = await _backend(request).import_image(
        request.content.iter_chunked(_UPLOAD_CHUNK),
        repo=query.get("repo") or None,
        tag=query.get("tag") or None,
        changes=query.getall("changes", []),
        message=query.get("message", ""),
        platform=query.get("platform") or None,
    )
    # dockerd writes nothing before the import is done, so its errors are plain HTTP
    # errors; then one progress message carrying the id.
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(json_bytes({"status": image_id}) + b"\r\n")
    await response.write_eof()
    return response


@routes.get("/images/json")
async def get_images_json(request: web.Request) -> web.Response:
    filters = params.filters_param(request, LIST_FILTERS)
    views = _backend(request).list(all=params.bool_param(request, "all"), filters=filters)
    version = request_version(request)
    return json_response([list_item(view, version) for view in views])


# ------------------------------------------------------------------ greedy routes
@routes.get("/images/{name:.*}/json")
async def get_images_inspect(request: web.Request) -> web.Response:
    backend = _backend(request)
    view = backend.resolve(request.match_info["name"])
    dirs = await backend.lower_dirs(view.id)
    return json_response(inspect_body(view, dirs, request_version(request)))


@routes.get("/images/{name:.*}/history")
async def get_images_history(request: web.Request) -> web.Response:
    view = _backend(request).resolve(request.match_info["name"])
    return json_response(history_items(view))


@routes.post("/images/{name:.*}/tag")
async def post_images_tag(request: web.Request) -> web.Response:
    await _backend(request).tag(
        request.match_info["name"], request.query.get("repo", ""), request.query.get("tag") or None
    )
    return web.Response(status=201)


@routes.delete("/images/{name:.*}")
async def delete_images(request: web.Request) -> web.Response:
    records = await _backend(request).remove(
        request.match_info["name"],
        force=params.bool_param(request, "force"),
        noprune=params.bool_param(request, "noprune"),
    )
    return json_response(records)


# ------------------------------------------------------------------ wire shapes
def list_item(view: ImageView, version: tuple[int, int]) -> dict[str, Any]:
    """One ``GET /images/json`` entry (moby's ImageSummary, keys in its order)."""
    tags: builtins.list[str] = list(view.repo_tags)
    digests: builtins.list[str] = list(view.repo_digests)
    if version < (1, 43) and not tags and not digests:
        tags, digests = ["<none>:<none>"], ["<none>@<none>"]
    labels = view.labels
    item: dict[str, Any] = {
        "Containers": -1,
        "Created": int(view.created),
        "Id": view.id,
        "Labels": labels or None,
        "ParentId": "",
        "RepoDigests": digests,
        "RepoTags": tags,
        "SharedSize": -1,
        "Size": view.size,
    }
    if version < (1, 44):
        item["VirtualSize"] = view.size
    return item


def inspect_body(
    view: ImageView, layer_dirs: Sequence[Path], version: tuple[int, int]
) -> dict[str, Any]:
    """``GET /images/{name}/json`` (moby's image InspectResponse, keys in its order)."""
    cfg = view.config
    body: dict[str, Any] = {
        "Id": view.id,
        "RepoTags": list(view.repo_tags),
        "RepoDigests": list(view.repo_digests),
        "Parent": _text(cfg.get("parent")),
        "Comment": _text(cfg.get("comment")),
        "Created": view.created_text,
    }
    if version < (1, 45):
        body["Container"] = _text(cfg.get("container"))
        legacy = cfg.get("container_config")
        body["ContainerConfig"] = container_config(legacy if isinstance(legacy, dict) else None)
    body["DockerVersion"] = _text(cfg.get("docker_version"))
    body["Author"] = _text(cfg.get("author"))
    body["Config"] = image_config_body(view.container_config, version)
    body["Architecture"] = _text(cfg.get("architecture"))
    if cfg.get("variant"):
        body["Variant"] = cfg["variant"]
    body["Os"] = _text(cfg.get("os"))
    if cfg.get("os.version"):
        body["OsVersion"] = cfg["os.version"]
    body["Size"] = view.size
    if version < (1, 44):
        body["VirtualSize"] = view.size
    body["GraphDriver"] = {"Name": "overlay2", "Data": _graph_driver_data(layer_dirs)}
    body["RootFS"] = {"Type": "layers", "Layers": list(view.diff_ids)}
    body["Metadata"] = {"LastTagTime": view.last_tag_text}
    return body


def history_items(view: ImageView) -> builtins.list[dict[str, Any]]:
    """``GET /images/{name}/history``, newest first, as moby builds it: each history
    entry that made a layer gets that layer's size; the image id and tags go on the
    newest entry, older ones are ``<missing>`` (imported images have no parents)."""
    entries = view.config.get("history")
    items: builtins.list[dict[str, Any]] = []
    layer = 0
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        size = 0
        if not entry.get("empty_layer") and layer < len(view.layer_sizes):
            size = view.layer_sizes[layer]
            layer += 1
        created = parse_rfc3339(_text(entry.get("created"))) or 0.0
        items.append({
            "Comment": _text(entry.get("comment")),
            "Created": int(created),
            "CreatedBy": _text(entry.get("created_by")),
            "Id": "<missing>",
            "Size": size,
            "Tags": None,
        })
    items.reverse()
    if items:
        items[0]["Id"] = view.id
        items[0]["Tags"] = list(view.repo_tags) or None
    return items


def image_config_body(config: Mapping[str, Any], version: tuple[int, int]) -> dict[str, Any]:
    """Image ``Config``: the OCI image-config fields (omitted when empty) from 1.50 on;
    before, the full legacy container config with zero values."""
    if version < (1, 50):
        return container_config(config)
    return {name: config[name] for name in _OCI_CONFIG_FIELDS if config.get(name)}


def _graph_driver_data(layer_dirs: Sequence[Path]) -> dict[str, str]:
    if not layer_dirs:
        return {}
    top = layer_dirs[0]
    data: dict[str, str] = {}
    if len(layer_dirs) > 1:
        data["LowerDir"] = ":".join(str(d) for d in layer_dirs[1:])
    data["UpperDir"] = str(top)
    data["WorkDir"] = str(top.parent / "work")
    return data


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""
