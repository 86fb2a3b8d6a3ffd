"""The swarm's root CA, node certificates and join tokens.

Pure functions over PEM bytes: nothing here does IO or knows about etcd or HTTP, so the
cluster code decides where keys live and when things rotate.

- The root CA is ECDSA P-256 with CN ``swarm-ca``, as swarmkit's. Its *bundle* is the exact
  PEM bytes that managers hand out; the join token pins the SHA-256 of those bytes, so the
  bytes are kept as given and never re-serialised.
- A node makes its own key and a CSR; the CA signs it with the node ID as CN, the role as
  OU (``swarm-manager`` / ``swarm-worker``) and the cluster ID as O. The certificate is good
  for both ends of mutual TLS, so one certificate serves the node's server and its client.
- Join tokens are ``SWMTKN-1-<digest>-<secret>`` (swarm-api-notes §3).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import random
import secrets
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from engine.errors import InvalidParameter, Unauthorized
from engine.ids import to_base36

ROOT_CN = "swarm-ca"
# The name a manager also answers to as the cluster's certificate issuer (swarmkit's CARole).
CA_SERVER_NAME = "swarm-ca"
ROOT_CA_EXPIRY = timedelta(days=20 * 365)
# Certificates start an hour in the past (swarmkit's CertBackdate) so that a host whose
# clock runs behind still accepts them; the expiry still counts from the moment of signing.
ROOT_CA_BACKDATE = timedelta(hours=1)
NODE_CERT_BACKDATE = timedelta(hours=1)
DEFAULT_NODE_CERT_EXPIRY = timedelta(days=90)
MIN_NODE_CERT_EXPIRY = timedelta(hours=1)

JOIN_TOKEN_PREFIX = "SWMTKN"
JOIN_TOKEN_VERSION = "1"
DIGEST_LENGTH = 50  # SHA-256 in base36 needs at most 50 digits
SECRET_LENGTH = 25  # 16 random bytes in base36 need at most 25 digits
_SECRET_BYTES = 16
_BASE36 = frozenset("0123456789abcdefghijklmnopqrstuvwxyz")

# swarmkit renews a node certificate at a random moment between half and 80% of its
# lifetime, so that nodes joined together do not all renew at once.
RENEW_WINDOW = (0.5, 0.8)

INVALID_JOIN_TOKEN = "invalid join token"


class NodeRole(enum.StrEnum):
    MANAGER = "manager"
    WORKER = "worker"

    @property
    def ou(self) -> str:
        """The certificate OU that carries this role."""
        return f"swarm-{self.value}"

    @classmethod
    def from_ou(cls, ou: str) -> NodeRole:
        for role in cls:
            if role.ou == ou:
                return role
        raise Unauthorized(f"certificate has an unknown role: {ou!r}")


class CAMismatch(InvalidParameter):
    """The manager's root CA is not the one the join token pins: refuse to join it."""


# --------------------------------------------------------------------------- root CA


@dataclass(frozen=True)
class RootCA:
    """A trust root: the bundle PEM exactly as served, and (on managers) its signing key.

    ``cert`` is the bundle's first certificate, the one that signs. A bundle may hold more
    roots (while the CA rotates, old and new are both trusted); certificates issued by any
    of them verify.
    """

    bundle_pem: bytes
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey | None = None

    @property
    def trusted(self) -> list[x509.Certificate]:
        return x509.load_pem_x509_certificates(self.bundle_pem)

    @classmethod
    def create(cls, now: datetime | None = None) -> RootCA:
        now = now or datetime.now(UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ROOT_CN)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - ROOT_CA_BACKDATE)
            .not_valid_after(now + ROOT_CA_EXPIRY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(cert.public_bytes(serialization.Encoding.PEM), cert, key)

    @classmethod
    def from_pem(cls, bundle_pem: bytes, key_pem: bytes | None = None) -> RootCA:
        """Load a root (the first certificate of the bundle) and, optionally, its key."""
        try:
            certs = x509.load_pem_x509_certificates(bundle_pem)
        except ValueError as err:
            raise InvalidParameter(f"invalid root CA certificate: {err}") from err
        cert = certs[0]
        key = None
        if key_pem is not None:
            loaded = serialization.load_pem_private_key(key_pem, password=None)
            if not isinstance(loaded, ec.EllipticCurvePrivateKey):
                raise InvalidParameter("root CA key is not an ECDSA key")
            if loaded.public_key() != cert.public_key():
                raise InvalidParameter("root CA key does not match its certificate")
            key = loaded
        return cls(bundle_pem, cert, key)

    @property
    def key_pem(self) -> bytes:
        if self.key is None:
            raise InvalidParameter("this root CA has no signing key")
        return private_key_pem(self.key)

    @property
    def digest(self) -> str:
        """The CA digest as join tokens carry it (base36, 50 digits)."""
        return ca_digest(self.bundle_pem)

    def sign_node_csr(
        self,
        csr_pem: bytes,
        node_id: str,
        role: NodeRole,
        cluster_id: str,
        expiry: timedelta = DEFAULT_NODE_CERT_EXPIRY,
        now: datetime | None = None,
        addresses: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
    ) -> bytes:
        """Issue a node certificate for a CSR; only the CSR's public key is taken from it.

        ``addresses`` become IP SANs: Go TLS clients that dial an address without a server
        name (etcd's peers and clients dialling ``https://<ip>:2380``) check the IP there.
        """
        if self.key is None:
            raise InvalidParameter("this root CA has no signing key")
        if expiry < MIN_NODE_CERT_EXPIRY:
            raise InvalidParameter("minimum certificate expiry time is: 1h0m0s")
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as err:
            raise InvalidParameter(f"invalid certificate signing request: {err}") from err
        if not csr.is_signature_valid:
            raise InvalidParameter("certificate signing request has an invalid signature")
        now = now or datetime.now(UTC)
        not_after = min(now + expiry, self.cert.not_valid_after_utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id),
                        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role.ou),
                        x509.NameAttribute(NameOID.COMMON_NAME, node_id),
                    ]
                )
            )
            .issuer_name(self.cert.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - NODE_CERT_BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            # Peers check a manager by the name "swarm-manager" (or "swarm-ca" when asking
            # for a certificate) or a node by its ID, as swarmkit's clients do.
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName(name) for name in _server_names(role, node_id)]
                    + [x509.IPAddress(address) for address in addresses]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.cert_public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    def cert_public_key(self) -> ec.EllipticCurvePublicKey:
        public = self.cert.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise InvalidParameter("root CA key is not an ECDSA key")
        return public


