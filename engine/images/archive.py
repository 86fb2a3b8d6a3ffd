"""``docker save`` and ``docker load``: docker-archive and OCI image layout, streamed.

Save writes what moby v28 writes (api-notes §3.12), both layouts in one tar:
``oci-layout``, ``index.json`` (one manifest per tag, annotated with the full name and
the tag), ``blobs/sha256/<hex>`` (configs, OCI manifests, uncompressed layer tars named
by their diff ids), ``manifest.json`` and ``repositories``. The small files come first
so a streaming reader knows the images before the layers arrive. Layers kept compressed
(pulled ones) are decompressed on the way out; nothing is staged on disk.

Load reads the tar as it arrives (plain or compressed), and never writes a member by
its name: layers go through the content store and into ``extract-`` snapshots (hashed,
kept and unpacked in one pass, engine/images/layers.py), small JSON files stay in
memory, everything else is skipped. Only then are ``manifest.json`` (or, failing that,
``index.json``) and the configs read: paths are looked up among the members (symlinks
resolved inside the archive, ``..`` never leaving it), each layer's diff id is checked
against its config, layers are committed onto their parents, and one transaction
registers every image and tag. Errors end the stream with an ``errorDetail`` and leave
nothing loaded (reliability B24, F6). Crash points: ``load_mid_stream``,
``load_before_commit``, ``load_after_commit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import tarfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import EngineError, InvalidParameter, NotFound
from engine.images import progress as p
from engine.images import tarwriter
from engine.images.catalog import ImageView, LayerRecord, NewImage
from engine.images.layers import Ingested, chain_ids, ingest, sniff_compression
from engine.images.manifest import (
    ANNOTATION_IMAGE_NAME,
    ANNOTATION_REF_NAME,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    Descriptor,
    ImageManifest,
    ManifestError,
    ManifestIndex,
    build_index,
    build_manifest,
    parse_manifest,
)
from engine.images.pipes import LoopQueue, ThreadJob
from engine.images.progress import ProgressSink
from engine.images.reference import (
    Reference,
    ReferenceError,
    parse_any,
    parse_normalized_named,
)
from engine.images.unpack import CHUNK, ChunkPipe, Readable, UnpackError, open_uncompressed, run_fed
from engine.store.content import ContentStore, ContentWriter
from engine.store.crashpoints import crash_point

if TYPE_CHECKING:
    from engine.images.manager import ImageManager

log = logging.getLogger(__name__)

MAX_METADATA_FILE = 8 << 20  # a config or manifest bigger than this is not one
MAX_METADATA_TOTAL = 64 << 20
_LAYOUT = b'{"imageLayoutVersion": "1.0.0"}'


# =========================================================================== save
@dataclass
class _SaveImage:
    view: ImageView
    tags: list[Reference] = field(default_factory=list)


@dataclass(frozen=True)
class _SaveLayer:
    record: LayerRecord
    tar_size: int


class SaveStream:
    """The tar of ``docker save``. Names resolve when this is made (errors are plain
    HTTP errors); ``chunks()`` then streams the archive."""

    def __init__(self, m: ImageManager, names: Sequence[str]) -> None:
        if not names:
            raise InvalidParameter("no image names given")
        self._m = m
        self._images: dict[str, _SaveImage] = {}
        for name in names:
            self._add(name)

    def _add(self, name: str) -> None:
        m = self._m
        parsed = parse_any(name)
        if isinstance(parsed, Reference) and parsed.is_name_only:
            found = m.tags_of_repository(parsed)
            if found:
                for ref, image_id in found:
                    self._entry(m.view_by_id(image_id), name).tags.append(ref)
                return
        view = m.resolve(name)
        entry = self._entry(view, name)
        if isinstance(parsed, Reference) and parsed.digest is None:
            tagged = parsed.tag_name_only()
            if m.lookup_named(tagged) == view.id and all(str(t) != str(tagged)
                                                         for t in entry.tags):
                entry.tags.append(tagged)

    def _entry(self, view: ImageView | None, name: str) -> _SaveImage:
        if view is None:
            raise NotFound(f"No such image: {name}")
        return self._images.setdefault(view.id, _SaveImage(view))

    @property
    def image_ids(self) -> list[str]:
        return list(self._images)

    async def chunks(self) -> AsyncIterator[bytes]:
        m = self._m
        all_layers = [c for image in self._images.values() for c in image.view.layers]
        async with m.lease(all_layers):
            plan = await self._plan()
            loop = asyncio.get_running_loop()
            queue = LoopQueue(loop)
            job = ThreadJob(_write_archive, plan, queue, name="wharfd-save")
            try:
                async for chunk in queue.chunks():
                    yield chunk
                await job.result()
            finally:
                queue.close_consumer()
                await job.settle()
        for image_id in self._images:
            m.emit(image_id, "save", image_id)

    async def _plan(self) -> _ArchivePlan:
        m = self._m
        layers: dict[str, _SaveLayer] = {}
        head: list[tuple[str, bytes]] = [("oci-layout", _LAYOUT)]
        manifest_json: list[dict[str, Any]] = []
        index: list[Descriptor] = []
        repositories: dict[str, dict[str, str]] = {}
        for image in self._images.values():
            view = image.view
            config = await m.content.read_blob(view.id)
            descriptors = []
            names = []
            for chain_id in view.layers:
                record = m.layer(chain_id)
                if record is None or record.blob_digest is None:
                    raise NotFound(f"layer {chain_id} of image {view.id} is missing")
                if record.diff_id not in layers:
                    layers[record.diff_id] = _SaveLayer(record, await _tar_size(m, record))
                size = layers[record.diff_id].tar_size
                descriptors.append(Descriptor(OCI_LAYER, record.diff_id, size))
                names.append(_blob_name(record.diff_id))
            manifest = build_manifest(Descriptor(OCI_CONFIG, view.id, len(config)),
                                      descriptors, OCI_MANIFEST)
            manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
            head.append((_blob_name(view.id), config))
            head.append((_blob_name(manifest_digest), manifest))
            plain = Descriptor(OCI_MANIFEST, manifest_digest, len(manifest))
            for ref in image.tags:
                index.append(Descriptor(OCI_MANIFEST, manifest_digest, len(manifest),
                                        annotations={ANNOTATION_IMAGE_NAME: str(ref),
                                                     ANNOTATION_REF_NAME: ref.tag or ""}))
                if view.diff_ids:
                    repo = repositories.setdefault(ref.familiar_name(), {})
                    repo[ref.tag or "latest"] = view.diff_ids[-1].removeprefix("sha256:")
            if not image.tags:
                index.append(plain)
            item: dict[str, Any] = {
                "Config": _blob_name(view.id),
                "RepoTags": [r.familiar() for r in image.tags] or None,
                "Layers": names,
            }
            if view.parent and view.parent in self._images:
                item["Parent"] = view.parent
            manifest_json.append(item)
        head.append(("index.json", build_index(index)))
        head.append(("manifest.json", json.dumps(manifest_json).encode() + b"\n"))
        if repositories:
            head.append(("repositories", json.dumps(repositories).encode() + b"\n"))
        paths = {m.content.path(layer.record.blob_digest): layer  # type: ignore[arg-type]
                 for layer in layers.values()}
        return _ArchivePlan(head, [(str(path), layer) for path, layer in paths.items()])


@dataclass(frozen=True)
class _ArchivePlan:
    head: list[tuple[str, bytes]]  # (name, data): metadata and small blobs
    layers: list[tuple[str, _SaveLayer]]  # (blob path, layer)


def _blob_name(digest: str) -> str:
    return "blobs/sha256/" + digest.removeprefix("sha256:")


async def _tar_size(m: ImageManager, record: LayerRecord) -> int:
    assert record.blob_digest is not None
    path = m.content.path(record.blob_digest)
    if record.blob_compression == "none":
        return (await asyncio.to_thread(os.stat, path)).st_size
    if record.tar_size is not None:
        return record.tar_size
    # A compressed blob of unknown tar size (never written by this version): count it.
    return await asyncio.to_thread(_count_uncompressed, str(path))


def _count_uncompressed(path: str) -> int:
    with open(path, "rb") as handle:
        plain, _ = open_uncompressed(handle)
        total = 0
        while data := plain.read(CHUNK):
            total += len(data)
    return total


def _write_archive(plan: _ArchivePlan, queue: LoopQueue) -> None:
    """The whole tar, into ``queue`` (worker thread)."""
    try:
        queue.put(tarwriter.dir_entry("blobs") + tarwriter.dir_entry("blobs/sha256"))
        for name, data in plan.head:
            queue.put(tarwriter.file_entry(name, data))
        for path, layer in plan.layers:
            _write_layer(path, layer, queue)
        queue.put(tarwriter.END)
    except BaseException as exc:
        queue.fail(exc)
        raise
    queue.close()


def _write_layer(path: str, layer: _SaveLayer, queue: LoopQueue) -> None:
    record = layer.record
    queue.put(tarwriter.header(_blob_name(record.diff_id), layer.tar_size))
    written = 0
    with open(path, "rb") as handle:
        source: Readable = handle
        if record.blob_compression != "none":
            source, _ = open_uncompressed(handle)
        while data := source.read(CHUNK):
            written += len(data)
            if written > layer.tar_size:
                raise EngineError(f"layer {record.diff_id} is longer than recorded")
            queue.put(data)
    if written != layer.tar_size:
        raise EngineError(f"layer {record.diff_id} is shorter than recorded")
    queue.put(tarwriter.padding(written))


# =========================================================================== load
@dataclass
class _Layer:
    """A member that was a layer: unpacked into ``key``, its blob in ``writer``."""

    name: str
    key: str
    writer: ContentWriter | None
    ingested: Ingested
    used: bool = False


@dataclass
class _Members:
    """What the archive held, by cleaned member name."""

    files: dict[str, bytes] = field(default_factory=dict)  # small files, in memory
    layers: dict[str, _Layer] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)  # symlink name → cleaned target
    hardlinks: dict[str, str] = field(default_factory=dict)
    skipped: set[str] = field(default_factory=set)
    metadata_bytes: int = 0

    def resolve(self, path: str) -> str:
        """A path as the archive's own symlinks lead it (lexically, inside the archive:
        no component may climb above the root)."""
        parts = path.split("/")
        if path.startswith("/") or any(part == ".." for part in parts):
            raise InvalidParameter(f"{path}: path is not in the archive")
        current: list[str] = []
        pending = [x for x in parts if x not in ("", ".")]
        hops = 0
        while pending:
            current.append(pending.pop(0))
            joined = "/".join(current)
            target = self.links.get(joined) or self.hardlinks.get(joined)
            if target is None:
                continue
            hops += 1
            if hops > 40:
                raise InvalidParameter(f"{path}: too many levels of symbolic links")
            # A symlink is relative to its directory, or to the archive's root when
            # absolute (scoped, as moby's FollowSymlinkInScope); a hard link names a
            # member from the root.
            relative = joined in self.links and not target.startswith("/")
            base = current[:-1] if relative else []
            combined = [*base, *target.split("/")]
            resolved: list[str] = []
            for part in combined:
                if part in ("", "."):
                    continue
                if part == "..":
                    if not resolved:
                        raise InvalidParameter(f"{path}: path is not in the archive")
                    resolved.pop()
                    continue
                resolved.append(part)
            current = []
            pending = resolved + pending
        return "/".join(current)


def _clean(name: str) -> str:
    """A member name as a lookup key (leading ./ and / dropped, never used as a path)."""
    parts = [x for x in name.split("/") if x not in ("", ".")]
    return "/".join(parts)


async def load(
    m: ImageManager, stream: AsyncIterator[bytes], quiet: bool, sink: ProgressSink
) -> None:
    loop = asyncio.get_running_loop()
    members = _Members()
    show: ProgressSink = p.discard if quiet else sink

    def threadsafe_sink(message: p.Progress) -> None:
        loop.call_soon_threadsafe(show, message)

    try:
        await run_fed(stream, _read_members, members, _Bridge(loop, m), threadsafe_sink,
                      name="wharfd-load", aborted="load aborted")
        await _register(m, members, sink)
    finally:
        await _discard_unused(m, members)


class _Bridge:
    """What the reading thread needs from the loop side (run there, waited for)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, m: ImageManager) -> None:
        self._loop = loop
        self._m = m

    def new_snapshot(self) -> tuple[str, Path]:
        return asyncio.run_coroutine_threadsafe(
            self._m.new_extract_snapshot(), self._loop
        ).result()

    def open_writer(self, expected: str | None) -> ContentWriter:
        return self._m.content.open_writer(ContentStore.new_ref("load"), expected)


