"""Restorer: the containers as they were left, after a daemon stop or crash.

Loads every row, sweeps what no row names, re-adopts runs whose conmon survived, records
exits that happened while the daemon was down and applies restart policies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import sqlite3
from collections.abc import Awaitable, Callable

from engine.config import EngineConfig
from engine.containers import restart
from engine.containers.model import ContainerConfig, ContainerState, ContainerView
from engine.containers.runs import RunLifecycle
from engine.containers.state import ACTIVE, Status
from engine.containers.table import ContainerTable
from engine.errors import EngineError
from engine.ids import is_full_id
from engine.layout import Layout
from engine.networks.manager import NetworkManager
from engine.runtime.conmon import ConmonMonitor
from engine.snapshots import mount as mounting
from engine.snapshots.overlay import OverlaySnapshotter
from engine.volumes.manager import VolumeManager

log = logging.getLogger(__name__)


class Restorer:
    def __init__(
        self,
        *,
        config: EngineConfig,
        layout: Layout,
        table: ContainerTable,
        runs: RunLifecycle,
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
        self._monitor = monitor
        self._snapshotter = snapshotter
        self._volumes = volumes
        self._networks = networks
        # ContainerManager's removal, for rows marked removing and AutoRemove exits.
        self._remove_locked = remove_locked

    async def run(self, rebooted: bool = False) -> None:
        """Load every container; re-adopt running ones; record exits that happened while
        the daemon was down. Idempotent after any crash. After a host reboot nothing of
        ours survived: running containers become exited with 255 (dockerd's rule)."""
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
            return
        handle = None
        if not rebooted:
            handle = await asyncio.to_thread(
                self._monitor.load, cid, self._layout.container_dir(cid)
            )
        if handle is not None:
            io = self._table.io_of(cid)
            try:
                await io.connect(await self._monitor.attach(handle))
            except OSError:
                log.warning("container %s: attach socket gone; output only in the log", cid)
            self._runs.watch(handle)
            log.info("container %s re-adopted (pid %d)", cid, handle.init_pid)
            if not self._config.live_restore:
                # Without live-restore a daemon start stops what survived (dockerd, F1);
                # restart policies then bring their containers back, uncounted.
                self._runs.uncounted_restart.add(cid)
                self._table.spawn(self._runs.stop_for_shutdown(self._table.views[cid]))
            return
        code = await asyncio.to_thread(self._monitor.exit_code, cid)
        finished = await asyncio.to_thread(self._monitor.exit_time, cid)
        await self._runs.finish_run(cid, 255 if code is None else code, finished)
        view = self._table.views[cid]
        if view.config.auto_remove:
            await self._remove_locked(cid)

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
