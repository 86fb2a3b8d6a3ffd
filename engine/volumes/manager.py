"""VolumeManager: local volumes and the mounts of containers.

Volumes (``docker volume create/ls/inspect/rm/prune``): one ``volumes`` row per volume,
its data in ``volumes/<name>/_data``. Readers use frozen ``VolumeView``s published after
each commit; writers take the volume's lock (same-name creates are idempotent, L4).

Containers (``docker run -v/--mount/--tmpfs/--volumes-from``, image ``VOLUME``): the
container manager makes these calls (docs/volumes.md):

  create  ``create_container_mounts``  plan + validate, create volumes, reference them
  start   ``mount_container``          mount devices, populate, the OCI ``mounts``
  stop    ``unmount_container``        unmount devices nobody else needs
  remove  ``release_container``        drop the references (``rm -v``: anonymous volumes)
  restore ``forget_containers_except`` references of containers that never got a row
  inspect ``inspect_mounts``           the ``Mounts`` list

A reference is a ``volume_refs`` row (one per volume mount point), so "in use" (409 on
``volume rm``) holds for created containers and across restarts.

Crash safety (architecture §3): create builds the directory under tmp/, renames it into
volumes/, then commits the row; remove marks the row ``removing``, renames the directory
away and deletes it, then deletes the row; ``load()`` finishes marked removals and sweeps
directories without a row (empty ones are removed, ones holding data are adopted: user
data is never deleted by a sweep). Crash points (engine/store/crashpoints.py):

  volume_create_after_dir     directory renamed into volumes/, no row yet
  volume_remove_marked        row marked removing, files still there
  volume_remove_after_files   files gone, row still there (marked)
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import os
import re
import sqlite3
import time
from collections.abc import Callable, Collection, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from engine.errors import Conflict, EngineError, InvalidParameter, NotFound, SystemError_
from engine.events import EventBus
from engine.ids import new_id
from engine.layout import Layout
from engine.locks import KeyedLock
from engine.store.crashpoints import crash_point
from engine.store.db import Database
from engine.volumes import copyup, local, subpath
from engine.volumes.mounts import (
    MountPlan,
    inspect_mount,
    oci_mount,
    parse_volumes_from,
    plan_mounts,
    plans_from_json,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
LIST_FILTERS = frozenset({"dangling", "name", "driver", "label"})
PRUNE_FILTERS = frozenset({"label", "label!", "all"})
_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


# =========================================================================== views
@dataclass(frozen=True)
class VolumeView:
    """One volume as readers see it."""

    name: str
    driver: str
    mountpoint: Path
    created: float
    labels: Mapping[str, str]
    options: Mapping[str, str] | None  # the driver options as given (None: none given)

    @property
    def anonymous(self) -> bool:
        return local.ANONYMOUS_LABEL in self.labels

    @property
    def created_text(self) -> str:
        """``CreatedAt``: RFC 3339 in seconds, as dockerd formats it."""
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created))

    @property
    def needs_mount(self) -> bool:
        return local.needs_mount(self.options)


@dataclass(frozen=True)
class VolumeUsage:
    size: int  # bytes; -1 when it could not be measured
    ref_count: int


@dataclass
class _Ref:
    """One volume mount point of one container (a ``volume_refs`` row)."""

    volume: str
    active: bool = False
    populated: bool = False


@dataclass
class _ContainerMounts:
    plans: tuple[MountPlan, ...] = ()
    refs: dict[str, _Ref] = field(default_factory=dict)  # by destination


ResolveContainer = Callable[[str], str]


# =========================================================================== helpers
def _no_such_volume(name: str) -> NotFound:
    return NotFound(f"get {name}: no such volume")


def _labels_match(labels: Mapping[str, str], wanted: Sequence[str]) -> bool:
    """moby's ``MatchKVList``: every ``key`` or ``key=value`` must be there."""
    if not wanted:
        return True
    if not labels:
        return False
    for want in wanted:
        key, sep, value = want.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True


