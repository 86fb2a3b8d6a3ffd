"""Networks router: list, inspect, create, connect, disconnect, remove, prune (§2.6).

The backend joins the network manager with the container manager (connect and
disconnect take the container's lock and rewrite its /etc/hosts), so it is assembled
here rather than in the engine: engine.networks sits below engine.containers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from aiohttp import web

from api import params
from api.errors import json_response
from api.jsontext import json_body_response, json_list_response
from api.models.gojson import canonical_keys
from api.models.networks import (
    ConnectIn,
    DisconnectIn,
    NetworkCreateIn,
    network_body,
    parse,
)
from engine.networks.manager import LIST_FILTERS, PRUNE_FILTERS, NetworkManager
from engine.networks.model import Endpoint, Network


class ContainerNetworking(Protocol):
    async def connect_network(self, network: str, ref: str, settings: dict[str, Any]) -> None: ...
    async def disconnect_network(self, network: str, ref: str, force: bool = False) -> None: ...


class NetworkBackend(Protocol):
    def get(self, ref: str) -> Network: ...
    def endpoints(self, net: Network) -> list[Endpoint]: ...
    def list_networks(self, filters: Mapping[str, Sequence[str]]) -> list[Network]: ...
    async def create(self, body: Mapping[str, Any]) -> tuple[Network, str]: ...
    async def remove(self, ref: str) -> None: ...
    async def prune(self, filters: Mapping[str, Sequence[str]]) -> list[str]: ...
    async def connect(self, network: str, container: str, settings: dict[str, Any]) -> None: ...
    async def disconnect(self, network: str, container: str, force: bool) -> None: ...


class EngineNetworks:
    """The network manager for network objects, the container manager for membership."""

    def __init__(self, networks: NetworkManager, containers: ContainerNetworking) -> None:
        self._networks = networks
        self._containers = containers

    def get(self, ref: str) -> Network:
        return self._networks.get(ref)

    def endpoints(self, net: Network) -> list[Endpoint]:
        return self._networks.endpoints_in(net.id)

    def list_networks(self, filters: Mapping[str, Sequence[str]]) -> list[Network]:
        return self._networks.list_networks(filters)

    async def create(self, body: Mapping[str, Any]) -> tuple[Network, str]:
        return await self._networks.create(body)

    async def remove(self, ref: str) -> None:
        await self._networks.remove(ref)

    async def prune(self, filters: Mapping[str, Sequence[str]]) -> list[str]:
        return await self._networks.prune(filters)

    async def connect(self, network: str, container: str, settings: dict[str, Any]) -> None:
        await self._containers.connect_network(network, container, settings)

    async def disconnect(self, network: str, container: str, force: bool) -> None:
        await self._containers.disconnect_network(network, container, force)


BACKEND: web.AppKey[NetworkBackend] = web.AppKey("networks", NetworkBackend)
routes = web.RouteTableDef()


def _backend(request: web.Request) -> NetworkBackend:
    return request.app[BACKEND]


@routes.get("/networks")
async def get_networks(request: web.Request) -> web.Response:
    filters = params.filters_param(request, LIST_FILTERS)
    backend = _backend(request)
    nets = sorted(backend.list_networks(filters), key=lambda n: n.created)
    return json_list_response(nets, lambda n: network_body(n, with_containers=False),
                              lambda n: f"network {n.id}", "networks")


@routes.post("/networks/create")
async def post_networks_create(request: web.Request) -> web.Response:
    body = parse(NetworkCreateIn, await params.read_json(request), "network.CreateRequest")
    data = body.model_dump(exclude_none=True)
    net, warning = await _backend(request).create(data)
    return json_response({"Id": net.id, "Warning": warning}, status=201)


@routes.post("/networks/prune")
async def post_networks_prune(request: web.Request) -> web.Response:
    filters = params.filters_param(request, PRUNE_FILTERS)
    return json_response({"NetworksDeleted": await _backend(request).prune(filters)})


@routes.post("/networks/{id}/connect")
async def post_networks_connect(request: web.Request) -> web.Response:
    data = await params.read_json(request)
    body = parse(ConnectIn, data, "network.ConnectOptions")
    # Checked by the model; the engine reads the settings as sent.
    endpoint = dict(canonical_keys(ConnectIn, data).get("EndpointConfig") or {})
    await _backend(request).connect(request.match_info["id"], body.Container, endpoint)
    return web.Response(status=200)


@routes.post("/networks/{id}/disconnect")
async def post_networks_disconnect(request: web.Request) -> web.Response:
    body = parse(DisconnectIn, await params.read_json(request), "network.DisconnectOptions")
    await _backend(request).disconnect(request.match_info["id"], body.Container, body.Force)
    return web.Response(status=200)


@routes.get("/networks/{id}")
async def get_network(request: web.Request) -> web.Response:
    backend = _backend(request)
    net = backend.get(request.match_info["id"])
    return json_body_response(network_body(net, backend.endpoints(net)))


@routes.delete("/networks/{id}")
async def delete_network(request: web.Request) -> web.Response:
    await _backend(request).remove(request.match_info["id"])
    return web.Response(status=204)
