"""The swarm and nodes routers, the /info Swarm section and the services/tasks/secrets/
configs stand-ins, over a fake SwarmBackend (swarm-api-notes §1, §2, §5).

The fake keeps a small cluster in memory and refuses as the real backend must (the texts
of engine.swarm.objects), so these tests pin what the router adds: body and query
parsing, the checks made before the backend is asked, statuses and exact error texts,
and the wire JSON of the documents.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import docker
import docker.errors
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from api.app import Mount, build_app
from api.routers import nodes as nodes_router
from api.routers import swarm as swarm_router
from engine import errors
from engine.swarm import objects as o
from engine.swarm.nodes import filter_nodes, find_node
from tests.unit.api_fakes import fake_mounts

NODE_ID = "4nhpw8zq0hxg8qfbx9x2kkkfe"
OTHER_ID = "jsunvyza767cybyfa7m59bix8"


def manager_node(version: int = 305) -> o.Node:
    return o.Node(
        ID=NODE_ID, Version=o.ObjectVersion(Index=version), CreatedAt="2026-12-08T01:00:00Z",
        UpdatedAt="2026-12-08T01:00:01Z",
        Spec=o.NodeSpec(Role="manager", Availability="active"),
        Description=o.NodeDescription(
            Hostname="h1", Platform=o.NodePlatform(Architecture="x86_64", OS="linux"),
            Resources=o.NodeResources(NanoCPUs=2_000_000_000, MemoryBytes=1 << 30),
            Engine=o.EngineDescription(EngineVersion="0.1.0")),
        Status=o.NodeStatus(State="ready", Addr="127.0.0.1"),
        ManagerStatus=o.NodeManagerStatus(Leader=True, Reachability="reachable",
                                          Addr="127.0.0.1:2377"))


def worker_node() -> o.Node:
    return o.Node(
        ID=OTHER_ID, Version=o.ObjectVersion(Index=310),
        Spec=o.NodeSpec(Role="worker", Availability="active"),
        Description=o.NodeDescription(Hostname="h2"),
        Status=o.NodeStatus(State="ready", Addr="127.0.0.2"))


class FakeSwarm:
    """A SwarmBackend holding one manager's view; ``state`` picks how it answers."""

    def __init__(self, state: str = "inactive") -> None:
        self.state = state  # inactive | manager | worker | locked | starting
        self.calls: list[tuple[str, Any]] = []
        self.version = 10
        self.spec = o.default_swarm_spec()
        self.nodes = [manager_node(), worker_node()]
        self.autolock_key = ""

    def _need_manager(self) -> None:
        if self.state != "manager":
            raise o.no_manager_error(self._info())

    def _info(self) -> o.LocalSwarmInfo:
        if self.state == "inactive":
            return o.LocalSwarmInfo()
        if self.state == "locked":
            return o.LocalSwarmInfo(LocalNodeState="locked")
        me = NODE_ID if self.state in ("manager", "starting") else OTHER_ID
        info = o.LocalSwarmInfo(
            NodeID=me, NodeAddr="127.0.0.1", LocalNodeState="active",
            ControlAvailable=self.state == "manager",
            RemoteManagers=[o.RemoteManager(NodeID=NODE_ID, Addr="127.0.0.1:2377")])
        if self.state == "manager":
            info.Nodes, info.Managers, info.Cluster = 2, 1, self._cluster()
        return info

    def _cluster(self) -> o.Cluster:
        return o.Cluster(ID="vkuni12dg188h3krwfu2fefg3", Version=o.ObjectVersion(
            Index=self.version), CreatedAt="2026-12-08T01:00:00Z",
            UpdatedAt="2026-12-08T01:00:00Z", Spec=self.spec)

    async def init(self, request: o.InitRequest) -> str:
        self.calls.append(("init", request))
        if self.state != "inactive":
            raise errors.Unavailable(o.ALREADY_IN_SWARM)
        self.state = "manager"
        return NODE_ID

    async def join(self, request: o.JoinRequest) -> None:
        self.calls.append(("join", request))
        if self.state != "inactive":
            raise errors.Unavailable(o.ALREADY_IN_SWARM)
        self.state = "worker"

    async def leave(self, force: bool) -> None:
        self.calls.append(("leave", force))
        if self.state == "inactive":
            raise errors.Unavailable(o.NOT_PART_OF_SWARM)
        self.state = "inactive"

    async def inspect(self) -> o.Cluster:
        self._need_manager()
        return self._cluster().model_copy(update={"JoinTokens": o.SwarmJoinTokens(
            Worker="SWMTKN-1-digest-worker", Manager="SWMTKN-1-digest-manager")})

    async def update(self, spec: o.SwarmSpec, version: int, rotate: o.Rotation) -> None:
        self.calls.append(("update", (spec, version, rotate)))
        self._need_manager()
        if version != self.version:
            raise errors.EngineError(o.UPDATE_OUT_OF_SEQUENCE)
        self.spec, self.version = spec, self.version + 1

    async def unlock_key(self) -> str:
        self._need_manager()
        return self.autolock_key

    async def unlock(self, key: str) -> None:
        self.calls.append(("unlock", key))
        if self.state != "locked":
            raise errors.Conflict("swarm is not locked")
        if key != "SWMKEY-1-right":
            raise errors.Unauthorized("swarm could not be unlocked: invalid key provided")
        self.state = "manager"

    async def local_info(self) -> o.LocalSwarmInfo:
        return self._info()

    async def list_nodes(self, filters: Mapping[str, Sequence[str]]) -> list[o.Node]:
        self.calls.append(("list_nodes", dict(filters)))
        self._need_manager()
        return filter_nodes(self.nodes, filters)

    async def get_node(self, ref: str) -> o.Node:
        self._need_manager()
        return find_node(self.nodes, ref)

    async def update_node(self, ref: str, version: int, spec: o.NodeSpec) -> None:
        self.calls.append(("update_node", (ref, version, spec)))
        self._need_manager()
        node = find_node(self.nodes, ref)
        if node.Version.Index != version:
            raise errors.EngineError(o.UPDATE_OUT_OF_SEQUENCE)
        node.Spec = spec
        node.Version = o.ObjectVersion(Index=version + 7)

    async def remove_node(self, ref: str, force: bool) -> None:
        self.calls.append(("remove_node", (ref, force)))
        self._need_manager()
        find_node(self.nodes, ref)


