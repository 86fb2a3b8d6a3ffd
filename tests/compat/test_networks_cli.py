"""Issue 5 acceptance: networking through the stock docker CLI 28 (and docker-py).

Everything happens inside the test daemon's network namespace (bridges, veths, the
nftables table); a second namespace made here stands for "another host" reaching
published ports. Names carry a per-run prefix; every test removes what it made.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import secrets
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.cli import DockerCLI, import_busybox
from tests.harness.daemon import BaseDaemon, BridgedDockerd
from tests.harness.netns import NetNS

pytestmark = pytest.mark.root

P = "wn" + secrets.token_hex(3)

# --against-dockerd: a reference dockerd with its own default bridge (in its netns)
REFERENCE_DOCKERD = BridgedDockerd


def describe(r: subprocess.CompletedProcess[Any]) -> str:
    return f"exit {r.returncode}\nstdout: {r.stdout!r}\nstderr: {r.stderr!r}"


def inspect(cli: DockerCLI, *refs: str) -> Any:
    return json.loads(cli.ok("inspect", *refs))


@pytest.fixture
def other_host(daemon: BaseDaemon) -> Iterator[tuple[NetNS, str]]:
    """A namespace joined to the daemon's by a veth: 10.199.0.1 (daemon) - .2 (other)."""
    other = NetNS("wharfd-t").create()
    a, b = f"wo{secrets.token_hex(3)}", f"wp{secrets.token_hex(3)}"
    try:
        subprocess.run(["ip", "link", "add", a, "netns", daemon.netns.name, "type", "veth",
                        "peer", "name", b, "netns", other.name], check=True)
        daemon.netns.run(["ip", "addr", "add", "10.199.0.1/24", "dev", a], check=True)
        daemon.netns.run(["ip", "link", "set", a, "up"], check=True)
        other.run(["ip", "addr", "add", "10.199.0.2/24", "dev", b], check=True)
        other.run(["ip", "link", "set", b, "up"], check=True)
        other.run(["ip", "route", "add", "default", "via", "10.199.0.1"], check=True)
        yield other, "10.199.0.1"
    finally:
        daemon.netns.run(["ip", "link", "del", a])
        other.delete()


