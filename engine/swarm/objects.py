"""The swarm's documents: stored in etcd and sent on the wire in one shape.

Field names are Go's (``api/types/swarm``), so ``wire(model)`` is both the value kept
under a key in etcd and the JSON a client reads. Go's ``omitempty`` decides whether a
key is absent or present with its zero value, and clients compare whole dicts (docker-py
round-trips a node's Spec exactly), so each model lists the fields Go omits when empty in
``OMITEMPTY``; pointers in Go (``*int64``) are ``None`` here and absent when unset.
``Labels`` of an object is always an object, never null (swarm-api-notes §0.9).

Durations are integer nanoseconds everywhere (notes §0.9).

The rules that are not shapes live here too: spec defaults (notes §3), how ``init``
merges the given spec over the defaults and how ``update`` replaces it, the checks on
the spec name, address pools and the data path port, and the texts of the swarm errors
clients depend on (notes §2).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
)

from engine.errors import InvalidParameter, Unavailable
from engine.images.timefmt import rfc3339_nano

SECOND = 1_000_000_000
HOUR = 3600 * SECOND

# --- texts clients depend on (notes §0.3, §2) -----------------------------------------

NOT_IN_SWARM_MANAGER = ('This node is not a swarm manager. Use "docker swarm init" or '
                        '"docker swarm join" to connect this node to swarm and try again.')
WORKER_NOT_MANAGER = ("This node is not a swarm manager. Worker nodes can't be used to view "
                      "or modify cluster state. Please run this command on a manager node "
                      "or promote the current node to a manager.")
MANAGER_NOT_READY = ("This node is not a swarm manager. Manager is being prepared or has "
                     "trouble connecting to the cluster.")
NOT_PART_OF_SWARM = "This node is not part of a swarm"
ALREADY_IN_SWARM = ('This node is already part of a swarm. Use "docker swarm leave" to '
                    "leave this swarm and join another one.")
SWARM_LOCKED = ('Swarm is encrypted and needs to be unlocked before it can be used. '
                'Please use "docker swarm unlock" to unlock it.')
NO_LEADER = ("The swarm does not have a leader. It's possible that too few managers are "
             "online. Make sure more than half of the managers are online.")
UPDATE_OUT_OF_SEQUENCE = "rpc error: code = Unknown desc = update out of sequence"
SPEC_NAME_NOT_DEFAULT = 'swarm spec must be named "default"'
NO_REMOTE_ADDR = "at least 1 RemoteAddr is required to join"
# swarmkit's controlapi refuses it with InvalidArgument; dockerd passes gRPC's text on.
MIN_CERT_EXPIRY = ("rpc error: code = InvalidArgument desc = minimum certificate expiry "
                   "time is: 1h0m0s")

NEGATIVE_HEARTBEAT = ("rpc error: code = InvalidArgument desc = heartbeat time period "
                      "cannot be a negative duration")

# --- defaults (notes §3) ---------------------------------------------------------------

DEFAULT_SPEC_NAME = "default"
DEFAULT_TASK_HISTORY = 5
DEFAULT_SNAPSHOT_INTERVAL = 10_000
DEFAULT_KEEP_OLD_SNAPSHOTS = 0
DEFAULT_LOG_ENTRIES_FOR_SLOW_FOLLOWERS = 500
DEFAULT_ELECTION_TICK = 10
DEFAULT_HEARTBEAT_TICK = 1
DEFAULT_HEARTBEAT_PERIOD = 5 * SECOND
DEFAULT_NODE_CERT_EXPIRY = 90 * 24 * HOUR
MIN_NODE_CERT_EXPIRY = HOUR
DEFAULT_ADDR_POOL = ("10.0.0.0/8",)
DEFAULT_SUBNET_SIZE = 24
MAX_SUBNET_SIZE = 29  # dockerd: a /29 leaves 8 addresses, 4 of them for internal use
DEFAULT_DATA_PATH_PORT = 4789
DATA_PATH_PORT_RANGE = (1024, 49151)  # RFC 6335 §6, as dockerd checks it
DEFAULT_LISTEN_ADDR = "0.0.0.0:2377"
DEFAULT_CLUSTER_PORT = 2377


# --- the base of every document -------------------------------------------------------

class GoModel(BaseModel):
    """A Go struct: unknown keys ignored, fields in ``OMITEMPTY`` absent when empty."""

    model_config = ConfigDict(extra="ignore")
    OMITEMPTY: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit_empty(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            for name in self.OMITEMPTY:
                if name in data and _is_empty(data[name]):
                    del data[name]
        return data


def _is_empty(value: Any) -> bool:
    """Go's omitempty test: nil, false, 0, "" and empty lists and maps."""
    if value is None:
        return True
    if isinstance(value, bool | int | float):
        return not value
    if isinstance(value, str | list | dict):
        return len(value) == 0
    return False


