"""``/nodes``, ``/nodes/{id}``, ``/nodes/{id}/update`` (swarm-api-notes §1, §5).

The nodes live in the swarm backend (``api.routers.swarm.SwarmBackend``, stored under
the same key): this router only parses and checks the request. Filter keys are checked
here (unknown → 400 ``invalid filter 'x'``), their values by the engine
(``engine.swarm.nodes``); a node update reaches the backend with a checked spec (Role and
Availability in lower case, Name and Labels exactly as sent).
"""

from __future__ import annotations

from aiohttp import web

from api import params
from api.errors import json_response
from api.models.swarm import parse_node_spec
from api.routers.swarm import BACKEND, SwarmBackend
from engine.swarm.nodes import NODE_FILTERS, check_node_filters, checked_node_spec
from engine.swarm.objects import wire

routes = web.RouteTableDef()

__all__ = ["BACKEND", "routes"]


def _backend(request: web.Request) -> SwarmBackend:
    return request.app[BACKEND]


@routes.get("/nodes")
async def get_nodes(request: web.Request) -> web.Response:
    filters = params.filters_param(request, NODE_FILTERS)
    check_node_filters(filters)
    nodes = await _backend(request).list_nodes(filters)
    return json_response([wire(node) for node in nodes])


@routes.get("/nodes/{id}")
async def get_node(request: web.Request) -> web.Response:
    return json_response(wire(await _backend(request).get_node(request.match_info["id"])))


@routes.post("/nodes/{id}/update")
async def post_node_update(request: web.Request) -> web.Response:
    # dockerd's order: the body, then the version.
    given = parse_node_spec(await params.read_json(request))
    version = params.version_param(request, "node")
    spec = checked_node_spec(given)
    await _backend(request).update_node(request.match_info["id"], version, spec)
    return web.Response(status=200)


@routes.delete("/nodes/{id}")
async def delete_node(request: web.Request) -> web.Response:
    await _backend(request).remove_node(request.match_info["id"],
                                        params.bool_param(request, "force"))
    return web.Response(status=200)
