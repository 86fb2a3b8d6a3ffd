"""Wire models for networks: the create/connect bodies in, the Network object out
(api-notes §2.6, §5.4)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from engine.errors import InvalidParameter
from engine.networks.model import Endpoint, Network

_GO_TYPES = {str: "string", int: "number", float: "number", bool: "bool", list: "array",
             dict: "object", type(None): "null"}


class IPAMConfigIn(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    # null is "not given" (Go leaves a string empty on null): docker-py sends nulls
    Subnet: str | None = None
    IPRange: str | None = None
    Gateway: str | None = None
    AuxiliaryAddresses: dict[str, str] | None = None


class IPAMIn(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    Driver: str = ""
    Config: list[IPAMConfigIn] | None = None
    Options: dict[str, str] | None = None


class NetworkCreateIn(BaseModel):
    """``network.CreateRequest``; swarm-only and deprecated keys are ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)

    Name: str = ""
    Driver: str = ""
    Scope: str = ""
    EnableIPv6: bool | None = None
    EnableIPv4: bool | None = None
    IPAM: IPAMIn | None = None
    Internal: bool = False
    Attachable: bool = False
    Ingress: bool = False
    ConfigOnly: bool = False
    Options: dict[str, str] | None = None
    Labels: dict[str, str] | None = None
    CheckDuplicate: bool | None = None


class ConnectIn(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    Container: str = ""
    EndpointConfig: dict[str, Any] | None = None


class DisconnectIn(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    Container: str = ""
    Force: bool = False


def parse(model: type[BaseModel], data: Any, go_type: str) -> Any:
    """Validate like Go's decoder: a wrong JSON type is a 400 "cannot unmarshal"."""
    if not isinstance(data, dict):
        got = _GO_TYPES.get(type(data), "value")
        raise InvalidParameter(
            f"invalid JSON: json: cannot unmarshal {got} into Go value of type {go_type}"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error.get("loc", ()) if not isinstance(p, int))
        got = _GO_TYPES.get(type(error.get("input")), "value")
        raise InvalidParameter(
            f"invalid JSON: json: cannot unmarshal {got} into Go struct field "
            f"{go_type.rsplit('.', 1)[-1]}.{field}"
        ) from None


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