def _labels(value: Any) -> Any:
    return {} if value is None else value


class ObjectVersion(GoModel):
    OMITEMPTY = frozenset({"Index"})
    Index: int = 0


class Meta(GoModel):
    """ID, Version, CreatedAt and UpdatedAt, common to every swarm object."""

    ID: str = ""
    Version: ObjectVersion = Field(default_factory=ObjectVersion)
    CreatedAt: str = ""
    UpdatedAt: str = ""


def timestamp_now() -> str:
    """CreatedAt/UpdatedAt of a document written now (Go's RFC3339Nano, UTC)."""
    return rfc3339_nano(time.time_ns())


def wire(model: BaseModel) -> dict[str, Any]:
    """The exact JSON form of a document (Go's omitempty, pointers left out when unset)."""
    data = model.model_dump(mode="json", exclude_none=True)
    assert isinstance(data, dict)
    return data


# --- the swarm spec -------------------------------------------------------------------


class OrchestrationConfig(GoModel):
    OMITEMPTY = frozenset({"TaskHistoryRetentionLimit"})
    TaskHistoryRetentionLimit: int | None = None


class RaftConfig(GoModel):
    OMITEMPTY = frozenset({"SnapshotInterval", "LogEntriesForSlowFollowers"})
    SnapshotInterval: int = 0
    KeepOldSnapshots: int | None = None
    LogEntriesForSlowFollowers: int = 0
    ElectionTick: int = 0
    HeartbeatTick: int = 0


class DispatcherConfig(GoModel):
    OMITEMPTY = frozenset({"HeartbeatPeriod"})
    HeartbeatPeriod: int = 0


class ExternalCA(GoModel):
    OMITEMPTY = frozenset({"Options"})
    Protocol: str = ""
    URL: str = ""
    Options: dict[str, str] = Field(default_factory=dict)
    CACert: str = ""


class CAConfiguration(GoModel):
    OMITEMPTY = frozenset({"NodeCertExpiry", "ExternalCAs", "SigningCACert", "SigningCAKey",
                           "ForceRotate"})
    NodeCertExpiry: int = 0
    ExternalCAs: list[ExternalCA] = Field(default_factory=list)
    SigningCACert: str = ""
    SigningCAKey: str = ""
    ForceRotate: int = 0


class Driver(GoModel):
    OMITEMPTY = frozenset({"Options"})
    Name: str = ""
    Options: dict[str, str] = Field(default_factory=dict)


class TaskDefaultsSpec(GoModel):
    LogDriver: Driver | None = None


class EncryptionSpec(GoModel):
    AutoLockManagers: bool = False


