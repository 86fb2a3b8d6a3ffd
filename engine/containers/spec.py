"""Build the OCI runtime spec (``config.json``) of a container, with Docker's defaults.

``build_spec(request, host)`` is a pure function: everything it depends on arrives in a
``SpecRequest`` (what the container asked for, already merged with image config) and a
``HostFacts`` (what this host offers, detected once by ``HostFacts.detect()``). It raises
``InvalidParameter`` with dockerd's wording for bad input, so the create path can call it
to reject a container early instead of failing at start (reliability.md B13/B14).

The defaults reproduce what a container run by dockerd observes (reliability.md (b)):
the 14 default capabilities, masked and read-only /proc and /sys paths, the mounts of
/proc, /dev, /dev/pts, /sys (ro), /sys/fs/cgroup (ro), /dev/mqueue and /dev/shm, a private
mount/net/uts/pid/ipc namespace each, a deny-by-default device cgroup and the default
seccomp profile. Process rlimits are *not* set unless asked for, so a container inherits
the daemon's (a fixed nofile would fail on hosts whose hard limit is lower).

Helpers that touch the filesystem (``resolve_user``, ``resolve_device``,
``scan_host_devices``, ``HostFacts.detect``) block; call them off the event loop.
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from engine import rootscope
from engine.containers import seccomp
from engine.errors import InvalidParameter

OCI_VERSION = "1.0.2-dev"
DEFAULT_PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_SHM_SIZE = 64 * 1024 * 1024

# Capability names by bit number (linux/capability.h), up to CAP_CHECKPOINT_RESTORE.
KNOWN_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)

# Docker's default set (moby daemon/pkg/oci/caps/defaults.go), in Docker's order.
# As a mask: 0x00000000a80425fb.
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
    "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)

DEFAULT_MASKED_PATHS: tuple[str, ...] = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",  # GHSA-6fw5-f8r9-fgfm
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",  # GHSA-jq35-85cj-fj4p
    "/sys/firmware",
)

DEFAULT_READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)

# Sysctls Docker sets in a container's own network namespace: binding low ports and
# ICMP echo sockets then need no capability (the container is root anyway).
DEFAULT_NET_SYSCTLS: tuple[tuple[str, str], ...] = (
    ("net.ipv4.ip_unprivileged_port_start", "0"),
    ("net.ipv4.ping_group_range", "0 2147483647"),
)

# The device cgroup: deny everything, then allow the nodes runc creates in every
# container (null, zero, full via runc, random, urandom, tty, console, ptmx via runc),
# and explicitly deny /dev/fuse. runc appends its own defaults after these.
_DEFAULT_DEVICE_RULES: tuple[tuple[bool, str | None, int | None, int | None], ...] = (
    (False, None, None, None),
    (True, "c", 1, 5),
    (True, "c", 1, 3),
    (True, "c", 1, 9),
    (True, "c", 1, 8),
    (True, "c", 5, 0),
    (True, "c", 5, 1),
    (False, "c", 10, 229),
)

ULIMIT_NAMES = frozenset(
    {
        "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile",
        "nproc", "rss", "rtprio", "rttime", "sigpending", "stack",
    }
)

# Sysctls that belong to the IPC namespace (runc's list).
_IPC_SYSCTLS = frozenset(
    {
        "kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
        "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced",
    }
)

_MAX_ID = 2**31 - 1
_UINT64 = 2**64


# -- request and host model ------------------------------------------------------------


class Ulimit(NamedTuple):
    """One ``HostConfig.Ulimits`` entry; ``-1`` means unlimited, as in Docker."""

    name: str
    soft: int
    hard: int


@dataclass(frozen=True)
class ResolvedDevice:
    """A device node to create in the container, resolved from a host path."""

    path: str  # inside the container
    type: Literal["c", "b"]
    major: int
    minor: int
    file_mode: int  # permission bits only (st_mode & 0o7777)
    uid: int
    gid: int
    permissions: str = "rwm"  # device cgroup access for this node

    def to_oci(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "type": self.type,
            "major": self.major,
            "minor": self.minor,
            "fileMode": self.file_mode,
            "uid": self.uid,
            "gid": self.gid,
        }


@dataclass(frozen=True)
class ProcessUser:
    """The resolved user of the container process (see ``lookup_user``)."""

    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()  # Docker puts the primary gid first
    home: str = "/"


@dataclass(frozen=True)
class DeviceRate:
    """A per-device block IO weight or throttle (``--device-read-bps`` and friends)."""

    major: int
    minor: int
    value: int


@dataclass(frozen=True)
class Resources:
    """Cgroup limits, passed through as set. ``0``/``None`` = unset, as in Docker's API."""

    memory: int = 0
    memory_reservation: int = 0
    memory_swap: int = 0  # -1 = unlimited swap; the caller applies Docker's 2x default
    memory_swappiness: int | None = None
    oom_kill_disable: bool | None = None
    cpu_shares: int = 0
    cpu_period: int = 0
    cpu_quota: int = 0
    nano_cpus: int = 0  # converted to period 100ms + quota, like dockerd
    cpu_realtime_period: int = 0
    cpu_realtime_runtime: int = 0
    cpuset_cpus: str = ""
    cpuset_mems: str = ""
    pids_limit: int | None = None  # <= 0 means "no limit" (-1 in the spec)
    blkio_weight: int = 0
    blkio_weight_device: tuple[DeviceRate, ...] = ()
    blkio_read_bps: tuple[DeviceRate, ...] = ()
    blkio_write_bps: tuple[DeviceRate, ...] = ()
    blkio_read_iops: tuple[DeviceRate, ...] = ()
    blkio_write_iops: tuple[DeviceRate, ...] = ()


