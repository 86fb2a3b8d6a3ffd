"""Several wharfd hosts on one machine, for the swarm tests.

Layout (everything lives in namespaces this module creates; the machine's own interfaces,
routes, firewall and hostname are never touched)::

    LAN netns  wharfd-t-<id>:  bridge ``lan0`` (192.168.77.0/24 has no address here)
      ├─ port ``h1``  ── veth ──  host 1 netns: ``eth0`` 192.168.77.1/24, hostname ``h1``
      ├─ port ``h2``  ── veth ──  host 2 netns: ``eth0`` 192.168.77.2/24, hostname ``h2``
      ├─ ...
      └─ port ``cl``  ── veth ──  client netns: ``eth0`` 192.168.77.250/24 (optional)

Each host is a network namespace plus a UTS namespace of its own, so ``hostname`` and
``docker info``'s ``Name`` differ per host. The UTS namespaces are kept alive the way
``ip netns`` keeps network namespaces: ``unshare --uts=<file>`` bind-mounts the nsfs file
onto a file in a directory that is a private mount of this cluster's own
(``/run/wharfd-t-uts-<id>``), so the bind mounts never propagate anywhere.

Each host runs its own wharfd (:class:`~tests.harness.daemon.DaemonProcess`, own data
root, exec root, socket and cgroup parent) started through
``nsenter --net=<host netns> --uts=<host uts file>``. The daemon can be stopped, killed
and started again in the same namespaces; a host can be cut off the LAN and reconnected.

Usage::

    with Cluster(3) as c:                       # or the ``cluster`` fixture: cluster(3)
        h1, h2, h3 = c.hosts
        h1.docker("info", "--format", "{{.Name}}")   # -> "h1"
        h1.run(["ping", "-c1", "-W2", h2.address])   # inside h1's namespaces
        h2.disconnect(); ...; h2.reconnect()
        h3.kill9(); h3.start()                       # same roots, same namespaces

:meth:`Cluster.down` (also on ``__exit__``, and after a failed :meth:`Cluster.up`) removes
everything: the daemons with their containers, mounts and cgroups, the namespaces (which
takes the veths and the bridge with them), the UTS bind mounts and their directory.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

from .cli import run_docker
from .daemon import BaseDaemon, DaemonProcess, _umount, mounts_under
from .netns import NetNS

SUBNET_PREFIX = "192.168.77"
PREFIX_LEN = 24
CLIENT_ADDRESS = f"{SUBNET_PREFIX}.250"
BRIDGE = "lan0"
HOST_IFACE = "eth0"
UTS_DIR_PREFIX = "/run/wharfd-t-uts-"
#: nft table a host is cut off with (inside that host's netns only)
CUTOFF_TABLE = "wharfd_test_cutoff"

DaemonFactory = Callable[..., BaseDaemon]


class ClusterError(RuntimeError):
    pass


def _tool(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _check(argv: Sequence[str], what: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, **kwargs)
    if r.returncode != 0:
        raise ClusterError(f"{what}: {' '.join(argv)} -> {r.returncode}: {r.stderr.strip()}")
    return r


class UTSNamespaces:
    """A private mount directory holding persistent UTS namespaces (one nsfs bind mount
    per file), each with its hostname set."""

    def __init__(self) -> None:
        self.dir = Path(f"{UTS_DIR_PREFIX}{secrets.token_hex(4)}")

    def create_dir(self) -> None:
        self.dir.mkdir(mode=0o700)
        # a mount of our own, private: the nsfs bind mounts below propagate nowhere
        _check(["mount", "--bind", str(self.dir), str(self.dir)], "bind-mount the UTS dir")
        _check(["mount", "--make-private", str(self.dir)], "make the UTS dir private")

    def add(self, name: str, hostname: str) -> Path:
        path = self.dir / name
        path.touch(mode=0o600)
        _check([_tool("unshare"), f"--uts={path}", _tool("hostname"), hostname],
               f"create UTS namespace {name}")
        return path

    def remove(self) -> None:
        """Unmount every namespace file and the directory; remove them. Never raises for
        what is already gone."""
        if not self.dir.exists():
            return
        for m in mounts_under(self.dir):  # deepest first: the nsfs files, then the dir
            _umount(m)
        for f in list(self.dir.iterdir()):
            with contextlib.suppress(OSError):  # a file still mounted stays (EBUSY)
                f.unlink()
        with contextlib.suppress(OSError):
            self.dir.rmdir()

    def leftovers(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if mounts := mounts_under(self.dir):
            out["uts_mounts"] = mounts
        if self.dir.exists():
            out["uts_dir"] = str(self.dir)
        return out


class Host:
    """One host of the cluster: its namespaces, its LAN address, its wharfd."""

    def __init__(self, cluster: Cluster, index: int, hostname: str) -> None:
        self.cluster = cluster
        self.index = index
        self.hostname = hostname
        self.address = f"{SUBNET_PREFIX}.{index}"
        self.netns = NetNS("wharfd-t")
        self.lan_port = f"h{index}"  # the veth end on the bridge, in the LAN netns
        self.uts_ns: Path | None = None
        self.daemon: BaseDaemon | None = None

    def __repr__(self) -> str:
        return f"<Host {self.hostname} {self.address} netns={self.netns.name}>"

    # -- running things on this host ---------------------------------------------------
    def wrap(self, argv: Sequence[str]) -> list[str]:
        """argv that runs ``argv`` inside this host's network and UTS namespaces."""
        if self.uts_ns is None:
            return self.netns.wrap(argv)
        return self.netns.wrap_with(argv, f"--uts={self.uts_ns}")

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", 60)
        return subprocess.run(self.wrap(argv), **kwargs)

    def ping(self, address: str) -> bool:
        """One ping (2 s) from this host's namespace with the host's busybox."""
        return self.run(["busybox", "ping", "-c1", "-W2", address]).returncode == 0

    def docker(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """The docker CLI against this host's daemon (``run_docker`` keywords apply)."""
        return run_docker(self.require_daemon(), *args, **kwargs)

    # -- the daemon ----------------------------------------------------------------------
    def require_daemon(self) -> BaseDaemon:
        """This host's daemon (wharfd, or dockerd under --against-dockerd)."""
        if self.daemon is None:
            raise ClusterError(f"{self!r} has no daemon")
        return self.daemon

    @property
    def pid(self) -> int | None:
        return self.daemon.pid if self.daemon is not None else None

    def start(self) -> Host:
        """Start (or start again) this host's wharfd on the same roots and namespaces."""
        self.require_daemon().start()
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Signal the daemon by PID and wait (its containers keep running: live-restore)."""
        return self.require_daemon().stop(sig, timeout)

    def kill9(self) -> int | None:
        return self.require_daemon().kill9()

    def restart(self) -> Host:
        self.stop()
        return self.start()

    # -- the LAN -------------------------------------------------------------------------
    def disconnect(self, how: str = "link") -> None:
        """Cut this host off the LAN. ``link``: its bridge port goes down (the host sees
        NO-CARRIER); ``nft``: an nft table inside the host's netns drops all traffic on
        its LAN interface (the link stays up, as in a firewall partition)."""
        if how == "link":
            _check(self.cluster.lan.wrap([_tool("ip"), "link", "set", self.lan_port, "down"]),
                   f"cut {self!r} off")
        elif how == "nft":
            iface = HOST_IFACE
            # chain names avoid nft keywords ("in", "fwd", "out" are not all accepted)
            ruleset = (
                f"table inet {CUTOFF_TABLE} {{\n"
                f"  chain cut_input {{\n    type filter hook input priority -300;\n"
                f"    iifname \"{iface}\" drop\n  }}\n"
                f"  chain cut_forward {{\n    type filter hook forward priority -300;\n"
                f"    iifname \"{iface}\" drop\n    oifname \"{iface}\" drop\n  }}\n"
                f"  chain cut_output {{\n    type filter hook output priority -300;\n"
                f"    oifname \"{iface}\" drop\n  }}\n"
                f"}}\n"
            )
            _check(self.netns.wrap([_tool("nft"), "-f", "-"]), f"cut {self!r} off", input=ruleset)
        else:
            raise ValueError(f"unknown way to disconnect: {how!r}")

    def reconnect(self) -> None:
        """Undo :meth:`disconnect`, whichever way it was done."""
        _check(self.cluster.lan.wrap([_tool("ip"), "link", "set", self.lan_port, "up"]),
               f"reconnect {self!r}")
        listed = self.netns.run([_tool("nft"), "list", "table", "inet", CUTOFF_TABLE])
        if listed.returncode == 0:
            _check(self.netns.wrap([_tool("nft"), "delete", "table", "inet", CUTOFF_TABLE]),
                   f"reconnect {self!r}")


class ClientNS:
    """A namespace on the LAN with no daemon (for ingress tests)."""

    def __init__(self) -> None:
        self.netns = NetNS("wharfd-t")
        self.address = CLIENT_ADDRESS
        self.lan_port = "cl"

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        return self.netns.run(argv, **kwargs)

    def ping(self, address: str) -> bool:
        return self.run(["busybox", "ping", "-c1", "-W2", address]).returncode == 0


class Cluster:
    """``n`` hosts (1..249) on one LAN, each with its own wharfd; see the module doc."""

    def __init__(
        self,
        n: int,
        *,
        client: bool = True,
        daemon_args: Sequence[str] = (),
        daemon_factory: DaemonFactory = DaemonProcess,
        hostname_prefix: str = "h",
        start_daemons: bool = True,
    ) -> None:
        if not 1 <= n <= 249:
            raise ValueError("a cluster has 1 to 249 hosts")
        self.lan = NetNS("wharfd-t")
        self.uts = UTSNamespaces()
        self.hosts = [Host(self, i, f"{hostname_prefix}{i}") for i in range(1, n + 1)]
        self.client = ClientNS() if client else None
        self.daemon_args = list(daemon_args)
        self.daemon_factory = daemon_factory
        self.start_daemons = start_daemons
        self._down = False

    def __enter__(self) -> Cluster:
        return self.up()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    # -- bring-up ------------------------------------------------------------------------
    def up(self) -> Cluster:
        """Create the LAN, the hosts and the client, and start every daemon. On any
        failure everything made so far is removed before the error propagates."""
        try:
            self._make_lan()
            self.uts.create_dir()
            for host in self.hosts:
                self._make_host(host)
            if self.client is not None:
                self._attach(self.client.netns, self.client.lan_port, self.client.address)
            if self.start_daemons:
                self.start_all()
        except BaseException:
            self.down()
            raise
        return self

    def _make_lan(self) -> None:
        self.lan.create()
        ip = _tool("ip")
        # no STP and no forwarding delay: a port is forwarding as soon as it is up
        self.lan.run([ip, "link", "add", BRIDGE, "type", "bridge", "stp_state", "0",
                      "forward_delay", "0"], check=True)
        self.lan.run([ip, "link", "set", BRIDGE, "up"], check=True)

    def _attach(self, ns: NetNS, lan_port: str, address: str) -> None:
        """A veth from the bridge (``lan_port`` in the LAN netns) to ``eth0`` in ``ns``."""
        ns.create()
        ip = _tool("ip")
        self.lan.run([ip, "link", "add", lan_port, "type", "veth", "peer", "name",
                      HOST_IFACE, "netns", ns.name], check=True)
        self.lan.run([ip, "link", "set", lan_port, "master", BRIDGE, "up"], check=True)
        ns.run([ip, "addr", "add", f"{address}/{PREFIX_LEN}", "dev", HOST_IFACE], check=True)
        ns.run([ip, "link", "set", HOST_IFACE, "up"], check=True)

    def _make_host(self, host: Host) -> None:
        self._attach(host.netns, host.lan_port, host.address)
        host.uts_ns = self.uts.add(host.lan_port, host.hostname)
        host.daemon = self.daemon_factory(self.daemon_args, netns=host.netns,
                                          uts_ns=host.uts_ns, name=f"wharfd-{host.hostname}")

    def start_all(self) -> None:
        """Start every host's daemon, in parallel (each waits for its own /_ping)."""
        with ThreadPoolExecutor(max_workers=len(self.hosts)) as pool:
            for fut in [pool.submit(h.start) for h in self.hosts]:
                fut.result()

    # -- teardown ------------------------------------------------------------------------
    def down(self) -> dict[str, Any]:
        """Remove everything; returns what could not be removed (empty when all went).
        Safe after a partial :meth:`up` and when called twice."""
        if self._down:
            return self.leftovers()
        self._down = True
        errors: list[str] = []

        def attempt(what: str, fn: Callable[[], object]) -> None:
            try:
                fn()
            except Exception as e:  # keep tearing down the rest
                errors.append(f"{what}: {e!r}")

        for host in self.hosts:
            if host.daemon is not None:
                attempt(f"{host.hostname} daemon", host.daemon.cleanup)
            # processes started in the host's namespaces by hand (not the daemon's)
            attempt(f"{host.hostname} processes", host.netns.kill_all)
            attempt(f"{host.hostname} netns", host.netns.delete)
        if self.client is not None:
            attempt("client processes", self.client.netns.kill_all)
            attempt("client netns", self.client.netns.delete)
        attempt("LAN processes", self.lan.kill_all)
        attempt("LAN netns", self.lan.delete)  # takes the bridge and any veth left
        attempt("UTS namespaces", self.uts.remove)
        left = self.leftovers()
        if errors:
            left["errors"] = errors
        if left:
            print(f"[harness] cluster left behind: {left}", file=sys.stderr)
        return left

    def namespaces(self) -> list[NetNS]:
        out = [self.lan, *(h.netns for h in self.hosts)]
        if self.client is not None:
            out.append(self.client.netns)
        return out

    def leftovers(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if still := [ns.name for ns in self.namespaces() if ns.exists]:
            out["netns"] = still
        for host in self.hosts:
            if host.daemon is not None and (d_left := host.daemon.leftovers()):
                out[host.hostname] = d_left
        out.update(self.uts.leftovers())
        return out


def uts_dirs() -> list[str]:
    """UTS namespace directories of clusters on this machine (for leak checks)."""
    parent, prefix = os.path.split(UTS_DIR_PREFIX)
    return sorted(str(Path(parent) / e) for e in os.listdir(parent) if e.startswith(prefix))
