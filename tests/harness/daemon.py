"""Daemons under test: wharfd (``DaemonProcess``) and the real dockerd (``DockerdReference``).

Each instance owns one temporary directory holding its data root, exec root, pidfile,
API socket, log file and an empty docker CLI config, and one network namespace. The
daemon is started through ``nsenter --net=/run/netns/<name>`` (so its PID is the
daemon's own) and is ready when ``GET /_ping`` answers 200.

``cleanup()`` leaves the host as it was, touching only what this instance created:

1. asks the API for running containers and kills them (live-restore keeps containers
   running across a daemon stop, so stopping the daemon alone is not enough);
2. stops the daemon by PID (SIGTERM, then SIGKILL after a timeout);
3. SIGKILLs what is left: processes in this instance's network namespace (conmon, shims,
   a managed containerd), processes in cgroups under this instance's unique cgroup
   parent (container processes), and pids recorded under the exec root that started
   after this instance did;
4. unmounts every mount under the temporary directory, deepest first;
5. removes the cgroup directories under the cgroup parent in every cgroup v1 hierarchy
   and the unified one;
6. deletes the network namespace and the temporary directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from . import rawhttp
from .netns import NetNS

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = REPO_ROOT / ".venv" / "bin"
START_TIMEOUT = 30.0
POLL_INTERVAL = 0.02
SYS_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: every daemon started and not yet cleaned up (the conftest prints their logs on failure)
LIVE: set[BaseDaemon] = set()

_CLK_TCK = os.sysconf("SC_CLK_TCK")


class DaemonStartError(RuntimeError):
    pass


def wharfd_binary() -> Path:
    env = os.environ.get("WHARFD_BIN")
    return Path(env) if env else VENV_BIN / "wharfd"


# -- /proc helpers -------------------------------------------------------------------------

def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (signal 0)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _unescape_mount_path(s: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def mounts_under(root: Path) -> list[str]:
    """Mount points at or under ``root`` (from /proc/self/mountinfo), deepest first."""
    prefix = str(root).rstrip("/")
    found: list[tuple[int, int, str]] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            mnt = _unescape_mount_path(fields[4])
            if mnt == prefix or mnt.startswith(prefix + "/"):
                found.append((mnt.count("/"), int(fields[0]), mnt))
    found.sort(reverse=True)
    return [m for _, _, m in found]


def cgroup_mountpoints() -> list[Path]:
    """Mount points of every cgroup hierarchy (v1 controllers, named ones, and v2)."""
    out: list[Path] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype = right.split()[0] if right else ""
            if fstype in ("cgroup", "cgroup2"):
                out.append(Path(_unescape_mount_path(left.split()[4])))
    return out


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
MNT_DETACH = 2


def _umount(path: str) -> bool:
    if _libc.umount2(path.encode(), 0) == 0:
        return True
    return bool(_libc.umount2(path.encode(), MNT_DETACH) == 0)


def _proc_starttime(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    return int(data.rsplit(")", 1)[1].split()[19])


def _now_ticks() -> int:
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * _CLK_TCK)


def process_rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def process_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


# -- daemons -------------------------------------------------------------------------------

class BaseDaemon:
    """What DaemonProcess and DockerdReference share. Subclasses give ``argv()``."""

    kind: ClassVar[str] = "daemon"
    #: process names of the per-container helper (for memory figures)
    helper_names: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        extra_args: Sequence[str] = (),
        *,
        tmp_base: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        name: str | None = None,
        netns: NetNS | None = None,
        uts_ns: Path | None = None,
    ) -> None:
        self.id = secrets.token_hex(4)
        self.name = name or f"{self.kind}-{self.id}"
        self.tmp = Path(tempfile.mkdtemp(prefix=f"wharfd-t-{self.id}-", dir=tmp_base))
        self.data_root = self.tmp / "data"
        self.exec_root = self.tmp / "exec"
        self.pidfile = self.tmp / f"{self.kind}.pid"
        self.socket = str(self.tmp / f"{self.kind}.sock")
        self.log_path = self.tmp / f"{self.kind}.log"
        self.docker_config = self.tmp / "docker-config"
        self.cgroup_parent = f"/wharfd-test-{self.id}"
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        # a netns given by the caller (a cluster host) is the caller's to create and delete;
        # ``uts_ns`` is a bind-mounted UTS namespace file the daemon joins too (own hostname)
        self._owns_netns = netns is None
        self.netns = netns if netns is not None else NetNS("wharfd-t")
        self.uts_ns = uts_ns
        self.proc: subprocess.Popen[bytes] | None = None
        self.created_ticks = _now_ticks()
        self.created_wall = time.time()
        self.starts = 0
        for d in (self.data_root, self.exec_root, self.docker_config):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._cleaned = False

    # -- what subclasses provide ---------------------------------------------------------
    def argv(self) -> list[str]:
        raise NotImplementedError

    def available(self) -> str | None:
        """None when this daemon can run here, else the reason it cannot."""
        return None

    # -- public shape -------------------------------------------------------------------
    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def env(self) -> dict[str, str]:
        """Environment for docker CLI / docker-py aimed at this daemon only."""
        e = dict(os.environ)
        for k in ("DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_API_VERSION"):
            e.pop(k, None)
        e["DOCKER_HOST"] = self.docker_host
        e["DOCKER_CONFIG"] = str(self.docker_config)
        e["DOCKER_CLI_HINTS"] = "false"
        return e

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} pid={self.pid} sock={self.socket}>"

    def __enter__(self) -> BaseDaemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # -- lifecycle ----------------------------------------------------------------------
    def _daemon_env(self) -> dict[str, str]:
        e = dict(os.environ)
        for k in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_CONFIG", "NOTIFY_SOCKET",
                  "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            e.pop(k, None)
        path = e.get("PATH", "")
        for p in SYS_PATH.split(":"):
            if p not in path.split(":"):
                path = f"{path}:{p}" if path else p
        e["PATH"] = path
        e["PYTHONUNBUFFERED"] = "1"
        e["PYTHONFAULTHANDLER"] = "1"
        e.update(self.extra_env)
        return e

    def start(self, timeout: float = START_TIMEOUT) -> BaseDaemon:
        if self.running:
            return self
        reason = self.available()
        if reason:
            raise DaemonStartError(reason)
        if self._owns_netns:
            self.netns.create()
        LIVE.add(self)
        self._cleaned = False
        with open(self.log_path, "ab") as log:
            log.write(f"---- {time.strftime('%H:%M:%S')} start #{self.starts + 1}: "
                      f"{' '.join(self.argv())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self._wrap_in_namespaces(self.argv()),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._daemon_env(),
                start_new_session=True,
                close_fds=True,
            )
        self.starts += 1
        self.wait_ready(timeout)
        return self

    def _wrap_in_namespaces(self, argv: list[str]) -> list[str]:
        if self.uts_ns is None:
            return self.netns.wrap(argv)
        return self.netns.wrap_with(argv, f"--uts={self.uts_ns}")

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise DaemonStartError(
                    f"{self.kind} exited with status {self.proc.returncode} before answering "
                    f"/_ping\n--- log tail ({self.log_path}) ---\n{self.log_tail()}"
                )
            if os.path.exists(self.socket) and rawhttp.ping(self.socket, timeout=2.0):
                return
            if time.monotonic() > deadline:
                raise DaemonStartError(
                    f"{self.kind} did not answer /_ping within {timeout:.0f}s\n"
                    f"--- log tail ({self.log_path}) ---\n{self.log_tail()}"
                )
            time.sleep(POLL_INTERVAL)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Signal the daemon by PID and wait; SIGKILL after ``timeout``. Returns its status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode

    def kill9(self) -> int | None:
        return self.stop(signal.SIGKILL, timeout=10)

    def restart(self, timeout: float = START_TIMEOUT) -> BaseDaemon:
        """Stop (SIGTERM) and start again on the same roots and netns."""
        self.stop()
        return self.start(timeout)

    # -- API conveniences ---------------------------------------------------------------
    def api(self, method: str, url: str, body: Any = None, timeout: float = 60.0,
            headers: dict[str, str] | None = None) -> rawhttp.Response:
        return rawhttp.request(self.socket, method, url, body, headers, timeout)

    def api_json(self, method: str, url: str, body: Any = None, timeout: float = 60.0) -> Any:
        r = self.api(method, url, body, timeout)
        if r.status >= 400:
            raise rawhttp.HTTPError(f"{method} {url}: {r.status} {r.text.strip()}")
        return r.json() if r.body else None

    # -- logs ---------------------------------------------------------------------------
    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_text(self, since: int = 0) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 80, since: int = 0) -> str:
        return "\n".join(self.log_text(since).splitlines()[-lines:])

    # -- processes ----------------------------------------------------------------------
    def netns_pids(self) -> list[int]:
        return self.netns.pids()

    def helper_pids(self) -> list[int]:
        return [p for p in self.netns_pids() if process_name(p) in self.helper_names]

    def cgroup_dirs(self) -> list[Path]:
        rel = self.cgroup_parent.strip("/")
        return [m / rel for m in cgroup_mountpoints() if (m / rel).is_dir()]

    def cgroup_pids(self) -> set[int]:
        pids: set[int] = set()
        for top in self.cgroup_dirs():
            for dirpath, _dirs, _files in os.walk(top):
                try:
                    with open(os.path.join(dirpath, "cgroup.procs")) as f:
                        pids.update(int(x) for x in f.read().split())
                except OSError:
                    continue
        pids.discard(os.getpid())
        return pids

    def recorded_pids(self) -> set[int]:
        """PIDs written in files under the exec root (conmon pid files, runc state) that
        belong to processes started after this instance was created."""
        pids: set[int] = set()
        if not self.exec_root.exists():
            return pids
        for dirpath, _dirs, files in os.walk(self.exec_root):
            for fn in files:
                p = os.path.join(dirpath, fn)
                try:
                    if os.path.getsize(p) > 1 << 16:
                        continue
                    if "pid" in fn:
                        text = Path(p).read_text().strip()
                        if text.isdigit():
                            pids.add(int(text))
                    elif fn == "state.json":
                        st = json.loads(Path(p).read_text())
                        if isinstance(st, dict) and isinstance(st.get("init_process_pid"), int):
                            pids.add(st["init_process_pid"])
                except (OSError, ValueError, UnicodeDecodeError):
                    continue
        own = {os.getpid(), self.pid}
        out = set()
        for pid in pids - own:
            if pid <= 1:
                continue
            st = _proc_starttime(pid)
            if st is not None and st >= self.created_ticks:
                out.add(pid)
        return out

    def leftover_pids(self) -> set[int]:
        return set(self.netns_pids()) | self.cgroup_pids() | self.recorded_pids()

    def kill_leftovers(self, timeout: float = 10.0) -> set[int]:
        """SIGKILL every process of this instance that is still alive."""
        killed: set[int] = set()
        deadline = time.monotonic() + timeout
        while True:
            pids = self.leftover_pids()
            if self.proc is not None and self.proc.poll() is None:
                pids.add(self.proc.pid)
            if not pids:
                return killed
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
            if self.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(0.05)
            if time.monotonic() > deadline:
                return killed
            time.sleep(0.05)

    def _kill_containers_via_api(self) -> None:
        if not self.running or not os.path.exists(self.socket):
            return
        try:
            conts = self.api_json("GET", "/containers/json", timeout=5)
        except (OSError, rawhttp.HTTPError, TimeoutError, ValueError):
            return
        for c in conts or []:
            cid = c.get("Id") if isinstance(c, dict) else None
            if not cid:
                continue
            with contextlib.suppress(OSError, rawhttp.HTTPError, TimeoutError, ValueError):
                self.api("POST", f"/containers/{cid}/kill", timeout=5)

    # -- cleanup ------------------------------------------------------------------------
    def unmount_all(self) -> list[str]:
        """Unmount everything under the temp dir; returns mounts that would not go."""
        for _ in range(8):
            mounts = mounts_under(self.tmp)
            if not mounts:
                return []
            for m in mounts:
                _umount(m)
        return mounts_under(self.tmp)

    def remove_cgroups(self) -> list[str]:
        left = []
        for top in self.cgroup_dirs():
            for dirpath, _dirs, _files in os.walk(top, topdown=False):
                for _ in range(50):
                    try:
                        os.rmdir(dirpath)
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        # still populated (dying tasks): kill again and retry shortly
                        try:
                            with open(os.path.join(dirpath, "cgroup.procs")) as f:
                                for pid in f.read().split():
                                    with contextlib.suppress(OSError):
                                        os.kill(int(pid), signal.SIGKILL)
                        except OSError:
                            pass
                        time.sleep(0.02)
                else:
                    left.append(dirpath)
        return left

    def leftovers(self) -> dict[str, Any]:
        """What of this instance is still on the host (empty after a good cleanup)."""
        out: dict[str, Any] = {}
        if pids := sorted(self.leftover_pids()):
            out["processes"] = {p: process_name(p) for p in pids}
        if mounts := mounts_under(self.tmp):
            out["mounts"] = mounts
        if cgs := self.cgroup_dirs():
            out["cgroups"] = [str(c) for c in cgs]
        if self._owns_netns and self.netns.exists:
            out["netns"] = self.netns.name
        if self.tmp.exists():
            out["tmp"] = str(self.tmp)
        return out

    def cleanup(self, keep_tmp: bool = False) -> dict[str, Any]:
        """Stop everything this instance started and remove what it created.

        Returns what could not be removed (empty dict when all went)."""
        if self._cleaned:
            return {}
        try:
            self._kill_containers_via_api()
            self.stop(timeout=20)
            self.kill_leftovers()
            self._extra_cleanup()
            self.unmount_all()
            self.remove_cgroups()
            if self._owns_netns:
                self.netns.delete()
            if not keep_tmp:
                self._rmtree(self.tmp)
        finally:
            LIVE.discard(self)
            self._cleaned = True
        left = self.leftovers()
        if keep_tmp:
            left.pop("tmp", None)
        if left:
            print(f"[harness] {self!r}: left behind after cleanup: {left}", file=sys.stderr)
        return left

    def _extra_cleanup(self) -> None:
        pass

    @staticmethod
    def _rmtree(path: Path) -> None:
        def onerror(func: Any, p: str, exc: Any) -> None:
            # read-only dirs inside images: make writable and retry once
            with contextlib.suppress(OSError):
                os.chmod(os.path.dirname(p), 0o700)
                os.chmod(p, 0o700)
                func(p)

        if path.exists():
            shutil.rmtree(path, onerror=onerror)

    # -- per-test state -----------------------------------------------------------------
    def containers(self, all: bool = True) -> list[dict[str, Any]]:
        res = self.api_json("GET", f"/containers/json?all={1 if all else 0}")
        return list(res or [])


class DaemonProcess(BaseDaemon):
    """wharfd from this repository's venv, in its own netns and temp roots."""

    kind = "wharfd"
    helper_names = ("conmon",)

    def __init__(self, extra_args: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(extra_args, **kwargs)
        self.binary = wharfd_binary()
        # an empty daemon.json of our own: the host's /etc/wharfd/daemon.json never applies
        self.config_file = self.tmp / "daemon.json"
        self.config_file.write_text("{}\n")

    def available(self) -> str | None:
        reason = wharfd_unavailable_reason()
        if reason is None and not self.binary.exists():
            reason = f"{self.binary} does not exist (run `make setup`)"
        return reason

    def argv(self) -> list[str]:
        return [
            str(self.binary),
            "--config-file", str(self.config_file),
            "--data-root", str(self.data_root),
            "--exec-root", str(self.exec_root),
            "--pidfile", str(self.pidfile),
            "-H", self.docker_host,
            "--log-level", "debug",
            "--cgroup-parent", self.cgroup_parent,
            *self.extra_args,
        ]


class DockerdReference(BaseDaemon):
    """The real dockerd (Debian's docker.io, 20.10) with its own managed containerd, in its
    own netns and temp roots, touching no host networking (no bridge, no iptables)."""

    kind = "dockerd"
    helper_names = ("containerd-shim", "containerd-shim-runc-v2", "containerd-shim-runc-v1")

    def __init__(self, extra_args: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(extra_args, **kwargs)
        self.binary = Path(shutil.which("dockerd") or "/usr/sbin/dockerd")
        self.config_file = self.tmp / "daemon.json"
        # 20.10 writes a libtrust key to /etc/docker/key.json unless told otherwise
        self.config_file.write_text(
            json.dumps({"deprecated-key-path": str(self.tmp / "key.json")}) + "\n"
        )
        self._shim_sockets_before = self._shim_sockets()
        self._run_containerd_existed = Path("/run/containerd").exists()

    def available(self) -> str | None:
        return dockerd_unavailable_reason()

    def argv(self) -> list[str]:
        return [
            str(self.binary),
            "--config-file", str(self.config_file),
            "--data-root", str(self.data_root),
            "--exec-root", str(self.exec_root),
            "--pidfile", str(self.pidfile),
            "-H", self.docker_host,
            "--log-level", "debug",
            "--cgroup-parent", self.cgroup_parent,
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-masq=false",
            "--userland-proxy=false",
            *self.extra_args,
        ]

    @staticmethod
    def _shim_sockets() -> set[str]:
        try:
            return set(os.listdir("/run/containerd/s"))
        except OSError:
            return set()

    def _extra_cleanup(self) -> None:
        # containerd shims put their sockets in /run/containerd/s whatever the state dir;
        # a shim that was SIGKILLed leaves its socket behind. Remove only sockets that
        # appeared while this instance lived, and only when no other dockerd of ours runs.
        if any(isinstance(d, DockerdReference) and d is not self and d.running for d in LIVE):
            return
        for name in self._shim_sockets() - self._shim_sockets_before:
            p = Path("/run/containerd/s") / name
            with contextlib.suppress(OSError):
                if p.stat().st_mtime >= self.created_wall - 1:
                    p.unlink()
        if not self._run_containerd_existed:
            # created by the shims of this instance; remove when empty
            for d in ("/run/containerd/s", "/run/containerd"):
                with contextlib.suppress(OSError):
                    os.rmdir(d)


# What DockerdReference turns off so that it touches no host networking; inside its own
# namespace a bridge and iptables rules of its own are harmless, and links need them.
_NO_NETWORK_FLAGS = frozenset({"--bridge=none", "--iptables=false", "--ip-masq=false"})


class BridgedDockerd(DockerdReference):
    """The reference dockerd with its default bridge (docker0 in its own netns)."""

    def argv(self) -> list[str]:
        return [arg for arg in super().argv() if arg not in _NO_NETWORK_FLAGS]


def wharfd_unavailable_reason() -> str | None:
    """Why wharfd cannot run on this machine (None when it can). A missing wharfd
    binary is not a reason to skip: that is a broken setup, and starting fails loudly."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("runc", "conmon", "nsenter", "ip"):
        if not shutil.which(tool, path=os.environ.get("PATH", "") + ":" + SYS_PATH):
            return f"{tool} is not installed"
    return None


def dockerd_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "dockerd needs root"
    path = os.environ.get("PATH", "") + ":" + SYS_PATH
    if not shutil.which("dockerd", path=path):
        return "dockerd is not installed (apt-get install docker.io)"
    for tool in ("containerd", "runc", "nsenter", "ip"):
        if not shutil.which(tool, path=path):
            return f"{tool} is not installed"
    return None


@contextlib.contextmanager
def running(cls: type[BaseDaemon], *args: Any, **kwargs: Any) -> Iterator[BaseDaemon]:
    d = cls(*args, **kwargs)
    try:
        d.start()
        yield d
    finally:
        d.cleanup()
