"""Network metrics of bench/run.py (issue 5, item 9), and the bridged reference dockerd.

The reference dockerd of the other metrics runs with ``--bridge=none``: its containers
get no network at all, which is no comparison for these. Here it keeps its default
bridge, iptables rules and (unless ``--dockerd-userland-proxy off``) its userland proxy,
which is dockerd's default; all of that lives in its own network namespace, so nothing
of the host is touched.

Both ends of every transfer are small Python programs (no iperf here): the host's
python3 runs in the containers from a read-only bind mount of /usr through the dynamic
loader, so both daemons run exactly the same receiver and sender, and busybox nc's 8 KiB
copies do not cap what is measured. A receiver greets each connection with one byte
before reading, so the sender never counts a connection that a proxy accepted while the
container was not listening yet.
"""

from __future__ import annotations

import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tests.harness import rawhttp
from tests.harness.cli import docker_binary
from tests.harness.daemon import BaseDaemon, DockerdReference
from tests.harness.netns import NetNS

MiB = 1 << 20
PORT = 80                  # in the container
HOST_PORT = 18480          # published
PEER_PREFIX = "10.213.0"   # the veth between the daemon's netns and the "other host"

# -- the bridged reference -----------------------------------------------------------------

_NO_NETWORK_FLAGS = frozenset({"--bridge=none", "--iptables=false", "--ip-masq=false"})


class BridgedDockerd(DockerdReference):
    """dockerd with its default bridge, iptables and (by default) userland proxy."""

    def __init__(self, userland_proxy: bool = True) -> None:
        super().__init__(name=f"dockerd-bridged-{secrets.token_hex(3)}")
        self.userland_proxy = userland_proxy

    def argv(self) -> list[str]:
        keep = [a for a in super().argv()
                if a not in _NO_NETWORK_FLAGS and not a.startswith("--userland-proxy")]
        return [*keep, f"--userland-proxy={str(self.userland_proxy).lower()}"]


# -- Python inside the busybox containers ----------------------------------------------------

def _host_python() -> tuple[str, str, str]:
    """(loader, library dir, python) of the host's /usr/bin/python3, as real paths."""
    python = os.path.realpath("/usr/bin/python3")
    out = subprocess.run(["ldd", python], capture_output=True, text=True, check=True).stdout
    loader = libc = ""
    for line in out.splitlines():
        words = line.split()
        if words and words[0].startswith("/") and "ld-linux" in words[0]:
            loader = os.path.realpath(words[0])
        elif len(words) > 2 and words[0].startswith("libc.so"):
            libc = os.path.realpath(words[2])
    if not (loader.startswith("/usr/") and libc.startswith("/usr/")):
        raise RuntimeError(f"python3's loader/libc are not under /usr: {loader} {libc}")
    return loader, os.path.dirname(libc), python


def python_in_container(code: str, *args: str) -> list[str]:
    """``docker run`` options and command that run ``code`` with the host's python3
    (mounted at /host/usr; -S: no site, nothing of the host's packages)."""
    loader, libdir, python = (p.replace("/usr/", "/host/usr/", 1) for p in _host_python())
    return ["-v", "/usr:/host/usr:ro", "-e", "PYTHONHOME=/host/usr", "busybox",
            loader, "--library-path", libdir, python, "-S", "-c", code, *args]


SINK = f"""
import socket
PORT = {PORT}
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", PORT))
s.listen(1024)
buf = bytearray(1 << 20)
while True:
    c, _ = s.accept()
    try:
        c.sendall(b"R")
        while c.recv_into(buf):
            pass
    except OSError:
        pass
    c.close()
"""

