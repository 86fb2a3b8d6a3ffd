"""The container-files router and ContainerFiles facade in process: a fake container
manager over temporary roots, recorded cgroup v1 files, our own server on a unix socket.
Wire details: the stat header, statuses before streaming, stats pacing and shapes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import shutil
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from api.app import Mount, build_app
from api.listeners import close_listeners, open_unix_listener
from api.routers import container_files
from api.server import ApiServer
from engine.config import EngineConfig
from engine.containers import stats
from engine.containers.files import ContainerFiles
from engine.containers.model import ContainerConfig, ContainerState, ContainerView
from engine.containers.state import Status
from engine.errors import NotFound
from engine.events import EventBus
from engine.instruments import LabeledTimer
from engine.runtime.cgroups import CgroupInfo
from engine.snapshots.base import Mount as SnapshotMount

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cgroups" / "v1-container"
RUNNING_ID = "a" * 64
CREATED_ID = "c" * 64
PID = 4242


def _view(cid: str, name: str, status: Status) -> ContainerView:
    config = ContainerConfig(
        id=cid, name=name, image_ref="busybox", image_id="sha256:" + "b" * 64,
        created="2026-11-27T10:00:00.000000001Z", config={"Labels": {"x": "y"}},
        host_config={"CgroupParent": ""}, networking={}, path="sh", args=(),
    )
    pid = PID if status == Status.RUNNING else 0
    return ContainerView(config, ContainerState(status=status, pid=pid))


class FakeContainers:
    """ContainerManager's public side over directories of a test."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.views = {v.id: v for v in (_view(RUNNING_ID, "t1", Status.RUNNING),
                                        _view(CREATED_ID, "c1", Status.CREATED))}
        self.mounted: list[str] = []
        self.actions = LabeledTimer()
        for cid in self.views:
            root = base / cid / "rootfs"
            for d in ("etc", "tmp", "bin"):
                (root / d).mkdir(parents=True)
            (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
            (root / "bin/busybox").write_bytes(b"\x7fELF")
            (base / cid / "upper").mkdir()
            (base / cid / "lower").mkdir()

    def get(self, ref: str) -> ContainerView:
        for view in self.views.values():
            if ref in (view.id, view.name):
                return view
        raise NotFound(f"No such container: {ref}")

    @contextlib.asynccontextmanager
    async def rootfs(
        self, ref: str, *, with_mounts: bool = False
    ) -> AsyncIterator[tuple[ContainerView, Path]]:
        view = self.get(ref)
        self.mounted.append(view.id)
        try:
            yield view, self.base / view.id / "rootfs"
        finally:
            self.mounted.remove(view.id)

    def upper_dir(self, container_id: str) -> Path:
        return self.base / container_id / "upper"

    def mounts(self, container_id: str) -> list[dict[str, object]]:
        return []  # inspect's Mounts: none

    async def snapshot_mounts(self, container_id: str) -> list[SnapshotMount]:
        lower = self.base / container_id / "lower"
        return [SnapshotMount("overlay", "overlay", (f"lowerdir={lower}",))]


def _cgroup_tree(base: Path) -> dict[str, Path]:
    """The recorded v1 files placed where cgroups_path("/wharfd", id) points."""
    points = {}
    for controller in ("memory", "cpuacct", "cpu", "blkio", "pids"):
        mount = base / "cgroup" / controller
        shutil.copytree(FIXTURES / controller, mount / "wharfd" / RUNNING_ID)
        points[controller] = mount
    net = base / "proc" / str(PID) / "net"
    net.mkdir(parents=True)
    shutil.copy(FIXTURES / "net_dev", net / "dev")
    return points


@dataclass
class Served:
    socket: str
    containers: FakeContainers
    events: EventBus

    def session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=self.socket))


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="wf-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _build(base: Path) -> tuple[FakeContainers, ContainerFiles, EventBus]:
    containers = FakeContainers(base)
    points = _cgroup_tree(base)
    info = CgroupInfo(version="1", mount_points=points)
    events = EventBus()
    facade = ContainerFiles(
        containers, EngineConfig(), events, containers.snapshot_mounts,
        cgroup_info=lambda: info,
        host=stats.HostFiles(FIXTURES / "proc_stat", FIXTURES / "meminfo"),
        proc=base / "proc",
    )
    return containers, facade, events


