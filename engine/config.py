"""EngineConfig: the daemon's settings, from daemon.json keys and command-line flags.

Field aliases are dockerd's daemon.json key names. Unknown keys are rejected by name
(``extra="forbid"``); ``api.main`` merges the file with the flags and refuses a key set
in both places, as dockerd does.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_SOCKET = "unix:///run/wharfd.sock"


class RuntimeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    path: str
    runtime_args: list[str] = Field(default_factory=list, alias="runtimeArgs")


class EngineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    hosts: list[str] = Field(default_factory=lambda: [DEFAULT_SOCKET], alias="hosts")
    data_root: Path = Field(Path("/var/lib/wharfd"), alias="data-root")
    exec_root: Path = Field(Path("/run/wharfd"), alias="exec-root")
    pidfile: Path | None = Field(None, alias="pidfile")
    debug: bool = Field(False, alias="debug")
    log_level: str = Field("info", alias="log-level")
    group: str = Field("docker", alias="group")
    default_runtime: str = Field("runc", alias="default-runtime")
    runtimes: dict[str, RuntimeConfig] = Field(default_factory=dict, alias="runtimes")
    live_restore: bool = Field(True, alias="live-restore")
    shutdown_timeout: int = Field(15, alias="shutdown-timeout")
    no_new_privileges: bool = Field(False, alias="no-new-privileges")
    seccomp_profile: str | None = Field(None, alias="seccomp-profile")
    default_shm_size: int = Field(64 * 1024 * 1024, alias="default-shm-size")
    cgroup_parent: str = Field("/wharfd", alias="cgroup-parent")
    experimental: bool = Field(False, alias="experimental")
    labels: list[str] = Field(default_factory=list, alias="labels")
    insecure_registries: list[str] = Field(default_factory=list, alias="insecure-registries")
    registry_mirrors: list[str] = Field(default_factory=list, alias="registry-mirrors")

    def effective_pidfile(self) -> Path:
        return self.pidfile if self.pidfile is not None else self.exec_root / "wharfd.pid"
