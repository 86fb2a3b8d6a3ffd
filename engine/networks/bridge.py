"""Links, addresses and routes with pyroute2 (netlink). Every function here blocks.

Bridges and the host ends of veth pairs live in the daemon's own network namespace.
Configuring a container's end needs a netlink socket inside the container's namespace:
a short-lived thread of our own joins that namespace with ``setns`` (only the calling
thread changes namespace), does the work and exits, so no pooled thread is ever left
in a foreign namespace.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

T = TypeVar("T")
# pyroute2 logs every netlink message at debug level: that would drown the daemon log.
logging.getLogger("pyroute2").setLevel(logging.WARNING)
_CLONE_NEWNET = 0x40000000
# ifaddrmsg flag: no duplicate address detection. dockerd adds container (and we also
# bridge) IPv6 addresses with it: a tentative address cannot be used for a second or
# so, and the addresses come from IPAM, so they are unique on the bridge anyway.
IFA_F_NODAD = 0x02
_AF_INET6 = 10
_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]


@dataclass(frozen=True)
class Plumbing:
    """One endpoint's veth pair: host end on ``bridge``, the other as ``ifname`` inside."""

    netns: Path
    host_if: str
    bridge: str
    ifname: str
    address: str
    prefixlen: int
    mac: str
    gateway: str | None  # default route via this address, when it is the first network
    mtu: int
    address6: str | None = None   # on a network with EnableIPv6
    prefixlen6: int = 0
    gateway6: str | None = None   # IPv6 default route (the first IPv6 network)


def _link_index(ip: IPRoute, name: str) -> int | None:
    found = ip.link_lookup(ifname=name)
    return int(found[0]) if found else None


def _write_sysctl(path: str, value: str) -> None:
    # /proc/sys/net is the namespace of the writing process: the daemon's own.
    try:
        with open(path, "w") as handle:
            handle.write(value)
    except OSError:
        pass


def enable_forwarding() -> None:
    _write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")


def enable_ipv6_forwarding() -> None:
    """Routing between an IPv6 bridge and the rest (published ports reached over IPv6
    from another namespace); dockerd turns it on too once an IPv6 network exists."""
    _write_sysctl("/proc/sys/net/ipv6/conf/all/forwarding", "1")


def enable_bridge_netfilter() -> None:
    """Frames between two ports of one bridge reach the ``ip`` family's forward hook (our
    enable_icc=false drop rule) only with br_netfilter's switch on; it is per namespace
    and usually on already, but nothing else would notice it off. dockerd sets it too."""
    _write_sysctl("/proc/sys/net/bridge/bridge-nf-call-iptables", "1")
    _write_sysctl("/proc/sys/net/bridge/bridge-nf-call-ip6tables", "1")


def ensure_bridge(name: str, address: str, prefixlen: int, mtu: int) -> None:
    """Create (or adopt) the bridge with its gateway address, up."""
    with IPRoute() as ip:
        index = _link_index(ip, name)
        if index is None:
            try:
                ip.link("add", ifname=name, kind="bridge", mtu=mtu)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise
            index = _link_index(ip, name)
        assert index is not None
        present = {
            (a.get_attr("IFA_ADDRESS"), a["prefixlen"])
            for a in ip.get_addr(index=index, family=2)
        }
        if (address, prefixlen) not in present:
            ip.addr("add", index=index, address=address, prefixlen=prefixlen)
        ip.link("set", index=index, state="up")
    # Published ports reached from the daemon namespace's 127.0.0.1 are DNATed to a
    # container: the kernel routes such packets out of the bridge only with this set.
    _write_sysctl(f"/proc/sys/net/ipv4/conf/{name}/route_localnet", "1")


def ensure_bridge_ipv6(name: str, address: str, prefixlen: int) -> None:
    """Give an existing bridge its IPv6 gateway address (EnableIPv6 networks)."""
    # The namespace's default may have IPv6 off; the address cannot be added then.
    _write_sysctl(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "0")
    with IPRoute() as ip:
        index = _link_index(ip, name)
        if index is None:
            raise OSError(errno.ENODEV, f"bridge {name} does not exist")
        present = {
            (a.get_attr("IFA_ADDRESS"), a["prefixlen"])
            for a in ip.get_addr(index=index, family=_AF_INET6)
        }
        if (address, prefixlen) not in present:
            _add_address6(ip, index, address, prefixlen)


def _add_address6(ip: IPRoute, index: int, address: str, prefixlen: int) -> None:
    try:
        ip.addr("add", index=index, address=address, prefixlen=prefixlen, family=_AF_INET6,
                flags=IFA_F_NODAD)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise


def delete_link(name: str) -> None:
    with IPRoute() as ip:
        index = _link_index(ip, name)
        if index is None:
            return
        try:
            ip.link("del", index=index)
        except NetlinkError as exc:
            if exc.code not in (errno.ENODEV, errno.ENOENT):
                raise


def _kind(link: Any) -> str:
    info = link.get_attr("IFLA_LINKINFO")
    return str(info.get_attr("IFLA_INFO_KIND") or "") if info is not None else ""