@pytest_asyncio.fixture
async def served(short_tmp: Path) -> AsyncIterator[Served]:
    containers, facade, events = await asyncio.to_thread(_build, short_tmp)
    app = build_app([Mount(container_files.routes, container_files.BACKEND, facade)])
    listener = await asyncio.to_thread(open_unix_listener, short_tmp / "api.sock", None)
    server = ApiServer(app, [listener], shutdown_timeout=5)
    await server.start()
    try:
        yield Served(str(short_tmp / "api.sock"), containers, events)
    finally:
        await server.stop()
        await asyncio.to_thread(close_listeners, [listener])


def _decode_stat(header: str) -> dict[str, Any]:
    data = json.loads(base64.standard_b64decode(header))
    assert isinstance(data, dict)
    return data


def _tar_names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return tf.getnames()


# =========================================================================== archive
@pytest.mark.asyncio
async def test_head_archive_stat_header(served: Served) -> None:
    async with served.session() as s:
        async with s.head("http://d/v1.41/containers/t1/archive?path=/etc") as r:
            assert r.status == 200
            st = _decode_stat(r.headers["X-Docker-Container-Path-Stat"])
            assert st["name"] == "etc" and st["mode"] == (1 << 31) | 0o755
            assert set(st) == {"name", "size", "mode", "mtime", "linkTarget"}
            assert st["mtime"].endswith("Z")
        async with s.head("http://d/containers/t1/archive?path=/nope") as r:
            assert r.status == 404
        async with s.get("http://d/containers/t1/archive?path=/nope") as r:
            assert r.status == 404
            assert r.headers["Content-Type"] == "application/json"
            assert (await r.json())["message"] == "Could not find the file /nope in container t1"
        async with s.get("http://d/containers/t1/archive") as r:
            assert r.status == 400
            assert "path cannot be empty" in (await r.json())["message"]
        async with s.head("http://d/containers/zz/archive?path=/") as r:
            assert r.status == 404
    assert served.containers.mounted == []


@pytest.mark.asyncio
async def test_get_archive_streams_a_tar(served: Served) -> None:
    async with served.session() as s, s.get(
            "http://d/containers/c1/archive?path=/etc/.") as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "application/x-tar"
        assert _decode_stat(r.headers["X-Docker-Container-Path-Stat"])["name"] == "."
        assert _tar_names(await r.read()) == [".", "./passwd"]
    # The server releases the rootfs right after its last write; the client can be faster.
    for _ in range(100):
        if not served.containers.mounted:
            break
        await asyncio.sleep(0.02)
    assert served.containers.mounted == []


@pytest.mark.asyncio
async def test_put_archive_chunked_and_errors(served: Served) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("put.txt")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"put"))

    async def chunks() -> AsyncIterator[bytes]:
        data = buf.getvalue()
        for i in range(0, len(data), 700):
            yield data[i:i + 700]

    async with served.session() as s:
        async with s.put("http://d/containers/c1/archive?path=/tmp&noOverwriteDirNonDir=1",
                         data=chunks(), headers={"Content-Type": "text/plain"}) as r:
            assert r.status == 200
            assert await r.read() == b""
        async with s.put("http://d/containers/c1/archive?path=/tmp",
                         data=b"garbage" * 200) as r:
            assert r.status == 400
            assert (await r.json())["message"] == "archive/tar: invalid tar header"
        async with s.put("http://d/containers/c1/archive?path=/etc/passwd",
                         data=buf.getvalue()) as r:
            assert r.status == 400
            assert (await r.json())["message"] == "extraction point is not a directory"
        async with s.put("http://d/containers/c1/archive?path=/missing",
                         data=buf.getvalue()) as r:
            assert r.status == 404
    root = served.containers.base / CREATED_ID / "rootfs"
    assert await asyncio.to_thread((root / "tmp/put.txt").read_bytes) == b"put"


@pytest.mark.asyncio
async def test_export_and_events(served: Served) -> None:
    async with served.session() as s, s.get("http://d/containers/t1/export") as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "application/x-tar"
        names = _tar_names(await r.read())
    assert names[:2] == ["bin", "bin/busybox"]
    events = served.events.subscribe(since_nano=0, until_nano=time.time_ns())
    actions = [(e.action, e.attributes["name"]) async for e in events]
    assert ("export", "t1") in actions


# =========================================================================== changes, top
@pytest.mark.asyncio
async def test_changes_null_then_list(served: Served) -> None:
    async with served.session() as s:
        async with s.get("http://d/containers/t1/changes") as r:
            assert r.status == 200 and await r.read() == b"null"
        upper = served.containers.upper_dir(RUNNING_ID)
        await asyncio.to_thread((upper / "new").write_text, "n")
        async with s.get("http://d/containers/t1/changes") as r:
            assert await r.json() == [{"Path": "/new", "Kind": 1}]


