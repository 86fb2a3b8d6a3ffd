"""Launcher: what a container's run needs before its process starts, and releasing it.

The rootfs mount, the network namespace and its files (hosts, resolv.conf, links), the
volume mounts, the OCI spec, conmon and `runc start`; ``teardown`` undoes all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
from collections.abc import Sequence
from pathlib import Path

from engine.config import EngineConfig
from engine.containers import etcfiles, logdrivers, mountview
from engine.containers.model import ContainerConfig, ContainerView
from engine.containers.runspec import build_container_spec
from engine.containers.table import ContainerTable
from engine.errors import Conflict, EngineError, InvalidParameter, NotFound, SystemError_
from engine.layout import Layout
from engine.networks import links, netns
from engine.networks.manager import NetworkManager, SandboxRequest
from engine.runtime.base import MonitorHandle, MonitorLaunch, OCIRuntime, RuntimeCreateError
from engine.runtime.conmon import ConmonMonitor
from engine.snapshots import mount as mounting
from engine.snapshots.overlay import OverlaySnapshotter
from engine.store.atomic import atomic_write
from engine.volumes.manager import VolumeManager


class Launcher:
    def __init__(
        self,
        *,
        config: EngineConfig,
        layout: Layout,
        table: ContainerTable,
        snapshotter: OverlaySnapshotter,
        monitor: ConmonMonitor,
        volumes: VolumeManager,
        networks: NetworkManager,
    ) -> None:
        self._config = config
        self._layout = layout
        self._table = table
        self._snapshotter = snapshotter
        self._monitor = monitor
        self._volumes = volumes
        self._networks = networks

    def reconfigure(self, config: EngineConfig) -> None:
        """A reloaded configuration (SIGHUP): used from the next operation on."""
        self._config = config

    def netns_of(self, view: ContainerView) -> Path | None:
        mode = view.config.host_config.get("NetworkMode") or "default"
        if mode == "host" or mode.startswith("container:"):
            return None
        return self._layout.netns_path(view.id)

    async def launch(self, view: ContainerView, runtime: OCIRuntime) -> MonitorHandle:
        """Mount, namespace, spec, conmon, attach, runc start. Undo everything on failure."""
        cid = view.id
        bundle = self._layout.container_dir(cid)
        rootfs = self._layout.container_rootfs(cid)
        mounts = await self._snapshotter.mounts(cid)
        await asyncio.to_thread(mountview.mount_rootfs, mounts, rootfs)
        netns_path = self.netns_of(view)
        handle: MonitorHandle | None = None
        io = self._table.io_of(cid)
        try:
            netns_path = await self._prepare_netns(view)
            linked = self._linked_env(view)
            await asyncio.to_thread(self.write_network_files, view)
            await asyncio.to_thread(links.save, bundle, linked)
            shared = self._shared_namespaces(view)
            volume_mounts = await self._volumes.mount_container(cid, rootfs)
            config_json = await asyncio.to_thread(
                build_container_spec, _with_link_env(view.config, linked), self._config,
                self._layout, netns_path, shared, volume_mounts,
            )
            await asyncio.to_thread(atomic_write, bundle / "config.json", config_json, 0o600)
            cfg = view.config
            log_settings = logdrivers.settings(cfg.host_config.get("LogConfig") or {})
            launch = MonitorLaunch(
                container_id=cid,
                name=cfg.name,
                bundle=bundle,
                log_path=self._layout.container_log(cid) if log_settings.writes_file else None,
                tty=cfg.tty,
                stdin=cfg.open_stdin,
                leave_stdin_open=cfg.open_stdin and not cfg.stdin_once,
            )
            try:
                handle = await self._monitor.create(launch, runtime)
            except RuntimeCreateError as exc:
                raise _start_error(exc.message) from None
            conn = await self._monitor.attach(handle)
            await io.connect(conn)
            height, width = (cfg.host_config.get("ConsoleSize") or [0, 0])[:2]
            if cfg.tty and height and width:
                await self._monitor.resize(handle, int(height), int(width))
            await runtime.start(cid)
            return handle
        except BaseException:
            await self.abort(cid, runtime, handle, netns_path)
            raise

    async def abort(
        self, cid: str, runtime: OCIRuntime, handle: MonitorHandle | None,
        netns_path: Path | None,
    ) -> None:
        """Undo a launch: kill what runs, then release everything it held."""
        self._table.io_of(cid).disconnect()
        if handle is not None:
            with contextlib.suppress(Exception):
                await runtime.kill(cid, signal.SIGKILL, all_processes=True)
            with contextlib.suppress(Exception):
                await self._monitor.wait_exit(handle)
        await self.teardown(cid, runtime, netns_path)

    def _shared_namespaces(self, view: ContainerView) -> dict[str, str]:
        """`--pid/--ipc/--uts container:<id>`: the other container's namespace files."""
        shared: dict[str, str] = {}
        for kind, key in (("pid", "PidMode"), ("ipc", "IpcMode"), ("uts", "UTSMode")):
            mode = view.config.host_config.get(key) or ""
            if not mode.startswith("container:"):
                continue
            other = self._table.get(mode.split(":", 1)[1])
            if not other.running:
                raise Conflict(f"cannot join {kind} of a non running container: {other.id}")
            shared[kind] = f"/proc/{other.state.pid}/ns/{kind}"
        return shared

    async def _prepare_netns(self, view: ContainerView) -> Path | None:
        mode = view.config.host_config.get("NetworkMode") or "default"
        if mode == "host":
            return None
        if mode.startswith("container:"):
            other = self._table.get(mode.split(":", 1)[1])
            if not other.running:
                raise Conflict(f"cannot join network of a non running container: {other.id}")
            return self._layout.netns_path(other.id)
        path = self._layout.netns_path(view.id)
        if not path.exists():
            await asyncio.to_thread(netns.create, path)
        hc, cfg = view.config.host_config, view.config.config
        await self._networks.plug(SandboxRequest(
            container_id=view.id, name=view.name, netns=path,
            exposed=cfg.get("ExposedPorts"), bindings=hc.get("PortBindings"),
            publish_all=bool(hc.get("PublishAllPorts")), dns=hc.get("Dns") or [],
        ), mode)
        return path

    def write_network_files(self, view: ContainerView) -> None:
        """/etc/hosts (own addresses, links, --add-host) and resolv.conf for this run.

        Rewritten in place: the files are bind-mounted, a rename would not be seen by a
        running container (network connect/disconnect)."""
        bundle = self._layout.container_dir(view.id)
        hc, cfg = view.config.host_config, view.config.config
        hostname = cfg.get("Hostname") or view.id[:12]
        domain = cfg.get("Domainname") or ""
        names = f"{hostname}.{domain} {hostname}" if domain else hostname
        own = [(address, names) for address in self._networks.addresses_of(view.id)]
        gateway = self._networks.gateway_of(view.id) or ""
        extra = [_host_gateway(entry, gateway) for entry in hc.get("ExtraHosts") or []]
        hosts = etcfiles.hosts_file(extra, [*self._link_entries(view), *own])
        resolv = etcfiles.resolv_conf(
            Path("/etc/resolv.conf"), hc.get("Dns") or [], hc.get("DnsSearch") or [],
            hc.get("DnsOptions") or [], embedded=self._networks.uses_embedded_dns(view.id),
        )
        for name, data in (("hosts", hosts), ("resolv.conf", resolv)):
            with open(bundle / name, "wb") as handle:
                handle.write(data)

    def _link_entries(self, view: ContainerView) -> list[tuple[str, str]]:
        """`--link name[:alias]`: hosts entries for the linked containers (one way)."""
        entries = []
        for name, alias in link_pairs(view.config.host_config.get("Links") or []):
            try:
                other = self._table.get(name)
            except NotFound:
                continue
            addresses = self._networks.addresses_of(other.id)
            if addresses:
                hostname = other.config.config.get("Hostname") or other.id[:12]
                names = " ".join(dict.fromkeys([alias, hostname, other.name]))
                entries.append((addresses[0], names))
        return entries

    def _linked_env(self, view: ContainerView) -> list[str]:
        """`--link name[:alias]` environment variables (dockerd's setupLinkedContainers):
        only for a container on the default bridge, each linked container must run."""
        if self._networks.default_bridge_endpoint(view.id) is None:
            return []
        env: list[str] = []
        for name, alias in link_pairs(view.config.host_config.get("Links") or []):
            try:
                child = self._table.get(name)
            except NotFound:
                continue  # removed since: dockerd's link graph forgets it too
            link_name = f"/{view.name}/{alias}"
            if not child.running:
                raise SystemError_(f"Cannot link to a non running container: /{child.name} "
                                   f"AS {link_name}")
            endpoint = self._networks.default_bridge_endpoint(child.id)
            if endpoint is None or endpoint.address is None:
                raise SystemError_(f"container {child.id} not attached to default bridge "
                                   "network")
            cfg = child.config.config
            env += links.link_env(link_name, endpoint.address, cfg.get("Env"),
                                  cfg.get("ExposedPorts"))
        return env

    async def teardown(
        self, cid: str, runtime: OCIRuntime | None, netns_path: Path | None,
        *, keep_exit_file: bool = False,
    ) -> None:
        """Release what a run held: runtime state, monitor files, volume mounts, rootfs
        mount, namespace. ``keep_exit_file``: conmon's files stay (an exit not yet
        saved: the exit file is its record)."""
        if runtime is not None:
            with contextlib.suppress(Exception):
                await runtime.delete(cid, force=True)
        if not keep_exit_file:
            bundle = self._layout.container_dir(cid)
            await asyncio.to_thread(self._monitor.cleanup, cid, bundle)
        with contextlib.suppress(EngineError):
            await self._volumes.unmount_container(cid)
        with contextlib.suppress(Exception):
            # Every mount stacked there (an interrupted `docker cp` may have left one).
            await asyncio.to_thread(mounting.unmount_all, self._layout.container_rootfs(cid))
        with contextlib.suppress(Exception):
            await self._networks.unplug(cid)
        own_netns = self._layout.netns_path(cid)
        if netns_path is None or netns_path == own_netns:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(netns.delete, own_netns)


