"""IPv6 in the pure network logic: IPAM subnets and pools, AAAA answers, the ip6 table."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from engine.errors import Conflict, Forbidden, InvalidParameter, NotFound
from engine.networks import dns, firewall, ipam, ports
from engine.networks.manager import _requested_subnets

V6 = ipaddress.IPv6Address


def cfg(**entry: object) -> ipam.SubnetConfig:
    return ipam.subnet_config(entry)


def test_ipv6_subnet_gateway_and_wire_shape() -> None:
    plain = cfg(Subnet="2001:db8:1::/64")
    assert plain.version == 6 and plain.gateway == V6("2001:db8:1::1")
    # dockerd shows an IPv6 gateway only when it was given
    assert plain.to_wire() == {"Subnet": "2001:db8:1::/64"}
    given = cfg(Subnet="2001:db8:1::/64", Gateway="2001:db8:1::fe")
    assert given.to_wire() == {"Subnet": "2001:db8:1::/64", "Gateway": "2001:db8:1::fe"}
    # from the ip-range's first address, as dockerd's IPAM hands it out
    ranged = cfg(Subnet="2001:db8:1::/64", IPRange="2001:db8:1::100/120")
    assert ranged.gateway == V6("2001:db8:1::100")
    # the stored form gives the same config back
    assert ipam.subnet_config(ranged.to_wire()) == ranged
    # IPv4 entries keep showing theirs
    assert cfg(Subnet="10.1.0.0/24").to_wire()["Gateway"] == "10.1.0.1"


@pytest.mark.parametrize("entry,fragment", [
    ({"Subnet": "2001:db8::/129"}, "invalid subnet 2001:db8::/129"),
    ({"Subnet": "2001:zz::/64"}, "invalid subnet 2001:zz::/64"),
    ({"Subnet": "2001:db8::/64", "Gateway": "2001:db9::1"}, "invalid gateway 2001:db9::1"),
    ({"Subnet": "2001:db8::/64", "Gateway": "10.0.0.1"}, "invalid gateway 10.0.0.1"),
    ({"Subnet": "2001:db8::/64", "IPRange": "10.0.0.0/24"}, "invalid ip-range"),
    ({"Subnet": "2001:db8::/64", "IPRange": "2001:db9::/80"}, "invalid ip-range"),
])
def test_bad_ipv6_subnets_are_400(entry: dict[str, object], fragment: str) -> None:
    with pytest.raises(InvalidParameter, match=fragment):
        ipam.subnet_config(entry)


def test_overlap_only_within_a_family() -> None:
    with pytest.raises(Forbidden, match="Pool overlaps"):
        ipam.check_overlap(ipaddress.ip_network("2001:db8::/32"),
                           [ipaddress.ip_network("2001:db8:5::/64")])
    ipam.check_overlap(ipaddress.ip_network("2001:db8::/32"),
                       [ipaddress.ip_network("10.0.0.0/8")])


def test_requested_subnets() -> None:
    v4, v6 = _requested_subnets([{"Subnet": "fd00::/64"}, {"Subnet": "10.9.0.0/24"}], True)
    assert v4 is not None and str(v4.subnet) == "10.9.0.0/24"
    assert v6 is not None and str(v6.subnet) == "fd00::/64"
    with pytest.raises(NotFound, match="non-overlapping IPv6 address pool"):
        _requested_subnets([{"Subnet": "10.9.0.0/24"}], True)
    with pytest.raises(Forbidden, match="bridge driver doesn't support multiple subnets"):
        _requested_subnets([{"Subnet": "fd00::/64"}, {"Subnet": "fd01::/64"}], True)
    # a v6 subnet without EnableIPv6 is kept (dockerd shows it, uses none of it)
    assert _requested_subnets([{"Subnet": "fd00::/64"}], False)[1] is not None


def test_ipv6_pool_has_no_broadcast_and_reuses_late() -> None:
    pool = ipam.Pool(cfg(Subnet="fd00::/125"))
    got = [str(pool.allocate(None, "n (id)")) for _ in range(6)]
    assert got == [f"fd00::{n}" for n in range(2, 8)]
    with pytest.raises(Conflict, match=r"no available IPv6 addresses on this network's "
                                       r"address pools: n \(id\)"):
        pool.allocate(None, "n (id)")
    pool.release(V6("fd00::3"))
    assert pool.allocate(None, "n") == V6("fd00::3")
    with pytest.raises(Conflict, match="Address already in use"):
        pool.allocate(V6("fd00::1"), "n")  # the gateway
    with pytest.raises(InvalidParameter, match="does not belong"):
        pool.allocate(V6("fd01::1"), "n")


def test_ipv6_pool_in_a_huge_subnet_is_quick() -> None:
    pool = ipam.Pool(cfg(Subnet="2001:db8::/64"))
    pool.mark(V6("2001:db8::2"))
    assert pool.allocate(None, "n") == V6("2001:db8::3")


def _query(name: str, qtype: int) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + labels + b"\0" + \
        struct.pack("!HH", qtype, 1)


def test_dns_answers_by_family() -> None:
    addresses = ["172.28.0.3", "2001:db8:2::42"]
    q6 = _query("web", dns.TYPE_AAAA)
    question = dns.parse_question(q6)
    assert question is not None
    reply = dns.answer(q6, question, addresses)
    assert struct.unpack("!H", reply[6:8])[0] == 1
    assert reply[-18:-16] == b"\x00\x10"  # RDLENGTH 16
    assert reply.endswith(socket.inet_pton(socket.AF_INET6, "2001:db8:2::42"))
    q4 = _query("web", dns.TYPE_A)
    question = dns.parse_question(q4)
    assert question is not None
    reply = dns.answer(q4, question, addresses)
    assert struct.unpack("!H", reply[6:8])[0] == 1
    assert reply.endswith(socket.inet_aton("172.28.0.3"))
    # a name of ours with no IPv6 address: NOERROR, no answer
    reply = dns.answer(q6, dns.parse_question(q6) or question, ["10.0.0.1"])
    assert struct.unpack("!H", reply[6:8])[0] == 0 and reply[3] & 0x0F == 0


def test_firewall_ipv6_table_only_with_ipv6_networks() -> None:
    v4_only = firewall.build("wharfd_x", [firewall.BridgeRules("b0", "172.17.0.0/16", True,
                                                               False, True)], [])
    tail = v4_only["nftables"][-2:]
    assert tail == [{"add": {"table": {"family": "ip6", "name": "wharfd_x"}}},
                    {"delete": {"table": {"family": "ip6", "name": "wharfd_x"}}}]
    batch = firewall.build(
        "wharfd_x",
        [firewall.BridgeRules("b0", "172.17.0.0/16", True, False, True),
         firewall.BridgeRules("b1", "172.18.0.0/16", True, False, True, "fd00:1::/64")],
        [firewall.PortRule("tcp", None, 8080, "172.18.0.2", 80),
         firewall.PortRule("tcp", None, 8080, "fd00:1::2", 80)],
    )
    commands = batch["nftables"][1:]
    v6 = [c for c in commands if "ip6" in str(c)]
    v4 = [c for c in commands if c not in v6]
    assert "fd00:1::2" in str(v6) and "fd00:1::2" not in str(v4)
    # IPv6 isolation: b1's traffic to the other bridges is dropped in the ip6 table
    assert any("forward" in str(c) and "b0" in str(c) and "drop" in str(c) for c in v6)
    # no IPv6 masquerade of traffic leaving the network (only the hairpin one)
    assert not any("fd00:1::/64" in str(c) and "masquerade" in str(c) for c in v6)
    # the IPv4 table is the one it always was
    assert v4[:3] == [{"add": {"table": {"family": "ip", "name": "wharfd_x"}}},
                      {"delete": {"table": {"family": "ip", "name": "wharfd_x"}}},
                      {"add": {"table": {"family": "ip", "name": "wharfd_x"}}}]
    deleted = firewall.delete_batch("wharfd_x")["nftables"]
    assert {c["delete"]["table"]["family"] for c in deleted if "delete" in c} == {"ip", "ip6"}


def test_port_holder_ipv6_wildcard_next_to_ipv4() -> None:
    holder = ports.PortHolder()
    try:
        first = holder.hold("a", ports.Request(80, "tcp", "0.0.0.0", None))
        port = first.host_port
        # "::" is IPv6 only: the same port as 0.0.0.0's is free for it
        held = holder.hold("a", ports.Request(80, "tcp", "::", (port, port)))
        assert (held.host_ip, held.host_port) == ("::", port)
        with pytest.raises(Exception, match=r"Bind for :::\d+ failed: port is already"):
            holder.hold("b", ports.Request(80, "tcp", "::", (port, port)))
    finally:
        holder.close()
