"""Throwaway certificates for the TLS tests (``cryptography``; nothing leaves the temp dir).

``TLSFiles.create(dir, server_ips)`` writes the layout dockerd's documentation uses:

    ca.pem, server-cert.pem, server-key.pem     the daemon's side
    client/{ca.pem,cert.pem,key.pem}            DOCKER_CERT_PATH of a trusted client
    rogue/{ca.pem,cert.pem,key.pem}             a client whose cert another CA signed
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_Key = ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: _Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _builder(subject: str, issuer: x509.Name, key: _Key) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


@dataclass
class CA:
    key: _Key
    cert: x509.Certificate

    @classmethod
    def create(cls, name: str) -> CA:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            _builder(name, _name(name), key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def issue(
        self, name: str, usage: x509.ObjectIdentifier, ips: tuple[str, ...] = ()
    ) -> tuple[bytes, bytes]:
        """(cert PEM, key PEM) for a leaf with one extended key usage."""
        key = ec.generate_private_key(ec.SECP256R1())
        builder = _builder(name, self.cert.subject, key).add_extension(
            x509.ExtendedKeyUsage([usage]), critical=False
        )
        if ips:
            names: list[x509.GeneralName] = [x509.DNSName("localhost")]
            names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return _cert_pem(cert), _key_pem(key)


@dataclass
class TLSFiles:
    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.root / "server-cert.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "server-key.pem"

    @property
    def client_dir(self) -> Path:
        """DOCKER_CERT_PATH of a client the daemon's CA signed."""
        return self.root / "client"

    @property
    def rogue_dir(self) -> Path:
        """DOCKER_CERT_PATH of a client signed by another CA (it trusts the daemon's CA)."""
        return self.root / "rogue"

    def daemon_flags(self) -> list[str]:
        return [
            f"--tlscacert={self.ca}",
            f"--tlscert={self.server_cert}",
            f"--tlskey={self.server_key}",
        ]

    @classmethod
    def create(cls, root: Path, server_ips: tuple[str, ...] = ("127.0.0.1",)) -> TLSFiles:
        files = cls(root)
        ca, rogue_ca = CA.create("wharfd test CA"), CA.create("someone else's CA")
        server = ca.issue("wharfd test server", ExtendedKeyUsageOID.SERVER_AUTH, server_ips)
        client = ca.issue("trusted client", ExtendedKeyUsageOID.CLIENT_AUTH)
        rogue = rogue_ca.issue("rogue client", ExtendedKeyUsageOID.CLIENT_AUTH)
        ca_pem = _cert_pem(ca.cert)
        root.mkdir(parents=True, exist_ok=True)
        files.ca.write_bytes(ca_pem)
        files.server_cert.write_bytes(server[0])
        files.server_key.write_bytes(server[1])
        for where, (cert, key) in ((files.client_dir, client), (files.rogue_dir, rogue)):
            where.mkdir(exist_ok=True)
            (where / "ca.pem").write_bytes(ca_pem)
            (where / "cert.pem").write_bytes(cert)
            (where / "key.pem").write_bytes(key)
            (where / "key.pem").chmod(0o600)
        files.server_key.chmod(0o600)
        return files
