"""VolumeManager on a real data root: create (idempotent under concurrency, L4), list
filters, in-use 409, prune rules, persistence across reopen, crash points, container
mounts (plans, references, OCI mounts, events), populating a volume from an image
directory without following its symlinks, device volumes (tmpfs), and the HTTP router.

The stack is engine/daemon.py's start-up order for volumes (dirs, tmp wiped, database,
``volumes.load()``); fake container ids stand in for the container manager. ``DRIVER``
runs the same stack in a child process that dies at a crash point (``WHARFD_CRASH_AT``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from api.app import Mount, build_app
from api.routers import volumes as volumes_router
from engine.errors import Conflict, InvalidParameter, NotFound
from engine.events import Event, EventBus
from engine.ids import new_id
from engine.layout import Layout
from engine.store.atomic import ensure_dir
from engine.store.db import Database
from engine.volumes import local
from engine.volumes.manager import VolumeManager

REPO_ROOT = Path(__file__).resolve().parents[2]
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, mknod, mount)")
ANON = local.ANONYMOUS_LABEL


# ------------------------------------------------------------------ the stack
class RecordingBus(EventBus):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Event] = []

    def publish(self, event: Event) -> None:
        self.seen.append(event)
        super().publish(event)

    def actions(self, type_: str = "volume") -> list[tuple[str, str]]:
        return [(e.action, e.actor_id) for e in self.seen if e.type == type_]


@dataclass
class Stack:
    layout: Layout
    db: Database
    events: RecordingBus
    volumes: VolumeManager


def _prepare_dirs(layout: Layout) -> None:
    """What Engine._prepare_dirs does: create the dirs, wipe tmp/."""
    for path, mode in layout.persistent_dirs() + layout.volatile_dirs():
        ensure_dir(path, mode)
    for entry in layout.tmp_dir.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


async def open_stack(data_root: Path) -> Stack:
    layout = Layout(data_root=data_root, exec_root=data_root.parent / "run")
    await asyncio.to_thread(_prepare_dirs, layout)
    db = Database(layout.db_path)
    await db.open()
    events = RecordingBus()
    volumes = VolumeManager(layout, db, events)
    await volumes.load()
    return Stack(layout, db, events, volumes)


async def close_stack(stack: Stack) -> None:
    await stack.volumes.close()
    await stack.db.close()


@pytest_asyncio.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    s = await open_stack(tmp_path / "data")
    try:
        yield s
    finally:
        await close_stack(s)


def _write(path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)


async def write(path: Path, data: str) -> None:
    await asyncio.to_thread(_write, path, data)


async def read(path: Path) -> str:
    return await asyncio.to_thread(path.read_text)


async def exists(path: Path) -> bool:
    return await asyncio.to_thread(os.path.lexists, path)


async def listdir(path: Path) -> list[str]:
    return sorted(await asyncio.to_thread(os.listdir, path))


async def mount(stack: Stack, cid: str, binds: list[str] | None = None,
                **host: Any) -> tuple[Any, ...]:
    """What the container manager does at create."""
    config: dict[str, Any] = {"Volumes": {v: {} for v in host.pop("volumes", [])} or None}
    image: dict[str, Any] = {"Volumes": {v: {} for v in host.pop("image_volumes", [])} or None}
    return await stack.volumes.create_container_mounts(
        cid, config, {"Binds": binds, **host}, image, lambda ref: ref,
    )


# ------------------------------------------------------------------ create / inspect / rm
@pytest.mark.asyncio
async def test_create_inspect_remove(stack: Stack) -> None:
    view = await stack.volumes.create("data1", labels={"v": "1"})
    assert view.name == "data1" and view.driver == "local" and view.labels == {"v": "1"}
    assert view.options is None and not view.anonymous
    assert view.mountpoint == stack.layout.volumes_dir / "data1" / "_data"
    assert view.created_text.endswith("Z") and len(view.created_text) == 20
    st_root = await asyncio.to_thread(os.stat, view.mountpoint.parent)
    st_data = await asyncio.to_thread(os.stat, view.mountpoint)
    assert stat.S_IMODE(st_root.st_mode) == 0o701 and stat.S_IMODE(st_data.st_mode) == 0o755
    assert stack.volumes.get("data1") == view
    assert [v.name for v in stack.volumes.list()] == ["data1"]
    with pytest.raises(NotFound, match=r"^get nope: no such volume$"):
        stack.volumes.get("nope")

    await write(view.mountpoint / "f", "x")
    await stack.volumes.remove("data1")
    assert not await exists(view.mountpoint.parent)
    assert await listdir(stack.layout.tmp_dir) == []
    assert stack.events.actions() == [("create", "data1"), ("destroy", "data1")]
    assert stack.events.seen[0].attributes == {"driver": "local"}
    with pytest.raises(NotFound, match=r"^get data1: no such volume$"):
        await stack.volumes.remove("data1")
    await stack.volumes.remove("data1", force=True)  # force: a missing volume is fine
    assert await stack.db.query("SELECT * FROM volumes") == []


@pytest.mark.asyncio
async def test_anonymous_and_options(stack: Stack) -> None:
    anon = await stack.volumes.create()
    assert len(anon.name) == 64 and anon.anonymous and anon.labels == {ANON: ""}
    opts = {"type": "tmpfs", "device": "tmpfs", "o": "size=1m"}
    dev = await stack.volumes.create("dev1", driver_opts=opts)
    assert dev.options == opts and dev.needs_mount
    empty = await stack.volumes.create("empty1", driver_opts={})
    assert empty.options == {} and not empty.needs_mount


@pytest.mark.asyncio
async def test_l4_twenty_concurrent_creates_are_one_volume(stack: Stack) -> None:
    views = await asyncio.gather(*(stack.volumes.create("same") for _ in range(20)))
    assert len({(v.name, v.created) for v in views}) == 1
    assert stack.events.actions() == [("create", "same")]
    assert len(await stack.db.query("SELECT * FROM volumes")) == 1
    assert await listdir(stack.layout.volumes_dir) == ["same"]
    # an existing volume is returned even when the new call's labels differ (dockerd)
    again = await stack.volumes.create("same", labels={"other": "x"})
    assert again == views[0]


@pytest.mark.asyncio
@pytest.mark.parametrize(("name", "opts", "message"), [
    ("a/b", None, 'create a/b: "a/b" includes invalid characters for a local volume name, '
                  'only "[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed. If you intended to pass a '
                  "host directory, use absolute path"),
    ("..", None, 'create ..: ".." includes invalid characters'),
    ("x", None, "create x: volume name is too short, names should be at least two "
                "alphanumeric characters"),
    ("ok1", {"bogus": "1"}, 'create ok1: invalid option: "bogus"'),
    ("ok1", {"type": "tmpfs"}, 'create ok1: missing required option: "device"'),
    ("ok1", {"o": "size=1m", "device": "tmpfs"}, 'create ok1: missing required option: "type"'),
    ("ok1", {"size": "10m"}, "create ok1: quota size requested but no quota support"),
])
async def test_create_rejects(stack: Stack, name: str, opts: dict[str, str] | None,
                              message: str) -> None:
    with pytest.raises(InvalidParameter) as info:
        await stack.volumes.create(name, driver_opts=opts)
    assert info.value.message.startswith(message)
    assert await listdir(stack.layout.volumes_dir) == []
    assert await listdir(stack.layout.tmp_dir) == []


@pytest.mark.asyncio
async def test_unknown_driver_is_404(stack: Stack) -> None:
    with pytest.raises(NotFound, match=r'^create v1: error looking up volume plugin nfsx: '
                                       r'plugin "nfsx" not found$'):
        await stack.volumes.create("v1", driver="nfsx")


# ------------------------------------------------------------------ in use (B17)
@pytest.mark.asyncio
async def test_in_use_is_409_even_with_force_and_survives_reopen(tmp_path: Path) -> None:
    s = await open_stack(tmp_path / "data")
    cid, other = new_id(), new_id()
    try:
        await mount(s, cid, ["v1:/data"])
        await mount(s, other, ["v1:/again"])
        message = f"remove v1: volume is in use - [{', '.join(sorted([cid, other]))}]"
        for force in (False, True):
            with pytest.raises(Conflict) as info:
                await s.volumes.remove("v1", force=force)
            assert info.value.message == message
        assert s.volumes.users("v1") == sorted([cid, other])
    finally:
        await close_stack(s)
    s = await open_stack(tmp_path / "data")  # a daemon restart: references are rows
    try:
        with pytest.raises(Conflict):
            await s.volumes.remove("v1")
        await s.volumes.release_container(cid)
        await s.volumes.release_container(cid)  # idempotent
        with pytest.raises(Conflict, match=rf"in use - \[{other}\]$"):
            await s.volumes.remove("v1")
        await s.volumes.release_container(other)
        await s.volumes.remove("v1")
        assert s.volumes.list() == []
    finally:
        await close_stack(s)


# ------------------------------------------------------------------ list filters
@pytest.mark.asyncio
async def test_list_filters(stack: Stack) -> None:
    await stack.volumes.create("web-data", labels={"app": "web", "tier": "front"})
    await stack.volumes.create("db-data", labels={"app": "db"})
    anon = await stack.volumes.create()
    await mount(stack, new_id(), ["db-data:/x"])

    def names(**filters: list[str]) -> list[str]:
        return [v.name for v in stack.volumes.list(filters)]

    assert names() == sorted(["web-data", "db-data", anon.name])
    assert names(dangling=["true"]) == sorted(["web-data", anon.name])
    assert names(dangling=["1"]) == names(dangling=["true"])
    assert names(dangling=["false"]) == ["db-data"]
    assert names(name=["data"]) == ["db-data", "web-data"]  # substring / regexp
    assert names(name=["^web"]) == ["web-data"]
    assert names(label=["app"]) == ["db-data", "web-data"]
    assert names(label=["app=web"]) == ["web-data"]
    assert names(label=["app=web", "tier=front"]) == ["web-data"]
    assert names(label=["app=web", "tier=back"]) == []
    assert names(label=[ANON]) == [anon.name]
    assert names(driver=["local"]) == names()
    assert names(driver=["other"]) == []
    with pytest.raises(InvalidParameter, match=r"^invalid filter 'bogus'$"):
        stack.volumes.list({"bogus": ["x"]})
    with pytest.raises(InvalidParameter, match=r"^invalid filter 'dangling=\[maybe\]'$"):
        stack.volumes.list({"dangling": ["maybe"]})


# ------------------------------------------------------------------ prune
@pytest.mark.asyncio
async def test_prune_rules(stack: Stack) -> None:
    named = await stack.volumes.create("named1", labels={"keep": "no"})
    anon_free = await stack.volumes.create(labels={"team": "a"})
    anon_used = await stack.volumes.create()
    anon_dev = await stack.volumes.create(driver_opts={"type": "tmpfs", "device": "tmpfs"})
    cid = new_id()
    await mount(stack, cid, [f"{anon_used.name}:/x"])
    await write(anon_free.mountpoint / "blob", "1234567890")

    deleted, reclaimed = await stack.volumes.prune()  # API >= 1.42: anonymous only
    assert deleted == [anon_free.name] and reclaimed == 10
    assert {v.name for v in stack.volumes.list()} == {named.name, anon_used.name, anon_dev.name}
    assert stack.events.seen[-1].action == "prune"
    assert stack.events.seen[-1].attributes == {"reclaimed": "10"}

    assert await stack.volumes.prune({"label": ["keep=yes"]}, all_=True) == ([], 0)
    assert await stack.volumes.prune({"all": ["true"], "label!": ["keep"]}) == ([], 0)
    assert (await stack.volumes.prune({"all": ["1"]}))[0] == ["named1"]
    # in use, and device volumes, are never pruned
    assert {v.name for v in stack.volumes.list()} == {anon_used.name, anon_dev.name}
    await stack.volumes.release_container(cid)
    assert (await stack.volumes.prune())[0] == [anon_used.name]

    with pytest.raises(InvalidParameter, match=r"^invalid filter 'dangling'$"):
        await stack.volumes.prune({"dangling": ["true"]})
    with pytest.raises(InvalidParameter, match=r"^invalid filter 'all': strconv.ParseBool"):
        await stack.volumes.prune({"all": ["maybe"]})
    with pytest.raises(InvalidParameter, match=r"only one value is expected"):
        await stack.volumes.prune({"all": ["true", "false"]})
    assert await listdir(stack.layout.tmp_dir) == []


# ------------------------------------------------------------------ persistence, sweeps
@pytest.mark.asyncio
async def test_persistence_across_reopen(tmp_path: Path) -> None:
    s = await open_stack(tmp_path / "data")
    cid = new_id()
    try:
        view = await s.volumes.create("keep1", driver_opts={}, labels={"a": "b"})
        await write(view.mountpoint / "row", "row1")
        plans = await mount(s, cid, ["keep1:/var/lib/mysql", "/srv/x:/y:ro"],
                            Tmpfs={"/run": "size=1m"})
        inspected = s.volumes.inspect_mounts(cid)
    finally:
        await close_stack(s)
    s = await open_stack(tmp_path / "data")
    try:
        again = s.volumes.get("keep1")
        assert (again.name, again.labels, again.options, again.created) == (
            "keep1", {"a": "b"}, {}, view.created)
        assert await read(again.mountpoint / "row") == "row1"
        assert s.volumes.container_plans(cid) == plans
        assert s.volumes.inspect_mounts(cid) == inspected
        assert s.volumes.users("keep1") == [cid]
    finally:
        await close_stack(s)


@pytest.mark.asyncio
async def test_sweep_orphan_dirs(tmp_path: Path) -> None:
    layout = Layout(data_root=tmp_path / "data", exec_root=tmp_path / "run")
    await asyncio.to_thread(_prepare_dirs, layout)
    await write(layout.volumes_dir / "lost1" / "_data" / "precious", "data")
    await asyncio.to_thread((layout.volumes_dir / "empty1" / "_data").mkdir, parents=True)
    await write(layout.volumes_dir / "bad name" / "_data" / "x", "kept")
    s = await open_stack(tmp_path / "data")
    try:
        assert [v.name for v in s.volumes.list()] == ["lost1"]  # data is adopted, never lost
        assert await read(s.volumes.get("lost1").mountpoint / "precious") == "data"
        assert await listdir(layout.volumes_dir) == ["bad name", "lost1"]
    finally:
        await close_stack(s)


@pytest.mark.asyncio
async def test_forget_containers_except(stack: Stack) -> None:
    real, ghost = new_id(), new_id()
    await mount(stack, real, ["v1:/a"])
    await mount(stack, ghost, ["v1:/b", "v2:/c"])
    assert await stack.volumes.forget_containers_except({real}) == [ghost]
    assert stack.volumes.users("v1") == [real] and stack.volumes.users("v2") == []
    rows = await stack.db.query("SELECT container_id FROM volume_refs")
    assert {r["container_id"] for r in rows} == {real}


# ------------------------------------------------------------------ crash points
DRIVER = """
import asyncio, os, sys
from pathlib import Path
from tests.integration.test_volumes import open_stack, write

