"""Published ports on a host with IPv6: an every-address port is published on ``[::]`` as
well, whatever the container's network, and IPv6 clients reach the container.

The reference is dockerd as users run it, with its default userland proxy (docker-proxy
carries ``[::]`` clients to the container's IPv4 address; with ``--userland-proxy=false``
dockerd publishes IPv4 only). ``docker port``, ``NetworkSettings.Ports`` and
``compose ps`` show both bindings. Runs with ``--against-dockerd``.
"""

from __future__ import annotations

import json
import secrets
import time

import pytest

from tests.harness.cli import DockerCLI
from tests.harness.daemon import BaseDaemon, BridgedDockerd

pytestmark = pytest.mark.root

P = f"pb{secrets.token_hex(3)}"


class DefaultProxyDockerd(BridgedDockerd):
    """The reference dockerd with its bridge and its default userland proxy."""

    def argv(self) -> list[str]:
        return [*super().argv(), "--userland-proxy=true"]


REFERENCE_DOCKERD = DefaultProxyDockerd

HTTPD = "mkdir /www && echo served-$HOSTNAME > /www/index.html && httpd -f -p 80 -h /www"


def _fetch(daemon: BaseDaemon, url: str) -> str:
    code = ("import urllib.request,sys; "
            f"sys.stdout.write(urllib.request.urlopen({url!r}, timeout=5).read().decode())")
    for _ in range(50):
        r = daemon.netns.run(["python3", "-c", code])
        if r.returncode == 0:
            return str(r.stdout)
        time.sleep(0.1)
    return f"failed: {r.stderr}"


def test_every_address_ports_are_published_on_ipv6_too(docker_cli: DockerCLI,
                                                       daemon: BaseDaemon) -> None:
    name = f"{P}-web"
    try:
        docker_cli.ok("run", "-d", "--name", name, "-p", "18090:80", "-p", "127.0.0.1:18091:81",
                      "-p", "18092:82/udp", "--expose", "83", "-P", "busybox", "sh", "-c", HTTPD)
        lines = docker_cli.ok("port", name).splitlines()
        ephemeral = next(line.rsplit(":", 1)[1] for line in lines if line.startswith("83/tcp"))
        assert sorted(lines) == sorted([
            "80/tcp -> 0.0.0.0:18090", "80/tcp -> [::]:18090",
            "81/tcp -> 127.0.0.1:18091",
            "82/udp -> 0.0.0.0:18092", "82/udp -> [::]:18092",
            f"83/tcp -> 0.0.0.0:{ephemeral}", f"83/tcp -> [::]:{ephemeral}",
        ])
        ports = json.loads(docker_cli.ok("inspect", name))[0]["NetworkSettings"]["Ports"]
        assert ports["80/tcp"] == [{"HostIp": "0.0.0.0", "HostPort": "18090"},
                                   {"HostIp": "::", "HostPort": "18090"}]
        listed = next(c for c in daemon.api_json("GET", "/containers/json")
                  if c["Names"] == [f"/{name}"])["Ports"]
        assert sorted(p["IP"] for p in listed if p["PrivatePort"] == 80) == ["0.0.0.0", "::"]
        hostname = json.loads(docker_cli.ok("inspect", name))[0]["Config"]["Hostname"]
        # the [::] binding is real: an IPv6 client reaches the container (IPv4-only)
        assert _fetch(daemon, "http://[::1]:18090/") == f"served-{hostname}\n"
        assert _fetch(daemon, "http://127.0.0.1:18090/") == f"served-{hostname}\n"
    finally:
        docker_cli.remove([name])
    # stopped: the port is free again on both families
    again = f"{P}-again"
    try:
        docker_cli.ok("run", "-d", "--name", again, "-p", "18090:80", "busybox", "sh", "-c",
                      HTTPD)
        assert "80/tcp -> [::]:18090" in docker_cli.ok("port", again).splitlines()
    finally:
        docker_cli.remove([again])


def test_ipv6_forwarding_survives_a_daemon_restart(docker_cli: DockerCLI,
                                                   daemon: BaseDaemon) -> None:
    """wharfd only (live-restore is its default; the reference runs without it)."""
    if isinstance(daemon, BridgedDockerd):
        pytest.skip("the reference dockerd runs without live-restore")
    name = f"{P}-live"
    try:
        docker_cli.ok("run", "-d", "--name", name, "-p", "18093:80", "busybox", "sh", "-c",
                      HTTPD)
        hostname = json.loads(docker_cli.ok("inspect", name))[0]["Config"]["Hostname"]
        assert _fetch(daemon, "http://[::1]:18093/") == f"served-{hostname}\n"
        daemon.restart()
        assert _fetch(daemon, "http://[::1]:18093/") == f"served-{hostname}\n"
        assert "80/tcp -> [::]:18093" in docker_cli.ok("port", name).splitlines()
    finally:
        docker_cli.remove([name])
