"""The swarm CA library (engine.swarm.ca) and swarm IDs, in process (wharfd-only: no daemon).

The token format is checked against swarm-api-notes §3 (swarmkit's GenerateJoinToken /
ParseJoinToken); the mutual-TLS test runs a real handshake with Python's ssl.
"""

from __future__ import annotations

import hashlib
import ipaddress
import random
import socket
import ssl
import string
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from engine.errors import InvalidParameter, Unauthorized
from engine.ids import is_swarm_id, new_swarm_id, to_base36
from engine.swarm.ca import (
    DEFAULT_NODE_CERT_EXPIRY,
    CAMismatch,
    JoinToken,
    NodeIdentity,
    NodeRole,
    RootCA,
    identity_of,
    identity_of_peer,
    load_certificate,
    mutual_tls_context,
    needs_renewal,
    new_join_token,
    new_node_key_and_csr,
    parse_join_token,
    renewal_time,
    role_for_join_token,
    verify_node_certificate,
)

BASE36 = set(string.digits + string.ascii_lowercase)
CLUSTER = "c" * 25


@pytest.fixture(scope="module")
def root() -> RootCA:
    return RootCA.create()


def issue(
    root: RootCA,
    role: NodeRole = NodeRole.WORKER,
    node_id: str | None = None,
    expiry: timedelta = DEFAULT_NODE_CERT_EXPIRY,
    now: datetime | None = None,
) -> tuple[bytes, bytes]:
    key_pem, csr_pem = new_node_key_and_csr()
    cert_pem = root.sign_node_csr(
        csr_pem, node_id or new_swarm_id(), role, CLUSTER, expiry=expiry, now=now
    )
    return key_pem, cert_pem


# --------------------------------------------------------------------------- IDs


def test_to_base36_matches_int_parsing() -> None:
    for value in [0, 1, 35, 36, 2**64, 2**256 - 1, *(random.getrandbits(200) for _ in range(50))]:
        assert int(to_base36(value), 36) == value
    assert to_base36(0) == "0"
    assert to_base36(35) == "z"
    assert len(to_base36(2**256 - 1)) == 50
    assert len(to_base36(2**128 - 1)) == 25


def test_swarm_ids_are_25_lowercase_base36() -> None:
    ids = {new_swarm_id() for _ in range(500)}
    assert len(ids) == 500
    for object_id in ids:
        assert len(object_id) == 25
        assert set(object_id) <= BASE36
        assert is_swarm_id(object_id)
    assert not is_swarm_id("A" * 25)
    assert not is_swarm_id("a" * 24)


# --------------------------------------------------------------------------- root CA


def test_root_ca_is_p256_swarm_ca_and_round_trips_through_pem(root: RootCA) -> None:
    cert = root.cert
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "swarm-ca"
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == "secp256r1"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime > timedelta(days=19 * 365)

    loaded = RootCA.from_pem(root.bundle_pem, root.key_pem)
    assert loaded.cert == root.cert
    assert loaded.digest == root.digest
    # A root loaded back can still sign, and what it signs verifies against the original.
    _, csr_pem = new_node_key_and_csr()
    cert_pem = loaded.sign_node_csr(csr_pem, "n" * 25, NodeRole.WORKER, CLUSTER)
    assert verify_node_certificate(cert_pem, root).node_id == "n" * 25


def test_root_without_key_cannot_sign_and_wrong_key_is_refused(root: RootCA) -> None:
    public_only = RootCA.from_pem(root.bundle_pem)
    _, csr_pem = new_node_key_and_csr()
    with pytest.raises(InvalidParameter, match="no signing key"):
        public_only.sign_node_csr(csr_pem, "n" * 25, NodeRole.WORKER, CLUSTER)
    other = RootCA.create()
    with pytest.raises(InvalidParameter, match="does not match"):
        RootCA.from_pem(root.bundle_pem, other.key_pem)
    with pytest.raises(InvalidParameter, match="invalid root CA"):
        RootCA.from_pem(b"not a pem")


