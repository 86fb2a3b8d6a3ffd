"""ImageManager: the local image store and the entry point of every image operation.

State lives in the database (``images``, ``layers``, ``tags``, ``digests``,
``layer_sources``); after every commit the manager publishes a frozen ``Catalog`` that
readers use without locks or database round trips (architecture §4). The work of the
bigger operations lives beside it: pull.py, push.py, archive.py (save/load), commit.py;
this module keeps what they share.

Every operation that creates an image follows the same crash-safe order (architecture
§3): unpack each new layer into an ``extract-<random>`` snapshot while its blob is
written to the content store; commit the blob, then the snapshot under its chain id;
write the config blob; then one transaction inserts the layer, image and name rows. A
crash before that transaction leaves ``extract-`` snapshots (the snapshotter's cleanup
removes them), committed layer snapshots that no row names, and blobs that no row
names; ``load()`` sweeps the last two. Crash points (engine/store/crashpoints.py) mark
the steps.

Layers in flight are *leased*: removal and the orphan cleanup leave a leased chain id
alone, so a concurrent ``rmi`` cannot take a layer from under a pull that reuses it, and
an operation that fails removes only the layers nobody else leases or names.

Removal and pruning (dockerd's rules) live in removal.py, a part of this class.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import os
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from engine.config import EngineConfig
from engine.errors import EngineError, InvalidParameter, NotFound
from engine.events import EventBus
from engine.images import catalog as rows
from engine.images.auth import AuthConfig
from engine.images.catalog import (
    ZERO_TIME,
    Catalog,
    ImageView,
    LayerRecord,
    LayerSource,
    NewImage,
    dangling_filter,
    labels_match,
    search_prefix,
    top_down,
)
from engine.images.changes import (
    build_config_from_changes,
    container_config,
    parse_signal,
)
from engine.images.layers import Ingested, chain_ids
from engine.images.platforms import host_arch, parse_platform
from engine.images.progress import ProgressSink
from engine.images.reference import (
    Reference,
    familiar_match,
    parse_any,
    parse_normalized_named,
    repo_tag_reference,
)
from engine.images.registry import Registries
from engine.images.removal import PRUNE_FILTERS, PruneReport, RemovalMixin
from engine.images.timefmt import parse_go_duration, parse_rfc3339, parse_timestamp, rfc3339_nano
from engine.images.unpack import Readable, UnpackResult, run_fed, unpack
from engine.images.urlsource import UrlSource, open_url_source
from engine.layout import Layout
from engine.locks import KeyedLock
from engine.snapshots.base import Snapshotter
from engine.snapshots.overlay import EXTRACT_PREFIX
from engine.store.content import ContentStore, ContentWriter
from engine.store.crashpoints import crash_point
from engine.store.db import Database

if TYPE_CHECKING:
    from engine.images.archive import SaveStream
    from engine.images.commit import CommitSource

log = logging.getLogger(__name__)

# Re-exported: the API and older callers import these from here.
__all__ = [
    "LIST_FILTERS", "PRUNE_FILTERS", "ZERO_TIME", "ImageManager", "ImageView", "LayerRecord",
    "PruneReport",
    "build_config_from_changes", "container_config", "host_arch", "parse_go_duration",
    "parse_platform", "parse_rfc3339", "parse_signal", "parse_timestamp", "rfc3339_nano",
]

T = TypeVar("T")
UsageSource = Callable[[str], list[tuple[str, bool]]]
ImportSource = AsyncIterator[bytes] | Readable
LIST_FILTERS = frozenset({"dangling", "label", "before", "since", "reference", "until"})
DEFAULT_IMPORT_COMMENT = "Imported from -"


@dataclass(frozen=True)
class _ImportPlan:
    ref: Reference | None
    os: str
    architecture: str
    variant: str
    config: dict[str, Any]
    comment: str


@dataclass(frozen=True)
class HistoryEntry:
    id: str  # image id, or "<missing>"
    created: int
    created_by: str
    tags: tuple[str, ...] | None
    size: int
    comment: str


@dataclass(frozen=True)
class ImageUsage:
    """One image for ``/system/df``: its view, shared bytes, containers using it."""

    view: ImageView
    shared_size: int
    containers: int


class ImageManager(RemovalMixin):
    def __init__(
        self,
        layout: Layout,
        db: Database,
        events: EventBus,
        content: ContentStore,
        snapshotter: Snapshotter,
        config: EngineConfig | None = None,
        registries: Registries | None = None,
    ) -> None:
        self._layout = layout
        self._db = db
        self._events = events
        self._content = content
        self._snapshotter = snapshotter
        self._catalog = Catalog()
        self._configs: dict[str, Mapping[str, Any]] = {}
        self._lock = asyncio.Lock()  # one writer of image rows at a time
        self._layer_locks = KeyedLock()  # one committer per chain id
        self._leases: Counter[str] = Counter()
        self._usage: UsageSource = lambda _image_id: []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reapers: set[asyncio.Task[None]] = set()  # removal.py: files of released layers
        self.registries = registries or Registries(
            config.insecure_registries if config else (),
            config.registry_mirrors if config else (),
        )
        self.max_downloads = config.max_concurrent_downloads if config else 3
        self.max_uploads = config.max_concurrent_uploads if config else 5
        self.download_slots = asyncio.Semaphore(self.max_downloads)
        self.upload_slots = asyncio.Semaphore(self.max_uploads)
        # accepted and reloadable like dockerd's; layer downloads do not retry yet
        self.max_download_attempts = config.max_download_attempts if config else 5
        self.transfers: dict[str, Any] = {}  # pull.py: layer downloads in flight, by chain id
        self._fresh_blobs: dict[str, str] = {}  # chain id → blob committed, rows not yet

    def reconfigure(self, config: EngineConfig) -> None:
        """Apply reloaded registry settings. Transfers in flight keep the slots they
        hold; new ones queue on the new limits."""
        self.registries.adopt_settings(
            Registries(config.insecure_registries, config.registry_mirrors)
        )
        if config.max_concurrent_downloads != self.max_downloads:
            self.max_downloads = config.max_concurrent_downloads
            self.download_slots = asyncio.Semaphore(self.max_downloads)
        if config.max_concurrent_uploads != self.max_uploads:
            self.max_uploads = config.max_concurrent_uploads
            self.upload_slots = asyncio.Semaphore(self.max_uploads)
        self.max_download_attempts = config.max_download_attempts

    def set_usage_source(self, fn: UsageSource) -> None:
        """``fn(image id) → [(container id, running)]``, from the container manager."""
        self._usage = fn

    # ------------------------------------------------------------------ parts
    # The operation modules (pull, push, archive, commit) work through these.
    @property
    def catalog(self) -> Catalog:
        return self._catalog

    @property
    def content(self) -> ContentStore:
        return self._content

    @property
    def db(self) -> Database:
        return self._db

    @property
    def events(self) -> EventBus:
        return self._events

    @property
    def snapshotter(self) -> Snapshotter:
        return self._snapshotter

    @property
    def tmp_dir(self) -> Path:
        return self._layout.tmp_dir

    def usage_of(self, image_id: str) -> list[tuple[str, bool]]:
        return self._usage(image_id)

    # ------------------------------------------------------------------ loading
    async def load(self) -> None:
        """Read the rows, then sweep what a crash left (call after the snapshotter's and
        the content store's cleanup, before anything else uses the images)."""
        async with self._lock:
            await self._reload()
            await self._sweep()
        self._reap_in_background()

    async def _reload(self) -> None:
        images, layers, tags, digests = await self._db.transaction(rows.read_all)
        self._catalog = rows.build_catalog(images, layers, tags, digests, self._configs)

    async def _sweep(self) -> None:
        await self._collect_removed_locked()
        used = self._catalog.used_layers()
        orphans = [c for c in self._catalog.layers if c not in used]
        if orphans:
            log.info("images: releasing %d layers no image uses", len(orphans))
            await self._release_layers(top_down(orphans, self._catalog.layers))
        await self._remove_orphan_snapshots()
        referenced = set(self._catalog.images) | set(self._catalog.hidden)
        referenced |= {
            layer.blob_digest for layer in self._catalog.layers.values() if layer.blob_digest
        }
        await self._content.gc(referenced)

    async def _remove_orphan_snapshots(self) -> None:
        """Committed layer snapshots no row names, top first (removing a child makes its
        parent an orphan in turn); leased ones belong to an operation in flight."""
        while True:
            found = [k for k in await self._db.transaction(rows.orphan_layer_snapshots)
                     if not self._leases[k]]
            removed = 0
            for key in found:
                with contextlib.suppress(EngineError):
                    await self._snapshotter.remove(key)
                    removed += 1
                    log.info("images: removed layer snapshot %s that no layer row names", key)
            if not removed:
                return

    async def close(self) -> None:
        """Stop operations in flight (each cleans up after itself) and the client."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.registries.close()

    # ------------------------------------------------------------------ owned work
    async def run_owned(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` in a task the manager owns: a client that goes away does not
        interrupt it half-way (it finishes or cleans up), and ``close`` cancels it."""
        task: asyncio.Task[T] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._forget)
        return await asyncio.shield(task)

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """A background task the manager owns (``close`` cancels and awaits it)."""
        task: asyncio.Task[T] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._forget)
        return task

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a caller that went away must not log it as lost

    # ------------------------------------------------------------------ readers
    def count(self) -> int:
        return len(self._catalog.images)

    def view_by_id(self, image_id: str, include_removed: bool = False) -> ImageView | None:
        catalog = self._catalog
        view = catalog.images.get(image_id)
        if view is None and include_removed:
            view = catalog.hidden.get(image_id)
        return view

    def layer(self, chain_id: str) -> LayerRecord | None:
        return self._catalog.layers.get(chain_id)

    async def get(self, ref: str) -> ImageView:
        return self.resolve(ref)

    def resolve(self, ref: str) -> ImageView:
        """Name[:tag], name@digest, ``sha256:<hex>``, 64 hex, or a unique id prefix."""
        catalog = self._catalog
        parsed = parse_any(ref)
        if isinstance(parsed, str):
            view = catalog.images.get(parsed)
            if view is None:
                raise NotFound(f"No such image: {parsed}")
            return view
        image_id = self.lookup_named(parsed)
        if image_id is not None and image_id in catalog.images:
            return catalog.images[image_id]
        found = search_prefix(ref, catalog.images)
        if found is not None:
            return found
        raise NotFound(f"No such image: {parsed.tag_name_only().familiar()}")

    def lookup_named(self, ref: Reference) -> str | None:
        """The image a tag or digest reference names, if any."""
        catalog = self._catalog
        if ref.digest is not None:
            return catalog.digests.get(str(Reference(ref.domain, ref.path, None, ref.digest)))
        return catalog.tags.get(str(ref.tag_name_only()))

    def tags_of_repository(self, name: Reference) -> list[tuple[Reference, str]]:
        """Every ``repo:tag`` of one repository and its image id (push of all tags)."""
        repo = name.name
        found = []
        for text, image_id in self._catalog.tags.items():
            ref = parse_normalized_named(text)
            if ref.name == repo and ref.tag is not None:
                found.append((ref, image_id))
        return sorted(found, key=lambda item: item[0].tag or "")

    def inspect(self, ref: str) -> ImageView:
        return self.resolve(ref)

    def _bound(self, refs: Sequence[str], pick: Callable[..., float]) -> float | None:
        if not refs:
            return None
        return float(pick(self.resolve(r).created for r in refs))

    def _with_matching_refs(self, view: ImageView, patterns: list[str]) -> ImageView | None:
        refs = self._catalog.refs_of(view.id)
        kept = [r for r in refs if any(familiar_match(p, r) for p in patterns)]
        if not kept:
            return None  # dockerd skips unnamed images when filtering by reference
        return replace(
            view,
            repo_tags=tuple(r.familiar() for r in kept if r.digest is None),
            repo_digests=tuple(r.familiar() for r in kept if r.digest is not None),
        )

    async def lower_dirs(self, image_id: str) -> list[Path]:
        """The image's layer directories, top to bottom (for GraphDriver data)."""
        view = self.view_by_id(image_id, include_removed=True)
        if view is None:
            raise NotFound(f"No such image: {image_id}")
        if view.top_layer is None:
            return []
        mounts = await self._snapshotter.mounts(view.top_layer)
        for m in mounts:
            if m.type == "bind":
                return [Path(m.source)]
            for option in m.options:
                if option.startswith("lowerdir="):
                    return [Path(p) for p in option[len("lowerdir="):].split(":")]
        return []

    def list(
        self, all: bool = False, filters: Mapping[str, Sequence[str]] | None = None
    ) -> builtins.list[ImageView]:
        """Images for ``GET /images/json``, newest first. Without ``all``, untagged
        images that are parents of others (intermediate images) are left out. With a
        ``reference`` filter, repo_tags/repo_digests keep only the matching names."""
        filters = filters or {}
        unknown = set(filters) - LIST_FILTERS
        if unknown:
            raise InvalidParameter(f"invalid filter '{sorted(unknown)[0]}'")
        dangling = dangling_filter(filters.get("dangling") or [])
        now = time.time()
        before = self._bound(filters.get("before") or [], min)
        since = self._bound(filters.get("since") or [], max)
        until = [parse_timestamp(v, now) for v in filters.get("until") or []]
        labels = list(filters.get("label") or [])
        patterns = list(filters.get("reference") or [])
        catalog = self._catalog
        out = []
        for view in catalog.images.values():
            if before is not None and view.created >= before:
                continue
            if since is not None and view.created <= since:
                continue
            if until and not any(view.created <= u for u in until):
                continue
            if labels and not labels_match(view.labels, labels):
                continue
            if not all and view.dangling and catalog.children.get(view.id):
                continue
            shown = self._with_matching_refs(view, patterns) if patterns else view
            if shown is None:
                continue
            if dangling is True and not shown.dangling:
                continue
            if dangling is False and shown.dangling:
                continue
            out.append(shown)
        out.sort(key=lambda v: (v.created, v.id), reverse=True)
        return out

    def history(self, ref: str) -> builtins.list[HistoryEntry]:
        """``docker history``, newest first, as moby builds it: each history entry that
        made a layer gets that layer's size; the image's id and tags go on the newest
        entry, its parent's on the next, and so on while parents are known here; the
        rest are ``<missing>``."""
        view = self.resolve(ref)
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
            items.append({"created": int(created), "created_by": _text(entry.get("created_by")),
                          "size": size, "comment": _text(entry.get("comment"))})
        items.reverse()
        out: builtins.list[HistoryEntry] = []
        current: ImageView | None = view
        for item in items:
            image_id, tags = "<missing>", None
            if current is not None:
                image_id = current.id
                tags = tuple(current.repo_tags) or None
                current = self.view_by_id(current.parent) if current.parent else None
            out.append(HistoryEntry(image_id, item["created"], item["created_by"], tags,
                                    item["size"], item["comment"]))
        return out

    def disk_usage(self) -> tuple[builtins.list[ImageUsage], int]:
        """Images with their shared sizes and container counts, and the bytes of all
        layers (``/system/df``: ``Images`` and ``LayersSize``)."""
        catalog = self._catalog
        users: Counter[str] = Counter()
        for view in catalog.images.values():
            users.update(set(view.layers))
        out = []
        for view in catalog.images.values():
            shared = sum(catalog.layers[c].size for c in view.layers
                         if c in catalog.layers and users[c] > 1)
            out.append(ImageUsage(view, shared, len(self._usage(view.id))))
        total = sum(layer.size for layer in catalog.layers.values())
        return out, total

    # ------------------------------------------------------------------ leases
    @contextlib.asynccontextmanager
    async def lease(self, chain_ids_: Sequence[str]) -> AsyncIterator[None]:
        """Hold these layers for an operation in flight. On the way out, layers that
        this lease alone kept and that no row names are removed (a failed or abandoned
        operation leaves nothing behind)."""
        held = list(dict.fromkeys(chain_ids_))
        self._leases.update(held)
        try:
            yield
        finally:
            self._leases.subtract(held)
            for key in held:
                if self._leases[key] <= 0:
                    del self._leases[key]
            await asyncio.shield(self._drop_unnamed(reversed(held)))

    async def _drop_unnamed(self, chain_ids_: Any) -> None:
        for chain_id in chain_ids_:
            if self._leases[chain_id]:
                continue
            if chain_id in self._catalog.layers:
                self._fresh_blobs.pop(chain_id, None)
                continue
            async with self._layer_locks.hold(chain_id):
                if self._leases[chain_id] or chain_id in self._catalog.layers:
                    continue
                if await self._snapshot_exists(chain_id):
                    with contextlib.suppress(EngineError):
                        await self._snapshotter.remove(chain_id)
                blob = self._fresh_blobs.pop(chain_id, None)
                if blob and not any(x.blob_digest == blob
                                    for x in self._catalog.layers.values()):
                    await self._content.delete(blob)

    # ------------------------------------------------------------------ layers
    async def new_extract_snapshot(self) -> tuple[str, Path]:
        """A fresh parentless ``extract-`` snapshot and its directory to unpack into."""
        key = EXTRACT_PREFIX + secrets.token_hex(8)
        await self._snapshotter.prepare(key, None)
        return key, self._snapshotter.writable_path(key)

    async def discard_snapshot(self, key: str) -> None:
        with contextlib.suppress(NotFound):
            await self._snapshotter.remove(key)

    async def commit_layer(
        self,
        key: str,
        ingested: Ingested,
        parent: str | None,
        writer: ContentWriter | None,
        crash_after_blob: str = "",
        blob_digest: str | None = None,
    ) -> LayerRecord:
        """Name the layer unpacked in snapshot ``key`` (parentless) as the chain id of
        ``ingested`` on ``parent``, committing ``writer``'s blob first. When the layer is
        already there, ``key`` and the blob are dropped and the existing record wins.
        The caller leases the chain id."""
        chain_id = chain_ids([parent, ingested.diff_id])[1] if parent else ingested.diff_id
        async with self._layer_locks.hold(chain_id):
            existing = self._catalog.layers.get(chain_id)
            if existing is not None:
                await self._drop(key, writer)
                return existing
            blob: str | None = blob_digest
            if writer is not None:
                blob = await asyncio.to_thread(writer.commit)
                self._fresh_blobs[chain_id] = blob
                if crash_after_blob:
                    crash_point(crash_after_blob)
            record = LayerRecord(
                chain_id=chain_id, diff_id=ingested.diff_id, parent=parent,
                snapshot_key=chain_id, size=ingested.size, blob_digest=blob,
                tar_size=ingested.tar_size,
                compression=ingested.compression if blob is not None else None,
            )
            if await self._snapshot_exists(chain_id):
                # Committed by an earlier operation that crashed or failed before its
                # rows: same content under the same name, so adopt it.
                await self.discard_snapshot(key)
                return record
            if parent is None:
                await self._snapshotter.commit(chain_id, key)
            else:
                await self._rebase_and_commit(key, parent, chain_id)
            return record

    async def _drop(self, key: str, writer: ContentWriter | None) -> None:
        if writer is not None:
            await asyncio.to_thread(writer.abort)
        await self.discard_snapshot(key)

    async def _rebase_and_commit(self, key: str, parent: str, chain_id: str) -> None:
        """Layers are unpacked without a parent, so that they can be unpacked while
        their parents still download; the directory is then moved into a snapshot
        prepared on the right parent. Unpacking never reads the parent (whiteouts and
        opaque markers are written as such), so the content is the same either way."""
        target = EXTRACT_PREFIX + secrets.token_hex(8)
        await self._snapshotter.prepare(target, parent)
        try:
            source_dir = self._snapshotter.writable_path(key)
            target_dir = self._snapshotter.writable_path(target)
            await asyncio.to_thread(_replace_dir, source_dir, target_dir)
            await self._snapshotter.commit(chain_id, target)
        except BaseException:
            await self.discard_snapshot(target)
            raise
        await self.discard_snapshot(key)

    async def _snapshot_exists(self, key: str) -> bool:
        try:
            await self._snapshotter.stat(key)
        except NotFound:
            return False
        return True

    # ------------------------------------------------------------------ registering
    async def write_config(self, data: bytes, expected: str | None = None) -> str:
        return await self._content.write_blob(data, expected)

    async def register(
        self,
        layers: Sequence[LayerRecord],
        images: Sequence[NewImage],
        sources: Sequence[LayerSource] = (),
        action: str = "",
        before_commit: str = "",
    ) -> dict[str, str]:
        """One transaction: the new layer rows, the images, their names, and what the
        registry holds. Returns ``{name: image id it named before ("" if none)}`` for
        every tag and digest name. Emits ``tag`` events (and ``action`` per image)."""
        async with self._lock:
            now = time.time()
            if before_commit:
                crash_point(before_commit)

            def write(conn: Any) -> dict[str, str]:
                rows.insert_layers(conn, layers, now)
                moved: dict[str, str] = {}
                for image in images:
                    moved.update(rows.insert_image(conn, image, now))
                rows.insert_sources(conn, sources)
                return moved

            moved = await self._db.transaction(write)
            await self._reload()
        for image in images:
            for ref in image.tags:
                self._emit(image.image_id, "tag", ref.familiar())
            if action:
                self._emit(image.image_id, action, image.image_id)
        return moved

    async def add_sources(self, sources: Sequence[LayerSource]) -> None:
        if sources:
            await self._db.transaction(lambda conn: rows.insert_sources(conn, sources))

    async def add_digest(self, ref: Reference, image_id: str) -> None:
        """Record ``repo@digest`` for an image (after a push), shown in RepoDigests."""
        async with self._lock:
            await self._db.transaction(
                lambda conn: conn.execute(
                    "INSERT INTO digests (ref, image_id) VALUES (?, ?) "
                    "ON CONFLICT(ref) DO UPDATE SET image_id = excluded.image_id",
                    (str(ref), image_id),
                )
            )
            await self._reload()

    async def sources_for(self, diff_id: str, registry: str) -> builtins.list[LayerSource]:
        return await self._db.transaction(
            lambda conn: rows.sources_of(conn, diff_id, registry)
        )

    # ------------------------------------------------------------------ import
    async def open_import_url(self, source: str) -> UrlSource:
        """The GET of ``docker import <url>`` (errors are dockerd's, see urlsource.py)."""
        return await open_url_source(source)

    async def import_image(
        self,
        stream: ImportSource,
        repo: str | None = None,
        tag: str | None = None,
        changes: Sequence[str] = (),
        message: str = "",
        platform: str | None = None,
    ) -> str:
        """``docker import``: one layer from a tar (plain or compressed) → image id.

        Everything that can be refused is checked before the first byte is read. The
        work runs in a task of its own, so a client that goes away mid-import never
        leaves a half-done import behind: the task finishes or cleans up."""
        ref = repo_tag_reference(repo, tag) if repo else None
        os_name, arch, variant = parse_platform(platform)
        config = container_config(build_config_from_changes(changes))
        plan = _ImportPlan(ref, os_name, arch, variant, config,
                           message or DEFAULT_IMPORT_COMMENT)
        return await self.run_owned(self._import(stream, plan))

    async def _import(self, stream: ImportSource, plan: _ImportPlan) -> str:
        key, root = await self.new_extract_snapshot()
        writer: ContentWriter | None = None
        try:
            writer = await asyncio.to_thread(
                self._content.open_writer, ContentStore.new_ref("layer")
            )
            result = await self._unpack(stream, root, writer)
            crash_point("import_after_unpack")
        except BaseException:
            await self._drop(key, writer)
            raise
        ingested = Ingested(
            blob_digest=result.diff_id, blob_size=result.tar_size, compression="none",
            diff_id=result.diff_id, tar_size=result.tar_size, size=result.size,
            entries=result.entries,
        )
        chain_id = result.diff_id  # one layer without a parent: chain id == diff id
        async with self.lease([chain_id]):
            try:
                layer = await self.commit_layer(key, ingested, None, writer,
                                                crash_after_blob="import_after_blob")
            except BaseException:
                await self._drop(key, writer)
                raise
            crash_point("import_after_layer_commit")
            data = self._import_config(plan, result.diff_id)
            image_id = await self.write_config(data)
            crash_point("import_after_config_write")
            image = NewImage(image_id, data, chain_id, layer.size,
                             tags=[plan.ref] if plan.ref else [])
            await self.register([layer], [image], action="import",
                                before_commit="import_before_commit")
            crash_point("import_after_commit")
        return image_id

    async def _unpack(
        self, stream: ImportSource, root: Path, writer: ContentWriter
    ) -> UnpackResult:
        loop = asyncio.get_running_loop()
        if not hasattr(stream, "__aiter__"):
            reader: Readable = stream
            work = loop.run_in_executor(None, unpack, reader, root, writer)
            try:
                return await work
            except asyncio.CancelledError:
                await asyncio.wait({work})  # the worker must leave root before cleanup
                raise
        return await run_fed(stream, unpack, root, writer,  # type: ignore[arg-type]
                             name="wharfd-import", aborted="import aborted")

    @staticmethod
    def _import_config(plan: _ImportPlan, diff_id: str) -> bytes:
        created = rfc3339_nano(time.time_ns())
        image: dict[str, Any] = {"comment": plan.comment, "created": created,
                                 "config": plan.config, "architecture": plan.architecture}
        if plan.variant:
            image["variant"] = plan.variant
        image["os"] = plan.os
        image["rootfs"] = {"type": "layers", "diff_ids": [diff_id]}
        # moby's History.CreatedBy is omitempty: an import has no "created_by".
        image["history"] = [{"created": created, "comment": plan.comment}]
        return json.dumps(image, separators=(",", ":"), ensure_ascii=False).encode()

    # ------------------------------------------------------------------ distribution
    async def pull(
        self, image: str, tag: str | None, platform: str | None, auth: AuthConfig,
        progress: ProgressSink,
    ) -> None:
        """``POST /images/create?fromImage=``: see engine/images/pull.py."""
        from engine.images import pull

        await self.run_owned(pull.pull(self, image, tag, platform, auth, progress))

    async def push(
        self, name: str, tag: str | None, auth: AuthConfig, progress: ProgressSink
    ) -> None:
        """``POST /images/{name}/push``: see engine/images/push.py."""
        from engine.images import push

        await self.run_owned(push.push(self, name, tag, auth, progress))

    async def login(self, auth: AuthConfig) -> str:
        """``POST /auth``; returns the identity token (often empty)."""
        return await self.registries.login(auth)

    async def search(self, term: str, limit: int) -> builtins.list[dict[str, Any]]:
        return await self.registries.search(term, limit)

    async def distribution_inspect(self, name: str, auth: AuthConfig) -> dict[str, Any]:
        """``GET /distribution/{name}/json``: the manifest descriptor and platforms."""
        from engine.images import pull

        return await pull.inspect_remote(self, name, auth)

    def save(self, names: Sequence[str]) -> SaveStream:
        """``GET /images/get``: see engine/images/archive.py (names resolve here, so a
        missing image is a 404 before any byte is sent)."""
        from engine.images import archive

        return archive.SaveStream(self, names)

    async def load_archive(
        self, stream: AsyncIterator[bytes], quiet: bool, progress: ProgressSink
    ) -> None:
        """``POST /images/load``: see engine/images/archive.py."""
        from engine.images import archive

        await self.run_owned(archive.load(self, stream, quiet, progress))

    async def commit(self, source: CommitSource, **options: Any) -> str:
        """``POST /commit``: see engine/images/commit.py."""
        from engine.images import commit

        with source.actions.time("commit"):
            return await commit.commit(self, source, **options)

    # ------------------------------------------------------------------ tag
    async def tag(self, ref: str, repo: str, tag: str | None) -> str:
        """``POST /images/{ref}/tag``: point ``repo:tag`` at the image; returns the
        familiar new name."""
        new_ref = repo_tag_reference(repo, tag)
        if new_ref.familiar_name() == "sha256":
            raise InvalidParameter(
                "refusing to create an ambiguous tag using digest algorithm as name"
            )
        view = self.resolve(ref)
        async with self._lock:
            if view.id not in self._catalog.images:
                raise NotFound(f"No such image: {ref}")
            now = time.time()
            await self._db.transaction(
                lambda conn: rows.insert_tag(conn, str(new_ref), view.id, now)
            )
            await self._reload()
        self._emit(view.id, "tag", new_ref.familiar())
        return new_ref.familiar()

    # ------------------------------------------------------------------ events
    def _emit(self, image_id: str, action: str, name: str) -> None:
        view = self.view_by_id(image_id, include_removed=True)
        attributes = dict(view.labels) if view is not None else {}
        attributes["name"] = name
        self._events.emit("image", action, image_id, attributes)

    def emit(self, image_id: str, action: str, name: str) -> None:
        self._emit(image_id, action, name)


def _replace_dir(source: Path, target: Path) -> None:
    """Put directory ``source`` where the empty directory ``target`` is (same fs)."""
    os.rmdir(target)
    os.rename(source, target)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""