def _read_members(
    pipe: ChunkPipe, members: _Members, bridge: _Bridge, sink: ProgressSink
) -> None:
    """Walk the (possibly compressed) outer tar; worker thread."""
    try:
        plain, _ = open_uncompressed(pipe)
        archive = tarfile.open(fileobj=plain, mode="r|", bufsize=64 * 1024)  # type: ignore[call-overload]
    except (tarfile.TarError, UnpackError) as exc:
        raise InvalidParameter(f"Error processing tar file: {exc}") from None
    try:
        for member in archive:
            _read_member(archive, member, members, bridge, sink)
    except tarfile.TarError as exc:
        raise InvalidParameter(f"Error processing tar file: {exc}") from None
    finally:
        archive.close()
    while plain.read(CHUNK):  # the rest of the body (padding after the end blocks)
        pass


def _read_member(
    archive: tarfile.TarFile, member: tarfile.TarInfo, members: _Members, bridge: _Bridge,
    sink: ProgressSink,
) -> None:
    name = _clean(member.name)
    if not name:
        return
    if member.issym():
        members.links[name] = member.linkname  # relative to the link's directory
        return
    if member.islnk():
        members.hardlinks[name] = _clean(member.linkname)
        return
    if not member.isreg():
        return
    source = archive.extractfile(member)
    if source is None:
        return
    head = _read_head(source)
    layer_like = name.endswith("/layer.tar") or name == "layer.tar" or (
        name.startswith("blobs/") and not head.lstrip().startswith(b"{")
        and _looks_like_layer(head)
    )
    if layer_like:
        _read_layer(name, member.size, _Joined(head, source), members, bridge, sink)
        return
    if member.size > MAX_METADATA_FILE:
        members.skipped.add(name)
        return
    data = head + source.read()
    members.metadata_bytes += len(data)
    if members.metadata_bytes > MAX_METADATA_TOTAL:
        raise InvalidParameter("invalid archive: too much metadata")
    members.files[name] = data


