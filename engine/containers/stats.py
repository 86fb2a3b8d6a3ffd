"""``docker stats``: one sample of a container's cgroup, network and the host's CPU time,
in the JSON shape dockerd sends (api-notes §3.6).

Every reader takes the paths it reads, so unit tests run over recorded files
(``tests/fixtures/cgroups/``). All reads block: call ``read_sample`` off the loop.

cgroup v1 (moby's ``daemon/stats_unix.go`` v1 mapping, checked against dockerd 20.10):
  cpu_usage.total_usage = cpuacct.usage, percpu_usage = cpuacct.usage_percpu,
  usage_in_{kernel,user}mode = cpuacct.stat system/user ticks in ns, throttling_data from
  cpu.stat; memory_stats = {usage: memory.usage_in_bytes, max_usage:
  memory.max_usage_in_bytes, stats: memory.stat (moby's key set, total_inactive_file
  included), failcnt, limit: memory.limit_in_bytes}; blkio from the CFQ files when the
  kernel has them, else the throttle files; pids from pids.current/pids.max.
cgroup v2 (moby ``statsV2``): total_usage = usage_usec * 1000, kernel/user from
  system_usec/user_usec, no percpu_usage; throttling from nr_periods, nr_throttled,
  throttled_usec * 1000; memory = {usage: memory.current, limit: memory.max, stats:
  memory.stat, failcnt: memory.events oom}; blkio io_service_bytes_recursive = read/write
  bytes of io.stat, the other lists null; pids from pids.current/pids.max.
Both: limit capped at the host's RAM; system_cpu_usage from /proc/stat (the first seven
fields of the ``cpu`` line, in ns), online_cpus = number of ``cpuN`` lines; networks
from ``/proc/<init pid>/net/dev`` (the container's network namespace), ``lo`` left out.
Every number is an int: a float in an integer field breaks the Go client.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engine.containers.archive import rfc3339_nano

ZERO_TIME = "0001-01-01T00:00:00Z"
NANOS = 1_000_000_000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

BLKIO_KEYS = (
    "io_service_bytes_recursive", "io_serviced_recursive", "io_queue_recursive",
    "io_service_time_recursive", "io_wait_time_recursive", "io_merged_recursive",
    "io_time_recursive", "sectors_recursive",
)
# The memory.stat keys moby reports on cgroup v1 (others, e.g. shmem or swap, it drops).
_V1_MEMORY_BASE = (
    "cache", "rss", "rss_huge", "mapped_file", "dirty", "writeback", "pgpgin", "pgpgout",
    "pgfault", "pgmajfault", "inactive_anon", "active_anon", "inactive_file", "active_file",
    "unevictable",
)
V1_MEMORY_KEYS = tuple(sorted(
    (*_V1_MEMORY_BASE, *(f"total_{key}" for key in _V1_MEMORY_BASE),
     "hierarchical_memory_limit", "hierarchical_memsw_limit")
))
# The memory.stat keys moby reports on cgroup v2 (containerd's MemoryStat fields).
V2_MEMORY_KEYS = tuple(sorted((
    "anon", "file", "kernel_stack", "slab", "sock", "shmem", "file_mapped", "file_dirty",
    "file_writeback", "anon_thp", "inactive_anon", "active_anon", "inactive_file",
    "active_file", "unevictable", "slab_reclaimable", "slab_unreclaimable", "pgfault",
    "pgmajfault", "workingset_refault", "workingset_activate", "workingset_nodereclaim",
    "pgrefill", "pgscan", "pgsteal", "pgactivate", "pgdeactivate", "pglazyfree",
    "pglazyfreed", "thp_fault_alloc", "thp_collapse_alloc",
)))
_NET_FIELDS = (("rx_bytes", 0), ("rx_packets", 1), ("rx_errors", 2), ("rx_dropped", 3),
               ("tx_bytes", 8), ("tx_packets", 9), ("tx_errors", 10), ("tx_dropped", 11))


def zero_cpu() -> dict[str, Any]:
    """Go's zero ``CPUStats`` as JSON (omitempty fields left out)."""
    return {"cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}}


@dataclass(frozen=True)
class HostFiles:
    proc_stat: Path = Path("/proc/stat")
    meminfo: Path = Path("/proc/meminfo")


@dataclass(frozen=True)
class CgroupFiles:
    """A container's cgroup directories: controller → dir on v1, ``{"": dir}`` on v2."""

    version: Literal["1", "2"]
    dirs: Mapping[str, Path]

    def dir(self, controller: str) -> Path | None:
        return self.dirs.get("" if self.version == "2" else controller)


@dataclass(frozen=True)
class Sample:
    """One reading, already in wire shape."""

    read_ns: int  # wall clock
    cpu: dict[str, Any]
    memory: dict[str, Any]
    blkio: dict[str, Any]
    pids: dict[str, Any]
    networks: dict[str, Any] | None


# =========================================================================== files
def read_small_file(path: str | os.PathLike[str]) -> str:
    """A cgroup or /proc file's text. os.open/os.read instead of ``Path.read_text``: a
    sample reads some fifteen such files, and the metrics scrape does so for every
    running container, where pathlib and the text layer cost three times the syscalls."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode(errors="replace")


def _read(path: Path | None, name: str) -> str | None:
    if path is None:
        return None
    try:
        return read_small_file(f"{path}/{name}")  # cheaper than pathlib's joins
    except (FileNotFoundError, NotADirectoryError, ProcessLookupError):
        return None


def _int(text: str | None) -> int:
    """A single number; "max" (no limit) and anything unreadable are 0."""
    if text is None:
        return 0
    try:
        return int(text.split()[0])
    except (ValueError, IndexError):
        return 0


def parse_flat_keyed(text: str | None) -> dict[str, int]:
    """``key value`` lines (memory.stat, cpu.stat, cpuacct.stat, memory.events)."""
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:  # not "key number" (three fields, a word, an empty line)
            continue
    return out


# =========================================================================== host
def system_cpu(text: str) -> tuple[int, int]:
    """(system_cpu_usage in ns, online_cpus) from /proc/stat."""
    usage = 0
    cpus = 0
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if fields[0] == "cpu":
            ticks = sum(int(v) for v in fields[1:8])
            usage = ticks * NANOS // CLOCK_TICKS
        elif fields[0].startswith("cpu") and fields[0][3:].isdigit():
            cpus += 1
    return usage, cpus


def machine_memory(text: str) -> int:
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            fields = line.split()
            return int(fields[1]) * (1024 if fields[-1] == "kB" else 1)
    return 0


def parse_net_dev(text: str) -> dict[str, Any]:
    """``/proc/<pid>/net/dev`` → the ``networks`` map (loopback left out, as dockerd)."""
    networks: dict[str, Any] = {}
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        name = name.strip()
        if not sep or not name or name == "lo":
            continue
        values = rest.split()
        if len(values) < 16:
            continue
        networks[name] = {key: int(values[index]) for key, index in _NET_FIELDS}
    return networks


# =========================================================================== cgroup v1
def _v1_cpu(files: CgroupFiles, full: bool = True) -> dict[str, Any]:
    acct = files.dir("cpuacct")
    ticks = parse_flat_keyed(_read(acct, "cpuacct.stat"))
    usage: dict[str, Any] = {"total_usage": _int(_read(acct, "cpuacct.usage"))}
    percpu_text = _read(acct, "cpuacct.usage_percpu") if full else None
    percpu = [int(v) for v in (percpu_text or "").split()]
    if percpu:
        usage["percpu_usage"] = percpu
    usage["usage_in_kernelmode"] = ticks.get("system", 0) * NANOS // CLOCK_TICKS
    usage["usage_in_usermode"] = ticks.get("user", 0) * NANOS // CLOCK_TICKS
    throttle = parse_flat_keyed(_read(files.dir("cpu"), "cpu.stat"))
    return {"cpu_usage": usage, "throttling_data": {
        "periods": throttle.get("nr_periods", 0),
        "throttled_periods": throttle.get("nr_throttled", 0),
        "throttled_time": throttle.get("throttled_time", 0),
    }}


def _v1_memory(files: CgroupFiles, full: bool = True) -> dict[str, Any]:
    mem = files.dir("memory")
    usage = _read(mem, "memory.usage_in_bytes")
    if usage is None:
        return {}
    raw = parse_flat_keyed(_read(mem, "memory.stat"))
    return {
        "usage": _int(usage),
        "max_usage": _int(_read(mem, "memory.max_usage_in_bytes")) if full else 0,
        "stats": {key: raw.get(key, 0) for key in V1_MEMORY_KEYS},
        "failcnt": _int(_read(mem, "memory.failcnt")),
        "limit": _int(_read(mem, "memory.limit_in_bytes")),
    }


def parse_blkio_v1(text: str | None) -> list[dict[str, Any]]:
    """``8:0 Read 4096`` lines; the device-less ``Total`` line is dropped."""
    entries = []
    for line in (text or "").splitlines():
        fields = line.split()
        if len(fields) != 3:
            continue
        major, _, minor = fields[0].partition(":")
        try:
            entries.append({"major": int(major), "minor": int(minor), "op": fields[1],
                            "value": int(fields[2])})
        except ValueError:
            continue
    return entries


def _v1_blkio(files: CgroupFiles, full: bool = True) -> dict[str, Any]:
    blkio = files.dir("blkio")
    lists: dict[str, Any] = {key: [] for key in BLKIO_KEYS}
    if blkio is None:
        return lists
    # The CFQ scheduler's files when the kernel has them (as containerd decides), else
    # the throttle layer's counters, which every kernel keeps.
    if (blkio / "blkio.io_serviced_recursive").exists():
        for key in BLKIO_KEYS if full else ("io_service_bytes_recursive",):
            lists[key] = parse_blkio_v1(_read(blkio, f"blkio.{key}"))
    else:
        lists["io_service_bytes_recursive"] = parse_blkio_v1(
            _read(blkio, "blkio.throttle.io_service_bytes"))
        if full:
            lists["io_serviced_recursive"] = parse_blkio_v1(
                _read(blkio, "blkio.throttle.io_serviced"))
    return lists


def _pids(directory: Path | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    current = _int(_read(directory, "pids.current"))
    limit = _int(_read(directory, "pids.max"))
    if current:
        out["current"] = current
    if limit:
        out["limit"] = limit
    return out


# =========================================================================== cgroup v2
def _v2_cpu(files: CgroupFiles) -> dict[str, Any]:
    raw = parse_flat_keyed(_read(files.dir("cpu"), "cpu.stat"))
    return {
        "cpu_usage": {"total_usage": raw.get("usage_usec", 0) * 1000,
                      "usage_in_kernelmode": raw.get("system_usec", 0) * 1000,
                      "usage_in_usermode": raw.get("user_usec", 0) * 1000},
        "throttling_data": {"periods": raw.get("nr_periods", 0),
                            "throttled_periods": raw.get("nr_throttled", 0),
                            "throttled_time": raw.get("throttled_usec", 0) * 1000},
    }


def _v2_memory(files: CgroupFiles) -> dict[str, Any]:
    group = files.dir("memory")
    current = _read(group, "memory.current")
    if current is None:
        return {}
    raw = parse_flat_keyed(_read(group, "memory.stat"))
    return {
        "usage": _int(current),
        "stats": {key: raw.get(key, 0) for key in V2_MEMORY_KEYS},
        "failcnt": parse_flat_keyed(_read(group, "memory.events")).get("oom", 0),
        "limit": _int(_read(group, "memory.max")),
    }


def parse_io_stat(text: str | None) -> list[dict[str, Any]] | None:
    """io.stat → read/write byte entries per device (None when no device has any)."""
    entries: list[dict[str, Any]] = []
    for line in (text or "").splitlines():
        fields = line.split()
        if not fields:
            continue
        major, _, minor = fields[0].partition(":")
        counters = dict(f.split("=", 1) for f in fields[1:] if "=" in f)
        try:
            dev = {"major": int(major), "minor": int(minor)}
            entries.append({**dev, "op": "read", "value": int(counters.get("rbytes", 0))})
            entries.append({**dev, "op": "write", "value": int(counters.get("wbytes", 0))})
        except ValueError:
            continue
    return entries or None


def _v2_blkio(files: CgroupFiles) -> dict[str, Any]:
    lists: dict[str, Any] = {key: None for key in BLKIO_KEYS}
    lists["io_service_bytes_recursive"] = parse_io_stat(_read(files.dir("io"), "io.stat"))
    return lists


# =========================================================================== assembly
def _omit_zero(memory: dict[str, Any], host_memory: int) -> dict[str, Any]:
    """Go's omitempty on MemoryStats, and the limit capped at the host's RAM."""
    if host_memory > 0 and (memory.get("limit", 0) > host_memory or not memory.get("limit")):
        if memory:
            memory["limit"] = host_memory
    return {k: v for k, v in memory.items() if v}


@dataclass(frozen=True)
class HostReading:
    """The host's side of a sample: (system_cpu_usage ns, online_cpus, RAM bytes)."""

    system_cpu_usage: int
    online_cpus: int
    memory: int


def read_host(host: HostFiles = HostFiles()) -> HostReading:
    usage, online = system_cpu(read_small_file(host.proc_stat))
    return HostReading(usage, online, machine_memory(read_small_file(host.meminfo)))


def read_sample(
    files: CgroupFiles,
    net_dev: str | os.PathLike[str] | None,
    host: HostFiles | HostReading = HostFiles(),
    now_ns: int | None = None,
    full: bool = True,
) -> Sample:
    """Read everything once (blocking). ``host`` may be a reading already taken (the
    metrics scrape reads the host once for all its containers). ``full=False`` leaves
    out, on cgroup v1, what only ``docker stats`` shows (per-CPU usage, max_usage, the
    I/O counts and CFQ lists): three files fewer per container for the scrape."""
    read_ns = time.time_ns() if now_ns is None else now_ns
    if files.version == "2":
        cpu, memory, blkio = _v2_cpu(files), _v2_memory(files), _v2_blkio(files)
    else:
        cpu, memory = _v1_cpu(files, full), _v1_memory(files, full)
        blkio = _v1_blkio(files, full)
    reading = host if isinstance(host, HostReading) else read_host(host)
    cpu = {"cpu_usage": cpu["cpu_usage"], "system_cpu_usage": reading.system_cpu_usage,
           "online_cpus": reading.online_cpus, "throttling_data": cpu["throttling_data"]}
    memory = _omit_zero(memory, reading.memory)
    networks = None
    if net_dev is not None:
        try:
            networks = parse_net_dev(read_small_file(net_dev)) or None
        except (FileNotFoundError, ProcessLookupError):
            networks = None
    return Sample(read_ns, cpu, memory, blkio, _pids(files.dir("pids")), networks)


def stats_json(
    name: str, container_id: str, sample: Sample | None, previous: Sample | None
) -> dict[str, Any]:
    """The ``/stats`` object; without a sample, dockerd's answer for a stopped container
    (zeros and the zero time)."""
    pre_cpu = previous.cpu if previous is not None else zero_cpu()
    doc: dict[str, Any] = {
        "read": rfc3339_nano(sample.read_ns) if sample else ZERO_TIME,
        "preread": rfc3339_nano(previous.read_ns) if previous else ZERO_TIME,
        "pids_stats": sample.pids if sample else {},
        "blkio_stats": sample.blkio if sample else {key: None for key in BLKIO_KEYS},
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": sample.cpu if sample else zero_cpu(),
        "precpu_stats": pre_cpu,
        "memory_stats": sample.memory if sample else {},
        "name": "/" + name,
        "id": container_id,
    }
    if sample is not None and sample.networks:
        doc["networks"] = sample.networks
    return doc
