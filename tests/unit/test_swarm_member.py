"""engine.swarm.member's pure parts (command lines, URLs, the certificate check) and the
--initial-cluster builder of engine.swarm.etcd. The real member is in
tests/integration/test_etcd_member.py."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import pytest

from engine.errors import InvalidParameter
from engine.layout import Layout
from engine.swarm.ca import NodeRole, RootCA, new_node_key_and_csr
from engine.swarm.etcd import ClusterMember, initial_cluster
from engine.swarm.member import (
    EtcdMember,
    MemberConfig,
    MemberTLS,
    StartMode,
    client_url_for,
    member_argv,
    peer_url_for,
)

V4 = ipaddress.IPv4Address("192.168.77.1")
TLS = MemberTLS(Path("/c/ca.crt"), Path("/c/node.crt"), Path("/c/node.key"))


def _flags(argv: list[str]) -> dict[str, str]:
    out = {}
    for arg in argv[1:]:
        name, _, value = arg.partition("=")
        assert name not in out, f"{name} given twice"
        out[name] = value
    return out


def test_urls_follow_the_cluster_port() -> None:
    config = MemberConfig("n1", V4, TLS)
    assert (config.client_url, config.peer_url) == (
        "https://192.168.77.1:2379",
        "https://192.168.77.1:2380",
    )
    other = MemberConfig("n1", V4, TLS, cluster_port=4000)
    assert (other.client_url, other.peer_url) == (
        "https://192.168.77.1:4002",
        "https://192.168.77.1:4003",
    )
    v6 = ipaddress.IPv6Address("fd00::7")
    assert client_url_for(v6) == "https://[fd00::7]:2379"
    assert peer_url_for(v6, 3000) == "https://[fd00::7]:3003"


def test_new_cluster_argv() -> None:
    config = MemberConfig("node1", V4, TLS)
    flags = _flags(
        member_argv("/usr/bin/etcd", config, Path("/d/etcd"), StartMode.NEW, cluster_token="c1")
    )
    assert flags["--name"] == "node1"
    assert flags["--data-dir"] == "/d/etcd"
    # Only the advertise address: nothing listens on other interfaces.
    assert flags["--listen-client-urls"] == flags["--advertise-client-urls"] == config.client_url
    assert flags["--listen-peer-urls"] == flags["--initial-advertise-peer-urls"] == config.peer_url
    assert flags["--initial-cluster"] == f"node1={config.peer_url}"
    assert flags["--initial-cluster-state"] == "new"
    assert flags["--initial-cluster-token"] == "c1"
    # Mutual TLS on both ports, only managers as peers.
    assert flags["--cert-file"] == flags["--peer-cert-file"] == "/c/node.crt"
    assert flags["--key-file"] == flags["--peer-key-file"] == "/c/node.key"
    assert flags["--trusted-ca-file"] == flags["--peer-trusted-ca-file"] == "/c/ca.crt"
    assert "--client-cert-auth" in flags and "--peer-client-cert-auth" in flags
    assert flags["--peer-cert-allowed-hostname"] == NodeRole.MANAGER.ou
    assert flags["--heartbeat-interval"] == "100"
    assert flags["--election-timeout"] == "1000"
    assert flags["--logger"] == "zap"
    assert "--force-new-cluster" not in flags


def test_join_restart_and_force_argv() -> None:
    config = MemberConfig("node2", V4, TLS)
    data = Path("/d/etcd")
    joining = _flags(member_argv("etcd", config, data, StartMode.JOIN, initial_cluster="a=x,b=y"))
    assert joining["--initial-cluster"] == "a=x,b=y"
    assert joining["--initial-cluster-state"] == "existing"
    assert "--initial-cluster-token" not in joining

    restart = _flags(member_argv("etcd", config, data, StartMode.RESTART))
    assert not {"--initial-cluster", "--initial-cluster-state", "--force-new-cluster"} & set(
        restart
    )
    forced = _flags(member_argv("etcd", config, data, StartMode.FORCE_NEW_CLUSTER))
    assert "--force-new-cluster" in forced and "--initial-cluster" not in forced

    with pytest.raises(InvalidParameter):
        member_argv("etcd", config, data, StartMode.NEW)
    with pytest.raises(InvalidParameter):
        member_argv("etcd", config, data, StartMode.JOIN)


def _m(id_: int, name: str, *peers: str) -> ClusterMember:
    return ClusterMember(id_, name, tuple(peers), (), False)


def test_initial_cluster_names_the_new_member() -> None:
    members = [
        _m(0x11, "node1", "https://10.0.0.1:2380"),
        _m(0x22, "node2", "https://10.0.0.2:2380"),
        _m(0x33, "", "https://10.0.0.3:2380"),  # just added: unnamed until it starts
    ]
    assert initial_cluster(members, 0x33, "node3") == (
        "node1=https://10.0.0.1:2380,node2=https://10.0.0.2:2380,node3=https://10.0.0.3:2380"
    )


def test_initial_cluster_keeps_another_unstarted_member_apart() -> None:
    """etcd wants every member listed (it compares the count); two unnamed ones must not
    merge under one empty name."""
    members = [
        _m(0x11, "node1", "https://10.0.0.1:2380"),
        _m(0xAB, "", "https://10.0.0.4:2380"),  # another join, not started yet
        _m(0x33, "", "https://10.0.0.3:2380", "https://[fd00::3]:2380"),
    ]
    assert initial_cluster(members, 0x33, "node3") == (
        "node1=https://10.0.0.1:2380,ab=https://10.0.0.4:2380,"
        "node3=https://10.0.0.3:2380,node3=https://[fd00::3]:2380"
    )
    with pytest.raises(InvalidParameter):
        initial_cluster(members, 0x99, "node9")


@pytest.fixture
def tls_without_ip_san(tmp_path: Path) -> MemberTLS:
    root = RootCA.create()
    key, csr = new_node_key_and_csr()
    cert = root.sign_node_csr(csr, "node1", NodeRole.MANAGER, "c1")  # no IP SANs
    tls = MemberTLS(tmp_path / "ca.crt", tmp_path / "node.crt", tmp_path / "node.key")
    tls.ca_file.write_bytes(root.bundle_pem)
    tls.cert_file.write_bytes(cert)
    tls.key_file.write_bytes(key)
    return tls


@pytest.mark.asyncio
async def test_certificate_without_the_advertise_ip_is_refused(
    tmp_path: Path, tls_without_ip_san: MemberTLS
) -> None:
    """etcd would start and then fail every handshake: refused before anything starts."""
    layout = Layout(tmp_path / "data", tmp_path / "exec")
    member = EtcdMember(layout, MemberConfig("node1", V4, tls_without_ip_san))
    with pytest.raises(InvalidParameter, match="IP SAN"):
        await member.start_new("c1")
    assert member.pid is None
    assert not await asyncio.to_thread(layout.swarm_etcd_pidfile.exists)


@pytest.fixture
def worker_tls(tmp_path: Path) -> MemberTLS:
    root = RootCA.create()
    key, csr = new_node_key_and_csr()
    cert = root.sign_node_csr(csr, "node1", NodeRole.WORKER, "c1", addresses=[V4])
    tls = MemberTLS(tmp_path / "ca.crt", tmp_path / "node.crt", tmp_path / "node.key")
    tls.ca_file.write_bytes(root.bundle_pem)
    tls.cert_file.write_bytes(cert)
    tls.key_file.write_bytes(key)
    return tls


@pytest.mark.asyncio
async def test_a_worker_certificate_is_refused(tmp_path: Path, worker_tls: MemberTLS) -> None:
    layout = Layout(tmp_path / "data", tmp_path / "exec")
    member = EtcdMember(layout, MemberConfig("node1", V4, worker_tls))
    with pytest.raises(InvalidParameter, match="not a manager's"):
        await member.start_new("c1")
    assert member.pid is None