# argv: host port total_bytes connections. Prints seconds of the transfer (total > 0:
# greeting to the sink's close) or of `connections` connect/greeting/close cycles.
SENDER = """
import socket, struct, sys, time
host, port, total, conns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
LINGER0 = struct.pack("ii", 1, 0)

def greeted():
    c = socket.create_connection((host, port), timeout=5)
    if c.recv(1) == b"R":
        return c
    c.close()
    return None

deadline = time.monotonic() + 30
while True:
    try:
        c = greeted()
        if c is not None:
            break
    except OSError:
        pass
    if time.monotonic() > deadline:
        sys.exit("sink not reachable at %s:%d" % (host, port))
    time.sleep(0.05)
if total:
    c.settimeout(600)
    chunk = memoryview(bytes(1 << 20))
    t0 = time.perf_counter()
    left = total
    while left > 0:
        c.sendall(chunk[:min(left, len(chunk))])
        left -= min(left, len(chunk))
    c.shutdown(socket.SHUT_WR)
    c.recv(1)
    print(time.perf_counter() - t0)
else:
    c.close()
    t0 = time.perf_counter()
    for _ in range(conns):
        c = greeted()
        if c is None:
            sys.exit("no greeting")
        # RST instead of FIN: no TIME_WAIT piling up on the client's ports
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
        c.close()
    print(time.perf_counter() - t0)
"""


# -- plumbing ---------------------------------------------------------------------------------

def _docker_ok(d: BaseDaemon, *args: str, timeout: float = 300) -> str:
    r = subprocess.run([docker_binary(), *args], env=d.env, capture_output=True, text=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])}... exited {r.returncode}: "
                           f"{r.stderr.strip()[-300:]}")
    return r.stdout


