"""From a container's Docker-shaped config to its OCI ``config.json``.

``spec.py`` knows OCI and Docker's security defaults; this module knows where a
container's files live and which HostConfig key feeds which ``SpecRequest`` field.
Everything here blocks (user lookup reads the rootfs): call it off the event loop.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, cast

from engine.config import EngineConfig
from engine.containers import resources, spec
from engine.containers.model import ContainerConfig
from engine.errors import InvalidParameter
from engine.layout import Layout
from engine.runtime import cgroups

_ETC_FILES = (("hostname", "/etc/hostname"), ("hosts", "/etc/hosts"),
              ("resolv.conf", "/etc/resolv.conf"))
# `--init`: Debian's static tini, bind-mounted where dockerd puts its docker-init.
INIT_BINARY = Path("/usr/bin/tini-static")
INIT_PATH_IN_CONTAINER = "/sbin/docker-init"


@functools.cache
def swap_accounting() -> bool:
    """Whether the kernel accounts swap per cgroup (memory.memsw.* / memory.swap.max)."""
    return cgroups.detect().swap_limit


@functools.cache
def blkio_weight_supported() -> bool:
    """Whether the kernel has a block I/O weight (blkio.weight, or io on cgroup v2)."""
    return cgroups.detect().blkio_weight


@functools.cache
def memory_nodes() -> str:
    """The memory nodes containers may use ("0", "0-1"); empty when unknown."""
    return cgroups.detect().mems


@functools.cache
def host_facts() -> spec.HostFacts:
    """What this host offers, read once per process."""
    return spec.HostFacts.detect(cgroup_version=cgroups.detect().version)


def store_system_paths(host_config: dict[str, Any]) -> None:
    """At create: the masked and read-only path lists this container's spec will apply,
    stored in its HostConfig as dockerd does (reads the host once: run it off the loop)."""
    host_config["MaskedPaths"], host_config["ReadonlyPaths"] = spec.stored_system_paths(
        host_config, host_facts()
    )


def _etc_mounts(bundle: Path) -> list[dict[str, Any]]:
    return [
        {"destination": target, "type": "bind", "source": str(bundle / name),
         "options": ["rbind", "rprivate"]}
        for name, target in _ETC_FILES
    ]


def _resources(host_config: dict[str, Any]) -> spec.Resources:
    return spec.Resources(
        memory=host_config.get("Memory") or 0,
        memory_reservation=host_config.get("MemoryReservation") or 0,
        memory_swap=host_config.get("MemorySwap") or 0,
        memory_swappiness=_swappiness(host_config.get("MemorySwappiness")),
        oom_kill_disable=host_config.get("OomKillDisable"),
        cpu_shares=host_config.get("CpuShares") or 0,
        cpu_period=host_config.get("CpuPeriod") or 0,
        cpu_quota=host_config.get("CpuQuota") or 0,
        nano_cpus=host_config.get("NanoCpus") or 0,
        cpuset_cpus=host_config.get("CpusetCpus") or "",
        cpuset_mems=host_config.get("CpusetMems") or "",
        pids_limit=host_config.get("PidsLimit"),
        # As dockerd: without the kernel's support the weight is discarded (runc would
        # fail to write it, at start or at `docker update`).
        blkio_weight=(host_config.get("BlkioWeight") or 0) if blkio_weight_supported() else 0,
        blkio_weight_device=_device_rates(host_config.get("BlkioWeightDevice"), "Weight"),
        blkio_read_bps=_device_rates(host_config.get("BlkioDeviceReadBps"), "Rate"),
        blkio_write_bps=_device_rates(host_config.get("BlkioDeviceWriteBps"), "Rate"),
        blkio_read_iops=_device_rates(host_config.get("BlkioDeviceReadIOps"), "Rate"),
        blkio_write_iops=_device_rates(host_config.get("BlkioDeviceWriteIOps"), "Rate"),
    )


def _device_rates(entries: Any, key: str) -> tuple[spec.DeviceRate, ...]:
    """``[{"Path": "/dev/sda", "Rate": n}]`` as device numbers (dockerd stats the path,
    following symlinks, and takes its rdev; a missing path is its error)."""
    rates = []
    for entry in entries or []:
        path = str(entry.get("Path") or "")
        try:
            rdev = os.stat(path).st_rdev
        except OSError as exc:
            raise InvalidParameter(
                f"stat {path}: {(exc.strerror or 'error').lower()}") from None
        rates.append(spec.DeviceRate(os.major(rdev), os.minor(rdev), int(entry.get(key) or 0)))
    return tuple(rates)


def _swappiness(value: Any) -> int | None:
    # The CLI sends -1 for "not set".
    return None if value is None or value == -1 else int(value)


def _devices(host_config: dict[str, Any]) -> list[spec.ResolvedDevice]:
    resolved: list[spec.ResolvedDevice] = []
    for entry in host_config.get("Devices") or []:
        resolved.extend(spec.resolve_device(
            entry.get("PathOnHost", ""), entry.get("PathInContainer", ""),
            entry.get("CgroupPermissions") or "rwm",
        ))
    return resolved


def _ulimits(host_config: dict[str, Any]) -> list[tuple[str, int, int]]:
    # Keys left out are Go's zero values; an empty name is then refused by the spec.
    return [(str(u.get("Name") or ""), int(u.get("Soft") or 0), int(u.get("Hard") or 0))
            for u in host_config.get("Ulimits") or []]


def _network(netns_path: Path | None, host_config: dict[str, Any]) -> spec.NamespaceChoice:
    if (host_config.get("NetworkMode") or "") == "host":
        return spec.HOST
    if netns_path is None:
        return spec.PRIVATE
    return spec.NamespaceChoice("private", str(netns_path))


def _init_mount() -> dict[str, Any]:
    return {"destination": INIT_PATH_IN_CONTAINER, "type": "bind",
            "source": str(INIT_BINARY), "options": ["bind", "ro"]}


def _argv(record: ContainerConfig) -> list[str]:
    argv = [record.path, *record.args]
    if record.host_config.get("Init"):
        return [INIT_PATH_IN_CONTAINER, "--", *argv]
    return argv


NamespacePaths = dict[str, str]
"""Namespace kind ("pid", "ipc") → another container's ``/proc/<pid>/ns/<kind>``."""