@dataclass(frozen=True)
class NamespaceChoice:
    """How a container gets one namespace.

    ``private``: its own; ``path`` optionally names one we prepared (e.g. the netns the
    network manager configured before start), else the runtime creates it.
    ``host``: the daemon's (no namespace entry).
    ``shared``: another container's, ``path`` required (``/proc/<pid>/ns/<type>``).
    """

    mode: Literal["private", "host", "shared"] = "private"
    path: str | None = None


PRIVATE = NamespaceChoice()
HOST = NamespaceChoice("host")


@dataclass(frozen=True)
class SpecRequest:
    """Everything one container asks for. Sequences may be lists or tuples."""

    # -- process
    args: Sequence[str]  # entrypoint + cmd, already merged with the image's
    rootfs: str  # absolute path of the prepared root filesystem
    cgroups_path: str  # from engine.runtime.cgroups.cgroups_path()
    env: Sequence[str] = ()  # "K=V" (image env merged with Config.Env); "K" unsets K
    cwd: str = "/"  # Config.WorkingDir; "" means "/"
    user: ProcessUser = field(default_factory=ProcessUser)
    terminal: bool = False  # Config.Tty (also adds TERM=xterm)
    console_size: tuple[int, int] | None = None  # HostConfig.ConsoleSize (height, width)
    hostname: str = ""
    domainname: str = ""  # set through the kernel.domainname sysctl, as dockerd does
    readonly_rootfs: bool = False
    # -- security
    privileged: bool = False
    cap_add: Sequence[str] = ()  # "NET_ADMIN", "cap_net_admin", "ALL" ...
    cap_drop: Sequence[str] = ()
    security_opt: Sequence[str] = ()  # HostConfig.SecurityOpt exactly as the API sends it
    daemon_no_new_privileges: bool = False  # dockerd --no-new-privileges
    # dockerd --seccomp-profile: None/"builtin" = our default, "unconfined", or JSON text
    daemon_seccomp_profile: str | None = None
    masked_paths: Sequence[str] | None = None  # None = defaults; [] = none
    readonly_paths: Sequence[str] | None = None
    # -- mounts and namespaces
    shm_size: int = DEFAULT_SHM_SIZE  # bytes, HostConfig.ShmSize
    mounts: Sequence[Mapping[str, Any]] = ()  # extra OCI mounts (binds, tmpfs, hosts ...)
    network: NamespaceChoice = PRIVATE
    pid: NamespaceChoice = PRIVATE
    ipc: NamespaceChoice = PRIVATE
    uts: NamespaceChoice = PRIVATE
    cgroupns: Literal["host", "private"] | None = None  # None = daemon default
    # -- resources and devices
    resources: Resources = field(default_factory=Resources)
    devices: Sequence[ResolvedDevice] = ()  # from resolve_device() per HostConfig.Devices
    device_cgroup_rules: Sequence[str] = ()  # "c 1:3 rwm"
    sysctls: Mapping[str, str] = field(default_factory=dict)
    ulimits: Sequence[tuple[str, int, int]] = ()  # (name, soft, hard)
    oom_score_adj: int = 0
    init: bool = False  # HostConfig.Init: not supported yet, ignored
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HostFacts:
    """What the host offers; ``detect()`` reads it, tests construct it."""

    capabilities: tuple[str, ...]  # the daemon's effective set = what --privileged gets
    kernel: tuple[int, int]
    arch: str = "amd64"  # Docker-profile spelling (see seccomp.native_arch)
    cgroup_version: Literal["1", "2"] = "1"
    seccomp: bool = True  # kernel built with CONFIG_SECCOMP
    apparmor: bool = False
    in_user_namespace: bool = False
    # The runtime supports time namespaces (runc >= 1.2, crun); runc 1.1 does not.
    time_namespace: bool = False
    thermal_throttle_paths: tuple[str, ...] = ()  # masked too, when they exist
    net_sysctls: frozenset[str] = frozenset(k for k, _ in DEFAULT_NET_SYSCTLS)
    host_devices: tuple[ResolvedDevice, ...] = ()  # /dev nodes for --privileged

    @classmethod
    def detect(
        cls,
        *,
        cgroup_version: Literal["1", "2"],
        proc: Path = Path("/proc"),
        sys: Path = Path("/sys"),
        dev: Path = Path("/dev"),
    ) -> HostFacts:
        """Read the live host. ``cgroup_version`` comes from engine.runtime.cgroups,
        which sits above this package."""
        status = _read_text(proc / "self" / "status")
        return cls(
            capabilities=capabilities_from_status(status),
            kernel=seccomp.host_kernel(),
            arch=seccomp.native_arch(),
            cgroup_version=cgroup_version,
            seccomp="\nSeccomp:" in "\n" + status,
            apparmor=_readable(sys / "kernel" / "security" / "apparmor" / "profiles"),
            in_user_namespace=_in_user_namespace(proc),
            thermal_throttle_paths=thermal_throttle_paths(sys),
            net_sysctls=frozenset(
                k for k, _ in DEFAULT_NET_SYSCTLS
                if (proc / "sys" / k.replace(".", "/")).exists()
            ),
            host_devices=scan_host_devices(dev),
        )


@dataclass(frozen=True)
class SecurityOptions:
    """``HostConfig.SecurityOpt`` parsed."""

    no_new_privileges: bool = False
    seccomp: str = ""  # "" = daemon default, "unconfined", "builtin", or JSON text
    apparmor: str = ""
    labels: tuple[str, ...] = ()
    writable_cgroups: bool | None = None
    unconfined_paths: bool = False  # "systempaths=unconfined"


# -- host detection helpers --------------------------------------------------------------


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _readable(path: Path) -> bool:
    try:
        with path.open("rb"):
            return True
    except OSError:
        return False


def _in_user_namespace(proc: Path) -> bool:
    # The initial namespace maps the whole id range onto itself.
    lines = _read_text(proc / "self" / "uid_map").split()
    return bool(lines) and lines[:3] != ["0", "0", "4294967295"]