def test_ca_digest_is_sha256_of_bundle_bytes_in_base36(root: RootCA) -> None:
    expected = int(hashlib.sha256(root.bundle_pem).hexdigest(), 16)
    assert len(root.digest) == 50
    assert set(root.digest) <= BASE36
    assert int(root.digest, 36) == expected


# --------------------------------------------------------------------------- join tokens


def test_join_token_exact_format(root: RootCA) -> None:
    token = str(new_join_token(root))
    prefix, version, digest, secret = token.split("-")
    assert (prefix, version) == ("SWMTKN", "1")
    assert digest == root.digest
    assert len(digest) == 50 and len(secret) == 25
    assert set(digest) <= BASE36 and set(secret) <= BASE36
    assert len(token) == len("SWMTKN-1--") + 75


def test_small_values_are_zero_padded(root: RootCA, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "engine.swarm.ca.secrets.token_bytes", lambda n: b"\x00" * (n - 1) + b"\x05"
    )
    token = new_join_token(root)
    assert token.secret == "0" * 24 + "5"
    assert parse_join_token(str(token)) == token
    # A tiny digest pads to 50 digits and still parses.
    small = JoinToken("0" * 49 + "1", token.secret)
    assert parse_join_token(str(small)).ca_digest == "0" * 49 + "1"


def test_worker_and_manager_tokens_share_the_digest_and_rotation_keeps_it(root: RootCA) -> None:
    worker, manager = new_join_token(root), new_join_token(root)
    assert worker.ca_digest == manager.ca_digest == root.digest
    assert worker.secret != manager.secret
    rotated = worker.rotated()
    assert rotated.ca_digest == worker.ca_digest
    assert rotated.secret != worker.secret
    assert not rotated.matches_secret(worker)
    assert worker.matches_secret(parse_join_token(str(worker)))


def test_parse_round_trip(root: RootCA) -> None:
    for _ in range(50):
        token = new_join_token(root)
        assert parse_join_token(str(token)) == token


@pytest.mark.parametrize(
    "text",
    [
        "",
        "SWMTKN",
        "SWMTKN-1",
        "SWMTKN-1-abc-def",
        "swmtkn-1-{d}-{s}",
        "SWMTKN-3-{d}-{s}",
        "SWMTKN-1-{d}-{s}-extra",
        "SWMTKN-1-{d}x-{s}",
        "SWMTKN-1-{d}-{s}x",
        "SWMTKN-1-{d}-{s_short}",
        "SWMTKN-1-{d_upper}-{s}",
        "SWMTKN-1-{d}-{s_bad}",
        "SWMTKN-1-{d_too_big}-{s}",
        "SWMTKN-2-{d}-{s}",
    ],
)
def test_malformed_tokens_are_invalid_join_token(root: RootCA, text: str) -> None:
    good = new_join_token(root)
    d, s = good.ca_digest, good.secret
    text = text.format(
        d=d,
        s=s,
        s_short=s[:-1],
        d_upper=d.upper(),
        s_bad=s[:-1] + "_",
        d_too_big="z" * 50,
    )
    with pytest.raises(InvalidParameter) as caught:
        parse_join_token(text)
    assert str(caught.value) == "invalid join token"


def test_fips_tokens_are_refused_clearly(root: RootCA) -> None:
    good = new_join_token(root)
    # The non-FIPS version-2 layout is the same token.
    assert parse_join_token(f"SWMTKN-2-0-{good.ca_digest}-{good.secret}") == good
    for bad in ["SWMTKN-2-0-{d}", "SWMTKN-2-2-{d}-{s}", "SWMTKN-2-0-{d}-{s}-x"]:
        with pytest.raises(InvalidParameter, match=r"^invalid join token$"):
            parse_join_token(bad.format(d=good.ca_digest, s=good.secret))
    with pytest.raises(InvalidParameter, match="FIPS"):
        parse_join_token(f"SWMTKN-2-1-{good.ca_digest}-{good.secret}")


