#!/usr/bin/env python3
"""Side-by-side benchmark: wharfd against the real dockerd, same machine, same run.

Starts wharfd and (when installed) dockerd, each in its own network namespace with its
own temporary roots (the test harness classes), imports the same busybox image into
both, then measures each metric in interleaved passes (wharfd, dockerd, dockerd, wharfd,
...) and prints medians and the ratio wharfd / dockerd. Absolute numbers drift between
runs on shared machines: the ratio within one run is the figure to quote.

Each metric runs on its own: one that fails (for a daemon) prints why and the others go
on. Not part of the test suite; run it as root:

    .venv/bin/python bench/run.py [--quick] [--only run_true,attach] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import buildbench, netbench, swarmbench  # noqa: E402
from tests.harness import rawhttp  # noqa: E402
from tests.harness.busybox import BusyboxArtifacts  # noqa: E402
from tests.harness.cli import docker_binary, import_busybox  # noqa: E402
from tests.harness.daemon import (  # noqa: E402
    BaseDaemon,
    DaemonProcess,
    DockerdReference,
    dockerd_unavailable_reason,
    process_name,
    process_rss_kib,
    wharfd_unavailable_reason,
)

MiB = 1 << 20


class MetricError(Exception):
    """A metric could not be measured for one daemon (message says why)."""


@dataclass
class Metric:
    key: str
    title: str
    unit: str
    better: str  # "lower" or "higher"
    goal: str  # from docs/performance.md: ratio to dockerd, or an absolute figure
    func: Callable[[BaseDaemon, argparse.Namespace], float]
    heavy: bool = False
    network: bool = False  # measured against the bridged dockerd (bench/netbench.py)
    results: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


# -- helpers ------------------------------------------------------------------------------------

def docker(d: BaseDaemon, *args: str, timeout: float = 120, **kw: Any,
           ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([docker_binary(), *args], env=d.env, capture_output=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, **kw)


def docker_ok(d: BaseDaemon, *args: str, timeout: float = 120) -> str:
    r = docker(d, *args, timeout=timeout)
    if r.returncode != 0:
        raise MetricError(f"docker {' '.join(args)} exited {r.returncode}: "
                          f"{r.stderr.decode(errors='replace').strip()[:300]}")
    return r.stdout.decode()


def api(d: BaseDaemon, conn: rawhttp.Connection | None, method: str, url: str,
        body: Any = None, expect: tuple[int, ...] = (200, 201, 204),
        timeout: float = 120) -> Any:
    try:
        if conn is None:
            r = rawhttp.request(d.socket, method, url, body, timeout=timeout)
        else:
            r = conn.request(method, url, body, timeout=timeout)
    except (OSError, rawhttp.HTTPError, TimeoutError) as e:
        raise MetricError(f"{method} {url}: {type(e).__name__}: {e}") from e
    if r.status not in expect:
        raise MetricError(f"{method} {url}: HTTP {r.status} {r.text.strip()[:300]}")
    if r.body and (r.header("Content-Type") or "").startswith("application/json"):
        return r.json()
    return r.body


def remove_all_containers(d: BaseDaemon) -> None:
    try:
        for c in d.containers(all=True):
            rawhttp.request(d.socket, "DELETE", f"/containers/{c['Id']}?force=1&v=1",
                            timeout=60)
    except Exception as e:
        print(f"    (cleanup of {d.kind} containers failed: {e})", file=sys.stderr)


def count_stream(argv: list[str], env: dict[str, str], timeout: float) -> tuple[int, float]:
    """Run argv, count stdout bytes; returns (bytes, seconds from spawn to EOF+exit)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    assert p.stdout is not None
    n = 0
    fd = p.stdout.fileno()
    deadline = time.monotonic() + timeout
    while True:
        chunk = os.read(fd, MiB)
        if not chunk:
            break
        n += len(chunk)
        if time.monotonic() > deadline:
            p.kill()
            raise MetricError(f"timed out after {timeout}s with {n} bytes read")
    try:
        rc = p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired as e:
        p.kill()
        raise MetricError("command did not exit after its output ended") from e
    dt = time.perf_counter() - t0
    err = p.stderr.read().decode(errors="replace") if p.stderr else ""
    if rc != 0:
        raise MetricError(f"{' '.join(argv[1:4])}... exited {rc}: {err.strip()[:300]}")
    return n, dt


# -- metrics --------------------------------------------------------------------------------------

def m_run_true(d: BaseDaemon, a: argparse.Namespace) -> float:
    t0 = time.perf_counter()
    docker_ok(d, "run", "--rm", "busybox", "true", timeout=60)
    return (time.perf_counter() - t0) * 1000


def m_run_true_none(d: BaseDaemon, a: argparse.Namespace) -> float:
    """As run_true with `--network none`: the reference dockerd here runs with
    `--bridge=none` (its default containers get no network), so this pair compares the
    same work; run_true compares our bridged start with dockerd's network-less one."""
    t0 = time.perf_counter()
    docker_ok(d, "run", "--rm", "--network", "none", "busybox", "true", timeout=60)
    return (time.perf_counter() - t0) * 1000


def m_api_lifecycle(d: BaseDaemon, a: argparse.Namespace) -> float:
    with rawhttp.Connection(d.socket, timeout=60) as conn:
        t0 = time.perf_counter()
        cid = api(d, conn, "POST", "/containers/create",
                  {"Image": "busybox", "Cmd": ["true"]})["Id"]
        api(d, conn, "POST", f"/containers/{cid}/start")
        res = api(d, conn, "POST", f"/containers/{cid}/wait")
        api(d, conn, "DELETE", f"/containers/{cid}")
        dt = time.perf_counter() - t0
    if not isinstance(res, dict) or res.get("StatusCode") != 0:
        raise MetricError(f"wait returned {res!r}")
    return dt * 1000


