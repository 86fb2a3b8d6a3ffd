"""nftables rules of one daemon: one table of our own, replaced whole in one atomic batch.

The table (``ip wharfd_<id>``) is rebuilt from the manager's state on every change:
``add table; delete table; add table; …chains and rules…`` is a single netlink
transaction, so there is never a moment without rules and no rule of anyone else is
touched. The JSON batch goes to ``nft -j -f -``.

  prerouting/output (nat)  traffic to a local address → ``ports`` (DNAT of published
                           ports; output covers the daemon namespace's own loopback,
                           which needs route_localnet on the bridges)
  postrouting (nat)        MASQUERADE of traffic leaving a network, of loopback
                           sources DNATed into a bridge, and of hairpin connections
  forward (filter)         isolation between bridge networks; internal networks
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


@dataclass(frozen=True)
class BridgeRules:
    bridge: str
    subnet: str          # CIDR
    masquerade: bool
    internal: bool
    icc: bool


@dataclass(frozen=True)
class PortRule:
    proto: str           # tcp | udp
    host_ip: str | None  # None: every local address
    host_port: int
    container_ip: str
    container_port: int


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
    def __init__(self, table: str) -> None:
        self.table = table
        self.commands: list[dict[str, Any]] = []

    def chain(self, name: str, hook: str | None = None, kind: str = "nat",
              prio: int = 0) -> None:
        spec: dict[str, Any] = {"family": FAMILY, "table": self.table, "name": name}
        if hook is not None:
            spec.update(type=kind, hook=hook, prio=prio, policy="accept")
        self.commands.append({"add": {"chain": spec}})

    def rule(self, chain: str, *expr: dict[str, Any]) -> None:
        self.commands.append({"add": {"rule": {
            "family": FAMILY, "table": self.table, "chain": chain, "expr": list(expr),
        }}})


def build(table: str, bridges: Sequence[BridgeRules], ports: Sequence[PortRule]) -> dict[str, Any]:
    """The whole batch: replace the table with one describing ``bridges`` and ``ports``."""
    ident = {"family": FAMILY, "name": table}
    rs = Ruleset(table)
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
    names = [b.bridge for b in bridges]
    for b in bridges:
        _bridge_rules(rs, b, names)
    return {"nftables": [{"metainfo": {"json_schema_version": 1}}, *rs.commands]}


def _port_rule(rs: Ruleset, port: PortRule) -> None:
    expr: list[dict[str, Any]] = []
    if port.host_ip is not None:
        expr.append(_match(_payload("ip", "daddr"), port.host_ip))
    expr.append(_match(_payload(port.proto, "dport"), port.host_port))
    expr.append({"dnat": {"addr": port.container_ip, "port": port.container_port}})
    rs.rule("ports", *expr)


def _bridge_rules(rs: Ruleset, b: BridgeRules, all_bridges: Sequence[str]) -> None:
    out_br = _match(_meta("oifname"), b.bridge)
    in_br = _match(_meta("iifname"), b.bridge)
    # Loopback clients DNATed into the bridge, and hairpin (a container reaching its own
    # network's published port): the reply must come back through us.
    rs.rule("postrouting", out_br, _match(_payload("ip", "saddr"), _prefix("127.0.0.0/8")),
            {"masquerade": None})
    rs.rule("postrouting", out_br, in_br,
            _match({"ct": {"key": "status"}}, "dnat", op="in"), {"masquerade": None})
    if b.masquerade and not b.internal:
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
    ident = {"family": FAMILY, "name": table}
    return {"nftables": [{"add": {"table": ident}}, {"delete": {"table": ident}}]}


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