@pytest_asyncio.fixture
async def fake() -> FakeSwarm:
    return FakeSwarm()


@pytest_asyncio.fixture
async def client(fake: FakeSwarm) -> AsyncIterator[TestClient[Any, Any]]:
    app = build_app([
        *fake_mounts(),
        Mount(swarm_router.routes, swarm_router.BACKEND, fake),
        Mount(nodes_router.routes, nodes_router.BACKEND, fake),
    ])
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def error_of(response: Any) -> tuple[int, str]:
    body = await response.json()
    return response.status, body["message"]


# --- /swarm/init ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_init_returns_the_node_id_as_a_json_string(
        client: TestClient[Any, Any], fake: FakeSwarm) -> None:
    # docker-py's init_swarm body (custom pool and size, random port, loopback address)
    body = {"AdvertiseAddr": "127.0.0.1", "ListenAddr": "0.0.0.0:12345",
            "ForceNewCluster": False, "DefaultAddrPool": ["2.0.0.0/16"], "SubnetSize": 26,
            "Spec": {"Raft": {"SnapshotInterval": 5000, "LogEntriesForSlowFollowers": 1200},
                     "CAConfig": {"NodeCertExpiry": 7776000000000000, "ForceRotate": 6000000000000},
                     "EncryptionConfig": {"AutoLockManagers": True}, "Labels": None}}
    r = await client.post("/v1.41/swarm/init", json=body)
    assert r.status == 200
    assert r.headers["Content-Type"] == "application/json"
    assert await r.json() == NODE_ID
    (_, request), = [call for call in fake.calls if call[0] == "init"]
    assert request.ListenAddr == "0.0.0.0:12345"
    assert request.AdvertiseAddr == "127.0.0.1"
    assert (request.DefaultAddrPool, request.SubnetSize, request.DataPathPort) == (
        ["2.0.0.0/16"], 26, 4789)
    spec = request.Spec
    assert spec.Name == "default" and spec.Labels == {}
    assert spec.Raft.SnapshotInterval == 5000 and spec.Raft.ElectionTick == 10
    assert spec.CAConfig.ForceRotate == 6000000000000
    assert spec.Orchestration.TaskHistoryRetentionLimit == 5
    assert spec.EncryptionConfig.AutoLockManagers is True
    # a second init is the backend's refusal, passed on
    r = await client.post("/swarm/init", json=body)
    assert await error_of(r) == (503, o.ALREADY_IN_SWARM)