def _name_matches(name: str, patterns: Sequence[str]) -> bool:
    """moby matches ``name`` as an unanchored (RE2) regular expression. Python's ``re`` can
    backtrack for exponential time on a hostile pattern, and this runs on the event loop,
    so we honour the forms people use: a substring, with ``^`` and ``$`` anchors."""
    for pattern in patterns:
        start = pattern.startswith("^")
        end = pattern.endswith("$") and not pattern.endswith("\\$")
        core = pattern[1 if start else 0:len(pattern) - 1 if end else len(pattern)]
        regex = ("^" if start else "") + re.escape(core) + ("$" if end else "")
        if re.search(regex, name):
            return True
    return False


def _dangling_value(values: Sequence[str]) -> bool | None:
    if not values:
        return None
    for value in values:
        if value.lower() == "true" or value == "1":
            return True
        if value.lower() == "false" or value == "0":
            return False
        break
    raise InvalidParameter(f"invalid filter 'dangling=[{' '.join(values)}]'")


def _check_filters(filters: Mapping[str, Sequence[str]], allowed: frozenset[str]) -> None:
    for key in filters:
        if key not in allowed:
            raise InvalidParameter(f"invalid filter '{key}'")


def _prune_all(values: Sequence[str]) -> bool:
    if len(values) > 1:
        raise InvalidParameter(
            f"invalid filter 'all=[{' '.join(values)}]': only one value is expected"
        )
    if not values:
        return False
    if values[0] in _GO_TRUE:
        return True
    if values[0] in _GO_FALSE:
        return False
    raise InvalidParameter(
        f"invalid filter 'all': strconv.ParseBool: parsing {local.go_quote(values[0])}: "
        "invalid syntax"
    )


def _read_all(
    conn: sqlite3.Connection,
) -> tuple[list[sqlite3.Row], list[sqlite3.Row], list[sqlite3.Row]]:
    return (
        conn.execute("SELECT * FROM volumes").fetchall(),
        conn.execute("SELECT * FROM volume_refs").fetchall(),
        conn.execute("SELECT * FROM container_mounts").fetchall(),
    )