def capabilities_from_status(status: str) -> tuple[str, ...]:
    """Capability names in CapEff of a /proc/<pid>/status text, in bit order."""
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            mask = int(line.split()[1], 16)
            return tuple(n for i, n in enumerate(KNOWN_CAPABILITIES) if mask >> i & 1)
    return KNOWN_CAPABILITIES


def capability_mask(names: Iterable[str]) -> int:
    """The /proc/<pid>/status bitmask of a capability set (for tests and diagnostics)."""
    return sum(1 << KNOWN_CAPABILITIES.index(n) for n in set(names))


def _parse_cpu_list(text: str) -> list[int]:
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def thermal_throttle_paths(sys: Path = Path("/sys")) -> tuple[str, ...]:
    """Existing ``/sys/devices/system/cpu/cpuN/thermal_throttle`` dirs (masked: they leak
    host activity, GHSA-6fw5-f8r9-fgfm)."""
    cpu_dir = sys / "devices" / "system" / "cpu"
    try:
        cpus = _parse_cpu_list((cpu_dir / "possible").read_text())
    except (OSError, ValueError):
        return ()
    return tuple(
        f"/sys/devices/system/cpu/cpu{n}/thermal_throttle"
        for n in cpus
        if (cpu_dir / f"cpu{n}" / "thermal_throttle").exists()
    )


# -- devices ---------------------------------------------------------------------------

_SKIPPED_DEV_DIRS = frozenset({"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"})


def _device_from_stat(path_in_container: str, st: os.stat_result,
                      permissions: str) -> ResolvedDevice | None:
    if stat.S_ISCHR(st.st_mode):
        kind: Literal["c", "b"] = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        return None
    if os.major(st.st_rdev) == 0:
        return None
    return ResolvedDevice(
        path=path_in_container,
        type=kind,
        major=os.major(st.st_rdev),
        minor=os.minor(st.st_rdev),
        file_mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        permissions=permissions,
    )


def scan_host_devices(dev: Path = Path("/dev")) -> tuple[ResolvedDevice, ...]:
    """All device nodes under /dev, for --privileged (same skips as dockerd/containerd:
    pseudo-filesystem dirs, the console, symlinks and non-devices)."""
    out: list[ResolvedDevice] = []
    stack = [dev]
    while stack:
        directory = stack.pop()
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if entry.name not in _SKIPPED_DEV_DIRS:
                    stack.append(Path(entry.path))
                continue
            if entry.name == "console":
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # vanished while scanning
            rel = os.path.relpath(entry.path, dev)
            device = _device_from_stat(posixpath.join("/dev", rel), st, "rwm")
            if device is not None:
                out.append(device)
    return tuple(out)


def _check_permissions(permissions: str) -> str:
    perms = permissions or "rwm"
    if not set(perms) <= set("rwm") or len(perms) > 3:
        raise InvalidParameter(f"invalid device cgroup permissions: {permissions!r}")
    return perms


def resolve_device(
    path_on_host: str, path_in_container: str, permissions: str = "rwm"
) -> list[ResolvedDevice]:
    """Resolve one ``HostConfig.Devices`` entry (a node, or a directory of nodes).

    A symlink on the host is followed (``/dev/disk/by-id/...``); the node keeps the
    container path it was asked for. Raises dockerd's error when nothing is found.
    """
    perms = _check_permissions(permissions)
    target = path_in_container or path_on_host
    resolved = os.path.realpath(path_on_host)
    try:
        st = os.stat(resolved, follow_symlinks=False)
    except OSError as exc:
        raise _device_error(path_on_host, exc.strerror or str(exc)) from None
    device = _device_from_stat(target, st, perms)
    if device is not None:
        return [device]
    found: list[ResolvedDevice] = []
    if stat.S_ISDIR(st.st_mode):
        for directory, _dirs, files in os.walk(resolved):
            for name in sorted(files):
                full = os.path.join(directory, name)
                try:
                    child_st = os.stat(full, follow_symlinks=False)
                except OSError:
                    continue
                child_target = target + full[len(resolved):]
                child = _device_from_stat(child_target, child_st, perms)
                if child is not None:
                    found.append(child)
    if not found:
        raise _device_error(path_on_host, "not a device node")
    return found


def _device_error(path: str, reason: str) -> InvalidParameter:
    return InvalidParameter(
        f"error gathering device information while adding custom device {_go_quote(path)}: "
        f"{reason.lower()}"
    )


_CGROUP_RULE = re.compile(r"^([acb]) ([0-9]+|\*):([0-9]+|\*) ([rwm]{1,3})$")


def parse_device_cgroup_rule(rule: str) -> dict[str, Any]:
    """``"c 1:3 rwm"`` -> an OCI ``LinuxDeviceCgroup`` allow entry (``*`` = -1)."""
    m = _CGROUP_RULE.match(rule)
    if not m:
        raise InvalidParameter(f"invalid device cgroup rule format: '{rule}'")
    kind, major, minor, access = m.groups()
    return {
        "allow": True,
        "type": kind,
        "major": -1 if major == "*" else int(major),
        "minor": -1 if minor == "*" else int(minor),
        "access": access,
    }


def _device_rule(allow: bool, kind: str | None, major: int | None, minor: int | None,
                 access: str = "rwm") -> dict[str, Any]:
    rule: dict[str, Any] = {"allow": allow}
    if kind is not None:
        rule["type"] = kind
    if major is not None:
        rule["major"] = major
    if minor is not None:
        rule["minor"] = minor
    rule["access"] = access
    return rule


_Json = dict[str, Any]


