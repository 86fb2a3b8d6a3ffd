"""Healthchecks through the docker CLI (issue 4 item 6)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.harness.cli import DockerCLI

pytestmark = pytest.mark.root


def _health(cli: DockerCLI, name: str) -> dict[str, Any]:
    state = json.loads(cli.ok("inspect", "-f", "{{json .State}}", name))
    health: dict[str, Any] = state.get("Health") or {}
    return health


def _wait_status(cli: DockerCLI, name: str, status: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.time() + timeout
    health = _health(cli, name)
    while time.time() < deadline and health.get("Status") != status:
        time.sleep(0.2)
        health = _health(cli, name)
    return health


def test_healthy_shows_in_ps_inspect_filter_and_events(docker_cli: DockerCLI) -> None:
    since = str(int(time.time()))
    docker_cli.ok("run", "-d", "--health-cmd", "echo probe-ok", "--health-interval", "1s",
                  "--name", "hc", "busybox", "sleep", "100")
    try:
        assert _health(docker_cli, "hc")["Status"] in ("starting", "healthy")
        health = _wait_status(docker_cli, "hc", "healthy")
        assert health["Status"] == "healthy" and health["FailingStreak"] == 0
        assert health["Log"][-1]["ExitCode"] == 0
        assert health["Log"][-1]["Output"] == "probe-ok\n"
        status = docker_cli.ok("ps", "--filter", "name=hc", "--format", "{{.Status}}")
        assert status.strip().endswith("(healthy)")
        names = docker_cli.ok("ps", "--filter", "health=healthy", "--format", "{{.Names}}")
        assert "hc" in names.split()
        events = docker_cli.ok("events", "--since", since, "--until", str(int(time.time()) + 1),
                               "--filter", "container=hc", "--format", "{{.Action}}")
        assert "health_status: healthy" in events.splitlines()
    finally:
        docker_cli("rm", "-f", "hc")


def test_unhealthy_after_retries(docker_cli: DockerCLI) -> None:
    docker_cli.ok("run", "-d", "--health-cmd", "exit 1", "--health-interval", "1s",
                  "--health-retries", "2", "--name", "hcbad", "busybox", "sleep", "100")
    try:
        health = _wait_status(docker_cli, "hcbad", "unhealthy")
        assert health["Status"] == "unhealthy" and health["FailingStreak"] >= 2
        assert health["Log"][-1]["ExitCode"] == 1
    finally:
        docker_cli("rm", "-f", "hcbad")


def test_timeout_and_no_healthcheck(docker_cli: DockerCLI) -> None:
    docker_cli.ok("run", "-d", "--health-cmd", "sleep 5", "--health-interval", "1s",
                  "--health-timeout", "1s", "--health-retries", "1", "--name", "hcslow",
                  "busybox", "sleep", "100")
    docker_cli.ok("run", "-d", "--no-healthcheck", "--name", "hcnone", "busybox", "sleep", "100")
    try:
        health = _wait_status(docker_cli, "hcslow", "unhealthy")
        assert health["Log"][-1]["ExitCode"] == -1
        assert "exceeded timeout" in health["Log"][-1]["Output"]
        assert _health(docker_cli, "hcnone") == {}
    finally:
        docker_cli("rm", "-f", "hcslow", "hcnone")
