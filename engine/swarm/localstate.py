"""What a node keeps on its own disk about its swarm membership, and facts about itself.

``<data-root>/swarm/state.json`` (written last, atomically: its presence means "this node
is in a swarm") and the certificates under ``<data-root>/swarm/certificates/``. Blocking
file work; callers run it in a thread. Also the node's own description (hostname,
platform, resources) and the choice of the address it advertises.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import ipaddress
import os
import shutil
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel, Field

from engine.errors import InvalidParameter, Unauthorized
from engine.layout import Layout
from engine.store.atomic import atomic_write, ensure_dir
from engine.swarm.ca import RootCA
from engine.swarm.objects import (
    EngineDescription,
    NodeDescription,
    NodePlatform,
    NodeResources,
    PluginDescription,
    TLSInfo,
)

CA_CERT = "swarm-root-ca.crt"
NODE_CERT = "swarm-node.crt"
NODE_KEY = "swarm-node.key"

NO_SYSTEM_ADDRESS = "could not find the system's IP address"
BAD_ADVERTISE = ("advertise address must be a non-zero IP address or network interface "
                 "(with optional port number)")


class LocalState(BaseModel):
    """This node's membership: who it is and where the cluster is."""

    node_id: str
    cluster_id: str
    role: str  # manager | worker
    listen_addr: str  # host:port the cluster API listens on
    advertise_addr: str  # IP others reach this node at
    cluster_port: int  # its cluster API port as advertised (etcd: +2 client, +3 peer)
    data_path_addr: str = ""
    etcd_endpoints: list[str] = Field(default_factory=list)  # managers' etcd client URLs
    manager_addrs: list[str] = Field(default_factory=list)  # managers' ip:port
    sealed_with: str = ""  # fingerprint of the unlock key the node key is sealed with

    @property
    def manager_addr(self) -> str:
        return f"{self.advertise_addr}:{self.cluster_port}"

    @property
    def is_manager(self) -> bool:
        return self.role == "manager"


@dataclass(frozen=True)
class SwarmFiles:
    layout: Layout

    @property
    def certs(self) -> Path:
        return self.layout.swarm_certificates_dir

    @property
    def ca_cert(self) -> Path:
        return self.certs / CA_CERT

    @property
    def node_cert(self) -> Path:
        return self.certs / NODE_CERT

    @property
    def node_key(self) -> Path:
        return self.certs / NODE_KEY

    def load_state(self) -> LocalState | None:
        try:
            text = self.layout.swarm_state_file.read_bytes()
        except FileNotFoundError:
            return None
        return LocalState.model_validate_json(text)

    def save_state(self, state: LocalState) -> None:
        ensure_dir(self.layout.swarm_dir, 0o700)
        atomic_write(self.layout.swarm_state_file, state.model_dump_json(indent=1).encode())

    @property
    def live_node_key(self) -> Path:
        """The node key as TLS (ours and the etcd member's) reads it: a plain copy under
        the exec root, so that with autolock the key on the data disk stays sealed."""
        return self.layout.swarm_exec_dir / NODE_KEY

    def save_certificates(
        self,
        ca_bundle: bytes,
        node_cert: bytes,
        node_key: bytes | None = None,
        unlock_key: str = "",
    ) -> None:
        """Write what is given; the node key first so the pair never mismatches for long.
        ``unlock_key`` (autolock) seals the key kept on the data disk."""
        ensure_dir(self.layout.swarm_dir, 0o700)
        ensure_dir(self.certs, 0o700)
        if node_key is not None:
            ensure_dir(self.layout.swarm_exec_dir, 0o700)
            atomic_write(self.live_node_key, node_key)
            atomic_write(self.node_key, seal(node_key, unlock_key) if unlock_key else node_key)
        atomic_write(self.node_cert, node_cert, mode=0o644)
        atomic_write(self.ca_cert, ca_bundle, mode=0o644)

    def key_is_sealed(self) -> bool:
        return self.node_key.read_bytes().startswith(_SEALED)

    def reseal(self, unlock_key: str) -> None:
        """Store the (live) node key sealed with ``unlock_key``, or plain when it is ""."""
        plain = self.live_node_key.read_bytes()
        atomic_write(self.node_key, seal(plain, unlock_key) if unlock_key else plain)

    def unseal(self, unlock_key: str) -> None:
        """Make the live key from the one on disk (sealed or not); a wrong key is 401."""
        stored = self.node_key.read_bytes()
        plain = unseal(stored, unlock_key) if stored.startswith(_SEALED) else stored
        ensure_dir(self.layout.swarm_exec_dir, 0o700)
        atomic_write(self.live_node_key, plain)

    def drop_live_key(self) -> None:
        self.live_node_key.unlink(missing_ok=True)

    def load_root(self) -> RootCA:
        return RootCA.from_pem(self.ca_cert.read_bytes())

    def remove_all(self) -> None:
        """Forget the swarm: state first (so a crash half way leaves no swarm)."""
        self.layout.swarm_state_file.unlink(missing_ok=True)
        shutil.rmtree(self.layout.swarm_dir, ignore_errors=True)
        self.live_node_key.unlink(missing_ok=True)


