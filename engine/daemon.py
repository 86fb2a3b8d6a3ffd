"""Engine: the composition root. Builds the managers from the config, restores, closes.

No logic lives here beyond wiring and ordering.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
from pathlib import Path

from engine.builder.manager import BuildManager
from engine.config import EngineConfig
from engine.containers.exec import ExecManager
from engine.containers.files import ContainerFiles
from engine.containers.health import HealthChecker
from engine.containers.manager import ContainerManager
from engine.events import EventBus
from engine.images.manager import ImageManager
from engine.layout import Layout
from engine.networks.manager import NetworkManager
from engine.runtime.cli import RuncCLI
from engine.runtime.conmon import ConmonMonitor
from engine.snapshots.overlay import OverlaySnapshotter
from engine.store.atomic import atomic_write, ensure_dir
from engine.store.content import ContentStore
from engine.store.db import Database
from engine.swarm.cluster import SwarmManager
from engine.system.info import ENGINE_VERSION, SystemInfo
from engine.system.usage import DiskUsage
from engine.volumes.manager import VolumeManager

log = logging.getLogger(__name__)

BOOT_ID = "/proc/sys/kernel/random/boot_id"


class Engine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.layout = Layout(data_root=config.data_root, exec_root=config.exec_root)
        self.db = Database(self.layout.db_path)
        self.events = EventBus()
        self.content = ContentStore(self.layout)
        self.snapshotter = OverlaySnapshotter(self.layout, self.db)
        self.images = ImageManager(
            self.layout, self.db, self.events, self.content, self.snapshotter, config
        )
        self.volumes = VolumeManager(self.layout, self.db, self.events)
        self.runtimes = RuncCLI.from_config(config, self.layout)
        self.monitor = ConmonMonitor(self.layout)
        # The nftables table is named after the data root: daemons sharing a namespace
        # never touch each other's rules, and a restart finds its own again.
        table_suffix = hashlib.sha256(str(config.data_root).encode()).hexdigest()[:8]
        self.networks = NetworkManager(config, self.db, self.events, table_suffix)
        self.containers = ContainerManager(
            config=config,
            layout=self.layout,
            db=self.db,
            events=self.events,
            images=self.images,
            snapshotter=self.snapshotter,
            runtimes=self.runtimes,
            monitor=self.monitor,
            volumes=self.volumes,
            networks=self.networks,
        )
        self.images.set_usage_source(self.containers.containers_using_image)
        self.execs = ExecManager(
            self.containers, self.monitor, self.layout, self.events, self.runtimes
        )
        self.containers.set_exec_source(self.execs.exec_ids)
        self.health = HealthChecker(self.containers, self.execs, self.events)
        self.container_files = ContainerFiles(
            self.containers, config, self.events, self.snapshotter.mounts
        )
        self.system = SystemInfo(config, self.layout, self.runtimes)
        self.builder = BuildManager(self.db, self.layout, self.images, self.containers)
        self.usage = DiskUsage(self.images, self.containers, self.volumes, self.snapshotter)
        self.swarm = SwarmManager(self.layout, ENGINE_VERSION)

    async def start(self) -> None:
        rebooted = await asyncio.to_thread(self._note_boot)
        await asyncio.to_thread(self._prepare_dirs)
        await self.db.open()
        await self.content.cleanup()
        await self.snapshotter.cleanup()
        await self.images.load()
        await self.volumes.load()
        await self._probe_runtimes()
        await self.system.probe(self.runtimes)
        await self.networks.load()
        await self.containers.restore(rebooted=rebooted)
        await self.health.start()
        # After containers and networks (a manager's work will drive them); it does not
        # wait for etcd, so a restarted swarm node answers at once.
        await self.swarm.start()
        log.info("engine started (data root %s)", self.layout.data_root)

    async def _probe_runtimes(self) -> None:
        """Offer only runtimes that can run a container on this host (crun 1.8 refuses
        hybrid cgroup layouts); the default runtime must work or the daemon does not start."""
        for name, runtime in list(self.runtimes.items()):
            try:
                await runtime.probe()
            except Exception as exc:
                if name == self.config.default_runtime:
                    raise
                log.warning("runtime %s is not usable here and is not offered: %s", name, exc)
                del self.runtimes[name]

    def _note_boot(self) -> bool:
        """True when the host rebooted since the exec root was last used.

        The exec root is not necessarily a tmpfs, so the kernel's boot_id tells: after a
        reboot no conmon and no container of ours is alive, and the runtime state left
        under the exec root describes processes that no longer exist.
        """
        current = Path(BOOT_ID).read_text().strip()
        marker = self.layout.boot_id_file
        try:
            previous: str | None = marker.read_text().strip()
        except FileNotFoundError:
            previous = None
        rebooted = previous is not None and previous != current
        if rebooted:
            log.warning("host rebooted since the last start: discarding runtime state")
            for stale in (self.layout.runtime_root, self.layout.conmon_root, self.layout.sock_dir,
                          self.layout.netns_dir):
                shutil.rmtree(stale, ignore_errors=True)
        ensure_dir(self.layout.exec_root, 0o700)
        atomic_write(marker, (current + "\n").encode(), mode=0o644)
        return rebooted

    def _prepare_dirs(self) -> None:
        for path, mode in self.layout.persistent_dirs() + self.layout.volatile_dirs():
            ensure_dir(path, mode)
        # tmp/ holds only unfinished work of a previous run: nothing in it is referenced.
        for entry in self.layout.tmp_dir.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    async def close(self) -> None:
        # The local etcd member keeps running, as containers do (live-restore).
        await self.swarm.close()
        await self.health.close()
        await self.execs.close()
        await self.containers.close()
        await self.networks.close()
        await self.images.close()
        await self.volumes.close()
        await self.db.close()
        log.info("engine closed")
