"""What ``--metrics-addr`` serves: dockerd's engine metrics, and per-container usage.

Read at scrape time from the managers (no background sampling, nothing kept between
scrapes). The engine families and their labels are dockerd 20.10's
(``daemon/metrics.go``, ``daemon/events/metrics.go``): container and network action
timers, ``container_states``, events, health checks, the engine info gauge, host CPUs and
memory. Beyond dockerd, one family per resource with a sample per running container,
named after cAdvisor's where one exists (so dashboards written for cAdvisor mostly work)
and labelled with the container's ``id``, ``name``, ``image`` and its compose/stack
labels: ``compose_project``, ``compose_service``, ``stack_namespace`` (empty when unset,
which Prometheus treats as absent). The numbers are the ones ``docker stats`` shows,
read by the same code (``engine.containers.stats`` through ``ContainerFiles.samples``),
all containers in one worker thread.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from engine.containers.model import ContainerView
from engine.containers.stats import NANOS, Sample
from engine.instruments import (
    Counter,
    Exposition,
    LabeledTimer,
    Labels,
    escape_label_value,
    label_body,
)
from engine.system.info import SystemFacts

ENGINE_COMMIT = "unknown"
GRAPH_DRIVER = "overlay2"

COMPOSE_PROJECT = "com.docker.compose.project"
COMPOSE_SERVICE = "com.docker.compose.service"
STACK_NAMESPACE = "com.docker.stack.namespace"


class _Containers(Protocol):
    @property
    def actions(self) -> LabeledTimer: ...
    def views(self) -> list[ContainerView]: ...
    def counts(self) -> dict[str, int]: ...


class _Networks(Protocol):
    @property
    def actions(self) -> LabeledTimer: ...


class _Events(Protocol):
    @property
    def published_count(self) -> int: ...
    @property
    def listener_count(self) -> int: ...


class _Health(Protocol):
    @property
    def checks(self) -> Counter: ...
    @property
    def failed_checks(self) -> Counter: ...


class _Sampler(Protocol):
    async def samples(self, views: list[ContainerView]) -> dict[str, Sample]: ...


@dataclass(frozen=True)
class MetricSources:
    containers: _Containers
    networks: _Networks
    events: _Events
    health: _Health
    sampler: _Sampler
    facts: Callable[[], SystemFacts]


def container_labels(view: ContainerView) -> dict[str, str]:
    labels = view.config.labels
    return {
        "id": view.id,
        "name": view.name,
        "image": view.config.image_ref,
        "compose_project": labels.get(COMPOSE_PROJECT, ""),
        "compose_service": labels.get(COMPOSE_SERVICE, ""),
        "stack_namespace": labels.get(STACK_NAMESPACE, ""),
    }


class MetricsCollector:
    def __init__(self, sources: MetricSources) -> None:
        self._sources = sources

    async def scrape(self) -> str:
        """One scrape's text (Prometheus text format 0.0.4)."""
        views = self._sources.containers.views()
        samples = await self._sources.sampler.samples(views)
        out = Exposition()
        self._engine(out)
        per_container = [(container_labels(v), samples[v.id]) for v in views if v.id in samples]
        write_container_metrics(out, per_container)
        return out.text()

    def _engine(self, out: Exposition) -> None:
        src = self._sources
        out.histogram("engine_daemon_container_actions_seconds",
                      "The number of seconds it takes to process each container action",
                      src.containers.actions)
        counts = src.containers.counts()
        out.gauge("engine_daemon_container_states_containers",
                  "The count of containers in various states",
                  [({"state": s}, counts[s]) for s in ("running", "paused", "stopped")])
        out.histogram("engine_daemon_network_actions_seconds",
                      "The number of seconds it takes to process each network action",
                      src.networks.actions)
        out.counter("engine_daemon_events_total", "The number of events logged",
                    [({}, src.events.published_count)])
        out.gauge("engine_daemon_events_subscribers_total",
                  "The number of current subscribers", [({}, src.events.listener_count)])
        out.counter("engine_daemon_health_checks_total", "The total number of health checks",
                    [({}, src.health.checks.value)])
        out.counter("engine_daemon_health_checks_failed_total",
                    "The total number of failed health checks",
                    [({}, src.health.failed_checks.value)])
        facts = src.facts()
        host = facts.host
        out.gauge("engine_daemon_engine_info",
                  "The information related to the engine and the OS it is running on",
                  [({"architecture": host.arch, "commit": ENGINE_COMMIT,
                     "daemon_id": facts.daemon_id, "graphdriver": GRAPH_DRIVER,
                     "kernel": host.kernel, "os": host.os_name, "os_type": "linux",
                     "os_version": host.os_version, "version": facts.version}, 1)])
        out.gauge("engine_daemon_engine_cpus_cpus",
                  "The number of cpus that the host system of the engine has",
                  [({}, host.ncpu)])
        out.gauge("engine_daemon_engine_memory_bytes",
                  "The number of bytes of memory that the host system of the engine has",
                  [({}, host.mem_total)])


# =========================================================================== containers
def _cpu(sample: Sample, key: str) -> int:
    usage: dict[str, Any] = sample.cpu["cpu_usage"]
    return int(usage.get(key, 0))