def m_seq_create_start(d: BaseDaemon, a: argparse.Namespace) -> float:
    ids: list[str] = []
    try:
        with rawhttp.Connection(d.socket, timeout=60) as conn:
            t0 = time.perf_counter()
            for _ in range(a.seq_n):
                cid = api(d, conn, "POST", "/containers/create",
                          {"Image": "busybox", "Cmd": ["sleep", "3600"]})["Id"]
                ids.append(cid)
                api(d, conn, "POST", f"/containers/{cid}/start")
            return time.perf_counter() - t0
    finally:
        for cid in ids:
            try:
                rawhttp.request(d.socket, "DELETE", f"/containers/{cid}?force=1", timeout=60)
            except Exception:
                pass


def _force_remove(d: BaseDaemon, ids: list[str]) -> None:
    for cid in ids:
        try:
            rawhttp.request(d.socket, "DELETE", f"/containers/{cid}?force=1", timeout=60)
        except Exception:
            pass


def m_concurrent_create_start(d: BaseDaemon, a: argparse.Namespace) -> float:
    """20 create+start at once, each on its own connection (wall time of the batch)."""
    ids: list[str] = []
    lock = threading.Lock()

    def one(_: int) -> None:
        with rawhttp.Connection(d.socket, timeout=120) as conn:
            cid = api(d, conn, "POST", "/containers/create",
                      {"Image": "busybox", "Cmd": ["sleep", "3600"]})["Id"]
            with lock:
                ids.append(cid)
            api(d, conn, "POST", f"/containers/{cid}/start")

    try:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(20) as pool:
            list(pool.map(one, range(20)))
        return time.perf_counter() - t0
    finally:
        _force_remove(d, ids)


def m_list_100(d: BaseDaemon, a: argparse.Namespace) -> float:
    """Median of 20 `GET /containers/json?all=1` with 100 (created) containers."""
    ids: list[str] = []
    try:
        with rawhttp.Connection(d.socket, timeout=60) as conn:
            for _ in range(100):
                ids.append(api(d, conn, "POST", "/containers/create",
                               {"Image": "busybox", "Cmd": ["true"]})["Id"])
            times = []
            for _ in range(20):
                t0 = time.perf_counter()
                items = api(d, conn, "GET", "/containers/json?all=1")
                times.append(time.perf_counter() - t0)
                if len(items) < 100:
                    raise MetricError(f"listed {len(items)} containers, expected 100")
        return statistics.median(times) * 1000
    finally:
        _force_remove(d, ids)


