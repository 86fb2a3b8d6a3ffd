"""What a configuration reload (SIGHUP) changes, decided before anything is applied.

dockerd's rules, kept here:

* only some keys are reloadable (``RELOADABLE``); a changed key outside that set is not
  applied and is reported (it needs a restart), instead of half-applying it;
* a reloadable key absent from the file keeps its running value, except the transfer
  limits, which go back to their defaults, and ``features``, which is the file's
  (dockerd's ``IsValueSet`` checks in daemon/reload.go);
* the ``daemon reload`` event carries every reloadable setting's new value, in dockerd's
  spelling (JSON lists for lists, Go's ``map[k:v]`` for ``features``).

``log-level`` is reloadable here too (dockerd reloads only ``debug``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Set
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from engine.config import EngineConfig
from engine.errors import InvalidParameter

RELOADABLE: frozenset[str] = frozenset({
    "debug",
    "log-level",
    "labels",
    "max-concurrent-downloads",
    "max-concurrent-uploads",
    "max-download-attempts",
    "insecure-registries",
    "registry-mirrors",
    "live-restore",
    "default-runtime",
    "runtimes",
    "default-shm-size",
    "shutdown-timeout",
    "features",
})

# Absent from the file: back to the default (not kept), as dockerd does.
RESET_WHEN_ABSENT: frozenset[str] = frozenset({
    "max-concurrent-downloads",
    "max-concurrent-uploads",
    "max-download-attempts",
    "features",
})

# Settings only ever given on the command line or derived; never "changed" by a file.
_NOT_FROM_FILE: frozenset[str] = frozenset({"pidfile", "hosts"})


@dataclass(frozen=True)
class ReloadPlan:
    config: EngineConfig  # the running configuration with the reloadable changes applied
    changed: tuple[str, ...]  # reloadable keys whose value changes
    needs_restart: tuple[str, ...]  # other keys the file changes: reported, not applied


def _by_key(config: EngineConfig) -> dict[str, Any]:
    return config.model_dump(by_alias=True)


def plan_reload(
    running: EngineConfig, loaded: EngineConfig, file_keys: Set[str]
) -> ReloadPlan:
    """``loaded`` is the file merged with the start-up flags, validated; ``file_keys`` the
    keys the file itself sets."""
    current, new = _by_key(running), _by_key(loaded)
    applied = dict(current)
    for key in RELOADABLE:
        if key in file_keys or key in RESET_WHEN_ABSENT:
            applied[key] = new[key]
    changed = tuple(sorted(k for k in RELOADABLE if applied[k] != current[k]))
    needs_restart = tuple(
        sorted(
            key
            for key in new
            if key not in RELOADABLE and key not in _NOT_FROM_FILE and new[key] != current[key]
        )
    )
    # Validated again as a whole: a kept default-runtime must exist among new runtimes.
    try:
        config = EngineConfig.model_validate(applied)
    except ValidationError as exc:
        reasons = "; ".join(str(e.get("msg", "")).removeprefix("Value error, ")
                            for e in exc.errors())
        raise InvalidParameter(f"the reloaded configuration is invalid: {reasons}") from None
    return ReloadPlan(config=config, changed=changed, needs_restart=needs_restart)


def _go_bool(value: bool) -> str:
    return "true" if value else "false"


def _json_list(values: list[str]) -> str:
    return json.dumps(list(values), separators=(",", ":"))


def _go_map(values: Mapping[str, bool]) -> str:
    return "map[" + " ".join(f"{k}:{_go_bool(values[k])}" for k in sorted(values)) + "]"


def reload_attributes(config: EngineConfig, name: str) -> dict[str, str]:
    """The ``daemon reload`` event's attributes: every reloadable setting, as dockerd
    formats them, plus the daemon's ``name`` (the hostname)."""
    runtimes = " ".join(
        f"{n}:{rt.path}" for n, rt in sorted(config.effective_runtimes().items())
    )
    attributes = {
        "debug": _go_bool(config.debug),
        "log-level": config.log_level,
        "labels": _json_list(config.labels),
        "max-concurrent-downloads": str(config.max_concurrent_downloads),
        "max-concurrent-uploads": str(config.max_concurrent_uploads),
        "max-download-attempts": str(config.max_download_attempts),
        "insecure-registries": _json_list(config.insecure_registries),
        "registry-mirrors": _json_list(config.registry_mirrors),
        "live-restore": _go_bool(config.live_restore),
        "runtimes": runtimes,
        "default-runtime": config.default_runtime,
        "default-shm-size": str(config.default_shm_size),
        "shutdown-timeout": str(config.shutdown_timeout),
        "features": _go_map(config.features),
    }
    if name:
        attributes["name"] = name
    return attributes