@pytest.mark.asyncio
async def test_init_fills_the_default_port(client: TestClient[Any, Any],
                                           fake: FakeSwarm) -> None:
    r = await client.post("/swarm/init", json={"ListenAddr": "192.168.77.1",
                                                "DataPathPort": 4242})
    assert r.status == 200
    request = fake.calls[-1][1]
    assert (request.ListenAddr, request.DataPathPort) == ("192.168.77.1:2377", 4242)
    assert request.DefaultAddrPool == ["10.0.0.0/8"] and request.SubnetSize == 24


@pytest.mark.asyncio
@pytest.mark.parametrize(("version", "pool", "size", "port"), [
    ("1.38", ["10.0.0.0/8"], 24, 4789),
    ("1.39", ["2.0.0.0/16"], 28, 4789),
    ("1.40", ["2.0.0.0/16"], 28, 4242),
])
async def test_init_ignores_fields_newer_than_the_api_version(
        client: TestClient[Any, Any], fake: FakeSwarm, version: str, pool: list[str],
        size: int, port: int) -> None:
    r = await client.post(f"/v{version}/swarm/init", json={
        "ListenAddr": "0.0.0.0", "DefaultAddrPool": ["2.0.0.0/16"], "SubnetSize": 28,
        "DataPathPort": 4242})
    assert r.status == 200
    request = fake.calls[-1][1]
    assert (request.DefaultAddrPool, request.SubnetSize, request.DataPathPort) == (
        pool, size, port)


@pytest.mark.asyncio
@pytest.mark.parametrize(("body", "message"), [
    (None, 'invalid ListenAddr "": invalid empty address'),
    ({}, 'invalid ListenAddr "": invalid empty address'),
    ({"ListenAddr": ""}, 'invalid ListenAddr "": invalid empty address'),
    ({"ListenAddr": "0.0.0.0:2377", "Spec": {"Name": "prod"}},
     'swarm spec must be named "default"'),
    ({"ListenAddr": "0.0.0.0:2377", "DataPathPort": 80},
     "Datapath port number is not in valid range (1024-49151) : 80"),
    ({"ListenAddr": "0.0.0.0:2377", "DefaultAddrPool": ["10.0.0.0/8"], "SubnetSize": 30},
     "subnet size is out of range: 30"),
    ({"ListenAddr": "0.0.0.0:2377", "DefaultAddrPool": ["x"]},
     "invalid base pool x: invalid CIDR address: x"),
    ({"ListenAddr": "0.0.0.0:2377", "DataPathPort": "4789"},
     "invalid JSON: json: cannot unmarshal string into Go struct field "
     "InitRequest.DataPathPort of type uint32"),
    ({"ListenAddr": "0.0.0.0:2377", "Spec": {"Raft": {"SnapshotInterval": -1}}},
     "invalid JSON: json: cannot unmarshal number -1 into Go struct field "
     "RaftConfig.Spec.Raft.SnapshotInterval of type uint64"),
    ({"ListenAddr": "0.0.0.0:2377",
      "Spec": {"CAConfig": {"NodeCertExpiry": 1000}}},
     "rpc error: code = InvalidArgument desc = minimum certificate expiry time is: 1h0m0s"),
    ([], "invalid JSON: json: cannot unmarshal array into Go value of type swarm.InitRequest"),
])
async def test_init_refusals(client: TestClient[Any, Any], fake: FakeSwarm,
                             body: Any, message: str) -> None:
    if body is None:
        r = await client.post("/swarm/init")
    else:
        r = await client.post("/swarm/init", json=body)
    assert await error_of(r) == (400, message)
    assert fake.calls == []


# --- /swarm/join, /swarm/leave --------------------------------------------------------------


