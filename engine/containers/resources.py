"""Resource limits: dockerd's checks (with its messages) and its defaults.

The numbers are Docker's: a memory limit of at least 6 MB, swap defaulting to twice the
memory limit when swap accounting exists, CFS periods between 1 ms and 1 s.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from engine.errors import InvalidParameter

MIN_MEMORY = 6 * 1024 * 1024
MIN_CFS = 1000
MAX_CFS_PERIOD = 1_000_000
MAX_CFS_QUOTA = (1 << 44) - 1  # the kernel's max_cfs_runtime, in microseconds
MIN_NANO_CPUS = 10_000_000  # 0.01 CPUs: a 1 ms quota in the default 100 ms period
# The kernel's bounds: cpu.shares stops at 2^18 (cgroup v2's cpu.weight 10000 is what
# runc makes of it), blkio weight is 10..1000, oom_score_adj -1000..1000.
MIN_CPU_SHARES, MAX_CPU_SHARES = 2, 262_144
MIN_BLKIO_WEIGHT, MAX_BLKIO_WEIGHT = 10, 1000
MIN_OOM_SCORE_ADJ, MAX_OOM_SCORE_ADJ = -1000, 1000
MAX_PIDS_LIMIT = 4 * 1024 * 1024  # PID_MAX_LIMIT: pids.max refuses more
INT64_MAX = 2**63 - 1


def validate(host_config: Mapping[str, Any], cpu_count: int | None = None) -> None:
    """Raise InvalidParameter for limits dockerd refuses at create (reliability.md B14)."""
    _validate_memory(host_config)
    _validate_cpu(host_config, cpu_count or os.cpu_count() or 1)
    _validate_kernel_ranges(host_config)


def _validate_memory(hc: Mapping[str, Any]) -> None:
    memory = int(hc.get("Memory") or 0)
    swap = int(hc.get("MemorySwap") or 0)
    reservation = int(hc.get("MemoryReservation") or 0)
    if memory != 0 and memory < MIN_MEMORY:
        raise InvalidParameter("Minimum memory limit allowed is 6MB")
    if swap > 0 and memory == 0:
        raise InvalidParameter(
            "You should always set the Memory limit when using Memoryswap limit, see usage"
        )
    if memory > 0 and 0 < swap < memory:
        raise InvalidParameter(
            "Minimum memoryswap limit should be larger than memory limit, see usage"
        )
    if memory > 0 and reservation > memory:
        raise InvalidParameter(
            "Minimum memory limit can not be less than memory reservation limit, see usage"
        )
    if reservation != 0 and reservation < MIN_MEMORY:
        raise InvalidParameter("Minimum memory reservation allowed is 6MB")


def _validate_kernel_ranges(hc: Mapping[str, Any]) -> None:
    """Values the kernel would refuse when the container starts: refused at create (and
    update) instead, with dockerd's words where it has them."""
    shares = int(hc.get("CpuShares") or 0)
    if shares > MAX_CPU_SHARES:
        raise InvalidParameter(
            f"invalid CPU shares ({shares}): the maximum is {MAX_CPU_SHARES}"
        )
    if 0 < shares < MIN_CPU_SHARES:
        raise InvalidParameter(f"invalid CPU shares ({shares}): the minimum is {MIN_CPU_SHARES}")
    weight = int(hc.get("BlkioWeight") or 0)
    if weight and not MIN_BLKIO_WEIGHT <= weight <= MAX_BLKIO_WEIGHT:
        raise InvalidParameter("Range of blkio weight is from 10 to 1000")
    oom = int(hc.get("OomScoreAdj") or 0)
    if not MIN_OOM_SCORE_ADJ <= oom <= MAX_OOM_SCORE_ADJ:
        raise InvalidParameter(
            f"Invalid value {oom}, range for oom score adj is [-1000, 1000]"
        )
    swappiness = hc.get("MemorySwappiness")
    if swappiness is not None and swappiness != -1 and not 0 <= int(swappiness) <= 100:
        raise InvalidParameter(
            f"Invalid value: {swappiness}, valid memory swappiness range is 0-100"
        )
    pids = hc.get("PidsLimit")
    if pids is not None and int(pids) > MAX_PIDS_LIMIT:
        raise InvalidParameter(
            f"invalid PIDs limit {pids}: the kernel allows at most {MAX_PIDS_LIMIT}"
        )
    rt_period = int(hc.get("CpuRealtimePeriod") or 0)
    rt_runtime = int(hc.get("CpuRealtimeRuntime") or 0)
    if rt_period and rt_runtime > rt_period:
        raise InvalidParameter("cpu-rt-runtime cannot be higher than cpu-rt-period")