async def main(root, mode, point):
    stack = await open_stack(Path(root))
    if mode == "remove":
        view = await stack.volumes.create("crashy")
        await write(view.mountpoint / "file", "data")
    os.environ["WHARFD_CRASH_AT"] = point
    if mode == "create":
        await stack.volumes.create("crashy")
    else:
        await stack.volumes.remove("crashy")
    print("no crash at", point)
    sys.exit(3)

asyncio.run(main(*sys.argv[1:]))
"""

CRASH_POINTS = [
    ("create", "volume_create_after_dir"),
    ("remove", "volume_remove_marked"),
    ("remove", "volume_remove_after_files"),
]


def _run_driver(data_root: Path, mode: str, point: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "WHARFD_CRASH_AT"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run(
        [sys.executable, "-c", DRIVER, str(data_root), mode, point],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize(("mode", "point"), CRASH_POINTS, ids=[p for _, p in CRASH_POINTS])
@pytest.mark.asyncio
async def test_crash_points_converge(tmp_path: Path, mode: str, point: str) -> None:
    data_root = tmp_path / "data"
    proc = await asyncio.to_thread(_run_driver, data_root, mode, point)
    assert proc.returncode == 137, proc.stdout + proc.stderr
    s = await open_stack(data_root)  # the restart: sweeps and unfinished removals run
    try:
        # never half: a volume is listed with its directory, or neither exists
        assert s.volumes.list() == []
        assert await listdir(s.layout.volumes_dir) == []
        assert await listdir(s.layout.tmp_dir) == []
        assert await s.db.query("SELECT * FROM volumes") == []
        view = await s.volumes.create("crashy")  # the name is usable again
        assert await listdir(view.mountpoint) == []
    finally:
        await close_stack(s)


# ------------------------------------------------------------------ container mounts
@pytest.mark.asyncio
async def test_container_mounts_lifecycle(stack: Stack, tmp_path: Path) -> None:
    cid = new_id()
    host_dir = tmp_path / "host" / "www"
    plans = await mount(
        stack, cid, ["named1:/data:ro", f"{host_dir}:/www", "/anon1"],
        Mounts=[{"Type": "tmpfs", "Target": "/scratch", "TmpfsOptions": {"SizeBytes": 1 << 20}}],
        Tmpfs={"/run": "size=1m"}, volumes=["/cfg"], image_volumes=["/var/lib/db"],
    )
    by = {p.destination: p for p in plans}
    assert set(by) == {"/data", "/www", "/anon1", "/scratch", "/run", "/cfg", "/var/lib/db"}
    anon = {by[d].source for d in ("/anon1", "/cfg", "/var/lib/db")}
    assert all(len(n) == 64 for n in anon)
    assert all(ANON in stack.volumes.get(n).labels for n in anon)
    assert by["/data"].mode == "ro" and by["/anon1"].mode == "z" and by["/cfg"].mode == ""
    creates = [a for a in stack.events.actions() if a[0] == "create"]
    assert len(creates) == 4

    rootfs = tmp_path / "rootfs"
    await asyncio.to_thread(rootfs.mkdir)
    oci = await stack.volumes.mount_container(cid, rootfs)
    ob = {m["destination"]: m for m in oci}
    assert ob["/data"] == {"destination": "/data", "type": "bind",
                           "source": str(stack.volumes.get("named1").mountpoint),
                           "options": ["rbind", "ro"]}
    assert ob["/www"]["source"] == str(host_dir) and ob["/www"]["options"] == [
        "rbind", "rprivate"]
    assert await exists(host_dir)  # -v creates a missing host directory at start
    assert ob["/scratch"]["options"] == ["noexec", "nosuid", "nodev", "rprivate", "size=1m"]
    assert ob["/run"]["type"] == "tmpfs"
    mounts = [e for e in stack.events.seen if e.action == "mount"]
    assert len(mounts) == 4 and mounts[0].attributes == {
        "driver": "local", "container": cid, "destination": "/data", "read/write": "false",
        "propagation": ""}

    inspected = {m["Destination"]: m for m in stack.volumes.inspect_mounts(cid)}
    assert "/run" not in inspected  # --tmpfs is not a mount point in dockerd's inspect
    assert inspected["/scratch"] == {"Type": "tmpfs", "Source": "", "Destination": "/scratch",
                                     "Mode": "", "RW": True, "Propagation": ""}
    assert inspected["/data"]["Name"] == "named1" and inspected["/data"]["Mode"] == "ro"

    await stack.volumes.unmount_container(cid)
    await stack.volumes.unmount_container(cid)  # idempotent
    assert len([e for e in stack.events.seen if e.action == "unmount"]) == 4
    rows = await stack.db.query("SELECT active FROM volume_refs WHERE active = 1")
    assert rows == []

    # `docker rm -v`: the anonymous volumes go, the named one stays
    await stack.volumes.release_container(cid, remove_anonymous=True)
    assert [v.name for v in stack.volumes.list()] == ["named1"]
    assert stack.volumes.container_plans(cid) == ()


@pytest.mark.asyncio
async def test_rm_v_keeps_anonymous_volume_another_container_uses(stack: Stack) -> None:
    first, second = new_id(), new_id()
    plans = await mount(stack, first, ["/shared"])
    name = plans[0].source
    await stack.volumes.create_container_mounts(
        second, {}, {"VolumesFrom": [f"{first}:ro"]}, {}, lambda ref: ref)
    assert stack.volumes.container_plans(second)[0].read_only
    await stack.volumes.release_container(first, remove_anonymous=True)
    assert stack.volumes.get(name).anonymous  # still used by the second one
    await stack.volumes.release_container(second, remove_anonymous=True)
    assert stack.volumes.list() == []


@pytest.mark.asyncio
async def test_failed_create_is_undone(stack: Stack) -> None:
    cid = new_id()
    with pytest.raises(InvalidParameter, match="Duplicate mount point: /x"):
        await mount(stack, cid, ["v1:/x", "v2:/x"])
    with pytest.raises(NotFound, match="plugin"):
        await mount(stack, cid, ["/anon"], VolumeDriver="nfsx")
    with pytest.raises(InvalidParameter, match="No such container: ghost"):
        await stack.volumes.create_container_mounts(
            cid, {}, {"VolumesFrom": ["ghost"]}, {}, _no_container)
    assert stack.volumes.list() == [] and stack.volumes.container_plans(cid) == ()
    assert await stack.db.query("SELECT * FROM volume_refs") == []


def _no_container(ref: str) -> str:
    raise NotFound(f"No such container: {ref}")


# ------------------------------------------------------------------ populating from the image
def _make_image_tree(rootfs: Path, outside: Path) -> None:
    """An image rootfs whose VOLUME directory holds every kind of entry, and symlinks
    that point outside the rootfs."""
    outside.mkdir(parents=True)
    (outside / "secret").write_text("host secret")
    data = rootfs / "real" / "mysql"
    (data / "sub").mkdir(parents=True)
    (data / "f.txt").write_text("hello")
    os.chmod(data / "f.txt", 0o640)
    os.chown(data / "f.txt", 1234, 5678)
    os.setxattr(data / "f.txt", "user.note", b"kept")
    (data / "sub" / "deep").write_text("deep")
    os.link(data / "f.txt", data / "sub" / "hard")
    os.symlink(str(outside), data / "abs-out")  # absolute, outside the rootfs
    os.symlink("../../../../../../../../" + str(outside).lstrip("/"), data / "rel-out")
    os.mkfifo(data / "fifo")
    os.chown(data, 999, 999)
    os.chmod(data, 0o750)
    os.chmod(data / "sub", 0o700)
    # the destination goes through a symlink that is absolute *inside* the image
    (rootfs / "var" / "lib").mkdir(parents=True)
    os.symlink("/real/mysql", rootfs / "var" / "lib" / "mysql")
    # and one that tries to climb out of the rootfs to the host directory
    os.symlink("../../../../../../../../.." + str(outside), rootfs / "escape")
    (rootfs / "afile").write_text("not a dir")


@ROOT_ONLY
@pytest.mark.asyncio
async def test_populate_from_image_keeps_metadata_and_never_follows_symlinks(
    stack: Stack, tmp_path: Path
) -> None:
    rootfs, outside = tmp_path / "rootfs", tmp_path / "outside"
    await asyncio.to_thread(_make_image_tree, rootfs, outside)
    cid = new_id()
    await mount(stack, cid, ["db1:/var/lib/mysql", "esc1:/escape", "nc1:/var/lib/mysql2:nocopy",
                             "through1:/var/lib/mysql/abs-out"], image_volumes=["/missing"])
    await stack.volumes.mount_container(cid, rootfs)
    data = stack.volumes.get("db1").mountpoint

    def check() -> None:
        assert sorted(os.listdir(data)) == ["abs-out", "f.txt", "fifo", "rel-out", "sub"]
        st = os.stat(data / "f.txt")
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o640)
        assert os.getxattr(data / "f.txt", "user.note") == b"kept"
        assert (data / "f.txt").read_text() == "hello"
        assert os.stat(data / "sub" / "hard").st_ino == st.st_ino  # hard link kept
        assert stat.S_IMODE(os.stat(data / "sub").st_mode) == 0o700
        assert os.readlink(data / "abs-out") == str(outside)  # a link, not the host's files
        assert os.path.islink(data / "rel-out")
        assert stat.S_ISFIFO(os.lstat(data / "fifo").st_mode)
        root = os.stat(data)
        assert (root.st_uid, root.st_gid, stat.S_IMODE(root.st_mode)) == (999, 999, 0o750)
        # "/escape" resolves inside the rootfs (to a path that does not exist there)
        assert os.listdir(stack.volumes.get("esc1").mountpoint) == []
        assert os.listdir(stack.volumes.get("nc1").mountpoint) == []
        # through the image's link to the host directory: resolved in the rootfs, not copied
        assert os.listdir(stack.volumes.get("through1").mountpoint) == []
        assert (outside / "secret").read_text() == "host secret"
        assert os.listdir(outside) == ["secret"]

    await asyncio.to_thread(check)

    # populated once: emptied by the user, it is not filled again on the next start
    await stack.volumes.unmount_container(cid)
    await asyncio.to_thread(shutil.rmtree, data)
    await asyncio.to_thread(data.mkdir)
    await stack.volumes.mount_container(cid, rootfs)
    assert await listdir(data) == []

    # a second container with the same non-empty volume: nothing is mixed in
    await write(data / "mine", "user data")
    other = new_id()
    await mount(stack, other, ["db1:/var/lib/mysql"])
    await stack.volumes.mount_container(other, rootfs)
    assert await listdir(data) == ["mine"]


@ROOT_ONLY
@pytest.mark.asyncio
async def test_image_volume_over_a_file_is_refused_at_start(stack: Stack, tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    await write(rootfs / "afile", "x")
    cid = new_id()
    await mount(stack, cid, image_volumes=["/afile"])
    with pytest.raises(InvalidParameter, match="cannot mount volume over existing file"):
        await stack.volumes.mount_container(cid, rootfs)
    assert await stack.db.query("SELECT * FROM volume_refs WHERE active = 1") == []


# ------------------------------------------------------------------ device volumes
@ROOT_ONLY
@pytest.mark.asyncio
async def test_tmpfs_volume_mounted_while_used(stack: Stack, tmp_path: Path) -> None:
    view = await stack.volumes.create(
        "ram1", driver_opts={"type": "tmpfs", "device": "tmpfs", "o": "size=1m,mode=0755"})
    rootfs = tmp_path / "rootfs"
    await asyncio.to_thread(rootfs.mkdir)
    first, second = new_id(), new_id()
    await mount(stack, first, ["ram1:/ram"])
    await mount(stack, second, ["ram1:/ram"])
    try:
        await stack.volumes.mount_container(first, rootfs)
        assert await asyncio.to_thread(local.is_mounted, view.mountpoint)
        await stack.volumes.mount_container(second, rootfs)
        await stack.volumes.unmount_container(first)
        assert await asyncio.to_thread(local.is_mounted, view.mountpoint)  # second uses it
        await stack.volumes.unmount_container(second)
        assert not await asyncio.to_thread(local.is_mounted, view.mountpoint)
    finally:
        await asyncio.to_thread(local.unmount_device, view.mountpoint)

    bad = await stack.volumes.create("bad1", driver_opts={"type": "none", "o": "bind",
                                                           "device": "/nonexistent/x"})
    cid = new_id()
    await mount(stack, cid, ["bad1:/x"])
    with pytest.raises(Exception, match=r"error while mounting volume '.*bad1/_data': failed "
                                        r"to mount local volume"):
        await stack.volumes.mount_container(cid, rootfs)
    assert not await asyncio.to_thread(local.is_mounted, bad.mountpoint)


# ------------------------------------------------------------------ the HTTP router
@pytest.mark.asyncio
async def test_router(stack: Stack) -> None:
    app = build_app([Mount(volumes_router.routes, volumes_router.BACKEND, stack.volumes)])
    async with TestClient(TestServer(app)) as client:
        resp = await client.post("/volumes/create", json={"Name": "capvol",
                                                          "Labels": {"v": "1"}})
        assert resp.status == 201
        body = await resp.json()
        assert set(body) == {"CreatedAt", "Driver", "Labels", "Mountpoint", "Name", "Options",
                             "Scope"}
        assert (body["Name"], body["Driver"], body["Labels"], body["Options"], body["Scope"]) == (
            "capvol", "local", {"v": "1"}, None, "local")
        assert body["Mountpoint"].endswith("/volumes/capvol/_data")

        resp = await client.post("/v1.50/volumes/create", data=b"",
                                 headers={"Content-Type": "application/json"})
        assert resp.status == 201
        anon = (await resp.json())["Name"]
        assert (await resp.json())["Labels"] == {ANON: ""}

        resp = await client.get("/volumes")
        listing = await resp.json()
        assert listing["Warnings"] is None
        assert [v["Name"] for v in listing["Volumes"]] == sorted(["capvol", anon])
        resp = await client.get('/volumes?filters={"label":{"v=1":true}}')
        assert [v["Name"] for v in (await resp.json())["Volumes"]] == ["capvol"]
        resp = await client.get('/volumes?filters={"bogus":["x"]}')
        assert resp.status == 400

        resp = await client.get("/volumes/capvol")
        assert (await resp.json())["Name"] == "capvol"
        resp = await client.get("/volumes/nope")
        assert resp.status == 404 and resp.headers["Content-Type"] == "application/json"
        assert await resp.json() == {"message": "get nope: no such volume"}

        resp = await client.post("/volumes/create", json={"Name": "a/b"})
        assert resp.status == 400
        resp = await client.post("/volumes/create", json={"Name": 5})
        assert resp.status == 400 and "cannot unmarshal number" in (await resp.json())["message"]
        resp = await client.post("/volumes/create", json={"Name": "x1", "Driver": "nope"})
        assert resp.status == 404

        await mount(stack, "c" * 64, ["capvol:/data"])
        resp = await client.delete("/volumes/capvol?force=1")
        assert resp.status == 409
        assert (await resp.json())["message"] == f"remove capvol: volume is in use - [{'c' * 64}]"
        await stack.volumes.release_container("c" * 64)

        resp = await client.post("/volumes/prune")
        assert await resp.json() == {"VolumesDeleted": [anon], "SpaceReclaimed": 0}
        resp = await client.post("/v1.41/volumes/prune")  # before 1.42: every unused volume
        assert await resp.json() == {"VolumesDeleted": ["capvol"], "SpaceReclaimed": 0}
        resp = await client.post('/volumes/prune?filters={"dangling":["true"]}')
        assert resp.status == 400

        resp = await client.delete("/volumes/capvol")
        assert resp.status == 404
        resp = await client.delete("/volumes/capvol?force=true")
        assert resp.status == 204