@pytest.mark.asyncio
async def test_join(client: TestClient[Any, Any], fake: FakeSwarm) -> None:
    r = await client.post("/swarm/join", json={
        "ListenAddr": "0.0.0.0:2377", "AdvertiseAddr": "10.1.0.2", "JoinToken": "SWMTKN-1-x",
        "RemoteAddrs": ["10.1.0.1", "10.1.0.1:4000"], "Availability": "drain"})
    assert r.status == 200 and await r.read() == b""
    (_, request), = fake.calls
    assert request.RemoteAddrs == ["10.1.0.1:2377", "10.1.0.1:4000"]
    assert (request.JoinToken, request.Availability) == ("SWMTKN-1-x", "drain")
    r = await client.post("/swarm/join", json={"ListenAddr": "0.0.0.0:2377",
                                                "RemoteAddrs": ["10.1.0.1"]})
    assert await error_of(r) == (503, o.ALREADY_IN_SWARM)


@pytest.mark.asyncio
@pytest.mark.parametrize(("body", "message"), [
    ({"ListenAddr": "0.0.0.0:2377"}, "at least 1 RemoteAddr is required to join"),
    ({"ListenAddr": "0.0.0.0:2377", "RemoteAddrs": []},
     "at least 1 RemoteAddr is required to join"),
    ({"RemoteAddrs": ["10.1.0.1"]}, 'invalid ListenAddr "": invalid empty address'),
    ({"ListenAddr": "0.0.0.0:2377", "RemoteAddrs": [""]},
     'invalid remoteAddr "": invalid empty address'),
    ({"ListenAddr": "0.0.0.0:2377", "RemoteAddrs": "10.1.0.1"},
     "invalid JSON: json: cannot unmarshal string into Go struct field "
     "JoinRequest.RemoteAddrs of type []string"),
])
async def test_join_refusals(client: TestClient[Any, Any], fake: FakeSwarm,
                             body: Any, message: str) -> None:
    assert await error_of(await client.post("/swarm/join", json=body)) == (400, message)
    assert fake.calls == []


@pytest.mark.asyncio
async def test_leave(client: TestClient[Any, Any], fake: FakeSwarm) -> None:
    r = await client.post("/swarm/leave", params={"force": "True"})
    assert await error_of(r) == (503, "This node is not part of a swarm")
    fake.state = "manager"
    r = await client.post("/swarm/leave")
    assert r.status == 200 and await r.read() == b""
    assert fake.calls == [("leave", True), ("leave", False)]


# --- GET /swarm, /swarm/update ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_inspect(client: TestClient[Any, Any], fake: FakeSwarm) -> None:
    r = await client.get("/swarm")
    assert await error_of(r) == (503, o.NOT_IN_SWARM_MANAGER)
    fake.state = "worker"
    assert await error_of(await client.get("/swarm")) == (503, o.WORKER_NOT_MANAGER)
    fake.state = "starting"
    assert await error_of(await client.get("/swarm")) == (503, o.MANAGER_NOT_READY)
    fake.state = "locked"
    assert await error_of(await client.get("/swarm")) == (503, o.SWARM_LOCKED)
    fake.state = "manager"
    fake.spec.CAConfig.SigningCACert = "-----BEGIN CERTIFICATE-----"
    fake.spec.CAConfig.SigningCAKey = "-----BEGIN EC PRIVATE KEY-----"
    r = await client.get("/v1.41/swarm")
    assert r.status == 200
    body = await r.json()
    assert body["ID"] == "vkuni12dg188h3krwfu2fefg3"
    assert body["Version"] == {"Index": 10}
    assert body["Spec"]["Dispatcher"] == {"HeartbeatPeriod": 5000000000}
    assert body["Spec"]["CAConfig"] == {"NodeCertExpiry": 7776000000000000}
    assert body["Spec"]["Labels"] == {} and body["Spec"]["TaskDefaults"] == {}
    assert (body["DefaultAddrPool"], body["SubnetSize"], body["DataPathPort"]) == (
        ["10.0.0.0/8"], 24, 4789)
    assert body["JoinTokens"] == {"Worker": "SWMTKN-1-digest-worker",
                                  "Manager": "SWMTKN-1-digest-manager"}


