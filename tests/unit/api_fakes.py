"""Fakes for the API foundation tests: a SystemBackend with fixed facts, an app factory
for the real ``wharfd`` main over fakes (no engine), and a runnable entry point.

``python -m tests.unit.api_fakes <wharfd flags>`` runs ``api.main.main`` with the fake
app: the process-level behaviour (sockets, pid file, signals, sd_notify, socket
activation) is the real one; only the engine is replaced.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from aiohttp import web

from api.app import Mount, build_app
from api.routers import events, system
from engine.config import EngineConfig
from engine.events import EventBus
from engine.runtime.cgroups import CgroupInfo
from engine.system.info import (
    ComponentFacts,
    HostFacts,
    RuntimeFacts,
    SystemFacts,
    security_options,
)


def sample_facts(config: EngineConfig | None = None) -> SystemFacts:
    config = config or EngineConfig()
    host = HostFacts(
        kernel="6.1.0-test",
        os_name="Debian GNU/Linux 12 (bookworm)",
        os_version="12",
        arch="x86_64",
        go_arch="amd64",
        ncpu=2,
        mem_total=8 * 1024**3,
        hostname="testhost",
        ipv4_forwarding=True,
        backing_fs="extfs",
        cgroups=CgroupInfo(
            version="1",
            memory_limit=True,
            swap_limit=True,
            oom_kill_disable=True,
            cpu_shares=True,
            cpu_cfs=True,
            cpuset=True,
            pids_limit=True,
        ),
    )
    return SystemFacts(
        daemon_id="0f0f0f0f-aaaa-bbbb-cccc-000000000000",
        version="0.1.0",
        build_time="2026-01-01T00:00:00.000000000+00:00",
        python_version="python3.11.7",
        host=host,
        runtimes=(RuntimeFacts("runc", "/usr/sbin/runc", (), "1.1.5+ds1", "1.1.5+ds1-1+deb12u1"),),
        default_runtime=config.default_runtime,
        components=(ComponentFacts("conmon", "2.1.6", "unknown"),),
        data_root=str(config.data_root),
        debug=config.debug,
        experimental=config.experimental,
        live_restore=config.live_restore,
        labels=tuple(config.labels),
        log_driver=config.log_driver,
        cgroup_parent=config.cgroup_parent,
        security_options=tuple(security_options(config, "1")),
        insecure_registries=tuple(config.insecure_registries),
        registry_mirrors=tuple(config.registry_mirrors),
        http_proxy="",
        https_proxy="",
        no_proxy="",
        warnings=(),
    )


class FakeSystem:
    def __init__(self, facts: SystemFacts, counts: system.Counts | None = None) -> None:
        self._facts = facts
        self.current = counts or system.Counts(3, 1, 0, 2, 4, 0, 10, 5)

    def facts(self) -> SystemFacts:
        return self._facts

    async def counts(self) -> system.Counts:
        return self.current


def fake_mounts(
    facts: SystemFacts | None = None, bus: EventBus | None = None
) -> list[Mount[Any]]:
    return [
        Mount(system.routes, system.BACKEND, FakeSystem(facts or sample_facts())),
        Mount(events.routes, events.BACKEND, bus or EventBus()),
    ]


def fake_app_factory(config: EngineConfig) -> web.Application:
    """What ``api.main`` serves in process tests: the real app shape over fakes."""
    bus = EventBus()
    facts = replace(sample_facts(config), data_root=str(config.data_root))

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        # Stands in for engine.start()/close(): an event at each end, visible in /events.
        bus.emit("daemon", "start", "fake")
        yield
        bus.emit("daemon", "stop", "fake")

    return build_app(
        fake_mounts(facts, bus), experimental=config.experimental, lifecycle_ctx=lifecycle
    )


if __name__ == "__main__":
    from api.main import main

    sys.exit(main(sys.argv[1:], app_factory=fake_app_factory))
