"""``/swarm``, ``/swarm/init|join|leave|update|unlock|unlockkey`` (swarm-api-notes §1).

The router checks what dockerd checks before it asks the cluster (body types, the
version and rotation query parameters, listen and remote addresses, the spec's name,
pools and ports, the spec rules of ``engine.swarm.objects``) and hands the backend
requests that are complete:

* ``init`` gets ``prepare_init(request)``: ListenAddr with its port, Spec already the
  swarm's initial spec (given fields merged over the defaults, autolock folded in),
  DefaultAddrPool/SubnetSize/DataPathPort with their defaults;
* ``join`` gets ``prepare_join(request)``: ListenAddr and RemoteAddrs as ``host:port``;
* ``update`` gets the spec that replaces the current one (``spec_for_update``).

Everything about the node's state (not in a swarm, a worker, locked, already joined,
stale version …) is the backend's to refuse, with the texts in ``engine.swarm.objects``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from aiohttp import web

from api import params
from api.errors import json_response
from api.models.swarm import (
    parse_init_request,
    parse_join_request,
    parse_swarm_spec,
    parse_unlock_key,
)
from api.versioning import request_version
from engine.swarm.objects import (
    Cluster,
    InitRequest,
    JoinRequest,
    LocalSwarmInfo,
    Node,
    NodeSpec,
    Rotation,
    SwarmSpec,
    prepare_init,
    prepare_join,
    redacted_cluster,
    spec_for_update,
    wire,
)


class SwarmBackend(Protocol):
    async def init(self, request: InitRequest) -> str: ...
    async def join(self, request: JoinRequest) -> None: ...
    async def leave(self, force: bool) -> None: ...
    async def inspect(self) -> Cluster: ...
    async def update(self, spec: SwarmSpec, version: int, rotate: Rotation) -> None: ...
    async def unlock_key(self) -> str: ...
    async def unlock(self, key: str) -> None: ...
    async def local_info(self) -> LocalSwarmInfo: ...
    async def list_nodes(self, filters: Mapping[str, Sequence[str]]) -> list[Node]: ...
    async def get_node(self, ref: str) -> Node: ...
    async def update_node(self, ref: str, version: int, spec: NodeSpec) -> None: ...
    async def remove_node(self, ref: str, force: bool) -> None: ...


BACKEND: web.AppKey[SwarmBackend] = web.AppKey("swarm", SwarmBackend)
routes = web.RouteTableDef()


def _backend(request: web.Request) -> SwarmBackend:
    return request.app[BACKEND]


def _ok() -> web.Response:
    # dockerd answers these with a bare 200 and no body.
    return web.Response(status=200)


@routes.post("/swarm/init")
async def post_swarm_init(request: web.Request) -> web.Response:
    given = parse_init_request(await params.read_json(request))
    # Older clients cannot have meant these fields (dockerd ignores them there too).
    if request_version(request) < (1, 39):
        given = given.model_copy(update={"DefaultAddrPool": [], "SubnetSize": 0})
    if request_version(request) < (1, 40):
        given = given.model_copy(update={"DataPathPort": 0})
    init = prepare_init(given)
    node_id = await _backend(request).init(init)
    return json_response(node_id)


@routes.post("/swarm/join")
async def post_swarm_join(request: web.Request) -> web.Response:
    join = prepare_join(parse_join_request(await params.read_json(request)))
    await _backend(request).join(join)
    return _ok()


@routes.post("/swarm/leave")
async def post_swarm_leave(request: web.Request) -> web.Response:
    await _backend(request).leave(params.bool_param(request, "force"))
    return _ok()


@routes.get("/swarm")
async def get_swarm(request: web.Request) -> web.Response:
    return json_response(wire(redacted_cluster(await _backend(request).inspect())))


@routes.post("/swarm/update")
async def post_swarm_update(request: web.Request) -> web.Response:
    # dockerd's order: the body, then the version, then the rotation flags.
    given = parse_swarm_spec(await params.read_json(request))
    version = params.version_param(request, "swarm")
    rotation = Rotation(
        worker_token=params.go_bool_param(request, "rotateWorkerToken"),
        manager_token=params.go_bool_param(request, "rotateManagerToken"),
        unlock_key=params.go_bool_param(request, "rotateManagerUnlockKey"),
    )
    spec = spec_for_update(given)
    await _backend(request).update(spec, version, rotation)
    return _ok()


@routes.get("/swarm/unlockkey")
async def get_swarm_unlockkey(request: web.Request) -> web.Response:
    return json_response({"UnlockKey": await _backend(request).unlock_key()})


@routes.post("/swarm/unlock")
async def post_swarm_unlock(request: web.Request) -> web.Response:
    key = parse_unlock_key(await params.read_json(request))
    await _backend(request).unlock(key)
    return _ok()