@pytest.mark.asyncio
async def test_update_replaces_the_spec(client: TestClient[Any, Any],
                                        fake: FakeSwarm) -> None:
    fake.state = "manager"
    # docker-py's models: a partial spec plus the 90 d expiry
    spec = {"Raft": {"SnapshotInterval": 10000},
            "CAConfig": {"NodeCertExpiry": 7776000000000000},
            "Labels": {"a": "b"}}
    r = await client.post("/swarm/update", params={
        "version": "10", "rotateWorkerToken": "True", "rotateManagerToken": "false",
        "rotateManagerUnlockKey": "0"}, json=spec)
    assert r.status == 200 and await r.read() == b""
    (_, (stored, version, rotation)), = [c for c in fake.calls if c[0] == "update"]
    assert version == 10
    assert rotation == o.Rotation(worker_token=True)
    assert stored.Labels == {"a": "b"}
    assert stored.Raft.ElectionTick == 10 and stored.Dispatcher.HeartbeatPeriod == 5 * o.SECOND
    body = await (await client.get("/swarm")).json()
    assert body["Version"] == {"Index": 11}
    assert body["Spec"]["Labels"] == {"a": "b"}
    # the version just used is stale now: 500, with swarmkit's words
    r = await client.post("/swarm/update", params={"version": "10"}, json=spec)
    assert await error_of(r) == (500, "rpc error: code = Unknown desc = update out of sequence")


@pytest.mark.asyncio
@pytest.mark.parametrize(("query", "body", "message"), [
    ({}, {"CAConfig": {"NodeCertExpiry": 7776000000000000}},
     "invalid swarm version '': strconv.ParseUint: parsing \"\": invalid syntax"),
    ({"version": "abc"}, {}, "invalid swarm version 'abc': strconv.ParseUint: parsing "
     "\"abc\": invalid syntax"),
    ({"version": "-1"}, {}, "invalid swarm version '-1': strconv.ParseUint: parsing "
     "\"-1\": invalid syntax"),
    ({"version": "18446744073709551616"}, {}, "invalid swarm version "
     "'18446744073709551616': strconv.ParseUint: parsing \"18446744073709551616\": "
     "value out of range"),
    ({"version": "10", "rotateWorkerToken": "maybe"},
     {"CAConfig": {"NodeCertExpiry": 7776000000000000}},
     "invalid value for rotateWorkerToken: maybe"),
    ({"version": "10", "rotateManagerUnlockKey": "yes"},
     {"CAConfig": {"NodeCertExpiry": 7776000000000000}},
     "invalid value for rotateManagerUnlockKey: yes"),
    ({"version": "10"}, {}, "rpc error: code = InvalidArgument desc = minimum certificate "
     "expiry time is: 1h0m0s"),
    ({"version": "10"}, {"Name": "x", "CAConfig": {"NodeCertExpiry": 7776000000000000}},
     'swarm spec must be named "default"'),
    ({"version": "10"}, {"Dispatcher": {"HeartbeatPeriod": "5s"}},
     "invalid JSON: json: cannot unmarshal string into Go struct field "
     "DispatcherConfig.Dispatcher.HeartbeatPeriod of type time.Duration"),
])
async def test_update_refusals(client: TestClient[Any, Any], fake: FakeSwarm,
                               query: dict[str, str], body: Any, message: str) -> None:
    fake.state = "manager"
    r = await client.post("/swarm/update", params=query, json=body)
    assert await error_of(r) == (400, message)
    assert fake.calls == []


# --- unlock -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_unlock_key_and_unlock(client: TestClient[Any, Any], fake: FakeSwarm) -> None:
    assert await error_of(await client.get("/swarm/unlockkey")) == (
        503, o.NOT_IN_SWARM_MANAGER)
    fake.state = "manager"
    r = await client.get("/swarm/unlockkey")
    assert r.status == 200 and await r.json() == {"UnlockKey": ""}
    fake.autolock_key = "SWMKEY-1-abc"
    assert await (await client.get("/swarm/unlockkey")).json() == {"UnlockKey": "SWMKEY-1-abc"}
    r = await client.post("/swarm/unlock", json={"UnlockKey": "SWMKEY-1-right"})
    assert await error_of(r) == (409, "swarm is not locked")
    fake.state = "locked"
    r = await client.post("/swarm/unlock", json={"UnlockKey": "SWMKEY-1-wrong"})
    assert await error_of(r) == (401, "swarm could not be unlocked: invalid key provided")
    r = await client.post("/swarm/unlock", json={"unlockkey": "SWMKEY-1-right"})
    assert r.status == 200 and fake.state == "manager"