def test_seed_scenario(docker_cli: DockerCLI, daemon: BaseDaemon,
                       other_host: tuple[NetNS, str]) -> None:
    cli = docker_cli
    t1, t2, t3, t4, web, net = (f"{P}-t1", f"{P}-t2", f"{P}-t3", f"{P}-t4", f"{P}-web",
                                f"{P}-net")
    try:
        cli.ok("run", "-d", "--name", t1, "busybox", "sh", "-c", "while true; do sleep 3600; done")
        cli.ok("run", "-d", "--name", t2, "busybox", "sleep", "3600")
        ip_a = cli.ok("exec", t1, "ip", "a")
        assert "eth0" in ip_a and "inet 172." in ip_a
        ip1, ip2 = (inspect(cli, c)[0]["NetworkSettings"]["IPAddress"] for c in (t1, t2))
        assert ip1 and ip2 and ip1 != ip2
        cli.ok("exec", t1, "ping", "-c1", "-W2", ip2)
        cli.ok("exec", t2, "ping", "-c1", "-W2", ip1)
        # --link: one direction only
        cli.ok("run", "-d", "--name", t3, "--link", t1, "busybox", "sleep", "3600")
        cli.ok("exec", t3, "ping", "-c1", "-W2", t1)
        assert cli("exec", t1, "ping", "-c1", "-W1", t3).returncode != 0
        # a user network, connect, DNS by name
        cli.ok("network", "create", "-d", "bridge", net)
        assert net in cli.ok("network", "ls")
        cli.ok("run", "-d", "--name", t4, "--network", net, "--network-alias", "db",
               "busybox", "sleep", "3600")
        cli.ok("network", "connect", net, t2)
        ip_a = cli.ok("exec", t2, "ip", "a")
        assert "eth0" in ip_a and "eth1" in ip_a
        cli.ok("exec", t2, "ping", "-c1", "-W2", t4)
        cli.ok("exec", t2, "ping", "-c1", "-W2", "db")
        assert "nameserver 127.0.0.11" in cli.ok("exec", t4, "cat", "/etc/resolv.conf")
        # isolation: t4 (user network only) cannot reach t1 on the default bridge
        assert cli("exec", t4, "ping", "-c1", "-W1", ip1).returncode != 0
        # published port: from the daemon namespace's loopback and from another namespace
        cli.ok("run", "-d", "--name", web, "-p", "8080:80", "busybox", "httpd", "-f", "-p",
               "80", "-h", "/etc")
        hostname = inspect(cli, web)[0]["Config"]["Hostname"]
        got = daemon.netns.run(["curl", "-s", "--retry", "5", "--retry-connrefused",
                                "--retry-delay", "0", "127.0.0.1:8080/hostname"])
        assert got.stdout.strip() == hostname, describe(got)
        other, address = other_host
        got = other.run(["curl", "-s", "-m", "5", f"{address}:8080/hostname"])
        assert got.stdout.strip() == hostname, describe(got)
        # the IPv4 line (the [::] one: tests/compat/test_port_bindings.py)
        assert cli.ok("port", web).split("\n")[0] == "80/tcp -> 0.0.0.0:8080"
        # a second binding of the same port fails as dockerd's does
        r = cli("run", "-d", "--name", f"{P}-web2", "-p", "8080:80", "busybox", "sleep", "1")
        assert r.returncode != 0 and "port is already allocated" in r.stderr, describe(r)
        # host and none modes
        host_ip = cli.ok("run", "--rm", "--network", "host", "busybox", "ip", "a")
        assert "wharfd0" in host_ip
        none_ip = cli.ok("run", "--rm", "--network", "none", "busybox", "ip", "a")
        assert "eth0" not in none_ip and "lo" in none_ip
        shared = cli.ok("run", "--rm", "--network", f"container:{t4}", "busybox", "ip", "a")
        assert inspect(cli, t4)[0]["NetworkSettings"]["Networks"][net]["IPAddress"] in shared
        # inspect, and rm refused while in use
        info = json.loads(cli.ok("network", "inspect", net))[0]
        assert {c["Name"] for c in info["Containers"].values()} == {t4, t2}
        r = cli("network", "rm", net)
        assert r.returncode != 0 and "has active endpoints" in r.stderr, describe(r)
        r = cli("network", "rm", "bridge")
        assert "bridge is a pre-defined network and cannot be removed" in r.stderr
    finally:
        cli.remove([t1, t2, t3, t4, web, f"{P}-web2"], [net])
    links = daemon.netns.run(["ip", "-br", "link"]).stdout
    assert " wv" not in links and "\nwv" not in links, links


def test_stop_releases_address_and_ports(docker_cli: DockerCLI) -> None:
    cli = docker_cli
    name = f"{P}-stop"
    try:
        cli.ok("run", "-d", "--name", name, "-p", "18081:80", "busybox", "sleep", "3600")
        running = inspect(cli, name)[0]["NetworkSettings"]
        assert running["IPAddress"] and running["SandboxKey"]
        assert running["Ports"]["80/tcp"][0] == {"HostIp": "0.0.0.0", "HostPort": "18081"}
        cli.ok("stop", "-t", "0", name)
        stopped = inspect(cli, name)[0]["NetworkSettings"]
        assert stopped["IPAddress"] == "" and stopped["Ports"] == {}
        assert stopped["Networks"]["bridge"]["IPAddress"] == ""
        cli.ok("start", name)
        assert inspect(cli, name)[0]["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"] \
            == "18081"
    finally:
        cli("rm", "-f", name)


def test_user_network_options_and_fixed_ip(docker_cli: DockerCLI) -> None:
    cli = docker_cli
    net, c = f"{P}-opts", f"{P}-fixed"
    try:
        cli.ok("network", "create", "--subnet", "10.77.0.0/24", "--gateway", "10.77.0.254",
               "--ip-range", "10.77.0.128/25", "--label", "a=b", "-o",
               "com.docker.network.bridge.name=wtestbr0", net)
        info = json.loads(cli.ok("network", "inspect", net))[0]
        assert info["IPAM"]["Config"] == [{"Subnet": "10.77.0.0/24", "Gateway": "10.77.0.254",
                                           "IPRange": "10.77.0.128/25"}]
        assert info["Labels"] == {"a": "b"}
        assert net in cli.ok("network", "ls", "--filter", "label=a=b", "--format", "{{.Name}}")
        cli.ok("run", "-d", "--name", c, "--network", net, "--ip", "10.77.0.9", "busybox",
               "sleep", "3600")
        settings = inspect(cli, c)[0]["NetworkSettings"]["Networks"][net]
        assert settings["IPAddress"] == "10.77.0.9" and settings["Gateway"] == "10.77.0.254"
        assert c in settings["DNSNames"]
        r = cli("run", "--rm", "--network", net, "--ip", "10.78.0.9", "busybox", "true")
        assert r.returncode != 0 and "does not belong" in r.stderr, describe(r)
    finally:
        cli.remove([c], [net])


