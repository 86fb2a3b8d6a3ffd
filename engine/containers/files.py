"""ContainerFiles: ``docker cp`` (archive), export, diff, top and stats for the API.

A facade over the ContainerManager's public side (``get``, ``rootfs``, ``upper_dir``),
the engine config (cgroup parent) and the snapshotter's mounts (image layers, for diff).
The file work is in ``archive``/``changes``, cgroup reading in ``stats``, ``ps`` in
``top``; here are the container lookups, the threads, and errors in dockerd's words.

Archive operations run inside ``ContainerManager.rootfs``: a stopped or created
container's rw snapshot is mounted for the duration and its lock held, so it cannot
start meanwhile; streamed answers keep it until the last byte is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from engine.config import EngineConfig
from engine.containers import archive, changes, stats, top
from engine.containers.archive import ExtractOptions, PathStat
from engine.containers.model import ContainerView
from engine.containers.mountview import MountTable, mount_devices
from engine.containers.state import Status
from engine.errors import Conflict, InvalidParameter, NotFound
from engine.events import EventBus
from engine.images.unpack import ChunkPipe
from engine.instruments import LabeledTimer, timed
from engine.runtime import cgroups
from engine.snapshots.base import Mount

log = logging.getLogger(__name__)

STATS_INTERVAL = 1.0  # seconds between samples (dockerd's collector interval)


class _Containers(Protocol):
    """What we use of ContainerManager."""

    @property
    def actions(self) -> LabeledTimer: ...
    def get(self, ref: str) -> ContainerView: ...
    def rootfs(
        self, ref: str, *, with_mounts: bool = False
    ) -> contextlib.AbstractAsyncContextManager[tuple[ContainerView, Path]]: ...
    def upper_dir(self, container_id: str) -> Path: ...
    def mounts(self, container_id: str) -> list[dict[str, Any]]: ...


SnapshotMounts = Callable[[str], Awaitable[list[Mount]]]


def _any_dir(dirs: dict[str, Path]) -> bool:
    return any(d.is_dir() for name, d in dirs.items() if not name.startswith("name="))


def _not_found(path: str, ref: str) -> NotFound:
    return NotFound(f"Could not find the file {path} in container {ref}")


class ContainerFiles:
    def __init__(
        self,
        containers: _Containers,
        config: EngineConfig,
        events: EventBus,
        snapshot_mounts: SnapshotMounts,
        *,
        cgroup_info: Callable[[], cgroups.CgroupInfo] = cgroups.detect,
        host: stats.HostFiles | None = None,
        proc: Path = Path("/proc"),
    ) -> None:
        self._containers = containers
        self._config = config
        self._events = events
        self._snapshot_mounts = snapshot_mounts
        self._detect = cgroup_info
        self._info: cgroups.CgroupInfo | None = None
        self._host = host or stats.HostFiles()
        self._scrape_files: dict[tuple[str, int], stats.CgroupFiles] = {}
        self._proc = proc

    def _emit(self, view: ContainerView, action: str) -> None:
        attributes = dict(view.config.labels)
        attributes["image"] = view.config.image_ref
        attributes["name"] = view.name
        self._events.emit("container", action, view.id, attributes)

    # ------------------------------------------------------------------ archive
    def _mount_table(self, view: ContainerView) -> MountTable:
        return MountTable.of(self._containers.mounts(view.id), view.config.host_config,
                             running=view.running)

    async def _walkable_devices(self, view: ContainerView, root: Path) -> frozenset[int] | None:
        """A running container's view spans the kernel's file systems: archives walk
        only the root's and its mounts' devices."""
        if not view.running:
            return None
        destinations = ["/".join(p.parts) for p in self._mount_table(view).points]
        return await asyncio.to_thread(mount_devices, root, destinations)

    async def stat_path(self, ref: str, path: str) -> PathStat:
        async with self._containers.rootfs(ref, with_mounts=True) as (_, root):
            try:
                return await asyncio.to_thread(archive.stat_path, root, path)
            except (FileNotFoundError, NotADirectoryError):
                raise _not_found(path, ref) from None

    @contextlib.asynccontextmanager
    async def get_archive(
        self, ref: str, path: str
    ) -> AsyncIterator[tuple[PathStat, AsyncIterator[bytes]]]:
        """The stat of ``path`` and its tar, streamed; the rootfs stays until the end."""
        async with self._containers.rootfs(ref, with_mounts=True) as (view, root):
            devices = await self._walkable_devices(view, root)
            try:
                source = await asyncio.to_thread(archive.open_archive, root, path, devices)
            except (FileNotFoundError, NotADirectoryError):
                raise _not_found(path, ref) from None
            self._emit(view, "archive-path")
            chunks = archive.stream_from_thread(source.write_to)
            try:
                yield source.stat, chunks
            finally:
                await chunks.aclose()
                await asyncio.to_thread(source.close)

    async def put_archive(
        self,
        ref: str,
        path: str,
        body: AsyncIterator[bytes],
        *,
        no_overwrite_dir_non_dir: bool = False,
        copy_uid_gid: bool = False,
    ) -> None:
        """Extract the tar ``body`` into directory ``path`` (created and stopped
        containers too)."""
        async with self._containers.rootfs(ref, with_mounts=True) as (view, root):
            owner = None
            user = str(view.config.config.get("User") or "")
            if copy_uid_gid and user:
                owner = await asyncio.to_thread(archive.resolve_user, root, user)
            options = ExtractOptions(no_overwrite_dir_non_dir, owner, os.geteuid() == 0)
            table = self._mount_table(view)
            await self._extract(root, path, ref, body, options, table.check_writable)
            self._emit(view, "extract-to-dir")

    async def _extract(
        self, root: Path, path: str, ref: str, body: AsyncIterator[bytes],
        options: ExtractOptions, check_dest: Callable[[tuple[str, ...]], None],
    ) -> None:
        pipe = ChunkPipe(asyncio.get_running_loop())
        feeder = asyncio.create_task(pipe.feed(body))
        try:
            await archive.run_in_thread(
                lambda: archive.extract_tar(root, path, pipe, options, check_dest))
        except FileNotFoundError:
            raise _not_found(path, ref) from None
        finally:
            pipe.close_reader()
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await feeder

    @contextlib.asynccontextmanager
    async def export(self, ref: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """The whole root filesystem as a tar (``docker export``)."""
        async with self._containers.rootfs(ref) as (view, root):
            source = await asyncio.to_thread(archive.RootfsExport, root)
            self._emit(view, "export")
            chunks = archive.stream_from_thread(source.write_to)
            try:
                yield chunks
            finally:
                await chunks.aclose()
                await asyncio.to_thread(source.close)

    # ------------------------------------------------------------------ diff
    @property
    def actions(self) -> LabeledTimer:
        """The container manager's action timer (``docker diff`` is one of its actions)."""
        return self._containers.actions

    @timed("changes")
    async def changes(self, ref: str) -> list[dict[str, object]] | None:
        """``docker diff``: None (JSON null, as dockerd) when nothing changed."""
        view = self._containers.get(ref)
        upper = self._containers.upper_dir(view.id)
        mounts = await self._snapshot_mounts(view.id)
        lowers = [p for m in mounts if m.type == "overlay"
                  for p in changes.lower_dirs_of(m.options)]
        try:
            found = await asyncio.to_thread(changes.changes, upper, lowers)
        except FileNotFoundError:
            raise NotFound(f"No such container: {ref}") from None  # removed meanwhile
        return found or None

    # ------------------------------------------------------------------ cgroups
    async def _cgroup_info(self) -> cgroups.CgroupInfo:
        if self._info is None:
            self._info = await asyncio.to_thread(self._detect)
        return self._info

    async def cgroup_files(self, view: ContainerView) -> stats.CgroupFiles:
        """The container's cgroup directories, as the runtime placed them."""
        info = await self._cgroup_info()
        return await asyncio.to_thread(self._files_of, info, view)

    def _files_of(self, info: cgroups.CgroupInfo, view: ContainerView) -> stats.CgroupFiles:
        """``cgroup_files``, blocking."""
        parent = view.config.host_config.get("CgroupParent") or self._config.cgroup_parent
        path = cgroups.cgroups_path(parent, view.id)
        dirs = cgroups.cgroup_dirs(info, path) if path.startswith("/") else {}
        if view.state.pid and not _any_dir(dirs):
            # A relative parent hangs below the runtime's own cgroup, and a daemon
            # restarted with another --cgroup-parent left older containers elsewhere:
            # ask the kernel where the container's init process is.
            dirs = self._dirs_of_pid(info, view.state.pid)
        return stats.CgroupFiles(info.version, dirs)

    def _dirs_of_pid(self, info: cgroups.CgroupInfo, pid: int) -> dict[str, Path]:
        try:
            placed = cgroups.parse_self_cgroup((self._proc / str(pid) / "cgroup").read_text())
        except OSError:
            return {}
        return {name: mount / placed[name].lstrip("/")
                for name, mount in info.mount_points.items() if name in placed}

    # ------------------------------------------------------------------ top
    async def top(self, ref: str, ps_args: str = "") -> dict[str, Any]:
        view = self._containers.get(ref)
        if view.state.status == Status.RESTARTING:
            raise Conflict(f"Container {view.id} is restarting, wait until the container "
                           "is running")
        if not view.running:
            raise Conflict(f"Container {view.id} is not running")
        top.validate_ps_args(ps_args)
        files = await self.cgroup_files(view)
        pids = await asyncio.to_thread(
            lambda: top.container_pids(top.procs_dir(files.version, files.dirs))
        )
        result = await top.top(ps_args, pids)
        self._emit(view, "top")
        return result

    # ------------------------------------------------------------------ stats
    def _net_dev(self, view: ContainerView) -> str | None:
        return f"{self._proc}/{view.state.pid}/net/dev" if view.state.pid else None

    async def _sample(self, view: ContainerView) -> stats.Sample:
        files = await self.cgroup_files(view)
        return await asyncio.to_thread(stats.read_sample, files, self._net_dev(view), self._host)

    async def samples(self, views: list[ContainerView]) -> dict[str, stats.Sample]:
        """One sample of each running container in ``views`` (by id), for the metrics
        scrape: all read in one worker thread (a thread hop per container would cost
        more than its reads), the host's files once. Where each container's files are
        is remembered from one scrape to the next (by id and pid: a restart moves it)."""
        info = await self._cgroup_info()
        running = [v for v in views if v.running and v.state.pid]
        known = self._scrape_files
        self._scrape_files = current = {}

        def read_all() -> dict[str, stats.Sample]:
            host = stats.read_host(self._host)
            found: dict[str, stats.Sample] = {}
            for view in running:
                key = (view.id, view.state.pid)
                try:
                    files = known.get(key) or self._files_of(info, view)
                    current[key] = files
                    found[view.id] = stats.read_sample(files, self._net_dev(view), host,
                                                       full=False)
                except OSError as exc:  # it stopped meanwhile: no sample this time
                    log.debug("no sample of %s: %s", view.id, exc)
            return found

        return await asyncio.to_thread(read_all)

    async def stats(
        self, ref: str, *, stream: bool = True, one_shot: bool = False
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Stats objects: one (``stream`` false) or one per second until the container
        is removed. ``stream`` false waits one interval for a second sample so that
        ``precpu_stats`` is filled, unless ``one_shot``."""
        if stream and one_shot:
            raise InvalidParameter("cannot have stream=true and one-shot=true")
        view = self._containers.get(ref)
        if not stream:
            yield await self._single(view, one_shot)
            return
        loop = asyncio.get_running_loop()
        previous: stats.Sample | None = None
        while True:
            started = loop.time()
            try:
                view = self._containers.get(view.id)
            except NotFound:
                return
            sample = await self._sample(view) if view.running else None
            yield stats.stats_json(view.name, view.id, sample, previous)
            previous = sample
            await asyncio.sleep(max(0.0, STATS_INTERVAL - (loop.time() - started)))

    async def _single(self, view: ContainerView, one_shot: bool) -> dict[str, Any]:
        if not view.running:
            return stats.stats_json(view.name, view.id, None, None)
        loop = asyncio.get_running_loop()
        started = loop.time()
        first = await self._sample(view)
        if one_shot:
            return stats.stats_json(view.name, view.id, first, None)
        await asyncio.sleep(max(0.0, STATS_INTERVAL - (loop.time() - started)))
        current = self._containers.get(view.id)
        if not current.running:
            return stats.stats_json(view.name, view.id, first, None)
        return stats.stats_json(view.name, view.id, await self._sample(current), first)