def _server_names(role: NodeRole, node_id: str) -> list[str]:
    names = [role.ou, node_id]
    if role is NodeRole.MANAGER:
        names.append(CA_SERVER_NAME)
    return names


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def ca_digest(bundle_pem: bytes) -> str:
    """SHA-256 of the bundle's PEM bytes as a base36 number zero-padded to 50 digits."""
    value = int.from_bytes(hashlib.sha256(bundle_pem).digest(), "big")
    return to_base36(value).rjust(DIGEST_LENGTH, "0")


# --------------------------------------------------------------------------- node side


def new_node_key_and_csr() -> tuple[bytes, bytes]:
    """A fresh node key and a CSR for it, both PEM. The key never leaves the node."""
    key = ec.generate_private_key(ec.SECP256R1())
    # The subject is the CA's choice (node ID, role, cluster), so the CSR asks for none.
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    return private_key_pem(key), csr.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class NodeIdentity:
    """Who a node certificate says its holder is."""

    node_id: str
    role: NodeRole
    cluster_id: str
    not_before: datetime
    not_after: datetime


def _single_attribute(name: x509.Name, oid: x509.ObjectIdentifier, label: str) -> str:
    values = name.get_attributes_for_oid(oid)
    if len(values) != 1:
        raise Unauthorized(f"certificate must have exactly one {label}")
    value = values[0].value
    return value if isinstance(value, str) else value.decode()