def test_network_bad_input(daemon: BaseDaemon) -> None:
    cases = [
        ({"Name": f"{P}-b1", "IPAM": {"Config": [{"Subnet": "300.1.1.0/24"}]}}, 400),
        ({"Name": f"{P}-b2", "IPAM": {"Config": [{"Subnet": "10.1.0.0/33"}]}}, 400),
        ({"Name": f"{P}-b3", "IPAM": {"Config": [{"Subnet": "10.1.0.0/24",
                                                  "Gateway": "10.2.0.1"}]}}, 400),
        ({"Name": f"{P}-b4", "IPAM": {"Config": [{"Subnet": "10.1.0.0/24",
                                                  "IPRange": "10.3.0.0/24"}]}}, 400),
        ({"Name": "a n/bad"}, 400),
        ({"Name": ""}, 400),
        ({"Name": f"{P}-b5", "Driver": "nosuch"}, 404),
    ]
    for body, status in cases:
        r = daemon.api("POST", "/networks/create", body)
        assert r.status == status, (body, r.status, r.text)
    assert daemon.api("POST", "/networks/create", {"Name": ""}).json()["message"] == \
        "invalid name: name is empty"
    names = [n["Name"] for n in daemon.api_json("GET", "/networks")]
    assert not [n for n in names if n.startswith(f"{P}-b")]
    first = {"Name": f"{P}-ov1", "IPAM": {"Config": [{"Subnet": "10.88.0.0/16"}]}}
    second = {"Name": f"{P}-ov2", "IPAM": {"Config": [{"Subnet": "10.88.1.0/24"}]}}
    try:
        assert daemon.api("POST", "/networks/create", first).status == 201
        r = daemon.api("POST", "/networks/create", second)
        assert r.status == 403 and "Pool overlaps" in r.text
        r = daemon.api("POST", "/networks/create", {"Name": f"{P}-ov1"})
        assert r.status == 409 and f"network with name {P}-ov1 already exists" in r.text
        r = daemon.api("DELETE", "/networks/host")
        assert r.status == 403
    finally:
        daemon.api("DELETE", f"/networks/{P}-ov1")


def test_concurrent_creates_make_one_network(daemon: BaseDaemon) -> None:
    """reliability.md L3."""
    name = f"{P}-l3"
    try:
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            statuses = list(pool.map(
                lambda _: daemon.api("POST", "/networks/create",
                                     {"Name": name, "CheckDuplicate": True}).status,
                range(10)))
        assert sorted(statuses) == [201] + [409] * 9
        assert [n["Name"] for n in daemon.api_json("GET", "/networks")].count(name) == 1
    finally:
        daemon.api("DELETE", f"/networks/{name}")


def test_ports_bad_input_changes_nothing(daemon: BaseDaemon) -> None:
    """reliability.md B10."""
    before = len(daemon.api_json("GET", "/containers/json?all=1"))
    bodies: list[dict[str, Any]] = [
        {"HostConfig": {"PortBindings": {"80/tcp": [{"HostPort": "70000"}]}}},
        {"ExposedPorts": {"abc/tcp": {}}},
        {"ExposedPorts": {"80/xyz": {}}},
        {"HostConfig": {"PortBindings": {"80/tcp": [{"HostIp": "999.1.1.1",
                                                     "HostPort": "80"}]}}},
    ]
    for extra in bodies:
        r = daemon.api("POST", "/containers/create", {"Image": "busybox", **extra})
        assert r.status == 400 and "invalid port specification" in r.text, r.text
    assert len(daemon.api_json("GET", "/containers/json?all=1")) == before


def test_connect_missing_network_b20(docker_cli: DockerCLI, daemon: BaseDaemon) -> None:
    name = f"{P}-b20"
    try:
        cli = docker_cli
        cli.ok("create", "--name", name, "busybox", "true")
        r = daemon.api("POST", "/networks/nosuchnet/connect", {"Container": name})
        assert r.status == 404 and "network nosuchnet not found" in r.text
        assert list(inspect(cli, name)[0]["NetworkSettings"]["Networks"]) == ["bridge"]
    finally:
        docker_cli("rm", "-f", name)


