"""ConfigRecords: a container's configuration record: create, update, rename, links.

Create checks every input before anything is stored, then makes the rw snapshot and the
bundle directory and commits the row last (crash safety); update, rename and link
removal rewrite the record in one statement and publish the new view.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.config import EngineConfig
from engine.containers import (
    createconfig,
    etcfiles,
    logdrivers,
    naming,
    resources,
    spec,
    unapplied,
)
from engine.containers.model import ContainerConfig, ContainerState, ContainerView
from engine.containers.runspec import (
    live_resources,
    store_system_paths,
    swap_accounting,
    validate_host_config,
)
from engine.containers.table import ContainerTable, now_rfc3339
from engine.errors import Conflict, EngineError, InvalidParameter, NotFound, SystemError_
from engine.ids import new_id
from engine.images.manager import ImageManager
from engine.layout import Layout
from engine.networks.manager import NetworkManager
from engine.runtime.base import OCIRuntime
from engine.snapshots.overlay import OverlaySnapshotter
from engine.store.atomic import atomic_write, fsync_dir
from engine.volumes.manager import VolumeManager

# HostConfig keys `docker update` may change (moby's container.UpdateConfig).
UPDATABLE = frozenset({
    "CpuShares", "Memory", "NanoCpus", "CgroupParent", "BlkioWeight", "CpuPeriod", "CpuQuota",
    "CpuRealtimePeriod", "CpuRealtimeRuntime", "CpusetCpus", "CpusetMems", "MemoryReservation",
    "MemorySwap", "MemorySwappiness", "OomKillDisable", "PidsLimit", "KernelMemory",
})


class ConfigRecords:
    def __init__(
        self,
        *,
        config: EngineConfig,
        layout: Layout,
        table: ContainerTable,
        images: ImageManager,
        snapshotter: OverlaySnapshotter,
        runtimes: dict[str, Any],
        volumes: VolumeManager,
        networks: NetworkManager,
    ) -> None:
        self._config = config
        self._layout = layout
        self._table = table
        self._images = images
        self._snapshotter = snapshotter
        self._runtimes: dict[str, OCIRuntime] = runtimes
        self._volumes = volumes
        self._networks = networks

    def reconfigure(self, config: EngineConfig) -> None:
        """A reloaded configuration (SIGHUP): used from the next operation on."""
        self._config = config

    async def create(
        self, body: dict[str, Any], name: str | None, platform: str | None = None
    ) -> tuple[str, list[str]]:
        config_in = dict(body)
        host_in = dict(config_in.pop("HostConfig", None) or {})
        networking = dict(config_in.pop("NetworkingConfig", None) or {})
        image_ref = config_in.get("Image") or ""
        if name:
            name = naming.validate_name(name)
        if not image_ref:
            raise InvalidParameter("No image specified")  # dockerd: config without Image
        image = await self._images.get(image_ref)
        if platform:
            _check_platform(platform, image_ref, image.config)
        spec.validate_env(config_in.get("Env") or [])
        createconfig.validate_restart_policy(host_in)
        unapplied.refuse_unapplied(host_in)
        warnings = await asyncio.to_thread(unapplied.discard_unsupported, host_in)
        runtime = host_in.get("Runtime") or ""
        if runtime and runtime not in self._runtimes:
            raise InvalidParameter(f"Unknown runtime specified {runtime}")

        container_id = new_id()
        merged = createconfig.merge_image_config(config_in, image.config.get("config") or {})
        argv = createconfig.command_line(merged)
        config = createconfig.fill_config(merged, image_ref, container_id[:12])
        host_in["LogConfig"] = logdrivers.with_daemon_defaults(
            host_in.get("LogConfig") or {}, self._config.log_driver, self._config.log_opts
        )
        logdrivers.settings(host_in["LogConfig"])
        host_config = createconfig.fill_host_config(host_in, self._config.default_shm_size)
        host_config["Runtime"] = runtime or self._config.default_runtime
        await asyncio.to_thread(store_system_paths, host_config)
        # As dockerd, the default swap (twice the memory limit) is stored in HostConfig,
        # so inspect shows it and `docker update --memory` keeps it.
        swap_supported = await asyncio.to_thread(swap_accounting)
        host_config["MemorySwap"] = resources.swap_limit(
            host_config.get("Memory") or 0, host_config.get("MemorySwap") or 0, swap_supported
        )
        record = ContainerConfig(
            id=container_id,
            name="",
            image_ref=image_ref,
            image_id=image.id,
            created=now_rfc3339(),
            config=config,
            host_config=host_config,
            networking=networking,
            path=argv[0],
            args=tuple(argv[1:]),
        )
        # The OCI spec is built at start (it needs the mounted rootfs); check its inputs now
        # so that bad values are a 400 at create, as in current dockerd.
        await asyncio.to_thread(validate_host_config, record, self._config, self._layout)
        self._networks.check_container(host_config, config, networking)
        # Mounts are planned (and named volumes created, B12 checked) before the name is
        # taken; a crash in between leaves plans that restore's sweep forgets.
        await self._volumes.create_container_mounts(
            container_id, config, host_config, image.config.get("config") or {},
            lambda ref: self._table.get(ref).id,
        )
        try:
            async with self._table.name_lock:
                chosen = name or naming.generate_name({v.name for v in self._table.views.values()})
                self._check_name_free(chosen)
                record = ContainerConfig(**{**record.__dict__, "name": chosen})
                # Reserve the name in the view before any await: a racing create gets 409.
                self._table.views[container_id] = ContainerView(record, ContainerState())
            await self._materialise(record, image.top_layer)
            await self._networks.attach(container_id, chosen, host_config, networking,
                                        legacy_mac=str(config_in.get("MacAddress") or ""))
        except BaseException:
            self._table.views.pop(container_id, None)
            with contextlib.suppress(Exception):
                await self._networks.forget(container_id)
            await self._volumes.release_container(container_id, remove_anonymous=True)
            raise
        self._table.emit(self._table.views[container_id], "create")
        return container_id, warnings

    def _check_name_free(self, name: str) -> None:
        for view in self._table.views.values():
            if view.name == name:
                raise Conflict(
                    f'Conflict. The container name "/{name}" is already in use by container '
                    f'"{view.id}". You have to remove (or rename) that container to be able '
                    "to reuse that name."
                )

    async def _materialise(self, record: ContainerConfig, parent_layer: str | None) -> None:
        """Snapshot, bundle directory, then the row: the row commits last (crash safety)."""
        await self._snapshotter.prepare(record.id, parent_layer)
        try:
            await asyncio.to_thread(self._write_bundle_dir, record)
            state = ContainerState()
            await self._table.db.transaction(
                lambda conn: conn.execute(
                    "INSERT INTO containers (id, name, image_id, config, state, created) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (record.id, record.name, record.image_id, record.to_json(),
                     state.to_json(), time.time()),
                )
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(
                    shutil.rmtree, self._layout.container_dir(record.id), True
                )
                await self._snapshotter.remove(record.id)
            raise

    def _write_bundle_dir(self, record: ContainerConfig) -> None:
        staging = self._layout.tmp_dir / f"ctr-{record.id}"
        staging.mkdir(mode=0o710)
        (staging / "rootfs").mkdir(mode=0o755)
        hc = record.host_config
        files = {
            "hostname": etcfiles.hostname_file(record.config["Hostname"]),
            "hosts": etcfiles.hosts_file(hc.get("ExtraHosts") or []),
            "resolv.conf": etcfiles.resolv_conf(
                Path("/etc/resolv.conf"), hc.get("Dns") or [], hc.get("DnsSearch") or [],
                hc.get("DnsOptions") or [],
            ),
        }
        for file_name, data in files.items():
            atomic_write(staging / file_name, data, mode=0o644)
        fsync_dir(staging)
        staging.rename(self._layout.container_dir(record.id))
        fsync_dir(self._layout.containers_dir)

    async def update(self, ref: str, changes: dict[str, Any]) -> list[str]:
        """`docker update`: new limits and restart policy, kept and applied live."""
        view = self._table.get(ref)
        async with self._table.locks.hold(view.id):
            view = self._table.views[view.id]
            host_config = dict(view.config.host_config)
            for key, value in changes.items():
                # As dockerd: a zero or empty value in the body means "leave it".
                if key in UPDATABLE and value not in (None, 0, ""):
                    host_config[key] = value
            if changes.get("RestartPolicy"):
                host_config["RestartPolicy"] = createconfig.fill_host_config(
                    {"RestartPolicy": changes["RestartPolicy"]}
                )["RestartPolicy"]
                createconfig.validate_restart_policy(host_config)
            record = ContainerConfig(**{**view.config.__dict__, "host_config": host_config})
            await asyncio.to_thread(validate_host_config, record, self._config, self._layout)
            if view.running:
                await self._apply_live_resources(record)
            await self._table.db.execute(
                "UPDATE containers SET config = ? WHERE id = ?", (record.to_json(), view.id)
            )
            view = ContainerView(record, view.state, view.image_names, view.exec_ids)
            self._table.views[view.id] = view
        self._table.emit(view, "update")
        return []

    async def remove_link(self, link_name: str) -> None:
        """``DELETE /containers/<parent>/<alias>?link=1``: forget the parent's legacy link
        named ``alias`` (dockerd's rmLink). Its /etc/hosts entry and variables go at the
        parent's next start."""
        parent_ref, _, alias = link_name.strip("/").rpartition("/")
        if not parent_ref:
            raise Conflict("Conflict, cannot remove the default link name of the container")
        try:
            parent = self._table.get(parent_ref)
        except NotFound:
            raise NotFound(f"Cannot get parent /{parent_ref} for link name /{link_name.strip('/')}"
                           ) from None
        async with self._table.locks.hold(parent.id):
            parent = self._table.views[parent.id]
            links = list(parent.config.host_config.get("Links") or [])
            kept = [entry for entry in links if _link_alias(entry) != alias]
            if len(kept) == len(links):
                raise NotFound(f"No such container: {link_name}")
            record = ContainerConfig(**{**parent.config.__dict__, "host_config": {
                **parent.config.host_config, "Links": kept or None}})
            await self._table.db.execute(
                "UPDATE containers SET config = ? WHERE id = ?", (record.to_json(), parent.id)
            )
            self._table.views[parent.id] = ContainerView(record, parent.state, parent.image_names,
                                                   parent.exec_ids)

    async def _apply_live_resources(self, record: ContainerConfig) -> None:
        data = await asyncio.to_thread(live_resources, record, self._config, self._layout)
        path = self._layout.container_dir(record.id) / "resources.json"
        await asyncio.to_thread(atomic_write, path, data, 0o600)
        runtime = self._runtimes.get(record.host_config.get("Runtime") or "")
        runtime = runtime or self._runtimes[self._config.default_runtime]
        try:
            await runtime.update(record.id, path)
        except EngineError as exc:
            raise SystemError_(f"Cannot update container {record.id}: {exc}") from None

    async def rename(self, ref: str, new_name: str) -> None:
        view = self._table.get(ref)
        if not new_name:
            raise InvalidParameter("Neither old nor new names may be empty")
        name = naming.validate_name(new_name)
        async with self._table.name_lock, self._table.locks.hold(view.id):
            view = self._table.views[view.id]
            if name == view.name:
                raise InvalidParameter(
                    "Renaming a container with the same name as its current name"
                )
            try:
                self._check_name_free(name)
            except Conflict as exc:
                raise Conflict(f"Error when allocating new name: {exc}") from None
            old_name = view.name
            record = ContainerConfig(**{**view.config.__dict__, "name": name})
            await self._table.db.execute(
                "UPDATE containers SET name = ?, config = ? WHERE id = ?",
                (name, record.to_json(), view.id),
            )
            view = ContainerView(record, view.state, view.image_names, view.exec_ids)
            self._table.views[view.id] = view
            await self._networks.rename(view.id, name)
        self._table.emit(view, "rename", {"oldName": f"/{old_name}"})


def _check_platform(platform: str, ref: str, image_config: Mapping[str, Any]) -> None:
    """`docker run --platform`: the local image must be for that platform (a 404 makes the
    CLI pull the right one, as with dockerd)."""
    wanted_os, _, rest = platform.lower().partition("/")
    wanted_arch = rest.split("/", 1)[0]
    actual_os = str(image_config.get("os") or "linux")
    actual_arch = str(image_config.get("architecture") or "amd64")
    if (wanted_os and wanted_os != actual_os) or (wanted_arch and wanted_arch != actual_arch):
        raise NotFound(
            f"image with reference {ref} was found but does not match the specified "
            f"platform: wanted {platform}, actual: {actual_os}/{actual_arch}"
        )


def _link_alias(entry: str) -> str:
    """A HostConfig.Links entry (``name[:alias]``, names possibly ``/``-prefixed) → the
    alias it is known by in the linking container."""
    name, _, alias = str(entry).partition(":")
    return (alias or name).strip("/").rpartition("/")[2]