def veths_with_prefix(prefix: str) -> list[str]:
    """Host ends of veth pairs named ``prefix…`` (never a bridge or anything else)."""
    with IPRoute() as ip:
        links = [(str(link.get_attr("IFLA_IFNAME")), _kind(link)) for link in ip.get_links()]
    return [name for name, kind in links if kind == "veth" and name.startswith(prefix)]


def in_netns(netns: Path, work: Callable[[], T]) -> T:
    """Run ``work`` on a fresh thread that joined ``netns`` (see the module docstring)."""
    outcome: list[Any] = []

    def body() -> None:
        try:
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {netns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            outcome.append((True, work()))
        except BaseException as exc:  # handed to the caller, which re-raises
            outcome.append((False, exc))

    worker = threading.Thread(target=body, name="wharfd-netns", daemon=True)
    worker.start()
    worker.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def plumb(p: Plumbing) -> None:
    """Create the veth pair, attach the host end, configure the container end."""
    with IPRoute() as ip:
        bridge = _link_index(ip, p.bridge)
        if bridge is None:
            raise OSError(errno.ENODEV, f"bridge {p.bridge} does not exist")
        fd = os.open(p.netns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _add_veth(ip, p, bridge, fd)
        finally:
            os.close(fd)
        try:
            in_netns(p.netns, lambda: _configure_inside(p))
        except BaseException:
            index = _link_index(ip, p.host_if)
            if index is not None:
                ip.link("del", index=index)
            raise


def _add_veth(ip: IPRoute, p: Plumbing, bridge: int, netns_fd: int) -> None:
    """One request: the host end up on the bridge, the container end born inside its
    namespace with its final name and MAC. Moving a link into a namespace afterwards
    waits for an RCU grace period: 15 to 40 ms of every bridged start (measured, see
    docs/networking.md)."""
    spec: dict[str, Any] = {
        "ifname": p.host_if, "kind": "veth", "mtu": p.mtu, "master": bridge, "state": "up",
        "peer": {"ifname": p.ifname, "mtu": p.mtu, "address": p.mac, "net_ns_fd": netns_fd},
    }
    try:
        ip.link("add", **spec)
    except NetlinkError as exc:
        stale = _link_index(ip, p.host_if) if exc.code == errno.EEXIST else None
        if stale is None:
            raise
        # left by a crash between plumb and the commit of the endpoint row
        ip.link("del", index=stale)
        ip.link("add", **spec)


def _configure_inside(p: Plumbing) -> None:
    with IPRoute() as ip:
        index = _link_index(ip, p.ifname)
        if index is None:
            raise OSError(errno.ENODEV, f"{p.ifname} did not appear in {p.netns}")
        # No IPv6 on an IPv4-only network, as dockerd (no link-local address, no DAD);
        # on an IPv6 one it must be on (the namespace's default may say otherwise).
        # /proc/sys/net is that of the opening thread: this one, inside the namespace.
        disable = "0" if p.address6 else "1"
        _write_sysctl(f"/proc/sys/net/ipv6/conf/{p.ifname}/disable_ipv6", disable)
        ip.addr("add", index=index, address=p.address, prefixlen=p.prefixlen)
        if p.address6:
            _add_address6(ip, index, p.address6, p.prefixlen6)
        ip.link("set", index=index, state="up")
        if p.gateway is not None:
            ip.route("add", dst="0.0.0.0/0", gateway=p.gateway, oif=index)
        if p.gateway6 is not None:
            # metric 1024: the kernel's default for IPv6 routes, what dockerd's shows
            ip.route("replace", dst="::/0", gateway=p.gateway6, oif=index, family=_AF_INET6,
                     priority=1024)


def unplumb(host_if: str) -> None:
    """Delete the pair by its host end (the container end goes with it)."""
    delete_link(host_if)


def next_ifname(netns: Path) -> str:
    """``eth<N>`` for the next interface of a running container (network connect)."""

    def scan() -> str:
        with IPRoute() as ip:
            names = {str(link.get_attr("IFLA_IFNAME")) for link in ip.get_links()}
        n = 0
        while f"eth{n}" in names:
            n += 1
        return f"eth{n}"

    return in_netns(netns, scan)


def set_default_route(netns: Path, ifname: str, gateway: str | None,
                      v6: tuple[str, str] | None = None) -> None:
    """Point the default route at ``gateway`` via ``ifname`` (after a disconnect), and
    the IPv6 one at ``v6`` = (interface, gateway) when an IPv6 network remains."""

    def replace(ip: IPRoute, name: str, dst: str, via: str, **extra: Any) -> None:
        index = _link_index(ip, name)
        if index is None:
            return
        try:
            ip.route("replace", dst=dst, gateway=via, oif=index, **extra)
        except NetlinkError:
            pass

    def work() -> None:
        with IPRoute() as ip:
            if gateway is not None:
                replace(ip, ifname, "0.0.0.0/0", gateway)
            if v6 is not None:
                replace(ip, v6[0], "::/0", v6[1], family=_AF_INET6, priority=1024)

    in_netns(netns, work)