def test_exhausted_pool_b16(docker_cli: DockerCLI) -> None:
    cli = docker_cli
    net, a, b = f"{P}-tiny", f"{P}-ta", f"{P}-tb"
    try:
        net_id = cli.ok("network", "create", "--subnet", "10.50.0.0/30", net).strip()
        # /30: network, gateway .1, one address (.2), broadcast
        cli.ok("run", "-d", "--name", a, "--network", net, "busybox", "sleep", "3600")
        # dockerd 20.10's words, with the network's full id
        message = f"no available IPv4 addresses on this network's address pools: {net} " \
                  f"({net_id})"
        r = cli("run", "-d", "--name", b, "--network", net, "busybox", "sleep", "3600")
        assert r.returncode == 125 and message in r.stderr, describe(r)
        r = cli("start", b)
        assert r.returncode != 0 and message in r.stderr, describe(r)
        state = inspect(cli, b)[0]["State"]
        assert state["Status"] == "created" and state["Error"] == message, state
        cli.ok("rm", "-f", a)
        cli.ok("start", b)
        assert inspect(cli, b)[0]["NetworkSettings"]["Networks"][net]["IPAddress"] == \
            "10.50.0.2"
    finally:
        cli.remove([a, b], [net])


def test_publish_all_and_list_ports(docker_cli: DockerCLI, dclient: Any) -> None:
    cli = docker_cli
    name = f"{P}-pall"
    try:
        cli.ok("run", "-d", "--name", name, "--expose", "81", "-P", "busybox", "sleep", "3600")
        ports = inspect(cli, name)[0]["NetworkSettings"]["Ports"]
        host_port = int(ports["81/tcp"][0]["HostPort"])
        assert 1024 < host_port
        container = dclient.containers.get(name)
        assert container.ports["81/tcp"][0]["HostPort"] == str(host_port)
        listed = [c for c in dclient.api.containers(all=True) if c["Names"] == [f"/{name}"]]
        # the IPv4 entry (the [::] one: tests/compat/test_port_bindings.py)
        assert [p for p in listed[0]["Ports"] if p["IP"] == "0.0.0.0"] == [
            {"IP": "0.0.0.0", "PrivatePort": 81, "PublicPort": host_port, "Type": "tcp"}]
    finally:
        cli("rm", "-f", name)


def test_restore_after_kill9(fresh_daemon: BaseDaemon, busybox_tar: Path) -> None:
    """Running containers keep their address and port; stopped ones show none (F1);
    nothing is handed out twice."""
    d = fresh_daemon
    import_busybox(d, busybox_tar)
    cli = DockerCLI(d)
    cli.ok("network", "create", "rnet")
    cli.ok("run", "-d", "--name", "keep", "--network", "rnet", "-p", "18090:80", "busybox",
           "httpd", "-f", "-p", "80", "-h", "/etc")
    cli.ok("run", "-d", "--name", "gone", "--network", "rnet", "busybox", "sleep", "3600")
    before = inspect(cli, "keep")[0]["NetworkSettings"]["Networks"]["rnet"]["IPAddress"]
    gone_pid = inspect(cli, "gone")[0]["State"]["Pid"]
    d.kill9()
    os.kill(gone_pid, signal.SIGKILL)
    d.start()
    keep = inspect(cli, "keep")[0]
    assert keep["State"]["Running"]
    assert keep["NetworkSettings"]["Networks"]["rnet"]["IPAddress"] == before
    gone = inspect(cli, "gone")[0]
    assert not gone["State"]["Running"]
    assert gone["NetworkSettings"]["Networks"]["rnet"]["IPAddress"] == ""
    got = d.netns.run(["curl", "-s", "-m", "5", "127.0.0.1:18090/hostname"])
    assert got.stdout.strip() == keep["Config"]["Hostname"], describe(got)
    cli.ok("run", "-d", "--name", "new", "--network", "rnet", "busybox", "sleep", "3600")
    fresh = inspect(cli, "new")[0]["NetworkSettings"]["Networks"]["rnet"]["IPAddress"]
    assert fresh != before
    cli.ok("exec", "new", "ping", "-c1", "-W2", "keep")
    cli.ok("rm", "-f", "keep", "gone", "new")
    cli.ok("network", "rm", "rnet")
