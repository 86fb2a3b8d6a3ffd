"""Wire models for containers: the create body in, inspect and list objects out.

The create body is type-checked like the Go server decodes it (a wrong JSON type or an
integer out of its Go type's range is a 400 "invalid JSON: json: cannot unmarshal …");
unknown fields are ignored, as dockerd ignores them (api.models.gojson).
"""

from __future__ import annotations

import copy
import shlex
from datetime import UTC, datetime
from typing import Any

from pydantic import field_validator

from api.models.gojson import (
    EmptyStruct,
    Int,
    Text,
    WireModel,
    canonical_keys,
    decode,
    given,
    plain,
)
from api.models.hostconfig import HOST_CONFIG_ZERO, HealthConfig, StrSlice, UpdateConfig, str_slice
from api.models.hostconfig import HostConfig as HostConfigWire
from api.models.networks import NetworkingConfig as NetworkingConfigWire
from engine.containers.model import ZERO_TIME, ContainerView
from engine.containers.state import Status
from engine.errors import InvalidParameter


class ContainerConfigIn(WireModel):
    """``container.Config``: the container's own settings (create, commit)."""

    GO_NAME = "Config"

    Hostname: Text = ""
    Domainname: Text = ""
    User: Text = ""
    AttachStdin: bool = False
    AttachStdout: bool = False
    AttachStderr: bool = False
    ExposedPorts: dict[Text, EmptyStruct] | None = None
    Tty: bool = False
    OpenStdin: bool = False
    StdinOnce: bool = False
    Env: list[Text] | None = None
    Cmd: StrSlice | None = None
    Healthcheck: HealthConfig | None = None
    ArgsEscaped: bool | None = None
    Image: Text = ""
    Volumes: dict[Text, EmptyStruct] | None = None
    WorkingDir: Text = ""
    Entrypoint: StrSlice | None = None
    NetworkDisabled: bool | None = None
    MacAddress: Text | None = None
    OnBuild: list[Text] | None = None
    Labels: dict[Text, Text] | None = None
    StopSignal: Text | None = None
    StopTimeout: Int | None = None
    Shell: StrSlice | None = None

    _slices = field_validator("Cmd", "Entrypoint", "Shell", mode="before")(str_slice)


class CreateRequest(ContainerConfigIn):
    """``container.CreateRequest``: Config's keys at the top, HostConfig and
    NetworkingConfig beside them. ``POST /commit`` decodes its body the same way."""

    GO_NAME = "CreateRequest"

    HostConfig: HostConfigWire | None = None
    NetworkingConfig: NetworkingConfigWire | None = None


def parse_create_body(data: Any) -> dict[str, Any]:
    """Validate a create body; return plain dicts in Docker's shapes (Config keys at top)."""
    if data is None:
        raise InvalidParameter("Config cannot be empty in order to create a container")
    request = decode(CreateRequest, data, "container.CreateRequest")
    raw = canonical_keys(CreateRequest, data)
    result = plain(request, raw)
    # Only what was given: the engine fills dockerd's defaults for the rest.
    result["HostConfig"] = (
        given(request.HostConfig, raw["HostConfig"]) if request.HostConfig is not None else {}
    )
    result["NetworkingConfig"] = dict(raw.get("NetworkingConfig") or {})
    return result


def parse_commit_config(data: Any) -> dict[str, Any] | None:
    """``POST /commit``'s optional body: the image config's overrides, only those given."""
    if data is None:
        return None
    request = decode(CreateRequest, data, "container.CreateRequest")
    config = given(request, data)
    config.pop("HostConfig", None)
    config.pop("NetworkingConfig", None)
    return config


def parse_update_body(data: Any) -> dict[str, Any]:
    """``POST /containers/{id}/update``: the keys given, each checked."""
    if data is None:
        return {}
    return given(decode(UpdateConfig, data, "container.UpdateConfig"), data)


def inspect_host_config(stored: dict[str, Any]) -> dict[str, Any]:
    """The stored HostConfig with every key dockerd shows (zero values for old records)."""
    return {**copy.deepcopy(HOST_CONFIG_ZERO), **stored}


