"""Detect the host's cgroup setup (for ``docker info`` and for building specs).

Classification follows dockerd: a host is cgroup version "2" only when ``/sys/fs/cgroup``
itself is a cgroup2 mount ("unified"). A hybrid host (v1 controllers, plus cgroup2 at
``/sys/fs/cgroup/unified``) is version "1", because the controllers that enforce limits
are the v1 ones. The driver is always ``cgroupfs``: we write cgroup paths for the runtime
and do not ask systemd to create scopes.

Every function takes the paths it reads as parameters (defaults are the live host's) so
that tests run over recorded trees (``tests/fixtures/cgroups/<name>/``). Mount points in
mountinfo are absolute host paths; those under ``/sys/fs/cgroup`` are re-based onto the
``root`` argument so a recorded tree can stand in for the real one.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from engine.errors import InvalidParameter

DEFAULT_MOUNTINFO = Path("/proc/self/mountinfo")
DEFAULT_ROOT = Path("/sys/fs/cgroup")
DEFAULT_SELF_CGROUP = Path("/proc/self/cgroup")
CGROUP_MOUNT_POINT = "/sys/fs/cgroup"

CgroupVersion = Literal["1", "2"]
CgroupDriver = Literal["cgroupfs"]

# Where container cgroups go when neither the daemon nor the container names a parent.
# Not "/docker", so a dockerd on the same host keeps its own subtree.
DEFAULT_PARENT = "/wharfd"

# v1 hierarchies we care about; used only when /proc/self/cgroup cannot be read.
_KNOWN_V1_CONTROLLERS = frozenset(
    {
        "blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "hugetlb", "memory",
        "net_cls", "net_prio", "perf_event", "pids", "rdma", "misc",
    }
)


@dataclass(frozen=True)
class MountEntry:
    """One line of mountinfo (proc(5)), the fields we use."""

    root: str
    mount_point: str
    fs_type: str
    source: str
    super_options: tuple[str, ...]


@dataclass(frozen=True)
class CgroupInfo:
    """What ``docker info`` reports about cgroups, plus where each hierarchy lives.

    The boolean names follow moby's ``sysinfo.SysInfo`` (and so ``docker info``:
    MemoryLimit, SwapLimit, KernelMemory, KernelMemoryTCP, CpuCfsPeriod, CpuCfsQuota,
    CPUShares, CPUSet, PidsLimit, OomKillDisable ...).
    """

    version: CgroupVersion
    driver: CgroupDriver = "cgroupfs"
    # v1: controllers with a mounted hierarchy; v2: the root's cgroup.controllers.
    controllers: frozenset[str] = frozenset()
    # v1: controller -> hierarchy mount dir (named hierarchies as "name=systemd", a
    # hybrid host's cgroup2 mount as ""); v2: {"": root}.
    mount_points: Mapping[str, Path] = field(default_factory=dict)
    memory_limit: bool = False
    swap_limit: bool = False
    memory_reservation: bool = False
    oom_kill_disable: bool = False
    memory_swappiness: bool = False
    kernel_memory: bool = False
    kernel_memory_tcp: bool = False
    cpu_shares: bool = False
    cpu_cfs: bool = False  # both CpuCfsPeriod and CpuCfsQuota
    cpu_realtime: bool = False
    cpuset: bool = False
    cpus: str = ""  # CPUs the daemon may give out, e.g. "0-1"
    mems: str = ""
    pids_limit: bool = False
    blkio_weight: bool = False
    blkio_weight_device: bool = False
    blkio_read_bps_device: bool = False
    blkio_write_bps_device: bool = False
    blkio_read_iops_device: bool = False
    blkio_write_iops_device: bool = False
    devices: bool = False
    warnings: tuple[str, ...] = ()


# -- mountinfo -------------------------------------------------------------------------

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field_: str) -> str:
    # The kernel escapes space, tab, newline and backslash in paths as \ooo.
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field_)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Parse mountinfo text; malformed lines are skipped rather than fatal."""
    entries = []
    for line in text.splitlines():
        fields = line.split()
        try:
            sep = fields.index("-", 6)  # optional fields end at a lone "-"
        except ValueError:
            continue
        if len(fields) < sep + 3:
            continue
        entries.append(
            MountEntry(
                root=_unescape(fields[3]),
                mount_point=_unescape(fields[4]),
                fs_type=fields[sep + 1],
                source=_unescape(fields[sep + 2]),
                super_options=tuple(fields[sep + 3].split(",")) if len(fields) > sep + 3 else (),
            )
        )
    return entries


def read_mountinfo(path: Path = DEFAULT_MOUNTINFO) -> list[MountEntry]:
    return parse_mountinfo(path.read_text())


