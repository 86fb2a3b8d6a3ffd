"""Wire models for networks: the create/connect bodies in, the Network object out
(api-notes §2.6, §5.4)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from api.models.gojson import Int, M, Text, WireModel, decode
from engine.networks.model import Endpoint, Network


class IPAMConfigIn(WireModel):
    GO_NAME = "IPAMConfig"

    # None is "not given" (the engine tells an empty string from an absent one)
    Subnet: Text | None = None
    IPRange: Text | None = None
    Gateway: Text | None = None
    AuxiliaryAddresses: dict[Text, Text] | None = None


class IPAMIn(WireModel):
    GO_NAME = "IPAM"

    Driver: Text = ""
    Config: list[IPAMConfigIn] | None = None
    Options: dict[Text, Text] | None = None


class NetworkCreateIn(WireModel):
    """``network.CreateRequest``; swarm-only and deprecated keys are ignored."""

    GO_NAME = "CreateRequest"

    Name: Text = ""
    Driver: Text = ""
    Scope: Text = ""
    EnableIPv6: bool | None = None
    EnableIPv4: bool | None = None
    IPAM: IPAMIn | None = None
    Internal: bool = False
    Attachable: bool = False
    Ingress: bool = False
    ConfigOnly: bool = False
    ConfigFrom: dict[str, str] | None = None
    Options: dict[Text, Text] | None = None
    Labels: dict[Text, Text] | None = None
    CheckDuplicate: bool | None = None


class EndpointIPAMConfig(WireModel):
    GO_NAME = "EndpointIPAMConfig"

    IPv4Address: Text = ""
    IPv6Address: Text = ""
    LinkLocalIPs: list[Text] | None = None


class EndpointSettings(WireModel):
    """``network.EndpointSettings`` as a client sends it (connect, create's
    NetworkingConfig); the read-only operational fields are typed but unused."""

    GO_NAME = "EndpointSettings"

    IPAMConfig: EndpointIPAMConfig | None = None
    Links: list[Text] | None = None
    Aliases: list[Text] | None = None
    MacAddress: Text = ""
    DriverOpts: dict[Text, Text] | None = None
    GwPriority: Int = 0
    NetworkID: str = ""
    EndpointID: str = ""
    Gateway: str = ""
    IPAddress: str = ""
    IPPrefixLen: Int = 0
    IPv6Gateway: str = ""
    GlobalIPv6Address: str = ""
    GlobalIPv6PrefixLen: Int = 0
    DNSNames: list[Text] | None = None


class NetworkingConfig(WireModel):
    GO_NAME = "NetworkingConfig"

    EndpointsConfig: dict[Text, EndpointSettings | None] | None = None


class ConnectIn(WireModel):
    GO_NAME = "ConnectOptions"

    Container: Text = ""
    EndpointConfig: EndpointSettings | None = None


class DisconnectIn(WireModel):
    GO_NAME = "DisconnectOptions"

    Container: Text = ""
    Force: bool = False


def parse(model: type[M], data: Any, go_type: str) -> M:
    """Validate like Go's decoder: a wrong JSON type is a 400 "cannot unmarshal"."""
    return decode(model, data, go_type)


def network_body(net: Network, endpoints: Iterable[Endpoint] = (),
                 with_containers: bool = True) -> dict[str, Any]:
    """moby's ``network.Inspect`` (``Containers`` only filled by inspect)."""
    containers: dict[str, Any] = {}
    for ep in endpoints:
        if not ep.plugged:
            continue
        prefix = net.subnets[0].subnet.prefixlen if net.subnets else 0
        prefix6 = net.ipv6.subnet.prefixlen if net.ipv6 is not None else 0
        containers[ep.container_id] = {
            "Name": ep.container_name,
            "EndpointID": ep.endpoint_id or "",
            "MacAddress": ep.mac or "",
            "IPv4Address": f"{ep.address}/{prefix}" if ep.address else "",
            "IPv6Address": f"{ep.address6}/{prefix6}" if ep.address6 else "",
        }
    return {
        "Name": net.name,
        "Id": net.id,
        "Created": net.created,
        "Scope": "local",
        "Driver": net.driver,
        "EnableIPv6": net.enable_ipv6,
        "EnableIPv4": True,
        "IPAM": {
            "Driver": net.ipam_driver,
            "Options": net.ipam_options if net.ipam_options is not None else None,
            "Config": [s.to_wire() for s in net.subnets],
        },
        "Internal": net.internal,
        "Attachable": net.attachable,
        "Ingress": False,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": False,
        "Containers": containers if with_containers else {},
        "Options": dict(net.options),
        "Labels": dict(net.labels),
    }