def test_token_for_another_ca_is_refused(root: RootCA) -> None:
    token = parse_join_token(str(new_join_token(root)))
    token.check_ca(root.bundle_pem)  # the right manager: accepted
    other = RootCA.create()
    with pytest.raises(CAMismatch, match="remote CA does not match fingerprint") as caught:
        token.check_ca(other.bundle_pem)
    assert hashlib.sha256(root.bundle_pem).hexdigest() in str(caught.value)
    # Even one changed byte of the bundle (e.g. a re-serialised PEM) is a different CA.
    with pytest.raises(CAMismatch):
        token.check_ca(root.bundle_pem + b"\n")


def test_join_token_grants_the_role_of_its_secret(root: RootCA) -> None:
    worker, manager = new_join_token(root), new_join_token(root)
    assert role_for_join_token(str(worker), worker, manager) is NodeRole.WORKER
    assert role_for_join_token(str(manager), worker, manager) is NodeRole.MANAGER
    # After rotation the old secret is worthless; the other role's token still works.
    rotated = worker.rotated()
    other_ca = JoinToken(RootCA.create().digest, rotated.secret)  # right secret, wrong CA
    refused = [str(worker), str(other_ca), "SWMTKN-1-nonsense", "", str(rotated) + "0"]
    for text in refused:
        with pytest.raises(InvalidParameter) as caught:
            role_for_join_token(text, rotated, manager)
        assert str(caught.value) == "A valid join token is necessary to join this cluster"
    assert role_for_join_token(str(rotated), rotated, manager) is NodeRole.WORKER


# --------------------------------------------------------------------------- node certs


def test_signed_cert_carries_identity_and_usages(root: RootCA) -> None:
    node_id = new_swarm_id()
    _, cert_pem = issue(root, NodeRole.MANAGER, node_id)
    identity = verify_node_certificate(cert_pem, root)
    assert identity.node_id == node_id
    assert identity.role is NodeRole.MANAGER
    assert identity.cluster_id == CLUSTER

    cert = load_certificate(cert_pem)
    ou = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value
    assert ou == "swarm-manager"
    assert cert.issuer == root.cert.subject
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    key_usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert key_usage.digital_signature and not key_usage.key_cert_sign
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"swarm-manager", node_id, "swarm-ca"}

    worker_id = new_swarm_id()
    _, worker_pem = issue(root, NodeRole.WORKER, worker_id)
    worker = load_certificate(worker_pem)
    assert identity_of(worker).role is NodeRole.WORKER
    sans = worker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"swarm-worker", worker_id}


def test_cert_from_another_ca_does_not_verify(root: RootCA) -> None:
    _, cert_pem = issue(root)
    other = RootCA.create()
    with pytest.raises(Unauthorized, match="not signed by the swarm's root CA"):
        verify_node_certificate(cert_pem, other)
    # Same subject name, different key: still refused.
    _, other_pem = issue(other)
    with pytest.raises(Unauthorized):
        verify_node_certificate(other_pem, root)


def test_a_bundle_of_two_roots_trusts_both(root: RootCA, tmp_path: Path) -> None:
    """While the CA rotates, the bundle carries the new root first and the old one after."""
    new_root = RootCA.create()
    both = RootCA.from_pem(new_root.bundle_pem + root.bundle_pem, new_root.key_pem)
    assert both.cert == new_root.cert
    assert both.digest != new_root.digest  # the token pins the whole bundle
    old_key, old_cert = issue(root, NodeRole.MANAGER)
    new_key, new_cert = issue(both, NodeRole.WORKER)
    verify_node_certificate(old_cert, both)
    verify_node_certificate(new_cert, both)
    with pytest.raises(Unauthorized):
        verify_node_certificate(new_cert, root)
    # And TLS agrees: a node with an old certificate and one with a new one talk.
    server_ctx = mutual_tls_context(True, *write_node(tmp_path, "old", old_key, old_cert), both)
    client_ctx = mutual_tls_context(False, *write_node(tmp_path, "new", new_key, new_cert), both)
    seen_by_server, _ = handshake(server_ctx, client_ctx, "swarm-manager")
    assert seen_by_server.role is NodeRole.WORKER


