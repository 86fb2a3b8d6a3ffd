"""Values the kernel or the runtime would refuse are refused at create or update, with
dockerd's words where it has them, instead of failing at start or in `runc update`
(issue 10, item 2; most were found by test_body_fuzz).

Under --against-dockerd: where dockerd 20.10 accepts the value and fails later, the
check is a skip or an xfail with that reason, never on wharfd.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.harness.bodies import (
    LONE,
    V,
    message,
    post,
)
from tests.harness.daemon import BaseDaemon

pytestmark = pytest.mark.root


# ------------------------------------------------------------------ kernel ranges
@pytest.mark.usefixtures("no_new_containers")
@pytest.mark.parametrize(("host_config", "pattern"), [
    ({"OomScoreAdj": 2000}, r"range for oom score adj is \[-1000, 1000\]"),
    ({"MemorySwappiness": 200}, r"valid memory swappiness range is 0-100"),
])
def test_create_refuses_values_the_kernel_refuses(
    daemon: BaseDaemon, host_config: dict[str, Any], pattern: str
) -> None:
    resp = post(daemon, "/containers/create",
                 {"Image": "busybox", "Cmd": ["true"], "HostConfig": host_config})
    assert resp.status == 400, resp.text
    assert re.search(pattern, message(resp))


@pytest.mark.usefixtures("no_new_containers")
def test_cpu_shares_beyond_the_kernel_are_refused_at_create(
    daemon: BaseDaemon, against_dockerd: bool
) -> None:
    if against_dockerd:
        pytest.skip("dockerd 20.10 accepts CpuShares 10^9 at create and fails at start "
                    "(cgroup v2 cpu.weight); wharfd refuses it at create")
    resp = post(daemon, "/containers/create",
                 {"Image": "busybox", "Cmd": ["true"], "HostConfig": {"CpuShares": 10**9}})
    assert resp.status == 400, resp.text
    assert "CPU shares" in message(resp)


@pytest.mark.usefixtures("no_new_containers")
def test_nano_cpus_below_a_hundredth_are_refused_at_create(
    daemon: BaseDaemon, against_dockerd: bool
) -> None:
    """Found by test_body_fuzz: the CFS quota would be under the kernel's 1 ms."""
    if against_dockerd:
        pytest.skip("dockerd 20.10 accepts NanoCpus 10000 at create and fails at start")
    resp = post(daemon, "/containers/create",
                 {"Image": "busybox", "Cmd": ["true"], "HostConfig": {"NanoCpus": 10000}})
    assert resp.status == 400, resp.text
    assert "Range of CPUs is from 0.01" in message(resp)


@pytest.mark.parametrize("mems", ["7", LONE, "0-99999999999"])
def test_update_refuses_cpuset_mems_the_host_lacks(daemon: BaseDaemon, running: str,
                                                   mems: str) -> None:
    """Found by test_body_fuzz: `runc update` failed (500) on a node the host lacks."""
    resp = post(daemon, f"/containers/{running}/update", {"CpusetMems": mems})
    assert resp.status == 400, resp.text
    assert "cpuset mems" in message(resp) or "memory nodes are not available" in message(
        resp)


def test_an_empty_ulimit_is_refused_at_create(daemon: BaseDaemon,
                                              against_dockerd: bool) -> None:
    """Found by test_body_fuzz: ``Ulimits: [{}]`` was a 500 (a missing key)."""
    resp = post(daemon, "/containers/create?name=typed-ulimit",
                 {"Image": "busybox", "Cmd": ["true"], "HostConfig": {"Ulimits": [{}]}})
    if against_dockerd and resp.status == 201:
        daemon.api("DELETE", f"{V}/containers/typed-ulimit?force=1")
        pytest.xfail("dockerd 20.10 accepts an unnamed ulimit at create (start fails)")
    assert resp.status == 400, resp.text
    assert "invalid ulimit type" in message(resp)


