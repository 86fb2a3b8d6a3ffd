"""Network namespaces for daemons under test.

Each daemon runs in a namespace of its own (``ip netns add wharfd-t-<random>``) so it
never sees or touches the host's interfaces, routes or firewall. Commands are run inside
with ``nsenter --net=/run/netns/<name>``, never ``ip netns exec``: the latter also
unshares the mount namespace and remounts /sys, which hides the cgroup mounts the
runtime needs.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

NETNS_DIR = Path("/run/netns")


def _ip() -> str:
    return shutil.which("ip") or "/usr/sbin/ip"


def _nsenter() -> str:
    return shutil.which("nsenter") or "/usr/bin/nsenter"


class NetNS:
    """A named network namespace with ``lo`` up, deleted by :meth:`delete`."""

    def __init__(self, prefix: str = "wharfd-t") -> None:
        self.name = f"{prefix}-{secrets.token_hex(4)}"
        self.path = NETNS_DIR / self.name
        self._created = False

    # -- lifecycle -------------------------------------------------------------------
    def create(self) -> NetNS:
        if self._created:
            return self
        subprocess.run([_ip(), "netns", "add", self.name], check=True, capture_output=True)
        self._created = True
        try:
            self.run([_ip(), "link", "set", "lo", "up"], check=True)
        except BaseException:
            self.delete()
            raise
        return self

    def delete(self) -> None:
        if not self._created and not self.path.exists():
            return
        subprocess.run([_ip(), "netns", "delete", self.name], capture_output=True)
        self._created = False

    @property
    def exists(self) -> bool:
        return self.path.exists()

    def __enter__(self) -> NetNS:
        return self.create()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.delete()

    # -- running things inside -------------------------------------------------------
    def nsenter_argv(self) -> list[str]:
        """argv prefix that runs a command in this namespace (and nothing else changed)."""
        return [_nsenter(), f"--net={self.path}", "--"]

    def wrap(self, argv: Sequence[str]) -> list[str]:
        return [*self.nsenter_argv(), *argv]

    def wrap_with(self, argv: Sequence[str], *nsenter_options: str) -> list[str]:
        """Like :meth:`wrap`, also joining other namespaces (e.g. ``--uts=<file>``)."""
        return [_nsenter(), f"--net={self.path}", *nsenter_options, "--", *argv]

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", 60)
        return subprocess.run(self.wrap(argv), **kwargs)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        return subprocess.Popen(self.wrap(argv), **kwargs)

    # -- who is inside ---------------------------------------------------------------
    def inode(self) -> int | None:
        try:
            return os.stat(self.path).st_ino
        except OSError:
            return None

    def pids(self) -> list[int]:
        """PIDs of processes whose network namespace is this one (excluding ourselves)."""
        ino = self.inode()
        if ino is None:
            return []
        return pids_in_netns_inode(ino)

    def kill_all(self, sig: int = signal.SIGKILL) -> list[int]:
        """Send ``sig`` to every process inside. Only processes of this namespace, which
        a test created, are touched."""
        killed = []
        for pid in self.pids():
            try:
                os.kill(pid, sig)
                killed.append(pid)
            except ProcessLookupError:
                pass
        return killed


def pids_in_netns_inode(ino: int) -> list[int]:
    me = os.getpid()
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == me:
            continue
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino == ino:
                out.append(pid)
        except OSError:
            continue
    return out


def list_test_netns(prefix: str = "wharfd-t") -> list[str]:
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix + "-"))
    except FileNotFoundError:
        return []