def _devices(req: SpecRequest, host: HostFacts) -> tuple[list[_Json], list[_Json]]:
    """(linux.devices, linux.resources.devices)."""
    if req.privileged:
        nodes = [d.to_oci() for d in host.host_devices]
        # Mappings to another path still get a node; same-path ones already exist.
        nodes += [d.to_oci() for d in req.devices if d.path not in {n["path"] for n in nodes}]
        return nodes, [_device_rule(True, None, None, None)]
    rules = [_device_rule(*r) for r in _DEFAULT_DEVICE_RULES]
    rules += [_device_rule(True, d.type, d.major, d.minor, d.permissions) for d in req.devices]
    rules += [parse_device_cgroup_rule(r) for r in req.device_cgroup_rules]
    return [d.to_oci() for d in req.devices], rules


# -- capabilities -------------------------------------------------------------------------


def normalize_capabilities(names: Iterable[str], available: Iterable[str]) -> list[str]:
    """Upper-case, add the CAP_ prefix, keep "ALL"; reject unknown or unavailable names
    (dockerd's messages; the caller prefixes "invalid CapAdd: "/"invalid CapDrop: ")."""
    have = set(available)
    out = []
    for raw in names:
        name = raw.upper()
        if name == "ALL":
            out.append(name)
            continue
        if not name.startswith("CAP_"):
            name = "CAP_" + name
        if name not in KNOWN_CAPABILITIES:
            raise InvalidParameter(f"unknown capability: {_go_quote(name)}")
        if name not in have:
            raise InvalidParameter(
                "capability not supported by your kernel or not available in the current "
                f"environment: {_go_quote(name)}"
            )
        out.append(name)
    return out


def _normalize_field(field_name: str, names: Iterable[str], available: Iterable[str]) -> list[str]:
    try:
        return normalize_capabilities(names, available)
    except InvalidParameter as exc:
        raise InvalidParameter(f"invalid {field_name}: {exc.message}") from None


def tweak_capabilities(
    cap_add: Iterable[str],
    cap_drop: Iterable[str],
    privileged: bool,
    available: Sequence[str],
) -> list[str]:
    """The container's capability set from Docker's defaults, CapAdd and CapDrop.

    Privileged gets every capability the daemon has. "ALL" in CapAdd means everything
    except CapDrop; "ALL" in CapDrop means only CapAdd.
    """
    adds = _normalize_field("CapAdd", cap_add, available)
    drops = _normalize_field("CapDrop", cap_drop, available)
    if privileged:
        return list(available)
    if not adds and not drops:
        return list(DEFAULT_CAPABILITIES)
    if "ALL" in adds:
        return [c for c in available if c not in drops]
    if "ALL" in drops:
        return _unique(adds)
    kept = [c for c in DEFAULT_CAPABILITIES if c not in drops]
    return _unique(kept + adds)


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


# -- security options -----------------------------------------------------------------------

_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def _go_bool(value: str) -> bool | None:
    if value in _GO_TRUE:
        return True
    if value in _GO_FALSE:
        return False
    return None


def _go_quote(s: str) -> str:
    """Go's %q for the ASCII cases error messages meet."""
    out = ['"']
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _split_opt(opt: str) -> tuple[str, str] | None:
    # "=" is the separator; ":" is the deprecated one, used only when there is no "="
    # (a seccomp JSON value contains both).
    for sep in ("=", ":"):
        if sep in opt:
            key, _, value = opt.partition(sep)
            return key, value
    return None


def parse_security_opts(
    opts: Iterable[str], daemon_no_new_privileges: bool = False
) -> SecurityOptions:
    """Parse ``HostConfig.SecurityOpt`` like dockerd (plus "systempaths=unconfined",
    which the docker CLI turns into empty MaskedPaths/ReadonlyPaths itself)."""
    nnp = daemon_no_new_privileges
    seccomp_value, apparmor = "", ""
    labels: list[str] = []
    writable: bool | None = None
    unconfined_paths = False
    for opt in opts:
        if opt in ("no-new-privileges", "writable-cgroups", "disable"):
            nnp = True if opt == "no-new-privileges" else nnp
            writable = True if opt == "writable-cgroups" else writable
            labels += ["disable"] if opt == "disable" else []
            continue
        split = _split_opt(opt)
        if split is None:
            raise InvalidParameter(f"invalid --security-opt 1: {_go_quote(opt)}")
        key, value = split
        if key == "label":
            labels.append(value)
        elif key == "apparmor":
            apparmor = value
        elif key == "seccomp":
            seccomp_value = value
        elif key in ("no-new-privileges", "writable-cgroups"):
            flag = _go_bool(value)
            if flag is None:
                raise InvalidParameter(f"invalid --security-opt 2: {_go_quote(opt)}")
            if key == "no-new-privileges":
                nnp = flag
            else:
                writable = flag
        elif key == "systempaths" and value == "unconfined":
            unconfined_paths = True
        else:
            raise InvalidParameter(f"invalid --security-opt 2: {_go_quote(opt)}")
    return SecurityOptions(
        no_new_privileges=nnp,
        seccomp=seccomp_value,
        apparmor=apparmor,
        labels=tuple(labels),
        writable_cgroups=writable,
        unconfined_paths=unconfined_paths,
    )


def _seccomp(req: SpecRequest, opts: SecurityOptions, host: HostFacts,
             caps: Sequence[str]) -> dict[str, Any] | None:
    """linux.seccomp, following dockerd's WithSeccomp precedence."""
    choice = opts.seccomp
    if choice == "unconfined":
        return None
    target = seccomp.Target(frozenset(caps), host.arch, host.kernel)
    if req.privileged:
        # Privileged runs unconfined unless a profile is named explicitly.
        if choice in ("", "builtin"):
            return None
        return _render_custom(choice, target)
    if not host.seccomp:
        if choice not in ("", "builtin"):
            raise InvalidParameter(
                "seccomp is not enabled in your kernel, cannot run a custom seccomp profile"
            )
        return None
    if choice == "builtin":
        return seccomp.render(seccomp.default_profile(), target)
    if choice:
        return _render_custom(choice, target)
    daemon_choice = req.daemon_seccomp_profile
    if daemon_choice == "unconfined":
        return None
    if daemon_choice and daemon_choice != "builtin":
        return _render_custom(daemon_choice, target)
    return seccomp.render(seccomp.default_profile(), target)