def _read_head(source: Readable) -> bytes:
    data = b""
    while len(data) < 512:
        more = source.read(512 - len(data))
        if not more:
            break
        data += more
    return data


def _looks_like_layer(head: bytes) -> bool:
    if sniff_compression(head) != "none":
        return True
    return len(head) >= 262 and head[257:262] == b"ustar"


class _Joined:
    def __init__(self, head: bytes, rest: Readable) -> None:
        self._head = head
        self._rest = rest

    def read(self, n: int = -1, /) -> bytes:
        if self._head:
            out, self._head = self._head, b""
            return out
        return self._rest.read(n if n >= 0 else CHUNK)


def _read_layer(
    name: str, size: int, source: Readable, members: _Members, bridge: _Bridge,
    sink: ProgressSink,
) -> None:
    expected = None
    if name.startswith("blobs/sha256/"):
        expected = "sha256:" + name.rsplit("/", 1)[-1]
    short = (expected or name).removeprefix("sha256:").removeprefix("blobs/sha256/")[:12]
    key, root = bridge.new_snapshot()
    writer: ContentWriter | None = None
    try:
        writer = bridge.open_writer(expected if expected and len(expected) == 71 else None)
        bar = p.ByteProgress(sink, short, p.LOADING_LAYER, size)
        ingested = ingest(source, writer, root, on_bytes=bar.add,
                          crash_after_first_chunk="load_mid_stream")
        bar.emit()
        if expected is not None and ingested.blob_digest != expected:
            raise InvalidParameter(f"invalid archive: {name} does not match its digest")
    except BaseException:
        members.layers[name] = _Layer(name, key, writer, _EMPTY_INGEST)
        raise
    members.layers[name] = _Layer(name, key, writer, ingested)