@pytest.mark.asyncio
async def test_top_of_a_created_container_is_409(served: Served) -> None:
    async with served.session() as s, s.get("http://d/containers/c1/top") as r:
        assert r.status == 409
        assert (await r.json())["message"] == f"Container {CREATED_ID} is not running"


@pytest.mark.asyncio
async def test_top_runs_ps_and_filters(served: Served) -> None:
    """The recorded cgroup lists pids that do not run here: only the header remains."""
    async with served.session() as s, s.get("http://d/containers/t1/top?ps_args=-ef") as r:
        assert r.status == 200
        body = await r.json()
    assert body["Titles"][:2] == ["UID", "PID"]
    assert all(row[1] in ("9896", "9906") for row in body["Processes"])


# =========================================================================== stats
@pytest.mark.asyncio
async def test_stats_not_streamed_has_two_samples(served: Served) -> None:
    t0 = time.monotonic()
    async with served.session() as s, s.get("http://d/containers/t1/stats?stream=False") as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "application/json"
        doc = json.loads(await r.read())
    elapsed = time.monotonic() - t0
    assert 0.9 < elapsed < 2.0
    assert doc["name"] == "/t1" and doc["id"] == RUNNING_ID
    assert doc["preread"] != stats.ZERO_TIME
    assert doc["precpu_stats"]["system_cpu_usage"] > 0
    assert doc["memory_stats"]["usage"] == 618496
    assert doc["networks"]["eth0"]["rx_bytes"] == 309325107


@pytest.mark.asyncio
async def test_stats_one_shot_and_bad_combination(served: Served) -> None:
    async with served.session() as s:
        t0 = time.monotonic()
        async with s.get("http://d/containers/t1/stats?stream=0&one-shot=1") as r:
            doc = json.loads(await r.read())
        assert time.monotonic() - t0 < 0.9
        assert doc["preread"] == stats.ZERO_TIME and doc["precpu_stats"] == stats.zero_cpu()
        async with s.get("http://d/containers/t1/stats?one-shot=1") as r:
            assert r.status == 400
        async with s.get("http://d/containers/zz/stats?stream=0") as r:
            assert r.status == 404
        async with s.get("http://d/containers/c1/stats?stream=0") as r:
            doc = json.loads(await r.read())
            assert doc["read"] == stats.ZERO_TIME and doc["memory_stats"] == {}


@pytest.mark.asyncio
async def test_stats_stream_one_object_per_second(served: Served) -> None:
    async with served.session() as s, s.get("http://d/containers/t1/stats") as r:
        assert r.status == 200
        t0 = time.monotonic()
        first = json.loads(await r.content.readline())
        second = json.loads(await r.content.readline())
        elapsed = time.monotonic() - t0
    assert 0.8 < elapsed < 2.0
    assert first["preread"] == stats.ZERO_TIME
    assert second["preread"] == first["read"]


def _write_proc_cgroup(base: Path) -> None:
    lines = [f"{n}:{c}:/wharfd/{RUNNING_ID}" for n, c in
             enumerate(("memory", "cpuacct", "cpu", "blkio", "pids"), start=1)]
    (base / "proc" / str(PID) / "cgroup").write_text("\n".join(lines) + "\n0::/\n")


@pytest.mark.asyncio
async def test_cgroup_dirs_fall_back_to_the_init_process(short_tmp: Path) -> None:
    """A relative --cgroup-parent (below the runtime's own cgroup) or a daemon restarted
    with another parent: the kernel's /proc/<pid>/cgroup says where the container is."""
    containers, facade, _ = await asyncio.to_thread(_build, short_tmp)
    await asyncio.to_thread(_write_proc_cgroup, short_tmp)
    view = containers.views[RUNNING_ID]
    moved = ContainerView(
        ContainerConfig(**{**view.config.__dict__,
                           "host_config": {"CgroupParent": "relative/parent"}}),
        view.state,
    )
    files = await facade.cgroup_files(moved)
    assert files.dirs["memory"] == short_tmp / "cgroup" / "memory" / "wharfd" / RUNNING_ID
    sample = await asyncio.to_thread(
        stats.read_sample, files, None,
        stats.HostFiles(FIXTURES / "proc_stat", FIXTURES / "meminfo"))
    assert sample.memory["usage"] == 618496
