"""Published ports: checking ``ExposedPorts``/``PortBindings`` and holding host ports.

A published host port is held by a socket bound in the daemon's namespace for as long
as the container runs (dockerd does the same when its userland proxy is off): another
program cannot take it, and a second binding fails the way dockerd's does. Packets
never reach these sockets; the nftables DNAT rules steer them to the container. The
exception is an every-address port's ``[::]`` binding for a container without IPv6
(published as dockerd's default userland proxy publishes it): nftables cannot NAT
IPv6 to IPv4, so that socket serves, forwarding to the container (engine/networks/proxy.py).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.errors import InvalidParameter, SystemError_
from engine.networks import proxy

PROTOCOLS = ("tcp", "udp", "sctp")
EPHEMERAL_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"


def _bad(spec: str) -> InvalidParameter:
    return InvalidParameter(f'invalid port specification: "{spec}"')


def _port_number(text: str) -> int:
    if not text.isdigit():
        raise _bad(text)
    value = int(text)
    if not 0 < value <= 65535:
        raise _bad(text)
    return value


def parse_port_range(text: str) -> tuple[int, int]:
    start, sep, end = text.partition("-")
    low = _port_number(start)
    high = _port_number(end) if sep else low
    if high < low:
        raise _bad(text)
    return low, high


def parse_port_key(key: str) -> tuple[int, int, str]:
    """``"80/tcp"``, ``"80"``, ``"8000-8010/udp"`` → (first, last, proto)."""
    port, _, proto = key.partition("/")
    proto = proto.lower() or "tcp"
    if proto not in PROTOCOLS:
        raise _bad(key)
    low, high = parse_port_range(port)
    return low, high, proto


def validate(exposed: Mapping[str, Any] | None, bindings: Mapping[str, Any] | None) -> None:
    """reliability.md B10: every key, host port and host IP parses, else 400 at create."""
    for key in exposed or {}:
        parse_port_key(key)
    for key, entries in (bindings or {}).items():
        parse_port_key(key)
        for entry in entries or []:
            if not isinstance(entry, Mapping):
                raise _bad(key)
            host_ip = str(entry.get("HostIp") or "")
            if host_ip:
                try:
                    ipaddress.ip_address(host_ip)
                except ValueError:
                    raise _bad(host_ip) from None
            host_port = str(entry.get("HostPort") or "")
            if host_port:
                parse_port_range(host_port)


@dataclass(frozen=True)
class Binding:
    """One published port as it is held: what inspect's ``Ports`` shows."""

    container_port: int
    proto: str
    host_ip: str          # "0.0.0.0" for every address
    host_port: int

    def to_json(self) -> dict[str, Any]:
        return {"c": self.container_port, "p": self.proto, "ip": self.host_ip,
                "hp": self.host_port}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Binding:
        return cls(int(data["c"]), str(data["p"]), str(data["ip"]), int(data["hp"]))


@dataclass(frozen=True)
class Request:
    container_port: int
    proto: str
    host_ip: str
    host_ports: tuple[int, int] | None   # None: any ephemeral port


def requests(
    exposed: Mapping[str, Any] | None, bindings: Mapping[str, Any] | None, publish_all: bool
) -> list[Request]:
    """What to publish: explicit bindings, plus every exposed port under ``-P``."""
    out: list[Request] = []
    bound: set[tuple[int, str]] = set()
    for key, entries in (bindings or {}).items():
        low, _, proto = parse_port_key(key)
        bound.add((low, proto))
        for entry in entries or [{}]:
            host_port = str(entry.get("HostPort") or "")
            out.append(Request(low, proto, str(entry.get("HostIp") or "") or "0.0.0.0",
                               parse_port_range(host_port) if host_port else None))
    if publish_all:
        for key in exposed or {}:
            low, _, proto = parse_port_key(key)
            if (low, proto) not in bound:
                out.append(Request(low, proto, "0.0.0.0", None))
    return [r for r in out if r.proto in ("tcp", "udp")]


