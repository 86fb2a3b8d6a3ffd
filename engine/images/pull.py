"""Pull: registry → verified blobs → unpacked layers → one transaction.

Order of a pull of ``name:tag`` (dockerd's messages, api-notes §3.8):

1. resolve the manifest on the first endpoint that answers (mirrors, HTTPS, HTTP for
   insecure hosts); an index is narrowed to the wanted platform. Errors up to here are
   plain HTTP errors (nothing has been written to the client yet);
2. ``<tag>: Pulling from <path>``; fetch and verify the config (its digest is the image
   id); layers already here are ``Already exists``;
3. every other layer is a *transfer*: download, hash, keep the blob and unpack, all in
   one pass (engine/images/layers.py), at most ``max-concurrent-downloads`` at once.
   Layers unpack without a parent and are committed in order, each onto its parent,
   once that one is committed. Two pulls that need the same layer share its transfer
   (and its progress messages): one download per layer (reliability L15);
4. the config blob, then one transaction with the layer, image, tag and digest rows;
   ``Digest:`` and ``Status:`` lines.

Every blob is verified (size and digest) before it is committed; a mismatch fails the
pull with ``filesystem layer verification failed for digest …`` and registers nothing.
Crash points: ``pull_mid_download``, ``pull_after_layer_commit``, ``pull_before_commit``,
``pull_after_commit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.errors import EngineError, InvalidParameter, NotFound, Unauthorized
from engine.images import progress as p
from engine.images.auth import AuthConfig
from engine.images.catalog import LayerRecord, LayerSource, NewImage
from engine.images.layers import Ingested, chain_ids, ingest
from engine.images.manifest import (
    CONFIG_TYPES,
    Descriptor,
    ImageManifest,
    ManifestIndex,
    parse_manifest,
    select_platform,
)
from engine.images.pipes import ThreadJob
from engine.images.platforms import Platform
from engine.images.progress import ProgressSink
from engine.images.reference import (
    Reference,
    ReferenceError,
    parse_digest,
    parse_normalized_named,
)
from engine.images.registry import (
    DOCKER_IO,
    RegistryError,
    RegistryUnreachable,
    Repository,
)
from engine.images.unpack import ChunkPipe
from engine.store.content import ContentStore, ContentWriter
from engine.store.crashpoints import crash_point

if TYPE_CHECKING:
    from engine.images.manager import ImageManager

log = logging.getLogger(__name__)

_MAX_CONFIG = 8 << 20


# =========================================================================== references
def pull_reference(image: str, tag: str | None) -> Reference:
    """``fromImage`` and ``tag`` → the reference to pull (dockerd's postImagesCreate):
    the tag may be a digest; a name alone means every tag."""
    image = image.removesuffix(":")  # "pull -a" may send a trailing ":"
    ref = parse_normalized_named(image)
    host = ref.domain.split(":", 1)[0]
    if host != host.lower() and "." not in host and ":" not in ref.domain:
        # An upper-case first component is a registry for distribution/reference v0.6,
        # but no real registry host looks like that: refuse it as dockerd 20.10 did.
        raise ReferenceError("invalid reference format: repository name must be lowercase")
    if tag:
        try:
            digest = parse_digest(tag)
        except ReferenceError:
            ref = ref.trim().with_tag(tag)
        else:
            ref = Reference(ref.domain, ref.path, None, digest)
    if ref.familiar_name() == "scratch":
        from engine.errors import Forbidden

        raise Forbidden("'scratch' is a reserved name")
    return ref


def translate(exc: RegistryError, ref: Reference) -> EngineError:
    """A registry error on the manifest → dockerd v28's error (distribution/errors.go)."""
    if exc.code == "DENIED":
        return NotFound(f"pull access denied for {ref.familiar_name()}, repository does not "
                        f"exist or may require 'docker login': {exc.message}")
    if exc.code == "MANIFEST_UNKNOWN":
        return NotFound(f"manifest for {ref.familiar()} not found: {exc.message}")
    if exc.code == "NAME_UNKNOWN":
        return NotFound(f"repository {ref.familiar_name()} not found: {exc.message}")
    if exc.code == "UNAUTHORIZED" and "no basic auth credentials" not in exc.message:
        return Unauthorized(exc.message)
    return exc


# =========================================================================== resolving
@dataclass(frozen=True)
class Resolved:
    repo: Repository
    manifest: ImageManifest
    digest: str  # of the image manifest (for an index: of the chosen entry)


async def _fetch_manifest(
    m: ImageManager, ref: Reference, auth: AuthConfig
) -> tuple[Repository, bytes, str]:
    """Try each endpoint until one answers; (repository, bytes, content type)."""
    reference = ref.digest or ref.tag or "latest"
    last: EngineError | None = None
    for endpoint in m.registries.endpoints(ref.domain):
        # Mirrors never get the upstream credentials.
        repo = m.registries.repository(endpoint, ref.path,
                                       AuthConfig() if endpoint.mirror else auth)
        try:
            await repo.ping()
            data, content_type, _ = await repo.get_manifest(reference)
        except RegistryUnreachable as exc:
            if endpoint.mirror:
                log.warning("pull %s: mirror %s is unreachable, trying the next: %s",
                            ref.familiar(), endpoint.base, exc)
            last = exc
            continue
        except RegistryError as exc:
            if endpoint.mirror:
                log.info("pull %s: mirror %s answered %s, trying the next: %s",
                         ref.familiar(), endpoint.base, exc.status, exc)
                last = exc
                continue  # a mirror's failure falls back to the registry itself
            raise translate(exc, ref) from None
        if ref.domain == DOCKER_IO:
            # which of the mirrors, or the Hub itself, served the pull: operators ask
            log.info("pull %s: served by %s%s", ref.familiar(), endpoint.base,
                     " (mirror)" if endpoint.mirror else "")
        return repo, data, content_type
    assert last is not None
    if isinstance(last, RegistryError):
        raise translate(last, ref)
    raise last


def _verify_manifest(data: bytes, expected: str | None) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if expected is not None and digest != expected:
        raise InvalidParameter(f"manifest verification failed for digest {expected}")
    return digest


async def resolve(
    m: ImageManager, ref: Reference, auth: AuthConfig, wanted: Platform
) -> Resolved:
    repo, data, content_type = await _fetch_manifest(m, ref, auth)
    digest = _verify_manifest(data, ref.digest)
    parsed = parse_manifest(data, content_type, ref.familiar())
    if isinstance(parsed, ManifestIndex):
        entry = select_platform(parsed, wanted)
        try:
            data, content_type, _ = await repo.get_manifest(entry.digest)
        except RegistryError as exc:
            raise translate(exc, ref) from None
        digest = _verify_manifest(data, entry.digest)
        parsed = parse_manifest(data, content_type or entry.media_type, ref.familiar())
        if isinstance(parsed, ManifestIndex):
            raise InvalidParameter("nested manifest lists are not supported")
    return Resolved(repo, parsed, digest)


async def inspect_remote(m: ImageManager, name: str, auth: AuthConfig) -> dict[str, Any]:
    """``GET /distribution/{name}/json``: the descriptor of what ``name`` points at and
    the platforms it offers."""
    ref = parse_normalized_named(name).tag_name_only()
    repo, data, content_type = await _fetch_manifest(m, ref, auth)
    digest = _verify_manifest(data, ref.digest)
    parsed = parse_manifest(data, content_type, ref.familiar())
    media_type = parsed.media_type
    platforms: list[dict[str, str]] = []
    if isinstance(parsed, ManifestIndex):
        for entry in parsed.manifests:
            if entry.platform is not None:
                platforms.append(_platform_object(entry.platform))
    else:
        config = json.loads(await repo.read_blob(parsed.config.digest, _MAX_CONFIG))
        platforms.append(_platform_object(Platform(
            str(config.get("os", "")), str(config.get("architecture", "")),
            str(config.get("variant", "") or ""),
        )))
    return {"Descriptor": {"mediaType": media_type, "digest": digest, "size": len(data)},
            "Platforms": platforms}


def _platform_object(platform: Platform) -> dict[str, str]:
    out = {"architecture": platform.architecture, "os": platform.os}
    if platform.variant:
        out["variant"] = platform.variant
    return out


# =========================================================================== pull
async def pull(
    m: ImageManager, image: str, tag: str | None, platform: str | None, auth: AuthConfig,
    sink: ProgressSink,
) -> None:
    if not image:
        raise InvalidParameter("either fromImage or fromSrc must be set")
    ref = pull_reference(image, tag)
    wanted = Platform.parse(platform)
    if ref.tag is not None or ref.digest is not None:
        downloaded = await _pull_one(m, ref, wanted, auth, sink)
    else:
        downloaded = await _pull_all_tags(m, ref, wanted, auth, sink)
    status = "Downloaded newer image for" if downloaded else "Image is up to date for"
    sink(p.message(f"Status: {status} {ref.familiar()}"))


async def _pull_all_tags(
    m: ImageManager, ref: Reference, wanted: Platform, auth: AuthConfig, sink: ProgressSink
) -> bool:
    repo, _data, _ctype = await _fetch_manifest(m, ref.with_tag("latest"), auth)
    try:
        tags = await repo.list_tags()
    except RegistryError as exc:
        raise translate(exc, ref) from None
    downloaded = False
    for tag in tags:
        downloaded = await _pull_one(m, ref.with_tag(tag), wanted, auth, sink) or downloaded
    return downloaded


async def _pull_one(
    m: ImageManager, ref: Reference, wanted: Platform, auth: AuthConfig, sink: ProgressSink
) -> bool:
    """Pull one tag or digest; True when something changed (new image or moved tag)."""
    resolved = await resolve(m, ref, auth, wanted)
    tag_or_digest = ref.digest or ref.tag or "latest"
    sink(p.message(f"Pulling from {ref.path}", tag_or_digest))
    manifest = resolved.manifest
    config_bytes = await _fetch_config(resolved.repo, manifest.config)
    image_id = manifest.config.digest
    diff_ids = _diff_ids(config_bytes, manifest)
    chains = chain_ids(diff_ids)
    async with m.lease(chains):
        known = [m.layer(c) for c in chains]
        present = [r for r in known if r is not None]
        if m.view_by_id(image_id) is not None and len(present) == len(chains):
            # The image is here already: dockerd says nothing about its layers.
            records = present
        else:
            records = await _fetch_layers(m, resolved.repo, manifest.layers, diff_ids,
                                          chains, sink)
            await m.write_config(config_bytes, image_id)
        sink(p.message(f"Digest: {resolved.digest}"))
        canonical = Reference(ref.domain, ref.path, None, resolved.digest)
        new_layers = [r for r in records if m.layer(r.chain_id) is None]
        image = NewImage(
            image_id=image_id, config=config_bytes, top_layer=chains[-1] if chains else None,
            size=sum(r.size for r in records),
            tags=[ref] if ref.tag is not None else [],
            digests=[canonical],
        )
        sources = [
            LayerSource(diff_id, desc.digest, desc.media_type, desc.size,
                        ref.domain, ref.path)
            for diff_id, desc in zip(diff_ids, manifest.layers, strict=True)
        ]
        previous = await m.register(new_layers, [image], sources,
                                    before_commit="pull_before_commit")
        crash_point("pull_after_commit")
    m.events.emit("image", "pull", ref.familiar(), {"name": ref.familiar()})
    # What the name pointed at just before this pull's rows went in (dockerd compares
    # there too: of two simultaneous pulls, the second is "up to date").
    return previous.get(str(ref if ref.tag is not None else canonical)) != image_id


async def _fetch_config(repo: Repository, desc: Descriptor) -> bytes:
    if desc.media_type and desc.media_type not in CONFIG_TYPES:
        raise InvalidParameter(f"unsupported media type {desc.media_type}")
    data = await repo.read_blob(desc.digest, _MAX_CONFIG)
    if "sha256:" + hashlib.sha256(data).hexdigest() != desc.digest:
        raise InvalidParameter(f"image config verification failed for digest {desc.digest}")
    return data


def _diff_ids(config_bytes: bytes, manifest: ImageManifest) -> list[str]:
    try:
        config = json.loads(config_bytes)
    except ValueError as exc:
        raise InvalidParameter(f"invalid image config: {exc}") from None
    if not isinstance(config, dict):
        raise InvalidParameter("invalid image config: not a JSON object")
    os_name = config.get("os") or "linux"
    if os_name != "linux":
        raise InvalidParameter(
            f'image operating system "{os_name}" cannot be used on this platform'
        )
    rootfs = config.get("rootfs")
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise InvalidParameter("invalid rootfs in image configuration")
    if len(ids) != len(manifest.layers):
        raise InvalidParameter("layers from manifest don't match image configuration")
    return list(ids)


# =========================================================================== layers
async def _fetch_layers(
    m: ImageManager,
    repo: Repository,
    layers: Sequence[Descriptor],
    diff_ids: Sequence[str],
    chains: Sequence[str],
    sink: ProgressSink,
) -> list[LayerRecord]:
    transfers: list[Transfer | None] = []
    existing: dict[int, LayerRecord] = {}
    for i, desc in enumerate(layers):
        record = m.layer(chains[i])
        if record is not None:
            existing[i] = record
            sink(p.layer(p.ALREADY_EXISTS, p.short(desc.digest)))
            transfers.append(None)
            continue
        sink(p.layer(p.PULLING_FS_LAYER, p.short(desc.digest)))
        transfers.append(None)
    for i, desc in enumerate(layers):
        if i in existing:
            continue
        parent = transfers[i - 1] if i > 0 else None
        transfers[i] = _transfer_for(m, repo, desc, diff_ids[i], chains[i],
                                     chains[i - 1] if i > 0 else None, parent)
        transfers[i].watch(sink)  # type: ignore[union-attr]
    try:
        out: list[LayerRecord] = []
        for i in range(len(layers)):
            transfer = transfers[i]
            if transfer is None:
                out.append(existing[i])
            else:
                out.append(await transfer.wait())
        return out
    finally:
        for transfer in transfers:
            if transfer is not None:
                transfer.unwatch(sink)


def _transfer_for(
    m: ImageManager, repo: Repository, desc: Descriptor, diff_id: str, chain_id: str,
    parent_chain: str | None, parent: Transfer | None,
) -> Transfer:
    """The transfer of ``chain_id``: the one in flight, or a new one."""
    current = m.transfers.get(chain_id)
    if isinstance(current, Transfer) and not current.done:
        return current
    transfer = Transfer(m, repo, desc, diff_id, chain_id, parent_chain, parent)
    m.transfers[chain_id] = transfer
    transfer.start()
    return transfer


@dataclass(eq=False)
class Transfer:
    """One layer: download + unpack, then commit onto its parent. Shared by every pull
    that needs the same chain id while it runs; its progress goes to all of them."""

    m: ImageManager
    repo: Repository
    desc: Descriptor
    diff_id: str
    chain_id: str
    parent_chain: str | None
    parent: Transfer | None
    sinks: list[ProgressSink] = field(default_factory=list)
    task: asyncio.Task[LayerRecord] | None = None
    done: bool = False

    @property
    def id(self) -> str:
        return p.short(self.desc.digest)

    def start(self) -> None:
        self.task = self.m.spawn(self._run())
        self.task.add_done_callback(self._finished)

    def _finished(self, _task: asyncio.Task[LayerRecord]) -> None:
        self.done = True
        if self.m.transfers.get(self.chain_id) is self:
            del self.m.transfers[self.chain_id]

    def watch(self, sink: ProgressSink) -> None:
        self.sinks.append(sink)

    def unwatch(self, sink: ProgressSink) -> None:
        with contextlib.suppress(ValueError):
            self.sinks.remove(sink)

    def emit(self, message: p.Progress) -> None:
        for sink in list(self.sinks):
            sink(message)

    async def wait(self) -> LayerRecord:
        assert self.task is not None
        return await asyncio.shield(self.task)

    async def _run(self) -> LayerRecord:
        # Leased for as long as the transfer runs, whichever pull started it.
        async with self.m.lease([self.chain_id]):
            return await self._download_and_commit()

    async def _download_and_commit(self) -> LayerRecord:
        semaphore = self.m.download_slots
        if semaphore.locked():
            self.emit(p.layer(p.WAITING, self.id))
        async with semaphore:
            key, root = await self.m.new_extract_snapshot()
            writer: ContentWriter | None = None
            try:
                writer = await asyncio.to_thread(
                    self.m.content.open_writer, ContentStore.new_ref("pull"),
                    self.desc.digest, self.desc.size,
                )
                started = time.monotonic()
                ingested = await self._download(writer, root)
                log.debug("pull: layer %s: %d bytes, %d entries in %.2fs", self.id,
                          ingested.blob_size, ingested.entries, time.monotonic() - started)
            except BaseException:
                await _abandon(self.m, key, writer)
                raise
        if ingested.diff_id != self.diff_id:
            await _abandon(self.m, key, writer)
            raise InvalidParameter("layers from manifest don't match image configuration")
        total = self.desc.size
        self.emit(p.Progress(p.EXTRACTING, self.id, total, total, True))
        try:
            if self.parent is not None:
                await self.parent.wait()
            started = time.monotonic()
            record = await self.m.commit_layer(key, ingested, self.parent_chain, writer)
            log.debug("pull: layer %s committed in %.2fs", self.id, time.monotonic() - started)
        except BaseException:
            await _abandon(self.m, key, writer)
            raise
        crash_point("pull_after_layer_commit")
        self.emit(p.layer(p.PULL_COMPLETE, self.id))
        return record

    async def _download(self, writer: ContentWriter, root: Any) -> Ingested:
        loop = asyncio.get_running_loop()
        pipe = ChunkPipe(loop)
        bar = p.ByteProgress(self.emit, self.id, p.DOWNLOADING, self.desc.size)
        async with self.repo.open_blob(self.desc.digest) as blob:
            job = ThreadJob(
                functools.partial(ingest, expected_digest=self.desc.digest),
                pipe, writer, root, name="wharfd-pull",
            )
            feeder = asyncio.ensure_future(pipe.feed(_counted(blob.chunks(), bar)))
            try:
                result_or_error = await _first_failure(job, feeder)
            except BaseException:
                pipe.fail(EngineError("pull aborted"))
                await job.settle()
                raise
            finally:
                pipe.close_reader()
                if not feeder.done():
                    feeder.cancel()
                await asyncio.gather(feeder, return_exceptions=True)
        bar.emit()
        self.emit(p.layer(p.VERIFYING, self.id))
        if writer.size != self.desc.size:
            raise InvalidParameter(
                f"filesystem layer verification failed for digest {self.desc.digest}"
            )
        self.emit(p.layer(p.DOWNLOAD_COMPLETE, self.id))
        return result_or_error


async def _first_failure(job: ThreadJob[Ingested], feeder: asyncio.Future[None]) -> Ingested:
    """The ingest result. When the download itself failed (the feeder: a dropped
    connection), that is the error to report, not the ingest's "input failed"."""
    result: asyncio.Future[Ingested] = asyncio.ensure_future(job.result())
    pending: set[asyncio.Future[Any]] = {result, feeder}
    await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    if feeder.done() and not feeder.cancelled() and feeder.exception() is not None:
        await asyncio.wait({result})  # the pipe carried the failure to the thread
        if not result.cancelled():
            result.exception()
        error = feeder.exception()
        assert error is not None
        raise EngineError(f"failed to download layer: {error}") from error
    return await result


async def _counted(chunks: AsyncIterator[bytes], bar: p.ByteProgress) -> AsyncIterator[bytes]:
    first = True
    async for chunk in chunks:
        if first:
            first = False
            crash_point("pull_mid_download")
        bar.add(len(chunk))
        yield chunk


async def _abandon(m: ImageManager, key: str, writer: ContentWriter | None) -> None:
    with contextlib.suppress(Exception):
        if writer is not None:
            await asyncio.to_thread(writer.abort)
    with contextlib.suppress(Exception):
        await m.discard_snapshot(key)


__all__ = ["DOCKER_IO", "inspect_remote", "pull", "pull_reference", "resolve"]