# =========================================================================== the manager
class VolumeManager:
    def __init__(self, layout: Layout, db: Database, events: EventBus) -> None:
        self._layout = layout
        self._db = db
        self._events = events
        self._volumes: Mapping[str, VolumeView] = {}
        self._containers: dict[str, _ContainerMounts] = {}
        self._users: dict[str, frozenset[str]] = {}  # volume → container ids
        self._locks = KeyedLock()  # per volume name (lock order: container → volume)
        self._pruning = False
        self._tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ loading
    async def load(self) -> None:
        """Read the rows, finish removals a crash interrupted, sweep directories no row
        names. Call once at start, before anything uses volumes."""
        volume_rows, ref_rows, mount_rows = await self._db.transaction(_read_all)
        referenced = {row["volume"] for row in ref_rows}
        views: dict[str, VolumeView] = {}
        for row in volume_rows:
            view = self._view_of(row)
            if row["removing"]:
                if row["name"] in referenced:
                    # Removal is refused while referenced, so this is not ours: keep it.
                    log.error("volume %s was being removed but is referenced; kept", view.name)
                    await self._db.execute(
                        "UPDATE volumes SET removing = 0 WHERE name = ?", (view.name,)
                    )
                else:
                    await self._finish_removal(view)
                    continue
            views[view.name] = view
        for row in mount_rows:
            plans = plans_from_json(json.loads(row["plans"]))
            self._containers[row["container_id"]] = _ContainerMounts(plans=plans)
        for row in ref_rows:
            mounts = self._containers.setdefault(row["container_id"], _ContainerMounts())
            mounts.refs[row["destination"]] = _Ref(
                row["volume"], bool(row["active"]), bool(row["populated"])
            )
        self._volumes = views
        self._reindex()
        await self._sweep_dirs()

    def _view_of(self, row: sqlite3.Row) -> VolumeView:
        options = json.loads(row["options"]) if row["options"] is not None else None
        return VolumeView(
            name=row["name"],
            driver=row["driver"],
            mountpoint=local.data_dir(self._layout, row["name"]),
            created=row["created"],
            labels=json.loads(row["labels"]),
            options=options,
        )

    async def _finish_removal(self, view: VolumeView) -> None:
        await asyncio.to_thread(local.delete_volume_dir, self._layout, view.name)
        await self._db.execute("DELETE FROM volumes WHERE name = ?", (view.name,))
        log.info("volume %s: finished a removal a crash interrupted", view.name)
        self._events.emit("volume", "destroy", view.name, {"driver": view.driver})

    async def _sweep_dirs(self) -> None:
        known = set(self._volumes)
        names = await asyncio.to_thread(local.volume_dir_names, self._layout)
        for name in names:
            if name in known:
                continue
            holds_data = await asyncio.to_thread(local.holds_data, self._layout, name)
            if not holds_data:
                await asyncio.to_thread(local.delete_volume_dir, self._layout, name)
                log.info("volume directory %s without a row removed (empty)", name)
            elif local.name_problem(name) is None:
                await self._adopt(name)
            else:
                log.warning("volumes/%s holds data but is no valid volume name; left alone", name)
        for name in known:
            await asyncio.to_thread(local.ensure_data_dir, self._layout, name)

    async def _adopt(self, name: str) -> None:
        """A volume directory with data but no row (a lost or older database): keep the data
        and make it a volume again, as dockerd's local driver lists its directories."""
        created = await asyncio.to_thread(local.created_time, self._layout, name)
        await asyncio.to_thread(local.ensure_data_dir, self._layout, name)
        await self._db.execute(
            "INSERT INTO volumes (name, driver, options, labels, created) VALUES (?, ?, ?, ?, ?)",
            (name, local.DRIVER, None, "{}", created),
        )
        self._publish(VolumeView(name, local.DRIVER, local.data_dir(self._layout, name),
                                 created, {}, None))
        log.warning("volume directory %s had no row; adopted it as a volume", name)

    async def close(self) -> None:
        """Let removals and creates in flight finish (they own their cleanup)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # ------------------------------------------------------------------ publishing
    def _publish(self, view: VolumeView) -> None:
        self._volumes = {**self._volumes, view.name: view}

    def _unpublish(self, name: str) -> None:
        self._volumes = {k: v for k, v in self._volumes.items() if k != name}

    def _reindex(self) -> None:
        users: dict[str, set[str]] = {}
        for cid, mounts in self._containers.items():
            for ref in mounts.refs.values():
                users.setdefault(ref.volume, set()).add(cid)
        self._users = {name: frozenset(ids) for name, ids in users.items()}

    def has_active_mounts(self, container_id: str) -> bool:
        """Whether the container's volumes are recorded as mounted for a run (restore
        releases them for a container that is not running)."""
        mounts = self._containers.get(container_id)
        return mounts is not None and any(ref.active for ref in mounts.refs.values())

    def _active_users(self, name: str) -> bool:
        return any(
            ref.volume == name and ref.active
            for mounts in self._containers.values()
            for ref in mounts.refs.values()
        )

    async def _owned(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a must-finish section as a task of ours: a client that goes away (the
        request is cancelled) does not cut it in half."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(task)

    # ------------------------------------------------------------------ readers
    def get(self, name: str) -> VolumeView:
        view = self._volumes.get(name)
        if view is None:
            raise _no_such_volume(name)
        return view

    def count(self) -> int:
        return len(self._volumes)

    def users(self, name: str) -> builtins.list[str]:
        """Containers referencing the volume (created ones too)."""
        return sorted(self._users.get(name, ()))

    def list(self, filters: Mapping[str, Sequence[str]] | None = None) -> builtins.list[VolumeView]:
        """Volumes for ``GET /volumes`` (filters dangling, name, driver, label), by name."""
        filters = filters or {}
        _check_filters(filters, LIST_FILTERS)
        dangling = _dangling_value(filters.get("dangling") or [])
        drivers = list(filters.get("driver") or [])
        names = list(filters.get("name") or [])
        labels = list(filters.get("label") or [])
        out = []
        for view in self._volumes.values():
            if drivers and view.driver not in drivers:
                continue
            if names and not _name_matches(view.name, names):
                continue
            if not _labels_match(view.labels, labels):
                continue
            if dangling is not None and dangling == bool(self._users.get(view.name)):
                continue
            out.append(view)
        return sorted(out, key=lambda v: v.name)

    async def usage(self, name: str) -> VolumeUsage:
        """Size and reference count of one volume (``/system/df``)."""
        view = self.get(name)
        try:
            size = await asyncio.to_thread(local.dir_size, view.mountpoint)
        except OSError:
            size = -1
        return VolumeUsage(size, len(self._users.get(name, ())))

    async def usage_all(self) -> builtins.list[tuple[VolumeView, VolumeUsage]]:
        """Every local volume without mount options, with its usage (dockerd's
        ``LocalVolumesSize``: a volume with a device is not really local)."""
        views = [v for v in self._volumes.values() if v.driver == local.DRIVER and not v.options]

        def sizes() -> builtins.list[int]:
            out = []
            for view in views:
                try:
                    out.append(local.dir_size(view.mountpoint))
                except OSError:
                    out.append(-1)
            return out

        measured = await asyncio.to_thread(sizes)
        return [
            (view, VolumeUsage(size, len(self._users.get(view.name, ()))))
            for view, size in zip(views, measured, strict=True)
        ]

    # ------------------------------------------------------------------ create
    def _check_driver(self, driver: str | None, name: str) -> str:
        driver = driver or local.DRIVER
        if driver != local.DRIVER:
            raise NotFound(
                f'create {name}: error looking up volume plugin {driver}: plugin "{driver}" '
                "not found"
            )
        return driver

    async def create(
        self,
        name: str | None = None,
        driver: str | None = local.DRIVER,
        driver_opts: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> VolumeView:
        """Create a volume, or return the one of that name (idempotent, also under
        concurrency). No name makes an anonymous volume with a 64-hex name."""
        all_labels = dict(labels or {})
        if not name:
            name = new_id()
            all_labels[local.ANONYMOUS_LABEL] = ""
        self._check_driver(driver, name)
        return await self._owned(self._create(name, driver_opts, all_labels))

    async def _create(
        self, name: str, options: Mapping[str, str] | None, labels: Mapping[str, str]
    ) -> VolumeView:
        async with self._locks.hold(name):
            view, _ = await self._ensure_locked(name, options, labels)
            return view

    async def _ensure_locked(
        self, name: str, options: Mapping[str, str] | None, labels: Mapping[str, str]
    ) -> tuple[VolumeView, bool]:
        existing = self._volumes.get(name)
        if existing is not None:
            return existing, False
        problem = local.name_problem(name) or local.options_problem(options)
        if problem:
            raise InvalidParameter(f"create {name}: {problem}")
        fresh = await asyncio.to_thread(local.make_volume_dir, self._layout, name)
        if not fresh:
            log.warning("volume %s: its directory already held data; kept as the volume's", name)
        crash_point("volume_create_after_dir")
        created = time.time()
        stored_options = json.dumps(dict(options)) if options is not None else None
        try:
            await self._db.execute(
                "INSERT INTO volumes (name, driver, options, labels, created) "
                "VALUES (?, ?, ?, ?, ?)",
                (name, local.DRIVER, stored_options, json.dumps(dict(labels)), created),
            )
        except BaseException:
            if fresh:
                await asyncio.to_thread(local.delete_volume_dir, self._layout, name)
            raise
        view = VolumeView(
            name=name, driver=local.DRIVER, mountpoint=local.data_dir(self._layout, name),
            created=created, labels=dict(labels),
            options=dict(options) if options is not None else None,
        )
        self._publish(view)
        self._events.emit("volume", "create", name, {"driver": view.driver})
        return view, True

    # ------------------------------------------------------------------ remove / prune
    async def remove(self, name: str, force: bool = False) -> None:
        """Remove an unused volume. In use is 409 even with ``force``; ``force`` only
        makes a missing volume a success (dockerd's PurgeOnError)."""
        await self._owned(self._remove(name, force))

    async def _remove(self, name: str, force: bool) -> None:
        async with self._locks.hold(name):
            view = self._volumes.get(name)
            if view is None:
                if force:
                    return
                raise _no_such_volume(name)
            users = self.users(name)
            if users:
                raise Conflict(f"remove {name}: volume is in use - [{', '.join(users)}]")
            await self._destroy_locked(view)

    async def _destroy_locked(self, view: VolumeView) -> None:
        name = view.name
        await self._db.execute("UPDATE volumes SET removing = 1 WHERE name = ?", (name,))
        self._unpublish(name)
        crash_point("volume_remove_marked")
        try:
            await asyncio.to_thread(local.delete_volume_dir, self._layout, name)
        except BaseException:
            # The directory leaves volumes/ in one rename, so it is still whole: keep it.
            await self._db.execute("UPDATE volumes SET removing = 0 WHERE name = ?", (name,))
            self._publish(view)
            raise
        crash_point("volume_remove_after_files")
        await self._db.execute("DELETE FROM volumes WHERE name = ?", (name,))
        self._events.emit("volume", "destroy", name, {"driver": view.driver})

    async def prune(
        self, filters: Mapping[str, Sequence[str]] | None = None, all_: bool = False
    ) -> tuple[builtins.list[str], int]:
        """Remove unused local volumes without mount options: anonymous ones only unless
        ``all_`` or the ``all=true`` filter (API ≥ 1.42); ``label``/``label!`` filters.
        Returns the names removed and the bytes reclaimed."""
        filters = dict(filters or {})
        _check_filters(filters, PRUNE_FILTERS)
        all_ = _prune_all(list(filters.get("all") or [])) or all_
        labels = list(filters.get("label") or [])
        if not all_:
            labels.append(local.ANONYMOUS_LABEL)
        excluded = list(filters.get("label!") or [])
        if self._pruning:
            raise Conflict("a prune operation is already running")
        self._pruning = True  # cleared by the task, which outlives a cancelled request
        return await self._owned(self._prune(labels, excluded))

    async def _prune(
        self, labels: Sequence[str], excluded: Sequence[str]
    ) -> tuple[builtins.list[str], int]:
        try:
            return await self._prune_unused(labels, excluded)
        finally:
            self._pruning = False

    async def _prune_unused(
        self, labels: Sequence[str], excluded: Sequence[str]
    ) -> tuple[builtins.list[str], int]:
        deleted: builtins.list[str] = []
        reclaimed = 0
        for view in sorted(self._volumes.values(), key=lambda v: v.name):
            if view.driver != local.DRIVER or view.options or self._users.get(view.name):
                continue
            if not _labels_match(view.labels, labels):
                continue
            if excluded and _labels_match(view.labels, excluded):
                continue
            async with self._locks.hold(view.name):
                current = self._volumes.get(view.name)
                if current is None or self._users.get(view.name):
                    continue
                try:
                    size = await asyncio.to_thread(local.dir_size, current.mountpoint)
                except OSError:
                    size = 0
                try:
                    await self._destroy_locked(current)
                except EngineError as exc:
                    log.warning("prune: could not remove volume %s: %s", view.name, exc)
                    continue
            deleted.append(view.name)
            reclaimed += size
        self._events.emit("volume", "prune", "", {"reclaimed": str(reclaimed)})
        return deleted, reclaimed

    # ------------------------------------------------------------------ containers: create
    async def create_container_mounts(
        self,
        container_id: str,
        config: Mapping[str, Any],
        host_config: Mapping[str, Any],
        image_config: Mapping[str, Any] | None,
        resolve_container: ResolveContainer,
    ) -> tuple[MountPlan, ...]:
        """At container create: plan and validate every mount (400 with dockerd's
        messages), create the named and anonymous volumes it needs, reference them, and
        remember the plans. ``resolve_container(ref)`` gives a container id for
        ``--volumes-from`` (raising NotFound). Undone completely on failure."""
        others: dict[str, Sequence[MountPlan]] = {}
        for spec in host_config.get("VolumesFrom") or []:
            ref, _ = parse_volumes_from(str(spec))
            try:
                other = resolve_container(ref)
            except NotFound as exc:
                raise InvalidParameter(str(exc)) from None
            others[ref] = self.container_plans(other)
        plans = await asyncio.to_thread(
            plan_mounts, config, host_config, image_config, others.__getitem__, _exists
        )
        return await self._owned(self._reference(container_id, plans))

    async def _reference(
        self, container_id: str, plans: Sequence[MountPlan]
    ) -> tuple[MountPlan, ...]:
        resolved: builtins.list[MountPlan] = []
        made: builtins.list[str] = []
        try:
            for plan in plans:
                if plan.type != "volume":
                    resolved.append(plan)
                    continue
                view, created = await self._acquire(container_id, plan)
                if created and plan.anonymous:
                    made.append(view.name)
                mode = plan.mode
                if not mode and plan.origin in ("binds", "mounts"):
                    mode = "z"  # dockerd's setBindModeIfNull for local volumes
                resolved.append(replace(plan, source=view.name, mode=mode, driver=view.driver))
            encoded = json.dumps([p.to_json() for p in resolved])
            await self._db.execute(
                "INSERT OR REPLACE INTO container_mounts (container_id, plans) VALUES (?, ?)",
                (container_id, encoded),
            )
        except BaseException:
            await self._drop_references(container_id)
            for name in made:
                try:
                    await self._remove(name, force=True)
                except EngineError as exc:
                    log.warning("volume %s made for a failed create stays: %s", name, exc)
            raise
        mounts = self._containers.setdefault(container_id, _ContainerMounts())
        mounts.plans = tuple(resolved)
        return mounts.plans

    async def _acquire(self, container_id: str, plan: MountPlan) -> tuple[VolumeView, bool]:
        name = plan.source or new_id()
        labels = dict(plan.labels or {})
        if plan.anonymous:
            labels[local.ANONYMOUS_LABEL] = ""
        self._check_driver(plan.driver, name)
        async with self._locks.hold(name):
            if plan.origin == "volumes-from":
                view, created = self.get(name), False
            else:
                view, created = await self._ensure_locked(name, plan.driver_opts, labels)
            await self._db.execute(
                "INSERT OR REPLACE INTO volume_refs (container_id, destination, volume) "
                "VALUES (?, ?, ?)",
                (container_id, plan.destination, name),
            )
            mounts = self._containers.setdefault(container_id, _ContainerMounts())
            mounts.refs[plan.destination] = _Ref(name)
            self._reindex()
        return view, created

    async def _drop_references(self, container_id: str) -> None:
        def drop(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM volume_refs WHERE container_id = ?", (container_id,))
            conn.execute("DELETE FROM container_mounts WHERE container_id = ?", (container_id,))

        await self._db.transaction(drop)
        self._containers.pop(container_id, None)
        self._reindex()

    # ------------------------------------------------------------------ containers: run
    async def mount_container(
        self, container_id: str, rootfs: Path
    ) -> builtins.list[dict[str, Any]]:
        """At start, with the rootfs mounted: mount volume devices, populate empty volumes
        from the image (first start only), create missing ``-v`` host directories, emit
        ``mount`` events. Returns the OCI mounts for config.json. Undone on failure."""
        mounts = self._containers.get(container_id)
        if mounts is None:
            return []
        out: builtins.list[dict[str, Any]] = []
        try:
            for plan in mounts.plans:
                out.append(await self._mount_one(container_id, mounts, plan, rootfs))
        except BaseException:
            await self.unmount_container(container_id)
            raise
        return out

    async def _mount_one(
        self, container_id: str, mounts: _ContainerMounts, plan: MountPlan, rootfs: Path
    ) -> dict[str, Any]:
        if plan.type == "tmpfs":
            return oci_mount(plan, "tmpfs")
        if plan.type == "bind":
            if plan.create_source:
                await asyncio.to_thread(local.ensure_bind_source, plan.source)
            problem = await asyncio.to_thread(
                local.propagation_problem, plan.source, plan.propagation)
            if problem:
                raise InvalidParameter(problem)
            return oci_mount(plan, plan.source)
        ref = mounts.refs.get(plan.destination)
        if ref is None:
            raise SystemError_(
                f"container {container_id}: no volume reference for {plan.destination}"
            )
        async with self._locks.hold(ref.volume):
            view = self.get(ref.volume)
            data = view.mountpoint
            if view.needs_mount and not await asyncio.to_thread(local.is_mounted, data):
                try:
                    await asyncio.to_thread(local.mount_device, view.options or {}, data)
                except EngineError as exc:
                    raise SystemError_(f"error while mounting volume '{data}': {exc}") from None
            if not ref.active:
                await self._set_ref(container_id, plan.destination, "active")
                ref.active = True
            if plan.copy_data and not ref.populated:
                # Under the volume's lock: two first starts must not copy into one volume.
                await asyncio.to_thread(
                    copyup.populate, rootfs, plan.destination, data,
                    refuse_file=plan.origin == "config",
                )
                await self._set_ref(container_id, plan.destination, "populated")
                ref.populated = True
        source = str(data)
        if plan.subpath:
            index = mounts.plans.index(plan)
            point = self._layout.subpath_mounts_dir(container_id) / str(index)
            await asyncio.to_thread(subpath.bind_subpath, data, plan.subpath, point)
            source = str(point)
        self._events.emit("volume", "mount", view.name, {
            "driver": view.driver, "container": container_id, "destination": plan.destination,
            "read/write": "false" if plan.read_only else "true",
            "propagation": plan.propagation,
        })
        return oci_mount(plan, source)

    async def _set_ref(self, container_id: str, destination: str, column: str) -> None:
        assert column in ("active", "populated")
        await self._db.execute(
            f"UPDATE volume_refs SET {column} = 1 WHERE container_id = ? AND destination = ?",
            (container_id, destination),
        )

    async def unmount_container(self, container_id: str) -> None:
        """When the container stops (or its start failed): ``unmount`` events, and volume
        devices unmounted when no running container uses them. Idempotent."""
        mounts = self._containers.get(container_id)
        if mounts is None:
            return
        if any(plan.subpath for plan in mounts.plans):
            await asyncio.to_thread(
                subpath.release, self._layout.subpath_mounts_dir(container_id))
        active = [ref for ref in mounts.refs.values() if ref.active]
        if not active:
            return
        await self._db.execute(
            "UPDATE volume_refs SET active = 0 WHERE container_id = ?", (container_id,)
        )
        for ref in active:
            ref.active = False
        for name in dict.fromkeys(ref.volume for ref in active):
            view = self._volumes.get(name)
            if view is None:
                continue
            self._events.emit(
                "volume", "unmount", name, {"driver": view.driver, "container": container_id}
            )
            if view.needs_mount:
                async with self._locks.hold(name):
                    if self._active_users(name):
                        continue
                    try:
                        await asyncio.to_thread(local.unmount_device, view.mountpoint)
                    except EngineError as exc:
                        log.warning("volume %s: %s", name, exc)

    async def release_container(self, container_id: str, remove_anonymous: bool = False) -> None:
        """At container removal: drop its references; with ``remove_anonymous`` (``rm -v``,
        ``--rm``) remove the anonymous volumes it named, unless another container uses
        them. Idempotent; call before the container row is deleted."""
        await self._owned(self._release(container_id, remove_anonymous))

    async def _release(self, container_id: str, remove_anonymous: bool) -> None:
        await self.unmount_container(container_id)
        mounts = self._containers.get(container_id)
        await self._drop_references(container_id)
        if not remove_anonymous or mounts is None:
            return
        names = dict.fromkeys(
            p.source for p in mounts.plans if p.type == "volume" and p.anonymous and p.source
        )
        for name in names:
            try:
                await self._remove(name, force=True)
            except Conflict:
                pass  # another container uses it (dockerd ignores "in use" here too)
            except EngineError as exc:
                log.warning("removing anonymous volume %s of %s: %s", name, container_id, exc)

    async def forget_containers_except(self, known: Collection[str]) -> builtins.list[str]:
        """At restore, with the ids of every container row: drop references of containers
        that do not exist (a crash between their volumes and their row)."""
        stale = [cid for cid in self._containers if cid not in known]
        for cid in stale:
            await self.release_container(cid)
        if stale:
            log.info("volumes: dropped references of %d containers that do not exist", len(stale))
        return stale

    # ------------------------------------------------------------------ containers: read
    def container_plans(self, container_id: str) -> tuple[MountPlan, ...]:
        mounts = self._containers.get(container_id)
        return mounts.plans if mounts is not None else ()

    def inspect_mounts(
        self, container_id: str, *, with_subpath: bool = False
    ) -> builtins.list[dict[str, Any]]:
        """Inspect's ``Mounts`` (also the container list's); ``with_subpath`` adds a
        volume's ``Subpath`` (for `docker cp`'s view of a stopped container)."""
        out = []
        for plan in self.container_plans(container_id):
            if not plan.listed:
                continue
            source = plan.source
            if plan.type == "volume":
                source = str(local.data_dir(self._layout, plan.source))
            entry = inspect_mount(plan, source)
            if with_subpath and plan.subpath:
                entry["Subpath"] = plan.subpath
            out.append(entry)
        return out


def _exists(path: str) -> bool:
    return os.path.exists(path)