def identity_of(cert: x509.Certificate) -> NodeIdentity:
    """Read node ID (CN), role (OU) and cluster ID (O) from a node certificate."""
    subject = cert.subject
    return NodeIdentity(
        node_id=_single_attribute(subject, NameOID.COMMON_NAME, "common name"),
        role=NodeRole.from_ou(
            _single_attribute(subject, NameOID.ORGANIZATIONAL_UNIT_NAME, "organizational unit")
        ),
        cluster_id=_single_attribute(subject, NameOID.ORGANIZATION_NAME, "organization"),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


def identity_of_peer(der: bytes) -> NodeIdentity:
    """The identity in a peer certificate as ``SSLSocket.getpeercert(binary_form=True)``."""
    return identity_of(x509.load_der_x509_certificate(der))


def load_certificate(cert_pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(cert_pem)
    except ValueError as err:
        raise InvalidParameter(f"invalid certificate: {err}") from err


def verify_node_certificate(
    cert_pem: bytes, root: RootCA, now: datetime | None = None
) -> NodeIdentity:
    """Check a node certificate was issued by ``root`` and is valid now; return its identity.

    Raises ``Unauthorized`` otherwise. TLS handshakes do the same check themselves; this is
    for certificates met outside a handshake (a saved certificate at start-up, a renewal).
    """
    cert = load_certificate(cert_pem)
    if not any(_issued_by(cert, trusted) for trusted in root.trusted):
        raise Unauthorized("certificate is not signed by the swarm's root CA")
    now = now or datetime.now(UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise Unauthorized(
            f"certificate is not valid at {now:%Y-%m-%dT%H:%M:%SZ} (valid from "
            f"{cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} "
            f"to {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ})"
        )
    return identity_of(cert)


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def renewal_time(cert: x509.Certificate, rng: random.Random | None = None) -> datetime:
    """When to renew: a random point in RENEW_WINDOW of the certificate's lifetime."""
    low, high = RENEW_WINDOW
    fraction = (rng or random.SystemRandom()).uniform(low, high)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_before_utc + lifetime * fraction


def needs_renewal(
    cert: x509.Certificate, now: datetime | None = None, remaining: float = 1 - RENEW_WINDOW[0]
) -> bool:
    """True once less than ``remaining`` (a fraction) of the lifetime is left, or it expired."""
    now = now or datetime.now(UTC)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after_utc - now < lifetime * remaining


def mutual_tls_context(
    server_side: bool, cert_path: Path, key_path: Path, root: RootCA
) -> ssl.SSLContext:
    """A TLS context for node-to-node traffic: our node certificate, peers must present one.

    Only the swarm root is trusted (never the system's CAs). A client still has to name the
    peer it expects as ``server_hostname``: ``swarm-manager`` or a node ID.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=root.bundle_pem.decode("ascii"))
    context.load_cert_chain(str(cert_path), str(key_path))
    return context


# --------------------------------------------------------------------------- join tokens


@dataclass(frozen=True)
class JoinToken:
    ca_digest: str
    secret: str

    def __str__(self) -> str:
        return f"{JOIN_TOKEN_PREFIX}-{JOIN_TOKEN_VERSION}-{self.ca_digest}-{self.secret}"

    def rotated(self) -> JoinToken:
        """The same CA with a fresh secret (``join-token --rotate``)."""
        return JoinToken(self.ca_digest, new_token_secret())

    def matches_secret(self, other: JoinToken) -> bool:
        """Secrets compared in constant time, so timing tells a guesser nothing."""
        return hmac.compare_digest(self.secret.encode(), other.secret.encode())

    def check_ca(self, bundle_pem: bytes) -> None:
        """Refuse a manager whose root CA bundle is not the one this token pins."""
        if not hmac.compare_digest(ca_digest(bundle_pem), self.ca_digest):
            raise CAMismatch(
                "remote CA does not match fingerprint. Expected: " + self.ca_digest_hex
            )

    @property
    def ca_digest_hex(self) -> str:
        return f"{int(self.ca_digest, 36):064x}"


def new_token_secret() -> str:
    value = int.from_bytes(secrets.token_bytes(_SECRET_BYTES), "big")
    return to_base36(value).rjust(SECRET_LENGTH, "0")


def new_join_token(root: RootCA) -> JoinToken:
    """A token for ``root``; the worker and the manager token differ only in the secret."""
    return JoinToken(root.digest, new_token_secret())


INVALID_JOIN_SECRET = "A valid join token is necessary to join this cluster"


def role_for_join_token(presented: str, worker: JoinToken, manager: JoinToken) -> NodeRole:
    """The role a join request's token grants, or ``InvalidParameter`` with dockerd's text.

    Both secrets are always compared (in constant time), so the answer's timing does not
    tell which token, if any, came close. A token for another CA grants nothing.
    """
    try:
        token = parse_join_token(presented)
    except InvalidParameter:
        raise InvalidParameter(INVALID_JOIN_SECRET) from None
    same_ca = hmac.compare_digest(token.ca_digest, worker.ca_digest)
    is_worker = token.matches_secret(worker)
    is_manager = token.matches_secret(manager)
    if same_ca and is_manager:
        return NodeRole.MANAGER
    if same_ca and is_worker:
        return NodeRole.WORKER
    raise InvalidParameter(INVALID_JOIN_SECRET)


def parse_join_token(text: str) -> JoinToken:
    """Parse ``SWMTKN-1-<digest>-<secret>``; anything else is ``invalid join token``.

    As swarmkit, ``SWMTKN-2-0-<digest>-<secret>`` is the same token in the version-2 layout.
    The FIPS variant ``SWMTKN-2-1-…`` is refused with its own message: wharfd's clusters are
    never FIPS clusters, and a FIPS node would refuse to join one anyway.
    """
    parts = text.split("-")
    if len(parts) < 4 or parts[0] != JOIN_TOKEN_PREFIX:
        raise InvalidParameter(INVALID_JOIN_TOKEN)
    if parts[1] == JOIN_TOKEN_VERSION and len(parts) == 4:
        digest, secret = parts[2], parts[3]
    elif parts[1] == "2" and len(parts) == 5 and parts[2] == "0":
        digest, secret = parts[3], parts[4]
    elif parts[1] == "2" and len(parts) == 5 and parts[2] == "1":
        raise InvalidParameter("FIPS swarm join tokens are not supported")
    else:
        raise InvalidParameter(INVALID_JOIN_TOKEN)
    if len(digest) != DIGEST_LENGTH or len(secret) != SECRET_LENGTH:
        raise InvalidParameter(INVALID_JOIN_TOKEN)
    if not set(digest) <= _BASE36 or not set(secret) <= _BASE36:
        raise InvalidParameter(INVALID_JOIN_TOKEN)
    if int(digest, 36) >= 1 << 256:
        raise InvalidParameter(INVALID_JOIN_TOKEN)
    return JoinToken(digest, secret)
