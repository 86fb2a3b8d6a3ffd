"""ContainerManager: the containers API the routers call (create, start, stop, kill, wait,
attach, logs, remove, restore), composed of one collaborator per concern:

  table.ContainerTable       views, locks, waiters: the state they all share
  records.ConfigRecords      create, update, rename, links (the configuration record)
  launch.Launcher            what a run needs before it starts, and its teardown
  runs.RunLifecycle          start, exit recording, signals and stops, restart policy
  attachment.Attachment      attach sessions, resize, logs
  restore.Restorer           reconciling the containers after a daemon stop or crash

State changes follow one pattern: take the container's lock, act, commit the new state
to SQLite, then publish a new frozen ``ContainerView`` (readers never lock). Exit codes
come from conmon's exit file, never only from memory, so they survive a daemon crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from engine.config import EngineConfig
from engine.containers import listing, mountview
from engine.containers.attachment import Attachment
from engine.containers.launch import Launcher
from engine.containers.logs import LogRecord
from engine.containers.model import ContainerView
from engine.containers.records import ConfigRecords
from engine.containers.restore import Restorer
from engine.containers.runs import RunLifecycle, stop_settings
from engine.containers.signals import parse_signal
from engine.containers.state import Status
from engine.containers.streams import StreamSet
from engine.containers.table import ContainerTable
from engine.errors import Conflict, InvalidParameter, NotFound, NotModified
from engine.events import EventBus
from engine.images.manager import ImageManager
from engine.instruments import LabeledTimer, timed
from engine.layout import Layout
from engine.networks.manager import NetworkManager
from engine.runtime.base import OCIRuntime
from engine.runtime.conmon import ConmonMonitor
from engine.snapshots import mount as mounting
from engine.snapshots.overlay import OverlaySnapshotter
from engine.store.db import Database
from engine.volumes.manager import VolumeManager

log = logging.getLogger(__name__)

# The actions dockerd shows before their first use (zero counts), in its order.
CONTAINER_ACTIONS = ("start", "changes", "commit", "create", "delete")
WAIT_CONDITIONS = frozenset({"not-running", "next-exit", "removed"})
KILL_WAIT = 10.0
LIST_FILTERS = frozenset(
    {"id", "name", "label", "status", "ancestor", "exited", "before", "since", "health",
     "isolation", "is-task", "network", "publish", "expose", "volume"}
)


class ContainerManager:
    def __init__(
        self,
        *,
        config: EngineConfig,
        layout: Layout,
        db: Database,
        events: EventBus,
        images: ImageManager,
        snapshotter: OverlaySnapshotter,
        runtimes: dict[str, Any],
        monitor: ConmonMonitor,
        volumes: VolumeManager,
        networks: NetworkManager,
    ) -> None:
        self._volumes = volumes
        self._networks = networks
        self._exec_source: Callable[[str], Sequence[str]] | None = None
        self._config = config
        self._layout = layout
        self._db = db
        self._events = events
        self._images = images
        self._snapshotter = snapshotter
        self._runtimes: dict[str, OCIRuntime] = runtimes
        self._monitor = monitor
        # dockerd's engine_daemon_container_actions_seconds, read by the metrics scrape.
        self.actions = LabeledTimer(preset=CONTAINER_ACTIONS)
        # The collaborators: shared state, the start path, runs and exits, attach and
        # logs, restore. Each owns one concern; this class is the API the routers call.
        self._table = ContainerTable(db, events)
        self._views = self._table.views
        self._locks = self._table.locks
        self._records = ConfigRecords(
            config=config, layout=layout, table=self._table, images=images,
            snapshotter=snapshotter, runtimes=runtimes, volumes=volumes, networks=networks,
        )
        self._launcher = Launcher(
            config=config, layout=layout, table=self._table, snapshotter=snapshotter,
            monitor=monitor, volumes=volumes, networks=networks,
        )
        self._runs = RunLifecycle(
            config=config, layout=layout, table=self._table, runtimes=runtimes,
            monitor=monitor, launcher=self._launcher, remove=self.remove,
        )
        self._attachment = Attachment(
            layout=layout, table=self._table, monitor=monitor, start=self.start,
            kill=self.kill,
        )
        self._restorer = Restorer(
            config=config, layout=layout, table=self._table, runs=self._runs,
            launcher=self._launcher, monitor=monitor, snapshotter=snapshotter,
            volumes=volumes, networks=networks,
            remove_locked=self._remove_locked,
        )

    def reconfigure(self, config: EngineConfig) -> None:
        """A reloaded configuration (live-restore, default runtime, default shm size...):
        containers created or stopped from now on follow it."""
        self._config = config
        for part in (self._records, self._launcher, self._runs, self._restorer):
            part.reconfigure(config)

    def runtimes_in_use(self) -> set[str]:
        """Runtimes some container (in any state) was created with."""
        return {
            str(view.config.host_config.get("Runtime") or self._config.default_runtime)
            for view in self.views()
        }

    # ------------------------------------------------------------------ read side
    def get(self, ref: str) -> ContainerView:
        return self._table.get(ref)

    def inspect(self, ref: str) -> ContainerView:
        """``get`` plus what inspect shows from other managers (the container's execs)."""
        view = self.get(ref)
        if self._exec_source is None:
            return view
        exec_ids = tuple(self._exec_source(view.id))
        return ContainerView(view.config, view.state, view.image_names, exec_ids)

    def set_exec_source(self, source: Callable[[str], Sequence[str]]) -> None:
        """Where inspect's ``ExecIDs`` come from (the exec manager sits above us)."""
        self._exec_source = source

    def views(self) -> list[ContainerView]:
        return list(self._views.values())

    def counts(self) -> dict[str, int]:
        running = sum(1 for v in self._views.values() if v.state.status == Status.RUNNING)
        paused = sum(1 for v in self._views.values() if v.state.status == Status.PAUSED)
        total = len(self._views)
        return {"total": total, "running": running, "paused": paused,
                "stopped": total - running - paused}

    def containers_using_image(self, image_id: str) -> list[tuple[str, bool]]:
        return [(v.id, v.running) for v in self._views.values() if v.config.image_id == image_id]

    def is_running(self, container_id: str) -> bool:
        return self._table.is_running(container_id)

    def log_path(self, container_id: str) -> Path:
        return self._layout.container_log(container_id)

    def runtime_name(self, view: ContainerView) -> str:
        return self._runs.runtime_name(view)

    async def list_views(
        self, *, all_: bool, limit: int | None, filters: dict[str, list[str]]
    ) -> list[ContainerView]:
        unknown = set(filters) - LIST_FILTERS
        if unknown:
            raise InvalidParameter(f"invalid filter '{sorted(unknown)[0]}'")
        ancestors: dict[str, set[str]] = {}
        for ref in filters.get("ancestor", []):
            try:
                ancestors[ref] = {(await self._images.get(ref)).id}
            except NotFound:
                ancestors[ref] = set()
        return listing.select(
            self._views.values(), all_=all_, limit=limit, filters=filters,
            image_matches=ancestors, also=self._attachment_filter(filters),
        )

    def _attachment_filter(
        self, filters: dict[str, list[str]]
    ) -> Callable[[ContainerView], bool] | None:
        """`volume=` (name or mount point) and `network=` (name or id) filters, which
        other managers answer."""
        volumes = set(filters.get("volume", []))
        networks = set(filters.get("network", []))
        if not volumes and not networks:
            return None

        def matches(view: ContainerView) -> bool:
            if volumes:
                mounts = self._volumes.inspect_mounts(view.id)
                keys = {m.get(k) for m in mounts for k in ("Name", "Destination", "Source")}
                if not volumes & keys:
                    return False
            if networks:
                attached = self.network_settings(view.id)["Networks"]
                ids = {e.get("NetworkID", "") for e in attached.values()}
                if not any(n in attached or any(i.startswith(n) for i in ids if i)
                           for n in networks):
                    return False
            return True

        return matches

    # ------------------------------------------------------------------ configuration
    @timed("create")
    async def create(
        self, body: dict[str, Any], name: str | None, platform: str | None = None
    ) -> tuple[str, list[str]]:
        return await self._records.create(body, name, platform)

    async def update(self, ref: str, changes: dict[str, Any]) -> list[str]:
        """`docker update`: new limits and restart policy, kept and applied live."""
        return await self._records.update(ref, changes)

    async def rename(self, ref: str, new_name: str) -> None:
        await self._records.rename(ref, new_name)

    async def remove_link(self, link_name: str) -> None:
        """``DELETE /containers/<parent>/<alias>?link=1`` (dockerd's rmLink)."""
        await self._records.remove_link(link_name)

    # ------------------------------------------------------------------ start
    @timed("start")
    async def start(self, ref: str) -> None:
        view = self.get(ref)
        async with self._locks.hold(view.id):
            view = self._views[view.id]
            status = view.state.status
            if status == Status.RUNNING:
                raise NotModified("container already started")
            if status == Status.PAUSED:
                raise Conflict("cannot start a paused container, try unpause instead")
            if status in (Status.REMOVING, Status.DEAD) or view.id in self._table.removing:
                raise Conflict(f"container {view.id} is marked for removal and cannot be started")
            self._runs.cancel_restart(view.id)
            await self._runs.start_locked(view)

    async def set_health(self, container_id: str, health: dict[str, Any]) -> None:
        """Record a healthcheck result; a status change emits ``health_status: <status>``."""
        async with self._locks.hold(container_id):
            view = self._views.get(container_id)
            if view is None:
                return
            before = (view.state.health or {}).get("Status")
            view = await self._table.commit_state(container_id, view.state.evolve(health=health))
        if health.get("Status") != before:
            self._table.emit(view, f"health_status: {health.get('Status')}")

    # ------------------------------------------------------------------ pause / rename
    async def pause(self, ref: str) -> None:
        await self._pause(ref, by_commit=False)

    async def pause_for_commit(self, ref: str) -> None:
        """`docker commit`'s pause: the fact that commit paused it is committed before
        the container is frozen, so a restore after a crash inside the commit thaws it."""
        await self._pause(ref, by_commit=True)

    async def _pause(self, ref: str, *, by_commit: bool) -> None:
        view = self.get(ref)
        async with self._locks.hold(view.id):
            view = self._views[view.id]
            if view.state.status == Status.PAUSED:
                raise Conflict(f"Container {view.id} is already paused")
            if view.state.status != Status.RUNNING:
                raise Conflict(f"Container {view.id} is not running")
            if by_commit:
                view = await self._table.commit_state(
                    view.id, view.state.evolve(paused_by_commit=True)
                )
            try:
                await self._runs.runtime_of(view).pause(view.id)
            except BaseException:
                if by_commit:
                    await self._table.commit_state(
                        view.id, view.state.evolve(paused_by_commit=False)
                    )
                raise
            view = await self._table.commit_state(view.id, view.state.evolve(status=Status.PAUSED))
        self._table.emit(view, "pause")

    async def unpause(self, ref: str) -> None:
        await self._unpause(ref, only_if_by_commit=False)

    async def unpause_after_commit(self, ref: str) -> None:
        """Thaw what pause_for_commit froze, unless someone unpaused it meanwhile."""
        await self._unpause(ref, only_if_by_commit=True)

    async def _unpause(self, ref: str, *, only_if_by_commit: bool) -> None:
        view = self.get(ref)
        async with self._locks.hold(view.id):
            view = self._views[view.id]
            if only_if_by_commit and not view.state.paused_by_commit:
                return
            if view.state.status != Status.PAUSED:
                raise Conflict(f"Container {view.id} is not paused")
            await self._runs.runtime_of(view).resume(view.id)
            view = await self._table.commit_state(
                view.id, view.state.evolve(status=Status.RUNNING, paused_by_commit=False)
            )
        self._table.emit(view, "unpause")

    # ------------------------------------------------------------------ stop / kill
    async def stop(
        self, ref: str, stop_timeout: int | None = None, signal_: str | None = None
    ) -> None:
        view = self.get(ref)
        if view.state.status == Status.RESTARTING:
            await self._runs.stop_restarting(view.id)
            view = self.get(ref)
            if not view.running:
                self._table.emit(view, "stop")
                return
            # The restart won the race and the container runs again: stop it for real.
        if not view.running:
            raise NotModified("container already stopped")
        stop_signal, timeout = stop_settings(view, signal_, stop_timeout)
        await self._runs.stop_running(view, stop_signal, timeout, manual=True)
        self._table.emit(self._views.get(view.id, view), "stop")

    async def kill(self, ref: str, signal_: str | None = None) -> None:
        view = self.get(ref)
        number = parse_signal(signal_, default=signal.SIGKILL)
        if view.state.status == Status.RESTARTING and number == signal.SIGKILL:
            await self._runs.stop_restarting(view.id)
            view = self.get(ref)
            if not view.running:
                return
        if not view.running:
            raise Conflict(f"Cannot kill container: {ref}: Container {view.id} is not running")
        if number != signal.SIGKILL:
            await self._runs.signal(view, number)
            return
        # Like dockerd, a SIGKILL returns once the container is really gone, so that an
        # inspect right after `docker kill` sees it exited.
        await self._runs.mark_manually_stopped(view.id)
        waiter = self._table.exit_future(view.id, of_run=view.state.pid)
        if waiter.done():
            return  # it exited while we marked it; nothing left to kill
        await self._runs.signal(view, number)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(waiter), KILL_WAIT)

    # ------------------------------------------------------------------ wait
    async def wait(self, ref: str, condition: str = "not-running") -> asyncio.Future[int]:
        """Register a waiter and return its future (the API flushes headers, then awaits)."""
        if condition not in WAIT_CONDITIONS:
            raise InvalidParameter(f"invalid condition: {condition!r}")
        view = self.get(ref)
        loop = asyncio.get_running_loop()
        if condition == "removed":
            future: asyncio.Future[int] = loop.create_future()
            self._table.removal_waiters.setdefault(view.id, []).append(future)
            return future
        if condition == "not-running" and not view.running:
            done: asyncio.Future[int] = loop.create_future()
            done.set_result(view.state.exit_code)
            return done
        return self._table.exit_future(view.id)

    def forget_waiter(self, future: asyncio.Future[int]) -> None:
        self._table.forget_waiter(future)

    # ------------------------------------------------------------------ attach / logs
    async def attach(
        self, ref: str, streams: StreamSet, *, use_stdin: bool, logs: bool = False
    ) -> None:
        """Run one attach session until the container's run ends or the client detaches."""
        await self._attachment.attach(ref, streams, use_stdin=use_stdin, logs=logs)

    async def run_attached(
        self, ref: str, write_output: Callable[[int, bytes], Awaitable[None]]
    ) -> int:
        """Start a created container, its output going to ``write_output`` (the builder's
        RUN); its exit code once it has exited and its output has been delivered."""
        return await self._attachment.run_attached(ref, write_output)

    async def resize(self, ref: str, height: int, width: int) -> None:
        await self._attachment.resize(ref, height, width)

    def logs(
        self,
        ref: str,
        *,
        stdout: bool = True,
        stderr: bool = True,
        since_nano: int | None = None,
        until_nano: int | None = None,
        tail: int | None = None,
        follow: bool = False,
    ) -> AsyncIterator[LogRecord]:
        """The container's log records (errors are raised here, before any response)."""
        return self._attachment.logs(
            ref, stdout=stdout, stderr=stderr, since_nano=since_nano, until_nano=until_nano,
            tail=tail, follow=follow,
        )

    def log_details(self, ref: str) -> bytes:
        return self._attachment.log_details(ref)

    @contextlib.asynccontextmanager
    async def rootfs(
        self, ref: str, *, with_mounts: bool = False
    ) -> AsyncIterator[tuple[ContainerView, Path]]:
        """The container's root filesystem, mounted, for as long as the block runs.

        With ``with_mounts`` (`docker cp`) the root is the container's view with its
        mounts (see ``mountview``): a running container's own root, ``/proc/<pid>/root``
        (yielded as ``/proc/self/fd/N`` of a checked descriptor); for a created or
        stopped one the rw snapshot with its volumes and binds bound in. Without it
        (export, diff) a running container's host-side rootfs mount. A stopped
        container's mounts are detached afterwards; the container's lock is held
        throughout, so it cannot start meanwhile.
        """
        view = self.get(ref)
        async with self._locks.hold(view.id):
            view = self._views[view.id]
            target = self._layout.container_rootfs(view.id)
            if view.running:
                own = None
                if with_mounts and view.state.pid:
                    own = await asyncio.to_thread(
                        mountview.open_running_root, view.state.pid, target)
                try:
                    yield view, target if own is None else Path(f"/proc/self/fd/{own}")
                finally:
                    if own is not None:
                        os.close(own)
                return
            mounts = await self._snapshotter.mounts(view.id)
            await asyncio.to_thread(mountview.mount_rootfs, mounts, target)
            if with_mounts:
                await asyncio.to_thread(
                    mountview.bind_mounts, target,
                    self._volumes.inspect_mounts(view.id, with_subpath=True)
                )
            try:
                yield view, target
            finally:
                try:
                    # With volumes bound inside, detach the whole tree at once.
                    await asyncio.to_thread(mounting.unmount, target, with_mounts)
                except mounting.MountError:
                    # Still busy (a file left open in it): detach it now, it goes when
                    # the last user does; a later mount must not stack on top of it.
                    await asyncio.to_thread(mounting.unmount, target, True)

    def mounts(self, container_id: str) -> list[dict[str, Any]]:
        """Inspect's ``Mounts``: volumes, binds and tmpfs as dockerd describes them."""
        return self._volumes.inspect_mounts(container_id)

    def upper_dir(self, container_id: str) -> Path:
        """The rw layer's directory (what `docker diff` compares against the image)."""
        return self._snapshotter.writable_path(container_id)

    # ------------------------------------------------------------------ networks
    def network_settings(self, container_id: str) -> dict[str, Any]:
        """Inspect's NetworkSettings parts that come from the network manager."""
        view = self._views.get(container_id)
        running = view is not None and view.running
        endpoints = {self._networks.get(e.network_id).name: self._networks.endpoint_settings(e)
                     for e in self._networks.endpoints_of(container_id)}
        return {
            "Networks": endpoints,
            "SandboxKey": self._networks.sandbox_key(container_id) if running else "",
            "Ports": self._networks.bindings_of(container_id) if running else [],
            "Running": running,
        }

    async def connect_network(self, network: str, ref: str, settings: dict[str, Any]) -> None:
        """`docker network connect`, on a running or stopped container."""
        self._networks.get(network)  # 404 before anything else (B20)
        view = self.get(ref)
        async with self._locks.hold(view.id):
            view = self._views[view.id]
            mode = view.config.host_config.get("NetworkMode") or "default"
            netns_path = self._layout.netns_path(view.id) if view.running else None
            await self._networks.connect(view.id, view.name, mode, network, settings,
                                         netns_path)
            if view.running:
                await asyncio.to_thread(self._launcher.write_network_files, view)

    async def disconnect_network(self, network: str, ref: str, force: bool = False) -> None:
        net = self._networks.get(network)
        try:
            view = self.get(ref)
        except NotFound:
            if force:
                await self._networks.forget_in(ref, net.id)
                return
            raise
        async with self._locks.hold(view.id):
            view = self._views[view.id]
            netns_path = self._layout.netns_path(view.id) if view.running else None
            await self._networks.disconnect(view.id, network, netns_path)
            if view.running:
                await asyncio.to_thread(self._launcher.write_network_files, view)

    # ------------------------------------------------------------------ logs
    # ------------------------------------------------------------------ remove
    @timed("delete")
    async def remove(self, ref: str, force: bool = False, volumes: bool = False) -> None:
        view = self.get(ref)
        cid = view.id
        if cid in self._table.removing:
            raise Conflict(f"removal of container {cid} is already in progress")
        if view.state.status == Status.RESTARTING:
            if not force:
                raise Conflict(
                    f"You cannot remove a restarting container {cid}. Stop the container "
                    "before attempting removal or force remove"
                )
            await self._runs.stop_restarting(cid)
        if view.running and not force:
            if view.state.status == Status.PAUSED:
                raise Conflict(
                    f"You cannot remove a paused container {cid}. Unpause and then stop the "
                    "container before attempting removal or force remove"
                )
            raise Conflict(
                f"You cannot remove a running container {cid}. Stop the container before "
                "attempting removal or force remove"
            )
        self._table.removing.add(cid)
        try:
            if self._views[cid].running:
                waiter = self._table.exit_future(cid)
                await self._runs.signal(self._views[cid], signal.SIGKILL)
                await asyncio.shield(waiter)
            async with self._locks.hold(cid):
                await self._remove_locked(cid, remove_anonymous_volumes=volumes)
        finally:
            self._table.removing.discard(cid)

    async def _remove_locked(self, cid: str, remove_anonymous_volumes: bool = False) -> None:
        view = self._views.get(cid)
        if view is None:
            return
        await self._table.commit_state(cid, view.state.evolve(status=Status.REMOVING))
        runtime = self._runtimes.get(self.runtime_name(view))
        await self._launcher.teardown(cid, runtime, self._launcher.netns_of(view))
        with contextlib.suppress(NotFound):
            # Gone already when a removal killed half-way is finished by restore.
            await self._snapshotter.remove(cid)
        await self._networks.forget(cid)
        # `docker rm -v` and `--rm` take the container's anonymous volumes along.
        await self._volumes.release_container(
            cid, remove_anonymous=remove_anonymous_volumes or view.config.auto_remove
        )
        await asyncio.to_thread(shutil.rmtree, self._layout.container_dir(cid), True)
        await self._db.execute("DELETE FROM containers WHERE id = ?", (cid,))
        del self._views[cid]
        # An image force-removed while this container used it can go now.
        await self._images.collect_removed()
        io = self._table.io.pop(cid, None)
        if io is not None:
            io.disconnect()
            io.end_sessions()
        self._table.emit(view, "destroy")
        code = view.state.exit_code
        for future in self._table.removal_waiters.pop(cid, []):
            if not future.done():
                future.set_result(code)
        self._table.answer_exit_waiters(cid, code)

    async def prune(self, filters: dict[str, list[str]]) -> tuple[list[str], int]:
        """Remove every stopped container that matches ``until`` and ``label`` filters."""
        unknown = set(filters) - {"until", "label", "label!"}
        if unknown:
            raise InvalidParameter(f"invalid filter '{sorted(unknown)[0]}'")
        until = listing.parse_until(filters.get("until"))
        deleted: list[str] = []
        reclaimed = 0
        for view in list(self._views.values()):
            if view.running or view.state.status == Status.RESTARTING:
                continue
            if not listing.prune_matches(view, filters, until):
                continue
            size = await self._snapshotter.usage(view.id)
            try:
                await self.remove(view.id)
            except (Conflict, NotFound):
                continue
            deleted.append(view.id)
            reclaimed += size
        self._events.emit("container", "prune", "", {"reclaimed": str(reclaimed)})
        return deleted, reclaimed

    # ------------------------------------------------------------------ persistence
    # ------------------------------------------------------------------ restore / close
    async def restore(self, rebooted: bool = False) -> None:
        """Load every container and reconcile it with what survived (see Restorer)."""
        await self._restorer.run(rebooted)

    async def close(self) -> None:
        if not self._config.live_restore:
            running = [v for v in self._views.values() if v.running]
            await asyncio.gather(
                *(self._runs.stop_for_shutdown(v) for v in running), return_exceptions=True
            )
        await self._runs.close()
        pending = list(self._table.background)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for io in self._table.io.values():
            io.disconnect()
            io.end_sessions()


def _no_such_container(ref: str) -> NotFound:
    return NotFound(f"No such container: {ref}")
