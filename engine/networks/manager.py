"""NetworkManager: networks, container endpoints, published ports, embedded DNS.

State lives in SQLite (migrations 4 and 6): ``networks`` rows, one ``endpoints`` row
per container and network it belongs to (its addresses, MAC and interface are set only
while the container runs; ``address6`` on networks with EnableIPv6), and one
``sandboxes`` row per running container (its namespace and held host ports). Every
allocation is committed before it is used, so after a crash the rows say what exists;
``reconcile`` then releases what belongs to containers that no longer run (F1) and
re-takes the rest.

The container manager calls (this package must not import it, so it passes plain data):

  create   ``check_container`` / ``attach``      validate, record memberships
  start    ``plug``                              veths, addresses, ports, DNS, rules
  stop     ``unplug``                            all of it released
  remove   ``forget``                            memberships dropped
  restore  ``reconcile``                         keep running ones, release the rest
  inspect  ``settings`` / ``list_ports``         NetworkSettings, list Ports
  connect  ``connect`` / ``disconnect``          live or on a stopped container
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import logging
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.config import EngineConfig
from engine.errors import Conflict, Forbidden, InvalidParameter, NotFound, SystemError_
from engine.events import EventBus
from engine.ids import new_id, resolve
from engine.instruments import LabeledTimer, timed
from engine.networks import bridge, dns, firewall, ipam, ports
from engine.networks.model import DRIVERS, PREDEFINED, Endpoint, Network
from engine.store.db import Database

log = logging.getLogger(__name__)

DEFAULT_BRIDGE = "wharfd0"
VETH_PREFIX = "wv"
LIST_FILTERS = frozenset({"driver", "id", "label", "name", "scope", "type", "dangling"})
PRUNE_FILTERS = frozenset({"until", "label", "label!"})


@dataclass(frozen=True)
class SandboxRequest:
    """What a container start asks of the network: its namespace and published ports."""

    container_id: str
    name: str
    netns: Path
    exposed: Mapping[str, Any] | None = None
    bindings: Mapping[str, Any] | None = None
    publish_all: bool = False
    dns: Sequence[str] = ()


@dataclass
class _Sandbox:
    netns: Path
    bindings: list[ports.Binding] = field(default_factory=list)
    dns: list[str] = field(default_factory=list)


def _scoped_link_target(links: Any, name: str) -> str | None:
    """Links of an endpoint on a user-defined network (``target[:alias]``) are names only
    its own container resolves: the target container asked for by ``name``, if any."""
    for link in links or []:
        target, _, alias = str(link).partition(":")
        target = target.lstrip("/")
        if name in (target.lower(), (alias or target).lower()):
            return target
    return None


def _string_map(value: Any) -> dict[str, str] | None:
    """A map of options as given; None when none was (inspect then shows null)."""
    if value is None:
        return None
    return {str(k): str(v) for k, v in dict(value).items()}


def _now_rfc3339() -> str:
    ns = time.time_ns()
    stamp = datetime.fromtimestamp(ns // 1_000_000_000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ns % 1_000_000_000:09d}Z"


def _not_found(ref: str) -> NotFound:
    return NotFound(f"network {ref} not found")


def _veth_name(container_id: str, network_id: str) -> str:
    return VETH_PREFIX + hashlib.sha256((container_id + network_id).encode()).hexdigest()[:11]


def network_mode_name(mode: str) -> str | None:
    """The network a NetworkMode names, or None for container:<id> ("default" = bridge)."""
    if mode.startswith("container:"):
        return None
    return "bridge" if mode in ("", "default") else mode



_MAC_ADDRESS = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}")


def check_mac_address(mac: str) -> None:
    """A requested MAC address is six colon-separated octets, refused at create or connect
    (the link could not be given it at start)."""
    if mac and not _MAC_ADDRESS.fullmatch(mac):
        raise InvalidParameter(f"invalid MAC address {mac}")

class NetworkManager:
    def __init__(self, config: EngineConfig, db: Database, events: EventBus,
                 table_suffix: str) -> None:
        self._config = config
        self._db = db
        self._events = events
        self._table = f"wharfd_{table_suffix}"
        # The last batch nft accepted: most starts and stops change no rule (no published
        # port), and running nft costs tens of milliseconds.
        self._applied: dict[str, Any] | None = None
        self._networks: dict[str, Network] = {}
        self._pools: dict[str, ipam.Pool | None] = {}
        self._pools6: dict[str, ipam.Pool] = {}   # networks with EnableIPv6 only
        self._host_dns: list[str] = []
        self._endpoints: dict[tuple[str, str], Endpoint] = {}
        self._sandboxes: dict[str, _Sandbox] = {}
        self._holder = ports.PortHolder()
        self._lock = asyncio.Lock()          # allocations, creates, rules
        self._resolver = dns.Resolver(self._lookup, self._upstreams)
        # dockerd's engine_daemon_network_actions_seconds, read by the metrics scrape.
        self.actions = LabeledTimer()

    # ------------------------------------------------------------------ read side
    def get(self, ref: str) -> Network:
        return resolve(ref, self._networks, lambda n: n.name, _not_found)

    def networks(self) -> list[Network]:
        return list(self._networks.values())

    def endpoints_of(self, container_id: str) -> list[Endpoint]:
        found = [e for (cid, _), e in self._endpoints.items() if cid == container_id]
        return sorted(found, key=lambda e: e.seq)

    def endpoints_in(self, network_id: str) -> list[Endpoint]:
        return [e for (_, nid), e in self._endpoints.items() if nid == network_id]

    def active_endpoints(self, network_id: str) -> list[Endpoint]:
        return [e for e in self.endpoints_in(network_id) if e.plugged]

    # ------------------------------------------------------------------ load / close
    async def load(self) -> None:
        rows = await self._db.query("SELECT * FROM networks")
        for row in rows:
            net = Network.from_row(row, self._config.mtu)
            self._networks[net.id] = net
        await self._ensure_predefined()
        for net in self._networks.values():
            self._make_pools(net)
        for row in await self._db.query("SELECT * FROM endpoints"):
            ep = Endpoint.from_row(row)
            if ep.network_id not in self._networks:
                continue
            self._endpoints[(ep.container_id, ep.network_id)] = ep
            pool = self._pools.get(ep.network_id)
            if ep.address and pool is not None:
                pool.mark(ipaddress.IPv4Address(ep.address))
            pool6 = self._pools6.get(ep.network_id)
            if ep.address6 and pool6 is not None:
                pool6.mark(ipaddress.IPv6Address(ep.address6))
        for row in await self._db.query("SELECT * FROM sandboxes"):
            held = [ports.Binding.from_json(b) for b in json.loads(row["ports"])]
            self._sandboxes[row["container_id"]] = _Sandbox(Path(row["netns"]), held)
        self._host_dns = await asyncio.to_thread(host_nameservers)
        if self._config.ip_forward:
            await asyncio.to_thread(bridge.enable_forwarding)
        for net in self._networks.values():
            if net.is_bridge:
                await self._ensure_bridge(net)

    async def _ensure_predefined(self) -> None:
        by_name = {n.name: n for n in self._networks.values()}
        wanted = self._default_bridge_subnet()
        for name in PREDEFINED:
            current = by_name.get(name)
            if name == "bridge" and current is not None and current.subnets != (wanted,):
                # `bip` changed since the last start: the default bridge follows it.
                current = current.evolve(subnets=(wanted,))
                await self._db.execute("UPDATE networks SET config = ? WHERE id = ?",
                                       (current.to_config_json(), current.id))
                self._networks[current.id] = current
            if current is not None:
                continue
            net = Network(id=new_id(), name=name, driver=DRIVERS[name], created=_now_rfc3339(),
                          default_mtu=self._config.mtu)
            if name == "bridge":
                net = net.evolve(subnets=(wanted,), bridge=DEFAULT_BRIDGE, options={
                    "com.docker.network.bridge.default_bridge": "true",
                    "com.docker.network.bridge.enable_icc": str(self._config.icc).lower(),
                    "com.docker.network.bridge.enable_ip_masquerade":
                        str(self._config.ip_masq).lower(),
                    "com.docker.network.bridge.host_binding_ipv4": "0.0.0.0",
                    "com.docker.network.bridge.name": DEFAULT_BRIDGE,
                    "com.docker.network.driver.mtu": str(self._config.mtu),
                })
            await self._insert_network(net)
            self._networks[net.id] = net

    def _default_bridge_subnet(self) -> ipam.SubnetConfig:
        bip = ipaddress.ip_interface(self._config.bip or ipam.DEFAULT_BRIDGE_CIDR)
        assert isinstance(bip, ipaddress.IPv4Interface)
        return ipam.SubnetConfig(bip.network, bip.ip)

    def _address_pools(self) -> list[tuple[str, int]]:
        configured = [(p.base, p.size) for p in self._config.default_address_pools]
        return configured or list(ipam.DEFAULT_POOLS)

    def _make_pools(self, net: Network) -> None:
        self._pools[net.id] = ipam.Pool(net.ipv4) if net.subnets else None
        if net.ipv6 is not None:
            self._pools6[net.id] = ipam.Pool(net.ipv6)

    async def _ensure_bridge(self, net: Network) -> None:
        subnet = net.ipv4
        await asyncio.to_thread(bridge.ensure_bridge, net.bridge, str(subnet.gateway),
                                subnet.subnet.prefixlen, net.mtu)
        if net.ipv6 is not None:
            await asyncio.to_thread(bridge.ensure_bridge_ipv6, net.bridge,
                                    str(net.ipv6.gateway), net.ipv6.subnet.prefixlen)
            if self._config.ip_forward:
                await asyncio.to_thread(bridge.enable_ipv6_forwarding)
        if not net.icc:
            await asyncio.to_thread(bridge.enable_bridge_netfilter)

    async def _insert_network(self, net: Network) -> None:
        await self._db.execute(
            "INSERT INTO networks (id, name, driver, config, created) VALUES (?, ?, ?, ?, ?)",
            (net.id, net.name, net.driver, net.to_config_json(), net.created),
        )

    async def reconcile(self, running: Mapping[str, Path], known: Iterable[str]) -> None:
        """After the containers were restored: ``running`` keep their addresses, ports
        and resolver; everything else is released (F1: no stale IPs)."""
        known_ids = set(known)
        for cid in {cid for cid, _ in self._endpoints} - known_ids:
            await self.forget(cid)
        for cid in list(self._sandboxes):
            if cid not in running:
                await self.unplug(cid)
        stale = [e for e in self._endpoints.values() if e.plugged and e.container_id not in running]
        for ep in stale:
            await self._release_endpoint(ep)
        expected = {e.host_if for e in self._endpoints.values() if e.plugged}
        for name in await asyncio.to_thread(bridge.veths_with_prefix, VETH_PREFIX):
            if name not in expected:
                await asyncio.to_thread(bridge.unplumb, name)
        for cid, netns in running.items():
            box = self._sandboxes.get(cid)
            if box is None:
                continue
            for binding in box.bindings:
                self._holder.hold_exact(cid, binding)
            await self._forward_v6_to_v4(cid, box)
            if any(self._networks[e.network_id].user_defined
                   for e in self.endpoints_of(cid) if e.plugged):
                try:
                    await self._resolver.serve(cid, netns)
                except OSError as exc:
                    log.warning("container %s: embedded DNS not restored: %s", cid, exc)
        await self._apply_rules()

    async def close(self) -> None:
        """Stop listening. With containers still running (live-restore) their links and
        rules stay; otherwise the daemon leaves nothing of its own behind."""
        await self._resolver.close()
        self._holder.close()
        if any(e.plugged for e in self._endpoints.values()):
            return
        for net in self._networks.values():
            if net.is_bridge:
                try:
                    await asyncio.to_thread(bridge.delete_link, net.bridge)
                except OSError as exc:
                    log.warning("removing bridge %s: %s", net.bridge, exc)
        try:
            await firewall.apply(firewall.delete_batch(self._table))
            self._applied = None
        except SystemError_ as exc:
            log.warning("removing nftables table %s: %s", self._table, exc)

    # ------------------------------------------------------------------ networks API
    def list_networks(self, filters: Mapping[str, Sequence[str]]) -> list[Network]:
        unknown = set(filters) - LIST_FILTERS
        if unknown:
            raise InvalidParameter(f"invalid filter '{sorted(unknown)[0]}'")
        return [n for n in self._networks.values() if self._matches(n, filters)]

    def _matches(self, net: Network, filters: Mapping[str, Sequence[str]]) -> bool:
        checks: dict[str, Callable[[str], bool]] = {
            "driver": lambda v: net.driver == v,
            "id": lambda v: net.id.startswith(v),
            "name": lambda v: v in net.name,
            "scope": lambda v: v == "local",
            "type": lambda v: v == ("builtin" if net.predefined else "custom"),
            "label": lambda v: _label_matches(net.labels, v),
        }
        for key, values in filters.items():
            if key == "dangling":
                dangling = values[-1].lower() in ("1", "true")
                if (not net.predefined and not self.active_endpoints(net.id)) != dangling:
                    return False
                if net.predefined and dangling:
                    return False
                continue
            if key == "type" and any(v not in ("custom", "builtin") for v in values):
                raise InvalidParameter(f"invalid filter: 'type'='{values[0]}'")
            if key == "label":
                if not all(checks["label"](v) for v in values):
                    return False
            elif not any(checks[key](v) for v in values):
                return False
        return True

    @timed("create")
    async def create(self, body: Mapping[str, Any]) -> tuple[Network, str]:
        name = str(body.get("Name") or "")
        if not name:
            raise InvalidParameter("invalid name: name is empty")
        # Spaces are fine ("test 01", as dockerd); a "/" is not: /networks/{name} could
        # not address it (reliability B15). The bridge is named after the id.
        if "/" in name or any(ord(ch) < 0x20 for ch in name):
            raise InvalidParameter(
                f'invalid network name "{name}": it must not contain "/" or control '
                "characters")
        driver = str(body.get("Driver") or "bridge")
        if driver in ("host", "null"):
            raise Forbidden(f'only one instance of "{driver}" network is allowed')
        if driver != "bridge":
            raise NotFound(f'plugin "{driver}" not found')
        enable_ipv6 = bool(body.get("EnableIPv6"))
        ipam_body = body.get("IPAM") or {}
        ipam_driver = str(ipam_body.get("Driver") or "default")
        if ipam_driver != "default":
            raise NotFound(f'plugin "{ipam_driver}" not found')
        subnet, subnet6 = _requested_subnets(ipam_body.get("Config") or [], enable_ipv6)
        options = {str(k): str(v) for k, v in (body.get("Options") or {}).items()}
        async with self._lock:
            if any(n.name == name for n in self._networks.values()):
                raise Conflict(f"network with name {name} already exists")
            used = [n.ipv4.subnet for n in self._networks.values()
                    if n.subnets and isinstance(n.ipv4.subnet, ipaddress.IPv4Network)]
            if subnet is None:
                chosen = ipam.pick_subnet(self._address_pools(), used)
                subnet = ipam.SubnetConfig(chosen, ipam.first_host(chosen))
            else:
                ipam.check_overlap(subnet.subnet, used)
            if subnet6 is not None and enable_ipv6:
                # only subnets in use count, as dockerd: a v6 subnet given without
                # EnableIPv6 takes no pool
                used6 = [n.ipv6.subnet for n in self._networks.values() if n.ipv6]
                ipam.check_overlap(subnet6.subnet, used6)
            net_id = new_id()
            bridge_name = options.get("com.docker.network.bridge.name") or f"br-{net_id[:12]}"
            if any(n.bridge == bridge_name for n in self._networks.values()):
                raise Conflict(f"bridge name {bridge_name} is already in use")
            net = Network(
                id=net_id, name=name, driver="bridge", created=_now_rfc3339(),
                subnets=(subnet,) if subnet6 is None else (subnet, subnet6),
                enable_ipv6=enable_ipv6, ipam_driver=ipam_driver,
                ipam_options=_string_map(ipam_body.get("Options")),
                options=options, labels={str(k): str(v) for k, v in
                                         (body.get("Labels") or {}).items()},
                internal=bool(body.get("Internal")), attachable=bool(body.get("Attachable")),
                bridge=bridge_name, default_mtu=self._config.mtu,
            )
            await self._ensure_bridge(net)
            try:
                await self._insert_network(net)
            except BaseException:
                await asyncio.to_thread(bridge.delete_link, bridge_name)
                raise
            self._networks[net.id] = net
            self._make_pools(net)
            await self._apply_rules_locked()
        self._events.emit("network", "create", net.id, {"name": net.name, "type": "bridge"})
        return net, ""

    @timed("delete")
    async def remove(self, ref: str) -> None:
        net = self.get(ref)
        if net.predefined:
            raise Forbidden(f"{net.name} is a pre-defined network and cannot be removed")
        async with self._lock:
            if self.active_endpoints(net.id):
                raise Forbidden(
                    f"error while removing network: network {net.name} id {net.id} has "
                    "active endpoints"
                )
            def delete(conn: sqlite3.Connection) -> None:
                conn.execute("DELETE FROM endpoints WHERE network_id = ?", (net.id,))
                conn.execute("DELETE FROM networks WHERE id = ?", (net.id,))

            await self._db.transaction(delete)
            for key in [k for k in self._endpoints if k[1] == net.id]:
                del self._endpoints[key]
            del self._networks[net.id]
            self._pools.pop(net.id, None)
            self._pools6.pop(net.id, None)
            await asyncio.to_thread(bridge.delete_link, net.bridge)
            await self._apply_rules_locked()
        self._events.emit("network", "destroy", net.id, {"name": net.name, "type": "bridge"})

    async def prune(self, filters: Mapping[str, Sequence[str]]) -> list[str]:
        unknown = set(filters) - PRUNE_FILTERS
        if unknown:
            raise InvalidParameter(f"invalid filter '{sorted(unknown)[0]}'")
        removed = []
        for net in list(self._networks.values()):
            if net.predefined or self.endpoints_in(net.id):
                continue
            if not all(_label_matches(net.labels, v) for v in filters.get("label", [])):
                continue
            if any(_label_matches(net.labels, v) for v in filters.get("label!", [])):
                continue
            try:
                await self.remove(net.id)
            except (Forbidden, NotFound):
                continue
            removed.append(net.name)
        self._events.emit("network", "prune", "", {})
        return removed

    # ------------------------------------------------------------------ container create
    def check_container(self, host_config: Mapping[str, Any], config: Mapping[str, Any],
                        networking: Mapping[str, Any]) -> None:
        """Create-time checks (B10, B13, B16's outside-subnet): nothing is recorded."""
        ports.validate(config.get("ExposedPorts"), host_config.get("PortBindings"))
        check_mac_address(str(config.get("MacAddress") or ""))  # the deprecated Config one
        mode = str(host_config.get("NetworkMode") or "default")
        name = network_mode_name(mode)
        if name is None:
            if host_config.get("PortBindings") or host_config.get("PublishAllPorts"):
                raise InvalidParameter("conflicting options: port publishing and the "
                                       "container type network mode")
            return
        net = self.get(name)
        if net.name == "host" and host_config.get("PortBindings"):
            return  # dockerd ignores published ports in host mode (with a warning)
        for key, settings in self._requested_endpoints(mode, networking).items():
            target = self.get(key)
            self._check_endpoint_settings(target, settings or {})

    def _check_endpoint_settings(self, net: Network, settings: Mapping[str, Any]) -> None:
        check_mac_address(str(settings.get("MacAddress") or ""))
        wanted = str((settings.get("IPAMConfig") or {}).get("IPv4Address") or "")
        _check_wanted_ipv6(net, str((settings.get("IPAMConfig") or {}).get("IPv6Address")
                                    or ""))
        if wanted:
            if not net.user_defined:
                raise InvalidParameter(
                    "user specified IP address is supported on user defined networks only"
                )
            try:
                address = ipaddress.IPv4Address(wanted)
            except ValueError:
                raise InvalidParameter(f"invalid IPv4 address: {wanted}") from None
            if address not in net.subnets[0].subnet:
                raise InvalidParameter(
                    f"Invalid address {wanted}: It does not belong to any of this network's "
                    "subnets"
                )
        if settings.get("Aliases") and not net.user_defined:
            raise InvalidParameter(
                "network-scoped alias is supported only for containers in user defined "
                "networks"
            )

    @staticmethod
    def _requested_endpoints(mode: str, networking: Mapping[str, Any]) -> dict[str, Any]:
        """Network name → EndpointSettings: the mode's network first, then the others."""
        name = network_mode_name(mode) or ""
        given = dict(networking.get("EndpointsConfig") or {})
        if "default" in given:
            given.setdefault("bridge", given.pop("default"))
        out = {name: given.pop(name, None) or {}}
        out.update(given)
        return out

    async def attach(self, container_id: str, container_name: str,
                     host_config: Mapping[str, Any], networking: Mapping[str, Any],
                     legacy_mac: str = "") -> None:
        """Record the networks a new container belongs to (after ``check_container``).
        ``legacy_mac`` is the deprecated ``Config.MacAddress``: as dockerd, it becomes the
        MAC of the endpoint on the network of ``NetworkMode`` unless that one has its own."""
        mode = str(host_config.get("NetworkMode") or "default")
        if network_mode_name(mode) is None:
            return
        for seq, (ref, settings) in enumerate(self._requested_endpoints(mode, networking).items()):
            net = self.get(ref)
            if net.driver in ("host", "null") and seq > 0:
                continue
            config = dict(settings or {})
            if seq == 0 and legacy_mac and net.driver == "bridge" and not config.get("MacAddress"):
                config["MacAddress"] = legacy_mac
            await self._insert_endpoint(Endpoint(container_id, net.id, container_name,
                                                 config, seq))

    async def _insert_endpoint(self, ep: Endpoint) -> None:
        await self._db.execute(
            "INSERT OR REPLACE INTO endpoints (container_id, network_id, container_name, "
            "config, seq) VALUES (?, ?, ?, ?, ?)",
            (ep.container_id, ep.network_id, ep.container_name, json.dumps(ep.config), ep.seq),
        )
        self._endpoints[(ep.container_id, ep.network_id)] = ep

    async def forget(self, container_id: str) -> None:
        """The container is removed: drop its memberships (after ``unplug``)."""
        await self.unplug(container_id)
        await self._db.execute("DELETE FROM endpoints WHERE container_id = ?", (container_id,))
        for key in [k for k in self._endpoints if k[0] == container_id]:
            del self._endpoints[key]

    async def forget_in(self, ref: str, network_id: str) -> None:
        """``disconnect --force`` of a container that no longer exists."""
        for (cid, nid), ep in list(self._endpoints.items()):
            if nid == network_id and (cid.startswith(ref) or ep.container_name == ref):
                await self._drop_endpoint(ep)
                await self._apply_rules()

    async def rename(self, container_id: str, name: str) -> None:
        await self._db.execute("UPDATE endpoints SET container_name = ? WHERE container_id = ?",
                               (name, container_id))
        for key, ep in list(self._endpoints.items()):
            if key[0] == container_id:
                self._endpoints[key] = ep.evolve(container_name=name)

    # ------------------------------------------------------------------ start / stop
    @timed("allocate")
    async def plug(self, request: SandboxRequest, mode: str) -> None:
        """Give a starting container its interfaces, ports and resolver. On failure
        everything taken so far is released."""
        name = network_mode_name(mode)
        if name is None:
            return
        self.get(name)  # the network the mode names may have been removed: 404
        cid = request.container_id
        endpoints = [e for e in self.endpoints_of(cid)
                     if self._networks[e.network_id].is_bridge]
        if not endpoints:
            return
        box = _Sandbox(request.netns, dns=list(request.dns))
        self._sandboxes[cid] = box
        # the IPv6 default route goes via the first network with IPv6, which need not
        # be the first network (dockerd: connect a v6 network to a container of a v4 one)
        v6_first = next((e for e in endpoints if self._networks[e.network_id].ipv6), None)
        try:
            for index, ep in enumerate(endpoints):
                await self._plug_endpoint(ep, request.netns, f"eth{index}", first=index == 0,
                                          first6=ep is v6_first)
            wanted = ports.requests(request.exposed, request.bindings, request.publish_all)
            # dockerd publishes on [::] as well: DNAT to the container's IPv6 address, or
            # (its userland proxy's way) forwarded to its IPv4 address when it has none
            also_v6 = (self._networks[endpoints[0].network_id].ipv6 is not None
                       or ports.ipv6_listenable())
            async with self._lock:
                for req in wanted:
                    box.bindings.extend(self._hold(cid, req, also_v6))
                await self._db.execute(
                    "INSERT OR REPLACE INTO sandboxes (container_id, netns, ports) "
                    "VALUES (?, ?, ?)",
                    (cid, str(request.netns),
                     json.dumps([b.to_json() for b in box.bindings])),
                )
                await self._apply_rules_locked()
            await self._forward_v6_to_v4(cid, box)
            if any(self._networks[e.network_id].user_defined for e in endpoints):
                await self._resolver.serve(cid, request.netns)
        except BaseException:
            await self.unplug(cid)
            raise

    def _hold(self, cid: str, req: ports.Request, also_v6: bool) -> list[ports.Binding]:
        """Hold one published port; an every-address IPv4 one also on ``[::]`` (same
        port, as dockerd's ``-P`` too)."""
        held = [self._holder.hold(cid, req)]
        if also_v6 and req.host_ip == "0.0.0.0":
            port = held[0].host_port
            held.append(self._holder.hold(cid, ports.Request(
                req.container_port, req.proto, "::", (port, port))))
        return held

    async def _forward_v6_to_v4(self, cid: str, box: _Sandbox) -> None:
        """``[::]`` bindings of a container without IPv6 are served by forwarding (the
        firewall has no rule for them: nftables cannot NAT IPv6 to IPv4)."""
        target = next((e for e in self.endpoints_of(cid) if e.plugged), None)
        if target is None or target.address is None or target.address6 is not None:
            return
        for binding in box.bindings:
            if ports.is_ipv6(binding.host_ip):
                await self._holder.forward(cid, binding, target.address)

    async def _plug_endpoint(self, ep: Endpoint, netns: Path, ifname: str, first: bool,
                             first6: bool = False) -> None:
        net = self._networks[ep.network_id]
        pool = self._pools[net.id]
        assert pool is not None  # every bridge network has a subnet
        pool6 = self._pools6.get(net.id)
        wanted, wanted6 = ep.wanted_ip(), ep.wanted_ip6()
        label = f"{net.name} ({net.id})"
        async with self._lock:
            address = pool.allocate(ipaddress.IPv4Address(wanted) if wanted else None, label)
            assert isinstance(address, ipaddress.IPv4Address)  # the IPv4 pool
            address6: ipam.Addr | None = None
            try:
                if pool6 is not None:
                    address6 = pool6.allocate(
                        ipaddress.IPv6Address(wanted6) if wanted6 else None, label)
            except BaseException:
                pool.release(address)
                raise
            mac = ep.wanted_mac() or ipam.mac_for(address)
            plugged = ep.evolve(endpoint_id=new_id(), address=str(address), mac=mac,
                                host_if=_veth_name(ep.container_id, net.id), ifname=ifname,
                                address6=str(address6) if address6 is not None else None)
            try:
                await self._save_runtime(plugged)
            except BaseException:
                pool.release(address)
                if pool6 is not None and address6 is not None:
                    pool6.release(address6)
                raise
            self._endpoints[(ep.container_id, ep.network_id)] = plugged
        subnet, subnet6 = net.ipv4, net.ipv6
        plumbing = bridge.Plumbing(
            netns=netns, host_if=plugged.host_if or "", bridge=net.bridge, ifname=ifname,
            address=str(address), prefixlen=subnet.subnet.prefixlen, mac=mac,
            gateway=str(subnet.gateway) if first and not net.internal else None, mtu=net.mtu,
            address6=plugged.address6,
            prefixlen6=subnet6.subnet.prefixlen if subnet6 is not None else 0,
            # dockerd routes IPv6 via the gateway even on an internal network (measured)
            gateway6=str(subnet6.gateway) if first6 and subnet6 is not None else None,
        )
        try:
            await asyncio.to_thread(bridge.plumb, plumbing)
        except OSError as exc:
            await self._release_endpoint(plugged)
            raise SystemError_(f"failed to set up container networking: {exc}") from None

    async def _save_runtime(self, ep: Endpoint) -> None:
        await self._db.execute(
            "UPDATE endpoints SET endpoint_id = ?, address = ?, mac = ?, host_if = ?, "
            "ifname = ?, address6 = ? WHERE container_id = ? AND network_id = ?",
            (ep.endpoint_id, ep.address, ep.mac, ep.host_if, ep.ifname, ep.address6,
             ep.container_id, ep.network_id),
        )

    async def _release_endpoint(self, ep: Endpoint) -> None:
        """Delete the veth and give the address back (row first: never handed out twice
        while the old one is still configured, since the link is gone before a reuse)."""
        if ep.host_if:
            try:
                await asyncio.to_thread(bridge.unplumb, ep.host_if)
            except OSError as exc:
                log.warning("removing %s: %s", ep.host_if, exc)
        cleared = ep.evolve(endpoint_id=None, address=None, mac=None, host_if=None, ifname=None,
                            address6=None)
        await self._save_runtime(cleared)
        key = (ep.container_id, ep.network_id)
        if key in self._endpoints:
            self._endpoints[key] = cleared
        pool = self._pools.get(ep.network_id)
        if pool is not None and ep.address:
            pool.release(ipaddress.IPv4Address(ep.address))
        pool6 = self._pools6.get(ep.network_id)
        if pool6 is not None and ep.address6:
            pool6.release(ipaddress.IPv6Address(ep.address6))

    @timed("release")
    async def unplug(self, container_id: str) -> None:
        """Release everything a run of the container held. Idempotent."""
        await self._resolver.stop(container_id)
        self._holder.release(container_id)
        for ep in self.endpoints_of(container_id):
            if ep.plugged:
                await self._release_endpoint(ep)
        if self._sandboxes.pop(container_id, None) is not None:
            await self._db.execute("DELETE FROM sandboxes WHERE container_id = ?",
                                   (container_id,))
            await self._apply_rules()

    # ------------------------------------------------------------------ connect
    @timed("connect")
    async def connect(self, container_id: str, container_name: str, mode: str, ref: str,
                      settings: Mapping[str, Any], netns: Path | None) -> None:
        """``docker network connect``; ``netns`` is the container's when it runs."""
        net = self.get(ref)
        base = network_mode_name(mode)
        if base is None or base in ("host", "none") or not net.is_bridge:
            raise Forbidden(
                "container cannot be disconnected from host network or connected to host "
                "network" if net.name == "host" or base == "host" else
                f"container sharing network namespace with another container or a network "
                f"of type {net.driver} cannot be connected to network {net.name}"
            )
        if (container_id, net.id) in self._endpoints:
            raise Forbidden(
                f"endpoint with name {container_name} already exists in network {net.name}"
            )
        self._check_endpoint_settings(net, settings)
        existing = self.endpoints_of(container_id)
        seq = max((e.seq for e in existing), default=-1) + 1
        ep = Endpoint(container_id, net.id, container_name, dict(settings), seq)
        await self._insert_endpoint(ep)
        if netns is None:
            return
        try:
            ifname = await asyncio.to_thread(bridge.next_ifname, netns)
            await self._plug_endpoint(ep, netns, ifname,
                                      first=not any(e.plugged for e in existing),
                                      first6=not any(e.address6 for e in existing))
            if net.user_defined:
                await self._resolver.serve(container_id, netns)
            await self._apply_rules()
        except BaseException:
            await self._drop_endpoint(ep)
            raise
        self._events.emit("network", "connect", net.id,
                          {"container": container_id, "name": net.name, "type": "bridge"})

    async def _drop_endpoint(self, ep: Endpoint) -> None:
        current = self._endpoints.get((ep.container_id, ep.network_id), ep)
        if current.plugged:
            await self._release_endpoint(current)
        await self._db.execute(
            "DELETE FROM endpoints WHERE container_id = ? AND network_id = ?",
            (ep.container_id, ep.network_id),
        )
        self._endpoints.pop((ep.container_id, ep.network_id), None)

    @timed("disconnect")
    async def disconnect(self, container_id: str, ref: str, netns: Path | None) -> None:
        net = self.get(ref)
        if net.name == "host":
            raise Forbidden("container cannot be disconnected from host network or "
                            "connected to host network")
        ep = self._endpoints.get((container_id, net.id))
        if ep is None:
            raise Forbidden(f"container {container_id} is not connected to network {net.name}")
        await self._drop_endpoint(ep)
        remaining = [e for e in self.endpoints_of(container_id) if e.plugged]
        if netns is not None and remaining:
            # The lowest connected network keeps (or takes over) the default route; the
            # lowest one with IPv6 the IPv6 default route.
            gw_ep = remaining[0]
            gw_net = self._networks[gw_ep.network_id]
            gateway = None if gw_net.internal else str(gw_net.ipv4.gateway)
            await asyncio.to_thread(bridge.set_default_route, netns, gw_ep.ifname or "",
                                    gateway, self._ipv6_route(remaining))
        if not any(self._networks[e.network_id].user_defined for e in remaining):
            await self._resolver.stop(container_id)
        await self._apply_rules()
        self._events.emit("network", "disconnect", net.id,
                          {"container": container_id, "name": net.name, "type": "bridge"})

    def _ipv6_route(self, plugged: Sequence[Endpoint]) -> tuple[str, str] | None:
        """(interface, gateway) of the first of ``plugged`` with an IPv6 address."""
        for ep in plugged:
            subnet6 = self._networks[ep.network_id].ipv6
            if ep.address6 and subnet6 is not None:
                return ep.ifname or "", str(subnet6.gateway)
        return None

    # ------------------------------------------------------------------ rules, DNS
    async def _apply_rules(self) -> None:
        async with self._lock:
            await self._apply_rules_locked()

    async def _apply_rules_locked(self) -> None:
        if not self._config.iptables:
            return
        bridges = [
            firewall.BridgeRules(n.bridge, str(n.ipv4.subnet),
                                 n.masquerade and self._config.ip_masq, n.internal, n.icc,
                                 str(n.ipv6.subnet) if n.ipv6 is not None else None)
            for n in self._networks.values() if n.is_bridge
        ]
        rules: list[firewall.PortRule] = []
        for cid, box in self._sandboxes.items():
            target = next((e for e in self.endpoints_of(cid) if e.plugged), None)
            if target is None or target.address is None:
                continue
            for b in box.bindings:
                v6 = ports.is_ipv6(b.host_ip)
                container_ip = target.address6 if v6 else target.address
                if container_ip is None:
                    continue  # an IPv6 host address, and the container has no IPv6
                rules.append(firewall.PortRule(
                    b.proto, None if b.host_ip == ports.wildcard(b.host_ip) else b.host_ip,
                    b.host_port, container_ip, b.container_port))
        batch = firewall.build(self._table, bridges, rules)
        if batch == self._applied:
            return
        await firewall.apply(batch)
        self._applied = batch

    def _lookup(self, asker: str, name: str) -> list[str] | None:
        """Names on the user-defined networks the asking container is plugged into."""
        found: list[str] = []
        for mine in self.endpoints_of(asker):
            net = self._networks.get(mine.network_id)
            if net is None or not net.user_defined or not mine.plugged:
                continue
            linked = _scoped_link_target(mine.config.get("Links"), name)
            for ep in self.active_endpoints(net.id):
                if not ep.address:
                    continue
                if name in (n.lower() for n in ep.dns_names()) or (
                        linked is not None and ep.container_name.lstrip("/") == linked):
                    found.extend(ep.addresses())
        return list(dict.fromkeys(found)) or None

    def _upstreams(self, container_id: str) -> list[str]:
        box = self._sandboxes.get(container_id)
        if box is not None and box.dns:
            return box.dns
        return list(self._config.dns) or self._host_dns

    # ------------------------------------------------------------------ inspect
    def gateway_of(self, container_id: str) -> str | None:
        """The first bridge gateway of a running container (``host-gateway``)."""
        for ep in self.endpoints_of(container_id):
            if ep.plugged:
                return str(self._networks[ep.network_id].subnets[0].gateway)
        default = next(n for n in self._networks.values() if n.name == "bridge")
        return str(default.subnets[0].gateway)

    def default_bridge_endpoint(self, container_id: str) -> Endpoint | None:
        """The container's membership of the predefined ``bridge`` network, if any:
        legacy links (their environment variables) exist only there."""
        for ep in self.endpoints_of(container_id):
            net = self._networks.get(ep.network_id)
            if net is not None and net.name == "bridge":
                return ep
        return None

    def addresses_of(self, container_id: str) -> list[str]:
        """Per network, IPv4 then IPv6 (the /etc/hosts lines dockerd writes)."""
        return [a for e in self.endpoints_of(container_id) for a in e.addresses()]

    def uses_embedded_dns(self, container_id: str) -> bool:
        return any(self._networks[e.network_id].user_defined
                   for e in self.endpoints_of(container_id) if e.network_id in self._networks)

    def network_names_of(self, container_id: str) -> list[str]:
        return [self._networks[e.network_id].name for e in self.endpoints_of(container_id)]

    def bindings_of(self, container_id: str) -> list[ports.Binding]:
        box = self._sandboxes.get(container_id)
        return list(box.bindings) if box is not None else []

    def sandbox_key(self, container_id: str) -> str:
        box = self._sandboxes.get(container_id)
        return str(box.netns) if box is not None else ""

    def endpoint_settings(self, ep: Endpoint) -> dict[str, Any]:
        net = self._networks[ep.network_id]
        subnet = net.subnets[0] if net.subnets else None
        subnet6 = net.ipv6 if ep.address6 else None
        ipam_config = ep.config.get("IPAMConfig") or None
        return {
            "IPAMConfig": ipam_config,
            "Links": ep.config.get("Links") or None,
            "Aliases": ep.aliases or None,
            # a MAC asked for shows before the container runs, as dockerd (API >= 1.44)
            "MacAddress": ep.mac or ep.wanted_mac() or "",
            "DriverOpts": ep.config.get("DriverOpts") or None,
            "GwPriority": int(ep.config.get("GwPriority") or 0),
            "NetworkID": net.id,
            "EndpointID": ep.endpoint_id or "",
            "Gateway": str(subnet.gateway) if ep.plugged and subnet else "",
            "IPAddress": ep.address or "",
            "IPPrefixLen": subnet.subnet.prefixlen if ep.plugged and subnet else 0,
            "IPv6Gateway": str(subnet6.gateway) if subnet6 is not None else "",
            "GlobalIPv6Address": ep.address6 or "",
            "GlobalIPv6PrefixLen": subnet6.subnet.prefixlen if subnet6 is not None else 0,
            "DNSNames": ep.dns_names() if net.user_defined else None,
        }


def _requested_subnets(
    configs: Sequence[Mapping[str, Any]], enable_ipv6: bool,
) -> tuple[ipam.SubnetConfig | None, ipam.SubnetConfig | None]:
    """The IPv4 and IPv6 entries of a create request's ``IPAM.Config`` (each optional:
    the IPv4 subnet then comes from the default pools)."""
    parsed = [ipam.subnet_config(c) for c in configs if c.get("Subnet")]
    v4 = [c for c in parsed if c.version == 4]
    v6 = [c for c in parsed if c.version == 6]
    if len(v4) > 1 or len(v6) > 1:
        raise Forbidden("bridge driver doesn't support multiple subnets")
    if enable_ipv6 and not v6:
        # dockerd 20.10 has no default IPv6 pools; its answer is a 404
        raise NotFound("could not find an available, non-overlapping IPv6 address pool "
                       "among the defaults to assign to the network")
    return (v4[0] if v4 else None), (v6[0] if v6 else None)


def _check_wanted_ipv6(net: Network, wanted: str) -> None:
    """``--ip6``: checked at create as ``--ip`` is (dockerd checks some of it only at
    start, with the same messages)."""
    if not wanted:
        return
    try:
        address = ipaddress.IPv6Address(wanted)
    except ValueError:
        raise InvalidParameter(f"invalid IPv6 address: {wanted}") from None
    if not net.user_defined:
        raise InvalidParameter(
            "user specified IP address is supported on user defined networks only")
    configured = net.configured_ipv6
    if configured is None:
        raise InvalidParameter("user specified IP address is supported only when connecting "
                               "to networks with user configured subnets")
    if address not in configured.subnet:
        raise InvalidParameter(
            f"Invalid address {wanted}: It does not belong to any of this network's subnets")


def _label_matches(labels: Mapping[str, str], wanted: str) -> bool:
    key, sep, value = wanted.partition("=")
    if key not in labels:
        return False
    return not sep or labels[key] == value


def host_nameservers(path: Path = Path("/etc/resolv.conf")) -> list[str]:
    """The host's resolvers reachable from the daemon (loopback ones are not, from a
    container's point of view, but we forward from the daemon's namespace)."""
    try:
        text = path.read_text()
    except OSError:
        return []
    servers = []
    for line in text.splitlines():
        words = line.split()
        if len(words) > 1 and words[0] == "nameserver":
            servers.append(words[1])
    return servers
