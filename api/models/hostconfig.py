"""``HostConfig`` and ``Resources`` on the wire (swagger: HostConfig, Resources, Mount,
RestartPolicy, …), with the Go types dockerd decodes them into.

The field list is the whole of dockerd's HostConfig, so a container's inspect shows every
key dockerd shows, with the same zero values (``HOST_CONFIG_ZERO``).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator

from api.models.gojson import (
    Duration,
    GoType,
    Int,
    Int64,
    Text,
    Uint,
    Uint16,
    Uint64,
    WireModel,
    plain,
)

FileMode = Annotated[int, Field(ge=0, le=2**32 - 1), GoType("os.FileMode")]
# strslice.StrSlice: a JSON string is a one-element list; Go names it "string" in errors.
StrSlice = Annotated[list[Text], GoType("string")]


def str_slice(value: Any) -> Any:
    if isinstance(value, str):
        return [value]
    return value


class WeightDevice(WireModel):
    GO_NAME = "WeightDevice"
    Path: Text = ""
    Weight: Uint16 = 0


class ThrottleDevice(WireModel):
    GO_NAME = "ThrottleDevice"
    Path: Text = ""
    Rate: Uint64 = 0


class DeviceMapping(WireModel):
    GO_NAME = "DeviceMapping"
    PathOnHost: Text = ""
    PathInContainer: Text = ""
    CgroupPermissions: Text = ""


class DeviceRequest(WireModel):
    GO_NAME = "DeviceRequest"
    Driver: str = ""
    Count: Int = 0
    DeviceIDs: list[str] | None = None
    Capabilities: list[list[str]] | None = None
    Options: dict[str, str] | None = None


class Ulimit(WireModel):
    GO_NAME = "Ulimit"
    Name: Text = ""
    Hard: Int64 = 0
    Soft: Int64 = 0


class RestartPolicyWire(WireModel):
    GO_NAME = "RestartPolicy"
    Name: str = ""
    MaximumRetryCount: Int = 0


class LogConfigWire(WireModel):
    GO_NAME = "LogConfig"
    Type: Text = ""
    Config: dict[Text, Text] | None = None


class PortBinding(WireModel):
    GO_NAME = "PortBinding"
    HostIp: Text = ""
    HostPort: Text = ""


class BindOptionsWire(WireModel):
    GO_NAME = "BindOptions"
    Propagation: str = ""
    NonRecursive: bool = False
    CreateMountpoint: bool = False
    ReadOnlyNonRecursive: bool = False
    ReadOnlyForceRecursive: bool = False


class DriverConfigWire(WireModel):
    GO_NAME = "Driver"
    Name: str = ""
    Options: dict[str, str] | None = None


class VolumeOptionsWire(WireModel):
    GO_NAME = "VolumeOptions"
    NoCopy: bool = False
    Labels: dict[Text, Text] | None = None
    Subpath: Text = ""
    DriverConfig: DriverConfigWire | None = None


class TmpfsOptionsWire(WireModel):
    GO_NAME = "TmpfsOptions"
    SizeBytes: Int64 = 0
    Mode: FileMode = 0
    Options: list[list[str]] | None = None


class ImageOptionsWire(WireModel):
    GO_NAME = "ImageOptions"
    Subpath: Text = ""


class Mount(WireModel):
    GO_NAME = "Mount"
    Type: Annotated[Text, GoType("mount.Type")] = ""
    Source: Text = ""
    Target: Text = ""
    ReadOnly: bool = False
    Consistency: str = ""
    BindOptions: BindOptionsWire | None = None
    VolumeOptions: VolumeOptionsWire | None = None
    TmpfsOptions: TmpfsOptionsWire | None = None
    ImageOptions: ImageOptionsWire | None = None


class Resources(WireModel):
    """``container.Resources``: what `docker update` may change, part of HostConfig."""

    GO_NAME = "Resources"

    CpuShares: Int64 = 0
    Memory: Int64 = 0
    NanoCpus: Int64 = 0
    CgroupParent: Text = ""
    BlkioWeight: Uint16 = 0
    BlkioWeightDevice: list[WeightDevice] | None = None
    BlkioDeviceReadBps: list[ThrottleDevice] | None = None
    BlkioDeviceWriteBps: list[ThrottleDevice] | None = None
    BlkioDeviceReadIOps: list[ThrottleDevice] | None = None
    BlkioDeviceWriteIOps: list[ThrottleDevice] | None = None
    CpuPeriod: Int64 = 0
    CpuQuota: Int64 = 0
    CpuRealtimePeriod: Int64 = 0
    CpuRealtimeRuntime: Int64 = 0
    CpusetCpus: Text = ""
    CpusetMems: Text = ""
    Devices: list[DeviceMapping] | None = None
    DeviceCgroupRules: list[Text] | None = None
    DeviceRequests: list[DeviceRequest] | None = None
    KernelMemory: Int64 = 0
    KernelMemoryTCP: Int64 = 0
    MemoryReservation: Int64 = 0
    MemorySwap: Int64 = 0
    MemorySwappiness: Int64 | None = None
    OomKillDisable: bool | None = None
    PidsLimit: Int64 | None = None
    Ulimits: list[Ulimit] | None = None
    CpuCount: Int64 = 0
    CpuPercent: Int64 = 0
    IOMaximumIOps: Uint64 = 0
    IOMaximumBandwidth: Uint64 = 0


class HostConfig(Resources):
    """``container.HostConfig``."""

    GO_NAME = "HostConfig"

    Binds: list[Text] | None = None
    ContainerIDFile: str = ""
    LogConfig: LogConfigWire | None = None
    NetworkMode: Text = ""
    PortBindings: dict[Text, list[PortBinding] | None] | None = None
    RestartPolicy: RestartPolicyWire | None = None
    AutoRemove: bool = False
    VolumeDriver: Text = ""
    VolumesFrom: list[Text] | None = None
    ConsoleSize: list[Uint] | None = None
    Annotations: dict[Text, Text] | None = None
    CapAdd: StrSlice | None = None
    CapDrop: StrSlice | None = None
    CgroupnsMode: Text = ""
    Dns: list[Text] | None = None
    DnsOptions: list[Text] | None = None
    DnsSearch: list[Text] | None = None
    ExtraHosts: list[Text] | None = None
    GroupAdd: list[Text] | None = None
    IpcMode: Text = ""
    Cgroup: Text = ""
    Links: list[Text] | None = None
    OomScoreAdj: Int = 0
    PidMode: Text = ""
    Privileged: bool = False
    PublishAllPorts: bool = False
    ReadonlyRootfs: bool = False
    SecurityOpt: list[Text] | None = None
    StorageOpt: dict[Text, Text] | None = None
    Tmpfs: dict[Text, Text] | None = None
    UTSMode: Text = ""
    UsernsMode: Text = ""
    ShmSize: Int64 = 0
    Sysctls: dict[Text, Text] | None = None
    Runtime: Text = ""
    Isolation: Text = ""
    Mounts: list[Mount] | None = None
    MaskedPaths: list[Text] | None = None
    ReadonlyPaths: list[Text] | None = None
    Init: bool | None = None

    _slices = field_validator("CapAdd", "CapDrop", mode="before")(str_slice)


class UpdateConfig(Resources):
    """``container.UpdateConfig``: the body of ``POST /containers/{id}/update``."""

    GO_NAME = "UpdateConfig"

    RestartPolicy: RestartPolicyWire | None = None


class HealthConfig(WireModel):
    GO_NAME = "HealthConfig"
    Test: list[Text] | None = None
    Interval: Duration = 0
    Timeout: Duration = 0
    StartPeriod: Duration = 0
    StartInterval: Duration = 0
    Retries: Int = 0


# Keys dockerd shows in inspect whatever was given at create (its zero values): also
# filled in for containers created before every key was kept.
HOST_CONFIG_ZERO: dict[str, Any] = plain(HostConfig(), {})
# dockerd omits these when empty (``omitempty``): not part of the zero set.
for _omitted in ("Annotations", "StorageOpt", "Tmpfs", "Sysctls", "Mounts", "Init"):
    HOST_CONFIG_ZERO.pop(_omitted)
