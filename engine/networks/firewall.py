"""nftables rules of one daemon: tables of our own, replaced whole in one atomic batch.

The table (``ip wharfd_<id>``) is rebuilt from the manager's state on every change:
``add table; delete table; add table; …chains and rules…`` is a single netlink
transaction, so there is never a moment without rules and no rule of anyone else is
touched. The JSON batch goes to ``nft -j -f -``. While an IPv6 network exists, an
``ip6 wharfd_<id>`` table of the same shape is rebuilt in that same batch (and deleted
in it when the last one goes): the IPv4 table stays as it was, so a daemon upgraded
while containers run finds exactly the table it expects.

  prerouting/output (nat)  traffic to a local address → ``ports`` (DNAT of published
                           ports; output covers the daemon namespace's own loopback,
                           which needs route_localnet on the bridges)
  postrouting (nat)        MASQUERADE of traffic leaving a network, of loopback
                           sources DNATed into a bridge, and of hairpin connections
  forward (filter)         isolation between bridge networks; internal networks

The IPv6 table has the same chains: DNAT of published ports to containers' IPv6
addresses (not from ``[::1]``: the kernel never routes a loopback source out of a
bridge, and IPv6 has no route_localnet; dockerd's does not work either), hairpin
masquerade, isolation, internal and ``enable_icc=false``. No masquerade of IPv6 traffic
leaving a network: like dockerd without ``--ip6tables``, IPv6 subnets are routed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.errors import SystemError_

FAMILY = "ip"
FAMILY6 = "ip6"


@dataclass(frozen=True)
class BridgeRules:
    bridge: str
    subnet: str          # CIDR
    masquerade: bool
    internal: bool
    icc: bool
    subnet6: str | None = None  # CIDR, on a network with EnableIPv6


@dataclass(frozen=True)
class PortRule:
    proto: str           # tcp | udp
    host_ip: str | None  # None: every local address
    host_port: int
    container_ip: str    # an IPv6 address puts the rule in the IPv6 table
    container_port: int

    @property
    def ipv6(self) -> bool:
        return ":" in self.container_ip


def _match(left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _payload(protocol: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": field}}


def _prefix(cidr: str) -> dict[str, Any]:
    addr, _, length = cidr.partition("/")
    return {"prefix": {"addr": addr, "len": int(length or 32)}}


class Ruleset:
    def __init__(self, table: str, family: str = FAMILY) -> None:
        self.table = table
        self.family = family
        self.commands: list[dict[str, Any]] = []

    @property
    def proto(self) -> str:
        """The network-layer payload protocol of this family's rules."""
        return "ip6" if self.family == FAMILY6 else "ip"

    def chain(self, name: str, hook: str | None = None, kind: str = "nat",
              prio: int = 0) -> None:
        spec: dict[str, Any] = {"family": self.family, "table": self.table, "name": name}
        if hook is not None:
            spec.update(type=kind, hook=hook, prio=prio, policy="accept")
        self.commands.append({"add": {"chain": spec}})

    def rule(self, chain: str, *expr: dict[str, Any]) -> None:
        self.commands.append({"add": {"rule": {
            "family": self.family, "table": self.table, "chain": chain, "expr": list(expr),
        }}})


def build(table: str, bridges: Sequence[BridgeRules], ports: Sequence[PortRule]) -> dict[str, Any]:
    """The whole batch: replace the tables with ones describing ``bridges`` and ``ports``."""
    v4 = _table(Ruleset(table), bridges, [p for p in ports if not p.ipv6])
    ident6 = {"family": FAMILY6, "name": table}
    bridges6 = [b for b in bridges if b.subnet6 is not None]
    if bridges6:
        all_names = [b.bridge for b in bridges]
        v6 = _table(Ruleset(table, FAMILY6), bridges6, [p for p in ports if p.ipv6],
                    all_names)
    else:  # no IPv6 network (left): make sure no IPv6 table of ours stays
        v6 = [{"add": {"table": ident6}}, {"delete": {"table": ident6}}]
    return {"nftables": [{"metainfo": {"json_schema_version": 1}}, *v4, *v6]}