def _render_custom(text: str, target: seccomp.Target) -> dict[str, Any] | None:
    profile = seccomp.parse_profile(text)
    return None if profile is None else seccomp.render(profile, target)


# -- environment -------------------------------------------------------------------------


def replace_or_append_env(defaults: Sequence[str], overrides: Sequence[str]) -> list[str]:
    """Docker's merge: an override replaces the same key, "K" alone removes K."""
    env = list(defaults)
    index = {e.partition("=")[0]: i for i, e in enumerate(env)}
    removed: set[int] = set()
    for value in overrides:
        key, sep, _ = value.partition("=")
        if not sep:
            if key in index:
                removed.add(index[key])
            continue
        if key in index:
            env[index[key]] = value
            removed.discard(index[key])
        else:
            index[key] = len(env)
            env.append(value)
    return [e for i, e in enumerate(env) if i not in removed]


def default_env(hostname: str, tty: bool) -> list[str]:
    """What dockerd puts before the container's own env: PATH, HOSTNAME, TERM on a tty."""
    env = [f"PATH={DEFAULT_PATH_ENV}", f"HOSTNAME={hostname}"]
    if tty:
        env.append("TERM=xterm")
    return env


def with_home(env: Sequence[str], home: str) -> list[str]:
    """Add HOME when unset, as runc does (passwd home of the user, else "/")."""
    if any(e.partition("=")[0] == "HOME" for e in env):
        return list(env)
    return [*env, f"HOME={home or '/'}"]


def validate_env(env: Iterable[str]) -> None:
    for entry in env:
        if entry.partition("=")[0] == "":
            raise InvalidParameter(f"invalid environment variable: {entry}")
        if "\x00" in entry:
            # execve cannot pass it: refused here rather than when the process starts
            raise InvalidParameter(
                f"invalid environment variable: {entry!r}: NUL byte (\\x00) not allowed"
            )


def process_env(env: Sequence[str], hostname: str, tty: bool, home: str) -> list[str]:
    """The final process environment: defaults, then the container's, then HOME."""
    validate_env(env)
    return with_home(replace_or_append_env(default_env(hostname, tty), env), home)


# -- sysctls and rlimits -------------------------------------------------------------------


def _sysctl_dots(name: str) -> str:
    # runc accepts "net/ipv4/ip_forward" and converts it to dotted form.
    slash, dot = name.find("/"), name.find(".")
    if slash != -1 and (dot == -1 or slash < dot):
        return name.translate(str.maketrans("/.", "./"))
    return name


def validate_sysctls(
    sysctls: Iterable[str], *, ipc_ns: bool, net_ns: bool, uts_ns: bool, user_ns: bool = False
) -> None:
    """Refuse sysctls that would change the host, with runc's messages.

    Only sysctls of a namespace the container has of its own are allowed: IPC ones
    (kernel.msg*, kernel.sem, kernel.shm*, fs.mqueue.*), net.*, kernel.domainname.
    """
    for raw in sysctls:
        name = _sysctl_dots(raw)
        if name in _IPC_SYSCTLS or name.startswith("fs.mqueue."):
            if not ipc_ns:
                raise InvalidParameter(
                    f"sysctl {_go_quote(name)} is not allowed in the hosts ipc namespace"
                )
            continue
        if name.startswith("net."):
            if not net_ns:
                raise InvalidParameter(
                    f"sysctl {_go_quote(name)} not allowed in host network namespace"
                )
            continue
        if uts_ns and name == "kernel.domainname":
            continue
        if uts_ns and name == "kernel.hostname":
            raise InvalidParameter(
                'sysctl "kernel.hostname" is not allowed as it conflicts with the OCI '
                '"hostname" field'
            )
        if name.startswith("user.") and user_ns:
            continue
        if name.startswith("user."):
            raise InvalidParameter(
                f"setting ucounts without a user namespace not allowed: {name}"
            )
        raise InvalidParameter(f"sysctl {_go_quote(name)} is not in a separate kernel namespace")


def rlimits(ulimits: Iterable[tuple[str, int, int]]) -> list[dict[str, Any]]:
    """OCI process.rlimits for the requested ulimits only (never defaults)."""
    out = []
    for name, soft, hard in ulimits:
        if name not in ULIMIT_NAMES:
            raise InvalidParameter(f"invalid ulimit type: {name}")
        if soft > hard:
            raise InvalidParameter(
                f"ulimit soft limit must be less than or equal to hard limit: {soft} > {hard}"
            )
        # Docker converts with uint64(), so -1 becomes RLIM_INFINITY.
        out.append({"type": "RLIMIT_" + name.upper(), "hard": hard % _UINT64,
                    "soft": soft % _UINT64})
    return out


# -- mounts ------------------------------------------------------------------------------


