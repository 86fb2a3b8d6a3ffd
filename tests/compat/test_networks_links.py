"""Legacy ``--link`` environment variables through the docker CLI 28 (issue 5, item 4).

The expected lists below are what dockerd 20.10 prints (run this module with
``--against-dockerd``: the reference then gets a default bridge of its own, inside its
own network namespace, since links need one). Only the addresses are filled in from
``docker inspect``; names and order are dockerd's.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness.cli import DockerCLI
from tests.harness.daemon import BaseDaemon, BridgedDockerd

pytestmark = pytest.mark.root

P = "wl" + secrets.token_hex(3)

# --against-dockerd: links need the reference's default bridge
REFERENCE_DOCKERD = BridgedDockerd


def describe(r: subprocess.CompletedProcess[Any]) -> str:
    return f"exit {r.returncode}\nstdout: {r.stdout!r}\nstderr: {r.stderr!r}"


def bridge_ip(cli: DockerCLI, name: str) -> str:
    info = json.loads(cli.ok("inspect", name))[0]
    address = info["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
    assert address, info["NetworkSettings"]
    return str(address)


def link_lines(output: str) -> list[str]:
    """``env`` output without what every container has (PATH, HOSTNAME, HOME, TERM).

    The ``_ENV_`` lines are sorted: dockerd 20.10 once printed them in another order
    than the linked container's Env (seen once in many runs, not reproduced)."""
    common = ("PATH=", "HOSTNAME=", "HOME=", "TERM=")
    lines = [line for line in output.splitlines() if line and not line.startswith(common)]
    env_lines = [line for line in lines if "_ENV_" in line]
    return [line for line in lines if "_ENV_" not in line] + sorted(env_lines)


def expected_db_env(ip: str, container: str, alias: str = "db",
                    prefix: str = "DB") -> list[str]:
    """dockerd 20.10's variables for the ``child`` below (ports 53/udp, 80-82, 443,
    9000-9002/udp; env FOO, EMPTY and HOME)."""
    lines = [f"{prefix}_PORT=udp://{ip}:53"]
    lines += [
        f"{prefix}_PORT_80_TCP_START=tcp://{ip}:80", f"{prefix}_PORT_80_TCP_ADDR={ip}",
        f"{prefix}_PORT_80_TCP_PROTO=tcp", f"{prefix}_PORT_80_TCP_PORT_START=80",
        f"{prefix}_PORT_80_TCP_END=tcp://{ip}:82", f"{prefix}_PORT_80_TCP_PORT_END=82",
        f"{prefix}_PORT_9000_UDP_START=udp://{ip}:9000", f"{prefix}_PORT_9000_UDP_ADDR={ip}",
        f"{prefix}_PORT_9000_UDP_PROTO=udp", f"{prefix}_PORT_9000_UDP_PORT_START=9000",
        f"{prefix}_PORT_9000_UDP_END=udp://{ip}:9002",
        f"{prefix}_PORT_9000_UDP_PORT_END=9002",
    ]
    # each port's own four, minus the keys a range already set (first one stays)
    seen = {line.partition("=")[0] for line in lines}
    for port, proto in ((53, "udp"), (80, "tcp"), (81, "tcp"), (82, "tcp"), (443, "tcp"),
                        (9000, "udp"), (9001, "udp"), (9002, "udp")):
        key = f"{prefix}_PORT_{port}_{proto.upper()}"
        for line in (f"{key}={proto}://{ip}:{port}", f"{key}_ADDR={ip}",
                     f"{key}_PORT={port}", f"{key}_PROTO={proto}"):
            if line.partition("=")[0] not in seen:
                lines.append(line)
    lines += [f"{prefix}_NAME=/{container}/{alias}", f"{prefix}_ENV_EMPTY=",
              f"{prefix}_ENV_FOO=bar"]
    return lines


@pytest.fixture(scope="module")
def child(daemon: BaseDaemon) -> Iterator[str]:
    """A running container with exposed ports (a range of three, a lone udp one, a udp
    range) and an env whose HOME is not passed on."""
    cli = DockerCLI(daemon)
    name = f"{P}-child"
    cli.ok("run", "-d", "--name", name, "-e", "FOO=bar", "-e", "HOME=/x", "-e", "EMPTY=",
           "--expose", "80", "--expose", "81", "--expose", "82", "--expose", "53/udp",
           "--expose", "9000-9002/udp", "--expose", "443", "busybox", "sleep", "3600")
    try:
        yield name
    finally:
        cli("rm", "-f", name)


