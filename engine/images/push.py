"""Push: local image → registry (dockerd's messages, api-notes §3.8).

For each tag: ``Preparing`` every layer (top first, ids = 12 hex of the diff id), then
at most ``max-concurrent-uploads`` layers at once, each the cheapest way it can go:

1. a compressed blob the target repository already holds (known from an earlier pull
   or push, or the blob a pull kept) → HEAD → ``Layer already exists``;
2. one that another repository of the same registry holds → cross-repository mount →
   ``Mounted from <repo>``;
3. else upload: a kept compressed blob goes as it is (a chunked upload: PATCH requests
   with Content-Range); an uncompressed one is gzip-compressed on the fly, in parallel
   chunks (engine/images/compress.py) off the event loop, and streamed in one PATCH.

Then the config (a monolithic upload), the manifest (Docker schema 2, or OCI when a
layer is zstd), ``<tag>: digest: … size: …`` and the aux record. The digest becomes a
RepoDigest here, and what the registry now holds is remembered (``layer_sources``).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from engine.errors import EngineError, InvalidParameter, NotFound
from engine.images import progress as p
from engine.images.auth import AuthConfig
from engine.images.catalog import LayerRecord, LayerSource
from engine.images.compress import Compressed, gzip_parallel
from engine.images.manifest import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    Descriptor,
    build_manifest,
)
from engine.images.pipes import LoopQueue, ThreadJob
from engine.images.progress import ProgressSink
from engine.images.reference import Reference, parse_normalized_named
from engine.images.registry import Mounted, RegistryError, RegistryUnreachable, Repository

if TYPE_CHECKING:
    from engine.images.manager import ImageManager

CHUNKED_UPLOAD = 32 << 20  # bytes per PATCH of a chunked upload
_READ = 4 << 20


@dataclass(frozen=True)
class _Target:
    ref: Reference
    image_id: str


async def push(
    m: ImageManager, name: str, tag: str | None, auth: AuthConfig, sink: ProgressSink
) -> None:
    ref = parse_normalized_named(name)
    if tag:
        ref = ref.trim().with_tag(tag)
    if ref.digest is not None:
        raise InvalidParameter("cannot push a digest reference")
    sink(p.message(f"The push refers to repository [{ref.name}]"))
    targets = _targets(m, ref)
    repo = await _open(m, ref, auth)
    session = _PushSession(m, repo, ref, sink)
    try:
        for target in targets:
            await session.push_tag(target)
    except RegistryError as exc:
        if exc.message.endswith(": no basic auth credentials"):
            raise RegistryError("no basic auth credentials", exc.status, exc.code) from None
        raise


def _targets(m: ImageManager, ref: Reference) -> list[_Target]:
    if not m.tags_of_repository(ref):
        raise NotFound(f"An image does not exist locally with the tag: {ref.familiar_name()}")
    if ref.tag is not None:
        image_id = m.lookup_named(ref)
        if image_id is None or m.view_by_id(image_id) is None:
            raise NotFound(f"tag does not exist: {ref.familiar()}")
        return [_Target(ref, image_id)]
    found = [_Target(r, i) for r, i in m.tags_of_repository(ref) if m.view_by_id(i)]
    if not found:
        raise NotFound(f"An image does not exist locally with the tag: {ref.familiar_name()}")
    return found


async def _open(m: ImageManager, ref: Reference, auth: AuthConfig) -> Repository:
    """The first push endpoint that answers (HTTPS, then HTTP for insecure hosts)."""
    last: EngineError | None = None
    for endpoint in m.registries.endpoints(ref.domain, push=True):
        repo = m.registries.repository(endpoint, ref.path, auth, push=True)
        try:
            await repo.ping()
        except RegistryUnreachable as exc:
            last = exc
            continue
        return repo
    assert last is not None
    raise last


class _PushSession:
    def __init__(self, m: ImageManager, repo: Repository, ref: Reference,
                 sink: ProgressSink) -> None:
        self.m = m
        self.repo = repo
        self.ref = ref
        self.sink = sink
        self.pushed: dict[str, asyncio.Future[Descriptor]] = {}  # diff id → descriptor
        self.sources: list[LayerSource] = []

    async def push_tag(self, target: _Target) -> None:
        view = self.m.view_by_id(target.image_id)
        if view is None:
            raise NotFound(f"No such image: {target.ref.familiar()}")
        records = []
        for chain_id in view.layers:
            record = self.m.layer(chain_id)
            if record is None:
                raise EngineError(f"layer {chain_id} of {target.ref.familiar()} is missing")
            records.append(record)
        for record in reversed(records):
            self.sink(p.layer(p.PREPARING, p.short(record.diff_id)))
        async with self.m.lease([r.chain_id for r in records]):
            uploads = [asyncio.ensure_future(self._layer(r)) for r in reversed(records)]
            try:
                descriptors = list(reversed(await asyncio.gather(*uploads)))
            except BaseException:
                for task in uploads:
                    task.cancel()
                await asyncio.gather(*uploads, return_exceptions=True)
                raise
        config = await self.m.content.read_blob(target.image_id)
        oci = any(d.media_type == OCI_LAYER_ZSTD for d in descriptors)
        config_desc = Descriptor(OCI_CONFIG if oci else DOCKER_CONFIG, target.image_id,
                                 len(config))
        await self._blob_bytes(config_desc.digest, config)
        manifest = build_manifest(
            config_desc,
            [_for_manifest(d, oci) for d in descriptors],
            OCI_MANIFEST if oci else DOCKER_MANIFEST,
            indent=True,
        )
        digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        tag = target.ref.tag or "latest"
        await self.repo.put_manifest(tag, manifest, OCI_MANIFEST if oci else DOCKER_MANIFEST)
        self.sink(p.message(f"{tag}: digest: {digest} size: {len(manifest)}"))
        self.sink(p.Progress(detail=True,
                             aux={"Tag": tag, "Digest": digest, "Size": len(manifest)}))
        await self.m.add_sources(self.sources)
        self.sources = []
        await self.m.add_digest(Reference(self.ref.domain, self.ref.path, None, digest),
                                target.image_id)
        self.m.events.emit("image", "push", target.ref.familiar(),
                           {"name": target.ref.familiar()})

    # -- one layer --------------------------------------------------------------------
    async def _layer(self, record: LayerRecord) -> Descriptor:
        known = self.pushed.get(record.diff_id)
        if known is not None:
            descriptor = await asyncio.shield(known)
            self.sink(p.layer(p.LAYER_EXISTS, p.short(record.diff_id)))
            return descriptor
        future: asyncio.Future[Descriptor] = asyncio.get_running_loop().create_future()
        self.pushed[record.diff_id] = future
        try:
            descriptor = await self._upload_layer(record)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here; other waiters see it too
            raise
        future.set_result(descriptor)
        return descriptor

    async def _upload_layer(self, record: LayerRecord) -> Descriptor:
        id_ = p.short(record.diff_id)
        slots = self.m.upload_slots
        if slots.locked():
            self.sink(p.layer(p.WAITING, id_))
        async with slots:
            own = await self._own_compressed(record)
            candidates = await self.m.sources_for(record.diff_id, self.ref.domain)
            for source in _ordered(candidates, self.ref.path, own):
                if source.repository == self.ref.path or source is own:
                    size = await self.repo.head_blob(source.digest)
                    if size is not None:
                        self.sink(p.layer(p.LAYER_EXISTS, id_))
                        return self._remember(record, source.digest, source.media_type,
                                              size or source.size)
            location: str | None = None
            for source in candidates:
                if source.repository == self.ref.path:
                    continue
                self.repo.add_pull_scope(source.repository)
                answer = await self.repo.start_upload((source.digest, source.repository))
                if isinstance(answer, Mounted):
                    self.sink(p.layer(f"Mounted from {source.repository}", id_))
                    return self._remember(record, source.digest, source.media_type,
                                          source.size)
                location = answer
                break
            if location is None:
                answer = await self.repo.start_upload()
                assert isinstance(answer, str)
                location = answer
            if own is not None:
                descriptor = await self._upload_file(record, own, location)
            else:
                descriptor = await self._upload_compressed(record, location)
        self.sink(p.layer(p.PUSHED, id_))
        return descriptor

    async def _own_compressed(self, record: LayerRecord) -> LayerSource | None:
        """The compressed blob kept for the layer (a pulled one), as a source."""
        compression = record.blob_compression
        if record.blob_digest is None or compression not in ("gzip", "zstd"):
            return None
        path = self.m.content.path(record.blob_digest)
        try:
            size = (await asyncio.to_thread(os.stat, path)).st_size
        except FileNotFoundError:
            return None
        media_type = OCI_LAYER_ZSTD if compression == "zstd" else DOCKER_LAYER_GZIP
        return LayerSource(record.diff_id, record.blob_digest, media_type, size,
                           self.ref.domain, "")

    def _remember(self, record: LayerRecord, digest: str, media_type: str, size: int
                  ) -> Descriptor:
        self.sources.append(LayerSource(record.diff_id, digest, media_type, size,
                                        self.ref.domain, self.ref.path))
        return Descriptor(media_type, digest, size)

    async def _upload_file(self, record: LayerRecord, own: LayerSource,
                           location: str) -> Descriptor:
        """A kept compressed blob, as it is: a chunked upload (PATCH with ranges)."""
        path = self.m.content.path(own.digest)
        bar = p.ByteProgress(self.sink, p.short(record.diff_id), p.PUSHING, own.size)
        handle = await asyncio.to_thread(open, path, "rb")
        try:
            offset = 0
            while offset < own.size:
                length = min(CHUNKED_UPLOAD, own.size - offset)
                body = _file_range(handle, length, bar)
                location = await self.repo.upload_chunk(location, body, offset, length)
                offset += length
        finally:
            await asyncio.to_thread(handle.close)
        bar.emit()
        await self.repo.finish_upload(location, own.digest)
        return self._remember(record, own.digest, own.media_type, own.size)

    async def _upload_compressed(self, record: LayerRecord, location: str) -> Descriptor:
        """An uncompressed blob, gzip-compressed on the way out (one streamed PATCH)."""
        if record.blob_digest is None:
            raise EngineError(f"layer {record.chain_id} has no content to push")
        path = self.m.content.path(record.blob_digest)
        loop = asyncio.get_running_loop()
        queue = LoopQueue(loop)
        bar = p.ByteProgress(self.sink, p.short(record.diff_id), p.PUSHING, record.tar_size)

        def on_input(n: int) -> None:
            loop.call_soon_threadsafe(bar.add, n)

        job = ThreadJob(_compress_file, str(path), queue, on_input, name="wharfd-push")
        try:
            location = await self.repo.upload_chunk(location, queue.chunks())
            result = await job.result()
        except BaseException:
            queue.close_consumer()
            await job.settle()
            raise
        bar.emit()
        await self.repo.finish_upload(location, result.digest)
        return self._remember(record, result.digest, DOCKER_LAYER_GZIP, result.size)

    async def _blob_bytes(self, digest: str, data: bytes) -> None:
        """A small blob (the config): skipped when present, else a monolithic upload."""
        if await self.repo.head_blob(digest) is not None:
            return
        answer = await self.repo.start_upload()
        assert isinstance(answer, str)
        await self.repo.finish_upload(answer, digest, data)


def _compress_file(path: str, queue: LoopQueue, on_input: Callable[[int], None]) -> Compressed:
    try:
        with open(path, "rb") as source:
            result = gzip_parallel(source.read, queue.put, on_input=on_input)
    except BaseException as exc:
        queue.fail(exc)
        raise
    queue.close()
    return result


async def _file_range(handle: BinaryIO, length: int, bar: p.ByteProgress
                      ) -> AsyncIterator[bytes]:
    remaining = length
    while remaining > 0:
        data = await asyncio.to_thread(handle.read, min(_READ, remaining))
        if not data:
            raise EngineError("blob shorter than its size")
        remaining -= len(data)
        bar.add(len(data))
        yield data


def _ordered(candidates: list[LayerSource], path: str,
             own: LayerSource | None) -> list[LayerSource]:
    """Sources to HEAD in the target repository: the kept blob first, then the ones
    known to be there."""
    out = [own] if own is not None else []
    out += [c for c in candidates if c.repository == path and (own is None or
                                                                c.digest != own.digest)]
    return out


def _for_manifest(desc: Descriptor, oci: bool) -> Descriptor:
    if oci and desc.media_type == DOCKER_LAYER_GZIP:
        return Descriptor(OCI_LAYER_GZIP, desc.digest, desc.size)
    return desc