def _sock_type(proto: str) -> int:
    return socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM


def is_ipv6(host_ip: str) -> bool:
    return ":" in host_ip


def wildcard(host_ip: str) -> str:
    """The every-address binding of ``host_ip``'s family."""
    return "::" if is_ipv6(host_ip) else "0.0.0.0"


def _socket(host_ip: str, proto: str) -> socket.socket:
    if not is_ipv6(host_ip):
        return socket.socket(socket.AF_INET, _sock_type(proto))
    sock = socket.socket(socket.AF_INET6, _sock_type(proto))
    # "::" must not also take the IPv4 port: that is 0.0.0.0's own binding.
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    if proto == "tcp":
        # A forwarded [::] port (proxy.py) has had connections of its own: their
        # TIME_WAIT must not keep the port from the next container (Go's listeners,
        # docker-proxy's, set this too).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock


def ipv6_listenable() -> bool:
    """dockerd's IsV6Listenable: without IPv6 on the host (ipv6.disable=1) there is no
    implicit ``[::]`` binding."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open(EPHEMERAL_RANGE) as handle:
            low, high = handle.read().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


class PortHolder:
    """The sockets that hold published ports, per container."""

    def __init__(self) -> None:
        self._held: dict[tuple[str, str, int], tuple[str, socket.socket]] = {}
        self._forwarders: dict[tuple[str, str, int], proxy.Forwarder] = {}

    def _bind(self, owner: str, host_ip: str, proto: str, port: int) -> socket.socket:
        key = (host_ip, proto, port)
        every = wildcard(host_ip)
        if key in self._held or (((every, proto, port) in self._held) and host_ip != every):
            raise SystemError_(f"Bind for {host_ip}:{port} failed: port is already allocated")
        sock = _socket(host_ip, proto)
        try:
            sock.setblocking(False)
            sock.bind((host_ip, port))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise SystemError_(
                    f"Bind for {host_ip}:{port} failed: port is already allocated"
                ) from None
            raise SystemError_(f"failed to bind host port {host_ip}:{port}/{proto}: "
                               f"{exc.strerror}") from None
        self._held[key] = (owner, sock)
        return sock

    def hold(self, owner: str, request: Request) -> Binding:
        """Bind the requested (or a free ephemeral) port for ``owner``."""
        if request.host_ports is not None:
            low, high = request.host_ports
        else:
            low, high = _ephemeral_range()
        last_error: SystemError_ | None = None
        for port in range(low, high + 1):
            try:
                self._bind(owner, request.host_ip, request.proto, port)
            except SystemError_ as exc:
                last_error = exc
                continue
            return Binding(request.container_port, request.proto, request.host_ip, port)
        assert last_error is not None
        raise last_error

    def hold_exact(self, owner: str, binding: Binding) -> None:
        """Take again a port held before a daemon restart (best effort)."""
        try:
            self._bind(owner, binding.host_ip, binding.proto, binding.host_port)
        except SystemError_:
            pass

    async def forward(self, owner: str, binding: Binding, target_ip: str) -> None:
        """Serve a held binding by forwarding to ``target_ip`` (see proxy.py)."""
        key = (binding.host_ip, binding.proto, binding.host_port)
        held = self._held.get(key)
        if held is None or held[0] != owner or key in self._forwarders:
            return
        self._forwarders[key] = await proxy.forward(
            held[1], binding.proto, (target_ip, binding.container_port))

    def release(self, owner: str) -> None:
        for key, (who, sock) in list(self._held.items()):
            if who == owner:
                forwarder = self._forwarders.pop(key, None)
                if forwarder is not None:
                    forwarder.close()
                sock.close()
                del self._held[key]

    def close(self) -> None:
        for forwarder in self._forwarders.values():
            forwarder.close()
        self._forwarders.clear()
        for _, sock in self._held.values():
            sock.close()
        self._held.clear()
