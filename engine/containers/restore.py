"""Restorer: the containers as they were left, after a daemon stop or crash.

Loads every row, sweeps what no row names, re-adopts runs whose conmon survived, records
exits that happened while the daemon was down and applies restart policies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sqlite3
from collections.abc import Awaitable, Callable

from engine.config import EngineConfig
from engine.containers import restart
from engine.containers.launch import Launcher
from engine.containers.model import ContainerConfig, ContainerState, ContainerView
from engine.containers.runs import RunLifecycle
from engine.containers.state import ACTIVE, Status
from engine.containers.table import ContainerTable, now_rfc3339
from engine.errors import EngineError
from engine.ids import is_full_id
from engine.layout import Layout
from engine.networks.manager import NetworkManager
from engine.runtime.base import MonitorHandle, OCIRuntime
from engine.runtime.conmon import ConmonMonitor
from engine.snapshots import mount as mounting
from engine.snapshots.overlay import OverlaySnapshotter
from engine.volumes.manager import VolumeManager

log = logging.getLogger(__name__)

# How long restore waits for the conmon of a run it ended to go.
CONMON_EXIT_WAIT = 5.0


class Restorer:
    def __init__(
        self,
        *,
        config: EngineConfig,
        layout: Layout,
        table: ContainerTable,
        runs: RunLifecycle,
        launcher: Launcher,
        monitor: ConmonMonitor,
        snapshotter: OverlaySnapshotter,
        volumes: VolumeManager,
        networks: NetworkManager,
        remove_locked: Callable[[str], Awaitable[None]],
    ) -> None:
        self._config = config
        self._layout = layout
        self._table = table
        self._runs = runs
        self._launcher = launcher
        self._monitor = monitor
        self._snapshotter = snapshotter
        self._volumes = volumes
        self._networks = networks
        # ContainerManager's removal, for rows marked removing and AutoRemove exits.
        self._remove_locked = remove_locked

    def reconfigure(self, config: EngineConfig) -> None:
        """A reloaded configuration (SIGHUP): used from the next operation on."""
        self._config = config

    async def run(self, rebooted: bool = False) -> None:
        """Load every container; re-adopt running ones; record exits that happened while
        the daemon was down; reconcile the others with what the host still holds of
        them. Idempotent after any crash. After a host reboot nothing of ours survived:
        running containers become exited with 255 (dockerd's rule)."""
        rows = await self._table.db.query("SELECT id, config, state FROM containers")
        for row in rows:
            record = ContainerConfig.from_json(row["config"])
            state = ContainerState.from_json(row["state"])
            self._table.views[record.id] = ContainerView(record, state)
        await self._sweep_orphans({row["id"] for row in rows})
        await self._volumes.forget_containers_except({row["id"] for row in rows})
        for view in list(self._table.views.values()):
            try:
                await self._restore_one(view, rebooted)
            except Exception:
                log.exception("restoring container %s failed", view.id)
        running = {v.id: self._layout.netns_path(v.id) for v in self._table.views.values()
                   if v.running}
        try:
            await self._networks.reconcile(running, self._table.views.keys())
        except Exception:
            log.exception("restoring container networking failed")
        for view in list(self._table.views.values()):
            state = view.state
            policy = view.config.host_config.get("RestartPolicy") or {}
            if state.status in (Status.EXITED, Status.RESTARTING) and state.has_been_started:
                if restart.restart_on_daemon_start(
                    policy, state.exit_code, state.restart_count, state.manually_stopped
                ):
                    # As dockerd: started again right away, RestartCount unchanged (F1).
                    self._table.spawn(self._runs.start_on_daemon_start(view.id))

    async def _restore_one(self, view: ContainerView, rebooted: bool) -> None:
        cid = view.id
        status = view.state.status
        if status == Status.REMOVING:
            await self._remove_locked(cid)
            return
        if status not in ACTIVE:
            await self._reconcile_stopped(view, rebooted)
            return
        handle = None
        if not rebooted:
            handle = await asyncio.to_thread(
                self._monitor.load, cid, self._layout.container_dir(cid)
            )
        if handle is not None:
            await self._attach_io(cid, handle)
            self._runs.watch(handle)
            log.info("container %s re-adopted (pid %d)", cid, handle.init_pid)
            if view.state.paused_by_commit:
                await self._thaw_after_commit(view)
            self._stop_without_live_restore(cid)
            return
        code = await asyncio.to_thread(self._monitor.exit_code, cid)
        finished = await asyncio.to_thread(self._monitor.exit_time, cid)
        await self._runs.finish_run(cid, 255 if code is None else code, finished)
        view = self._table.views[cid]
        if view.config.auto_remove:
            await self._remove_locked(cid)

    def _stop_without_live_restore(self, cid: str) -> None:
        if not self._config.live_restore:
            # Without live-restore a daemon start stops what survived (dockerd, F1);
            # restart policies then bring their containers back, uncounted.
            self._runs.uncounted_restart.add(cid)
            self._table.spawn(self._runs.stop_for_shutdown(self._table.views[cid]))

    async def _thaw_after_commit(self, view: ContainerView) -> None:
        """The daemon died inside `docker commit`, which had paused the container (or
        was about to): thaw it, as the commit would have."""
        runtime = self._runs.runtime_or_none(view)
        if runtime is not None:
            with contextlib.suppress(EngineError):
                await runtime.resume(view.id)
        state = view.state.evolve(status=Status.RUNNING, paused_by_commit=False)
        await self._table.commit_state(view.id, state)
        log.info("container %s: unpaused, the commit that paused it was interrupted", view.id)

    async def _reconcile_stopped(self, view: ContainerView, rebooted: bool) -> None:
        """A container whose row says it is not running (created, exited, restarting):
        a daemon killed in the middle of a start, an exit or a removal may have left its
        run behind. A run that is really going (conmon alive, runc says running) is
        adopted; anything else of a run (runc state, conmon, rootfs mount, namespace,
        volume mounts, cgroup) is released, so the next start begins clean."""
        cid = view.id
        runtime = self._runs.runtime_or_none(view)
        left = await asyncio.to_thread(self._run_leftovers, view, runtime)
        if not left:
            return
        handle = None
        if not rebooted:
            handle = await asyncio.to_thread(
                self._monitor.load, cid, self._layout.container_dir(cid)
            )
        if handle is not None and runtime is not None:
            with contextlib.suppress(EngineError):
                live = await runtime.state(cid)
                if live is not None and live.status == "running":
                    await self._adopt(view, handle)
                    return
        log.info("container %s (%s): releasing what an interrupted run left: %s",
                 cid, view.state.status, ", ".join(left))
        if runtime is not None:
            with contextlib.suppress(EngineError):
                await runtime.delete(cid, force=True)
        if handle is not None:
            # conmon goes once its container has; let it finish before its files go.
            with contextlib.suppress(TimeoutError, EngineError, OSError):
                await asyncio.wait_for(self._monitor.wait_exit(handle), CONMON_EXIT_WAIT)
        await self._launcher.teardown(cid, runtime, self._launcher.netns_of(view))

    def _run_leftovers(self, view: ContainerView, runtime: OCIRuntime | None) -> list[str]:
        """What of a run is on the host (cheap checks, blocking)."""
        cid = view.id
        found = []
        if runtime is not None and (runtime.root / cid).exists():
            found.append("runtime state")
        if self._layout.conmon_dir(cid).exists():
            found.append("monitor files")
        if os.path.ismount(self._layout.container_rootfs(cid)):
            found.append("rootfs mount")
        netns_path = self._launcher.netns_of(view)
        if netns_path is not None and netns_path.exists():
            found.append("network namespace")
        if self._volumes.has_active_mounts(cid):
            found.append("volume mounts")
        return found

    async def _adopt(self, view: ContainerView, handle: MonitorHandle) -> None:
        """A run its row never recorded (the daemon died inside start): it is running,
        so record it as such and watch it like any other."""
        cid = view.id
        state = view.state.evolve(
            status=Status.RUNNING, pid=handle.init_pid, conmon_pid=handle.conmon_pid,
            exit_code=0, error="", oom_killed=False, started_at=now_rfc3339(),
            has_been_started=True, manually_stopped=False,
        )
        await self._table.commit_state(cid, state)
        await self._attach_io(cid, handle)
        self._runs.watch(handle)
        log.info("container %s adopted: its start was interrupted (pid %d)", cid,
                 handle.init_pid)
        self._stop_without_live_restore(cid)

    async def _attach_io(self, cid: str, handle: MonitorHandle) -> None:
        io = self._table.io_of(cid)
        try:
            await io.connect(await self._monitor.attach(handle))
        except OSError:
            log.warning("container %s: attach socket gone; output only in the log", cid)

    async def _sweep_orphans(self, known: set[str]) -> None:
        """Container directories and rw snapshots that no committed row names."""
        def sweep() -> list[str]:
            gone = []
            for entry in self._layout.containers_dir.iterdir():
                if entry.name not in known:
                    with contextlib.suppress(Exception):
                        mounting.unmount(entry / "rootfs")
                    shutil.rmtree(entry, ignore_errors=True)
                    gone.append(entry.name)
            return gone

        removed = await asyncio.to_thread(sweep)
        # rw snapshots are keyed by container id; one without a row is a crashed create.
        stray = [key for key in self._snapshotter.keys() if is_full_id(key) and key not in known]
        for orphan in sorted(set(removed) | set(stray)):
            with contextlib.suppress(EngineError, sqlite3.Error):
                await self._snapshotter.remove(orphan)
        if removed:
            log.info("removed %d orphaned container directories", len(removed))