def _table(rs: Ruleset, bridges: Sequence[BridgeRules], ports: Sequence[PortRule],
           all_bridges: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One family's table, replaced: its commands. ``all_bridges`` names every bridge
    (the IPv6 table isolates its bridges from IPv4-only ones too)."""
    ident = {"family": rs.family, "name": rs.table}
    rs.commands += [{"add": {"table": ident}}, {"delete": {"table": ident}},
                    {"add": {"table": ident}}]
    rs.chain("ports")
    rs.chain("prerouting", "prerouting", prio=-100)
    rs.chain("output", "output", prio=-100)
    rs.chain("postrouting", "postrouting", prio=100)
    rs.chain("forward", "forward", kind="filter", prio=0)
    local = _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local")
    rs.rule("prerouting", local, {"jump": {"target": "ports"}})
    rs.rule("output", local, {"jump": {"target": "ports"}})
    for port in ports:
        _port_rule(rs, port)
    names = list(all_bridges) if all_bridges is not None else [b.bridge for b in bridges]
    for b in bridges:
        _bridge_rules(rs, b, names)
    return rs.commands


def _port_rule(rs: Ruleset, port: PortRule) -> None:
    expr: list[dict[str, Any]] = []
    if port.host_ip is not None:
        expr.append(_match(_payload(rs.proto, "daddr"), port.host_ip))
    expr.append(_match(_payload(port.proto, "dport"), port.host_port))
    expr.append({"dnat": {"addr": port.container_ip, "port": port.container_port}})
    rs.rule("ports", *expr)


def _bridge_rules(rs: Ruleset, b: BridgeRules, all_bridges: Sequence[str]) -> None:
    out_br = _match(_meta("oifname"), b.bridge)
    in_br = _match(_meta("iifname"), b.bridge)
    v6 = rs.family == FAMILY6
    # Loopback clients DNATed into the bridge, and hairpin (a container reaching its own
    # network's published port): the reply must come back through us.
    if not v6:
        rs.rule("postrouting", out_br,
                _match(_payload("ip", "saddr"), _prefix("127.0.0.0/8")), {"masquerade": None})
    rs.rule("postrouting", out_br, in_br,
            _match({"ct": {"key": "status"}}, "dnat", op="in"), {"masquerade": None})
    if b.masquerade and not b.internal and not v6:
        rs.rule("postrouting", _match(_payload("ip", "saddr"), _prefix(b.subnet)),
                _match(_meta("oifname"), b.bridge, op="!="), {"masquerade": None})
    if b.internal:
        rs.rule("forward", in_br, _match(_meta("oifname"), b.bridge, op="!="), {"drop": None})
        rs.rule("forward", out_br, _match(_meta("iifname"), b.bridge, op="!="), {"drop": None})
        return
    others = [name for name in all_bridges if name != b.bridge]
    if others:
        rs.rule("forward", in_br, _match(_meta("oifname"), {"set": others}), {"drop": None})
    if not b.icc:
        rs.rule("forward", in_br, out_br, {"drop": None})


def delete_batch(table: str) -> dict[str, Any]:
    commands: list[dict[str, Any]] = []
    for family in (FAMILY, FAMILY6):
        ident = {"family": family, "name": table}
        commands += [{"add": {"table": ident}}, {"delete": {"table": ident}}]
    return {"nftables": commands}


async def apply(batch: dict[str, Any]) -> None:
    """Run one batch through ``nft -j -f`` (all or nothing).

    The batch is handed over in a memfd: nft opens /dev/stdin by path, which fails on
    the socket pairs an event loop uses for a child's stdin.
    """
    nft = shutil.which("nft") or "/usr/sbin/nft"
    fd = os.memfd_create("wharfd-nft", os.MFD_CLOEXEC)
    try:
        os.write(fd, json.dumps(batch).encode())
        os.lseek(fd, 0, os.SEEK_SET)
        proc = await asyncio.create_subprocess_exec(
            nft, "-j", "-f", "/dev/stdin", stdin=fd,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
    finally:
        os.close(fd)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise SystemError_(f"nftables: {err.decode(errors='replace').strip()}")