_EMPTY_INGEST = Ingested("", 0, "none", "", 0, 0, 0)


# -------------------------------------------------------------------- resolving images
@dataclass(frozen=True)
class _ToLoad:
    config: bytes
    image_id: str
    layer_paths: list[str]
    tags: list[Reference]


def _images_of(members: _Members) -> list[_ToLoad]:
    if "manifest.json" in members.files:
        return _from_manifest_json(members)
    if "index.json" in members.files:
        return _from_index(members)
    raise InvalidParameter("invalid archive: does not contain a manifest.json")


def _from_manifest_json(members: _Members) -> list[_ToLoad]:
    try:
        doc = json.loads(members.files["manifest.json"])
    except ValueError as exc:
        raise InvalidParameter(f"invalid archive: failed to decode manifest.json: {exc}") from None
    if doc is None:
        raise InvalidParameter("invalid manifest, manifest cannot be null (but can be [])")
    if not isinstance(doc, list):
        raise InvalidParameter("invalid archive: failed to decode manifest.json: not a list")
    out = []
    for item in doc:
        if not isinstance(item, dict) or not isinstance(item.get("Config"), str):
            raise InvalidParameter("invalid archive: manifest.json entry without Config")
        config = _file(members, item["Config"])
        layers = item.get("Layers") or []
        if not isinstance(layers, list) or not all(isinstance(x, str) for x in layers):
            raise InvalidParameter("invalid archive: manifest.json Layers is not a list")
        tags = []
        for text in item.get("RepoTags") or []:
            tags.append(_tag_of(text))
        image_id = "sha256:" + hashlib.sha256(config).hexdigest()
        out.append(_ToLoad(config, image_id, list(layers), tags))
    return out