class SwarmSpec(GoModel):
    """``swarm.Spec``. A fresh instance holds Go's zero values, as a request body does;
    ``default_swarm_spec()`` is what a new swarm starts with."""

    OMITEMPTY = frozenset({"Name"})
    Name: str = ""
    Labels: dict[str, str] = Field(default_factory=dict)
    Orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig)
    Raft: RaftConfig = Field(default_factory=RaftConfig)
    Dispatcher: DispatcherConfig = Field(default_factory=DispatcherConfig)
    CAConfig: CAConfiguration = Field(default_factory=CAConfiguration)
    TaskDefaults: TaskDefaultsSpec = Field(default_factory=TaskDefaultsSpec)
    EncryptionConfig: EncryptionSpec = Field(default_factory=EncryptionSpec)

    _null_labels = field_validator("Labels", mode="before")(_labels)


def default_swarm_spec() -> SwarmSpec:
    return SwarmSpec(
        Name=DEFAULT_SPEC_NAME,
        Orchestration=OrchestrationConfig(TaskHistoryRetentionLimit=DEFAULT_TASK_HISTORY),
        Raft=RaftConfig(
            SnapshotInterval=DEFAULT_SNAPSHOT_INTERVAL,
            KeepOldSnapshots=DEFAULT_KEEP_OLD_SNAPSHOTS,
            LogEntriesForSlowFollowers=DEFAULT_LOG_ENTRIES_FOR_SLOW_FOLLOWERS,
            ElectionTick=DEFAULT_ELECTION_TICK,
            HeartbeatTick=DEFAULT_HEARTBEAT_TICK,
        ),
        Dispatcher=DispatcherConfig(HeartbeatPeriod=DEFAULT_HEARTBEAT_PERIOD),
        CAConfig=CAConfiguration(NodeCertExpiry=DEFAULT_NODE_CERT_EXPIRY),
    )


def checked_spec_name(name: str) -> str:
    """The spec's name, "" meaning ``default``; any other name is refused (dockerd)."""
    if name in ("", DEFAULT_SPEC_NAME):
        return DEFAULT_SPEC_NAME
    raise InvalidParameter(SPEC_NAME_NOT_DEFAULT)


def spec_for_init(given: SwarmSpec, autolock: bool = False) -> SwarmSpec:
    """The spec a new swarm starts with: every non-zero field of ``given`` over the
    defaults (dockerd's init merge). ``autolock`` is InitRequest.AutoLockManagers; the
    CLI and docker-py set it either there or in the spec, so either turns autolock on."""
    spec = default_swarm_spec()
    spec.Name = checked_spec_name(given.Name)
    if given.Labels:
        spec.Labels = dict(given.Labels)
    if given.Orchestration.TaskHistoryRetentionLimit is not None:
        spec.Orchestration.TaskHistoryRetentionLimit = given.Orchestration.TaskHistoryRetentionLimit
    raft, given_raft = spec.Raft, given.Raft
    if given_raft.SnapshotInterval:
        raft.SnapshotInterval = given_raft.SnapshotInterval
    if given_raft.KeepOldSnapshots is not None:
        raft.KeepOldSnapshots = given_raft.KeepOldSnapshots
    if given_raft.LogEntriesForSlowFollowers:
        raft.LogEntriesForSlowFollowers = given_raft.LogEntriesForSlowFollowers
    if given_raft.HeartbeatTick:
        raft.HeartbeatTick = given_raft.HeartbeatTick
    if given_raft.ElectionTick:
        raft.ElectionTick = given_raft.ElectionTick
    if given.Dispatcher.HeartbeatPeriod:
        spec.Dispatcher.HeartbeatPeriod = given.Dispatcher.HeartbeatPeriod
    ca, given_ca = spec.CAConfig, given.CAConfig
    if given_ca.NodeCertExpiry:
        ca.NodeCertExpiry = given_ca.NodeCertExpiry
    if given_ca.SigningCACert:
        ca.SigningCACert = given_ca.SigningCACert
    if given_ca.SigningCAKey:
        ca.SigningCAKey = given_ca.SigningCAKey
    ca.ForceRotate = given_ca.ForceRotate
    ca.ExternalCAs = [external.model_copy(deep=True) for external in given_ca.ExternalCAs]
    if given.TaskDefaults.LogDriver is not None:
        spec.TaskDefaults.LogDriver = given.TaskDefaults.LogDriver.model_copy(deep=True)
    spec.EncryptionConfig.AutoLockManagers = (
        autolock or given.EncryptionConfig.AutoLockManagers)
    _check_spec_values(spec)
    return spec


