"""``com.docker.network.bridge.enable_icc=false``: containers on one bridge network cannot
reach each other, while a network with the default (icc on) next to it still works.
Run with ``--against-dockerd`` to check the expectations on dockerd 20.10 (bridged).
"""

from __future__ import annotations

import json
import secrets

import pytest

from tests.harness.cli import DockerCLI
from tests.harness.daemon import BridgedDockerd

pytestmark = pytest.mark.root

P = "wi" + secrets.token_hex(3)

REFERENCE_DOCKERD = BridgedDockerd


def address_on(cli: DockerCLI, container: str, network: str) -> str:
    info = json.loads(cli.ok("inspect", container))[0]
    return str(info["NetworkSettings"]["Networks"][network]["IPAddress"])


def test_icc_off_isolates_one_bridge(docker_cli: DockerCLI) -> None:
    cli = docker_cli
    closed, open_, = f"{P}-noicc", f"{P}-icc"
    names = [f"{P}-a", f"{P}-b", f"{P}-c", f"{P}-d"]
    a, b, c, d = names
    try:
        cli.ok("network", "create", "-o", "com.docker.network.bridge.enable_icc=false",
               closed)
        cli.ok("network", "create", open_)
        options = json.loads(cli.ok("network", "inspect", closed))[0]["Options"]
        assert options["com.docker.network.bridge.enable_icc"] == "false"
        for name, net in ((a, closed), (b, closed), (c, open_), (d, open_)):
            cli.ok("run", "-d", "--name", name, "--network", net, "busybox", "sleep", "3600")
        # icc on: neighbours answer (the same probe can succeed, so its failure below
        # means something)
        cli.ok("exec", d, "ping", "-c1", "-W2", address_on(cli, c, open_))
        # icc off: no traffic between the two containers, in either direction
        r = cli("exec", b, "ping", "-c1", "-W1", address_on(cli, a, closed))
        assert r.returncode != 0, r
        r = cli("exec", a, "ping", "-c1", "-W1", address_on(cli, b, closed))
        assert r.returncode != 0, r
        # the names still resolve (the embedded DNS is not a neighbour)
        lookup = cli("exec", b, "nslookup", a)
        assert address_on(cli, a, closed) in lookup.stdout, lookup
    finally:
        cli("rm", "-f", *names)
        cli("network", "rm", closed, open_)
