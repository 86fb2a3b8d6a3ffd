"""IPv4 and IPv6 address management: subnets of networks, and addresses of endpoints.

Pure logic over ``ipaddress`` objects: the network manager holds one ``Pool`` per
network and persists every allocation (endpoints table) before it is used, so a
restarted daemon rebuilds the same pools and never hands an address out twice.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from engine.errors import Conflict, Forbidden, InvalidParameter

IPv4Net = ipaddress.IPv4Network
IPv4Addr = ipaddress.IPv4Address
Net = ipaddress.IPv4Network | ipaddress.IPv6Network
Addr = ipaddress.IPv4Address | ipaddress.IPv6Address

# dockerd's built-in default-address-pools: 172.17-31.0.0/16, then 192.168.0.0/20s.
DEFAULT_POOLS: tuple[tuple[str, int], ...] = (
    *((f"172.{n}.0.0/16", 16) for n in range(17, 32)), ("192.168.0.0/16", 20),
)
DEFAULT_BRIDGE_CIDR = "172.17.0.1/16"


@dataclass(frozen=True)
class SubnetConfig:
    """One entry of a network's ``IPAM.Config`` (validated).

    ``show_gateway`` is False for an IPv6 subnet whose gateway was not given: dockerd
    20.10 then leaves ``Gateway`` out of the network's IPAM config (the bridge still
    gets one). IPv4 entries always show it, as wharfd always did."""

    subnet: Net
    gateway: Addr
    ip_range: Net | None = None
    aux: Mapping[str, Addr] = field(default_factory=dict)
    show_gateway: bool = True

    @property
    def version(self) -> int:
        return self.subnet.version

    def to_wire(self) -> dict[str, object]:
        out: dict[str, object] = {"Subnet": str(self.subnet)}
        if self.show_gateway:
            out["Gateway"] = str(self.gateway)
        if self.ip_range is not None:
            out["IPRange"] = str(self.ip_range)
        if self.aux:
            out["AuxiliaryAddresses"] = {k: str(v) for k, v in self.aux.items()}
        return out


def parse_subnet(text: str) -> Net:
    """A CIDR (IPv4 or IPv6) whose host bits are zero; dockerd's messages for the
    rest (B15)."""
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise InvalidParameter(f"invalid subnet {text}: invalid CIDR address: {text}") from None
    if "/" not in text:
        raise InvalidParameter(f"invalid subnet {text}: invalid CIDR address: {text}")
    if iface.ip != iface.network.network_address:
        raise InvalidParameter(f"invalid subnet {text}: it should be {iface.network}")
    return iface.network


def _parse_address(text: str, what: str) -> Addr:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise InvalidParameter(f"invalid {what} {text}: invalid address") from None


def subnet_config(entry: Mapping[str, object]) -> SubnetConfig:
    """Validate one ``IPAM.Config`` entry from a create request (B15)."""
    subnet = parse_subnet(str(entry.get("Subnet") or ""))
    ip_range = None
    if entry.get("IPRange"):
        ip_range = parse_subnet(str(entry["IPRange"]))
        if ip_range.version != subnet.version or not ip_range.subnet_of(subnet):  # type: ignore[arg-type]
            raise InvalidParameter(
                f"invalid ip-range {ip_range}: it should be within subnet {subnet}"
            )
    if entry.get("Gateway"):
        gateway = _parse_address(str(entry["Gateway"]), "gateway")
        if gateway not in subnet:
            raise InvalidParameter(
                f"invalid gateway {gateway}: it should be within subnet {subnet}"
            )
    elif subnet.version == 6:
        # dockerd takes the IPv6 gateway from the pool: the first address of the
        # ip-range when there is one (measured: --ip-range ::100/120 gives ::100)
        gateway = first_host(subnet)
        if ip_range is not None and ip_range.network_address != subnet.network_address:
            gateway = ip_range.network_address
    else:
        gateway = first_host(subnet)
    aux: dict[str, Addr] = {}
    raw_aux = entry.get("AuxiliaryAddresses") or {}
    if not isinstance(raw_aux, Mapping):
        raise InvalidParameter("invalid auxiliary addresses")
    for name, value in raw_aux.items():
        address = _parse_address(str(value), "auxiliary address")
        if address not in subnet:
            raise InvalidParameter(
                f"invalid auxiliary address {name}: {address} is not within subnet {subnet}"
            )
        aux[str(name)] = address
    show = subnet.version == 4 or bool(entry.get("Gateway"))
    return SubnetConfig(subnet, gateway, ip_range, aux, show_gateway=show)


def first_host(subnet: Net) -> Addr:
    if subnet.prefixlen >= subnet.max_prefixlen - 1:
        return subnet.network_address
    return subnet.network_address + 1


def check_overlap(subnet: Net, existing: Iterable[Net]) -> None:
    for other in existing:
        if other.version == subnet.version and subnet.overlaps(other):
            raise Forbidden("Pool overlaps with other one on this address space")


def candidate_subnets(pools: Sequence[tuple[str, int]]) -> Iterable[IPv4Net]:
    """Every subnet the pools offer, in order (``default-address-pools``)."""
    for base, size in pools:
        network = ipaddress.ip_network(base, strict=False)
        if not isinstance(network, IPv4Net) or size < network.prefixlen:
            continue
        yield from network.subnets(new_prefix=size)


def pick_subnet(pools: Sequence[tuple[str, int]], used: Sequence[IPv4Net]) -> IPv4Net:
    for candidate in candidate_subnets(pools):
        if not any(candidate.overlaps(other) for other in used):
            return candidate
    raise Forbidden("could not find an available, non-overlapping IPv4 address pool among "
                    "the defaults to assign to the network")


class Pool:
    """The addresses of one subnet of a network: which are taken, and the next to hand
    out.

    Like dockerd, allocation continues after the last address handed out (wrapping),
    so a just-released address is not reused at once. An IPv6 subnet reserves its
    first address (the subnet-router anycast) but has no broadcast address: a /125
    holds ::2 to ::7 after the gateway ::1, as in dockerd.
    """

    def __init__(self, config: SubnetConfig) -> None:
        self.config = config
        self._taken: set[Addr] = set()
        self._cursor = int(config.gateway)

    @property
    def family(self) -> str:
        return f"IPv{self.config.version}"

    @property
    def reserved(self) -> set[Addr]:
        subnet = self.config.subnet
        out = {self.config.gateway, *self.config.aux.values()}
        if subnet.prefixlen < subnet.max_prefixlen - 1:
            out.add(subnet.network_address)
            if subnet.version == 4:
                out.add(subnet.broadcast_address)
        return out

    def _range(self) -> Net:
        return self.config.ip_range or self.config.subnet

    def mark(self, address: Addr) -> None:
        """Take an address known to be in use (restored from the store)."""
        self._taken.add(address)

    def allocate(self, wanted: Addr | None, label: str) -> Addr:
        """A free address (``wanted`` when given). ``label`` names the network in errors."""
        if wanted is not None:
            if wanted not in self.config.subnet:
                raise InvalidParameter(
                    f"Invalid address {wanted}: It does not belong to any of this "
                    "network's subnets"
                )
            if wanted in self._taken or wanted in self.reserved:
                raise Conflict(f"Address already in use: {wanted}")
            self._taken.add(wanted)
            return wanted
        span = self._range()
        first, last = int(span.network_address), int(span.broadcast_address)
        size = last - first + 1
        start = self._cursor + 1 if first <= self._cursor < last else first
        blocked = self.reserved | self._taken
        make = ipaddress.IPv4Address if self.config.version == 4 else ipaddress.IPv6Address
        for step in range(size):
            candidate: Addr = make(first + (start - first + step) % size)
            if candidate not in blocked:
                self._taken.add(candidate)
                self._cursor = int(candidate)
                return candidate
        raise Conflict(
            f"no available {self.family} addresses on this network's address pools: {label}"
        )

    def release(self, address: Addr) -> None:
        self._taken.discard(address)

    def in_use(self) -> frozenset[Addr]:
        return frozenset(self._taken)


def mac_for(address: IPv4Addr) -> str:
    """A locally administered MAC derived from the address (02:42 + the 4 bytes)."""
    return "02:42:" + ":".join(f"{byte:02x}" for byte in address.packed)