# --- nodes ------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_list_nodes(client: TestClient[Any, Any], fake: FakeSwarm) -> None:
    assert await error_of(await client.get("/nodes")) == (503, o.NOT_IN_SWARM_MANAGER)
    fake.state = "manager"
    r = await client.get("/nodes")
    assert r.status == 200
    listed = await r.json()
    assert [node["ID"] for node in listed] == [NODE_ID, OTHER_ID]
    manager, worker = listed
    assert manager["Spec"] == {"Labels": {}, "Role": "manager", "Availability": "active"}
    assert manager["ManagerStatus"] == {"Leader": True, "Reachability": "reachable",
                                        "Addr": "127.0.0.1:2377"}
    assert manager["Status"] == {"State": "ready", "Addr": "127.0.0.1"}
    assert "ManagerStatus" not in worker
    r = await client.get("/nodes", params={"filters": '{"role":["worker"]}'})
    assert [node["ID"] for node in await r.json()] == [OTHER_ID]
    r = await client.get("/nodes", params={"filters": '{"name":{"h1":true}}'})
    assert [node["ID"] for node in await r.json()] == [NODE_ID]
    assert fake.calls[-1] == ("list_nodes", {"name": ["h1"]})


@pytest.mark.asyncio
@pytest.mark.parametrize(("filters", "message"), [
    ('{"colour":["red"]}', "invalid filter 'colour'"),
    ('{"role":["boss"]}', "Invalid role filter: 'boss'"),
    ('{"membership":["maybe"]}', "Invalid membership filter: 'maybe'"),
])
async def test_list_nodes_bad_filters(client: TestClient[Any, Any], fake: FakeSwarm,
                                      filters: str, message: str) -> None:
    fake.state = "manager"
    r = await client.get("/nodes", params={"filters": filters})
    assert await error_of(r) == (400, message)


@pytest.mark.asyncio
async def test_inspect_node(client: TestClient[Any, Any], fake: FakeSwarm) -> None:
    fake.state = "manager"
    for ref in (NODE_ID, "h1", "4nhp"):
        r = await client.get(f"/nodes/{ref}")
        assert r.status == 200
        assert (await r.json())["ID"] == NODE_ID
    listed = await (await client.get("/nodes")).json()
    inspected = await (await client.get(f"/nodes/{OTHER_ID}")).json()
    assert inspected == listed[1]
    assert await error_of(await client.get("/nodes/foobar01")) == (
        404, "node foobar01 not found")


@pytest.mark.asyncio
async def test_update_node_round_trips_the_spec(client: TestClient[Any, Any],
                                                fake: FakeSwarm) -> None:
    fake.state = "manager"
    spec = {"Availability": "active", "Name": "node-name", "Role": "manager",
            "Labels": {"foo": "bar"}}
    r = await client.post(f"/nodes/{NODE_ID}/update", params={"version": "305"}, json=spec)
    assert r.status == 200 and await r.read() == b""
    node = await (await client.get(f"/nodes/{NODE_ID}")).json()
    assert node["Spec"] == spec
    assert node["Version"]["Index"] > 305
    spec = {"Availability": "active", "Role": "manager", "Labels": {}}
    r = await client.post(f"/nodes/{NODE_ID}/update",
                          params={"version": str(node["Version"]["Index"])}, json=spec)
    assert r.status == 200
    assert (await (await client.get(f"/nodes/{NODE_ID}")).json())["Spec"] == spec
    r = await client.post(f"/nodes/{NODE_ID}/update", params={"version": "305"}, json=spec)
    assert await error_of(r) == (500, o.UPDATE_OUT_OF_SEQUENCE)


@pytest.mark.asyncio
@pytest.mark.parametrize(("query", "body", "message"), [
    ({}, {"Role": "worker", "Availability": "active"},
     "invalid node version '': strconv.ParseUint: parsing \"\": invalid syntax"),
    ({"version": "1.5"}, {"Role": "worker", "Availability": "active"},
     "invalid node version '1.5': strconv.ParseUint: parsing \"1.5\": invalid syntax"),
    ({"version": "310"}, {"Role": "boss", "Availability": "active"}, 'invalid Role: "boss"'),
    ({"version": "310"}, {"Role": "worker"}, 'invalid Availability: ""'),
    ({"version": "310"}, {"Role": "worker", "Availability": "active", "Labels": ["x"]},
     "invalid JSON: json: cannot unmarshal array into Go struct field NodeSpec.Labels of "
     "type map[string]string"),
])
async def test_update_node_refusals(client: TestClient[Any, Any], fake: FakeSwarm,
                                    query: dict[str, str], body: Any, message: str) -> None:
    fake.state = "manager"
    r = await client.post(f"/nodes/{OTHER_ID}/update", params=query, json=body)
    assert await error_of(r) == (400, message)
    assert not [call for call in fake.calls if call[0] == "update_node"]