# --------------------------------------------------------------------------- output
def _human_duration(seconds: float) -> str:
    """go-units HumanDuration, as in `Up 2 seconds` / `Exited (0) 3 minutes ago`."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"


def _parse_time(value: str) -> float:
    if not value or value == ZERO_TIME:
        return 0.0
    main, _, rest = value.partition(".")
    fraction = rest.rstrip("Z")
    stamp = datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    return stamp + (float("0." + fraction) if fraction.isdigit() else 0.0)


def _health_suffix(health: dict[str, Any] | None) -> str:
    if not health:
        return ""
    status = health.get("Status")
    if status == "starting":
        return " (health: starting)"
    return f" ({status})" if status in ("healthy", "unhealthy") else ""


def status_text(view: ContainerView, now: float) -> str:
    state = view.state
    if state.status == Status.RUNNING:
        up = f"Up {_human_duration(now - _parse_time(state.started_at))}"
        return up + _health_suffix(state.health)
    if state.status == Status.PAUSED:
        return f"Up {_human_duration(now - _parse_time(state.started_at))} (Paused)"
    if state.status == Status.RESTARTING:
        ago = _human_duration(now - _parse_time(state.finished_at))
        return f"Restarting ({state.exit_code}) {ago} ago"
    if state.status == Status.REMOVING:
        return "Removal In Progress"
    if state.status == Status.DEAD:
        return "Dead"
    if state.status == Status.EXITED:
        ago = _human_duration(now - _parse_time(state.finished_at))
        return f"Exited ({state.exit_code}) {ago} ago"
    return "Created"


def _list_state(view: ContainerView) -> str:
    return view.state.status.value


def inspect_state(view: ContainerView) -> dict[str, Any]:
    state = view.state
    status = state.status
    health = {"Health": state.health} if state.health is not None else {}
    return {
        "Status": status.value,
        # dockerd reports a container waiting to restart as running, and restarting.
        "Running": status in (Status.RUNNING, Status.PAUSED, Status.RESTARTING),
        "Paused": status == Status.PAUSED,
        "Restarting": status == Status.RESTARTING,
        "OOMKilled": state.oom_killed,
        "Dead": status == Status.DEAD,
        "Pid": state.pid,
        "ExitCode": state.exit_code,
        "Error": state.error,
        "StartedAt": state.started_at,
        "FinishedAt": state.finished_at,
        **health,
    }


def inspect_body(
    view: ContainerView,
    *,
    log_path: str,
    bundle: str,
    mounts: list[dict[str, Any]] | None = None,
    rootfs_upper: str | None = None,
    network: dict[str, Any] | None = None,
) -> dict[str, Any]:
    cfg = view.config
    host_config = inspect_host_config(cfg.host_config)
    return {
        "Id": cfg.id,
        "Created": cfg.created,
        "Path": cfg.path,
        "Args": list(cfg.args),
        "State": inspect_state(view),
        "Image": cfg.image_id,
        "ResolvConfPath": f"{bundle}/resolv.conf",
        "HostnamePath": f"{bundle}/hostname",
        "HostsPath": f"{bundle}/hosts",
        "LogPath": log_path,
        "Name": f"/{cfg.name}",
        "RestartCount": view.state.restart_count,
        "Driver": cfg.driver,
        "Platform": cfg.platform,
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": list(view.exec_ids) or None,
        "HostConfig": host_config,
        "GraphDriver": {
            "Name": cfg.driver,
            "Data": {"MergedDir": f"{bundle}/rootfs", "UpperDir": rootfs_upper or ""},
        },
        "Mounts": mounts or [],
        "Config": dict(cfg.config),
        "NetworkSettings": network_settings(view, network),
    }


def _port_key(key: str) -> str:
    port, _, proto = key.partition("/")
    return f"{port}/{proto or 'tcp'}"


def _exposed(view: ContainerView) -> list[str]:
    keys = [*(view.config.config.get("ExposedPorts") or {}),
            *(view.config.host_config.get("PortBindings") or {})]
    return list(dict.fromkeys(_port_key(k) for k in keys))


def inspect_ports(view: ContainerView, network: dict[str, Any] | None) -> dict[str, Any]:
    """``{"80/tcp": [{"HostIp", "HostPort"}], "53/udp": null}`` while running, else {}."""
    if not network or not network.get("Running"):
        return {}
    mode = view.config.host_config.get("NetworkMode") or "default"
    if mode == "host" or mode.startswith("container:"):
        return {}
    out: dict[str, Any] = {key: None for key in _exposed(view)}
    for b in network.get("Ports") or []:
        key = f"{b.container_port}/{b.proto}"
        entries = out.get(key) or []
        entries.append({"HostIp": b.host_ip, "HostPort": str(b.host_port)})
        out[key] = entries
    return out


def list_ports(view: ContainerView, network: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The list's ``Ports``: published ones with IP/PublicPort, exposed ones without."""
    ports = inspect_ports(view, network)
    out: list[dict[str, Any]] = []
    for key, entries in ports.items():
        port, _, proto = key.partition("/")
        if not entries:
            out.append({"PrivatePort": int(port), "Type": proto})
            continue
        for entry in entries:
            out.append({"IP": entry["HostIp"], "PrivatePort": int(port),
                        "PublicPort": int(entry["HostPort"]), "Type": proto})
    return out