def test_update_refuses_a_cpu_quota_beyond_the_kernel(daemon: BaseDaemon,
                                                      against_dockerd: bool,
                                                      running: str) -> None:
    """Found by test_body_fuzz: `runc update` failed (500) on a quota of 2^44 us."""
    resp = post(daemon, f"/containers/{running}/update", {"CpuQuota": 1 << 44})
    if against_dockerd and resp.status == 500:
        pytest.xfail("dockerd 20.10 passes it to the runtime, which fails (500)")
    assert resp.status == 400, resp.text
    assert "CPU cfs quota" in message(resp)


MAC_REASON = ("dockerd 20.10 does not check a requested MAC address (upstream refuses it: "
              "'invalid MAC address', validateEndpointSettings); the reference also runs "
              "without a default bridge")


@pytest.mark.parametrize(("extra", "pattern"), [
    ({"HostConfig": {"CpuShares": 1}}, "CPU shares"),
    ({"HostConfig": {"PidsLimit": 6 * 2**20}}, "PIDs limit"),
    ({"MacAddress": "80/tcp"}, "invalid MAC address"),
    ({"NetworkingConfig": {"EndpointsConfig": {"bridge": {"MacAddress": "zz"}}}},
     "invalid MAC address"),
])
def test_what_would_fail_at_start_is_refused_at_create(
    daemon: BaseDaemon, against_dockerd: bool, extra: dict[str, Any], pattern: str
) -> None:
    """Found by test_body_fuzz's start check: each was 201 at create, then 500 at start."""
    if against_dockerd and "MAC" in pattern:
        pytest.skip(MAC_REASON)
    resp = post(daemon, "/containers/create?name=typed-start",
                 {"Image": "busybox", "Cmd": ["true"], **extra})
    if against_dockerd and resp.status == 201:
        started = daemon.api("POST", f"{V}/containers/typed-start/start")
        daemon.api("DELETE", f"{V}/containers/typed-start?force=1")
        if started.status >= 500:
            pytest.xfail("dockerd 20.10 accepts it at create and fails at start (500)")
    assert resp.status == 400, resp.text
    assert pattern in message(resp)


def test_a_huge_memory_limit_starts(daemon: BaseDaemon, against_dockerd: bool) -> None:
    """Found by test_body_fuzz: the default swap (twice the memory) overflowed int64."""
    resp = post(daemon, "/containers/create?name=typed-bigmem",
                 {"Image": "busybox", "Cmd": ["true"], "HostConfig": {"Memory": 2**62}})
    try:
        assert resp.status == 201, resp.text
        started = daemon.api("POST", f"{V}/containers/typed-bigmem/start")
        if against_dockerd and started.status >= 500:
            pytest.xfail("dockerd 20.10 fails at start")
        assert started.status == 204, started.text
    finally:
        daemon.api("DELETE", f"{V}/containers/typed-bigmem?force=1")


def test_connect_refuses_a_malformed_mac_address(daemon: BaseDaemon, against_dockerd: bool,
                                                 running: str) -> None:
    if against_dockerd:
        pytest.skip(MAC_REASON)
    network = post(daemon, "/networks/create", {"Name": "typed-mac-net"})
    assert network.status == 201, network.text
    try:
        resp = post(daemon, "/networks/typed-mac-net/connect",
                     {"Container": running, "EndpointConfig": {"MacAddress": "not-a-mac"}})
        assert resp.status == 400, resp.text
        assert "MAC address" in message(resp)
    finally:
        daemon.api("POST", f"{V}/networks/typed-mac-net/disconnect",
                   json.dumps({"Container": running, "Force": True}).encode(),
                   headers={"Content-Type": "application/json"})
        daemon.api("DELETE", f"{V}/networks/typed-mac-net")


def test_update_of_blkio_weight_without_kernel_support_is_not_a_500(
    daemon: BaseDaemon, running: str
) -> None:
    """Found by test_body_fuzz: without blkio.weight, `runc update` failed (500); dockerd
    discards the weight with a warning, so does wharfd."""
    resp = post(daemon, f"/containers/{running}/update", {"BlkioWeight": 10})
    assert resp.status == 200, resp.text
    assert daemon.api("GET", f"{V}/containers/{running}/json").status == 200