@pytest.mark.asyncio
async def test_remove_node(client: TestClient[Any, Any], fake: FakeSwarm) -> None:
    fake.state = "manager"
    r = await client.delete(f"/nodes/{OTHER_ID}", params={"force": "1"})
    assert r.status == 200 and await r.read() == b""
    r = await client.delete("/nodes/h2")
    assert r.status == 200
    assert await error_of(await client.delete("/nodes/foobar01")) == (
        404, "node foobar01 not found")
    assert [c for c in fake.calls if c[0] == "remove_node"] == [
        ("remove_node", (OTHER_ID, True)), ("remove_node", ("h2", False)),
        ("remove_node", ("foobar01", False))]


# --- /info ------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_info_swarm_section(client: TestClient[Any, Any], fake: FakeSwarm) -> None:
    swarm = (await (await client.get("/info")).json())["Swarm"]
    assert swarm == {"NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive",
                     "ControlAvailable": False, "Error": "", "RemoteManagers": None}
    fake.state = "manager"
    swarm = (await (await client.get("/info")).json())["Swarm"]
    assert (swarm["NodeID"], swarm["LocalNodeState"], swarm["ControlAvailable"]) == (
        NODE_ID, "active", True)
    assert (swarm["Nodes"], swarm["Managers"]) == (2, 1)
    assert swarm["RemoteManagers"] == [{"NodeID": NODE_ID, "Addr": "127.0.0.1:2377"}]
    assert swarm["Cluster"]["ID"] == "vkuni12dg188h3krwfu2fefg3"
    assert swarm["Cluster"]["Spec"]["Raft"]["ElectionTick"] == 10
    assert "JoinTokens" not in swarm["Cluster"]
    fake.state = "worker"
    swarm = (await (await client.get("/info")).json())["Swarm"]
    assert swarm["ControlAvailable"] is False and swarm["NodeID"] == OTHER_ID
    assert not {"Nodes", "Managers", "Cluster"} & set(swarm)


# --- docker-py's own requests ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_docker_py_swarm_and_node_calls(client: TestClient[Any, Any],
                                              fake: FakeSwarm) -> None:
    """docker-py 7.2's api and models calls of its swarm tests, against the routers: the
    requests it builds (None dropped or nested, Python bools in the query) are accepted
    and what it reads back is there."""
    base_url = f"tcp://127.0.0.1:{client.port}"

    def run() -> None:
        # docker-py is synchronous (and reads its config files): all of it off the loop
        models = docker.DockerClient(base_url=base_url, version="1.41")
        try:
            talk(models.api, models)
        finally:
            models.close()

    def talk(api: Any, models: Any) -> None:
        with pytest.raises(docker.errors.APIError) as refused:
            api.inspect_swarm()
        assert refused.value.status_code == 503
        assert api.leave_swarm(force=True) is True  # docker-py swallows "not part of"
        spec = api.create_swarm_spec(snapshot_interval=5000, log_entries_for_slow_followers=1200,
                                     node_cert_expiry=7776000000000000,
                                     ca_force_rotate=6000000000000)
        node_id = api.init_swarm("127.0.0.1", listen_addr="0.0.0.0:12345",
                                 swarm_spec=spec, default_addr_pool=["2.0.0.0/16"],
                                 subnet_size=28, data_path_port=4242)
        assert node_id == NODE_ID
        init = fake.calls[-1][1]
        assert init.Spec.Raft.SnapshotInterval == 5000
        assert (init.DefaultAddrPool, init.SubnetSize, init.DataPathPort) == (
            ["2.0.0.0/16"], 28, 4242)
        with pytest.raises(docker.errors.APIError) as again:
            api.init_swarm("127.0.0.1", listen_addr="0.0.0.0:12345")
        assert "This node is already part of a swarm." in again.value.explanation
        swarm = api.inspect_swarm()
        assert swarm["Spec"]["CAConfig"]["NodeCertExpiry"] == 7776000000000000
        api.update_swarm(version=swarm["Version"]["Index"], swarm_spec=api.create_swarm_spec(
            node_cert_expiry=7776000000000000), rotate_worker_token=True)
        update = fake.calls[-1][1]
        assert update[2] == o.Rotation(worker_token=True)
        assert api.inspect_swarm()["Version"]["Index"] > swarm["Version"]["Index"]
        assert api.nodes(filters={"role": "worker"}) == [api.inspect_node(OTHER_ID)]
        node = api.inspect_node(NODE_ID)
        assert node == api.nodes()[0]
        spec = {"Availability": "active", "Name": "node-name", "Role": "manager",
                "Labels": {"foo": "bar"}}
        api.update_node(NODE_ID, node["Version"]["Index"], spec)
        assert api.inspect_node(NODE_ID)["Spec"] == spec
        with pytest.raises(docker.errors.NotFound):
            api.remove_node("foobar01")
        # the models: update sends a partial spec plus the 90 d expiry
        models.swarm.reload()
        models.swarm.update(snapshot_interval=10000)
        assert models.swarm.attrs["Spec"]["Raft"]["SnapshotInterval"] == 10000
        (listed,) = models.nodes.list(filters={"name": "h1"})
        assert listed.id == NODE_ID and listed.version > 0
        assert models.info()["Swarm"]["ControlAvailable"] is True
        assert models.swarm.leave(force=True) is True
        with pytest.raises(docker.errors.APIError) as gone:
            models.swarm.reload()
        assert gone.value.status_code == 503

    await asyncio.to_thread(run)