def spec_for_update(given: SwarmSpec) -> SwarmSpec:
    """The spec after ``POST /swarm/update``: ``given`` replaces the whole spec, a zero
    field meaning its default. A certificate expiry under an hour (zero included) is
    refused, as swarmkit refuses it."""
    if given.CAConfig.NodeCertExpiry < MIN_NODE_CERT_EXPIRY:
        checked_spec_name(given.Name)
        raise InvalidParameter(MIN_CERT_EXPIRY)
    defaults = default_swarm_spec()
    spec = given.model_copy(deep=True)
    spec.Name = checked_spec_name(given.Name)
    if spec.Orchestration.TaskHistoryRetentionLimit is None:
        spec.Orchestration.TaskHistoryRetentionLimit = DEFAULT_TASK_HISTORY
    raft = spec.Raft
    raft.SnapshotInterval = raft.SnapshotInterval or defaults.Raft.SnapshotInterval
    if raft.KeepOldSnapshots is None:
        raft.KeepOldSnapshots = DEFAULT_KEEP_OLD_SNAPSHOTS
    raft.LogEntriesForSlowFollowers = (raft.LogEntriesForSlowFollowers
                                       or DEFAULT_LOG_ENTRIES_FOR_SLOW_FOLLOWERS)
    raft.ElectionTick = raft.ElectionTick or DEFAULT_ELECTION_TICK
    raft.HeartbeatTick = raft.HeartbeatTick or DEFAULT_HEARTBEAT_TICK
    spec.Dispatcher.HeartbeatPeriod = (spec.Dispatcher.HeartbeatPeriod
                                       or DEFAULT_HEARTBEAT_PERIOD)
    _check_spec_values(spec)
    return spec


def _check_spec_values(spec: SwarmSpec) -> None:
    """What swarmkit's validateClusterSpec refuses in a spec (the name is checked
    before, by dockerd)."""
    if spec.CAConfig.NodeCertExpiry < MIN_NODE_CERT_EXPIRY:
        raise InvalidParameter(MIN_CERT_EXPIRY)
    if spec.Dispatcher.HeartbeatPeriod < 0:
        raise InvalidParameter(NEGATIVE_HEARTBEAT)


# --- cluster ----------------------------------------------------------------------------


class TLSInfo(GoModel):
    """The trust root and the issuer of certificates (base64 DER, as Go's []byte)."""

    OMITEMPTY = frozenset({"TrustRoot", "CertIssuerSubject", "CertIssuerPublicKey"})
    TrustRoot: str = ""
    CertIssuerSubject: str = ""
    CertIssuerPublicKey: str = ""


# Aliases for annotations of fields that carry the type's own name (pydantic would
# resolve the annotation to the field's default inside the class body).
_TLSInfo = TLSInfo


def tls_info_for_root(bundle_pem: bytes) -> TLSInfo:
    """TLSInfo of a swarm whose CA bundle is ``bundle_pem`` (the first certificate
    issues node certificates, so it is the issuer the clients compare)."""
    issuer = x509.load_pem_x509_certificates(bundle_pem)[0]
    spki = issuer.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return TLSInfo(
        TrustRoot=bundle_pem.decode(),
        CertIssuerSubject=base64.b64encode(issuer.subject.public_bytes()).decode(),
        CertIssuerPublicKey=base64.b64encode(spki).decode(),
    )


class SwarmJoinTokens(GoModel):
    Worker: str = ""
    Manager: str = ""