def _shared_namespace(
    kind: str, mode: str, shared: NamespacePaths
) -> spec.NamespaceChoice:
    """``--pid/--ipc/--uts`` modes: host, container:<id> (path resolved by the caller),
    private/shareable/"" (own)."""
    if mode == "host":
        return spec.HOST
    if mode.startswith("container:"):
        if kind not in shared:
            raise InvalidParameter(f"cannot join the {kind} namespace of {mode[10:]}")
        return spec.NamespaceChoice("shared", shared[kind])
    if mode in ("", "private", "shareable"):
        return spec.PRIVATE
    raise InvalidParameter(f"invalid {kind.upper()} mode: {mode}")


def _cgroupns(mode: str) -> Literal["host", "private"] | None:
    if mode in ("host", "private"):
        return cast(Literal["host", "private"], mode)
    if mode == "":
        return None
    raise InvalidParameter(f"invalid cgroup namespace mode: {mode}")


def spec_request(
    record: ContainerConfig,
    engine_config: EngineConfig,
    *,
    rootfs: Path,
    bundle: Path,
    netns_path: Path | None,
    user: spec.ProcessUser,
    shared: NamespacePaths | None = None,
    extra_mounts: Sequence[dict[str, Any]] = (),
) -> spec.SpecRequest:
    config, host_config = record.config, record.host_config
    console = host_config.get("ConsoleSize") or [0, 0]
    parent = host_config.get("CgroupParent") or engine_config.cgroup_parent
    # A user's mount over /etc/hosts (or hostname, resolv.conf) replaces ours.
    taken = {mount["destination"] for mount in extra_mounts}
    mounts = [m for m in _etc_mounts(bundle) if m["destination"] not in taken]
    mounts += list(extra_mounts)
    if host_config.get("Init"):
        if not INIT_BINARY.exists():
            raise InvalidParameter(f"--init needs {INIT_BINARY} (Debian package tini)")
        mounts.append(_init_mount())
    return spec.SpecRequest(
        args=_argv(record),
        rootfs=str(rootfs),
        cgroups_path=cgroups.cgroups_path(parent, record.id),
        env=config.get("Env") or [],
        cwd=config.get("WorkingDir") or "/",
        user=user,
        terminal=record.tty,
        console_size=(int(console[0]), int(console[1])) if len(console) == 2 else None,
        hostname=config.get("Hostname") or record.id[:12],
        domainname=config.get("Domainname") or "",
        readonly_rootfs=bool(host_config.get("ReadonlyRootfs")),
        privileged=bool(host_config.get("Privileged")),
        cap_add=host_config.get("CapAdd") or [],
        cap_drop=host_config.get("CapDrop") or [],
        security_opt=host_config.get("SecurityOpt") or [],
        daemon_no_new_privileges=engine_config.no_new_privileges,
        daemon_seccomp_profile=_daemon_seccomp(engine_config),
        masked_paths=host_config.get("MaskedPaths"),
        readonly_paths=host_config.get("ReadonlyPaths"),
        shm_size=host_config.get("ShmSize") or engine_config.default_shm_size,
        mounts=mounts,
        network=_network(netns_path, host_config),
        pid=_shared_namespace("pid", host_config.get("PidMode") or "", shared or {}),
        ipc=_shared_namespace("ipc", host_config.get("IpcMode") or "", shared or {}),
        uts=_shared_namespace("uts", host_config.get("UTSMode") or "", shared or {}),
        cgroupns=_cgroupns(host_config.get("CgroupnsMode") or ""),
        resources=_resources(host_config),
        devices=_devices(host_config),
        device_cgroup_rules=host_config.get("DeviceCgroupRules") or [],
        sysctls=host_config.get("Sysctls") or {},
        ulimits=_ulimits(host_config),
        oom_score_adj=host_config.get("OomScoreAdj") or 0,
        # API 1.43: handed to the runtime in config.json, as dockerd does.
        annotations=dict(host_config.get("Annotations") or {}),
    )