def test_expiry_is_honoured(root: RootCA) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    _, cert_pem = issue(root, expiry=timedelta(hours=2), now=now)
    cert = load_certificate(cert_pem)
    assert cert.not_valid_after_utc == now + timedelta(hours=2)
    assert cert.not_valid_before_utc == now - timedelta(hours=1)  # swarmkit's backdate
    verify_node_certificate(cert_pem, root, now=now - timedelta(minutes=59))  # slow clock
    verify_node_certificate(cert_pem, root, now=now + timedelta(hours=1))
    with pytest.raises(Unauthorized, match="not valid at"):
        verify_node_certificate(cert_pem, root, now=now + timedelta(hours=2, seconds=1))

    _, default_pem = issue(root, now=now)
    assert load_certificate(default_pem).not_valid_after_utc == now + timedelta(days=90)

    _, csr_pem = new_node_key_and_csr()
    with pytest.raises(InvalidParameter) as caught:
        root.sign_node_csr(
            csr_pem, "n" * 25, NodeRole.WORKER, CLUSTER, expiry=timedelta(minutes=59)
        )
    assert str(caught.value) == "minimum certificate expiry time is: 1h0m0s"


def test_csr_with_bad_signature_or_garbage_is_refused(root: RootCA) -> None:
    with pytest.raises(InvalidParameter, match="invalid certificate signing request"):
        root.sign_node_csr(b"garbage", "n" * 25, NodeRole.WORKER, CLUSTER)
    _, csr_pem = new_node_key_and_csr()
    csr_der = x509.load_pem_x509_csr(csr_pem).public_bytes(serialization.Encoding.DER)
    tampered = bytearray(csr_der)
    tampered[-1] ^= 0x01  # the last byte is inside the signature
    tampered_pem = x509.load_der_x509_csr(bytes(tampered)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(InvalidParameter, match="invalid signature"):
        root.sign_node_csr(tampered_pem, "n" * 25, NodeRole.WORKER, CLUSTER)


def test_renewal_window_is_around_half_life(root: RootCA) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    _, cert_pem = issue(root, expiry=timedelta(days=90), now=now)
    cert = load_certificate(cert_pem)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    lifetime = end - start
    rng = random.Random(7)
    times = [renewal_time(cert, rng) for _ in range(200)]
    assert all(start + lifetime * 0.5 <= t <= start + lifetime * 0.8 for t in times)
    assert len(set(times)) > 100  # spread out, not one moment for every node

    assert not needs_renewal(cert, now=start + lifetime * 0.4)
    assert needs_renewal(cert, now=start + lifetime * 0.6)
    assert needs_renewal(cert, now=end + timedelta(seconds=1))
    assert not needs_renewal(cert, now=start + lifetime * 0.6, remaining=0.3)


# --------------------------------------------------------------------------- mutual TLS


def write_node(tmp: Path, name: str, key_pem: bytes, cert_pem: bytes) -> tuple[Path, Path]:
    cert_path, key_path = tmp / f"{name}.crt", tmp / f"{name}.key"
    cert_path.write_bytes(cert_pem)
    key_path.write_bytes(key_pem)
    key_path.chmod(0o600)
    return cert_path, key_path


def handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str
) -> tuple[NodeIdentity, NodeIdentity]:
    """Handshake over a socketpair; returns (what the server saw, what the client saw)."""
    server_sock, client_sock = socket.socketpair()
    server_sock.settimeout(5)
    client_sock.settimeout(5)
    seen: dict[str, object] = {}

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(server_sock, server_side=True) as tls:
                der = tls.getpeercert(binary_form=True)
                assert der is not None
                seen["client"] = identity_of_peer(der)
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as err:
            seen["error"] = err

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(client_sock, server_hostname=server_hostname) as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            server_identity = identity_of_peer(der)
            assert tls.recv(2) == b"ok"
    finally:
        client_sock.close()
        thread.join(5)
    if "error" in seen:
        raise AssertionError(f"server side failed: {seen['error']}")
    client_identity = seen["client"]
    assert isinstance(client_identity, NodeIdentity)
    return client_identity, server_identity