class Cluster(Meta):
    """``swarm.ClusterInfo``, plus JoinTokens when it answers ``GET /swarm`` (``Swarm``)."""

    Spec: SwarmSpec = Field(default_factory=SwarmSpec)
    TLSInfo: _TLSInfo = Field(default_factory=TLSInfo)
    RootRotationInProgress: bool = False
    DefaultAddrPool: list[str] = Field(default_factory=lambda: list(DEFAULT_ADDR_POOL))
    SubnetSize: int = DEFAULT_SUBNET_SIZE
    DataPathPort: int = DEFAULT_DATA_PATH_PORT
    JoinTokens: SwarmJoinTokens | None = None

    @field_validator("DefaultAddrPool", mode="before")
    @classmethod
    def _inbuilt_pool(cls, value: Any) -> Any:
        # An unset pool (absent, null or []) is reported as the pool in use (notes §3).
        return list(DEFAULT_ADDR_POOL) if not value else value

    @field_validator("SubnetSize", mode="before")
    @classmethod
    def _default_subnet_size(cls, value: Any) -> Any:
        return DEFAULT_SUBNET_SIZE if value in (None, 0) else value

    @field_validator("DataPathPort", mode="before")
    @classmethod
    def _default_data_path_port(cls, value: Any) -> Any:
        return DEFAULT_DATA_PATH_PORT if value in (None, 0) else value


def redacted_cluster(cluster: Cluster) -> Cluster:
    """The cluster as clients may read it: swarmkit never returns the spec's signing CA
    certificate and key (a client that sent the certificate back in an update without
    the key would ask the swarm to forget its key)."""
    public = cluster.model_copy(deep=True)
    public.Spec.CAConfig.SigningCACert = ""
    public.Spec.CAConfig.SigningCAKey = ""
    return public


_Cluster = Cluster


# --- nodes ------------------------------------------------------------------------------

ROLES = ("worker", "manager")
AVAILABILITIES = ("active", "pause", "drain")
NODE_STATES = ("unknown", "down", "ready", "disconnected")
REACHABILITIES = ("unknown", "unreachable", "reachable")


class NodeSpec(GoModel):
    OMITEMPTY = frozenset({"Name", "Role", "Availability"})
    Name: str = ""
    Labels: dict[str, str] = Field(default_factory=dict)
    Role: str = ""
    Availability: str = ""

    _null_labels = field_validator("Labels", mode="before")(_labels)


class NodePlatform(GoModel):
    OMITEMPTY = frozenset({"Architecture", "OS"})
    Architecture: str = ""
    OS: str = ""


class NodeResources(GoModel):
    OMITEMPTY = frozenset({"NanoCPUs", "MemoryBytes"})
    NanoCPUs: int = 0
    MemoryBytes: int = 0


class PluginDescription(GoModel):
    OMITEMPTY = frozenset({"Type", "Name"})
    Type: str = ""
    Name: str = ""


class EngineDescription(GoModel):
    OMITEMPTY = frozenset({"EngineVersion", "Labels", "Plugins"})
    EngineVersion: str = ""
    Labels: dict[str, str] = Field(default_factory=dict)
    Plugins: list[PluginDescription] = Field(default_factory=list)


class NodeDescription(GoModel):
    OMITEMPTY = frozenset({"Hostname"})
    Hostname: str = ""
    Platform: NodePlatform = Field(default_factory=NodePlatform)
    Resources: NodeResources = Field(default_factory=NodeResources)
    Engine: EngineDescription = Field(default_factory=EngineDescription)
    TLSInfo: _TLSInfo = Field(default_factory=TLSInfo)


class NodeStatus(GoModel):
    OMITEMPTY = frozenset({"State", "Message", "Addr"})
    State: str = ""
    Message: str = ""
    Addr: str = ""


class NodeManagerStatus(GoModel):
    OMITEMPTY = frozenset({"Leader", "Reachability", "Addr"})
    Leader: bool = False
    Reachability: str = ""
    Addr: str = ""