def host_path(mount_point: str, root: Path = DEFAULT_ROOT) -> Path:
    """Map an absolute mount point onto ``root`` when it lies under /sys/fs/cgroup."""
    if mount_point == CGROUP_MOUNT_POINT:
        return root
    prefix = CGROUP_MOUNT_POINT + "/"
    if mount_point.startswith(prefix):
        return root / mount_point[len(prefix):]
    return Path(mount_point)


# -- /proc/self/cgroup ---------------------------------------------------------------------


def parse_self_cgroup(text: str) -> dict[str, str]:
    """``/proc/self/cgroup`` -> {controller: path}; the v2 entry is keyed ``""``.

    A line naming several controllers ("2:cpu,cpuacct:/") yields one key per controller.
    """
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for name in controllers.split(",") if controllers else [""]:
            out[name] = path
    return out


def _read_self_cgroup(path: Path) -> dict[str, str] | None:
    try:
        return parse_self_cgroup(path.read_text())
    except OSError:
        return None


# -- classification ------------------------------------------------------------------------


def cgroup_version(mounts: list[MountEntry]) -> CgroupVersion:
    """"2" iff the last mount on /sys/fs/cgroup is cgroup2 (later mounts shadow earlier)."""
    top = [m for m in mounts if m.mount_point == CGROUP_MOUNT_POINT]
    return "2" if top and top[-1].fs_type == "cgroup2" else "1"


def v1_mount_points(
    mounts: list[MountEntry], subsystems: frozenset[str], root: Path = DEFAULT_ROOT
) -> dict[str, Path]:
    """Controller -> mount dir for v1 hierarchies; first mount of a controller wins."""
    found: dict[str, Path] = {}
    for m in mounts:
        if m.fs_type != "cgroup":
            continue
        for opt in m.super_options:
            if opt in subsystems and opt not in found:
                found[opt] = host_path(m.mount_point, root)
    return found


def _exists(directory: Path | None, name: str) -> bool:
    return directory is not None and (directory / name).exists()


