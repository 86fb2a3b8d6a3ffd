"""dockerd's resource checks and defaults (reliability.md B14; issue 4 item 4)."""

from __future__ import annotations

import pytest

from engine.containers.resources import swap_limit, validate
from engine.errors import InvalidParameter


@pytest.mark.parametrize(
    ("host_config", "message"),
    [
        ({"Memory": 1024}, "Minimum memory limit allowed is 6MB"),
        ({"Memory": -5}, "Minimum memory limit allowed is 6MB"),
        ({"MemorySwap": 10**9}, "You should always set the Memory limit"),
        ({"Memory": 10**8, "MemorySwap": 10**7}, "Minimum memoryswap limit should be larger"),
        ({"CpusetCpus": "999"}, "Requested CPUs are not available - requested 999, available: 0-1"),
        ({"NanoCpus": 5 * 10**9}, "Range of CPUs is from 0.01 to 2.00"),
        ({"NanoCpus": 10**9, "CpuPeriod": 100000}, "Conflicting options"),
        ({"CpuPeriod": 10}, "CPU cfs period can not be less than 1ms"),
    ],
)
def test_rejected(host_config: dict[str, int | str], message: str) -> None:
    with pytest.raises(InvalidParameter, match=message):
        validate(host_config, cpu_count=2)


def test_accepted() -> None:
    validate({"Memory": 200 * 2**20, "NanoCpus": 5 * 10**8, "CpusetCpus": "0-1"}, cpu_count=2)


def test_swap_defaults_to_twice_memory() -> None:
    assert swap_limit(200, 0, True) == 400
    assert swap_limit(200, -1, True) == -1
    assert swap_limit(200, 0, False) == 0
    assert swap_limit(0, 0, True) == 0
