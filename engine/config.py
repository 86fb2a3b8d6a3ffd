"""EngineConfig: the daemon's settings, from daemon.json keys and command-line flags.

Field aliases are dockerd's daemon.json key names. ``api.main`` reads the file, rejects
unknown keys by name and keys also given as a flag (as dockerd does), then validates the
merged mapping here. Values from the file are checked strictly (``"debug": "yes"`` is an
error, as in dockerd, not a truthy string).

Keys that exist in dockerd and are accepted here so that a stock daemon.json loads:
the network ones (``bip``, ``default-address-pools``, ``dns*``, ``mtu``, ``iptables``,
``ip-forward``, ``ip-masq``, ``icc``), logging (``log-driver``, ``log-opts``), registry
concurrency and ``features``. Their consumers are the respective managers.
"""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_SOCKET = "unix:///run/wharfd.sock"
DEFAULT_CONFIG_FILE = Path("/etc/wharfd/daemon.json")

# Runtimes offered without configuration. runc is dockerd's default; crun is selectable.
# Each is probed at start-up and only offered when it can run a container on this host.
BUILTIN_RUNTIMES: dict[str, str] = {"runc": "runc", "crun": "crun"}
RESERVED_RUNTIME_NAMES = frozenset({"runc"})

# logrus level names, as dockerd accepts them for --log-level.
LOG_LEVELS = frozenset({"trace", "debug", "info", "warn", "warning", "error", "fatal", "panic"})

_MEM_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_MEM_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgtp]?)(?:i?b)?\s*$", re.IGNORECASE)


def normalize_mirror(value: str) -> str:
    """A ``registry-mirrors`` entry as dockerd keeps it: an http(s) URL with no path,
    query, fragment or credentials, ending in exactly one ``/``."""
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f'invalid mirror: unsupported scheme "{parts.scheme}" in "{value}"')
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f'invalid mirror: path, query, or fragment at end of the URI "{value}"')
    if parts.username is not None:
        raise ValueError("invalid mirror: username/password not allowed in URI")
    if not parts.netloc:
        raise ValueError(f'invalid mirror: "{value}" is not a valid URI')
    return value.rstrip("/") + "/"


