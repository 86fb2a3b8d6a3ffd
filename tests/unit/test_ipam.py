"""Pure network logic: IPAM, port specs, DNS messages, the nftables batch."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from engine.errors import Conflict, Forbidden, InvalidParameter
from engine.networks import dns, firewall, ipam, ports


def cfg(**entry: object) -> ipam.SubnetConfig:
    return ipam.subnet_config(entry)


def test_subnet_defaults_gateway_to_first_host() -> None:
    c = cfg(Subnet="10.50.0.0/24")
    assert str(c.gateway) == "10.50.0.1"


@pytest.mark.parametrize("entry,fragment", [
    ({"Subnet": "300.1.1.0/24"}, "invalid subnet 300.1.1.0/24"),
    ({"Subnet": "10.0.0.0/33"}, "invalid subnet 10.0.0.0/33"),
    ({"Subnet": "10.0.0.1/24"}, "it should be 10.0.0.0/24"),
    ({"Subnet": "10.0.0.0/24", "Gateway": "10.0.1.1"}, "invalid gateway 10.0.1.1"),
    ({"Subnet": "10.0.0.0/24", "IPRange": "10.0.1.0/25"}, "invalid ip-range"),
    ({"Subnet": "10.0.0.0/24", "AuxiliaryAddresses": {"a": "10.9.9.9"}}, "auxiliary"),
])
def test_bad_subnets_are_400(entry: dict[str, object], fragment: str) -> None:
    with pytest.raises(InvalidParameter, match=fragment):
        ipam.subnet_config(entry)


def test_overlap_is_403() -> None:
    with pytest.raises(Forbidden, match="Pool overlaps with other one on this address space"):
        ipam.check_overlap(ipaddress.IPv4Network("10.1.0.0/16"),
                           [ipaddress.IPv4Network("10.1.2.0/24")])


def test_pick_subnet_skips_used() -> None:
    used = [ipaddress.IPv4Network("172.17.0.0/16"), ipaddress.IPv4Network("172.18.0.0/16")]
    assert str(ipam.pick_subnet(ipam.DEFAULT_POOLS, used)) == "172.19.0.0/16"


def test_pool_allocates_in_order_skipping_reserved_and_taken() -> None:
    pool = ipam.Pool(cfg(Subnet="10.0.0.0/29", AuxiliaryAddresses={"x": "10.0.0.3"}))
    pool.mark(ipaddress.IPv4Address("10.0.0.2"))
    got = [str(pool.allocate(None, "n")) for _ in range(3)]
    assert got == ["10.0.0.4", "10.0.0.5", "10.0.0.6"]
    with pytest.raises(Conflict, match="no available IPv4 addresses"):
        pool.allocate(None, "n (id)")


def test_pool_exhausted_then_free_again() -> None:
    pool = ipam.Pool(cfg(Subnet="10.50.0.0/30"))
    first = pool.allocate(None, "n")
    assert str(first) == "10.50.0.2"
    with pytest.raises(Conflict, match=r"no available IPv4 addresses on this network's "
                                       r"address pools: n"):
        pool.allocate(None, "n")
    pool.release(first)
    assert pool.allocate(None, "n") == first


def test_pool_fixed_address_rules() -> None:
    pool = ipam.Pool(cfg(Subnet="10.0.0.0/24", IPRange="10.0.0.128/25"))
    assert str(pool.allocate(ipaddress.IPv4Address("10.0.0.5"), "n")) == "10.0.0.5"
    with pytest.raises(Conflict):
        pool.allocate(ipaddress.IPv4Address("10.0.0.5"), "n")
    with pytest.raises(InvalidParameter, match="does not belong"):
        pool.allocate(ipaddress.IPv4Address("10.1.0.5"), "n")
    assert str(pool.allocate(None, "n")) == "10.0.0.128"


def test_mac_from_address() -> None:
    assert ipam.mac_for(ipaddress.IPv4Address("172.17.0.2")) == "02:42:ac:11:00:02"


@pytest.mark.parametrize("exposed,bindings,bad", [
    (None, {"80/tcp": [{"HostIp": "", "HostPort": "70000"}]}, "70000"),
    ({"abc/tcp": {}}, None, "abc"),
    ({"80/xyz": {}}, None, "80/xyz"),
    (None, {"80/tcp": [{"HostIp": "999.1.1.1", "HostPort": "80"}]}, "999.1.1.1"),
])
def test_port_specs_b10(exposed: dict[str, object] | None, bindings: dict[str, object] | None,
                        bad: str) -> None:
    with pytest.raises(InvalidParameter, match=f'invalid port specification: "{bad}"'):
        ports.validate(exposed, bindings)


def test_port_requests_publish_all() -> None:
    reqs = ports.requests({"80/tcp": {}, "53/udp": {}}, {"80/tcp": [{"HostPort": "8080"}]}, True)
    assert (80, "tcp", (8080, 8080)) in [(r.container_port, r.proto, r.host_ports) for r in reqs]
    assert any(r.container_port == 53 and r.host_ports is None for r in reqs)


def test_port_holder_conflict() -> None:
    holder = ports.PortHolder()
    try:
        b = holder.hold("a", ports.Request(80, "tcp", "127.0.0.1", None))
        with pytest.raises(Exception, match="port is already allocated"):
            holder.hold("b", ports.Request(80, "tcp", "127.0.0.1", (b.host_port, b.host_port)))
        holder.release("a")
        holder.hold("b", ports.Request(80, "tcp", "127.0.0.1", (b.host_port, b.host_port)))
    finally:
        holder.close()


def _query(name: str, qtype: int = dns.TYPE_A) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + labels + b"\0" + \
        struct.pack("!HH", qtype, 1)


@pytest.mark.asyncio
async def test_resolver_answers_ours_and_servfails_the_rest() -> None:
    resolver = dns.Resolver(lambda cid, n: ["10.0.0.7"] if n == "web" else None,
                            lambda cid: [])
    reply = await resolver.resolve("c", _query("Web"))
    assert reply[:2] == b"\x12\x34" and struct.unpack("!H", reply[6:8])[0] == 1
    assert reply.endswith(socket.inet_aton("10.0.0.7"))
    aaaa = await resolver.resolve("c", _query("web", dns.TYPE_AAAA))
    assert struct.unpack("!H", aaaa[6:8])[0] == 0 and aaaa[3] & 0x0F == 0
    other = await resolver.resolve("c", _query("example.com"))
    assert other[3] & 0x0F == dns.RCODE_SERVFAIL


def test_firewall_batch_replaces_only_our_table() -> None:
    batch = firewall.build(
        "wharfd_x", [firewall.BridgeRules("b0", "172.17.0.0/16", True, False, True),
                     firewall.BridgeRules("b1", "172.18.0.0/16", True, False, True)],
        [firewall.PortRule("tcp", None, 8080, "172.17.0.2", 80)],
    )
    commands = batch["nftables"][1:]
    assert commands[:3] == [
        {"add": {"table": {"family": "ip", "name": "wharfd_x"}}},
        {"delete": {"table": {"family": "ip", "name": "wharfd_x"}}},
        {"add": {"table": {"family": "ip", "name": "wharfd_x"}}},
    ]
    tables = {c[k][kind].get("table", c[k][kind].get("name"))
              for c in commands for k in c for kind in c[k]}
    assert tables == {"wharfd_x"}
    assert any("dnat" in str(c) for c in commands)
