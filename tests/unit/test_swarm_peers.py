"""The node-to-node HTTPS API (engine.swarm.peers) over loopback, with real TLS.

A fake manager behind the server records what reached it, so the tests can tell that a
join towards a manager with another CA sends nothing, and that only /ca and /join are
served without a node certificate.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import pytest

from engine.errors import InvalidParameter, Unauthorized
from engine.ids import new_swarm_id
from engine.swarm import peers
from engine.swarm.ca import (
    CAMismatch,
    NodeIdentity,
    NodeRole,
    RootCA,
    new_join_token,
    new_node_key_and_csr,
    role_for_join_token,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class FakeManager:
    def __init__(self, root: RootCA, cluster: str) -> None:
        self.root = root
        self.cluster = cluster
        self.worker = new_join_token(root)
        self.manager = new_join_token(root)
        self.joins: list[peers.JoinPeerRequest] = []
        self.callers: list[NodeIdentity] = []

    def root_bundle(self) -> bytes:
        return self.root.bundle_pem

    def cluster_id(self) -> str:
        return self.cluster

    async def handle_join(self, request: peers.JoinPeerRequest) -> peers.JoinPeerAnswer:
        self.joins.append(request)
        role = role_for_join_token(request.token, self.worker, self.manager)
        node_id = new_swarm_id()
        cert = self.root.sign_node_csr(request.csr.encode(), node_id, role, self.cluster)
        return peers.JoinPeerAnswer(
            node_id=node_id, cluster_id=self.cluster, role=role.value,
            ca_bundle=self.root.bundle_pem.decode(), certificate=cert.decode(),
            etcd_endpoints=[], manager_addrs=[],
        )

    async def handle_certificate(
        self, caller: NodeIdentity, request: peers.CertificateRequest
    ) -> peers.CertificateAnswer:
        self.callers.append(caller)
        cert = self.root.sign_node_csr(request.csr.encode(), caller.node_id, caller.role,
                                       self.cluster)
        return peers.CertificateAnswer(role=caller.role.value,
                                       ca_bundle=self.root.bundle_pem.decode(),
                                       certificate=cert.decode())


def _manager_files(tmp_path: Path) -> tuple[FakeManager, ssl.SSLContext]:
    root = RootCA.create()
    cluster = new_swarm_id()
    key, csr = new_node_key_and_csr()
    cert = root.sign_node_csr(csr, new_swarm_id(), NodeRole.MANAGER, cluster)
    (tmp_path / "srv.crt").write_bytes(cert)
    (tmp_path / "srv.key").write_bytes(key)
    tls = peers.server_tls_context(tmp_path / "srv.crt", tmp_path / "srv.key", root)
    return FakeManager(root, cluster), tls


def _node_files(tmp_path: Path, manager: FakeManager, node: str) -> None:
    key, csr = new_node_key_and_csr()
    cert = manager.root.sign_node_csr(csr, node, NodeRole.WORKER, manager.cluster)
    (tmp_path / "n.crt").write_bytes(cert)
    (tmp_path / "n.key").write_bytes(key)


async def _serve(tmp_path: Path) -> tuple[peers.PeerServer, FakeManager, str]:
    manager, tls = await asyncio.to_thread(_manager_files, tmp_path)
    port = _free_port()
    server = peers.PeerServer(manager, "127.0.0.1", port, tls)
    await server.start()
    return server, manager, f"127.0.0.1:{port}"


def _request(token: str) -> peers.JoinPeerRequest:
    _, csr = new_node_key_and_csr()
    return peers.JoinPeerRequest(token=token, csr=csr.decode(), advertise_addr="127.0.0.1",
                                 listen_port=2377, description={"Hostname": "x"})


@pytest.mark.asyncio
async def test_join_with_the_worker_token_gets_a_worker_certificate(tmp_path: Path) -> None:
    server, manager, addr = await _serve(tmp_path)
    try:
        token = str(manager.worker)
        bundle = await peers.fetch_root_bundle(addr, token)
        assert bundle == manager.root.bundle_pem
        answer = await peers.join(addr, bundle, _request(token))
        assert answer.role == "worker"
        assert len(manager.joins) == 1
    finally:
        await server.close()


@pytest.mark.asyncio
async def test_a_token_for_another_ca_sends_nothing(tmp_path: Path) -> None:
    server, manager, addr = await _serve(tmp_path)
    try:
        other = new_join_token(RootCA.create())
        with pytest.raises(CAMismatch):
            await peers.fetch_root_bundle(addr, str(other))
        assert manager.joins == []
    finally:
        await server.close()


@pytest.mark.asyncio
async def test_a_wrong_secret_is_refused_with_dockerds_text(tmp_path: Path) -> None:
    server, manager, addr = await _serve(tmp_path)
    try:
        wrong = str(manager.worker.rotated())
        bundle = await peers.fetch_root_bundle(addr, wrong)
        with pytest.raises(InvalidParameter, match="A valid join token is necessary"):
            await peers.join(addr, bundle, _request(wrong))
    finally:
        await server.close()


@pytest.mark.asyncio
async def test_certificate_calls_need_a_node_certificate(tmp_path: Path) -> None:
    server, manager, addr = await _serve(tmp_path)
    try:
        _, csr = new_node_key_and_csr()
        request = peers.CertificateRequest(csr=csr.decode())
        with pytest.raises(Exception) as refused:
            context = await asyncio.to_thread(peers.client_tls_context,
                                              manager.root.bundle_pem)
            await peers._post(addr, "/certificate", request, context)
        assert isinstance(refused.value, Unauthorized)
        assert manager.callers == []

        node = new_swarm_id()
        await asyncio.to_thread(_node_files, tmp_path, manager, node)
        answer = await peers.request_certificate(
            [addr], manager.root.bundle_pem, tmp_path / "n.crt", tmp_path / "n.key", request
        )
        assert answer.role == "worker"
        assert [c.node_id for c in manager.callers] == [node]
    finally:
        await server.close()
