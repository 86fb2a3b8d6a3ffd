"""Image removal and pruning with dockerd's rules (daemon/images/image_delete.go,
image_prune.go), as a part of ImageManager.

A name is untagged; the image goes when its last reference goes and no container needs
it (running containers and child images are hard conflicts, stopped containers and
other names soft ones that ``force`` overrides); an untagged parent goes with its last
child unless ``noprune``; layers (snapshot + blob) are released when no image uses
them and no operation in flight leases them. A released layer's snapshot is only
marked (rule 3's first step, one statement) before the reply; its files, often most of
the time an ``rmi`` takes, are deleted afterwards by a task the manager owns
(``_reap_in_background``), and ``cleanup`` at the next start finishes what a crash
interrupted. An image deleted with ``force`` while a
stopped container still names it keeps a hidden row (``removed = 1``) because the
container row refers to it; ``collect_removed()`` purges such rows once no container
does.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from engine.errors import Conflict, EngineError, InvalidParameter, NotFound
from engine.events import EventBus
from engine.images import catalog as rows
from engine.images.catalog import (
    Catalog,
    ImageView,
    dangling_filter,
    labels_exclude,
    labels_match,
)
from engine.images.reference import Reference, parse_normalized_named
from engine.images.timefmt import parse_timestamp
from engine.snapshots.base import Snapshotter
from engine.store.content import ContentStore
from engine.store.crashpoints import crash_point
from engine.store.db import Database

log = logging.getLogger(__name__)

PRUNE_FILTERS = frozenset({"dangling", "label", "label!", "until"})
UsageSource = Callable[[str], list[tuple[str, bool]]]
T = TypeVar("T")


@dataclass(frozen=True)
class PruneReport:
    deleted: list[dict[str, str]]
    space_reclaimed: int


class RemovalMixin:
    """The removal half of ImageManager (which provides these attributes)."""

    _catalog: Catalog
    _db: Database
    _events: EventBus
    _content: ContentStore
    _snapshotter: Snapshotter
    _lock: asyncio.Lock
    _leases: Counter[str]
    _usage: UsageSource
    _reapers: set[asyncio.Task[None]]

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        raise NotImplementedError

    async def _reload(self) -> None:
        raise NotImplementedError

    def resolve(self, ref: str) -> ImageView:
        raise NotImplementedError

    def _emit(self, image_id: str, action: str, name: str) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ remove
    async def remove(self, ref: str, force: bool = False, noprune: bool = False) -> builtins.list[
        dict[str, str]
    ]:
        """``DELETE /images/{ref}`` with dockerd's untag/delete rules; returns the
        ``[{"Untagged": …}, {"Deleted": …}]`` records."""
        view = self.resolve(ref)
        async with self._lock:
            catalog = self._catalog
            if view.id not in catalog.images:
                raise NotFound(f"No such image: {ref}")
            records = await self._remove_locked(catalog, view, ref, force, not noprune)
        # Last, with no await after it: the reply goes out before the files are deleted.
        self._reap_in_background()
        return records

    def _reap_in_background(self) -> None:
        """Delete the files of released layers' snapshots in a task the manager owns
        (``close`` awaits it; a crash leaves marked rows that ``cleanup`` finishes)."""
        reaper = self.spawn(self._reap_snapshots())
        self._reapers.add(reaper)
        reaper.add_done_callback(self._reapers.discard)

    async def released_files_deleted(self) -> None:
        """Wait until the files of every layer released so far are gone (tests, tools)."""
        while self._reapers:
            reapers = builtins.list(self._reapers)
            self._reapers.difference_update(reapers)
            await asyncio.gather(*reapers, return_exceptions=True)

    async def _reap_snapshots(self) -> None:
        try:
            removed = await self._snapshotter.finish_removals()
        except EngineError as exc:
            log.warning("images: deleting released layers' files failed (retried at the "
                        "next start): %s", exc)
            return
        if removed:
            log.debug("images: deleted the files of %d released layer(s)", len(removed))

    async def _remove_locked(
        self, catalog: Catalog, view: ImageView, ref: str, force: bool, prune: bool
    ) -> builtins.list[dict[str, str]]:
        image_id = view.id
        repo_refs = catalog.refs_of(image_id)
        records: builtins.list[dict[str, str]] = []
        quiet = False
        if not _is_image_id_prefix(image_id, ref):
            if not force and _is_single_reference(repo_refs):
                users = self._usage(image_id)
                if users:
                    raise Conflict(
                        f'conflict: unable to remove repository reference "{ref}" (must force) '
                        f"- container {users[0][0][:12]} is using its referenced image "
                        f"{view.short_id}"
                    )
            named = parse_normalized_named(ref).tag_name_only()
            doomed = [named, *_digest_refs_to_drop(named, repo_refs)]
            remaining = [r for r in repo_refs if str(r) not in {str(d) for d in doomed}]
            await self._untag(image_id, doomed, records)
            if remaining:
                return records
            quiet = True
        elif _is_single_reference(repo_refs):
            # An id given, with one name at most: the name goes with the image, if the
            # image may go (stopped containers only block without force).
            self._check_conflict(view, running=True, references=False, stopped=not force)
            await self._untag(image_id, repo_refs, records)
        await self._delete_helper(view, records, force, prune, quiet)
        return records

    async def _delete_helper(
        self, view: ImageView, records: builtins.list[dict[str, str]], force: bool,
        prune: bool, quiet: bool,
    ) -> None:
        """dockerd's imageDeleteHelper: delete the image unless a conflict says no (a
        quiet call gives up silently on a named or used image), then prune its untagged
        parent the same way."""
        try:
            self._check_conflict(view, running=True, references=not force, stopped=not force)
        except _DeleteConflict as conflict:
            if quiet and (not self._is_dangling(view.id) or conflict.used):
                return  # the untag was the whole job
            raise
        parent = view.parent
        await self._untag(view.id, self._catalog.refs_of(view.id), records)
        records += await self._delete_image(view)
        if not prune or not parent:
            return
        parent_view = self._catalog.images.get(parent)
        if parent_view is not None:
            await self._delete_helper(parent_view, records, False, True, True)

    def _is_dangling(self, image_id: str) -> bool:
        return not self._catalog.refs_of(image_id)

    def _check_conflict(
        self, view: ImageView, running: bool, references: bool, stopped: bool
    ) -> None:
        """dockerd's checkImageDeleteConflict, in its order: child images and running
        containers (hard), other references, stopped containers (soft)."""
        if running and self._catalog.children.get(view.id):
            raise _DeleteConflict(view.short_id, True, False,
                                  "image has dependent child images")
        users = self._usage(view.id)
        if running:
            for cid, is_running in users:
                if is_running:
                    raise _DeleteConflict(
                        view.short_id, True, True,
                        f"image is being used by running container {cid[:12]}",
                    )
        if references and self._catalog.refs_of(view.id):
            raise _DeleteConflict(
                view.short_id, False, False, "image is referenced in multiple repositories"
            )
        if stopped:
            for cid, is_running in users:
                if not is_running:
                    raise _DeleteConflict(
                        view.short_id, False, True,
                        f"image is being used by stopped container {cid[:12]}",
                    )

    async def _untag(
        self, image_id: str, refs: Sequence[Reference], records: builtins.list[dict[str, str]]
    ) -> None:
        if not refs:
            return
        names = [str(r) for r in refs]
        await self._db.transaction(lambda conn: rows.delete_refs(conn, names))
        for r in refs:
            records.append({"Untagged": r.familiar()})
            self._emit(image_id, "untag", image_id)
        await self._reload()

    async def _delete_image(self, view: ImageView) -> builtins.list[dict[str, str]]:
        image_id = view.id
        hidden = await self._db.transaction(
            lambda conn: rows.delete_image_rows(conn, image_id)
        )
        crash_point("remove_after_rows")
        labels = view.labels
        await self._reload()
        self._events.emit("image", "delete", image_id, {**labels, "name": image_id})
        records = [{"Deleted": image_id}]
        if hidden:
            return records  # a container row still names it: keep config and layers
        await self._content.delete(image_id)
        released = await self._release_layers(list(reversed(view.layers)))
        records += [{"Deleted": chain_id} for chain_id in released]
        return records

    async def _release_layers(self, top_down_ids: Sequence[str]) -> builtins.list[str]:
        """Drop layers (rows, snapshots, blobs) that no image uses, top first; leased
        layers belong to an operation in flight and stay."""
        released = []
        for chain_id in top_down_ids:
            layer = self._catalog.layers.get(chain_id)
            if layer is None or chain_id in self._catalog.used_layers():
                continue
            if self._leases[chain_id]:
                continue
            if any(other.parent == chain_id for other in self._catalog.layers.values()):
                continue
            await self._db.transaction(
                functools.partial(rows.delete_layer_row, chain_id=chain_id)
            )
            crash_point("remove_after_layer_row")
            await self._reload()
            try:
                await self._snapshotter.mark_removed(layer.snapshot_key)
            except NotFound:
                pass
            except EngineError as exc:
                # Still in use (a snapshot depends on it): the start-up sweep retries.
                log.warning("images: layer %s kept for now: %s", chain_id, exc)
                continue
            blob = layer.blob_digest
            if blob and not any(x.blob_digest == blob for x in self._catalog.layers.values()):
                await self._content.delete(blob)
            await self._db.transaction(
                functools.partial(rows.forget_sources, diff_ids=[layer.diff_id])
            )
            released.append(chain_id)
        return released

    async def collect_removed(self) -> builtins.list[str]:
        """Purge images deleted while containers named them, once none does (the
        container manager may call this after removing a container)."""
        async with self._lock:
            purged = await self._collect_removed_locked()
        self._reap_in_background()
        return purged

    async def _collect_removed_locked(self) -> builtins.list[str]:
        purged = []
        for view in builtins.list(self._catalog.hidden.values()):
            gone = await self._db.transaction(
                functools.partial(rows.purge_hidden, image_id=view.id)
            )
            if not gone:
                continue
            await self._reload()
            await self._content.delete(view.id)
            await self._release_layers(builtins.list(reversed(view.layers)))
            purged.append(view.id)
        return purged

    # ------------------------------------------------------------------ prune
    async def prune(self, filters: Mapping[str, Sequence[str]]) -> PruneReport:
        """``POST /images/prune`` (dockerd's ImagesPrune): dangling top-level images by
        default, every unused image with ``dangling=false``; ``until`` and ``label``
        (``label!``) filters. Images used by any container stay."""
        unknown = set(filters) - PRUNE_FILTERS
        if unknown:
            raise InvalidParameter(f"invalid filter '{sorted(unknown)[0]}'")
        dangling_values = builtins.list(filters.get("dangling") or [])
        dangling_only = dangling_filter(dangling_values) is not False
        now = time.time()
        until = [parse_timestamp(v, now) for v in filters.get("until") or []]
        wanted = builtins.list(filters.get("label") or [])
        unwanted = builtins.list(filters.get("label!") or [])
        layer_sizes = {c: layer.size for c, layer in self._catalog.layers.items()}
        deleted: builtins.list[dict[str, str]] = []
        async with self._lock:
            for view in builtins.list(self._catalog.images.values()):
                catalog = self._catalog
                if view.id not in catalog.images:
                    continue  # went with an earlier one (a pruned parent)
                children = catalog.children.get(view.id)
                if dangling_only and children:
                    continue
                if not catalog.refs_of(view.id) and children:
                    continue
                if until and not any(view.created <= u for u in until):
                    continue
                if not labels_match(view.labels, wanted):
                    continue
                if unwanted and not labels_exclude(view.labels, unwanted):
                    continue
                if self._usage(view.id):
                    continue
                deleted += await self._prune_one(view, dangling_only)
        self._reap_in_background()
        reclaimed = sum(layer_sizes.get(d["Deleted"], 0) for d in deleted if "Deleted" in d)
        return PruneReport(deleted, reclaimed)

    async def _prune_one(
        self, view: ImageView, dangling_only: bool
    ) -> builtins.list[dict[str, str]]:
        refs = self._catalog.refs_of(view.id)
        records: builtins.list[dict[str, str]] = []
        try:
            if refs:
                if dangling_only and any(r.digest is None for r in refs):
                    return []
                for ref in refs:
                    current = self._catalog.images.get(view.id)
                    if current is None:
                        break
                    records += await self._remove_locked(self._catalog, current, str(ref),
                                                         False, True)
            else:
                records += await self._remove_locked(self._catalog, view, view.id, False,
                                                     True)
        except Conflict as exc:
            log.debug("images: prune skipped %s: %s", view.short_id, exc)
        return records


# =========================================================================== rm rules
class _DeleteConflict(Conflict):
    def __init__(self, short_id: str, hard: bool, used: bool, message: str) -> None:
        how = "cannot be forced" if hard else "must be forced"
        super().__init__(f"conflict: unable to delete {short_id} ({how}) - {message}")
        self.hard = hard
        self.used = used


def _is_image_id_prefix(image_id: str, candidate: str) -> bool:
    return image_id.startswith(candidate) or image_id.removeprefix("sha256:").startswith(
        candidate
    )


def _is_single_reference(refs: Sequence[Reference]) -> bool:
    """All references in one repository, with at most one tag (dockerd's rule)."""
    if len(refs) <= 1:
        return len(refs) == 1
    single: Reference | None = None
    canonical: set[str] = set()
    for r in refs:
        if r.digest is not None:
            canonical.add(r.name)
        elif single is None:
            single = r
        else:
            return False
    if single is None:
        single = refs[0]
    return len(canonical) == 1 and single.name in canonical


def _digest_refs_to_drop(removed: Reference, refs: Sequence[Reference]) -> builtins.list[
    Reference
]:
    """Untagging the last tag of a repository also drops that repository's digests."""
    if removed.digest is not None:
        return []
    for r in refs:
        if r.digest is None and r.name == removed.name and str(r) != str(removed):
            return []
    return [r for r in refs if r.digest is not None and r.name == removed.name]