def default_mounts(shm_size: int = DEFAULT_SHM_SIZE) -> list[dict[str, Any]]:
    """Docker's default mounts (fresh dicts on every call)."""
    return [
        _mount("/proc", "proc", "proc", ["nosuid", "noexec", "nodev"]),
        _mount("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
        _mount("/dev/pts", "devpts", "devpts",
               ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]),
        _mount("/sys", "sysfs", "sysfs", ["nosuid", "noexec", "nodev", "ro"]),
        _mount("/sys/fs/cgroup", "cgroup", "cgroup", ["ro", "nosuid", "noexec", "nodev"]),
        _mount("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
        _mount("/dev/shm", "tmpfs", "shm",
               ["nosuid", "noexec", "nodev", "mode=1777", f"size={shm_size}"]),
    ]


def _mount(destination: str, kind: str, source: str, options: list[str]) -> dict[str, Any]:
    return {"destination": destination, "type": kind, "source": source, "options": options}


def _depth(destination: str) -> int:
    return len(posixpath.normpath(destination).split("/"))


def _without(options: list[str], unwanted: str) -> list[str]:
    return [o for o in options if o != unwanted]


def _mounts(req: SpecRequest, writable_cgroups: bool) -> list[dict[str, Any]]:
    """Defaults overridden by the caller's mounts, then dockerd's ro/rw adjustments."""
    user: list[dict[str, Any]] = []
    for m in req.mounts:
        dest = m.get("destination")
        if not isinstance(dest, str) or not dest.startswith("/"):
            raise InvalidParameter(f"invalid mount path: '{dest}' mount path must be absolute")
        user.append(json.loads(json.dumps(dict(m))))  # deep copy, JSON-safe
    user_dests = {posixpath.normpath(m["destination"]) for m in user}
    own_dev = "/dev" in user_dests
    defaults = [
        m for m in default_mounts(req.shm_size)
        if m["destination"] not in user_dests
        and not (own_dev and m["destination"].startswith("/dev/"))
    ]
    for m in defaults:
        if req.readonly_rootfs and m["destination"] not in _RW_WITH_READONLY_ROOT:
            if "ro" not in m["options"]:
                m["options"].append("ro")
        if req.privileged and m["destination"] == "/sys":
            m["options"] = _without(m["options"], "ro")
        if writable_cgroups and m["type"] == "cgroup":
            m["options"] = _without(m["options"], "ro")
    # Parents before children, so a bind under another bind lands on top of it.
    user.sort(key=lambda m: _depth(m["destination"]))
    return defaults + user


def _rootfs_propagation(mounts: Sequence[Mapping[str, Any]]) -> str | None:
    """The root's propagation a shared or slave bind needs (dockerd's WithMounts): a
    shared bind makes it shared, a slave one rslave; None leaves the runtime's default."""
    options = {o for m in mounts for o in (m.get("options") or [])}
    if options & {"shared", "rshared"}:
        return "shared"
    if options & {"slave", "rslave"}:
        return "rslave"
    return None


# Even with a read-only rootfs these stay writable (dockerd keeps them so).
_RW_WITH_READONLY_ROOT = frozenset({"/proc", "/dev/pts", "/dev/shm", "/dev/mqueue", "/dev"})


# -- namespaces ----------------------------------------------------------------------------


def _namespace(kind: str, choice: NamespaceChoice) -> dict[str, str] | None:
    if choice.mode == "host":
        return None
    if choice.mode == "shared" and not choice.path:
        raise InvalidParameter(f"joining a {kind} namespace needs its path")
    entry = {"type": kind}
    if choice.path:
        entry["path"] = choice.path
    return entry


def _cgroupns_private(req: SpecRequest, host: HostFacts) -> bool:
    if req.cgroupns is not None:
        return req.cgroupns == "private"
    # dockerd's default: private on cgroup v2 (even when privileged), host on v1.
    return host.cgroup_version == "2"


def _namespaces(req: SpecRequest, host: HostFacts) -> list[dict[str, str]]:
    wanted = [
        ("mount", PRIVATE),
        ("network", req.network),
        ("uts", req.uts),
        ("pid", req.pid),
        ("ipc", req.ipc),
    ]
    if host.time_namespace:
        wanted.insert(2, ("time", PRIVATE))
    if _cgroupns_private(req, host):
        wanted.append(("cgroup", PRIVATE))
    return [ns for kind, choice in wanted if (ns := _namespace(kind, choice)) is not None]


def _sysctls(req: SpecRequest, host: HostFacts) -> dict[str, str]:
    out: dict[str, str] = {}
    # Only in a network namespace made for this container (not host, not another's),
    # and not inside a user namespace, where ping_group_range cannot be set.
    if req.network.mode == "private":
        for key, value in DEFAULT_NET_SYSCTLS:
            if key not in host.net_sysctls:
                continue
            if key == "net.ipv4.ping_group_range" and host.in_user_namespace:
                continue
            out[key] = value
    if req.domainname:
        out["kernel.domainname"] = req.domainname
    out.update(req.sysctls)  # the container's own win, as with dockerd
    # Validate the merged set: a domainname with --uts=host is refused here too.
    validate_sysctls(
        out,
        ipc_ns=req.ipc.mode != "host",
        net_ns=req.network.mode != "host",
        uts_ns=req.uts.mode != "host",
    )
    return out


# -- resources ---------------------------------------------------------------------------


def _memory(r: Resources) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if r.memory > 0:
        out["limit"] = r.memory
    if r.memory_reservation > 0:
        out["reservation"] = r.memory_reservation
    # Like dockerd, -1 (unlimited) is expressed by leaving swap unset.
    if r.memory_swap > 0:
        out["swap"] = r.memory_swap
    if r.memory_swappiness is not None and r.memory_swappiness >= 0:
        out["swappiness"] = r.memory_swappiness
    if r.oom_kill_disable is not None:
        out["disableOOMKiller"] = r.oom_kill_disable
    return out


def _cpu(r: Resources) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if r.cpu_shares < 0:
        raise InvalidParameter(
            f"invalid CPU shares ({r.cpu_shares}): value must be a positive integer"
        )
    if r.cpu_shares:
        out["shares"] = r.cpu_shares
    if r.nano_cpus > 0:
        period = 100_000  # 100ms in microseconds, the kernel's default CFS period
        out["period"] = period
        out["quota"] = r.nano_cpus * period // 1_000_000_000
    if r.cpu_period:
        out["period"] = r.cpu_period
    if r.cpu_quota:
        out["quota"] = r.cpu_quota
    if r.cpu_realtime_period:
        out["realtimePeriod"] = r.cpu_realtime_period
    if r.cpu_realtime_runtime:
        out["realtimeRuntime"] = r.cpu_realtime_runtime
    if r.cpuset_cpus:
        out["cpus"] = r.cpuset_cpus
    if r.cpuset_mems:
        out["mems"] = r.cpuset_mems
    return out


def _resources(req: SpecRequest, device_rules: list[dict[str, Any]]) -> dict[str, Any]:
    r = req.resources
    out: dict[str, Any] = {"devices": device_rules}
    if memory := _memory(r):
        out["memory"] = memory
    if cpu := _cpu(r):
        out["cpu"] = cpu
    if r.pids_limit is not None:
        out["pids"] = {"limit": r.pids_limit if r.pids_limit > 0 else -1}
    if block_io := _block_io(r):
        out["blockIO"] = block_io
    return out


def _block_io(r: Resources) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if r.blkio_weight:
        out["weight"] = r.blkio_weight
    if r.blkio_weight_device:
        out["weightDevice"] = [{"major": d.major, "minor": d.minor, "weight": d.value}
                               for d in r.blkio_weight_device]
    for key, rates in (("throttleReadBpsDevice", r.blkio_read_bps),
                       ("throttleWriteBpsDevice", r.blkio_write_bps),
                       ("throttleReadIOPSDevice", r.blkio_read_iops),
                       ("throttleWriteIOPSDevice", r.blkio_write_iops)):
        if rates:
            out[key] = [{"major": d.major, "minor": d.minor, "rate": d.value} for d in rates]
    return out


# -- the spec --------------------------------------------------------------------------


def _validate_basics(req: SpecRequest) -> None:
    if not req.args:
        raise InvalidParameter("no command specified")
    if req.cwd and not req.cwd.startswith("/"):
        raise InvalidParameter(
            f"the working directory '{req.cwd}' is invalid, it needs to be an absolute path"
        )
    if not req.rootfs.startswith("/"):
        raise InvalidParameter(f"rootfs path must be absolute: {req.rootfs!r}")
    if len(req.hostname.encode()) > 64:
        # The kernel's limit (sethostname EINVAL); found here rather than at start.
        raise InvalidParameter(f"invalid hostname {req.hostname!r}: longer than 64 bytes")
    if req.shm_size <= 0:
        raise InvalidParameter("SHM size can not be less than 0")


def _process(req: SpecRequest, opts: SecurityOptions, host: HostFacts,
             caps: Sequence[str]) -> dict[str, Any]:
    user = req.user
    process: dict[str, Any] = {
        "terminal": req.terminal,
        "user": {
            "uid": user.uid,
            "gid": user.gid,
            # dockerd always lists the primary gid; keep that shape for a bare user.
            "additionalGids": list(user.additional_gids or (user.gid,)),
        },
        "args": list(req.args),
        "env": process_env(req.env, req.hostname, req.terminal, user.home),
        "cwd": posixpath.normpath(req.cwd) if req.cwd else "/",
        # Docker fills bounding, effective and permitted alike, for every user: for a
        # non-root user the kernel clears effective/permitted at exec (no ambient set),
        # which is the CapEff=0 that `docker run -u 1000` shows.
        "capabilities": {
            "bounding": list(caps),
            "effective": list(caps),
            "permitted": list(caps),
        },
        "oomScoreAdj": req.oom_score_adj,
    }
    if req.terminal and req.console_size and any(req.console_size):
        process["consoleSize"] = {"height": req.console_size[0], "width": req.console_size[1]}
    if opts.no_new_privileges:
        process["noNewPrivileges"] = True
    if limits := rlimits(req.ulimits):
        process["rlimits"] = limits
    # Only an explicitly named AppArmor profile, and only where AppArmor exists: we do not
    # load a docker-default profile (yet), and naming an unloaded one fails at start.
    if host.apparmor and opts.apparmor:
        process["apparmorProfile"] = opts.apparmor
    return process


def default_masked_paths(host: HostFacts) -> list[str]:
    """dockerd's default masked paths on this host (with its CPUs' thermal_throttle dirs)."""
    return [*DEFAULT_MASKED_PATHS, *host.thermal_throttle_paths]


def stored_system_paths(
    host_config: Mapping[str, Any], host: HostFacts
) -> tuple[list[str] | None, list[str] | None]:
    """``HostConfig.MaskedPaths`` and ``ReadonlyPaths`` as create stores them, as dockerd
    does (so inspect shows what the spec applies): a list given stays; otherwise the
    defaults, none with ``systempaths=unconfined``, null for a privileged container."""
    try:
        security = parse_security_opts(host_config.get("SecurityOpt") or [])
    except InvalidParameter:
        security = SecurityOptions()  # refused by create's validation right after
    privileged = bool(host_config.get("Privileged"))

    def stored(given: Sequence[str] | None, defaults: list[str]) -> list[str] | None:
        if given is not None:
            return list(given)
        if privileged:
            return None
        return [] if security.unconfined_paths else defaults

    return (stored(host_config.get("MaskedPaths"), default_masked_paths(host)),
            stored(host_config.get("ReadonlyPaths"), list(DEFAULT_READONLY_PATHS)))


def _path_lists(req: SpecRequest, opts: SecurityOptions,
                host: HostFacts) -> tuple[list[str], list[str]]:
    """The lists a spec applies: those stored at create (``stored_system_paths``); the
    defaults for a record stored before create did that."""
    if opts.unconfined_paths:
        return [], []
    default_masked = [] if req.privileged else default_masked_paths(host)
    default_ro = [] if req.privileged else list(DEFAULT_READONLY_PATHS)
    masked = default_masked if req.masked_paths is None else list(req.masked_paths)
    readonly = default_ro if req.readonly_paths is None else list(req.readonly_paths)
    return masked, readonly


def build_spec(req: SpecRequest, host: HostFacts) -> dict[str, Any]:
    """The OCI config.json for ``req`` on ``host``. Raises InvalidParameter."""
    _validate_basics(req)
    opts = parse_security_opts(req.security_opt, req.daemon_no_new_privileges)
    caps = tweak_capabilities(req.cap_add, req.cap_drop, req.privileged, host.capabilities)
    writable_cgroups = req.privileged if opts.writable_cgroups is None else opts.writable_cgroups
    nodes, device_rules = _devices(req, host)
    masked, readonly = _path_lists(req, opts, host)
    linux: dict[str, Any] = {
        "resources": _resources(req, device_rules),
        "cgroupsPath": req.cgroups_path,
        "namespaces": _namespaces(req, host),
        "devices": nodes,
        "sysctl": _sysctls(req, host),
        "maskedPaths": masked,
        "readonlyPaths": readonly,
    }
    if (profile := _seccomp(req, opts, host, caps)) is not None:
        linux["seccomp"] = profile
    if (propagation := _rootfs_propagation(req.mounts)) is not None:
        linux["rootfsPropagation"] = propagation
    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": _process(req, opts, host, caps),
        "root": {"path": req.rootfs, "readonly": req.readonly_rootfs},
        "hostname": req.hostname if req.uts.mode != "host" else "",
        "mounts": _mounts(req, writable_cgroups),
        "linux": linux,
    }
    if req.annotations:
        spec["annotations"] = dict(req.annotations)
    return spec


