"""Images router: pull and import (``POST /images/create``), push, save (``GET
/images/get``), load, commit, list, inspect, history, tag, remove, prune, search.

Handlers parse, call the backend, serialise; engine errors propagate to the single
mapping in api/errors.py. Fixed routes are registered before the greedy ``{name:.*}``
ones, because image names contain ``/``, ``:`` and ``@``.

Pull, push and load answer with a JSON progress stream (api-notes §3.8): ``200``,
``Content-Type: application/json``, chunked, one object per message ended by ``\\r\\n``.
Pull and push send the headers with their first message, so what fails before it (a
bad name, an unknown manifest, an unreachable registry) is a plain HTTP error as in
dockerd; later failures end the stream with ``errorDetail``. Load always streams.

Wire shapes follow api-notes §5.4 and moby v28 (API 1.50), with the version gates that
matter to old clients: ``VirtualSize`` before 1.44, ``Container`` before 1.45
(``ContainerConfig`` at every version, for compose v1), ``<none>:<none>`` for untagged
images before 1.43, and the legacy container-config fields of image ``Config`` before
1.50.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from api import params
from api.errors import json_bytes, json_response
from api.jsontext import json_body_response, json_list_response
from api.models.containers import parse_commit_config
from api.versioning import request_version
from engine.errors import InvalidParameter
from engine.images import progress
from engine.images.auth import AuthConfig, auth_from_object, decode_registry_auth
from engine.images.catalog import ImageView
from engine.images.changes import container_config
from engine.images.commit import CommitSource
from engine.images.manager import (
    LIST_FILTERS,
    PRUNE_FILTERS,
    HistoryEntry,
    PruneReport,
)
from engine.images.progress import Progress, ProgressSink, progress_bar
from engine.images.urlsource import UrlSource

log = logging.getLogger(__name__)

_UPLOAD_CHUNK = 1 << 20
_SEARCH_FILTERS = frozenset({"is-automated", "is-official", "stars"})
# Fields of image Config from API 1.50 on (moby: dockerspec.DockerOCIImageConfig, all
# omitempty); older versions get the whole legacy container.Config.
_OCI_CONFIG_FIELDS = (
    "User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "Volumes", "WorkingDir", "Labels",
    "StopSignal", "ArgsEscaped", "Healthcheck", "OnBuild", "Shell",
)


class SaveSource(Protocol):
    def chunks(self) -> AsyncIterator[bytes]: ...


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
    async def open_import_url(self, source: str) -> UrlSource: ...
    def resolve(self, ref: str) -> ImageView: ...
    async def lower_dirs(self, image_id: str) -> builtins.list[Path]: ...
    async def tag(self, ref: str, repo: str, tag: str | None) -> str: ...
    async def remove(
        self, ref: str, force: bool = False, noprune: bool = False
    ) -> builtins.list[dict[str, str]]: ...
    def list(
        self, all: bool = False, filters: Mapping[str, Sequence[str]] | None = None
    ) -> builtins.list[ImageView]: ...
    def history(self, ref: str) -> builtins.list[HistoryEntry]: ...
    async def prune(self, filters: Mapping[str, Sequence[str]]) -> PruneReport: ...
    async def pull(
        self, image: str, tag: str | None, platform: str | None, auth: AuthConfig,
        progress: ProgressSink,
    ) -> None: ...
    async def push(
        self, name: str, tag: str | None, auth: AuthConfig, progress: ProgressSink
    ) -> None: ...
    def save(self, names: Sequence[str]) -> SaveSource: ...
    async def load_archive(
        self, stream: AsyncIterator[bytes], quiet: bool, progress: ProgressSink
    ) -> None: ...
    async def search(self, term: str, limit: int) -> builtins.list[dict[str, Any]]: ...


class CommitBackend(Protocol):
    async def commit(self, **options: Any) -> str: ...


BACKEND: web.AppKey[ImageBackend] = web.AppKey("images", ImageBackend)
COMMIT_BACKEND: web.AppKey[CommitBackend] = web.AppKey("commit", CommitBackend)
routes = web.RouteTableDef()
commit_routes = web.RouteTableDef()


class _Committer(Protocol):
    async def commit(self, source: CommitSource, **options: Any) -> str: ...


class EngineCommit:
    """``POST /commit`` needs both managers: the image side does the work, the
    container side lends the rw layer (through its public methods only)."""

    def __init__(self, images: _Committer, containers: CommitSource) -> None:
        self._images = images
        self._containers = containers

    async def commit(self, **options: Any) -> str:
        return await self._images.commit(self._containers, **options)


def _backend(request: web.Request) -> ImageBackend:
    return request.app[BACKEND]


# ------------------------------------------------------------------ progress streams
def progress_object(message: Progress) -> dict[str, Any]:
    """One message in moby's JSONMessage shape and key order."""
    out: dict[str, Any] = {}
    if message.stream is not None:
        out["stream"] = message.stream
    if message.status:
        out["status"] = message.status
    if message.current is not None:
        detail: dict[str, int] = {"current": message.current}
        if message.total is not None:
            detail["total"] = message.total
        out["progressDetail"] = detail
        bar = progress_bar(message.current, message.total)
        if bar:
            out["progress"] = bar
    elif message.detail:
        out["progressDetail"] = {}
    if message.id:
        out["id"] = message.id
    if message.aux is not None:
        out["aux"] = dict(message.aux)
    return out


