"""Networks and endpoints as the network manager keeps them (rows ↔ objects)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from engine.networks import ipam

PREDEFINED = ("bridge", "host", "none")
DRIVERS = {"bridge": "bridge", "host": "host", "none": "null"}

OPT_BRIDGE_NAME = "com.docker.network.bridge.name"
OPT_ICC = "com.docker.network.bridge.enable_icc"
OPT_MASQ = "com.docker.network.bridge.enable_ip_masquerade"
OPT_MTU = "com.docker.network.driver.mtu"
OPT_MTU_SHORT = "com.docker.network.bridge.mtu"


def _flag(options: dict[str, str], key: str, default: bool) -> bool:
    value = options.get(key)
    if value is None:
        return default
    return value.strip().lower() in ("1", "t", "true", "yes")


@dataclass(frozen=True)
class Network:
    id: str
    name: str
    driver: str                     # bridge | host | null
    created: str                    # RFC 3339
    subnets: tuple[ipam.SubnetConfig, ...] = ()
    ipam_driver: str = "default"
    ipam_options: dict[str, str] | None = None
    options: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    internal: bool = False
    attachable: bool = False
    bridge: str = ""                # the Linux bridge ("" for host and none)
    default_mtu: int = 1500
    enable_ipv6: bool = False       # EnableIPv6: containers get an address of ``ipv6``

    @property
    def ipv4(self) -> ipam.SubnetConfig:
        """The IPv4 subnet: every bridge network has one, first in ``subnets``."""
        return self.subnets[0]

    @property
    def ipv6(self) -> ipam.SubnetConfig | None:
        """The IPv6 subnet in use: only with EnableIPv6. dockerd keeps (and shows) a v6
        subnet given without ``--ipv6`` but allocates nothing from it."""
        if not self.enable_ipv6:
            return None
        return self.configured_ipv6

    @property
    def configured_ipv6(self) -> ipam.SubnetConfig | None:
        return next((s for s in self.subnets if s.version == 6), None)

    @property
    def predefined(self) -> bool:
        return self.name in PREDEFINED

    @property
    def is_bridge(self) -> bool:
        return self.driver == "bridge"

    @property
    def user_defined(self) -> bool:
        """Only user-defined bridges get the embedded DNS resolver (as in dockerd)."""
        return self.is_bridge and self.name != "bridge"

    @property
    def icc(self) -> bool:
        return _flag(self.options, OPT_ICC, True)

    @property
    def masquerade(self) -> bool:
        return _flag(self.options, OPT_MASQ, True)

    @property
    def mtu(self) -> int:
        raw = self.options.get(OPT_MTU) or self.options.get(OPT_MTU_SHORT)
        return int(raw) if raw and raw.isdigit() else self.default_mtu

    def to_config_json(self) -> str:
        return json.dumps({
            "subnets": [s.to_wire() for s in self.subnets],
            "ipam_driver": self.ipam_driver,
            "ipam_options": self.ipam_options,
            "options": self.options,
            "labels": self.labels,
            "internal": self.internal,
            "attachable": self.attachable,
            "bridge": self.bridge,
            "enable_ipv6": self.enable_ipv6,
        })

    @classmethod
    def from_row(cls, row: Any, default_mtu: int) -> Network:
        data = json.loads(row["config"])
        return cls(
            id=row["id"], name=row["name"], driver=row["driver"], created=row["created"],
            subnets=tuple(ipam.subnet_config(s) for s in data.get("subnets") or []),
            ipam_driver=data.get("ipam_driver") or "default",
            ipam_options=data.get("ipam_options"),
            options=dict(data.get("options") or {}),
            labels=dict(data.get("labels") or {}),
            internal=bool(data.get("internal")),
            attachable=bool(data.get("attachable")),
            bridge=data.get("bridge") or "",
            default_mtu=default_mtu,
            enable_ipv6=bool(data.get("enable_ipv6")),
        )

    def evolve(self, **changes: Any) -> Network:
        return replace(self, **changes)


@dataclass(frozen=True)
class Endpoint:
    container_id: str
    network_id: str
    container_name: str
    config: dict[str, Any]          # EndpointSettings asked for (Aliases, IPAMConfig, …)
    seq: int
    endpoint_id: str | None = None  # the rest: only while the container runs
    address: str | None = None
    mac: str | None = None
    host_if: str | None = None
    ifname: str | None = None
    address6: str | None = None     # on a network with EnableIPv6, while running

    @property
    def plugged(self) -> bool:
        return self.address is not None

    @property
    def aliases(self) -> list[str]:
        return [str(a) for a in self.config.get("Aliases") or []]

    def dns_names(self) -> list[str]:
        names = [self.container_name, *self.aliases, self.container_id[:12]]
        return list(dict.fromkeys(n for n in names if n))

    def wanted_ip(self) -> str | None:
        ipam_config = self.config.get("IPAMConfig") or {}
        return str(ipam_config.get("IPv4Address") or "") or None

    def wanted_ip6(self) -> str | None:
        ipam_config = self.config.get("IPAMConfig") or {}
        return str(ipam_config.get("IPv6Address") or "") or None

    def addresses(self) -> list[str]:
        """IPv4 then IPv6, the order of dockerd's /etc/hosts lines."""
        return [a for a in (self.address, self.address6) if a]

    def wanted_mac(self) -> str | None:
        return str(self.config.get("MacAddress") or "") or None

    def evolve(self, **changes: Any) -> Endpoint:
        return replace(self, **changes)

    @classmethod
    def from_row(cls, row: Any) -> Endpoint:
        return cls(
            container_id=row["container_id"], network_id=row["network_id"],
            container_name=row["container_name"], config=json.loads(row["config"]),
            seq=int(row["seq"]), endpoint_id=row["endpoint_id"], address=row["address"],
            mac=row["mac"], host_if=row["host_if"], ifname=row["ifname"],
            address6=row["address6"],
        )