class Node(Meta):
    """``swarm.Node``. ManagerStatus is None (absent) on workers."""

    Spec: NodeSpec = Field(default_factory=NodeSpec)
    Description: NodeDescription = Field(default_factory=NodeDescription)
    Status: NodeStatus = Field(default_factory=NodeStatus)
    ManagerStatus: NodeManagerStatus | None = None


# --- requests ---------------------------------------------------------------------------


class InitRequest(GoModel):
    ListenAddr: str = ""
    AdvertiseAddr: str = ""
    DataPathAddr: str = ""
    DataPathPort: int = 0
    ForceNewCluster: bool = False
    Spec: SwarmSpec = Field(default_factory=SwarmSpec)
    AutoLockManagers: bool = False
    Availability: str = ""
    DefaultAddrPool: list[str] = Field(default_factory=list)
    SubnetSize: int = 0


class JoinRequest(GoModel):
    ListenAddr: str = ""
    AdvertiseAddr: str = ""
    DataPathAddr: str = ""
    RemoteAddrs: list[str] = Field(default_factory=list)
    JoinToken: str = ""
    Availability: str = ""


@dataclass(frozen=True)
class Rotation:
    """What ``POST /swarm/update`` asks to rotate besides replacing the spec."""

    worker_token: bool = False
    manager_token: bool = False
    unlock_key: bool = False


