"""Wire shapes of the system endpoints, named after the swagger definitions.

TypedDicts rather than pydantic models: these are output-only documents built from
already-validated facts, and keys must be spelled exactly as Docker spells them
(``NCPU``, ``OSType``, ``NFd``, ``timeNano``), which a TypedDict states directly.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict


class ComponentVersion(TypedDict):
    Name: str
    Version: str
    Details: dict[str, str]


class PlatformName(TypedDict):
    Name: str


class SystemVersion(TypedDict):
    Platform: PlatformName
    Components: list[ComponentVersion]
    Version: str
    ApiVersion: str
    MinAPIVersion: str
    GitCommit: str
    GoVersion: str
    Os: str
    Arch: str
    KernelVersion: str
    BuildTime: str


class PluginsInfo(TypedDict):
    Volume: list[str]
    Network: list[str]
    Authorization: list[str] | None
    Log: list[str]


class IndexInfo(TypedDict):
    Name: str
    Mirrors: list[str]
    Secure: bool
    Official: bool


class ServiceConfig(TypedDict):
    InsecureRegistryCIDRs: list[str]
    IndexConfigs: dict[str, IndexInfo]
    Mirrors: list[str]


class RuntimeInfo(TypedDict):
    path: str
    runtimeArgs: NotRequired[list[str]]


class Commit(TypedDict):
    ID: str


class SystemInfo(TypedDict):
    ID: str
    Containers: int
    ContainersRunning: int
    ContainersPaused: int
    ContainersStopped: int
    Images: int
    Driver: str
    DriverStatus: list[list[str]]
    Plugins: PluginsInfo
    MemoryLimit: bool
    SwapLimit: bool
    CpuCfsPeriod: bool
    CpuCfsQuota: bool
    CPUShares: bool
    CPUSet: bool
    PidsLimit: bool
    IPv4Forwarding: bool
    Debug: bool
    NFd: int
    OomKillDisable: bool
    NGoroutines: int
    SystemTime: str
    LoggingDriver: str
    CgroupDriver: str
    CgroupVersion: str
    NEventsListener: int
    KernelVersion: str
    OperatingSystem: str
    OSVersion: str
    OSType: str
    Architecture: str
    IndexServerAddress: str
    RegistryConfig: ServiceConfig
    NCPU: int
    MemTotal: int
    GenericResources: None
    DockerRootDir: str
    HttpProxy: str
    HttpsProxy: str
    NoProxy: str
    Name: str
    Labels: list[str]
    ExperimentalBuild: bool
    ServerVersion: str
    Runtimes: dict[str, RuntimeInfo]
    DefaultRuntime: str
    # engine.swarm.objects.LocalSwarmInfo.info_wire(): Go omitempty rules, built there
    Swarm: dict[str, Any]
    LiveRestoreEnabled: bool
    Isolation: str
    InitBinary: str
    ContainerdCommit: Commit
    RuncCommit: Commit
    InitCommit: Commit
    SecurityOptions: list[str]
    CDISpecDirs: list[str]
    Warnings: list[str]


class EventActor(TypedDict):
    ID: str
    Attributes: dict[str, str]


# Functional form because of the "from" key (deprecated, still sent up to API 1.51).
EventMessage = TypedDict(
    "EventMessage",
    {
        "status": NotRequired[str],
        "id": NotRequired[str],
        "from": NotRequired[str],
        "Type": str,
        "Action": str,
        "Actor": EventActor,
        "scope": str,
        "time": int,
        "timeNano": int,
    },
)