def _validate_cpu(hc: Mapping[str, Any], cpu_count: int) -> None:
    nano = int(hc.get("NanoCpus") or 0)
    period = int(hc.get("CpuPeriod") or 0)
    quota = int(hc.get("CpuQuota") or 0)
    if nano and period:
        raise InvalidParameter("Conflicting options: Nano CPUs and CPU Period cannot both be set")
    if nano and quota:
        raise InvalidParameter("Conflicting options: Nano CPUs and CPU Quota cannot both be set")
    # Below 0.01 CPUs the CFS quota would be under the kernel's 1 ms minimum.
    if nano < 0 or nano > cpu_count * 1_000_000_000 or 0 < nano < MIN_NANO_CPUS:
        raise InvalidParameter(
            f"Range of CPUs is from 0.01 to {cpu_count:.2f}, as there are only "
            f"{cpu_count} CPUs available"
        )
    if period and not MIN_CFS <= period <= MAX_CFS_PERIOD:
        raise InvalidParameter(
            "CPU cfs period can not be less than 1ms (i.e. 1000) or larger than 1s "
            "(i.e. 1000000)"
        )
    if quota > 0 and quota < MIN_CFS:
        raise InvalidParameter("CPU cfs quota can not be less than 1ms (i.e. 1000)")
    if quota > MAX_CFS_QUOTA:
        raise InvalidParameter(
            f"CPU cfs quota can not be larger than {MAX_CFS_QUOTA} (the kernel's limit)"
        )
    _validate_cpuset(str(hc.get("CpusetCpus") or ""), cpu_count)


def _validate_cpuset(cpuset: str, cpu_count: int) -> None:
    if not cpuset:
        return
    requested = parse_cpu_list(cpuset)
    available = f"0-{cpu_count - 1}" if cpu_count > 1 else "0"
    if any(cpu >= cpu_count for cpu in requested):
        raise InvalidParameter(
            f"Requested CPUs are not available - requested {cpuset}, available: {available}"
        )


def validate_cpuset_mems(mems: str, available: str) -> None:
    """``CpusetMems`` against the host's memory nodes (``available``, e.g. "0" or "0-1")."""
    if not mems:
        return
    try:
        requested = parse_cpu_list(mems)
    except InvalidParameter:
        raise InvalidParameter(f"invalid value {mems} for cpuset mems") from None
    nodes = parse_cpu_list(available) if available else {0}
    if not requested <= nodes:
        raise InvalidParameter(
            f"Requested memory nodes are not available - requested {mems}, "
            f"available: {available or '0'}"
        )


# No host has more CPUs or memory nodes than this; a wider range is not expanded.
_MAX_LIST_INDEX = 1 << 16


def parse_cpu_list(text: str) -> set[int]:
    """A cpuset list ("0-3,7") as a set; dockerd's ParseUintList (no signs, no blanks)."""
    cpus: set[int] = set()
    for part in text.split(","):
        low, dash, high = part.partition("-")
        if not (low.isascii() and low.isdigit()) or (
                dash and not (high.isascii() and high.isdigit())):
            raise InvalidParameter(f"invalid value {text} for cpuset cpus")
        first, last = int(low), int(high) if dash else int(low)
        if last < first or last >= _MAX_LIST_INDEX:
            raise InvalidParameter(f"invalid value {text} for cpuset cpus")
        cpus.update(range(first, last + 1))
    return cpus


def swap_limit(memory: int, memory_swap: int, swap_supported: bool) -> int:
    """Docker's default: with a memory limit and no swap setting, swap is as large again."""
    if memory > 0 and memory_swap == 0 and swap_supported:
        return min(memory * 2, INT64_MAX)  # the runtime reads it as an int64
    return memory_swap