def test_link_env_as_dockerd(docker_cli: DockerCLI, child: str) -> None:
    cli, me = docker_cli, f"{P}-run"
    out = cli.ok("run", "--rm", "--name", me, "--link", f"{child}:db", "busybox", "env")
    assert link_lines(out) == expected_db_env(bridge_ip(cli, child), me), out
    # the container's own variable wins over a link's, in the link's place
    out = cli.ok("run", "--rm", "--name", me, "-e", "DB_PORT=mine", "--link",
                 f"{child}:db", "busybox", "env")
    wanted = expected_db_env(bridge_ip(cli, child), me)
    wanted[0] = "DB_PORT=mine"
    assert link_lines(out) == wanted, out


def test_link_env_in_exec_and_inspect(docker_cli: DockerCLI, child: str) -> None:
    cli, me = docker_cli, f"{P}-ex"
    try:
        cli.ok("run", "-d", "--name", me, "--link", f"{child}:db", "busybox", "sleep", "3600")
        out = cli.ok("exec", me, "env")
        assert link_lines(out) == expected_db_env(bridge_ip(cli, child), me), out
        # link variables are not part of the container's configuration
        env = json.loads(cli.ok("inspect", "-f", "{{json .Config.Env}}", me))
        assert not [e for e in env or [] if e.startswith("DB_")]
    finally:
        cli("rm", "-f", me)


def test_link_without_alias_and_dashed_alias(docker_cli: DockerCLI, child: str) -> None:
    cli, me, plain = docker_cli, f"{P}-two", f"{P}-plain"
    try:
        cli.ok("run", "-d", "--name", plain, "--expose", "7000", "--expose", "7001", "-e",
               "PATH=/bin", "busybox", "sleep", "3600")
        out = cli.ok("run", "--rm", "--name", me, "--link", child, "--link",
                     f"{plain}:my-alias", "busybox", "env")
        lines = link_lines(out)
        ip = bridge_ip(cli, plain)
        # two consecutive ports are no range; PATH is not passed on
        mine = [line for line in lines if line.startswith("MY_ALIAS_")]
        assert mine == [
            f"MY_ALIAS_PORT=tcp://{ip}:7000",
            f"MY_ALIAS_PORT_7000_TCP=tcp://{ip}:7000", f"MY_ALIAS_PORT_7000_TCP_ADDR={ip}",
            "MY_ALIAS_PORT_7000_TCP_PORT=7000", "MY_ALIAS_PORT_7000_TCP_PROTO=tcp",
            f"MY_ALIAS_PORT_7001_TCP=tcp://{ip}:7001", f"MY_ALIAS_PORT_7001_TCP_ADDR={ip}",
            "MY_ALIAS_PORT_7001_TCP_PORT=7001", "MY_ALIAS_PORT_7001_TCP_PROTO=tcp",
            f"MY_ALIAS_NAME=/{me}/my-alias",
        ], out
        alias = child.upper().replace("-", "_")
        theirs = [line for line in lines if line.startswith(alias + "_")]
        assert theirs == expected_db_env(bridge_ip(cli, child), me, child, alias), out
    finally:
        cli("rm", "-f", plain)


def test_link_env_only_on_default_bridge(docker_cli: DockerCLI, child: str) -> None:
    cli, net = docker_cli, f"{P}-net"
    try:
        cli.ok("network", "create", net)
        out = cli.ok("run", "--rm", "--network", net, "--link", f"{child}:db", "busybox",
                     "env")
        assert link_lines(out) == [], out
    finally:
        cli("network", "rm", net)


def test_link_to_stopped_container_fails_start(docker_cli: DockerCLI) -> None:
    cli, target, me = docker_cli, f"{P}-stopped", f"{P}-linker"
    try:
        cli.ok("create", "--name", target, "busybox", "sleep", "3600")
        r = cli("run", "--name", me, "--link", f"{target}:db", "busybox", "true")
        assert r.returncode == 125, describe(r)
        assert (f"Cannot link to a non running container: /{target} AS /{me}/db"
                in r.stderr), describe(r)
        state = json.loads(cli.ok("inspect", "-f", "{{json .State}}", me))
        assert state["Status"] == "created"
        # started once the target runs
        cli.ok("start", target)
        cli.ok("start", me)
    finally:
        cli("rm", "-f", me, target)