@functools.cache
def _profile_text(path: str) -> str:
    return Path(path).read_text()


def _daemon_seccomp(engine_config: EngineConfig) -> str | None:
    profile = engine_config.seccomp_profile
    if profile in (None, "", "builtin", "unconfined"):
        return profile or None
    return _profile_text(profile)


def build_container_spec(
    record: ContainerConfig,
    engine_config: EngineConfig,
    layout: Layout,
    netns_path: Path | None,
    shared: NamespacePaths | None = None,
    extra_mounts: Sequence[dict[str, Any]] = (),
) -> bytes:
    """config.json for a start: needs the rootfs mounted (the user is looked up in it)."""
    rootfs = layout.container_rootfs(record.id)
    user = spec.lookup_user(rootfs, record.config.get("User") or "",
                            record.host_config.get("GroupAdd") or [])
    request = spec_request(
        record, engine_config, rootfs=rootfs, bundle=layout.container_dir(record.id),
        netns_path=netns_path, user=user, shared=shared, extra_mounts=extra_mounts,
    )
    return json.dumps(spec.build_spec(request, host_facts()), indent=1).encode()


def live_resources(
    record: ContainerConfig, engine_config: EngineConfig, layout: Layout
) -> bytes:
    """The ``linux.resources`` JSON for `runc update` (device rules are not updatable)."""
    placeholder = {kind: f"/proc/self/ns/{kind}" for kind in ("pid", "ipc", "uts")}
    request = spec_request(
        record, engine_config, rootfs=layout.container_rootfs(record.id),
        bundle=layout.container_dir(record.id), netns_path=None, user=spec.ProcessUser(),
        shared=placeholder,
    )
    resources_json = dict(spec.build_spec(request, host_facts())["linux"]["resources"])
    resources_json.pop("devices", None)
    return json.dumps(resources_json).encode()


def validate_host_config(
    record: ContainerConfig, engine_config: EngineConfig, layout: Layout
) -> None:
    """Raise at create what would otherwise only fail at start (reliability.md B13/B14)."""
    resources.validate(record.host_config)
    resources.validate_cpuset_mems(str(record.host_config.get("CpusetMems") or ""),
                                   memory_nodes())
    # Another container's namespaces are looked up at start; any path checks the rest.
    placeholder = {kind: f"/proc/self/ns/{kind}" for kind in ("pid", "ipc", "uts")}
    request = spec_request(
        record, engine_config, rootfs=layout.container_rootfs(record.id),
        bundle=layout.container_dir(record.id), netns_path=None, user=spec.ProcessUser(),
        shared=placeholder,
    )
    spec.build_spec(request, host_facts())