# -- users ---------------------------------------------------------------------------------

_MAX_USER_FILE = 16 * 1024 * 1024


def read_file_in_root(rootfs: Path, path: str) -> str | None:
    """Text of regular file ``path`` inside ``rootfs``, None when missing or not a
    regular file. Resolved by ``rootscope`` (symlinks interpreted inside the root), so
    nothing outside the root is ever opened."""
    root_fd = rootscope.open_root(rootfs)
    try:
        data = rootscope.read_small_file(root_fd, path, _MAX_USER_FILE)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
            return None
        raise
    finally:
        os.close(root_fd)
    return None if data is None else data.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class _PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True)
class _GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


def _atoi_lenient(text: str) -> int:
    # Like the Go parser: a malformed number in the file counts as 0.
    return int(text) if re.fullmatch(r"[+-]?[0-9]+", text) else 0


def _fields(line: str, count: int) -> list[str]:
    parts = line.split(":")
    return (parts + [""] * count)[:count]


def parse_passwd(text: str) -> list[_PasswdEntry]:
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        name, _pw, uid, gid, _gecos, home, _shell = _fields(line, 7)
        out.append(_PasswdEntry(name, _atoi_lenient(uid), _atoi_lenient(gid), home))
    return out


def parse_group(text: str) -> list[_GroupEntry]:
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _pw, gid, members = _fields(line, 4)
        out.append(_GroupEntry(name, _atoi_lenient(gid),
                               tuple(members.split(",")) if members else ()))
    return out


