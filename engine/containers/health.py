"""Healthchecks: `HEALTHCHECK` of the image or `--health-*` of the container.

A probe runs as an exec inside the container every ``Interval`` (``StartInterval``
during ``StartPeriod``, API ≥ 1.44); it passes on exit code 0. ``Retries`` consecutive
failures make the container unhealthy; failures during the start period do not count
until a probe has passed once. Each probe's output (4 KiB at most) is kept in the last
five ``State.Health.Log`` entries. A status change emits ``health_status: <status>``.

The checker follows container ``start``/``die`` events, so the container manager does
not need to know it exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Mapping
from typing import Any, Protocol

from engine.containers.exec import ExecManager
from engine.containers.healthcheck import probe_command
from engine.containers.model import ContainerView
from engine.containers.streams import StreamSet
from engine.errors import EngineError
from engine.events import EventBus
from engine.instruments import Counter

log = logging.getLogger(__name__)

SECOND = 1_000_000_000
DEFAULT_INTERVAL = 30 * SECOND
DEFAULT_TIMEOUT = 30 * SECOND
DEFAULT_START_INTERVAL = 5 * SECOND
DEFAULT_RETRIES = 3
MAX_OUTPUT = 4096
LOG_ENTRIES = 5


class HealthTarget(Protocol):
    def get(self, ref: str) -> ContainerView: ...
    def views(self) -> list[ContainerView]: ...
    async def set_health(self, container_id: str, health: dict[str, Any]) -> None: ...


def _seconds(healthcheck: Mapping[str, Any], key: str, default: int) -> float:
    value = int(healthcheck.get(key) or 0)
    return (value if value > 0 else default) / SECOND


def _now() -> str:
    ns = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // SECOND)) + (
        f".{ns % SECOND:09d}Z"
    )


class HealthChecker:
    def __init__(self, containers: HealthTarget, execs: ExecManager, events: EventBus) -> None:
        self._containers = containers
        self._execs = execs
        self._events = events
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._follower: asyncio.Task[None] | None = None
        # dockerd's engine_daemon_health_checks_total and ..._failed_total
        self.checks = Counter()
        self.failed_checks = Counter()

    async def start(self) -> None:
        """Probe the running containers (after a restore) and follow starts and stops."""
        for view in self._containers.views():
            if view.running:
                self._begin(view)
        self._follower = asyncio.create_task(self._follow(), name="health-events")

    async def close(self) -> None:
        tasks = list(self._loops.values()) + ([self._follower] if self._follower else [])
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._loops.clear()

    async def _follow(self) -> None:
        filters = {"type": ["container"], "event": ["start", "die", "destroy"]}
        async for event in self._events.subscribe(filters=filters):
            if event.action == "start":
                with contextlib.suppress(EngineError):
                    self._begin(self._containers.get(event.actor_id))
            else:
                self._end(event.actor_id)

    def _begin(self, view: ContainerView) -> None:
        healthcheck = view.config.config.get("Healthcheck")
        if probe_command(healthcheck) is None or view.id in self._loops:
            return
        assert healthcheck is not None
        self._loops[view.id] = asyncio.create_task(
            self._probe_loop(view.id, dict(healthcheck)), name=f"health-{view.id}"
        )

    def _end(self, container_id: str) -> None:
        task = self._loops.pop(container_id, None)
        if task is not None:
            task.cancel()

    async def _probe_loop(self, cid: str, healthcheck: dict[str, Any]) -> None:
        argv = probe_command(healthcheck)
        assert argv is not None
        interval = _seconds(healthcheck, "Interval", DEFAULT_INTERVAL)
        probe_timeout = _seconds(healthcheck, "Timeout", DEFAULT_TIMEOUT)
        start_period = _seconds(healthcheck, "StartPeriod", 0)
        start_interval = _seconds(healthcheck, "StartInterval", DEFAULT_START_INTERVAL)
        retries = int(healthcheck.get("Retries") or 0) or DEFAULT_RETRIES
        health: dict[str, Any] = {"Status": "starting", "FailingStreak": 0, "Log": []}
        await self._containers.set_health(cid, dict(health))
        began = time.monotonic()
        passed_once = False
        try:
            while True:
                in_start_period = time.monotonic() - began < start_period
                await asyncio.sleep(start_interval if in_start_period and start_period
                                    else interval)
                entry = await self._probe(cid, argv, probe_timeout)
                self.checks.inc()
                if entry["ExitCode"] != 0:
                    self.failed_checks.inc()
                health["Log"] = [*health["Log"], entry][-LOG_ENTRIES:]
                in_start_period = time.monotonic() - began < start_period
                if entry["ExitCode"] == 0:
                    passed_once = True
                    health.update(Status="healthy", FailingStreak=0)
                elif not (in_start_period and not passed_once):
                    health["FailingStreak"] += 1
                    if health["FailingStreak"] >= retries:
                        health["Status"] = "unhealthy"
                await self._containers.set_health(cid, dict(health))
        except EngineError as exc:
            log.debug("healthcheck of %s stopped: %s", cid, exc)

    async def _probe(self, cid: str, argv: list[str], limit: float) -> dict[str, Any]:
        output = bytearray()

        async def collect(stream: int, data: bytes) -> None:
            if len(output) < MAX_OUTPUT:
                output.extend(data[: MAX_OUTPUT - len(output)])

        started = _now()
        exec_id = self._execs.create(
            cid, {"Cmd": argv, "AttachStdout": True, "AttachStderr": True}
        )
        run = asyncio.ensure_future(
            self._execs.start(exec_id, StreamSet(write_output=collect))
        )
        try:
            await asyncio.wait_for(asyncio.shield(run), limit)
        except TimeoutError:
            pid = self._execs.get(exec_id).pid
            if pid > 0:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(run, 5)
            return {"Start": started, "End": _now(), "ExitCode": -1,
                    "Output": f"Health check exceeded timeout ({limit:g}s)"}
        except EngineError as exc:
            return {"Start": started, "End": _now(), "ExitCode": -1, "Output": str(exc)}
        code = self._execs.get(exec_id).exit_code
        return {"Start": started, "End": _now(), "ExitCode": -1 if code is None else code,
                "Output": output.decode(errors="replace")}