def _seconds(output: str) -> float:
    try:
        return float(output.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RuntimeError(f"sender printed {output!r}") from None


def _sender(ns: NetNS, host: str, total: int, conns: int = 0) -> float:
    """Run the sender in ``ns`` (the test process's python; nothing installed)."""
    r = ns.run([sys.executable, "-S", "-c", SENDER, host, str(HOST_PORT), str(total),
                str(conns)], timeout=900)
    if r.returncode != 0:
        raise RuntimeError(f"sender exited {r.returncode}: {r.stderr.strip()[-300:]}")
    return _seconds(r.stdout)


class Sink:
    """A receiver container publishing HOST_PORT, removed on exit."""

    def __init__(self, d: BaseDaemon, network: str | None = None, publish: bool = True):
        self.d = d
        self.name = f"bench-sink-{secrets.token_hex(4)}"
        opts = ["--network", network] if network else []
        if publish:
            opts += ["-p", f"{HOST_PORT}:{PORT}"]
        _docker_ok(d, "run", "-d", "--name", self.name, *opts, *python_in_container(SINK))

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run([docker_binary(), "rm", "-f", self.name], env=self.d.env,
                       capture_output=True, timeout=120)


class Peers:
    """Per daemon: a namespace standing for another host, joined by a veth to the
    daemon's namespace (daemon side .1, peer .2, default route via .1)."""

    def __init__(self) -> None:
        self._made: dict[str, tuple[NetNS, str]] = {}

    def of(self, d: BaseDaemon) -> NetNS:
        if d.name in self._made:
            return self._made[d.name][0]
        peer = NetNS("wharfd-bench").create()
        near, far = f"wb{secrets.token_hex(3)}", f"wc{secrets.token_hex(3)}"
        self._made[d.name] = (peer, near)
        ip = shutil.which("ip") or "/usr/sbin/ip"
        subprocess.run([ip, "link", "add", near, "netns", d.netns.name, "type", "veth",
                        "peer", "name", far, "netns", peer.name], check=True)
        for ns, dev, addr in ((d.netns, near, f"{PEER_PREFIX}.1/24"),
                              (peer, far, f"{PEER_PREFIX}.2/24")):
            ns.run([ip, "addr", "add", addr, "dev", dev], check=True)
            ns.run([ip, "link", "set", dev, "up"], check=True)
        peer.run([ip, "route", "add", "default", "via", f"{PEER_PREFIX}.1"], check=True)
        return peer

    def cleanup(self) -> None:
        for peer, _ in self._made.values():
            peer.delete()  # its end of the veth goes, and with it the daemon's end
        self._made.clear()


PEERS = Peers()


# -- metrics (each returns one sample) ---------------------------------------------------------

def published_loopback(d: BaseDaemon, mib: int) -> float:
    """MiB/s into a container through its published port, from the daemon netns's
    loopback (wharfd: hairpin DNAT; dockerd: its userland proxy unless turned off)."""
    with Sink(d):
        return mib / _sender(d.netns, "127.0.0.1", mib * MiB)


def published_other_netns(d: BaseDaemon, mib: int) -> float:
    """MiB/s through the published port from another namespace (DNAT on the way in)."""
    peer = PEERS.of(d)
    with Sink(d):
        return mib / _sender(peer, f"{PEER_PREFIX}.1", mib * MiB)


def connection_rate(d: BaseDaemon, conns: int) -> float:
    """New connections per second through the published port, from the loopback."""
    with Sink(d):
        return conns / _sender(d.netns, "127.0.0.1", 0, conns)


def container_to_container(d: BaseDaemon, mib: int) -> float:
    """MiB/s from one container to another on a user-defined network, by name."""
    net = f"bench-net-{secrets.token_hex(3)}"
    _docker_ok(d, "network", "create", net)
    try:
        with Sink(d, network=net, publish=False) as sink:
            out = _docker_ok(d, "run", "--rm", "--network", net, *python_in_container(
                SENDER, sink.name, str(PORT), str(mib * MiB), "0"), timeout=900)
            return mib / _seconds(out)
    finally:
        subprocess.run([docker_binary(), "network", "rm", net], env=d.env,
                       capture_output=True, timeout=120)


def _start_ms(d: BaseDaemon, network_mode: str) -> float:
    """ms of ``POST /containers/{id}/start`` of a created `true` container (create and
    removal are not timed: they do no network work in either daemon)."""
    body = {"Image": "busybox", "Cmd": ["true"], "HostConfig": {"NetworkMode": network_mode}}
    created = rawhttp.request(d.socket, "POST", "/containers/create", body, timeout=120)
    if created.status != 201:
        raise RuntimeError(f"create: HTTP {created.status} {created.text[:200]}")
    cid = created.json()["Id"]
    try:
        t0 = time.perf_counter()
        started = rawhttp.request(d.socket, "POST", f"/containers/{cid}/start", timeout=120)
        elapsed = (time.perf_counter() - t0) * 1000
        if started.status != 204:
            raise RuntimeError(f"start: HTTP {started.status} {started.text[:200]}")
        rawhttp.request(d.socket, "POST", f"/containers/{cid}/wait", timeout=120)
        return elapsed
    finally:
        rawhttp.request(d.socket, "DELETE", f"/containers/{cid}?force=1", timeout=120)


def bridge_start_overhead(d: BaseDaemon, pairs: int) -> float:
    """ms the start of a container on the default bridge takes over the same start with
    `--network none` (median of each over ``pairs`` alternating starts)."""
    bridged, none = [], []
    for _ in range(pairs):
        bridged.append(_start_ms(d, "default"))
        none.append(_start_ms(d, "none"))
    return statistics.median(bridged) - statistics.median(none)


def start_bridged(d: BaseDaemon, pairs: int) -> float:
    """ms of the start call alone for a container on the default bridge (median)."""
    return statistics.median(_start_ms(d, "default") for _ in range(pairs))


def check_tools() -> str | None:
    """Why the network metrics cannot run here (None when they can)."""
    if not Path("/usr/bin/python3").exists():
        return "/usr/bin/python3 is missing (the containers run it from /usr)"
    try:
        _host_python()
    except (OSError, RuntimeError, subprocess.CalledProcessError) as e:
        return str(e)
    return None