# --- services, tasks, secrets, configs ---------------------------------------------------------


@pytest.mark.asyncio
async def test_swarm_object_stand_ins_without_a_swarm_backend() -> None:
    async with TestClient(TestServer(build_app(fake_mounts()))) as bare:
        for method, path in (("GET", "/services"), ("GET", "/v1.41/tasks"),
                             ("POST", "/secrets/create"), ("DELETE", "/configs/x")):
            r = await bare.request(method, path)
            assert await error_of(r) == (503, o.NOT_IN_SWARM_MANAGER)
        assert (await bare.get("/swarm")).status == 404  # served by the swarm router only


@pytest.mark.asyncio
@pytest.mark.parametrize(("state", "message"), [
    ("inactive", o.NOT_IN_SWARM_MANAGER),
    ("worker", o.WORKER_NOT_MANAGER),
    ("starting", o.MANAGER_NOT_READY),
    ("locked", o.SWARM_LOCKED),
])
async def test_swarm_object_stand_ins_off_a_manager(
        client: TestClient[Any, Any], fake: FakeSwarm, state: str, message: str) -> None:
    fake.state = state
    for method, path in (("GET", "/services"), ("GET", "/tasks"), ("GET", "/secrets/s1"),
                         ("POST", "/configs/create"), ("POST", "/services/x/update"),
                         ("DELETE", "/secrets/s1")):
        assert await error_of(await client.request(method, path)) == (503, message)


@pytest.mark.asyncio
async def test_swarm_object_stand_ins_on_a_manager(client: TestClient[Any, Any],
                                                   fake: FakeSwarm) -> None:
    fake.state = "manager"
    for path in ("/services", "/v1.41/tasks", "/secrets", "/configs"):
        r = await client.get(path)
        assert r.status == 200 and await r.json() == []
    # the CLI's progress monitor filter is accepted; an unknown key is not
    r = await client.get("/tasks", params={
        "filters": '{"service":["x"],"_up-to-date":["true"]}'})
    assert r.status == 200
    r = await client.get("/configs", params={"filters": '{"names":["x"]}'})
    assert await error_of(r) == (400, "invalid filter 'names'")
    assert (await client.get("/secrets", params={"filters": '{"names":["x"]}'})).status == 200
    for method, path, message in (
            ("GET", "/services/web", "service web not found"),
            ("GET", "/v1.41/tasks/t1", "task t1 not found"),
            ("POST", "/secrets/s1/update", "secret s1 not found"),
            ("DELETE", "/configs/c1", "config c1 not found")):
        assert await error_of(await client.request(method, path)) == (404, message)
    for path, kind in (("/services/create", "services"), ("/v1.41/secrets/create", "secrets"),
                       ("/configs/create", "configs")):
        r = await client.post(path, json={})
        assert await error_of(r) == (501, f"{kind} are not supported yet")