def test_mutual_tls_between_two_node_certificates(root: RootCA, tmp_path: Path) -> None:
    manager_id, worker_id = new_swarm_id(), new_swarm_id()
    manager_files = write_node(tmp_path, "m", *issue(root, NodeRole.MANAGER, manager_id))
    worker_files = write_node(tmp_path, "w", *issue(root, NodeRole.WORKER, worker_id))
    server_ctx = mutual_tls_context(True, *manager_files, root)
    client_ctx = mutual_tls_context(False, *worker_files, root)

    seen_by_server, seen_by_client = handshake(server_ctx, client_ctx, "swarm-manager")
    assert (seen_by_server.node_id, seen_by_server.role) == (worker_id, NodeRole.WORKER)
    assert (seen_by_client.node_id, seen_by_client.role) == (manager_id, NodeRole.MANAGER)
    # The node ID is a valid server name too.
    handshake(server_ctx, client_ctx, manager_id)


def test_ip_sans_let_a_client_dial_an_address(root: RootCA, tmp_path: Path) -> None:
    """etcd's Go clients dial https://<ip>:port and check the IP against the SANs."""
    loopback = ipaddress.ip_address("127.0.0.1")
    key_pem, csr_pem = new_node_key_and_csr()
    cert_pem = root.sign_node_csr(
        csr_pem, new_swarm_id(), NodeRole.MANAGER, CLUSTER, addresses=[loopback]
    )
    sans = load_certificate(cert_pem).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert sans.value.get_values_for_type(x509.IPAddress) == [loopback]
    client_ctx = mutual_tls_context(False, *write_node(tmp_path, "w", *issue(root)), root)
    with_ip = mutual_tls_context(True, *write_node(tmp_path, "m", key_pem, cert_pem), root)
    handshake(with_ip, client_ctx, "127.0.0.1")
    without_ip = write_node(tmp_path, "m2", *issue(root, NodeRole.MANAGER))
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(mutual_tls_context(True, *without_ip, root), client_ctx, "127.0.0.1")


def test_mutual_tls_refuses_other_ca_and_wrong_role(root: RootCA, tmp_path: Path) -> None:
    manager_files = write_node(tmp_path, "m", *issue(root, NodeRole.MANAGER))
    worker_files = write_node(tmp_path, "w", *issue(root, NodeRole.WORKER))
    other = RootCA.create()
    stranger_files = write_node(tmp_path, "x", *issue(other, NodeRole.WORKER))

    server_ctx = mutual_tls_context(True, *manager_files, root)
    # A client certificate from another CA: the server refuses the handshake.
    # The client trusts the right root; only its own certificate is a stranger's.
    stranger_ctx = mutual_tls_context(False, *stranger_files, root)
    with pytest.raises((ssl.SSLError, AssertionError)) as caught:
        handshake(server_ctx, stranger_ctx, "swarm-manager")
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value) or "UNKNOWN_CA" in str(caught.value)
    # A worker posing as a manager: the client's name check refuses it.
    worker_server = mutual_tls_context(True, *worker_files, root)
    client_ctx = mutual_tls_context(False, *manager_files, root)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(worker_server, client_ctx, "swarm-manager")
