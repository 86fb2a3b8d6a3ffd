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


def validate(host_config: Mapping[str, Any], cpu_count: int | None = None) -> None:
    """Raise InvalidParameter for limits dockerd refuses at create (reliability.md B14)."""
    _validate_memory(host_config)
    _validate_cpu(host_config, cpu_count or os.cpu_count() or 1)


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


def _validate_cpu(hc: Mapping[str, Any], cpu_count: int) -> None:
    nano = int(hc.get("NanoCpus") or 0)
    period = int(hc.get("CpuPeriod") or 0)
    quota = int(hc.get("CpuQuota") or 0)
    if nano and period:
        raise InvalidParameter("Conflicting options: Nano CPUs and CPU Period cannot both be set")
    if nano and quota:
        raise InvalidParameter("Conflicting options: Nano CPUs and CPU Quota cannot both be set")
    if nano < 0 or nano > cpu_count * 1_000_000_000:
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


def parse_cpu_list(text: str) -> set[int]:
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        low, dash, high = part.partition("-")
        try:
            if dash:
                cpus.update(range(int(low), int(high) + 1))
            else:
                cpus.add(int(part))
        except ValueError:
            raise InvalidParameter(f"invalid value {text} for cpuset cpus") from None
    return cpus


def swap_limit(memory: int, memory_swap: int, swap_supported: bool) -> int:
    """Docker's default: with a memory limit and no swap setting, swap is as large again."""
    if memory > 0 and memory_swap == 0 and swap_supported:
        return memory * 2
    return memory_swap
