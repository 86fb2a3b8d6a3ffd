"""The metrics scrape without a daemon: instruments, the text format (checked with the
Prometheus client library's own parser), and the per-container families from recorded
cgroup files."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample as PromSample

from engine.containers import stats
from engine.containers.model import ContainerConfig, ContainerState, ContainerView
from engine.containers.state import Status
from engine.containers.stats import Sample
from engine.instruments import Counter, Exposition, LabeledTimer, timed
from engine.runtime.cgroups import CgroupInfo
from engine.system.info import HostFacts, SystemFacts
from engine.system.metrics import (
    MetricsCollector,
    MetricSources,
    container_labels,
    write_container_metrics,
)

V2 = Path(__file__).resolve().parents[1] / "fixtures" / "cgroups" / "v2-container"


def parse(text: str) -> dict[str, list[PromSample]]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def v2_sample() -> Sample:
    host = stats.HostFiles(V2 / "proc_stat", V2 / "meminfo")
    return stats.read_sample(stats.CgroupFiles("2", {"": V2 / "group"}), V2 / "net_dev", host)


def view(cid: str, name: str, labels: dict[str, str] | None = None,
         status: Status = Status.RUNNING) -> ContainerView:
    config = ContainerConfig(
        id=cid, name=name, image_ref="busybox:latest", image_id="sha256:" + "b" * 64,
        created="2026-01-01T00:00:00Z", config={"Labels": labels or {}}, host_config={},
        networking={}, path="sh", args=(),
    )
    return ContainerView(config, ContainerState(status=status, pid=4242))


# ------------------------------------------------------------------ instruments
def test_timer_buckets_are_cumulative_and_failures_are_not_timed() -> None:
    timer = LabeledTimer(preset=("start",))
    timer.observe("create", 0.003)
    timer.observe("create", 0.3)
    timer.observe("create", 30)

    class Manager:
        def __init__(self) -> None:
            self.actions = timer

        @timed("delete")
        async def remove(self, fail: bool) -> str:
            if fail:
                raise ValueError("no")
            return "ok"

    assert asyncio.run(Manager().remove(False)) == "ok"
    with pytest.raises(ValueError):
        asyncio.run(Manager().remove(True))
    out = Exposition()
    out.histogram("t_seconds", "help", timer)
    families = parse(out.text())
    samples = {(s.name, s.labels.get("action"), s.labels.get("le")): s.value
               for s in families["t_seconds"]}
    assert samples[("t_seconds_count", "start", None)] == 0  # preset: shown before use
    assert samples[("t_seconds_bucket", "create", "0.005")] == 1
    assert samples[("t_seconds_bucket", "create", "0.25")] == 1
    assert samples[("t_seconds_bucket", "create", "0.5")] == 2
    assert samples[("t_seconds_bucket", "create", "10")] == 2
    assert samples[("t_seconds_bucket", "create", "+Inf")] == 3
    assert samples[("t_seconds_sum", "create", None)] == pytest.approx(30.303)
    assert samples[("t_seconds_count", "delete", None)] == 1  # the failed call is not


def test_label_values_are_escaped() -> None:
    out = Exposition()
    out.gauge("g", "a gauge", [({"name": 'we"ird\\na\nme'}, 1.5)])
    (sample,) = parse(out.text())["g"]
    assert sample.labels == {"name": 'we"ird\\na\nme'}
    assert sample.value == 1.5


# ------------------------------------------------------------------ per container
def test_container_families_from_a_v2_sample() -> None:
    labels = container_labels(view("c" * 64, "web", {
        "com.docker.compose.project": "shop", "com.docker.compose.service": "front"}))
    out = Exposition()
    write_container_metrics(out, [(labels, v2_sample())])
    families = parse(out.text())

    def value(family: str, suffix: str = "", **extra: str) -> float:
        found = [s.value for s in families[family] if s.name == family + suffix
                 and all(s.labels.get(k) == v for k, v in extra.items())]
        assert len(found) == 1, (family, extra, families[family])
        assert all(s.labels["name"] == "web" for s in families[family])
        return found[0]

    assert families["container_cpu_usage_seconds"][0].labels == {
        "id": "c" * 64, "name": "web", "image": "busybox:latest",
        "compose_project": "shop", "compose_service": "front", "stack_namespace": ""}
    # cpu.stat usage_usec 2046377, user 1238121, system 808256, throttled 530210 us
    assert value("container_cpu_usage_seconds", "_total") == pytest.approx(2.046377)
    assert value("container_cpu_user_seconds", "_total") == pytest.approx(1.238121)
    assert value("container_cpu_system_seconds", "_total") == pytest.approx(0.808256)
    assert value("container_cpu_cfs_periods", "_total") == 240
    assert value("container_cpu_cfs_throttled_periods", "_total") == 12
    assert value("container_cpu_cfs_throttled_seconds", "_total") == pytest.approx(0.53021)
    # memory.current 4304896, inactive_file 1310720, memory.max "max" → host RAM
    assert value("container_memory_usage_bytes") == 4304896
    assert value("container_memory_working_set_bytes") == 4304896 - 1310720
    assert value("container_memory_limit_bytes") == 2014508 * 1024
    assert value("container_memory_failures", "_total") == 1  # memory.events oom
    # net_dev: eth0 only (lo left out)
    assert value("container_network_receive_bytes", "_total", interface="eth0") == 10866
    assert value("container_network_transmit_packets_dropped", "_total",
                 interface="eth0") == 4
    assert not [s for s in families["container_network_receive_bytes"]
                if s.labels["interface"] == "lo"]
    # io.stat: 254:0 rbytes=2621440 wbytes=8192
    assert value("container_fs_reads_bytes", "_total", device="254:0") == 2621440
    assert value("container_fs_writes_bytes", "_total", device="254:0") == 8192
    assert value("container_pids") == 3
    assert value("container_pids_limit") == 512


# ------------------------------------------------------------------ the whole scrape
class FakeSampler:
    def __init__(self) -> None:
        self.asked: list[str] = []

    async def samples(self, views: list[ContainerView]) -> dict[str, Sample]:
        self.asked = [v.id for v in views]
        return {v.id: v2_sample() for v in views if v.running}


class FakeContainers:
    def __init__(self, views: list[ContainerView]) -> None:
        self.actions = LabeledTimer(preset=("start", "changes", "commit", "create", "delete"))
        self._views = views

    def views(self) -> list[ContainerView]:
        return list(self._views)

    def counts(self) -> dict[str, int]:
        return {"running": 1, "paused": 0, "stopped": 1, "total": 2}


class FakeNetworks:
    def __init__(self) -> None:
        self.actions = LabeledTimer()
        self.actions.observe("allocate", 0.02)


class FakeEvents:
    published_count = 7
    listener_count = 2


class FakeHealth:
    def __init__(self) -> None:
        self.checks = Counter()
        self.failed_checks = Counter()
        self.checks.inc(5)
        self.failed_checks.inc(2)


def facts() -> SystemFacts:
    host = HostFacts(kernel="6.1.0", os_name="Debian GNU/Linux 12 (bookworm)",
                     os_version="12", arch="x86_64", go_arch="amd64", ncpu=2,
                     mem_total=4 << 30, hostname="h", ipv4_forwarding=True,
                     backing_fs="extfs", cgroups=CgroupInfo(version="2", mount_points={}))
    fields: dict[str, Any] = {
        name: () for name in ("runtimes", "components", "labels", "security_options",
                              "insecure_registries", "registry_mirrors")}
    return SystemFacts(daemon_id="ID", version="0.1.0", build_time="", python_version="",
                       host=host, default_runtime="runc", data_root="/d", debug=False,
                       experimental=False, live_restore=True, log_driver="json-file",
                       cgroup_parent="/wharfd", http_proxy="", https_proxy="", no_proxy="",
                       **fields)


def test_scrape_has_dockerds_engine_families_and_running_containers_only() -> None:
    running = view("a" * 64, "web")
    stopped = view("d" * 64, "old", status=Status.EXITED)
    sampler = FakeSampler()
    collector = MetricsCollector(MetricSources(
        containers=FakeContainers([running, stopped]), networks=FakeNetworks(),
        events=FakeEvents(), health=FakeHealth(), sampler=sampler, facts=facts))
    families = parse(asyncio.run(collector.scrape()))
    states = {s.labels["state"]: s.value
              for s in families["engine_daemon_container_states_containers"]}
    assert states == {"running": 1, "paused": 0, "stopped": 1}
    actions = {s.labels["action"] for s in families["engine_daemon_container_actions_seconds"]}
    assert actions == {"start", "changes", "commit", "create", "delete"}
    assert [s.value for s in families["engine_daemon_network_actions_seconds"]
            if s.name.endswith("_count")] == [1]
    assert families["engine_daemon_events"][0].value == 7
    assert families["engine_daemon_events_subscribers_total"][0].value == 2
    assert families["engine_daemon_health_checks"][0].value == 5
    assert families["engine_daemon_health_checks_failed"][0].value == 2
    (info,) = families["engine_daemon_engine_info"]
    assert info.labels == {  # dockerd 20.10's label set
        "architecture": "x86_64", "commit": "unknown", "daemon_id": "ID",
        "graphdriver": "overlay2", "kernel": "6.1.0", "os": "Debian GNU/Linux 12 (bookworm)",
        "os_type": "linux", "os_version": "12", "version": "0.1.0"}
    assert families["engine_daemon_engine_cpus_cpus"][0].value == 2
    assert {s.labels["name"] for s in families["container_memory_usage_bytes"]} == {"web"}