_EMPTY_ENDPOINT = {
    "IPAMConfig": None, "Links": None, "Aliases": None, "MacAddress": "", "DriverOpts": None,
    "GwPriority": 0, "NetworkID": "", "EndpointID": "", "Gateway": "", "IPAddress": "",
    "IPPrefixLen": 0, "IPv6Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
    "DNSNames": None,
}


def network_settings(view: ContainerView, network: dict[str, Any] | None) -> dict[str, Any]:
    """NetworkSettings as dockerd fills it; the top-level copies are the default
    bridge's (deprecated fields, kept for older clients and scripts)."""
    networks = dict((network or {}).get("Networks") or {})
    default = networks.get("bridge") or _EMPTY_ENDPOINT
    key = (network or {}).get("SandboxKey") or ""
    return {
        "Bridge": "",
        "SandboxID": key.rsplit("/", 1)[-1] if key else "",
        "SandboxKey": key,
        "Ports": inspect_ports(view, network),
        "HairpinMode": False,
        "LinkLocalIPv6Address": "",
        "LinkLocalIPv6PrefixLen": 0,
        "SecondaryIPAddresses": None,
        "SecondaryIPv6Addresses": None,
        "EndpointID": default["EndpointID"],
        "Gateway": default["Gateway"],
        "GlobalIPv6Address": "",
        "GlobalIPv6PrefixLen": 0,
        "IPAddress": default["IPAddress"],
        "IPPrefixLen": default["IPPrefixLen"],
        "IPv6Gateway": "",
        "MacAddress": default["MacAddress"],
        "Networks": networks,
    }


def list_item(
    view: ContainerView, now: float, mounts: list[dict[str, Any]] | None = None,
    network: dict[str, Any] | None = None,
) -> dict[str, Any]:
    cfg = view.config
    command = " ".join(shlex.quote(part) if part else "''" for part in [cfg.path, *cfg.args])
    network_mode = cfg.host_config.get("NetworkMode") or "default"
    return {
        "Id": cfg.id,
        "Names": [f"/{cfg.name}"],
        "Image": cfg.image_ref,
        "ImageID": cfg.image_id,
        "Command": command,
        "Created": int(_parse_time(cfg.created)),
        "Ports": list_ports(view, network),
        "Labels": cfg.labels,
        "State": _list_state(view),
        "Status": status_text(view, now),
        "HostConfig": {"NetworkMode": network_mode},
        "NetworkSettings": {"Networks": (network or {}).get("Networks") or {}},
        "Mounts": mounts or [],
    }