def _tag_of(text: Any) -> Reference:
    if not isinstance(text, str):
        raise InvalidParameter(f"invalid tag {text!r}")
    try:
        ref = parse_normalized_named(text)
    except ReferenceError as exc:
        raise InvalidParameter(f"invalid tag {text!r}: {exc}") from None
    if ref.tag is None or ref.digest is not None:
        raise InvalidParameter(f'invalid tag "{text}"')
    return ref


def _from_index(members: _Members) -> list[_ToLoad]:
    try:
        index = parse_manifest(members.files["index.json"], OCI_INDEX)
    except ManifestError as exc:
        raise InvalidParameter(f"invalid archive: index.json: {exc}") from None
    if not isinstance(index, ManifestIndex):
        raise InvalidParameter("invalid archive: index.json is not an index")
    out: list[_ToLoad] = []
    for entry in index.manifests:
        out += _from_descriptor(members, entry, entry.annotations)
    return out


def _from_descriptor(members: _Members, entry: Descriptor, annotations: Any) -> list[_ToLoad]:
    data = _file(members, _blob_name(entry.digest))
    doc = parse_manifest(data, entry.media_type)
    if isinstance(doc, ManifestIndex):
        found: list[_ToLoad] = []
        for child in doc.manifests:
            if child.platform is None or child.platform.os == "linux":
                found += _from_descriptor(members, child, annotations)
                if found:
                    break
        return found
    assert isinstance(doc, ImageManifest)
    config = _file(members, _blob_name(doc.config.digest))
    tags: list[Reference] = []
    name = annotations.get(ANNOTATION_IMAGE_NAME) or annotations.get(ANNOTATION_REF_NAME)
    if name:
        with contextlib.suppress(InvalidParameter):
            tags.append(_tag_of(name))
    return [_ToLoad(config, doc.config.digest, [_blob_name(x.digest) for x in doc.layers], tags)]


def _file(members: _Members, path: str) -> bytes:
    name = members.resolve(path)
    data = members.files.get(name)
    if data is None:
        raise InvalidParameter(f"invalid archive: open {path}: no such file or directory")
    return data


