"""Wire models of the swarm and node request bodies (moby ``api/types/swarm``).

They only check what Go's decoder would refuse (a wrong JSON type, a number that does not
fit its Go integer) with Go's words; the engine's documents (``engine.swarm.objects``)
are built from them and carry the rules (defaults, merges, value checks).
"""

from __future__ import annotations

from typing import Any

from api.models.gojson import Duration, Int, Int64, Text, Uint32, Uint64, WireModel, decode
from engine.swarm import objects


class ExternalCAIn(WireModel):
    GO_NAME = "ExternalCA"

    Protocol: Text = ""
    URL: Text = ""
    Options: dict[Text, Text] | None = None
    CACert: Text = ""


class DriverIn(WireModel):
    GO_NAME = "Driver"

    Name: Text = ""
    Options: dict[Text, Text] | None = None


class OrchestrationIn(WireModel):
    GO_NAME = "OrchestrationConfig"

    TaskHistoryRetentionLimit: Int64 | None = None


class RaftIn(WireModel):
    GO_NAME = "RaftConfig"

    SnapshotInterval: Uint64 = 0
    KeepOldSnapshots: Uint64 | None = None
    LogEntriesForSlowFollowers: Uint64 = 0
    ElectionTick: Int = 0
    HeartbeatTick: Int = 0


class DispatcherIn(WireModel):
    GO_NAME = "DispatcherConfig"

    HeartbeatPeriod: Duration = 0


class CAConfigIn(WireModel):
    GO_NAME = "CAConfig"

    NodeCertExpiry: Duration = 0
    ExternalCAs: list[ExternalCAIn] | None = None
    SigningCACert: Text = ""
    SigningCAKey: Text = ""
    ForceRotate: Uint64 = 0


class TaskDefaultsIn(WireModel):
    GO_NAME = "TaskDefaults"

    LogDriver: DriverIn | None = None


class EncryptionConfigIn(WireModel):
    GO_NAME = "EncryptionConfig"

    AutoLockManagers: bool = False


class SwarmSpecIn(WireModel):
    GO_NAME = "Spec"

    Name: Text = ""
    Labels: dict[Text, Text] | None = None
    Orchestration: OrchestrationIn | None = None
    Raft: RaftIn | None = None
    Dispatcher: DispatcherIn | None = None
    CAConfig: CAConfigIn | None = None
    TaskDefaults: TaskDefaultsIn | None = None
    EncryptionConfig: EncryptionConfigIn | None = None


class InitRequestIn(WireModel):
    GO_NAME = "InitRequest"

    ListenAddr: Text = ""
    AdvertiseAddr: Text = ""
    DataPathAddr: Text = ""
    DataPathPort: Uint32 = 0
    ForceNewCluster: bool = False
    Spec: SwarmSpecIn | None = None
    AutoLockManagers: bool = False
    Availability: Text = ""
    DefaultAddrPool: list[Text] | None = None
    SubnetSize: Uint32 = 0


class JoinRequestIn(WireModel):
    GO_NAME = "JoinRequest"

    ListenAddr: Text = ""
    AdvertiseAddr: Text = ""
    DataPathAddr: Text = ""
    RemoteAddrs: list[Text] | None = None
    JoinToken: Text = ""
    Availability: Text = ""


class UnlockRequestIn(WireModel):
    GO_NAME = "UnlockRequest"

    UnlockKey: Text = ""


class NodeSpecIn(WireModel):
    GO_NAME = "NodeSpec"

    Name: Text = ""
    Labels: dict[Text, Text] | None = None
    Role: Text = ""
    Availability: Text = ""


def _checked(model: type[WireModel], data: Any, go_type: str) -> dict[str, Any]:
    """The body as plain data once Go would have decoded it; an empty body is ``{}``
    (moby's ReadJSON accepts it and leaves the struct at its zero value)."""
    if data is None:
        return {}
    return decode(model, data, go_type).model_dump(exclude_none=True)


def parse_init_request(data: Any) -> objects.InitRequest:
    return objects.InitRequest.model_validate(
        _checked(InitRequestIn, data, "swarm.InitRequest"))


def parse_join_request(data: Any) -> objects.JoinRequest:
    return objects.JoinRequest.model_validate(
        _checked(JoinRequestIn, data, "swarm.JoinRequest"))


def parse_swarm_spec(data: Any) -> objects.SwarmSpec:
    return objects.SwarmSpec.model_validate(_checked(SwarmSpecIn, data, "swarm.Spec"))


def parse_unlock_key(data: Any) -> str:
    return str(_checked(UnlockRequestIn, data, "swarm.UnlockRequest").get("UnlockKey", ""))


def parse_node_spec(data: Any) -> objects.NodeSpec:
    return objects.NodeSpec.model_validate(_checked(NodeSpecIn, data, "swarm.NodeSpec"))
