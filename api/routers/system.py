"""``/_ping``, ``/version``, ``/info`` (and the services/tasks/secrets/configs and plugin
stand-ins).

All three answer from cached facts (``SystemFacts``, probed once at start-up) plus a few
in-memory counters, so they cost well under a millisecond and never wait on the runtime.
The shapes are what the stock CLI renders cleanly (api-notes §1.3, §5.1, §5.2).
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from api import params
from api.errors import json_response
from api.models.system import (
    ComponentVersion,
    IndexInfo,
    RuntimeInfo,
    ServiceConfig,
    SystemInfo,
    SystemVersion,
)
from api.routers import swarm
from api.versioning import API_VERSION, MIN_API_VERSION
from engine.errors import InvalidParameter, NotFound, NotSupported, Unavailable
from engine.swarm.objects import NOT_IN_SWARM_MANAGER, LocalSwarmInfo, no_manager_error
from engine.system.info import SystemFacts

PLATFORM_NAME = "wharfd"
GIT_COMMIT = "unknown"
STORAGE_DRIVER = "overlay2"
CGROUP_DRIVER = "cgroupfs"
# Loopback registries are always insecure (plain HTTP allowed), as in dockerd.
DEFAULT_INSECURE_CIDRS = ("::1/128", "127.0.0.0/8")

PING_HEADERS = {
    "Builder-Version": "1",  # classic builder only: never advertise BuildKit ("2")
    "Cache-Control": "no-cache, no-store, must-revalidate",
    "Pragma": "no-cache",
    "Swarm": "inactive",
}


@dataclass(frozen=True)
class Counts:
    """What changes while the daemon runs, gathered per /info request (all in memory)."""

    containers: int
    running: int
    paused: int
    stopped: int
    images: int
    event_listeners: int
    open_fds: int
    tasks: int


class SystemBackend(Protocol):
    def facts(self) -> SystemFacts: ...
    async def counts(self) -> Counts: ...


BACKEND: web.AppKey[SystemBackend] = web.AppKey("system", SystemBackend)
routes = web.RouteTableDef()


@routes.get("/_ping", allow_head=False)
async def get_ping(request: web.Request) -> web.Response:
    return web.Response(text="OK", headers=PING_HEADERS)


@routes.head("/_ping")
async def head_ping(request: web.Request) -> web.Response:
    # aiohttp omits Content-Length on an empty HEAD answer; dockerd sends "0".
    headers = {**PING_HEADERS, "Content-Length": "0"}
    return web.Response(headers=headers, content_type="text/plain", charset="utf-8")


@routes.get("/version")
async def get_version(request: web.Request) -> web.Response:
    return json_response(version_body(request.app[BACKEND].facts()))


@routes.get("/info")
async def get_info(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    counts = await backend.counts()
    swarm_backend = request.app.get(swarm.BACKEND)
    local = await swarm_backend.local_info() if swarm_backend is not None else LocalSwarmInfo()
    return json_response(info_body(backend.facts(), counts, time.time_ns(), local))


# --- bodies (pure functions of the facts) -------------------------------------------


def version_body(facts: SystemFacts) -> SystemVersion:
    host = facts.host
    engine = ComponentVersion(
        Name="Engine",
        Version=facts.version,
        Details={
            "ApiVersion": API_VERSION,
            "Arch": host.go_arch,
            "BuildTime": facts.build_time,
            "Experimental": "true" if facts.experimental else "false",
            "GitCommit": GIT_COMMIT,
            "GoVersion": facts.python_version,
            "KernelVersion": host.kernel,
            "MinAPIVersion": MIN_API_VERSION,
            "Os": "linux",
        },
    )
    components = [engine]
    components += [
        ComponentVersion(Name=r.name, Version=r.version, Details={"GitCommit": r.commit})
        for r in facts.runtimes
    ]
    components += [
        ComponentVersion(Name=c.name, Version=c.version, Details={"GitCommit": c.commit})
        for c in facts.components
    ]
    return SystemVersion(
        Platform={"Name": PLATFORM_NAME},
        Components=components,
        Version=facts.version,
        ApiVersion=API_VERSION,
        MinAPIVersion=MIN_API_VERSION,
        GitCommit=GIT_COMMIT,
        GoVersion=facts.python_version,
        Os="linux",
        Arch=host.go_arch,
        KernelVersion=host.kernel,
        BuildTime=facts.build_time,
    )


def rfc3339_nano(unix_nano: int) -> str:
    """Go's RFC3339Nano in UTC: trailing zeros of the fraction dropped."""
    seconds, nanos = divmod(unix_nano, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    fraction = f"{nanos:09d}".rstrip("0")
    return f"{stamp}.{fraction}Z" if fraction else f"{stamp}Z"


def registry_config(facts: SystemFacts) -> ServiceConfig:
    cidrs = list(DEFAULT_INSECURE_CIDRS)
    indexes: dict[str, IndexInfo] = {
        "docker.io": IndexInfo(
            Name="docker.io", Mirrors=list(facts.registry_mirrors), Secure=True, Official=True
        )
    }
    for entry in facts.insecure_registries:
        try:
            network = str(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            indexes[entry] = IndexInfo(Name=entry, Mirrors=[], Secure=False, Official=False)
        else:
            if network not in cidrs:
                cidrs.append(network)
    return ServiceConfig(
        InsecureRegistryCIDRs=cidrs, IndexConfigs=indexes, Mirrors=list(facts.registry_mirrors)
    )


def _runtimes(facts: SystemFacts) -> dict[str, RuntimeInfo]:
    result: dict[str, RuntimeInfo] = {}
    for runtime in facts.runtimes:
        entry = RuntimeInfo(path=runtime.path)
        if runtime.args:
            entry["runtimeArgs"] = list(runtime.args)
        result[runtime.name] = entry
    return result


def info_body(facts: SystemFacts, counts: Counts, now_nano: int,
              swarm_info: LocalSwarmInfo | None = None) -> SystemInfo:
    host, cg = facts.host, facts.host.cgroups
    runc = facts.runtime("runc") or facts.runtime(facts.default_runtime)
    return SystemInfo(
        ID=facts.daemon_id,
        Containers=counts.containers,
        ContainersRunning=counts.running,
        ContainersPaused=counts.paused,
        ContainersStopped=counts.stopped,
        Images=counts.images,
        Driver=STORAGE_DRIVER,
        DriverStatus=[["Backing Filesystem", host.backing_fs]],
        Plugins={
            "Volume": ["local"],
            "Network": ["bridge", "host", "null"],
            "Authorization": None,
            "Log": ["json-file"],
        },
        MemoryLimit=cg.memory_limit,
        SwapLimit=cg.swap_limit,
        CpuCfsPeriod=cg.cpu_cfs,
        CpuCfsQuota=cg.cpu_cfs,
        CPUShares=cg.cpu_shares,
        CPUSet=cg.cpuset,
        PidsLimit=cg.pids_limit,
        IPv4Forwarding=host.ipv4_forwarding,
        Debug=facts.debug,
        NFd=counts.open_fds,
        OomKillDisable=cg.oom_kill_disable,
        NGoroutines=counts.tasks,
        SystemTime=rfc3339_nano(now_nano),
        LoggingDriver=facts.log_driver,
        CgroupDriver=CGROUP_DRIVER,
        CgroupVersion=cg.version,
        NEventsListener=counts.event_listeners,
        KernelVersion=host.kernel,
        OperatingSystem=host.os_name,
        OSVersion=host.os_version,
        OSType="linux",
        Architecture=host.arch,
        IndexServerAddress="https://index.docker.io/v1/",
        RegistryConfig=registry_config(facts),
        NCPU=host.ncpu,
        MemTotal=host.mem_total,
        GenericResources=None,
        DockerRootDir=facts.data_root,
        HttpProxy=facts.http_proxy,
        HttpsProxy=facts.https_proxy,
        NoProxy=facts.no_proxy,
        Name=host.hostname,
        Labels=list(facts.labels),
        ExperimentalBuild=facts.experimental,
        ServerVersion=facts.version,
        Runtimes=_runtimes(facts),
        DefaultRuntime=facts.default_runtime,
        Swarm=(swarm_info or LocalSwarmInfo()).info_wire(),
        LiveRestoreEnabled=facts.live_restore,
        Isolation="",
        InitBinary="",
        ContainerdCommit={"ID": ""},
        RuncCommit={"ID": runc.commit if runc is not None else ""},
        InitCommit={"ID": ""},
        SecurityOptions=list(facts.security_options),
        CDISpecDirs=[],
        Warnings=list(facts.warnings),
    )


# ------------------------------------------------ services, tasks, secrets, configs
# They come with services (issue 13). Until then each answers as dockerd does on a node
# that cannot serve them (503 with dockerd's texts, api-notes §2.8: clients rely on them;
# docker-py's teardown lists services and accepts the 503), and on a manager as a swarm
# that has none of them: empty lists, 404 for a reference, 501 for a create.

SWARM_OBJECTS: dict[str, tuple[str, frozenset[str]]] = {
    # path → (singular for the 404 text, list filters dockerd accepts)
    "services": ("service", frozenset({"id", "label", "mode", "name", "runtime"})),
    "tasks": ("task", frozenset({"name", "id", "label", "service", "node", "desired-state",
                                 "_up-to-date", "runtime"})),
    "secrets": ("secret", frozenset({"names", "name", "id", "label"})),
    "configs": ("config", frozenset({"name", "id", "label"})),
}


async def require_manager(request: web.Request) -> None:
    """Return when this node is a manager that can answer cluster calls; otherwise raise
    dockerd's 503 for the node's state."""
    backend = request.app.get(swarm.BACKEND)
    if backend is None:
        raise Unavailable(NOT_IN_SWARM_MANAGER)
    info = await backend.local_info()
    if not (info.LocalNodeState == "active" and info.ControlAvailable):
        raise no_manager_error(info)


async def list_swarm_objects(request: web.Request) -> web.Response:
    await require_manager(request)
    params.filters_param(request, SWARM_OBJECTS[_plural_of(request)][1])
    return json_response([])


async def no_such_swarm_object(request: web.Request) -> web.Response:
    await require_manager(request)
    singular = SWARM_OBJECTS[_plural_of(request)][0]
    raise NotFound(f"{singular} {request.match_info['id']} not found")


async def create_swarm_object(request: web.Request) -> web.Response:
    await require_manager(request)
    raise NotSupported(f"{_plural_of(request)} are not supported yet")


def _plural_of(request: web.Request) -> str:
    """The object kind a stand-in route serves, from its path: /v1.41/services/x → services."""
    parts = [part for part in request.path.split("/") if part]
    if parts and parts[0].startswith("v") and parts[0][1:2].isdigit():
        parts = parts[1:]
    return parts[0]


for _plural_path in SWARM_OBJECTS:
    routes.get(f"/{_plural_path}")(list_swarm_objects)
    routes.get(f"/{_plural_path}/{{id}}")(no_such_swarm_object)
    if _plural_path != "tasks":
        routes.delete(f"/{_plural_path}/{{id}}")(no_such_swarm_object)
        routes.post(f"/{_plural_path}/create")(create_swarm_object)
        routes.post(f"/{_plural_path}/{{id}}/update")(no_such_swarm_object)


# --- plugins --------------------------------------------------------------------------
# No managed plugins exist yet: the list is empty, with dockerd's filter checks so that a
# client's mistake is still a 400 (moby: plugin/backend_linux.go List).

PLUGIN_FILTERS = frozenset({"enabled", "capability"})


@routes.get("/plugins")
async def get_plugins(request: web.Request) -> web.Response:
    filters = params.filters_param(request, PLUGIN_FILTERS)
    enabled = filters.get("enabled")
    if enabled is not None and enabled not in (["true"], ["false"]):
        raise InvalidParameter(f"Invalid filter 'enabled=[{' '.join(enabled)}]'")
    return json_response([])