def _read_first_line(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _detect_v1(
    mounts: list[MountEntry], root: Path, self_cgroup: dict[str, str] | None
) -> CgroupInfo:
    subsystems = (
        frozenset(k for k in self_cgroup if k)
        if self_cgroup is not None
        else _KNOWN_V1_CONTROLLERS
    )
    points = v1_mount_points(mounts, subsystems, root)
    # Hybrid hosts also have cgroup2 at /sys/fs/cgroup/unified; runtimes create the
    # container's group there too, so cleanup and stats must know it (key "").
    unified = [m for m in mounts if m.fs_type == "cgroup2"]
    if unified:
        points[""] = host_path(unified[0].mount_point, root)
    mem, cpu, blkio, cpuset = (points.get(k) for k in ("memory", "cpu", "blkio", "cpuset"))
    warnings = []
    if mem is None:
        warnings.append("Your kernel does not support cgroup memory limit")
    elif not _exists(mem, "memory.memsw.limit_in_bytes"):
        warnings.append("Your kernel does not support swap memory limit")
    if cpu is None:
        warnings.append("Unable to find cpu cgroup in mounts")
    if blkio is None:
        warnings.append("Unable to find blkio cgroup in mounts")
    elif not _exists(blkio, "blkio.weight"):
        warnings.append("Your kernel does not support cgroup blkio weight")
    if "pids" not in points:
        warnings.append("Unable to find pids cgroup in mounts")
    return CgroupInfo(
        version="1",
        controllers=frozenset(k for k in points if k and not k.startswith("name=")),
        mount_points=points,
        memory_limit=mem is not None,
        swap_limit=_exists(mem, "memory.memsw.limit_in_bytes"),
        memory_reservation=_exists(mem, "memory.soft_limit_in_bytes"),
        oom_kill_disable=_exists(mem, "memory.oom_control"),
        memory_swappiness=_exists(mem, "memory.swappiness"),
        kernel_memory=_exists(mem, "memory.kmem.limit_in_bytes"),
        kernel_memory_tcp=_exists(mem, "memory.kmem.tcp.limit_in_bytes"),
        cpu_shares=_exists(cpu, "cpu.shares"),
        cpu_cfs=_exists(cpu, "cpu.cfs_quota_us"),
        cpu_realtime=_exists(cpu, "cpu.rt_period_us"),
        cpuset=cpuset is not None,
        cpus=_read_first_line(cpuset / "cpuset.cpus") if cpuset else "",
        mems=_read_first_line(cpuset / "cpuset.mems") if cpuset else "",
        pids_limit="pids" in points,
        blkio_weight=_exists(blkio, "blkio.weight"),
        blkio_weight_device=_exists(blkio, "blkio.weight_device"),
        blkio_read_bps_device=_exists(blkio, "blkio.throttle.read_bps_device"),
        blkio_write_bps_device=_exists(blkio, "blkio.throttle.write_bps_device"),
        blkio_read_iops_device=_exists(blkio, "blkio.throttle.read_iops_device"),
        blkio_write_iops_device=_exists(blkio, "blkio.throttle.write_iops_device"),
        devices="devices" in points,
        warnings=tuple(warnings),
    )


def _own_v2_group(root: Path, self_cgroup: dict[str, str] | None) -> Path | None:
    if self_cgroup is None or "" not in self_cgroup:
        return None
    return root / self_cgroup[""].lstrip("/")


def _detect_v2(root: Path, self_cgroup: dict[str, str] | None) -> CgroupInfo:
    controllers = frozenset(_read_first_line(root / "cgroup.controllers").split())
    own = _own_v2_group(root, self_cgroup)
    has_mem, has_cpu, has_io = ("memory" in controllers, "cpu" in controllers,
                                "io" in controllers)
    has_cpuset = "cpuset" in controllers
    warnings = [
        f"Unable to find {name} controller"
        for name in ("memory", "cpu", "io", "cpuset", "pids")
        if name not in controllers
    ]
    return CgroupInfo(
        version="2",
        controllers=controllers,
        mount_points={"": root},
        memory_limit=has_mem,
        # Swap limits need memory.swap.max, which only exists below the root group
        # (dockerd looks at its own group for the same reason).
        swap_limit=has_mem and _exists(own, "memory.swap.max"),
        memory_reservation=has_mem,
        cpu_shares=has_cpu,
        cpu_cfs=has_cpu,
        cpuset=has_cpuset,
        cpus=_read_first_line(root / "cpuset.cpus.effective") if has_cpuset else "",
        mems=_read_first_line(root / "cpuset.mems.effective") if has_cpuset else "",
        pids_limit="pids" in controllers,
        blkio_weight=has_io,
        blkio_weight_device=has_io,
        blkio_read_bps_device=has_io,
        blkio_write_bps_device=has_io,
        blkio_read_iops_device=has_io,
        blkio_write_iops_device=has_io,
        # v2 has no devices controller; runtimes enforce device rules with eBPF.
        devices=True,
        warnings=tuple(warnings),
    )


def detect(
    mountinfo: Path = DEFAULT_MOUNTINFO,
    root: Path = DEFAULT_ROOT,
    self_cgroup: Path = DEFAULT_SELF_CGROUP,
) -> CgroupInfo:
    """Detect version, controllers and limit support (blocking file reads; call off-loop)."""
    mounts = read_mountinfo(mountinfo)
    own = _read_self_cgroup(self_cgroup)
    if cgroup_version(mounts) == "2":
        return _detect_v2(root, own)
    return _detect_v1(mounts, root, own)


# -- container cgroup paths ------------------------------------------------------------

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def cgroups_path(parent: str, container_id: str) -> str:
    """The OCI ``linux.cgroupsPath`` for a container with the cgroupfs driver.

    ``parent`` is ``HostConfig.CgroupParent`` or the daemon's ``cgroup-parent`` (empty:
    our default). As with dockerd, an absolute parent is taken from the hierarchy root
    and a relative one is relative to the runtime's own cgroup; the result is cleaned
    so ``..`` cannot climb above the root.
    """
    if not _ID.match(container_id):
        raise InvalidParameter(f"invalid container id for a cgroup path: {container_id!r}")
    base = parent or DEFAULT_PARENT
    joined = posixpath.normpath(posixpath.join(base, container_id))
    if base.startswith("/"):
        return joined
    # normpath keeps leading ".." on relative paths; refuse them instead of escaping.
    if joined == ".." or joined.startswith("../"):
        raise InvalidParameter(f"invalid cgroup parent: {parent!r}")
    return joined


def cgroup_dirs(info: CgroupInfo, path: str) -> dict[str, Path]:
    """Directories of an absolute cgroups path in every hierarchy (for stats and cleanup).

    Keys are controller names on v1 (named hierarchies included, ``""`` for a hybrid
    host's cgroup2 mount) and ``""`` on v2.
    Relative paths depend on the runtime's own cgroup and are not resolved here.
    """
    if not path.startswith("/"):
        raise ValueError(f"cgroup path must be absolute here: {path!r}")
    rel = posixpath.normpath(path).lstrip("/")
    return {name: mount / rel for name, mount in info.mount_points.items()}
