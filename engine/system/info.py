"""System facts for ``/info`` and ``/version``, gathered once at start-up.

``SystemInfo.probe`` runs the slow parts a single time (``<runtime> --version`` and
``conmon --version`` as subprocesses; os-release, kernel, CPUs, memory, hostname, cgroup
layout, the data root's backing filesystem and the daemon ID from files) and caches them
in a frozen ``SystemFacts``. ``facts()`` just returns that object, so no request ever
waits on a subprocess or a file.

Cgroup facts come from ``engine.runtime.cgroups.detect`` (the same detection the spec
builder uses). The daemon ID is a UUID created on first start and kept in ``<data-root>/engine-id``
(written atomically), so it is stable for a data root and changes with it, as in dockerd.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from engine.config import EngineConfig
from engine.layout import Layout
from engine.runtime import cgroups
from engine.runtime.cgroups import CgroupInfo
from engine.store.atomic import atomic_write

log = logging.getLogger(__name__)

_VERSION_TIMEOUT = 10.0


def _package_version() -> str:
    try:
        return metadata.version("wharfd")
    except metadata.PackageNotFoundError:
        return "0.0.0-dev"


ENGINE_VERSION = _package_version()

# Go's GOARCH names, which `docker version` shows as OS/Arch.
_GO_ARCH = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i686": "386",
    "i386": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}

# The names dockerd's graphdriver gives the backing filesystem (from statfs magic).
_FS_NAMES = {
    "ext2": "extfs",
    "ext3": "extfs",
    "ext4": "extfs",
    "xfs": "xfs",
    "btrfs": "btrfs",
    "tmpfs": "tmpfs",
    "overlay": "overlayfs",
    "zfs": "zfs",
    "nfs": "nfs",
    "nfs4": "nfs",
    "f2fs": "f2fs",
    "ramfs": "ramfs",
    "squashfs": "squashfs",
    "fuse.sshfs": "fuse",
}


class RuntimeLike(Protocol):
    """What SystemInfo needs of an OCI runtime client."""

    @property
    def path(self) -> str: ...


@dataclass(frozen=True)
class ComponentFacts:
    name: str
    version: str
    commit: str


@dataclass(frozen=True)
class RuntimeFacts:
    name: str
    path: str
    args: tuple[str, ...]
    version: str
    commit: str


def cgroup_warnings(info: CgroupInfo) -> list[str]:
    """The /info warnings dockerd derives from the same support flags."""
    checks = [
        (info.memory_limit, "WARNING: No memory limit support"),
        (info.swap_limit, "WARNING: No swap limit support"),
        (info.oom_kill_disable or info.version == "2", "WARNING: No oom kill disable support"),
        (info.cpu_cfs, "WARNING: No cpu cfs quota support"),
        (info.cpu_cfs, "WARNING: No cpu cfs period support"),
        (info.cpu_shares, "WARNING: No cpu shares support"),
        (info.cpuset, "WARNING: No cpuset support"),
    ]
    return [text for ok, text in checks if not ok]


@dataclass(frozen=True)
class HostFacts:
    kernel: str
    os_name: str
    os_version: str
    arch: str  # uname -m, for /info Architecture
    go_arch: str  # GOARCH spelling, for /version Arch
    ncpu: int
    mem_total: int
    hostname: str
    ipv4_forwarding: bool
    backing_fs: str
    cgroups: CgroupInfo


@dataclass(frozen=True)
class SystemFacts:
    """Everything /info and /version show that does not change while the daemon runs."""

    daemon_id: str
    version: str
    build_time: str
    python_version: str
    host: HostFacts
    runtimes: tuple[RuntimeFacts, ...]
    default_runtime: str
    components: tuple[ComponentFacts, ...]  # monitor and other helpers (conmon)
    data_root: str
    debug: bool
    experimental: bool
    live_restore: bool
    labels: tuple[str, ...]
    log_driver: str
    cgroup_parent: str
    security_options: tuple[str, ...]
    insecure_registries: tuple[str, ...]
    registry_mirrors: tuple[str, ...]
    http_proxy: str
    https_proxy: str
    no_proxy: str
    warnings: tuple[str, ...] = field(default=())

    def runtime(self, name: str) -> RuntimeFacts | None:
        return next((r for r in self.runtimes if r.name == name), None)


class SystemInfo:
    def __init__(
        self, config: EngineConfig, layout: Layout, runtimes: Mapping[str, RuntimeLike]
    ) -> None:
        self._config = config
        self._layout = layout
        # The engine drops runtimes that fail their probe from the same dict; remember
        # what was configured so /info can say why a runtime is missing.
        self._configured = tuple(runtimes)
        self._facts: SystemFacts | None = None

    def facts(self) -> SystemFacts:
        if self._facts is None:
            raise RuntimeError("SystemInfo.probe() has not run")
        return self._facts

    def reconfigure(self, config: EngineConfig) -> None:
        """A reloaded configuration: /info shows its settings from now on (runtimes
        change through ``probe`` again)."""
        self._config = config
        if self._facts is not None:
            self._facts = replace(
                self._facts,
                debug=config.debug,
                live_restore=config.live_restore,
                labels=tuple(config.labels),
                insecure_registries=tuple(config.insecure_registries),
                registry_mirrors=tuple(config.registry_mirrors),
                default_runtime=config.default_runtime,
            )

    def reconfigure_runtimes(self, config: EngineConfig, configured: Sequence[str]) -> None:
        self._config = config
        self._configured = tuple(configured)

    async def probe(self, runtimes: Mapping[str, RuntimeLike]) -> SystemFacts:
        """Gather every fact once. ``runtimes`` are the usable ones (already probed)."""
        names = list(runtimes)
        conmon = await asyncio.to_thread(shutil.which, "conmon")
        versions = await asyncio.gather(
            *(command_version(runtimes[name].path) for name in names),
            command_version(conmon or "conmon"),
        )
        host, daemon_id, build_time = await asyncio.to_thread(self._read_files)
        conmon_version, conmon_commit = versions[-1]
        runtime_facts = tuple(
            RuntimeFacts(
                name=name,
                path=runtimes[name].path,
                args=tuple(self._runtime_args(name)),
                version=version,
                commit=commit,
            )
            for name, (version, commit) in zip(names, versions[:-1], strict=True)
        )
        components = (ComponentFacts("conmon", conmon_version, conmon_commit),)
        self._facts = self._assemble(host, daemon_id, build_time, runtime_facts, components)
        return self._facts

    def _runtime_args(self, name: str) -> list[str]:
        configured = self._config.effective_runtimes().get(name)
        return list(configured.runtime_args) if configured is not None else []

    def _read_files(self) -> tuple[HostFacts, str, str]:
        return read_host_facts(self._layout.data_root), load_daemon_id(self._layout), build_time()

    def _assemble(
        self,
        host: HostFacts,
        daemon_id: str,
        built: str,
        runtimes: tuple[RuntimeFacts, ...],
        components: tuple[ComponentFacts, ...],
    ) -> SystemFacts:
        config = self._config
        warnings = cgroup_warnings(host.cgroups)
        if not host.ipv4_forwarding:
            warnings.append("WARNING: IPv4 forwarding is disabled")
        offered = {r.name for r in runtimes}
        for name in self._configured:
            if name not in offered:
                warnings.append(
                    f"WARNING: runtime {name} is not usable on this host and is not offered "
                    "(see the daemon log)"
                )
        http_proxy, https_proxy, no_proxy = proxy_settings(os.environ)
        return SystemFacts(
            daemon_id=daemon_id,
            version=ENGINE_VERSION,
            build_time=built,
            python_version="python" + ".".join(str(p) for p in sys.version_info[:3]),
            host=host,
            runtimes=runtimes,
            default_runtime=config.default_runtime,
            components=components,
            data_root=str(config.data_root),
            debug=config.debug,
            experimental=config.experimental,
            live_restore=config.live_restore,
            labels=tuple(config.labels),
            log_driver=config.log_driver,
            cgroup_parent=config.cgroup_parent,
            security_options=tuple(security_options(config, host.cgroups.version)),
            insecure_registries=tuple(config.insecure_registries),
            registry_mirrors=tuple(config.registry_mirrors),
            http_proxy=http_proxy,
            https_proxy=https_proxy,
            no_proxy=no_proxy,
            warnings=tuple(warnings),
        )


def security_options(config: EngineConfig, cgroup_version: str) -> list[str]:
    """SecurityOptions entries in the form `docker info` can decode (name=x[,k=v])."""
    profile = config.seccomp_profile or "builtin"
    options = [f"name=seccomp,profile={profile}"]
    if config.no_new_privileges:
        options.append("name=no-new-privileges")
    if cgroup_version == "2":
        options.append("name=cgroupns")
    return options


# --- subprocess probes ---------------------------------------------------------------


def parse_version_output(text: str) -> tuple[str, str]:
    """(version, commit) from runc/crun/conmon ``--version`` output."""
    version = commit = ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == "commit":
            commit = commit or value.strip()
            continue
        words = line.split()
        # "runc version 1.1.5+ds1", "crun version 1.8.1", "conmon version 2.1.6"
        if not version and len(words) >= 3 and words[1] == "version":
            version = words[2]
    return version, commit


async def command_version(path: str) -> tuple[str, str]:
    """Run ``<path> --version`` once; ("", "") when it cannot run (logged)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            path,
            "--version",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        log.warning("cannot run %s --version: %s", path, exc)
        return "", ""
    try:
        out, err = await asyncio.wait_for(proc.communicate(), _VERSION_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        log.warning("%s --version did not answer within %.0fs", path, _VERSION_TIMEOUT)
        return "", ""
    if proc.returncode != 0:
        log.warning("%s --version failed: %s", path, err.decode(errors="replace").strip())
        return "", ""
    return parse_version_output(out.decode(errors="replace"))


# --- files (blocking: called through asyncio.to_thread) -------------------------------


def go_arch() -> str:
    """This host's architecture as Go (and image platforms) spell it."""
    machine = os.uname().machine
    return _GO_ARCH.get(machine, machine)


def read_host_facts(data_root: Path) -> HostFacts:
    uname = os.uname()
    mounts = cgroups.read_mountinfo()
    os_release = parse_os_release(
        _read_text(Path("/etc/os-release")) or _read_text(Path("/usr/lib/os-release"))
    )
    return HostFacts(
        kernel=uname.release,
        os_name=os_release.get("PRETTY_NAME", "Linux"),
        os_version=os_release.get("VERSION_ID", ""),
        arch=uname.machine,
        go_arch=_GO_ARCH.get(uname.machine, uname.machine),
        ncpu=len(os.sched_getaffinity(0)),
        mem_total=parse_mem_total(_read_text(Path("/proc/meminfo"))),
        hostname=socket.gethostname(),
        ipv4_forwarding=_read_text(Path("/proc/sys/net/ipv4/ip_forward")).strip() == "1",
        backing_fs=backing_filesystem(mounts, data_root),
        cgroups=cgroups.detect(),
    )


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def parse_os_release(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if not sep or key.startswith("#"):
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key] = value.replace('\\"', '"').replace("\\\\", "\\")
    return values


def parse_mem_total(meminfo: str) -> int:
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            fields = line.split()
            return int(fields[1]) * 1024 if len(fields) > 1 and fields[1].isdigit() else 0
    return 0


def backing_filesystem(mounts: list[cgroups.MountEntry], path: Path) -> str:
    """dockerd's name for the filesystem holding ``path`` (the mount with the longest prefix)."""
    target = os.path.realpath(path)
    best: cgroups.MountEntry | None = None
    for entry in mounts:
        point = entry.mount_point
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        # Later entries stack on top of earlier ones at the same mount point.
        if inside and (best is None or len(point) >= len(best.mount_point)):
            best = entry
    if best is None:
        return "<unknown>"
    return _FS_NAMES.get(best.fs_type, best.fs_type)


def load_daemon_id(layout: Layout) -> str:
    path = layout.engine_id_file
    try:
        existing = path.read_text().strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        return existing
    new_id = str(uuid.uuid4())
    atomic_write(path, (new_id + "\n").encode(), mode=0o600)
    return new_id


def build_time() -> str:
    """When this package was installed (its metadata's mtime), RFC 3339; "" if unknown."""
    try:
        dist = metadata.distribution("wharfd")
    except metadata.PackageNotFoundError:
        return ""
    files = dist.files or []
    for entry in files:
        if entry.name == "METADATA":
            try:
                mtime = Path(str(entry.locate())).stat().st_mtime
            except OSError:
                return ""
            stamp = datetime.fromtimestamp(mtime, tz=UTC)
            return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond * 1000:09d}+00:00"
    return ""


def mask_credentials(url: str) -> str:
    """Hide the password of a proxy URL, as dockerd does in /info."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    netloc = f"{parts.username}:xxxxx@{parts.hostname}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def proxy_settings(environ: Mapping[str, str]) -> tuple[str, str, str]:
    def pick(name: str) -> str:
        return environ.get(name.upper()) or environ.get(name.lower()) or ""

    return (
        mask_credentials(pick("http_proxy")),
        mask_credentials(pick("https_proxy")),
        pick("no_proxy"),
    )
