"""engine.swarm.objects: wire shapes (Go's omitempty), spec defaults, the init merge and
update replacement rules, and the request checks (swarm-api-notes §1, §3, §4)."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest

from engine.errors import InvalidParameter
from engine.swarm import objects as o
from engine.swarm.ca import RootCA


def refused(text: str) -> Any:
    """The check raises InvalidParameter with exactly ``text``."""
    return pytest.raises(InvalidParameter, match=f"^{re.escape(text)}$")


LAB_SPEC = {
    "Name": "default", "Labels": {},
    "Orchestration": {"TaskHistoryRetentionLimit": 5},
    "Raft": {"SnapshotInterval": 10000, "KeepOldSnapshots": 0,
             "LogEntriesForSlowFollowers": 500, "ElectionTick": 10, "HeartbeatTick": 1},
    "Dispatcher": {"HeartbeatPeriod": 5000000000},
    "CAConfig": {"NodeCertExpiry": 7776000000000000},
    "TaskDefaults": {}, "EncryptionConfig": {"AutoLockManagers": False},
}


def test_default_spec_is_the_lab_spec() -> None:
    assert o.wire(o.default_swarm_spec()) == LAB_SPEC


def test_cluster_wire_shape_with_and_without_join_tokens() -> None:
    cluster = o.Cluster(ID="c" * 25, Version=o.ObjectVersion(Index=10), CreatedAt="t1",
                        UpdatedAt="t2", Spec=o.default_swarm_spec())
    data = o.wire(cluster)
    assert data["Version"] == {"Index": 10}
    assert data["DefaultAddrPool"] == ["10.0.0.0/8"]
    assert (data["SubnetSize"], data["DataPathPort"]) == (24, 4789)
    assert data["RootRotationInProgress"] is False
    assert "JoinTokens" not in data
    with_tokens = cluster.model_copy(update={
        "JoinTokens": o.SwarmJoinTokens(Worker="SWMTKN-w", Manager="SWMTKN-m")})
    assert o.wire(with_tokens)["JoinTokens"] == {"Worker": "SWMTKN-w", "Manager": "SWMTKN-m"}


@pytest.mark.parametrize("pool", [None, [], ["10.0.0.0/8"]])
def test_unset_pool_reads_as_the_inbuilt_pool(pool: list[str] | None) -> None:
    assert o.Cluster.model_validate({"DefaultAddrPool": pool}).DefaultAddrPool == ["10.0.0.0/8"]


def test_stored_form_round_trips() -> None:
    cluster = o.Cluster(ID="x", Spec=o.spec_for_init(o.SwarmSpec(Labels={"a": "b"})),
                        DefaultAddrPool=["2.0.0.0/16"], SubnetSize=26, DataPathPort=4242)
    stored = json.dumps(o.wire(cluster))
    assert o.Cluster.model_validate(json.loads(stored)) == cluster


def test_labels_are_never_null() -> None:
    spec = o.SwarmSpec.model_validate({"Labels": None})
    assert o.wire(spec)["Labels"] == {}
    node_spec = o.NodeSpec.model_validate({"Labels": None, "Role": "worker"})
    assert o.wire(node_spec) == {"Labels": {}, "Role": "worker"}


def test_node_wire_shape_omits_what_go_omits() -> None:
    worker = o.Node(
        ID="n1", Spec=o.NodeSpec(Role="worker", Availability="active"),
        Description=o.NodeDescription(
            Hostname="h1", Platform=o.NodePlatform(Architecture="x86_64", OS="linux"),
            Resources=o.NodeResources(NanoCPUs=2_000_000_000, MemoryBytes=1 << 30),
            Engine=o.EngineDescription(EngineVersion="0.1.0", Plugins=[
                o.PluginDescription(Type="Log", Name="json-file")])),
        Status=o.NodeStatus(State="ready", Addr="10.1.0.2"))
    data = o.wire(worker)
    assert "ManagerStatus" not in data
    assert data["Spec"] == {"Labels": {}, "Role": "worker", "Availability": "active"}
    assert data["Status"] == {"State": "ready", "Addr": "10.1.0.2"}
    assert data["Description"]["Engine"] == {
        "EngineVersion": "0.1.0", "Plugins": [{"Type": "Log", "Name": "json-file"}]}
    named = worker.model_copy(update={"Spec": o.NodeSpec(Name="node-name", Role="worker",
                                                         Availability="drain")})
    assert o.wire(named)["Spec"]["Name"] == "node-name"
    follower = worker.model_copy(update={"ManagerStatus": o.NodeManagerStatus(
        Leader=False, Reachability="reachable", Addr="10.1.0.2:2377")})
    assert o.wire(follower)["ManagerStatus"] == {"Reachability": "reachable",
                                                 "Addr": "10.1.0.2:2377"}
    leader = worker.model_copy(update={"ManagerStatus": o.NodeManagerStatus(
        Leader=True, Reachability="reachable", Addr="10.1.0.2:2377")})
    assert o.wire(leader)["ManagerStatus"]["Leader"] is True


def test_init_merges_non_zero_fields_over_defaults() -> None:
    given = o.SwarmSpec.model_validate({
        "Raft": {"SnapshotInterval": 5000, "LogEntriesForSlowFollowers": 1200},
        "CAConfig": {"NodeCertExpiry": 7 * 24 * o.HOUR, "ForceRotate": 6000000000000},
        "Orchestration": {"TaskHistoryRetentionLimit": 0},
        "Dispatcher": {"HeartbeatPeriod": 0},
        "TaskDefaults": {"LogDriver": {"Name": "json-file", "Options": {"max-file": "3"}}},
    })
    spec = o.spec_for_init(given)
    assert spec.Name == "default"
    assert spec.Raft.SnapshotInterval == 5000
    assert spec.Raft.LogEntriesForSlowFollowers == 1200
    assert spec.Raft.ElectionTick == 10 and spec.Raft.HeartbeatTick == 1
    assert spec.CAConfig.NodeCertExpiry == 7 * 24 * o.HOUR
    assert spec.CAConfig.ForceRotate == 6000000000000
    # a pointer given as 0 is a value, not "unset"
    assert spec.Orchestration.TaskHistoryRetentionLimit == 0
    assert spec.Dispatcher.HeartbeatPeriod == 5 * o.SECOND
    assert o.wire(spec)["TaskDefaults"] == {
        "LogDriver": {"Name": "json-file", "Options": {"max-file": "3"}}}


@pytest.mark.parametrize(("request_flag", "spec_flag"), [(True, False), (False, True)])
def test_init_autolock_from_request_or_spec(request_flag: bool, spec_flag: bool) -> None:
    given = o.SwarmSpec(EncryptionConfig=o.EncryptionSpec(AutoLockManagers=spec_flag))
    assert o.spec_for_init(given, autolock=request_flag).EncryptionConfig.AutoLockManagers
    assert not o.spec_for_init(o.SwarmSpec()).EncryptionConfig.AutoLockManagers


@pytest.mark.parametrize("name", ["", "default"])
def test_spec_name_default(name: str) -> None:
    assert o.spec_for_init(o.SwarmSpec(Name=name)).Name == "default"
    update = o.SwarmSpec(Name=name, CAConfig=o.CAConfiguration(NodeCertExpiry=o.HOUR))
    assert o.spec_for_update(update).Name == "default"


def test_other_spec_names_are_refused() -> None:
    with refused('swarm spec must be named "default"'):
        o.spec_for_init(o.SwarmSpec(Name="prod"))
    with refused('swarm spec must be named "default"'):
        o.spec_for_update(o.SwarmSpec(Name="prod", CAConfig=o.CAConfiguration(
            NodeCertExpiry=o.DEFAULT_NODE_CERT_EXPIRY)))


def test_update_replaces_the_spec_zero_meaning_default() -> None:
    current = o.spec_for_init(o.SwarmSpec(
        Labels={"a": "1"}, Raft=o.RaftConfig(SnapshotInterval=5000)))
    # docker-py's models send a partial spec plus the 90 d expiry
    given = o.SwarmSpec.model_validate({
        "Raft": {"SnapshotInterval": 10000}, "CAConfig": {"NodeCertExpiry": 7776000000000000}})
    spec = o.spec_for_update(given)
    assert spec.Labels == {} != current.Labels
    assert o.wire(spec) == LAB_SPEC


def test_update_keeps_given_values() -> None:
    given = o.SwarmSpec.model_validate({
        "Name": "default", "Labels": {"x": "y"},
        "Orchestration": {"TaskHistoryRetentionLimit": 2},
        "Raft": {"SnapshotInterval": 1, "KeepOldSnapshots": 3, "ElectionTick": 20,
                 "HeartbeatTick": 2, "LogEntriesForSlowFollowers": 7},
        "Dispatcher": {"HeartbeatPeriod": 2 * o.SECOND},
        "CAConfig": {"NodeCertExpiry": 2 * o.HOUR, "ForceRotate": 1},
        "EncryptionConfig": {"AutoLockManagers": True}})
    assert o.wire(o.spec_for_update(given)) == o.wire(given)


@pytest.mark.parametrize("expiry", [0, o.HOUR - 1, -5])
def test_update_refuses_short_cert_expiry(expiry: int) -> None:
    given = o.SwarmSpec(CAConfig=o.CAConfiguration(NodeCertExpiry=expiry))
    with pytest.raises(InvalidParameter) as info:
        o.spec_for_update(given)
    assert str(info.value).endswith("minimum certificate expiry time is: 1h0m0s")


def test_init_refuses_short_cert_expiry() -> None:
    with pytest.raises(InvalidParameter, match="minimum certificate expiry"):
        o.spec_for_init(o.SwarmSpec(CAConfig=o.CAConfiguration(NodeCertExpiry=60 * o.SECOND)))


@pytest.mark.parametrize(("given", "expected"), [
    ("0.0.0.0:2377", "0.0.0.0:2377"),
    ("0.0.0.0:4242", "0.0.0.0:4242"),
    ("192.168.77.1", "192.168.77.1:2377"),
    (":4000", "0.0.0.0:4000"),
    ("tcp://10.0.0.1:7", "10.0.0.1:7"),
    ("eth0", "eth0:2377"),
    ("eth0:2400", "eth0:2400"),
    ("[::1]:2400", "[::1]:2400"),
    ("::1", "[::1]:2377"),
])
def test_listen_address_fills_in_the_port(given: str, expected: str) -> None:
    assert o.listen_address(given) == expected


def test_empty_listen_address_is_refused() -> None:
    with refused('invalid ListenAddr "": invalid empty address'):
        o.prepare_init(o.InitRequest())


def test_prepare_init_fills_defaults_and_is_idempotent() -> None:
    request = o.prepare_init(o.InitRequest(ListenAddr="0.0.0.0"))
    assert request.ListenAddr == "0.0.0.0:2377"
    assert o.wire(request.Spec) == LAB_SPEC
    assert (request.DefaultAddrPool, request.SubnetSize, request.DataPathPort) == (
        ["10.0.0.0/8"], 24, 4789)
    assert o.prepare_init(request) == request


def test_prepare_init_merges_the_spec_and_autolock() -> None:
    request = o.prepare_init(o.InitRequest(
        ListenAddr="0.0.0.0", AutoLockManagers=True,
        Spec=o.SwarmSpec(Dispatcher=o.DispatcherConfig(HeartbeatPeriod=2 * o.SECOND))))
    assert request.Spec.Dispatcher.HeartbeatPeriod == 2 * o.SECOND
    assert request.Spec.Raft.ElectionTick == 10
    assert request.Spec.EncryptionConfig.AutoLockManagers and request.AutoLockManagers
    assert o.prepare_init(request) == request


def test_prepare_init_keeps_docker_py_values() -> None:
    request = o.prepare_init(o.InitRequest(
        ListenAddr="0.0.0.0:12345", DataPathPort=4242,
        DefaultAddrPool=["2.0.0.0/16", " 3.0.0.0/16 "], SubnetSize=28))
    assert (request.DefaultAddrPool, request.SubnetSize, request.DataPathPort) == (
        ["2.0.0.0/16", "3.0.0.0/16"], 28, 4242)


@pytest.mark.parametrize(("port", "ok"), [(1024, True), (49151, True), (1023, False),
                                          (49152, False), (4789, True)])
def test_data_path_port_range(port: int, ok: bool) -> None:
    if ok:
        assert o.checked_data_path_port(port) == port
    else:
        with pytest.raises(InvalidParameter, match=(
                rf"^Datapath port number is not in valid range \(1024-49151\) : {port}$")):
            o.checked_data_path_port(port)


@pytest.mark.parametrize(("pool", "size", "message"), [
    (["2.0.0.0/16"], 30, "subnet size is out of range: 30"),
    (["nonsense"], 24, "invalid base pool nonsense: invalid CIDR address: nonsense"),
    (["10.0.0.1"], 24, "invalid base pool 10.0.0.1: invalid CIDR address: 10.0.0.1"),
    (["10.0.0.0/25"], 24, 'invalid CIDR: "10.0.0.0/25". Subnet size is too small for pool: 24'),
])
def test_address_pool_checks(pool: list[str], size: int, message: str) -> None:
    with pytest.raises(InvalidParameter) as info:
        o.checked_addr_pool(pool, size)
    assert str(info.value) == message


def test_prepare_join() -> None:
    with refused("at least 1 RemoteAddr is required to join"):
        o.prepare_join(o.JoinRequest(ListenAddr="0.0.0.0:2377"))
    with refused('invalid ListenAddr "": invalid empty address'):
        o.prepare_join(o.JoinRequest(RemoteAddrs=["10.0.0.1"]))
    with refused('invalid remoteAddr "": invalid empty address'):
        o.prepare_join(o.JoinRequest(ListenAddr="0.0.0.0", RemoteAddrs=[""]))
    request = o.prepare_join(o.JoinRequest(ListenAddr="0.0.0.0", RemoteAddrs=["10.0.0.1"]))
    assert (request.ListenAddr, request.RemoteAddrs) == ("0.0.0.0:2377", ["10.0.0.1:2377"])


def test_local_info_inactive_is_todays_section() -> None:
    assert o.LocalSwarmInfo().info_wire() == {
        "NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive",
        "ControlAvailable": False, "Error": "", "RemoteManagers": None}


def test_local_info_manager_section() -> None:
    cluster = o.Cluster(ID="c", Spec=o.default_swarm_spec(),
                        JoinTokens=o.SwarmJoinTokens(Worker="w", Manager="m"))
    info = o.LocalSwarmInfo(
        NodeID="n", NodeAddr="10.1.0.1", LocalNodeState="active", ControlAvailable=True,
        RemoteManagers=[o.RemoteManager(NodeID="n", Addr="10.1.0.1:2377")],
        Nodes=3, Managers=1, Cluster=cluster).info_wire()
    assert info["RemoteManagers"] == [{"NodeID": "n", "Addr": "10.1.0.1:2377"}]
    assert (info["Nodes"], info["Managers"]) == (3, 1)
    assert "JoinTokens" not in info["Cluster"] and info["Cluster"]["ID"] == "c"
    assert "Warnings" not in info
    worker = o.LocalSwarmInfo(NodeID="w", LocalNodeState="active",
                              RemoteManagers=[o.RemoteManager(NodeID="n", Addr="a:2377")])
    assert set(worker.info_wire()) == {"NodeID", "NodeAddr", "LocalNodeState",
                                       "ControlAvailable", "Error", "RemoteManagers"}


def test_tls_info_for_root() -> None:
    root = RootCA.create()
    info = o.tls_info_for_root(root.bundle_pem)
    assert info.TrustRoot == root.bundle_pem.decode()
    assert base64.b64decode(info.CertIssuerSubject) == root.cert.subject.public_bytes()
    assert base64.b64decode(info.CertIssuerPublicKey)[:2] == b"\x30\x59"  # P-256 SPKI


def test_availability_of_a_new_node() -> None:
    request = o.prepare_init(o.InitRequest(ListenAddr="0.0.0.0"))
    assert request.Availability == "active"
    assert o.prepare_join(o.JoinRequest(ListenAddr="0.0.0.0", RemoteAddrs=["m"],
                                        Availability="Drain")).Availability == "drain"
    with refused('invalid Availability: "off"'):
        o.prepare_init(o.InitRequest(ListenAddr="0.0.0.0", Availability="off"))
    with refused('invalid Availability: "off"'):
        o.prepare_join(o.JoinRequest(ListenAddr="0.0.0.0", RemoteAddrs=["m"],
                                     Availability="off"))


def test_signing_ca_is_never_shown() -> None:
    spec = o.spec_for_init(o.SwarmSpec(CAConfig=o.CAConfiguration(
        SigningCACert="-----BEGIN CERTIFICATE-----", SigningCAKey="-----BEGIN EC KEY-----")))
    cluster = o.Cluster(ID="c", Spec=spec)
    assert o.wire(o.redacted_cluster(cluster))["Spec"]["CAConfig"] == {
        "NodeCertExpiry": 7776000000000000}
    assert cluster.Spec.CAConfig.SigningCAKey  # the original is left alone
    info = o.LocalSwarmInfo(NodeID="n", LocalNodeState="active", Cluster=cluster).info_wire()
    assert info["Cluster"]["Spec"]["CAConfig"] == {"NodeCertExpiry": 7776000000000000}


def test_negative_heartbeat_is_refused() -> None:
    with refused(o.NEGATIVE_HEARTBEAT):
        o.spec_for_init(o.SwarmSpec(Dispatcher=o.DispatcherConfig(HeartbeatPeriod=-1)))
    with refused(o.NEGATIVE_HEARTBEAT):
        o.spec_for_update(o.SwarmSpec(Dispatcher=o.DispatcherConfig(HeartbeatPeriod=-1),
                                      CAConfig=o.CAConfiguration(NodeCertExpiry=o.HOUR)))


def test_unset_sizes_read_as_the_defaults() -> None:
    cluster = o.Cluster.model_validate({"SubnetSize": 0, "DataPathPort": None})
    assert (cluster.SubnetSize, cluster.DataPathPort) == (24, 4789)
    assert o.Cluster.model_validate({"SubnetSize": 28, "DataPathPort": 4242}).DataPathPort == 4242