def m_stop_trap(d: BaseDaemon, a: argparse.Namespace) -> float:
    """`POST /stop` of a container whose shell traps SIGTERM and exits at once."""
    with rawhttp.Connection(d.socket, timeout=60) as conn:
        cid = api(d, conn, "POST", "/containers/create", {
            "Image": "busybox",
            "Cmd": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.05; done"]})["Id"]
        try:
            api(d, conn, "POST", f"/containers/{cid}/start")
            time.sleep(0.3)  # let the trap be installed
            t0 = time.perf_counter()
            api(d, conn, "POST", f"/containers/{cid}/stop")
            return (time.perf_counter() - t0) * 1000
        finally:
            _force_remove(d, [cid])


def m_stats_50(d: BaseDaemon, a: argparse.Namespace) -> float:
    """`docker stats --no-stream` wall time with 50 running containers."""
    ids: list[str] = []
    try:
        with rawhttp.Connection(d.socket, timeout=120) as conn:
            for _ in range(50):
                cid = api(d, conn, "POST", "/containers/create",
                          {"Image": "busybox", "Cmd": ["sleep", "3600"]})["Id"]
                ids.append(cid)
                api(d, conn, "POST", f"/containers/{cid}/start")
        t0 = time.perf_counter()
        out = docker_ok(d, "stats", "--no-stream", timeout=300)
        elapsed = time.perf_counter() - t0
        rows = [line for line in out.splitlines()[1:] if line.strip()]
        if len(rows) < 50:
            raise MetricError(f"stats showed {len(rows)} rows, expected 50")
        return elapsed
    finally:
        _force_remove(d, ids)


_VOLUME_IMAGE = "wharfd-bench-volfiles:1"
_volume_image_tar: Path | None = None


def _volume_image(d: BaseDaemon) -> None:
    """busybox plus 10 000 small files under /data, declared as a VOLUME (made once per
    run, imported into each daemon once)."""
    global _volume_image_tar
    if _volume_image_tar is None:
        base = Path(tempfile.mkdtemp(prefix="wharfd-bench-vol-", dir="/var/tmp"))
        root = BusyboxArtifacts.create(base).rootfs
        _volume_image_tar = base / "volfiles.tar"
        with tarfile.open(_volume_image_tar, "w") as tar:
            tar.add(root, arcname=".")
            for i in range(10_000):
                data = f"file {i}\n".encode()
                info = tarfile.TarInfo(f"./data/d{i % 100}/f{i}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    if not docker(d, "image", "inspect", _VOLUME_IMAGE).returncode == 0:
        with open(_volume_image_tar, "rb") as source:
            r = subprocess.run([docker_binary(), "import", "-c", "VOLUME /data", "-",
                                _VOLUME_IMAGE], stdin=source, env=d.env,
                               capture_output=True, timeout=300)
        if r.returncode != 0:
            raise MetricError(f"import failed: {r.stderr.decode()[:300]}")


def m_volume_copyup(d: BaseDaemon, a: argparse.Namespace) -> float:
    """`docker run --rm` of an image whose VOLUME holds 10 000 files, into a new named
    volume (create + populate + mount + run `true`)."""
    _volume_image(d)
    name = f"bench-vol-{os.getpid()}-{time.monotonic_ns()}"
    try:
        t0 = time.perf_counter()
        docker_ok(d, "run", "--rm", "-v", f"{name}:/data", _VOLUME_IMAGE, "true")
        elapsed = time.perf_counter() - t0
        count = docker_ok(d, "run", "--rm", "-v", f"{name}:/data", "busybox", "sh", "-c",
                          "find /data -type f | wc -l").strip()
        if count != "10000":
            raise MetricError(f"volume holds {count} files, expected 10000")
        return elapsed
    finally:
        docker(d, "volume", "rm", "-f", name)


def _volume_dd(d: BaseDaemon, name: str, script: str) -> float:
    t0 = time.perf_counter()
    docker_ok(d, "run", "--rm", "-v", f"{name}:/data", "busybox", "sh", "-c", script,
              timeout=600)
    return time.perf_counter() - t0


def m_volume_write(d: BaseDaemon, a: argparse.Namespace) -> float:
    """MiB/s of writing 1 GiB (fsync'd) into a named volume from a container."""
    name = f"bench-vw-{os.getpid()}"
    try:
        dt = _volume_dd(d, name, "dd if=/dev/zero of=/data/f bs=1M count=1024 conv=fsync "
                                 "2>/dev/null")
        return 1024 / dt
    finally:
        docker(d, "volume", "rm", "-f", name)


def m_volume_read(d: BaseDaemon, a: argparse.Namespace) -> float:
    """MiB/s of reading 1 GiB back from a named volume (page cache dropped is not
    possible here without privileges: both daemons read warm data alike)."""
    name = f"bench-vr-{os.getpid()}"
    try:
        _volume_dd(d, name, "dd if=/dev/zero of=/data/f bs=1M count=1024 2>/dev/null")
        dt = _volume_dd(d, name, "dd if=/data/f of=/dev/null bs=1M 2>/dev/null")
        return 1024 / dt
    finally:
        docker(d, "volume", "rm", "-f", name)


def m_attach(d: BaseDaemon, a: argparse.Namespace) -> float:
    n, dt = count_stream(
        [docker_binary(), "run", "--rm", "busybox", "dd", "if=/dev/zero", "bs=1M",
         f"count={a.mib}"], d.env, timeout=600)
    if n != a.mib * MiB:
        raise MetricError(f"read {n} bytes, expected {a.mib * MiB}")
    return n / MiB / dt


def m_logs(d: BaseDaemon, a: argparse.Namespace) -> float:
    name = f"bench-logs-{os.getpid()}"
    try:
        docker_ok(d, "run", "-d", "--name", name, "busybox", "dd", "if=/dev/zero", "bs=1M",
                  f"count={a.mib}")
        status = docker_ok(d, "wait", name, timeout=600).strip()
        if status != "0":
            raise MetricError(f"dd container exited {status}")
        n, dt = count_stream([docker_binary(), "logs", name], d.env, timeout=600)
        if n != a.mib * MiB:
            raise MetricError(f"docker logs gave {n} bytes, expected {a.mib * MiB}")
        return n / MiB / dt
    finally:
        docker(d, "rm", "-f", name, timeout=60)


def m_exec_true(d: BaseDaemon, a: argparse.Namespace) -> float:
    """`exec true` through the API, as `docker exec` does it: create, start (hijacked,
    no stdin), read the stream to its end, inspect for the exit code. The median of a
    few runs into one running container, after one warm-up run."""
    cid = api(d, None, "POST", "/containers/create",
              {"Image": "busybox", "Cmd": ["sleep", "3600"]})["Id"]
    try:
        api(d, None, "POST", f"/containers/{cid}/start")
        samples = [exec_true_once(d, cid) for _ in range(a.exec_runs + 1)][1:]
        return statistics.median(samples)
    finally:
        rawhttp.request(d.socket, "DELETE", f"/containers/{cid}?force=1", timeout=60)


def exec_true_once(d: BaseDaemon, cid: str) -> float:
    with rawhttp.Connection(d.socket, timeout=60) as conn:
        t0 = time.perf_counter()
        exec_id = api(d, conn, "POST", f"/containers/{cid}/exec",
                      {"Cmd": ["true"], "AttachStdout": True, "AttachStderr": True})["Id"]
        with rawhttp.Connection(d.socket, timeout=60) as stream:
            stream.send_request("POST", f"/exec/{exec_id}/start",
                                {"Detach": False, "Tty": False},
                                headers={"Connection": "Upgrade", "Upgrade": "tcp"})
            head = stream.read_head()
            if head.status != 101:
                raise MetricError(f"exec start: HTTP {head.status}")
            stream.shutdown_write()  # no stdin, as the CLI does
            stream.recv_to_eof()
        info = api(d, conn, "GET", f"/exec/{exec_id}/json")
        dt = time.perf_counter() - t0
    if not isinstance(info, dict) or info.get("ExitCode") != 0:
        raise MetricError(f"exec inspect returned {info!r}")
    return dt * 1000


def m_helper_rss(d: BaseDaemon, a: argparse.Namespace) -> float:
    n = a.rss_containers
    ids: list[str] = []
    try:
        for _ in range(n):
            cid = api(d, None, "POST", "/containers/create",
                      {"Image": "busybox", "Cmd": ["sleep", "3600"]})["Id"]
            ids.append(cid)
            api(d, None, "POST", f"/containers/{cid}/start")
        time.sleep(1.0)
        helpers = d.helper_pids()
        if not helpers:
            names = sorted({process_name(p) for p in d.netns_pids()})
            raise MetricError(f"no {'/'.join(d.helper_names)} process found in the daemon's "
                              f"netns (saw: {', '.join(names) or 'nothing'})")
        total_kib = sum(process_rss_kib(p) for p in helpers)
        return float(total_kib / 1024 / n)
    finally:
        for cid in ids:
            try:
                rawhttp.request(d.socket, "DELETE", f"/containers/{cid}?force=1", timeout=60)
            except Exception:
                pass


def m_idle_rss(d: BaseDaemon, a: argparse.Namespace) -> float:
    if d.containers(all=False):
        raise MetricError("containers are still running; not idle")
    time.sleep(0.5)
    pids = d.netns_pids()
    if not pids:
        raise MetricError("no daemon process found")
    return sum(process_rss_kib(p) for p in pids) / 1024


# -- image metrics: archives made once per run, a registry per daemon ------------------------

BIG_MIB = 200
SMALL_FILES = 20_000
COMMIT_MIB = 50


class ImageFixtures:
    """The archives the image metrics load, made once per run (the same bytes for both
    daemons), and one local docker-registry per daemon, in the daemon's netns."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="wharfd-bench-img-", dir="/var/tmp"))
        self._archives: dict[str, Path] = {}
        self.registries: dict[str, Any] = {}
        self.pushed: set[tuple[str, str]] = set()

    def archive(self, kind: str) -> Path:
        """``big``: one layer holding one 200 MiB random file; ``small``: one layer of
        20 000 small files. Each tagged ``bench-<kind>:1``."""
        if kind not in self._archives:
            layer = self.dir / f"{kind}.layer.tar"
            if kind == "big":
                _write_layer_tar(layer, [("big.bin", None, BIG_MIB * MiB)])
            else:
                files = [(f"d{i // 100:03d}/f{i % 100:02d}.txt", f"file {i}\n".encode() * 8, 0)
                         for i in range(SMALL_FILES)]
                _write_layer_tar(layer, files)
            self._archives[kind] = _write_docker_archive(self.dir / f"{kind}.tar", layer,
                                                         f"bench-{kind}:1")
            layer.unlink()
        return self._archives[kind]

    def registry(self, d: BaseDaemon, fresh: bool = False) -> Any:
        from tests.harness.registry import LocalRegistry

        reg = self.registries.get(d.kind)
        if reg is not None and fresh:
            reg.stop()
            reg = None
        if reg is None:
            reg = LocalRegistry(d.netns, tmp_base="/var/tmp").start()
            self.registries[d.kind] = reg
            self.pushed = {p for p in self.pushed if p[0] != d.kind}
        return reg

    def cleanup(self) -> None:
        for reg in self.registries.values():
            reg.stop()
        self.registries.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


FIXTURES: ImageFixtures | None = None


def fixtures() -> ImageFixtures:
    global FIXTURES
    if FIXTURES is None:
        FIXTURES = ImageFixtures()
    return FIXTURES


def _write_layer_tar(path: Path, files: Sequence[tuple[str, bytes | None, int]]) -> None:
    """A layer tar: (name, data, size); data None means ``size`` random bytes."""
    dirs = sorted({n.rsplit("/", 1)[0] for n, _, _ in files if "/" in n})
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
            tar.addfile(info)
        for name, data, size in files:
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = 0o644, 1_700_000_000
            if data is None:
                info.size = size
                with open("/dev/urandom", "rb") as rnd:
                    tar.addfile(info, _LimitedReader(rnd, size))
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


class _LimitedReader:
    def __init__(self, f: Any, size: int) -> None:
        self._f, self._left = f, size

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        data = self._f.read(n)
        self._left -= len(data)
        return bytes(data)


def _write_docker_archive(out: Path, layer: Path, tag: str) -> Path:
    h = hashlib.sha256()
    with open(layer, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    diff_id = "sha256:" + h.hexdigest()
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": "2026-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "2026-01-01T00:00:00Z", "created_by": "bench"}],
    }, separators=(",", ":")).encode()
    config_hex = hashlib.sha256(config).hexdigest()
    manifest = json.dumps([{"Config": f"{config_hex}.json", "RepoTags": [tag],
                            "Layers": [f"{diff_id[7:]}/layer.tar"]}]).encode()
    with tarfile.open(out, "w") as tar:
        for name, data in ((f"{config_hex}.json", config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        tar.add(layer, arcname=f"{diff_id[7:]}/layer.tar")
    return out


def _ensure_loaded(d: BaseDaemon, kind: str) -> None:
    if docker(d, "image", "inspect", f"bench-{kind}:1").returncode != 0:
        docker_ok(d, "load", "-q", "-i", str(fixtures().archive(kind)), timeout=600)


def _remove_image(d: BaseDaemon, ref: str) -> None:
    """Remove the image ``ref`` names with every tag it has (its layers go too)."""
    r = docker(d, "image", "inspect", "-f", "{{.Id}}", ref)
    if r.returncode == 0:
        docker(d, "rmi", "-f", r.stdout.decode().strip(), timeout=300)


def _ensure_pushed(d: BaseDaemon, kind: str) -> str:
    fx = fixtures()
    reg = fx.registry(d)
    remote = f"{reg.host}/bench-{kind}:1"
    if (d.kind, kind) not in fx.pushed:
        _ensure_loaded(d, kind)
        docker_ok(d, "tag", f"bench-{kind}:1", remote)
        docker_ok(d, "push", remote, timeout=900)
        fx.pushed.add((d.kind, kind))
    return remote


def m_image_load(d: BaseDaemon, a: argparse.Namespace) -> float:
    archive = fixtures().archive("big")
    _remove_image(d, "bench-big:1")
    t0 = time.perf_counter()
    docker_ok(d, "load", "-i", str(archive), timeout=600)
    return time.perf_counter() - t0


def m_image_rmi(d: BaseDaemon, a: argparse.Namespace) -> float:
    """The time to the reply; the files are deleted after it (wharfd) or before (dockerd)."""
    _ensure_loaded(d, "small")
    t0 = time.perf_counter()
    docker_ok(d, "rmi", "bench-small:1", timeout=600)
    return time.perf_counter() - t0


def m_image_save(d: BaseDaemon, a: argparse.Namespace) -> float:
    _ensure_loaded(d, "big")
    out = fixtures().dir / f"save-{d.kind}.tar"
    try:
        t0 = time.perf_counter()
        docker_ok(d, "save", "-o", str(out), "bench-big:1", timeout=600)
        dt = time.perf_counter() - t0
        if out.stat().st_size < BIG_MIB * MiB:
            raise MetricError(f"saved archive is only {out.stat().st_size} bytes")
        return dt
    finally:
        out.unlink(missing_ok=True)


def m_image_push(d: BaseDaemon, a: argparse.Namespace) -> float:
    _ensure_loaded(d, "big")
    reg = fixtures().registry(d, fresh=True)  # empty storage: every byte is uploaded
    remote = f"{reg.host}/bench-push:1"
    docker_ok(d, "tag", "bench-big:1", remote)
    try:
        t0 = time.perf_counter()
        docker_ok(d, "push", remote, timeout=900)
        return time.perf_counter() - t0
    finally:
        docker(d, "rmi", remote)


def _m_pull(d: BaseDaemon, kind: str) -> float:
    remote = _ensure_pushed(d, kind)
    _remove_image(d, remote)  # no layer of it left: everything is downloaded
    t0 = time.perf_counter()
    docker_ok(d, "pull", remote, timeout=900)
    return time.perf_counter() - t0


def m_image_pull(d: BaseDaemon, a: argparse.Namespace) -> float:
    return _m_pull(d, "big")


def m_image_pull_small(d: BaseDaemon, a: argparse.Namespace) -> float:
    return _m_pull(d, "small")


def m_image_commit(d: BaseDaemon, a: argparse.Namespace) -> float:
    name = f"bench-commit-{os.getpid()}"
    docker(d, "rm", "-f", name)
    docker_ok(d, "run", "--name", name, "busybox", "dd", "if=/dev/urandom", "of=/data",
              "bs=1M", f"count={COMMIT_MIB}", timeout=300)
    try:
        t0 = time.perf_counter()
        image_id = docker_ok(d, "commit", name, "bench-committed:1", timeout=600).strip()
        dt = time.perf_counter() - t0
        if not image_id.startswith("sha256:"):
            raise MetricError(f"commit printed {image_id!r}")
        return dt
    finally:
        docker(d, "rm", "-f", name)
        docker(d, "rmi", "bench-committed:1")


def m_build_ten(d: BaseDaemon, a: argparse.Namespace) -> float:
    return buildbench.ten_steps(d)


def m_build_ten_cached(d: BaseDaemon, a: argparse.Namespace) -> float:
    return buildbench.ten_steps_cached(d)


def m_build_big_context(d: BaseDaemon, a: argparse.Namespace) -> float:
    return buildbench.big_context(d)


def m_bk_ten(d: BaseDaemon, a: argparse.Namespace) -> float:
    return buildbench.bk_ten_steps(d)


def m_bk_ten_cached(d: BaseDaemon, a: argparse.Namespace) -> float:
    return buildbench.bk_ten_steps_cached(d)


def m_bk_big_context(d: BaseDaemon, a: argparse.Namespace) -> float:
    return buildbench.bk_big_context(d)


def m_bk_two_stages(d: BaseDaemon, a: argparse.Namespace) -> float:
    return buildbench.bk_two_stages(d)
def _swarm(measure: Callable[[], float]) -> float:
    try:
        return measure()
    except (swarmbench.SwarmBenchError, AssertionError) as e:
        raise MetricError(str(e)[:1500]) from e


def m_swarm_init(d: BaseDaemon, a: argparse.Namespace) -> float:
    return _swarm(lambda: swarmbench.init_seconds(d))


def m_swarm_join(d: BaseDaemon, a: argparse.Namespace) -> float:
    return _swarm(lambda: swarmbench.join_seconds(d))


def m_swarm_worker_down_5s(d: BaseDaemon, a: argparse.Namespace) -> float:
    return _swarm(lambda: swarmbench.worker_down_seconds(d, heartbeat=None))


def m_swarm_worker_down_1s(d: BaseDaemon, a: argparse.Namespace) -> float:
    return _swarm(lambda: swarmbench.worker_down_seconds(d, heartbeat="1s"))


def m_swarm_leader_failover(d: BaseDaemon, a: argparse.Namespace) -> float:
    return _swarm(lambda: swarmbench.leader_failover_seconds(d))


def m_swarm_leader_host_lost(d: BaseDaemon, a: argparse.Namespace) -> float:
    return _swarm(lambda: swarmbench.leader_failover_seconds(d, host_lost=True))


def m_swarm_manager_restart(d: BaseDaemon, a: argparse.Namespace) -> float:
    return _swarm(lambda: swarmbench.manager_restart_seconds(d))


def m_net_loopback(d: BaseDaemon, a: argparse.Namespace) -> float:
    return netbench.published_loopback(d, a.net_mib)


def m_net_other_netns(d: BaseDaemon, a: argparse.Namespace) -> float:
    return netbench.published_other_netns(d, a.net_mib)


def m_net_conn_rate(d: BaseDaemon, a: argparse.Namespace) -> float:
    return netbench.connection_rate(d, a.conns)


def m_net_c2c(d: BaseDaemon, a: argparse.Namespace) -> float:
    return netbench.container_to_container(d, a.net_mib)


def m_net_start_overhead(d: BaseDaemon, a: argparse.Namespace) -> float:
    return netbench.bridge_start_overhead(d, a.start_pairs)


def m_net_start_bridged(d: BaseDaemon, a: argparse.Namespace) -> float:
    return netbench.start_bridged(d, a.start_pairs)


METRICS = [
    Metric("run_true", "docker run --rm busybox true (CLI wall)", "ms", "lower", "<= 0.33x",
           m_run_true),
    Metric("run_true_none", "docker run --rm --network none busybox true", "ms", "lower",
           "<= 0.33x", m_run_true_none),
    Metric("api_lifecycle", "create+start+wait+delete `true` via API", "ms", "lower",
           "<= 0.33x", m_api_lifecycle),
    Metric("seq_create_start", "N sequential create+start (API)", "s", "lower", "<= 0.3x",
           m_seq_create_start, heavy=True),
    Metric("attach", "attach: docker run dd of N MiB to stdout", "MiB/s", "higher", ">= 10x",
           m_attach, heavy=True),
    Metric("logs", "docker logs of N MiB of zeros", "MiB/s", "higher", ">= 20x", m_logs,
           heavy=True),
    Metric("exec_true", "exec `true` via API (create+start+inspect)", "ms", "lower",
           "<= 0.5x", m_exec_true),
    Metric("concurrent_create_start", "20 concurrent create+start (API)", "s", "lower",
           "<= 0.3x", m_concurrent_create_start, heavy=True),
    Metric("list_100", "/containers/json?all=1 with 100 containers", "ms", "lower",
           "<= 0.3x", m_list_100, heavy=True),
    Metric("stop_trap", "stop of a container that traps SIGTERM", "ms", "lower", "<= 0.5x",
           m_stop_trap),
    Metric("stats_50", "docker stats --no-stream, 50 running containers", "s", "lower",
           "(none)", m_stats_50, heavy=True),
    Metric("volume_copyup", "run with a new volume filled from 10 000 image files", "s",
           "lower", "(none)", m_volume_copyup, heavy=True),
    Metric("volume_write", "write 1 GiB into a named volume (fsync)", "MiB/s", "higher",
           "~1x (kernel path)", m_volume_write, heavy=True),
    Metric("volume_read", "read 1 GiB from a named volume", "MiB/s", "higher",
           "~1x (kernel path)", m_volume_read, heavy=True),
    Metric("helper_rss", "helper RSS per running container", "MiB", "lower", "<= 2 MiB",
           m_helper_rss, heavy=True),
    Metric("idle_rss", "engine RSS idle, all its processes", "MiB", "lower", "<= 60 MiB",
           m_idle_rss),
    Metric("image_load", "docker load of a 200 MiB image", "s", "lower", "<= 0.8x",
           m_image_load, heavy=True),
    Metric("image_rmi", "docker rmi of an image of 20 000 small files", "s", "lower",
           "<= 0.5x", m_image_rmi, heavy=True),
    Metric("image_save", "docker save of a 200 MiB image", "s", "lower", "<= 0.7x",
           m_image_save, heavy=True),
    Metric("image_push", "docker push of 200 MiB to a local registry", "s", "lower",
           "<= 0.25x", m_image_push, heavy=True),
    Metric("image_pull", "docker pull of 200 MiB from a local registry", "s", "lower",
           "<= 0.7x", m_image_pull, heavy=True),
    Metric("image_pull_small", "docker pull of 20 000 small files", "s", "lower", "<= 0.7x",
           m_image_pull_small, heavy=True),
    Metric("image_commit", "docker commit of a 50 MiB change", "s", "lower", "(none)",
           m_image_commit, heavy=True),
    Metric("build_ten", "docker build, 10 steps, no cache (classic builder)", "s", "lower",
           "<= 0.5x", m_build_ten),
    Metric("build_ten_cached", "docker build, 10 steps, all cached", "s", "lower", "<= 1x",
           m_build_ten_cached),
    Metric("build_big_context", "docker build, COPY of a 100 MiB / 20 000 file context",
           "s", "lower", "(none)", m_build_big_context, heavy=True),
    Metric("bk_ten", "compose build (BuildKit), 10 steps, no cache", "s", "lower",
           "<= 0.5x", m_bk_ten),
    Metric("bk_ten_cached", "compose build (BuildKit), 10 steps, all cached", "s", "lower",
           "<= 1x", m_bk_ten_cached),
    Metric("bk_big_context", "compose build (BuildKit), 100 MiB / 20 000 file context",
           "s", "lower", "<= 1x", m_bk_big_context, heavy=True),
    Metric("bk_two_stages", "compose build (BuildKit), two independent 2 s stages", "s",
           "lower", "(none)", m_bk_two_stages),
    Metric("swarm_init", "docker swarm init --advertise-addr", "s", "lower",
           "(none)", m_swarm_init, heavy=True),
    Metric("swarm_join", "docker swarm join of a worker", "s", "lower", "(none)",
           m_swarm_join, heavy=True),
    Metric("swarm_worker_down_5s", "kill -9 worker daemon -> Down (heartbeat 5s)", "s",
           "lower", "<= 15 s (3 heartbeats)", m_swarm_worker_down_5s, heavy=True),
    Metric("swarm_worker_down_1s", "kill -9 worker daemon -> Down (heartbeat 1s)", "s",
           "lower", "<= 3 s (3 heartbeats)", m_swarm_worker_down_1s, heavy=True),
    Metric("swarm_leader_failover", "kill -9 leader (3 mgrs) -> new leader+write", "s",
           "lower", "<= 0.25x and <= 5 s", m_swarm_leader_failover, heavy=True),
    Metric("swarm_leader_host_lost", "leader host lost (kill -9 + cable) -> same", "s",
           "lower", "<= 0.25x and <= 5 s", m_swarm_leader_host_lost, heavy=True),
    Metric("swarm_manager_restart", "manager restart -> its node ls answers", "s",
           "lower", "<= 1 s", m_swarm_manager_restart, heavy=True),
    Metric("net_loopback", "TCP N MiB via published port, from lo", "MiB/s", "higher",
           ">= 1x", m_net_loopback, heavy=True, network=True),
    Metric("net_other_netns", "TCP N MiB via published port, other netns", "MiB/s",
           "higher", ">= 1x", m_net_other_netns, heavy=True, network=True),
    Metric("net_conn_rate", "new connections via published port, from lo", "conn/s",
           "higher", ">= 1x", m_net_conn_rate, network=True),
    Metric("net_c2c", "TCP N MiB container to container, user net", "MiB/s", "higher",
           ">= 1x", m_net_c2c, heavy=True, network=True),
    Metric("net_start_bridged", "start (API) of a container on the bridge", "ms", "lower",
           "(none)", m_net_start_bridged, network=True),
    Metric("net_start_overhead", "start (API): bridged minus --network none", "ms",
           "lower", "<= 0.5x", m_net_start_overhead, network=True),
]


# -- driver ---------------------------------------------------------------------------------

def start_daemons(a: argparse.Namespace, bb: BusyboxArtifacts,
                  plain_dockerd: bool = True) -> list[BaseDaemon]:
    """wharfd, and the network-less dockerd when a metric other than net_* needs it."""
    daemons: list[BaseDaemon] = []
    wanted: list[type[BaseDaemon]] = []
    if not a.no_wharfd:
        reason = wharfd_unavailable_reason()
        if reason:
            print(f"wharfd: cannot run here: {reason}")
        else:
            wanted.append(DaemonProcess)
    if not a.no_dockerd and plain_dockerd:
        reason = dockerd_unavailable_reason()
        if reason:
            print(f"dockerd: not measured: {reason}")
        else:
            wanted.append(DockerdReference)
    for cls in wanted:
        d = cls()
        try:
            t0 = time.perf_counter()
            d.start()
            import_busybox(d, bb.tar_path)
            print(f"{d.kind}: started in {time.perf_counter() - t0:.2f}s "
                  f"(pid {d.pid}, netns {d.netns.name})")
            daemons.append(d)
        except Exception as e:
            print(f"{d.kind}: FAILED to start or import busybox: {e}")
            d.cleanup()
    return daemons


def start_bridged_dockerd(a: argparse.Namespace, bb: BusyboxArtifacts) -> BaseDaemon | None:
    """The reference for the network metrics: dockerd with its default bridge."""
    reason = dockerd_unavailable_reason() or netbench.check_tools()
    if reason:
        print(f"dockerd (bridged): not measured: {reason}")
        return None
    d = netbench.BridgedDockerd(userland_proxy=a.dockerd_userland_proxy == "on")
    try:
        t0 = time.perf_counter()
        d.start()
        import_busybox(d, bb.tar_path)
        print(f"dockerd (bridged, userland-proxy {a.dockerd_userland_proxy}): started in "
              f"{time.perf_counter() - t0:.2f}s (pid {d.pid}, netns {d.netns.name})")
        return d
    except Exception as e:
        print(f"dockerd (bridged): FAILED to start or import busybox: {e}")
        d.cleanup()
        return None


def daemons_for(m: Metric, daemons: list[BaseDaemon],
                bridged: BaseDaemon | None) -> list[BaseDaemon]:
    """The network metrics compare with the bridged dockerd, the others with the plain
    one (both of kind "dockerd": one column in the table)."""
    if not m.network:
        return daemons
    others = [d for d in daemons if d.kind != "dockerd"]
    return others + ([bridged] if bridged is not None else [])


def run_metric(m: Metric, daemons: list[BaseDaemon], a: argparse.Namespace) -> None:
    passes = a.heavy_passes if m.heavy else a.passes
    for i in range(passes):
        order = daemons if i % 2 == 0 else list(reversed(daemons))
        for d in order:
            if d.kind in m.errors:
                continue
            try:
                v = m.func(d, a)
            except MetricError as e:
                m.errors[d.kind] = str(e)
            except Exception as e:
                m.errors[d.kind] = f"{type(e).__name__}: {e}"
                if a.verbose:
                    traceback.print_exc()
            else:
                m.results.setdefault(d.kind, []).append(v)
    for d in daemons:
        remove_all_containers(d)


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


def report(metrics: list[Metric], kinds: list[str], a: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    print()
    hdr = f"{'metric':<44} {'unit':>6} {'wharfd':>9} {'dockerd':>9} {'ratio':>7}  goal"
    print(hdr)
    print("-" * len(hdr) + "-" * 10)
    for m in metrics:
        med = {k: statistics.median(v) for k, v in m.results.items() if v}
        w, dk = med.get("wharfd"), med.get("dockerd")
        ratio = w / dk if w is not None and dk else None
        title = m.title.replace("N MiB", f"{a.net_mib if m.network else a.mib} MiB")
        title = title.replace("N sequential", f"{a.seq_n} sequential")
        print(f"{title[:44]:<44} {m.unit:>6} {fmt(w):>9} {fmt(dk):>9} "
              f"{(f'{ratio:.2f}x' if ratio else '-'):>7}  {m.goal} ({m.better} is better)")
        for kind, err in m.errors.items():
            print(f"    {kind}: FAILED: {err}")
        out[m.key] = {
            "title": title, "unit": m.unit, "better": m.better, "goal": m.goal,
            "samples": m.results, "median": med, "ratio": ratio, "errors": m.errors,
        }
    missing = [k for k in ("wharfd", "dockerd") if k not in kinds]
    if missing:
        print(f"\n(not running: {', '.join(missing)}; ratios need both)")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer passes (3 light, 1 heavy)")
    p.add_argument("--passes", type=int, default=None, help="passes of light metrics (7)")
    p.add_argument("--heavy-passes", type=int, default=None, help="passes of heavy ones (3)")
    p.add_argument("--only", default="", help="comma-separated metric keys: "
                   + ",".join(m.key for m in METRICS))
    p.add_argument("--seq-n", type=int, default=100, help="containers in seq_create_start")
    p.add_argument("--mib", type=int, default=256, help="MiB for attach and logs")
    p.add_argument("--rss-containers", type=int, default=10, help="containers for helper_rss")
    p.add_argument("--exec-runs", type=int, default=5, help="timed execs per exec_true pass")
    p.add_argument("--net-mib", type=int, default=1024,
                   help="MiB per transfer in the net_* throughput metrics")
    p.add_argument("--conns", type=int, default=2000, help="connections in net_conn_rate")
    p.add_argument("--start-pairs", type=int, default=5,
                   help="bridged/none run pairs per net_start_overhead pass")
    p.add_argument("--dockerd-userland-proxy", choices=("on", "off"), default="on",
                   help="the bridged dockerd's --userland-proxy (on: dockerd's default)")
    p.add_argument("--no-dockerd", action="store_true")
    p.add_argument("--no-wharfd", action="store_true")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    a.passes = a.passes or (3 if a.quick else 7)
    a.heavy_passes = a.heavy_passes or (1 if a.quick else 3)

    if os.geteuid() != 0:
        print("bench/run.py needs root (network namespaces, runc, cgroups)", file=sys.stderr)
        return 2
    metrics = METRICS
    if a.only:
        keys = {k.strip() for k in a.only.split(",") if k.strip()}
        unknown = keys - {m.key for m in METRICS}
        if unknown:
            p.error(f"unknown metric(s): {', '.join(sorted(unknown))}")
        metrics = [m for m in METRICS if m.key in keys]

    # SIGTERM unwinds like Ctrl-C, so the daemons are always cleaned up
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bb = BusyboxArtifacts.create()
    daemons: list[BaseDaemon] = []
    bridged: BaseDaemon | None = None
    try:
        daemons = start_daemons(a, bb, any(not m.network for m in metrics))
        if any(m.network for m in metrics) and not a.no_dockerd:
            bridged = start_bridged_dockerd(a, bb)
        if not daemons and bridged is None:
            print("no daemon could be started; nothing to measure", file=sys.stderr)
            return 1
        print(f"passes: {a.passes} light, {a.heavy_passes} heavy; order alternates per pass")
        for m in metrics:
            t0 = time.perf_counter()
            print(f"  {m.key} ...", end="", flush=True)
            run_metric(m, daemons_for(m, daemons, bridged), a)
            print(f" {time.perf_counter() - t0:.1f}s")
        kinds = [d.kind for d in daemons] + (["dockerd"] if bridged is not None else [])
        results = report(metrics, kinds, a)
        if a.json:
            a.json.write_text(json.dumps(results, indent=2) + "\n")
        failed = any(m.errors for m in metrics)
        return 1 if failed else 0
    finally:
        if FIXTURES is not None:
            FIXTURES.cleanup()  # the registries (stopped by PID) before their daemons
        netbench.PEERS.cleanup()
        buildbench.remove_contexts()
        for d in [*daemons, *([bridged] if bridged is not None else [])]:
            left = d.cleanup()
            if left:
                print(f"{d.kind}: left behind after cleanup: {left}", file=sys.stderr)
        bb.cleanup()


if __name__ == "__main__":
    sys.exit(main())