# --------------------------------------------------------------------------- autolock

_SEALED = b"WHARFD-SEALED-KEY-1\n"
UNLOCK_KEY_PREFIX = "SWMKEY-1-"
INVALID_UNLOCK_KEY = "swarm could not be unlocked: invalid key provided"


def unlock_key_bytes(text: str) -> bytes:
    """The 32 bytes of ``SWMKEY-1-<unpadded base64>``; anything else is 401."""
    if not text.startswith(UNLOCK_KEY_PREFIX):
        raise Unauthorized(INVALID_UNLOCK_KEY)
    body = text[len(UNLOCK_KEY_PREFIX):]
    try:
        raw = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except ValueError:
        raise Unauthorized(INVALID_UNLOCK_KEY) from None
    if len(raw) != 32:
        raise Unauthorized(INVALID_UNLOCK_KEY)
    return raw


def unlock_key_fingerprint(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest() if text else ""


def seal(plain: bytes, unlock_key: str) -> bytes:
    """AES-256-GCM with the unlock key; a random nonce in front."""
    nonce = os.urandom(12)
    return _SEALED + nonce + AESGCM(unlock_key_bytes(unlock_key)).encrypt(nonce, plain, _SEALED)


def unseal(blob: bytes, unlock_key: str) -> bytes:
    body = blob[len(_SEALED):]
    try:
        return AESGCM(unlock_key_bytes(unlock_key)).decrypt(body[:12], body[12:], _SEALED)
    except InvalidTag:
        raise Unauthorized(INVALID_UNLOCK_KEY) from None


# --------------------------------------------------------------------------- addresses


def split_host_port(addr: str) -> tuple[str, int]:
    """``host:port`` (as objects.listen_address leaves it) into its parts."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise InvalidParameter(f"invalid address {addr!r}: missing port")
    return host.strip("[]"), int(port)


def _interface_ipv4(name: str) -> str | None:
    """The IPv4 address of a network interface (SIOCGIFADDR), None if it has none."""
    siocgifaddr = 0x8915
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            answer = fcntl.ioctl(sock.fileno(), siocgifaddr,
                                 struct.pack("256s", name.encode()[:15]))
        except OSError:
            return None
    return socket.inet_ntoa(answer[20:24])


def source_address_towards(remote_host: str) -> str | None:
    """The local address the kernel would use to reach ``remote_host`` (no packet sent:
    connecting a UDP socket only chooses the route)."""
    try:
        family = socket.AF_INET6 if ":" in remote_host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((remote_host, 9))
            address: str = sock.getsockname()[0]
            return address
    except OSError:
        return None


def _is_specific(host: str) -> bool:
    try:
        return not ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def advertise_address(
    given: str, listen_host: str, listen_port: int, towards: str | None = None
) -> tuple[str, int]:
    """The (IP, cluster port) this node advertises, as dockerd chooses them: the given
    address or interface (with an optional port), else a specific listen address, else
    the address of the route towards the manager we join (``towards``) or the default
    route's."""
    if given:
        host, port = given, listen_port
        if given.count(":") == 1 or given.startswith("["):
            host, _, port_text = given.rpartition(":")
            host = host.strip("[]")
            if not port_text.isdigit():
                raise InvalidParameter(BAD_ADVERTISE)
            port = int(port_text)
        if _is_specific(host):
            return str(ipaddress.ip_address(host)), port
        address = _interface_ipv4(host)
        if address is None:
            raise InvalidParameter(BAD_ADVERTISE)
        return address, port
    if _is_specific(listen_host):
        return listen_host, listen_port
    address = source_address_towards(towards or "8.8.8.8")
    if address is None:
        raise InvalidParameter(NO_SYSTEM_ADDRESS)
    return address, listen_port


# --------------------------------------------------------------------------- this host

# What dockerd reports of its plugins in a node's description (the CLI shows none of it;
# services' placement can match on them).
_PLUGINS = (("Log", "json-file"), ("Network", "bridge"), ("Network", "host"),
            ("Network", "null"), ("Network", "overlay"), ("Volume", "local"))


def _memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def host_description(engine_version: str, tls: TLSInfo) -> NodeDescription:
    """This host as a node document describes it (the daemon's UTS hostname)."""
    machine = os.uname().machine
    return NodeDescription(
        Hostname=socket.gethostname(),
        Platform=NodePlatform(Architecture=machine, OS="linux"),
        Resources=NodeResources(NanoCPUs=(os.cpu_count() or 1) * 1_000_000_000,
                                MemoryBytes=_memory_bytes()),
        Engine=EngineDescription(
            EngineVersion=engine_version,
            Plugins=[PluginDescription(Type=t, Name=n) for t, n in _PLUGINS],
        ),
        TLSInfo=tls,
    )
