"""Turning a create request into a ContainerConfig: image defaults, daemon defaults, checks.

Input is Docker's create body (already type-checked by the API's wire models) as plain
dicts; output keeps Docker's shapes because inspect returns them unchanged.
"""

from __future__ import annotations

import copy
from typing import Any

from engine.errors import InvalidParameter

_RESTART_POLICIES = {"", "no", "always", "unless-stopped", "on-failure"}


def merge_image_config(config: dict[str, Any], image_config: dict[str, Any]) -> dict[str, Any]:
    """Docker's merge: the container's values win; Env merges by key; an Entrypoint given on
    create drops the image's Cmd; Labels merge."""
    merged = copy.deepcopy(config)
    image = image_config or {}
    merged["Env"] = _merge_env(image.get("Env") or [], config.get("Env") or [])
    user_entrypoint = config.get("Entrypoint")
    if not user_entrypoint and user_entrypoint != [""]:
        merged["Entrypoint"] = image.get("Entrypoint")
        if not config.get("Cmd"):
            merged["Cmd"] = image.get("Cmd")
    elif user_entrypoint == [""]:
        merged["Entrypoint"] = None
    for key in ("WorkingDir", "User", "StopSignal"):
        if not merged.get(key) and image.get(key):
            merged[key] = image[key]
    labels = dict(image.get("Labels") or {})
    labels.update(config.get("Labels") or {})
    merged["Labels"] = labels
    for key in ("ExposedPorts", "Volumes"):
        if image.get(key):
            combined = dict(image[key])
            combined.update(config.get(key) or {})
            merged[key] = combined
    if merged.get("Healthcheck") is None and image.get("Healthcheck"):
        merged["Healthcheck"] = image["Healthcheck"]
    if merged.get("OnBuild") is None:
        merged["OnBuild"] = None
    return merged


def _merge_env(image_env: list[str], env: list[str]) -> list[str]:
    result: dict[str, str] = {}
    for entry in [*image_env, *env]:
        key = entry.split("=", 1)[0]
        result[key] = entry
    return list(result.values())


def command_line(config: dict[str, Any]) -> list[str]:
    entrypoint = list(config.get("Entrypoint") or [])
    cmd = list(config.get("Cmd") or [])
    argv = entrypoint + cmd
    if not argv:
        raise InvalidParameter("No command specified")
    return argv


def validate_restart_policy(host_config: dict[str, Any]) -> None:
    policy = host_config.get("RestartPolicy") or {}
    name = policy.get("Name") or ""
    count = policy.get("MaximumRetryCount") or 0
    if name not in _RESTART_POLICIES:
        raise InvalidParameter(f"invalid restart policy '{name}'")
    if count < 0:
        raise InvalidParameter("maximum retry count cannot be negative")
    if count and name != "on-failure":
        raise InvalidParameter(
            f"maximum retry count cannot be used with restart policy '{name}'"
        )
    if host_config.get("AutoRemove") and name not in ("", "no"):
        raise InvalidParameter("can't create 'AutoRemove' container with restart policy")


def fill_host_config(host_config: dict[str, Any], default_shm_size: int = 0) -> dict[str, Any]:
    """Daemon defaults for what clients leave out (docker-py sends almost nothing); keys
    left unset hold dockerd's zero values (null for lists and maps)."""
    filled = copy.deepcopy(host_config)
    log_config = filled.get("LogConfig") or {}
    if not log_config.get("Type"):
        # Stored by conmon as k8s-file; reported as json-file, the name clients key on.
        log_config = {"Type": "json-file", "Config": log_config.get("Config") or {}}
    filled["LogConfig"] = {"Type": log_config["Type"], "Config": log_config.get("Config") or {}}
    if not filled.get("NetworkMode"):
        filled["NetworkMode"] = "default"
    policy = filled.get("RestartPolicy") or {}
    filled["RestartPolicy"] = {
        "Name": policy.get("Name") or "no",
        "MaximumRetryCount": policy.get("MaximumRetryCount") or 0,
    }
    filled.setdefault("Binds", None)
    filled.setdefault("PortBindings", None)
    filled.setdefault("AutoRemove", False)
    filled.setdefault("Privileged", False)
    filled.setdefault("ConsoleSize", [0, 0])
    filled.setdefault("CapAdd", None)
    filled.setdefault("CapDrop", None)
    filled.setdefault("SecurityOpt", None)
    filled.setdefault("ReadonlyRootfs", False)
    # dockerd stores its default /dev/shm size (inspect shows it), as given a size
    filled["ShmSize"] = filled.get("ShmSize") or default_shm_size
    filled.setdefault("Runtime", "")
    filled.setdefault("CgroupnsMode", "host")
    filled.setdefault("IpcMode", "private")
    filled.setdefault("PidMode", "")
    filled.setdefault("UTSMode", "")
    filled.setdefault("Isolation", "")
    filled.setdefault("ExtraHosts", None)
    filled.setdefault("Dns", None)
    filled.setdefault("DnsOptions", None)
    filled.setdefault("DnsSearch", None)
    filled.setdefault("Mounts", None)
    filled.setdefault("MaskedPaths", None)
    filled.setdefault("ReadonlyPaths", None)
    for key in ("Memory", "MemorySwap", "NanoCpus", "CpuShares", "CpuPeriod", "CpuQuota",
                "BlkioWeight", "OomScoreAdj"):
        filled.setdefault(key, 0)
    filled.setdefault("PidsLimit", None)
    filled.setdefault("CpusetCpus", "")
    filled.setdefault("CpusetMems", "")
    filled.setdefault("Devices", None)
    filled.setdefault("DeviceCgroupRules", None)
    filled.setdefault("Ulimits", None)
    filled.setdefault("Sysctls", None)
    filled.setdefault("CgroupParent", "")
    filled.setdefault("Init", None)
    return filled


def fill_config(config: dict[str, Any], image_ref: str, hostname: str) -> dict[str, Any]:
    filled = dict(config)
    filled["Image"] = image_ref
    filled["Hostname"] = config.get("Hostname") or hostname
    for key in ("Domainname", "User", "WorkingDir"):
        filled[key] = config.get(key) or ""
    for key in ("AttachStdin", "AttachStdout", "AttachStderr", "Tty", "OpenStdin", "StdinOnce"):
        filled[key] = bool(config.get(key))
    filled["Env"] = list(config.get("Env") or [])
    filled.setdefault("Volumes", None)
    filled.setdefault("OnBuild", None)
    filled["Labels"] = dict(config.get("Labels") or {})
    return filled
