"""What a node keeps on its own disk about its swarm membership, and facts about itself.

``<data-root>/swarm/state.json`` (written last, atomically: its presence means "this node
is in a swarm") and the certificates under ``<data-root>/swarm/certificates/``. Blocking
file work; callers run it in a thread. Also the node's own description (hostname,
platform, resources) and the choice of the address it advertises.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import shutil
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field

from engine.errors import InvalidParameter
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
CA_KEY = "swarm-root-ca.key"
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
    def ca_key(self) -> Path:
        return self.certs / CA_KEY

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

    def save_certificates(
        self,
        ca_bundle: bytes,
        node_cert: bytes,
        node_key: bytes | None = None,
        ca_key: bytes | None = None,
    ) -> None:
        """Write what is given; the node key first so the pair never mismatches for long."""
        ensure_dir(self.layout.swarm_dir, 0o700)
        ensure_dir(self.certs, 0o700)
        if node_key is not None:
            atomic_write(self.node_key, node_key)
        atomic_write(self.node_cert, node_cert, mode=0o644)
        atomic_write(self.ca_cert, ca_bundle, mode=0o644)
        if ca_key is not None:
            atomic_write(self.ca_key, ca_key)

    def drop_ca_key(self) -> None:
        self.ca_key.unlink(missing_ok=True)

    def load_root(self) -> RootCA:
        key = self.ca_key.read_bytes() if self.ca_key.exists() else None
        return RootCA.from_pem(self.ca_cert.read_bytes(), key)

    def remove_all(self) -> None:
        """Forget the swarm: state first (so a crash half way leaves no swarm)."""
        self.layout.swarm_state_file.unlink(missing_ok=True)
        shutil.rmtree(self.layout.swarm_dir, ignore_errors=True)


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