def _start_error(message: str) -> EngineError:
    lowered = message.lower()
    if any(s in lowered for s in ("executable file not found", "no such file or directory",
                                  "permission denied", "is a directory")):
        return InvalidParameter(message)
    return SystemError_(message)


def _host_gateway(entry: str, gateway: str) -> str:
    """`--add-host name:host-gateway`: the gateway of the container's first network."""
    name, _, address = entry.partition(":")
    return f"{name}:{gateway}" if address == "host-gateway" and gateway else entry


def _with_link_env(record: ContainerConfig, linked: Sequence[str]) -> ContainerConfig:
    """The record as the spec sees it: link variables before the container's own Env,
    where dockerd puts them (the container's own win on a clash)."""
    if not linked:
        return record
    config = {**record.config, "Env": [*linked, *(record.config.get("Env") or [])]}
    return dataclasses.replace(record, config=config)


def link_pairs(links: Sequence[str]) -> list[tuple[str, str]]:
    """HostConfig.Links (``name:alias``, or dockerd's ``/name:/me/alias``) → pairs."""
    pairs = []
    for link in links:
        name, _, alias = link.partition(":")
        name = name.lstrip("/")
        alias = alias.rsplit("/", 1)[-1] if alias else name
        pairs.append((name, alias))
    return pairs