def listen_address(addr: str, field: str = "ListenAddr") -> str:
    """``host:port`` of a listen or remote address, 2377 and 0.0.0.0 filling what is
    missing (dockerd's validateAddr: only an empty address is an error; one it cannot
    parse is passed on unchanged)."""
    if addr == "":
        raise InvalidParameter(f'invalid {field} "": invalid empty address')
    text = addr.removeprefix("tcp://")
    if "://" in text:
        return addr
    host, port = _split_host_port(text)
    if port is None:
        host, port = text, str(DEFAULT_CLUSTER_PORT)
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
    host = host or "0.0.0.0"
    port = port or str(DEFAULT_CLUSTER_PORT)
    if not port.isdigit():
        return addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _split_host_port(text: str) -> tuple[str, str | None]:
    """Go's net.SplitHostPort, None for the port when there is none to split off."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1:end + 2] != ":":
            return text, None
        return text[1:end], text[end + 2:]
    if text.count(":") != 1:
        return text, None
    host, port = text.split(":")
    return host, port


def checked_data_path_port(port: int) -> int:
    """The VXLAN port of a new swarm: 0 means 4789; others must be in 1024-49151."""
    if port == 0:
        return DEFAULT_DATA_PATH_PORT
    low, high = DATA_PATH_PORT_RANGE
    if not low <= port <= high:
        raise InvalidParameter(
            f"Datapath port number is not in valid range ({low}-{high}) : {port}")
    return port


def checked_addr_pool(pool: list[str], subnet_size: int) -> tuple[list[str], int]:
    """The default address pool and subnet size of a new swarm, as dockerd checks them:
    an empty pool means the inbuilt 10.0.0.0/8, size 0 means 24, at most /29, and every
    pool must be a CIDR no longer than the subnet size."""
    size = subnet_size or DEFAULT_SUBNET_SIZE
    if not pool:
        return list(DEFAULT_ADDR_POOL), size
    if size > MAX_SUBNET_SIZE:
        raise InvalidParameter(f"subnet size is out of range: {size}")
    cleaned: list[str] = []
    for entry in pool:
        text = entry.strip()
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise InvalidParameter(
                f"invalid base pool {text}: invalid CIDR address: {text}") from None
        if "/" not in text:
            raise InvalidParameter(f"invalid base pool {text}: invalid CIDR address: {text}")
        if size < network.prefixlen:
            raise InvalidParameter(
                f'invalid CIDR: "{text}". Subnet size is too small for pool: {size}')
        cleaned.append(text)
    return cleaned, size


def checked_availability(availability: str) -> str:
    """A new node's availability: "" means ``active``; any case of active, pause or
    drain is accepted (dockerd's node runner), anything else is refused."""
    value = availability.lower() or "active"
    if value not in AVAILABILITIES:
        raise InvalidParameter(f"invalid Availability: {json.dumps(availability)}")
    return value


def prepare_init(request: InitRequest) -> InitRequest:
    """``request`` checked and completed as dockerd does before it starts a swarm: the
    listen address with its port; Spec the swarm's initial spec (``spec_for_init``, so
    AutoLockManagers agrees with it); the address pool, subnet size and data path port
    with their defaults; Availability ``active`` unless given. Idempotent."""
    listen = listen_address(request.ListenAddr)
    spec = spec_for_init(request.Spec, request.AutoLockManagers)
    pool, size = checked_addr_pool(list(request.DefaultAddrPool), request.SubnetSize)
    port = checked_data_path_port(request.DataPathPort)
    availability = checked_availability(request.Availability)
    return request.model_copy(update={
        "ListenAddr": listen, "Spec": spec, "DefaultAddrPool": pool, "SubnetSize": size,
        "DataPathPort": port, "AutoLockManagers": spec.EncryptionConfig.AutoLockManagers,
        "Availability": availability,
    })


def prepare_join(request: JoinRequest) -> JoinRequest:
    """``request`` checked as dockerd does: a listen address (port 2377 by default), at
    least one remote manager address (``host:port`` each), the availability (default
    ``active``). Idempotent."""
    listen = listen_address(request.ListenAddr)
    if not request.RemoteAddrs:
        raise InvalidParameter(NO_REMOTE_ADDR)
    remotes = [listen_address(addr, "remoteAddr") for addr in request.RemoteAddrs]
    availability = checked_availability(request.Availability)
    return request.model_copy(update={"ListenAddr": listen, "RemoteAddrs": remotes,
                                      "Availability": availability})


# --- /info ------------------------------------------------------------------------------

LOCAL_NODE_STATES = ("inactive", "pending", "active", "error", "locked")


class RemoteManager(GoModel):
    """``swarm.Peer``: a manager this node knows, ``Addr`` its ``ip:port``."""

    NodeID: str = ""
    Addr: str = ""


class LocalSwarmInfo(GoModel):
    """``/info``'s Swarm section. Nodes, Managers and Cluster only on managers."""

    OMITEMPTY = frozenset({"Nodes", "Managers", "Warnings"})
    NodeID: str = ""
    NodeAddr: str = ""
    LocalNodeState: str = "inactive"
    ControlAvailable: bool = False
    Error: str = ""
    RemoteManagers: list[RemoteManager] | None = None
    Nodes: int = 0
    Managers: int = 0
    Cluster: _Cluster | None = None
    Warnings: list[str] = Field(default_factory=list)

    def info_wire(self) -> dict[str, Any]:
        """The section as /info sends it: RemoteManagers is null when there are none
        (Go's nil slice), Cluster redacted and without JoinTokens."""
        public = self if self.Cluster is None else self.model_copy(
            update={"Cluster": redacted_cluster(self.Cluster)})
        data = wire(public)
        data["RemoteManagers"] = data.get("RemoteManagers") or None
        cluster = data.get("Cluster")
        if isinstance(cluster, dict):
            cluster.pop("JoinTokens", None)
        return data


def no_manager_error(info: LocalSwarmInfo) -> Unavailable:
    """dockerd's 503 for a cluster call on a node that cannot serve it, by its state:
    not in a swarm (or failed to start), locked, a manager not ready yet (it lists
    itself among the managers), or a worker."""
    state = info.LocalNodeState
    if state == "locked":
        return Unavailable(SWARM_LOCKED)
    if state in ("inactive", "error") or not info.NodeID:
        return Unavailable(NOT_IN_SWARM_MANAGER)
    if any(peer.NodeID == info.NodeID for peer in info.RemoteManagers or ()):
        return Unavailable(MANAGER_NOT_READY)
    return Unavailable(WORKER_NOT_MANAGER)