def _working_set(memory: Mapping[str, Any]) -> int:
    """Usage less the inactive page cache (what the kernel reclaims first), as cAdvisor
    and ``docker stats`` count it; ``total_inactive_file`` on v1, ``inactive_file`` on v2."""
    stats = memory.get("stats") or {}
    inactive = stats.get("total_inactive_file", stats.get("inactive_file", 0))
    return max(0, int(memory.get("usage", 0)) - int(inactive))


def _io_bytes(sample: Sample) -> dict[tuple[str, str], int]:
    """(device "major:minor", "read"|"write") → bytes."""
    totals: dict[tuple[str, str], int] = defaultdict(int)
    for entry in sample.blkio.get("io_service_bytes_recursive") or ():
        op = str(entry["op"]).lower()
        if op in ("read", "write"):
            totals[(f"{entry['major']}:{entry['minor']}", op)] += int(entry["value"])
    return totals


_NETWORK = (  # (family, stats key, help)
    ("container_network_receive_bytes_total", "rx_bytes", "Bytes received"),
    ("container_network_receive_packets_total", "rx_packets", "Packets received"),
    ("container_network_receive_errors_total", "rx_errors", "Errors while receiving"),
    ("container_network_receive_packets_dropped_total", "rx_dropped",
     "Packets dropped while receiving"),
    ("container_network_transmit_bytes_total", "tx_bytes", "Bytes transmitted"),
    ("container_network_transmit_packets_total", "tx_packets", "Packets transmitted"),
    ("container_network_transmit_errors_total", "tx_errors", "Errors while transmitting"),
    ("container_network_transmit_packets_dropped_total", "tx_dropped",
     "Packets dropped while transmitting"),
)


def write_container_metrics(out: Exposition, rows: Iterable[tuple[Labels, Sample]]) -> None:
    """The per-container families; ``rows`` are (labels, sample) of running containers.
    Each container's labels are rendered once and reused by every family."""
    bodies = [(label_body(labels), sample) for labels, sample in rows]

    def family(kind: str, name: str, help_text: str, samples: Iterable[tuple[str, float]]) -> None:
        out.family(name, kind, help_text)
        out.samples_rendered(name, samples)

    def each(value: Callable[[Sample], float]) -> Iterator[tuple[str, float]]:
        return ((body, value(sample)) for body, sample in bodies)

    family("counter", "container_cpu_usage_seconds_total", "CPU time consumed, in seconds",
           each(lambda s: _cpu(s, "total_usage") / NANOS))
    family("counter", "container_cpu_user_seconds_total", "CPU time consumed in user mode",
           each(lambda s: _cpu(s, "usage_in_usermode") / NANOS))
    family("counter", "container_cpu_system_seconds_total", "CPU time consumed in kernel mode",
           each(lambda s: _cpu(s, "usage_in_kernelmode") / NANOS))
    family("counter", "container_cpu_cfs_periods_total", "Elapsed CFS enforcement periods",
           each(lambda s: s.cpu["throttling_data"]["periods"]))
    family("counter", "container_cpu_cfs_throttled_periods_total", "Throttled CFS periods",
           each(lambda s: s.cpu["throttling_data"]["throttled_periods"]))
    family("counter", "container_cpu_cfs_throttled_seconds_total",
           "Time the container was throttled, in seconds",
           each(lambda s: s.cpu["throttling_data"]["throttled_time"] / NANOS))
    family("gauge", "container_memory_usage_bytes", "Memory usage, page cache included",
           each(lambda s: s.memory.get("usage", 0)))
    family("gauge", "container_memory_working_set_bytes",
           "Memory usage less inactive page cache (what docker stats shows)",
           each(lambda s: _working_set(s.memory)))
    family("gauge", "container_memory_limit_bytes",
           "Memory limit (the host's memory when the container has none)",
           each(lambda s: s.memory.get("limit", 0)))
    family("counter", "container_memory_failures_total",
           "Times the memory limit was hit (v1 failcnt, v2 oom events)",
           each(lambda s: s.memory.get("failcnt", 0)))
    interfaces = [(f'{body},interface="{escape_label_value(name)}"', counters)
                  for body, sample in bodies
                  for name, counters in sorted((sample.networks or {}).items())]
    for name, key, help_text in _NETWORK:
        family("counter", name, help_text + " (loopback excluded)",
               ((body, counters[key]) for body, counters in interfaces))
    io = [(body, _io_bytes(sample)) for body, sample in bodies]
    for name, op in (("container_fs_reads_bytes_total", "read"),
                     ("container_fs_writes_bytes_total", "write")):
        family("counter", name, f"Bytes {op} from block devices, by device (major:minor)",
               ((f'{body},device="{device}"', value)
                for body, totals in io
                for (device, kind), value in sorted(totals.items()) if kind == op))
    family("gauge", "container_pids", "Processes and threads in the container",
           each(lambda s: s.pids.get("current", 0)))
    family("gauge", "container_pids_limit", "The container's pids limit (when it has one)",
           ((body, sample.pids["limit"]) for body, sample in bodies
            if sample.pids.get("limit")))
