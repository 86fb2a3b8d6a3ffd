"""What a ``POST /build`` asks for, as engine values (the API parses the query)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from engine.images.auth import AuthConfig

# Build args every Dockerfile may use without declaring them; like dockerd they are
# left out of the history unless the Dockerfile declares them with ARG.
PROXY_ARGS = frozenset({
    "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy",
    "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy",
})


@dataclass(frozen=True)
class RunLimits:
    """Settings of the containers RUN steps run in (``networkmode``, ``shmsize``, ...)."""

    network_mode: str = ""
    shm_size: int = 0
    memory: int = 0
    memory_swap: int = 0
    cpu_shares: int = 0
    cpuset_cpus: str = ""
    cpu_period: int = 0
    cpu_quota: int = 0
    cgroup_parent: str = ""
    extra_hosts: tuple[str, ...] = ()
    ulimits: tuple[Mapping[str, object], ...] = ()

    def host_config(self) -> dict[str, object]:
        out: dict[str, object] = {"LogConfig": {"Type": "none", "Config": {}}}
        if self.network_mode:
            out["NetworkMode"] = self.network_mode
        for key, value in (
            ("ShmSize", self.shm_size), ("Memory", self.memory),
            ("MemorySwap", self.memory_swap), ("CpuShares", self.cpu_shares),
            ("CpusetCpus", self.cpuset_cpus), ("CpuPeriod", self.cpu_period),
            ("CpuQuota", self.cpu_quota), ("CgroupParent", self.cgroup_parent),
        ):
            if value:
                out[key] = value
        if self.extra_hosts:
            out["ExtraHosts"] = list(self.extra_hosts)
        if self.ulimits:
            out["Ulimits"] = [dict(u) for u in self.ulimits]
        return out


@dataclass(frozen=True)
class BuildOptions:
    dockerfile: str = "Dockerfile"
    remote: str = ""  # a URL the context comes from (the body is then not read)
    tags: tuple[str, ...] = ()
    build_args: Mapping[str, str | None] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    target: str = ""
    no_cache: bool = False
    pull: bool = False
    remove: bool = True
    force_remove: bool = False
    cache_from: tuple[str, ...] = ()
    platform: str = ""
    quiet: bool = False
    limits: RunLimits = field(default_factory=RunLimits)
    # X-Registry-Config: registry host → credentials, for FROM pulls
    registry_auth: Mapping[str, AuthConfig] = field(default_factory=dict)
    # BuildKit named contexts (``--build-context``, compose ``additional_contexts``):
    # name → an image reference (FROM/COPY --from use that image) or a directory
    named_images: Mapping[str, str] = field(default_factory=dict)
    named_dirs: Mapping[str, Path] = field(default_factory=dict)
