"""Network details docker-py relies on (found with docker-py's own integration suite):
null IPAM fields, names with spaces, MAC addresses asked for at create and connect,
links scoped to a user-defined network, `DELETE /containers/<parent>/<alias>?link=1`,
and the swarm endpoints of a node that is in no swarm. Checked against dockerd 20.10
(``--against-dockerd``: links and MACs need its bridge, hence ``BridgedDockerd``)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from tests.harness.cli import docker_py_client
from tests.harness.daemon import BaseDaemon, BridgedDockerd

pytestmark = pytest.mark.root

P = "wn" + secrets.token_hex(3)

# --against-dockerd: links and MAC addresses need the reference's default bridge
REFERENCE_DOCKERD = BridgedDockerd


@pytest.fixture
def client(daemon: BaseDaemon) -> Iterator[docker.DockerClient]:
    c = docker_py_client(daemon)
    try:
        yield c
    finally:
        for ctr in c.containers.list(all=True):
            if ctr.name.startswith(P):
                ctr.remove(force=True)
        for net in c.networks.list():
            if net.name.startswith(P):
                net.remove()
        c.close()


def test_ipam_nulls_and_a_name_with_a_space(client: docker.DockerClient) -> None:
    api: Any = client.api
    body = {"Name": f"{P} spaced", "Driver": "bridge", "IPAM": {
        "Driver": "default",
        "Config": [{"Subnet": "172.29.0.0/16", "IPRange": None, "Gateway": None,
                    "AuxiliaryAddresses": None}],
    }}
    created = api._result(api._post_json(api._url("/networks/create"), data=body), True)
    ipam = api.inspect_network(created["Id"])["IPAM"]
    assert ipam["Options"] is None
    assert ipam["Config"][0]["Subnet"] == "172.29.0.0/16"
    assert api.inspect_network(f"{P} spaced")["Name"] == f"{P} spaced"


def test_mac_addresses_asked_for(client: docker.DockerClient) -> None:
    api: Any = client.api
    net = client.networks.create(f"{P}-mac")
    created = api.create_container("busybox", "top", name=f"{P}-c1")
    api.connect_container_to_network(created, net.name, mac_address="02:42:ac:11:00:02")
    settings = api.inspect_container(created)["NetworkSettings"]["Networks"][net.name]
    assert settings["MacAddress"] == "02:42:ac:11:00:02"

    legacy = api.create_container("busybox", ["sleep", "60"], name=f"{P}-c2",
                                  mac_address="02:42:ac:11:00:0a")
    api.start(legacy)
    assert api.inspect_container(legacy)["NetworkSettings"]["MacAddress"] == \
        "02:42:ac:11:00:0a"


def test_links_scoped_to_a_user_network(client: docker.DockerClient) -> None:
    api: Any = client.api
    net = client.networks.create(f"{P}-links")
    asker = api.create_container(
        "busybox", ["sleep", "600"], name=f"{P}-asker",
        host_config=api.create_host_config(network_mode=net.name),
        networking_config=api.create_networking_config({
            net.name: api.create_endpoint_config(links=[(f"{P}-up", "bar")]),
        }),
    )
    api.start(asker)
    settings = api.inspect_container(asker)["NetworkSettings"]["Networks"][net.name]
    assert settings["Links"] == [f"{P}-up:bar"]
    up = api.create_container("busybox", ["sleep", "600"], name=f"{P}-up",
                              host_config=api.create_host_config(network_mode=net.name))
    api.start(up)
    address = api.inspect_container(up)["NetworkSettings"]["Networks"][net.name]["IPAddress"]
    result = client.containers.get(asker["Id"]).exec_run(["nslookup", "bar"])
    assert result.exit_code == 0, result.output
    assert address in result.output.decode()
    # only the container that has the link knows the alias
    other = client.containers.run("busybox", ["nslookup", "bar"], name=f"{P}-other",
                                  network=net.name, detach=True)
    assert other.wait()["StatusCode"] != 0


def test_remove_a_legacy_link(client: docker.DockerClient) -> None:
    api: Any = client.api
    target = api.create_container("busybox", ["sleep", "600"], name=f"{P}-target")
    api.start(target)
    parent = api.create_container(
        "busybox", ["sleep", "600"], name=f"{P}-parent",
        host_config=api.create_host_config(links={f"{P}-target": "mylink"}),
    )
    api.start(parent)
    api.remove_container(f"{P}-parent/mylink", link=True)
    assert not api.inspect_container(parent)["HostConfig"]["Links"]
    with pytest.raises(docker.errors.NotFound):
        api.remove_container(f"{P}-parent/nosuchlink", link=True)
    assert api.inspect_container(target)["State"]["Running"]  # the target stays


def test_swarm_endpoints_of_a_node_in_no_swarm(client: docker.DockerClient) -> None:
    api: Any = client.api
    # docker-py's leave_swarm() swallows exactly this answer; look at the wire
    left = api._post(api._url("/swarm/leave"), params={"force": True})
    assert left.status_code == 503
    assert left.json()["message"] == "This node is not part of a swarm"
    client.api.leave_swarm(force=True)  # and so it passes, as against dockerd
    for call in (client.api.inspect_swarm, client.api.services, client.api.nodes):
        with pytest.raises(docker.errors.APIError) as refused:
            call()
        assert refused.value.status_code == 503
        assert "This node is not a swarm manager" in str(refused.value)