def _check_config(item: _ToLoad) -> list[str]:
    try:
        config = json.loads(item.config)
    except ValueError as exc:
        raise InvalidParameter(f"invalid image config: {exc}") from None
    if not isinstance(config, dict):
        raise InvalidParameter("invalid image config: not a JSON object")
    if (config.get("os") or "linux") != "linux":
        raise InvalidParameter(f"cannot load {config.get('os')} image on linux")
    rootfs = config.get("rootfs")
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise InvalidParameter("invalid rootfs in image configuration")
    if len(item.layer_paths) != len(ids):
        raise InvalidParameter(
            f"invalid manifest, layers length mismatch: expected {len(item.layer_paths)}, "
            f"got {len(ids)}"
        )
    return list(ids)


# -------------------------------------------------------------------- committing
async def _register(m: ImageManager, members: _Members, sink: ProgressSink) -> None:
    items = _images_of(members)
    plans = [(item, _check_config(item)) for item in items]
    all_chains = [c for _, ids in plans for c in chain_ids(ids)]
    async with m.lease(all_chains):
        new_layers: dict[str, LayerRecord] = {}
        images: list[NewImage] = []
        for item, diff_ids in plans:
            records = await _layers_of(m, members, item, diff_ids, new_layers)
            await m.write_config(item.config, item.image_id)
            images.append(NewImage(
                item.image_id, item.config, records[-1].chain_id if records else None,
                sum(r.size for r in records), tags=item.tags,
            ))
        messages = []
        for image in images:
            for ref in image.tags:
                previous = m.lookup_named(ref)
                if previous is not None and previous != image.image_id:
                    messages.append(f"The image {ref.familiar()} already exists, renaming the "
                                    f"old one with ID {previous} to empty string\n")
                messages.append(f"Loaded image: {ref.familiar()}\n")
            if not image.tags:
                messages.append(f"Loaded image ID: {image.image_id}\n")
        await m.register(list(new_layers.values()), images, action="load",
                         before_commit="load_before_commit")
        crash_point("load_after_commit")
    for text in messages:
        sink(p.Progress(stream=text))


async def _layers_of(
    m: ImageManager, members: _Members, item: _ToLoad, diff_ids: list[str],
    new_layers: dict[str, LayerRecord],
) -> list[LayerRecord]:
    records: list[LayerRecord] = []
    parent: str | None = None
    for i, (diff_id, chain_id) in enumerate(zip(diff_ids, chain_ids(diff_ids), strict=True)):
        record = m.layer(chain_id) or new_layers.get(chain_id)
        if record is None:
            layer = members.layers.get(members.resolve(item.layer_paths[i]))
            if layer is None:
                raise InvalidParameter(
                    f"invalid archive: open {item.layer_paths[i]}: no such file or directory"
                )
            if layer.ingested.diff_id != diff_id:
                raise InvalidParameter(f'invalid diffID for layer {i}: expected "{diff_id}", '
                                       f'got "{layer.ingested.diff_id}"')
            record = await _commit(m, layer, parent)
            new_layers[chain_id] = record
        records.append(record)
        parent = chain_id
    return records


async def _commit(m: ImageManager, layer: _Layer, parent: str | None) -> LayerRecord:
    if not layer.used:
        layer.used = True
        writer, layer.writer = layer.writer, None
        return await m.commit_layer(layer.key, layer.ingested, parent, writer)
    # The same layer file on another parent: unpack it again from the kept blob.
    blob = layer.ingested.blob_digest
    key, root = await m.new_extract_snapshot()
    try:
        path = m.content.path(blob)
        job = ThreadJob(_reingest, str(path), root)
        again = await job.result()
    except BaseException:
        await m.discard_snapshot(key)
        raise
    return await m.commit_layer(key, again, parent, None, blob_digest=blob)


def _reingest(path: str, root: Path) -> Ingested:
    from engine.images.unpack import unpack

    with open(path, "rb") as handle:
        result = unpack(handle, root)
    return Ingested(result.diff_id, result.tar_size, result.compression, result.diff_id,
                    result.tar_size, result.size, result.entries)


async def _discard_unused(m: ImageManager, members: _Members) -> None:
    for layer in members.layers.values():
        writer, layer.writer = layer.writer, None
        with contextlib.suppress(Exception):
            if writer is not None:
                await asyncio.to_thread(writer.abort)
        if not layer.used:
            with contextlib.suppress(Exception):
                await m.discard_snapshot(layer.key)


__all__ = ["SaveStream", "load"]