def _numeric_id(text: str) -> int | None:
    """An id written as a number (Go strconv.Atoi syntax), range-checked."""
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        return None
    value = int(text)
    if not 0 <= value <= _MAX_ID:
        raise InvalidParameter(f"uids and gids must be in range 0-{_MAX_ID}")
    return value


def _find_user(spec: str, passwd: list[_PasswdEntry] | None) -> tuple[int, int, str, str]:
    """(uid, gid, matched name, home) for the user part of ``--user``."""
    uid_arg = _numeric_id(spec) if spec else None
    for entry in passwd or []:
        if (spec == "" and entry.uid == 0) or (
            entry.uid == uid_arg if uid_arg is not None else entry.name == spec
        ):
            return entry.uid, entry.gid, entry.name, entry.home
    if spec and uid_arg is None:
        raise InvalidParameter(
            f"unable to find user {spec}: no matching entries in passwd file"
        )
    return (uid_arg or 0), 0, "", "/"


def _find_group(spec: str, groups: list[_GroupEntry] | None) -> int:
    gid_arg = _numeric_id(spec)
    for entry in groups or []:
        if entry.gid == gid_arg if gid_arg is not None else entry.name == spec:
            return entry.gid
    if gid_arg is None:
        raise InvalidParameter(f"unable to find group {spec}: no matching entries in group file")
    return gid_arg


def _additional_groups(names: Sequence[str], groups: list[_GroupEntry] | None) -> list[int]:
    out: list[int] = []
    for spec in names:
        gid = _find_group(spec, groups)
        if gid not in out:
            out.append(gid)
    return out


def lookup_user(rootfs: Path, user: str, group_add: Sequence[str] = ()) -> ProcessUser:
    """Resolve Docker's ``--user`` ("", "name", "uid", "name:group", "uid:gid", ...) and
    ``--group-add`` against the image's /etc/passwd and /etc/group, read strictly inside
    ``rootfs``. Numeric ids need no entry; names do (dockerd's messages)."""
    passwd_text = read_file_in_root(rootfs, "/etc/passwd")
    group_text = read_file_in_root(rootfs, "/etc/group")
    passwd = None if passwd_text is None else parse_passwd(passwd_text)
    groups = None if group_text is None else parse_group(group_text)
    user_part, group_part = _fields(user, 2)
    uid, gid, matched, home = _find_user(user_part, passwd)
    sgids: list[int] = []
    if group_part:
        gid = _find_group(group_part, groups)
    elif matched:
        sgids = [g.gid for g in groups or [] if matched in g.members]
    extra = _additional_groups(group_add, groups) if group_add else []
    # Docker's order (primary gid, passwd memberships, --group-add), without repeats.
    gids = tuple(dict.fromkeys((gid, *sgids, *extra)))
    return ProcessUser(uid=uid, gid=gid, additional_gids=gids, home=home or "/")


def resolve_user(
    rootfs: Path, user: str, group_add: Sequence[str] = ()
) -> tuple[int, int, list[int]]:
    """(uid, gid, additional gids) for ``--user``; see ``lookup_user``."""
    resolved = lookup_user(rootfs, user, group_add)
    return resolved.uid, resolved.gid, list(resolved.additional_gids)
