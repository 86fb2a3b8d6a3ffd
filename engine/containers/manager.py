"""ContainerManager: create, start, stop, kill, wait, attach, logs, remove, restore.

State changes follow one pattern: take the container's lock, act, commit the new state
to SQLite, then publish a new frozen ``ContainerView`` (readers never lock). Exit codes
come from conmon's exit file, never only from memory, so they survive a daemon crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import shutil
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.config import EngineConfig
from engine.containers import (
    createconfig,
    detachkeys,
    etcfiles,
    healthcheck,
    listing,
    logdrivers,
    mountview,
    naming,
    resources,
    restart,
    spec,
)
from engine.containers.logs import LogRecord, read_logs
from engine.containers.model import ContainerConfig, ContainerState, ContainerView
from engine.containers.runspec import (
    build_container_spec,
    live_resources,
    swap_accounting,
    validate_host_config,
)
from engine.containers.signals import parse_signal
from engine.containers.state import ACTIVE, Status
from engine.containers.streams import ContainerIO, Session, StreamSet
from engine.errors import (
    Conflict,
    EngineError,
    InvalidParameter,
    NotFound,
    NotModified,
    NotSupported,
    SystemError_,
)
from engine.events import EventBus
from engine.ids import is_full_id, new_id, resolve
from engine.images.manager import ImageManager
from engine.layout import Layout
from engine.locks import KeyedLock
from engine.networks import links, netns
from engine.networks.manager import NetworkManager, SandboxRequest
from engine.runtime.base import MonitorHandle, MonitorLaunch, OCIRuntime, RuntimeCreateError
from engine.runtime.conmon import ConmonMonitor
from engine.snapshots import mount as mounting
from engine.snapshots.overlay import OverlaySnapshotter
from engine.store.atomic import atomic_write, fsync_dir
from engine.store.db import Database
from engine.volumes.manager import VolumeManager

log = logging.getLogger(__name__)

# HostConfig keys `docker update` may change (moby's container.UpdateConfig).
UPDATABLE = frozenset({
    "CpuShares", "Memory", "NanoCpus", "CgroupParent", "BlkioWeight", "CpuPeriod", "CpuQuota",
    "CpuRealtimePeriod", "CpuRealtimeRuntime", "CpusetCpus", "CpusetMems", "MemoryReservation",
    "MemorySwap", "MemorySwappiness", "OomKillDisable", "PidsLimit", "KernelMemory",
})
WAIT_CONDITIONS = frozenset({"not-running", "next-exit", "removed"})
DEFAULT_STOP_TIMEOUT = 10
ROTATE_CHECK = 0.25
KILL_WAIT = 10.0
LIST_FILTERS = frozenset(
    {"id", "name", "label", "status", "ancestor", "exited", "before", "since", "health",
     "isolation", "is-task", "network", "publish", "expose", "volume"}
)


def now_rfc3339(at: float | None = None) -> str:
    """RFC 3339 UTC with nanoseconds; ``at`` (unix seconds) instead of now when given."""
    ns = time.time_ns() if at is None else int(at * 1_000_000_000)
    stamp = datetime.fromtimestamp(ns // 1_000_000_000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ns % 1_000_000_000:09d}Z"


def _start_exit_code(message: str) -> int:
    """dockerd's mapping of a failed start to an exit code (and `docker run`'s)."""
    lowered = message.lower()
    if "permission denied" in lowered or "is a directory" in lowered:
        return 126
    return 127


def _start_error(message: str) -> EngineError:
    lowered = message.lower()
    if any(s in lowered for s in ("executable file not found", "no such file or directory",
                                  "permission denied", "is a directory")):
        return InvalidParameter(message)
    return SystemError_(message)


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
        self._views: dict[str, ContainerView] = {}
        self._locks = KeyedLock()
        self._name_lock = asyncio.Lock()
        self._io: dict[str, ContainerIO] = {}
        self._handles: dict[str, MonitorHandle] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._exit_waiters: dict[str, list[asyncio.Future[int]]] = {}
        self._removal_waiters: dict[str, list[asyncio.Future[int]]] = {}
        self._removing: set[str] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._restarts: dict[str, asyncio.Task[None]] = {}
        self._rotators: dict[str, asyncio.Task[None]] = {}
        self._uncounted_restart: set[str] = set()
        self._backoff: dict[str, float] = {}
        self._started_mono: dict[str, float] = {}

    # ------------------------------------------------------------------ read side
    def get(self, ref: str) -> ContainerView:
        return resolve(ref, self._views, lambda v: v.name, _no_such_container)

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
        view = self._views.get(container_id)
        return view is not None and view.running

    def log_path(self, container_id: str) -> Path:
        return self._layout.container_log(container_id)

    def runtime_name(self, view: ContainerView) -> str:
        return view.config.host_config.get("Runtime") or self._config.default_runtime

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

    # ------------------------------------------------------------------ create
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
            lambda ref: self.get(ref).id,
        )
        try:
            async with self._name_lock:
                chosen = name or naming.generate_name({v.name for v in self._views.values()})
                self._check_name_free(chosen)
                record = ContainerConfig(**{**record.__dict__, "name": chosen})
                # Reserve the name in the view before any await: a racing create gets 409.
                self._views[container_id] = ContainerView(record, ContainerState())
            await self._materialise(record, image.top_layer)
            await self._networks.attach(container_id, chosen, host_config, networking,
                                        legacy_mac=str(config_in.get("MacAddress") or ""))
        except BaseException:
            self._views.pop(container_id, None)
            with contextlib.suppress(Exception):
                await self._networks.forget(container_id)
            await self._volumes.release_container(container_id, remove_anonymous=True)
            raise
        self._emit(self._views[container_id], "create")
        return container_id, []

    def _check_name_free(self, name: str) -> None:
        for view in self._views.values():
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
            await self._db.transaction(
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

    # ------------------------------------------------------------------ start
    async def start(self, ref: str) -> None:
        view = self.get(ref)
        async with self._locks.hold(view.id):
            view = self._views[view.id]
            status = view.state.status
            if status == Status.RUNNING:
                raise NotModified("container already started")
            if status == Status.PAUSED:
                raise Conflict("cannot start a paused container, try unpause instead")
            if status in (Status.REMOVING, Status.DEAD) or view.id in self._removing:
                raise Conflict(f"container {view.id} is marked for removal and cannot be started")
            self._cancel_restart(view.id)
            await self._start_locked(view)

    async def _start_locked(self, view: ContainerView) -> None:
        cid = view.id
        runtime = self._runtimes.get(self.runtime_name(view))
        if runtime is None:
            raise InvalidParameter(f"Unknown runtime specified {self.runtime_name(view)}")
        try:
            handle = await self._launch(view, runtime)
        except EngineError as exc:
            await self._record_start_failure(view, exc)
            raise
        # A healthcheck starts as "starting" before start returns, as with dockerd.
        health = None
        if healthcheck.probe_command(view.config.config.get("Healthcheck")) is not None:
            health = {"Status": "starting", "FailingStreak": 0, "Log": []}
        state = view.state.evolve(
            status=Status.RUNNING, pid=handle.init_pid, conmon_pid=handle.conmon_pid,
            exit_code=0, error="", oom_killed=False, started_at=now_rfc3339(),
            finished_at=view.state.finished_at, has_been_started=True, manually_stopped=False,
            health=health,
        )
        view = await self._commit_state(cid, state)
        self._started_mono[cid] = time.monotonic()
        self._emit(view, "start")
        self._watch(handle)
        self._start_log_rotation(view, handle)

    async def _launch(self, view: ContainerView, runtime: OCIRuntime) -> MonitorHandle:
        """Mount, namespace, spec, conmon, attach, runc start. Undo everything on failure."""
        cid = view.id
        bundle = self._layout.container_dir(cid)
        rootfs = self._layout.container_rootfs(cid)
        mounts = await self._snapshotter.mounts(cid)
        await asyncio.to_thread(mounting.mount, mounts, rootfs)
        netns_path = self._netns_of(view)
        handle: MonitorHandle | None = None
        io = self._io.setdefault(cid, ContainerIO())
        try:
            netns_path = await self._prepare_netns(view)
            linked = self._linked_env(view)
            await asyncio.to_thread(self._write_network_files, view)
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
            io.disconnect()
            if handle is not None:
                with contextlib.suppress(Exception):
                    await runtime.kill(cid, signal.SIGKILL, all_processes=True)
                with contextlib.suppress(Exception):
                    await self._monitor.wait_exit(handle)
            await self._teardown(cid, runtime, netns_path)
            raise

    def _shared_namespaces(self, view: ContainerView) -> dict[str, str]:
        """`--pid/--ipc/--uts container:<id>`: the other container's namespace files."""
        shared: dict[str, str] = {}
        for kind, key in (("pid", "PidMode"), ("ipc", "IpcMode"), ("uts", "UTSMode")):
            mode = view.config.host_config.get(key) or ""
            if not mode.startswith("container:"):
                continue
            other = self.get(mode.split(":", 1)[1])
            if not other.running:
                raise Conflict(f"cannot join {kind} of a non running container: {other.id}")
            shared[kind] = f"/proc/{other.state.pid}/ns/{kind}"
        return shared

    async def _prepare_netns(self, view: ContainerView) -> Path | None:
        mode = view.config.host_config.get("NetworkMode") or "default"
        if mode == "host":
            return None
        if mode.startswith("container:"):
            other = self.get(mode.split(":", 1)[1])
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

    def _write_network_files(self, view: ContainerView) -> None:
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
                other = self.get(name)
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
                child = self.get(name)
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

    async def _teardown(
        self, cid: str, runtime: OCIRuntime | None, netns_path: Path | None
    ) -> None:
        """Release what a run held: runtime state, monitor files, volume mounts, rootfs
        mount, namespace."""
        if runtime is not None:
            with contextlib.suppress(Exception):
                await runtime.delete(cid, force=True)
        bundle = self._layout.container_dir(cid)
        await asyncio.to_thread(self._monitor.cleanup, cid, bundle)
        with contextlib.suppress(EngineError):
            await self._volumes.unmount_container(cid)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(mounting.unmount, self._layout.container_rootfs(cid))
        with contextlib.suppress(Exception):
            await self._networks.unplug(cid)
        own_netns = self._layout.netns_path(cid)
        if netns_path is None or netns_path == own_netns:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(netns.delete, own_netns)

    async def _record_start_failure(self, view: ContainerView, exc: EngineError) -> None:
        state = view.state.evolve(exit_code=_start_exit_code(exc.message), error=exc.message)
        view = await self._commit_state(view.id, state)
        if view.config.auto_remove:
            # `docker run --rm nosuchcmd` waits for condition=removed: remove on failure too.
            self._spawn(self._remove_after_failure(view.id))

    async def _remove_after_failure(self, cid: str) -> None:
        with contextlib.suppress(EngineError):
            await self.remove(cid, force=True)

    # ------------------------------------------------------------------ exit handling
    def _start_log_rotation(self, view: ContainerView, handle: MonitorHandle) -> None:
        settings = logdrivers.settings(view.config.host_config.get("LogConfig") or {})
        if settings.max_size is None:
            return
        self._rotators[view.id] = asyncio.create_task(
            self._rotate_logs(handle, settings), name=f"logrotate-{view.id}"
        )

    async def _rotate_logs(self, handle: MonitorHandle, settings: logdrivers.LogSettings) -> None:
        """Rotate when the log passes max-size: rename the files, then conmon reopens.

        Checked every ROTATE_CHECK seconds, so a file can exceed max-size by what the
        container writes in that time.
        """
        path = self._layout.container_log(handle.container_id)
        while True:
            await asyncio.sleep(ROTATE_CHECK)
            if await asyncio.to_thread(logdrivers.needs_rotation, path, settings):
                await asyncio.to_thread(logdrivers.rotate, path, settings)
                try:
                    await self._monitor.reopen_log(handle)
                except EngineError:
                    return  # conmon is gone: the container exited

    def _stop_log_rotation(self, cid: str) -> None:
        task = self._rotators.pop(cid, None)
        if task is not None:
            task.cancel()

    def _watch(self, handle: MonitorHandle) -> None:
        self._handles[handle.container_id] = handle
        task = asyncio.create_task(self._await_exit(handle), name=f"exit-{handle.container_id}")
        self._watchers[handle.container_id] = task

    async def _await_exit(self, handle: MonitorHandle) -> None:
        code = await self._monitor.wait_exit(handle)
        cid = handle.container_id
        io = self._io.get(cid)
        if io is not None:
            await io.drain()
        async with self._locks.hold(cid):
            self._watchers.pop(cid, None)
            # The restart decision is taken in the same transition as the exit, so no
            # request sees the container exited in between (a `rm` there would win).
            restarting = self._will_restart(cid, code)
            await self._finish_run(cid, code, restarting=restarting)
            if restarting:
                ran_for = time.monotonic() - self._started_mono.pop(cid, time.monotonic())
                self._arm_restart(cid, restart.next_delay(self._backoff.get(cid), ran_for))
        if io is not None:
            io.disconnect()
            io.end_sessions()
        view = self._views.get(cid)
        if view is None or cid in self._removing:
            return
        if view.config.auto_remove:
            with contextlib.suppress(EngineError):
                await self.remove(cid, force=True)

    # ------------------------------------------------------------------ restart policy
    def _will_restart(self, cid: str, code: int) -> bool:
        view = self._views.get(cid)
        if view is None or cid in self._removing or view.config.auto_remove:
            return False
        state = view.state
        policy = view.config.host_config.get("RestartPolicy") or {}
        return restart.should_restart(policy, code, state.restart_count, state.manually_stopped)

    def _arm_restart(self, cid: str, delay: float) -> None:
        self._backoff[cid] = delay
        self._restarts[cid] = asyncio.create_task(self._restart_later(cid, delay))

    async def _restart_later(self, cid: str, delay: float) -> None:
        await asyncio.sleep(delay)
        async with self._locks.hold(cid):
            self._restarts.pop(cid, None)
            view = self._views.get(cid)
            if view is None or view.state.status != Status.RESTARTING:
                return
            if cid in self._uncounted_restart:
                self._uncounted_restart.discard(cid)
            else:
                view = await self._commit_state(
                    cid, view.state.evolve(restart_count=view.state.restart_count + 1)
                )
            try:
                await self._start_locked(view)
            except EngineError as exc:
                log.warning("restarting container %s failed: %s", cid, exc)
                current = self._views.get(cid)
                if current is not None and current.state.status == Status.RESTARTING:
                    await self._commit_state(cid, current.state.evolve(status=Status.EXITED))

    async def _start_on_daemon_start(self, cid: str) -> None:
        try:
            async with self._locks.hold(cid):
                view = self._views.get(cid)
                if view is None or view.state.status not in (Status.EXITED, Status.RESTARTING):
                    return
                await self._start_locked(view)
        except EngineError as exc:
            log.warning("starting container %s at daemon start failed: %s", cid, exc)

    def _cancel_restart(self, cid: str) -> None:
        task = self._restarts.pop(cid, None)
        if task is not None:
            task.cancel()

    async def _stop_restarting(self, cid: str) -> None:
        """A stop or kill of a container waiting to restart: it stays stopped."""
        self._cancel_restart(cid)
        async with self._locks.hold(cid):
            view = self._views.get(cid)
            if view is not None and view.state.status == Status.RESTARTING:
                await self._commit_state(
                    cid, view.state.evolve(status=Status.EXITED, manually_stopped=True)
                )

    async def update(self, ref: str, changes: dict[str, Any]) -> list[str]:
        """`docker update`: new limits and restart policy, kept and applied live."""
        view = self.get(ref)
        async with self._locks.hold(view.id):
            view = self._views[view.id]
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
            await self._db.execute(
                "UPDATE containers SET config = ? WHERE id = ?", (record.to_json(), view.id)
            )
            view = ContainerView(record, view.state, view.image_names, view.exec_ids)
            self._views[view.id] = view
        self._emit(view, "update")
        return []

    async def remove_link(self, link_name: str) -> None:
        """``DELETE /containers/<parent>/<alias>?link=1``: forget the parent's legacy link
        named ``alias`` (dockerd's rmLink). Its /etc/hosts entry and variables go at the
        parent's next start."""
        parent_ref, _, alias = link_name.strip("/").rpartition("/")
        if not parent_ref:
            raise Conflict("Conflict, cannot remove the default link name of the container")
        try:
            parent = self.get(parent_ref)
        except NotFound:
            raise NotFound(f"Cannot get parent /{parent_ref} for link name /{link_name.strip('/')}"
                           ) from None
        async with self._locks.hold(parent.id):
            parent = self._views[parent.id]
            links = list(parent.config.host_config.get("Links") or [])
            kept = [entry for entry in links if _link_alias(entry) != alias]
            if len(kept) == len(links):
                raise NotFound(f"No such container: {link_name}")
            record = ContainerConfig(**{**parent.config.__dict__, "host_config": {
                **parent.config.host_config, "Links": kept or None}})
            await self._db.execute(
                "UPDATE containers SET config = ? WHERE id = ?", (record.to_json(), parent.id)
            )
            self._views[parent.id] = ContainerView(record, parent.state, parent.image_names,
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

    async def set_health(self, container_id: str, health: dict[str, Any]) -> None:
        """Record a healthcheck result; a status change emits ``health_status: <status>``."""
        async with self._locks.hold(container_id):
            view = self._views.get(container_id)
            if view is None:
                return
            before = (view.state.health or {}).get("Status")
            view = await self._commit_state(container_id, view.state.evolve(health=health))
        if health.get("Status") != before:
            self._emit(view, f"health_status: {health.get('Status')}")

    # ------------------------------------------------------------------ pause / rename
    async def pause(self, ref: str) -> None:
        view = self.get(ref)
        async with self._locks.hold(view.id):
            view = self._views[view.id]
            if view.state.status == Status.PAUSED:
                raise Conflict(f"Container {view.id} is already paused")
            if view.state.status != Status.RUNNING:
                raise Conflict(f"Container {view.id} is not running")
            await self._runtime_of(view).pause(view.id)
            view = await self._commit_state(view.id, view.state.evolve(status=Status.PAUSED))
        self._emit(view, "pause")

    async def unpause(self, ref: str) -> None:
        view = self.get(ref)
        async with self._locks.hold(view.id):
            view = self._views[view.id]
            if view.state.status != Status.PAUSED:
                raise Conflict(f"Container {view.id} is not paused")
            await self._runtime_of(view).resume(view.id)
            view = await self._commit_state(view.id, view.state.evolve(status=Status.RUNNING))
        self._emit(view, "unpause")

    async def rename(self, ref: str, new_name: str) -> None:
        view = self.get(ref)
        if not new_name:
            raise InvalidParameter("Neither old nor new names may be empty")
        name = naming.validate_name(new_name)
        async with self._name_lock, self._locks.hold(view.id):
            view = self._views[view.id]
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
            await self._db.execute(
                "UPDATE containers SET name = ?, config = ? WHERE id = ?",
                (name, record.to_json(), view.id),
            )
            view = ContainerView(record, view.state, view.image_names, view.exec_ids)
            self._views[view.id] = view
            await self._networks.rename(view.id, name)
        self._emit(view, "rename", {"oldName": f"/{old_name}"})

    def _runtime_of(self, view: ContainerView) -> OCIRuntime:
        runtime = self._runtimes.get(self.runtime_name(view))
        if runtime is None:
            raise SystemError_(f"runtime {self.runtime_name(view)} is not available")
        return runtime

    async def _finish_run(
        self, cid: str, code: int, finished: float | None = None, *, restarting: bool = False
    ) -> None:
        view = self._views.get(cid)
        if view is None:
            return
        self._handles.pop(cid, None)
        self._stop_log_rotation(cid)
        # Read conmon's oom marker before its files are cleaned up below.
        oom = await asyncio.to_thread(self._monitor_oom, cid)
        state = view.state.evolve(
            status=Status.RESTARTING if restarting else Status.EXITED, pid=0, conmon_pid=0,
            exit_code=code, finished_at=now_rfc3339(finished), oom_killed=oom,
        )
        view = await self._commit_state(cid, state)
        if oom:
            self._emit(view, "oom")
        self._emit(view, "die", {"exitCode": str(code)})
        # What the run held (runtime state, mounts, namespace, addresses and ports) is
        # released before anyone learns of the exit: a stopped container shows no IP.
        runtime = self._runtimes.get(self.runtime_name(view))
        await self._teardown(cid, runtime, self._netns_of(view))
        for future in self._exit_waiters.pop(cid, []):
            if not future.done():
                future.set_result(code)

    def _monitor_oom(self, cid: str) -> bool:
        return (self._layout.conmon_dir(cid) / "persist" / "oom").exists()

    def _netns_of(self, view: ContainerView) -> Path | None:
        mode = view.config.host_config.get("NetworkMode") or "default"
        if mode == "host" or mode.startswith("container:"):
            return None
        return self._layout.netns_path(view.id)

    # ------------------------------------------------------------------ stop / kill
    async def stop(
        self, ref: str, stop_timeout: int | None = None, signal_: str | None = None
    ) -> None:
        view = self.get(ref)
        if view.state.status == Status.RESTARTING:
            await self._stop_restarting(view.id)
            view = self.get(ref)
            if not view.running:
                self._emit(view, "stop")
                return
            # The restart won the race and the container runs again: stop it for real.
        if not view.running:
            raise NotModified("container already stopped")
        stop_signal, timeout = _stop_settings(view, signal_, stop_timeout)
        await self._stop_running(view, stop_signal, timeout, manual=True)
        self._emit(self._views.get(view.id, view), "stop")

    async def _stop_running(
        self, view: ContainerView, stop_signal: int, grace: int, *, manual: bool
    ) -> None:
        """Signal, wait up to ``grace`` seconds (negative: forever), then SIGKILL and wait.

        ``manual`` records a user's stop, which restart policies respect; a daemon
        shutdown without live-restore is not one.
        """
        if manual:
            await self._mark_manually_stopped(view.id)
        waiter = self._exit_future(view.id, of_run=view.state.pid)
        if waiter.done():
            return  # it exited while we marked it: a concurrent stop, kill or restart
        await self._signal(view, stop_signal)
        if grace < 0:
            await asyncio.shield(waiter)
        else:
            try:
                await asyncio.wait_for(asyncio.shield(waiter), grace)
            except TimeoutError:
                if self.is_running(view.id):
                    await self._signal(view, signal.SIGKILL)
                await asyncio.shield(waiter)

    async def _stop_for_shutdown(self, view: ContainerView) -> None:
        stop_signal, timeout = _stop_settings(view, None, None)
        await self._stop_running(view, stop_signal, timeout, manual=False)

    async def _mark_manually_stopped(self, cid: str) -> None:
        async with self._locks.hold(cid):
            view = self._views.get(cid)
            if view is not None and view.running:
                await self._commit_state(cid, view.state.evolve(manually_stopped=True))

    async def kill(self, ref: str, signal_: str | None = None) -> None:
        view = self.get(ref)
        number = parse_signal(signal_, default=signal.SIGKILL)
        if view.state.status == Status.RESTARTING and number == signal.SIGKILL:
            await self._stop_restarting(view.id)
            view = self.get(ref)
            if not view.running:
                return
        if not view.running:
            raise Conflict(f"Cannot kill container: {ref}: Container {view.id} is not running")
        if number != signal.SIGKILL:
            await self._signal(view, number)
            return
        # Like dockerd, a SIGKILL returns once the container is really gone, so that an
        # inspect right after `docker kill` sees it exited.
        await self._mark_manually_stopped(view.id)
        waiter = self._exit_future(view.id, of_run=view.state.pid)
        if waiter.done():
            return  # it exited while we marked it; nothing left to kill
        await self._signal(view, number)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(waiter), KILL_WAIT)

    async def _signal(self, view: ContainerView, number: int) -> None:
        runtime = self._runtimes.get(self.runtime_name(view))
        if runtime is None:
            raise SystemError_(f"runtime {self.runtime_name(view)} is not available")
        self._emit(view, "kill", {"signal": str(number)})
        try:
            await runtime.kill(view.id, number, all_processes=number == signal.SIGKILL)
            if self._views[view.id].state.status == Status.PAUSED:
                # A frozen process cannot act on the signal: thaw it, as dockerd does
                # (`runc kill --all` may have thawed it already).
                with contextlib.suppress(Conflict, NotFound):
                    await runtime.resume(view.id)
                await self._mark_thawed(view.id)
        except NotFound:
            pass  # it exited meanwhile; the exit watcher records it
        except EngineError as exc:
            if self.is_running(view.id):
                raise Conflict(str(exc)) from None

    async def _mark_thawed(self, cid: str) -> None:
        """Paused → running after a signal thawed it; never over an exit recorded
        meanwhile (the signal may have killed it already)."""
        async with self._locks.hold(cid):
            current = self._views.get(cid)
            if current is not None and current.state.status == Status.PAUSED:
                await self._commit_state(cid, current.state.evolve(status=Status.RUNNING))

    def _exit_future(self, cid: str, of_run: int | None = None) -> asyncio.Future[int]:
        """A future for the container's next exit. With ``of_run`` (the pid of the run
        the caller acts on) it is already done when that run has ended: callers that
        awaited something since they looked at the container (a lock, a state write)
        could otherwise miss the exit and wait for one that never comes."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        current = self._views.get(cid)
        if of_run is not None and (
            current is None or not current.running or current.state.pid != of_run
        ):
            future.set_result(current.state.exit_code if current is not None else 0)
            return future
        self._exit_waiters.setdefault(cid, []).append(future)
        return future

    # ------------------------------------------------------------------ wait
    async def wait(self, ref: str, condition: str = "not-running") -> asyncio.Future[int]:
        """Register a waiter and return its future (the API flushes headers, then awaits)."""
        if condition not in WAIT_CONDITIONS:
            raise InvalidParameter(f"invalid condition: {condition!r}")
        view = self.get(ref)
        loop = asyncio.get_running_loop()
        if condition == "removed":
            future: asyncio.Future[int] = loop.create_future()
            self._removal_waiters.setdefault(view.id, []).append(future)
            return future
        if condition == "not-running" and not view.running:
            done: asyncio.Future[int] = loop.create_future()
            done.set_result(view.state.exit_code)
            return done
        return self._exit_future(view.id)

    def forget_waiter(self, future: asyncio.Future[int]) -> None:
        for table in (self._exit_waiters, self._removal_waiters):
            for waiters in table.values():
                if future in waiters:
                    waiters.remove(future)

    # ------------------------------------------------------------------ attach / resize
    async def attach(
        self, ref: str, streams: StreamSet, *, use_stdin: bool, logs: bool = False
    ) -> None:
        """Run one attach session until the container's run ends or the client detaches."""
        view = self.get(ref)
        if view.state.status == Status.PAUSED:
            raise Conflict(f"container {view.id} is paused, unpause the container before attach")
        io = self._io.setdefault(view.id, ContainerIO())
        if logs:
            await self._replay_logs(view, streams)
        session = io.add_session(streams)
        self._emit(view, "attach")
        helpers: list[asyncio.Task[None]] = []
        if use_stdin and view.config.open_stdin and streams.read_stdin is not None:
            helpers.append(asyncio.create_task(self._pump_stdin(view, io, streams, session)))
        if streams.wait_closed is not None:
            helpers.append(asyncio.create_task(_end_when(streams.wait_closed(), session)))
        try:
            await session.done.wait()
        finally:
            io.remove_session(session)
            for task in helpers:
                task.cancel()
            for task in helpers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def run_attached(
        self, ref: str, write_output: Callable[[int, bytes], Awaitable[None]]
    ) -> int:
        """Start a created container with ``write_output`` receiving its output from
        the first byte, and return its exit code once it has exited and its output has
        been delivered (the builder's RUN)."""
        view = self.get(ref)
        io = self._io.setdefault(view.id, ContainerIO())
        session = io.add_session(StreamSet(write_output=write_output))
        try:
            waiter = self._exit_future(view.id)
            try:
                await self.start(view.id)
            except BaseException:
                self.forget_waiter(waiter)
                raise
            code = await asyncio.shield(waiter)
            await session.done.wait()
        finally:
            io.remove_session(session)
        return code

    async def _pump_stdin(
        self, view: ContainerView, io: ContainerIO, streams: StreamSet, session: Session
    ) -> None:
        assert streams.read_stdin is not None
        # Detach keys apply to a TTY's stdin only, as in dockerd.
        escape = detachkeys.Escape(streams.detach_keys) if view.config.tty else None
        while True:
            try:
                data = await streams.read_stdin()
            except (ConnectionError, OSError):
                data = b""
            if not data:
                break
            if escape is not None:
                data, detached = escape.feed(data)
                if detached:
                    if data:
                        await io.write_stdin(data)
                    self._emit(view, "detach")
                    session.end()
                    return
            await io.write_stdin(data)
        if view.config.stdin_once and not view.config.tty:
            await io.close_stdin()
        else:
            self._emit(view, "detach")
            session.end()

    async def _replay_logs(self, view: ContainerView, streams: StreamSet) -> None:
        async for record in self.logs(view.id, stdout=streams.stdout, stderr=streams.stderr):
            try:
                await streams.write_output(record.stream, record.data)
            except (ConnectionError, OSError):
                return

    @contextlib.asynccontextmanager
    async def rootfs(
        self, ref: str, *, with_mounts: bool = False
    ) -> AsyncIterator[tuple[ContainerView, Path]]:
        """The container's root filesystem, mounted, for as long as the block runs.

        A running container's own rootfs mount is used as it is (its volumes live in
        its own mount namespace: not visible there yet). For a created or stopped one the
        rw snapshot is mounted at the usual place, with its volumes and binds bound in when
        ``with_mounts``, and detached afterwards; the container's lock is held throughout,
        so it cannot start meanwhile. Used by `docker cp` (with mounts), export and diff.
        """
        view = self.get(ref)
        async with self._locks.hold(view.id):
            view = self._views[view.id]
            target = self._layout.container_rootfs(view.id)
            if view.running:
                yield view, target
                return
            mounts = await self._snapshotter.mounts(view.id)
            await asyncio.to_thread(mounting.mount, mounts, target)
            if with_mounts:
                await asyncio.to_thread(
                    mountview.bind_mounts, target, self._volumes.inspect_mounts(view.id)
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

    async def resize(self, ref: str, height: int, width: int) -> None:
        view = self.get(ref)
        handle = self._handles.get(view.id)
        if handle is None or not view.running:
            raise Conflict(f"Container {view.id} is not running")
        await self._monitor.resize(handle, height, width)

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
                await asyncio.to_thread(self._write_network_files, view)

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
                await asyncio.to_thread(self._write_network_files, view)

    # ------------------------------------------------------------------ logs
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
        """The container's log records. Errors (unknown container, a driver that cannot
        be read) are raised here, before the caller has sent any response."""
        view = self.get(ref)
        if not logdrivers.settings(view.config.host_config.get("LogConfig") or {}).readable:
            raise NotSupported("configured logging driver does not support reading")
        return self._log_records(
            view, stdout=stdout, stderr=stderr, since_nano=since_nano, until_nano=until_nano,
            tail=tail, follow=follow and view.running,
        )

    async def _log_records(
        self, view: ContainerView, *, stdout: bool, stderr: bool, since_nano: int | None,
        until_nano: int | None, tail: int | None, follow: bool,
    ) -> AsyncIterator[LogRecord]:
        path = self._layout.container_log(view.id)
        cid = view.id
        history = await asyncio.to_thread(logdrivers.rotated_files, path)
        async for record in read_logs(
            path, stdout=stdout, stderr=stderr, since_nano=since_nano, until_nano=until_nano,
            tail=tail, follow=follow, is_running=lambda: self.is_running(cid), history=history,
        ):
            yield record

    def log_details(self, ref: str) -> bytes:
        """`docker logs --details`: the attributes the log options select, as a prefix."""
        view = self.get(ref)
        return logdrivers.details_prefix(
            view.config.host_config.get("LogConfig") or {}, view.config.labels,
            list(view.config.config.get("Env") or []),
        )

    # ------------------------------------------------------------------ remove
    async def remove(self, ref: str, force: bool = False, volumes: bool = False) -> None:
        view = self.get(ref)
        cid = view.id
        if cid in self._removing:
            raise Conflict(f"removal of container {cid} is already in progress")
        if view.state.status == Status.RESTARTING:
            if not force:
                raise Conflict(
                    f"You cannot remove a restarting container {cid}. Stop the container "
                    "before attempting removal or force remove"
                )
            await self._stop_restarting(cid)
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
        self._removing.add(cid)
        try:
            if self._views[cid].running:
                waiter = self._exit_future(cid)
                await self._signal(self._views[cid], signal.SIGKILL)
                await asyncio.shield(waiter)
            async with self._locks.hold(cid):
                await self._remove_locked(cid, remove_anonymous_volumes=volumes)
        finally:
            self._removing.discard(cid)

    async def _remove_locked(self, cid: str, remove_anonymous_volumes: bool = False) -> None:
        view = self._views.get(cid)
        if view is None:
            return
        await self._commit_state(cid, view.state.evolve(status=Status.REMOVING))
        runtime = self._runtimes.get(self.runtime_name(view))
        await self._teardown(cid, runtime, self._netns_of(view))
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
        io = self._io.pop(cid, None)
        if io is not None:
            io.disconnect()
            io.end_sessions()
        self._emit(view, "destroy")
        code = view.state.exit_code
        for future in self._removal_waiters.pop(cid, []) + self._exit_waiters.pop(cid, []):
            if not future.done():
                future.set_result(code)

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
    async def _commit_state(self, cid: str, state: ContainerState) -> ContainerView:
        encoded = state.to_json()
        await self._db.execute("UPDATE containers SET state = ? WHERE id = ?", (encoded, cid))
        old = self._views[cid]
        view = ContainerView(old.config, state, old.image_names, old.exec_ids)
        self._views[cid] = view
        return view

    def _emit(self, view: ContainerView, action: str, extra: dict[str, str] | None = None) -> None:
        attributes = dict(view.config.labels)
        attributes["image"] = view.config.image_ref
        attributes["name"] = view.name
        if extra:
            attributes.update(extra)
        self._events.emit("container", action, view.id, attributes)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ restore / close
    async def restore(self, rebooted: bool = False) -> None:
        """Load every container; re-adopt running ones; record exits that happened while
        the daemon was down. Idempotent after any crash. After a host reboot nothing of
        ours survived: running containers become exited with 255 (dockerd's rule)."""
        rows = await self._db.query("SELECT id, config, state FROM containers")
        for row in rows:
            record = ContainerConfig.from_json(row["config"])
            state = ContainerState.from_json(row["state"])
            self._views[record.id] = ContainerView(record, state)
        await self._sweep_orphans({row["id"] for row in rows})
        await self._volumes.forget_containers_except({row["id"] for row in rows})
        for view in list(self._views.values()):
            try:
                await self._restore_one(view, rebooted)
            except Exception:
                log.exception("restoring container %s failed", view.id)
        running = {v.id: self._layout.netns_path(v.id) for v in self._views.values()
                   if v.running}
        try:
            await self._networks.reconcile(running, self._views.keys())
        except Exception:
            log.exception("restoring container networking failed")
        for view in list(self._views.values()):
            state = view.state
            policy = view.config.host_config.get("RestartPolicy") or {}
            if state.status in (Status.EXITED, Status.RESTARTING) and state.has_been_started:
                if restart.restart_on_daemon_start(
                    policy, state.exit_code, state.restart_count, state.manually_stopped
                ):
                    # As dockerd: started again right away, RestartCount unchanged (F1).
                    self._spawn(self._start_on_daemon_start(view.id))

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
            io = self._io.setdefault(cid, ContainerIO())
            try:
                await io.connect(await self._monitor.attach(handle))
            except OSError:
                log.warning("container %s: attach socket gone; output only in the log", cid)
            self._watch(handle)
            log.info("container %s re-adopted (pid %d)", cid, handle.init_pid)
            if not self._config.live_restore:
                # Without live-restore a daemon start stops what survived (dockerd, F1);
                # restart policies then bring their containers back, uncounted.
                self._uncounted_restart.add(cid)
                self._spawn(self._stop_for_shutdown(self._views[cid]))
            return
        code = await asyncio.to_thread(self._monitor.exit_code, cid)
        finished = await asyncio.to_thread(self._monitor.exit_time, cid)
        await self._finish_run(cid, 255 if code is None else code, finished)
        view = self._views[cid]
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

    async def close(self) -> None:
        if not self._config.live_restore:
            running = [v for v in self._views.values() if v.running]
            await asyncio.gather(
                *(self._stop_for_shutdown(v) for v in running), return_exceptions=True
            )
        pending = [*self._watchers.values(), *self._background, *self._restarts.values(),
                   *self._rotators.values()]
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._watchers.clear()
        for io in self._io.values():
            io.disconnect()
            io.end_sessions()


async def _end_when(event: Awaitable[None], session: Session) -> None:
    await event
    session.end()


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


def _stop_settings(
    view: ContainerView, signal_: str | None, stop_timeout: int | None
) -> tuple[int, int]:
    """The signal and grace period of a stop: the request's, else the container's."""
    stop_signal = parse_signal(
        signal_ or view.config.config.get("StopSignal") or None, default=signal.SIGTERM
    )
    if stop_timeout is not None:
        return stop_signal, stop_timeout
    configured = view.config.config.get("StopTimeout")
    return stop_signal, DEFAULT_STOP_TIMEOUT if configured is None else int(configured)


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


def _no_such_container(ref: str) -> NotFound:
    return NotFound(f"No such container: {ref}")


def _link_alias(entry: str) -> str:
    """A HostConfig.Links entry (``name[:alias]``, names possibly ``/``-prefixed) → the
    alias it is known by in the linking container."""
    name, _, alias = str(entry).partition(":")
    return (alias or name).strip("/").rpartition("/")[2]