def parse_mem_bytes(value: str | int) -> int:
    """Docker's RAMInBytes: ``64m``, ``64MB``, ``1.5g``, ``1024`` (binary multiples)."""
    if isinstance(value, bool):
        raise ValueError(f"invalid size: '{value}'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"invalid size: '{value}'")
        return value
    match = _MEM_RE.match(value)
    if match is None:
        raise ValueError(f"invalid size: '{value}'")
    number, unit = match.groups()
    return int(float(number) * _MEM_UNITS[unit.lower()])


class RuntimeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    path: str
    runtime_args: list[str] = Field(default_factory=list, alias="runtimeArgs")


class AddressPool(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    base: str
    size: int = Field(strict=True, ge=1, le=32)


class EngineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    hosts: list[str] = Field(default_factory=lambda: [DEFAULT_SOCKET], alias="hosts")
    data_root: Path = Field(default=Path("/var/lib/wharfd"), alias="data-root")
    exec_root: Path = Field(default=Path("/run/wharfd"), alias="exec-root")
    pidfile: Path | None = Field(default=None, alias="pidfile")
    debug: bool = Field(default=False, alias="debug", strict=True)
    log_level: str = Field(default="info", alias="log-level")
    group: str = Field(default="docker", alias="group")
    default_runtime: str = Field(default="runc", alias="default-runtime")
    runtimes: dict[str, RuntimeConfig] = Field(default_factory=dict, alias="runtimes")
    live_restore: bool = Field(default=True, alias="live-restore", strict=True)
    shutdown_timeout: int = Field(default=15, alias="shutdown-timeout", strict=True, ge=0)
    no_new_privileges: bool = Field(default=False, alias="no-new-privileges", strict=True)
    seccomp_profile: str | None = Field(default=None, alias="seccomp-profile")
    default_shm_size: int = Field(default=64 * 1024 * 1024, alias="default-shm-size")
    cgroup_parent: str = Field(default="/wharfd", alias="cgroup-parent")
    experimental: bool = Field(default=False, alias="experimental", strict=True)
    labels: list[str] = Field(default_factory=list, alias="labels")
    insecure_registries: list[str] = Field(default_factory=list, alias="insecure-registries")
    registry_mirrors: list[str] = Field(default_factory=list, alias="registry-mirrors")
    metrics_addr: str | None = Field(default=None, alias="metrics-addr")

    # --- further dockerd keys (consumed by the network, log and registry code) -----------
    log_driver: str = Field(default="json-file", alias="log-driver")
    log_opts: dict[str, str] = Field(default_factory=dict, alias="log-opts")
    dns: list[str] = Field(default_factory=list, alias="dns")
    dns_opts: list[str] = Field(default_factory=list, alias="dns-opts")
    dns_search: list[str] = Field(default_factory=list, alias="dns-search")
    bip: str | None = Field(default=None, alias="bip")
    default_address_pools: list[AddressPool] = Field(
        default_factory=list, alias="default-address-pools"
    )
    mtu: int = Field(default=1500, alias="mtu", strict=True, ge=68, le=65535)
    iptables: bool = Field(default=True, alias="iptables", strict=True)
    ip_forward: bool = Field(default=True, alias="ip-forward", strict=True)
    ip_masq: bool = Field(default=True, alias="ip-masq", strict=True)
    icc: bool = Field(default=True, alias="icc", strict=True)
    max_concurrent_downloads: int = Field(
        default=3, alias="max-concurrent-downloads", strict=True, ge=1
    )
    max_concurrent_uploads: int = Field(
        default=5, alias="max-concurrent-uploads", strict=True, ge=1
    )
    features: dict[str, bool] = Field(default_factory=dict, alias="features")
    max_download_attempts: int = Field(default=5, alias="max-download-attempts", strict=True, ge=1)

    # --- TLS of the tcp:// API sockets (api.tlsconfig applies dockerd's rules; None = unset)
    tls: bool | None = Field(default=None, alias="tls", strict=True)
    tlsverify: bool | None = Field(default=None, alias="tlsverify", strict=True)
    tlscacert: str | None = Field(default=None, alias="tlscacert")
    tlscert: str | None = Field(default=None, alias="tlscert")
    tlskey: str | None = Field(default=None, alias="tlskey")

    @field_validator("default_shm_size", mode="before")
    @classmethod
    def _shm_size(cls, value: Any) -> int:
        if not isinstance(value, str | int):
            raise ValueError(f"invalid size: '{value}'")
        return parse_mem_bytes(value)

    @field_validator("registry_mirrors")
    @classmethod
    def _mirrors(cls, value: list[str]) -> list[str]:
        return [normalize_mirror(m) for m in value]

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.lower() not in LOG_LEVELS:
            raise ValueError(f"unable to parse logging level: {value}")
        return value.lower()

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        # An empty list means "the default socket", as in dockerd.
        return value or [DEFAULT_SOCKET]

    @field_validator("runtimes")
    @classmethod
    def _runtime_names(cls, value: dict[str, RuntimeConfig]) -> dict[str, RuntimeConfig]:
        for name in value:
            if name in RESERVED_RUNTIME_NAMES:
                raise ValueError(f"runtime name '{name}' is reserved")
        return value

    @model_validator(mode="after")
    def _default_runtime_exists(self) -> EngineConfig:
        if self.default_runtime not in self.effective_runtimes():
            raise ValueError(f"specified default runtime '{self.default_runtime}' does not exist")
        return self

    def effective_pidfile(self) -> Path:
        return self.pidfile if self.pidfile is not None else self.exec_root / "wharfd.pid"

    def effective_runtimes(self) -> dict[str, RuntimeConfig]:
        """Built-in runtimes plus configured ones (a configured ``crun`` replaces ours)."""
        merged = {name: RuntimeConfig(path=path) for name, path in BUILTIN_RUNTIMES.items()}
        merged.update(self.runtimes)
        return merged


def config_keys() -> frozenset[str]:
    """Every daemon.json key EngineConfig accepts (dockerd's spelling)."""
    return frozenset(field.alias or name for name, field in EngineConfig.model_fields.items())