def error_object(exc: BaseException) -> dict[str, Any]:
    """The stream's last message. A failed build step carries its exit code, which the
    CLI exits with (``errorDetail.code``)."""
    text = str(exc) or type(exc).__name__
    detail: dict[str, Any] = {"message": text}
    code = getattr(exc, "exit_code", None)
    if isinstance(code, int) and code:
        detail = {"code": code, "message": text}
    return {"errorDetail": detail, "error": text}


class ProgressStream:
    """Runs one operation and streams its progress messages to the client."""

    def __init__(self, request: web.Request, headers_first: bool = False) -> None:
        self._request = request
        self._queue: asyncio.Queue[Progress] = asyncio.Queue()
        self._response: web.StreamResponse | None = None
        self._client_gone = False
        self._headers_first = headers_first

    def sink(self, message: Progress) -> None:
        self._queue.put_nowait(message)

    async def _start(self) -> web.StreamResponse:
        if self._response is None:
            response = web.StreamResponse(
                status=200, headers={"Content-Type": "application/json"}
            )
            response.enable_chunked_encoding()
            await response.prepare(self._request)
            self._response = response
        return self._response

    async def _write(self, obj: dict[str, Any]) -> None:
        if self._client_gone:
            return
        response = await self._start()
        try:
            await response.write(json_bytes(obj) + b"\r\n")
        except (ConnectionError, RuntimeError) as exc:
            # The client went away; the operation (owned by the engine) carries on.
            log.debug("progress stream: client gone: %s", exc)
            self._client_gone = True

    async def run(self, work: Callable[[ProgressSink], Awaitable[None]]) -> web.StreamResponse:
        if self._headers_first:
            await self._start()
        task = asyncio.ensure_future(work(self.sink))
        try:
            while True:
                getter = asyncio.ensure_future(self._queue.get())
                done, _ = await asyncio.wait({getter, task},
                                             return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    await self._write(progress_object(getter.result()))
                    continue
                getter.cancel()
                break
            while not self._queue.empty():
                await self._write(progress_object(self._queue.get_nowait()))
            error = task.exception()
            if error is not None:
                if self._response is None:
                    raise error
                log.info("%s %s failed: %s", self._request.method, self._request.path, error)
                await self._write(error_object(error))
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        response = await self._start()
        if not self._client_gone:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await response.write_eof()
        return response


def _auth(request: web.Request, body: Any = None) -> AuthConfig:
    """``X-Registry-Auth`` (any undecodable value is anonymous, never echoed); docker-py
    may send the credentials as the JSON body of a push instead."""
    header = request.headers.get("X-Registry-Auth")
    auth = decode_registry_auth(header)
    if auth.anonymous and isinstance(body, dict) and body:
        return auth_from_object(body)
    return auth


# ------------------------------------------------------------------ fixed routes first
@routes.post("/images/create")
async def post_images_create(request: web.Request) -> web.StreamResponse:
    query = request.query
    image = query.get("fromImage", "")
    if image:
        backend = _backend(request)
        auth = _auth(request)
        tag = query.get("tag") or None
        platform = query.get("platform") or None

        async def pull(sink: ProgressSink) -> None:
            await backend.pull(image, tag, platform, auth, sink)

        return await ProgressStream(request).run(pull)
    source = query.get("fromSrc", "")
    if not source:
        raise InvalidParameter("either fromImage or fromSrc must be set")
    if source != "-":
        return await _import_from_url(request, source)
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


async def _import_from_url(request: web.Request, source: str) -> web.StreamResponse:
    """dockerd: the GET's failure is a plain HTTP error; then "Downloading from <url>",
    the import, and the id, as progress messages."""
    backend = _backend(request)
    query = request.query

    async def download_and_import(sink: ProgressSink) -> None:
        remote = await backend.open_import_url(source)
        try:
            sink(progress.message(f"Downloading from {remote.url}"))
            image_id = await backend.import_image(
                remote.chunks(),
                repo=query.get("repo") or None,
                tag=query.get("tag") or None,
                changes=query.getall("changes", []),
                message=query.get("message", "") or f"Imported from {remote.url}",
                platform=query.get("platform") or None,
            )
        finally:
            await remote.close()
        sink(progress.message(image_id))

    return await ProgressStream(request).run(download_and_import)


@routes.get("/images/json")
async def get_images_json(request: web.Request) -> web.Response:
    filters = params.filters_param(request, LIST_FILTERS)
    views = _backend(request).list(all=params.bool_param(request, "all"), filters=filters)
    version = request_version(request)
    return json_list_response(views, lambda view: list_item(view, version),
                              lambda view: f"image {view.id}", "images")


@routes.get("/images/get")
async def get_images_get(request: web.Request) -> web.StreamResponse:
    names = request.query.getall("names", [])
    return await _save(request, [n for n in names if n])


@routes.post("/images/load")
async def post_images_load(request: web.Request) -> web.StreamResponse:
    backend = _backend(request)
    quiet = params.bool_param(request, "quiet")
    body = request.content.iter_chunked(_UPLOAD_CHUNK)

    async def load(sink: ProgressSink) -> None:
        await backend.load_archive(body, quiet, sink)

    # dockerd answers 200 at once and reports every failure inside the stream.
    return await ProgressStream(request, headers_first=True).run(load)


@routes.post("/images/prune")
async def post_images_prune(request: web.Request) -> web.Response:
    filters = params.filters_param(request, PRUNE_FILTERS)
    report = await _backend(request).prune(filters)
    return json_response({"ImagesDeleted": report.deleted or None,
                          "SpaceReclaimed": report.space_reclaimed})


@routes.get("/images/search")
async def get_images_search(request: web.Request) -> web.Response:
    term = request.query.get("term", "")
    if not term:
        raise InvalidParameter("term is required")
    limit = params.int_param(request, "limit", 25) or 25
    if not 1 <= limit <= 100:
        raise InvalidParameter(f"limit {limit} is outside the range of [1, 100]")
    filters = params.filters_param(request, _SEARCH_FILTERS)
    results = await _backend(request).search(term, limit)
    return json_response([r for r in (_search_item(x) for x in results)
                          if _search_match(r, filters)])


def _search_item(raw: Mapping[str, Any]) -> dict[str, Any]:
    stars = raw.get("star_count")
    return {
        "star_count": stars if isinstance(stars, int) else 0,
        "is_official": bool(raw.get("is_official")),
        "name": str(raw.get("name", "")),
        "is_automated": bool(raw.get("is_automated")),
        "description": str(raw.get("description", "")),
    }


def _search_match(item: Mapping[str, Any], filters: Mapping[str, Sequence[str]]) -> bool:
    for value in filters.get("stars", []):
        try:
            if item["star_count"] < int(value):
                return False
        except ValueError:
            raise InvalidParameter(f"invalid filter 'stars={value}'") from None
    for key, field in (("is-official", "is_official"), ("is-automated", "is_automated")):
        for value in filters.get(key, []):
            if item[field] != params.bool_value(value):
                return False
    return True


@commit_routes.post("/commit")
async def post_commit(request: web.Request) -> web.Response:
    query = request.query
    container = query.get("container", "")
    if not container:
        raise InvalidParameter("container is required")
    config = parse_commit_config(await params.read_json(request))
    image_id = await request.app[COMMIT_BACKEND].commit(
        container=container,
        repo=query.get("repo") or None,
        tag=query.get("tag") or None,
        comment=query.get("comment", ""),
        author=query.get("author", ""),
        pause=params.bool_param(request, "pause", default=True),
        changes=query.getall("changes", []),
        config=config,
    )
    return json_response({"Id": image_id}, status=201)


# ------------------------------------------------------------------ greedy routes
@routes.get("/images/{name:.*}/json")
async def get_images_inspect(request: web.Request) -> web.Response:
    backend = _backend(request)
    view = backend.resolve(request.match_info["name"])
    dirs = await backend.lower_dirs(view.id)
    return json_body_response(inspect_body(view, dirs, request_version(request)))


@routes.get("/images/{name:.*}/history")
async def get_images_history(request: web.Request) -> web.Response:
    entries = _backend(request).history(request.match_info["name"])
    return json_body_response([history_item(entry) for entry in entries])


@routes.get("/images/{name:.*}/get")
async def get_images_name_get(request: web.Request) -> web.StreamResponse:
    return await _save(request, [request.match_info["name"]])


async def _save(request: web.Request, names: Sequence[str]) -> web.StreamResponse:
    stream = _backend(request).save(names)  # resolves every name: 404 before any byte
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/x-tar"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    chunks = stream.chunks()
    try:
        async for chunk in chunks:
            await response.write(chunk)
    except (ConnectionError, RuntimeError) as exc:
        log.debug("save: client gone: %s", exc)
        return response
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
    await response.write_eof()
    return response


@routes.post("/images/{name:.*}/push")
async def post_images_push(request: web.Request) -> web.StreamResponse:
    backend = _backend(request)
    name = request.match_info["name"]
    tag = request.query.get("tag") or None
    body: Any = None
    with contextlib.suppress(InvalidParameter):
        raw = await request.read()
        body = json.loads(raw) if raw.strip() else None
    auth = _auth(request, body)

    async def push(sink: ProgressSink) -> None:
        await backend.push(name, tag, auth, sink)

    return await ProgressStream(request).run(push)


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
        "ParentId": view.parent,
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
        "Parent": view.parent,
        "Comment": _text(cfg.get("comment")),
        "Created": view.created_text,
    }
    if version < (1, 45):
        body["Container"] = _text(cfg.get("container"))
    # moby drops ContainerConfig from 1.45 on, but compose v1 negotiates the newest API
    # and then reads it when it recreates a service's container (KeyError 'ContainerConfig'
    # against Docker 25+): kept at every version; newer clients ignore it.
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


def history_item(entry: HistoryEntry) -> dict[str, Any]:
    """One ``GET /images/{name}/history`` row (moby's HistoryResponseItem)."""
    return {
        "Comment": entry.comment,
        "Created": entry.created,
        "CreatedBy": entry.created_by,
        "Id": entry.id,
        "Size": entry.size,
        "Tags": list(entry.tags) if entry.tags else None,
    }


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
