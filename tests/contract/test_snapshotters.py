"""The Snapshotter contract (engine/snapshots/base.py), run against every implementation.

Needs root: the suite mounts what ``mounts()`` describes with engine/snapshots/mount.py,
on a real data root in a temp dir, and checks what a container would see.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from engine.errors import Conflict, InvalidParameter, NotFound
from engine.layout import Layout
from engine.snapshots import mount as mounting
from engine.snapshots.base import Snapshotter
from engine.snapshots.overlay import OverlaySnapshotter
from engine.store.atomic import ensure_dir
from engine.store.db import Database

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root"),
]

Factory = Callable[[Layout, Database], Snapshotter]
IMPLEMENTATIONS: dict[str, Factory] = {"overlay": OverlaySnapshotter}


@dataclass
class Env:
    layout: Layout
    db: Database
    sn: Snapshotter
    target: Path
    factory: Factory


def _prepare_dirs(layout: Layout, target: Path) -> None:
    for path, mode in layout.persistent_dirs():
        ensure_dir(path, mode)
    target.mkdir()


@pytest_asyncio.fixture(params=sorted(IMPLEMENTATIONS))
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    layout = Layout(data_root=tmp_path / "data", exec_root=tmp_path / "run")
    target = tmp_path / "mnt"
    await asyncio.to_thread(_prepare_dirs, layout, target)
    db = Database(layout.db_path)
    await db.open()
    factory = IMPLEMENTATIONS[request.param]
    sn = factory(layout, db)
    await sn.cleanup()
    try:
        yield Env(layout, db, sn, target, factory)
    finally:
        await asyncio.to_thread(mounting.unmount_all, target)
        await close_db(db)


async def close_db(db: Database) -> None:
    """``Database.close()`` joins its worker thread on the event loop (a blocking call the
    test harness rejects); do the same steps off the loop."""
    conn, db._conn = db._conn, None
    if conn is not None:
        await asyncio.to_thread(conn.close)
    await asyncio.to_thread(db._executor.shutdown, True)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


async def _mount(env: Env, key: str) -> None:
    await asyncio.to_thread(mounting.mount, await env.sn.mounts(key), env.target)


async def _unmount(env: Env) -> None:
    await asyncio.to_thread(mounting.unmount, env.target)


async def _read(path: Path) -> bytes:
    return await asyncio.to_thread(path.read_bytes)


async def _exists(path: Path) -> bool:
    return await asyncio.to_thread(os.path.lexists, path)


@pytest.mark.asyncio
async def test_lifecycle_layers_and_a_container(env: Env) -> None:
    sn = env.sn
    mounts = await sn.prepare("extract-1", None)
    assert [m.type for m in mounts] == ["bind"]
    base_fs = sn.writable_path("extract-1")
    await asyncio.to_thread(_write, base_fs / "etc" / "base", b"from base")
    await sn.commit("layer1", "extract-1")
    info = await sn.stat("layer1")
    assert (info.key, info.parent, info.kind) == ("layer1", None, "committed")
    with pytest.raises(NotFound):
        await sn.stat("extract-1")
    with pytest.raises(InvalidParameter):
        sn.writable_path("layer1")

    await sn.prepare("extract-2", "layer1")
    await _mount(env, "extract-2")
    assert await _read(env.target / "etc" / "base") == b"from base"
    await asyncio.to_thread(_write, env.target / "etc" / "second", b"from layer 2")
    await _unmount(env)
    upper = sn.writable_path("extract-2")
    assert await _read(upper / "etc" / "second") == b"from layer 2"
    assert not await _exists(upper / "etc" / "base")  # lower files stay in the lower layer
    await sn.commit("layer2", "extract-2")

    mounts = await sn.prepare("ctr", "layer2")
    overlay = mounts[0]
    assert overlay.type == "overlay"
    lower = next(o for o in overlay.options if o.startswith("lowerdir="))
    assert len(lower.split(":")) == 2  # top to bottom: layer2, layer1
    await _mount(env, "ctr")
    assert await _read(env.target / "etc" / "base") == b"from base"
    assert await _read(env.target / "etc" / "second") == b"from layer 2"
    await asyncio.to_thread((env.target / "etc" / "base").unlink)
    await _unmount(env)

    with pytest.raises(Conflict):
        await sn.remove("layer2")
    for key in ("ctr", "layer2", "layer1"):
        await sn.remove(key)
        with pytest.raises(NotFound):
            await sn.stat(key)
    assert await asyncio.to_thread(os.listdir, env.layout.snapshots_dir) == []
    assert await env.db.query("SELECT key FROM snapshots") == []


@pytest.mark.asyncio
async def test_mark_removed_frees_the_key_and_finish_removals_deletes_later(env: Env) -> None:
    """remove in two steps (rmi answers between them): a chain marked top first, the same
    keys made again before any file went, then the old files deleted; a crash before
    that is finished by ``cleanup``."""
    sn = env.sn

    async def chain(tag: bytes) -> None:
        await sn.prepare("extract-a", None)
        await asyncio.to_thread(_write, sn.writable_path("extract-a") / "f", tag)
        await sn.commit("layer1", "extract-a")
        await sn.prepare("extract-b", "layer1")
        await sn.commit("layer2", "extract-b")

    await chain(b"old")
    old_dirs = set(await asyncio.to_thread(os.listdir, env.layout.snapshots_dir))
    await sn.mark_removed("layer2")
    await sn.mark_removed("layer1")  # its child is marked: no longer a dependant
    for key in ("layer1", "layer2"):
        with pytest.raises(NotFound):
            await sn.stat(key)
    assert set(await asyncio.to_thread(os.listdir, env.layout.snapshots_dir)) == old_dirs
    await chain(b"new")  # the keys are free at once
    await sn.mark_removed("layer2")
    assert len(await sn.finish_removals()) == 3
    left = set(await asyncio.to_thread(os.listdir, env.layout.snapshots_dir))
    assert left.isdisjoint(old_dirs) and len(left) == 1
    assert await _read(env.layout.snapshot_dir(left.pop()) / "fs" / "f") == b"new"

    await sn.mark_removed("layer1")
    restarted = env.factory(env.layout, env.db)  # a crash: nobody finished the removal
    await restarted.cleanup()
    assert await asyncio.to_thread(os.listdir, env.layout.snapshots_dir) == []
    assert await env.db.query("SELECT key FROM snapshots") == []


@pytest.mark.asyncio
async def test_committed_views_are_read_only(env: Env) -> None:
    sn = env.sn
    await sn.prepare("a", None)
    await asyncio.to_thread(_write, sn.writable_path("a") / "f", b"a")
    await sn.commit("A", "a")
    await sn.prepare("b", "A")
    await asyncio.to_thread(_write, sn.writable_path("b") / "g", b"b")
    await sn.commit("B", "b")
    for key in ("A", "B"):
        await _mount(env, key)
        assert await _read(env.target / "f") == b"a"
        with pytest.raises(OSError) as info:
            await asyncio.to_thread(_write, env.target / "new", b"x")
        assert info.value.errno == errno.EROFS
        await _unmount(env)


@pytest.mark.asyncio
async def test_errors(env: Env) -> None:
    sn = env.sn
    await sn.prepare("k", None)
    with pytest.raises(Conflict):
        await sn.prepare("k", None)
    with pytest.raises(NotFound):
        await sn.prepare("x", "missing")
    with pytest.raises(InvalidParameter):
        await sn.prepare("x", "k")  # parent must be committed
    with pytest.raises(NotFound):
        await sn.commit("n", "missing")
    await sn.prepare("other", None)
    await sn.commit("taken", "other")
    with pytest.raises(Conflict):
        await sn.commit("taken", "k")
    with pytest.raises(InvalidParameter):
        await sn.commit("again", "taken")
    with pytest.raises(NotFound):
        await sn.remove("missing")
    with pytest.raises(NotFound):
        await sn.mounts("missing")
    with pytest.raises(NotFound):
        sn.writable_path("missing")


@pytest.mark.asyncio
async def test_usage_counts_apparent_bytes_once_per_inode(env: Env) -> None:
    sn = env.sn
    await sn.prepare("u", None)
    fs = sn.writable_path("u")

    def fill() -> None:
        _write(fs / "a", b"x" * 1000)
        _write(fs / "d" / "b", b"y" * 24)
        os.link(fs / "a", fs / "d" / "a-again")
        os.symlink("a", fs / "s")

    await asyncio.to_thread(fill)
    assert await sn.usage("u") == 1000 + 24 + 1


@pytest.mark.asyncio
async def test_cleanup_sweeps_what_a_crash_leaves(env: Env) -> None:
    sn = env.sn
    await sn.prepare("extract-deadbeef", None)  # an unpack that never finished
    await sn.prepare("keep", None)
    await sn.prepare("gone", None)
    await sn.commit("gone-committed", "gone")
    # rule 3 interrupted: marked, files still there
    await env.db.execute("UPDATE snapshots SET removing = 1 WHERE key = 'gone-committed'")

    def litter() -> None:
        orphan = env.layout.snapshot_dir("0123456789ab")  # renamed in, row never committed
        _write(orphan / "fs" / "f", b"x")
        (env.layout.tmp_dir / "snapshot-feedfacecafe" / "fs").mkdir(parents=True)

    await asyncio.to_thread(litter)
    fresh = env.factory(env.layout, env.db)  # a restarted daemon
    removed = await fresh.cleanup()
    assert {"extract-deadbeef", "gone-committed", "0123456789ab"} <= set(removed)
    assert (await fresh.stat("keep")).kind == "active"
    rows = [r["key"] for r in await env.db.query("SELECT key FROM snapshots")]
    assert rows == ["keep"]
    dirs = await asyncio.to_thread(os.listdir, env.layout.snapshots_dir)
    assert len(dirs) == 1
    assert await asyncio.to_thread(os.listdir, env.layout.tmp_dir) == []


@pytest.mark.asyncio
async def test_many_layers_exceed_the_page_size_limit(env: Env) -> None:
    sn = env.sn
    parent: str | None = None
    count = 130
    for i in range(count):
        key = f"extract-{i}"
        await sn.prepare(key, parent)
        await asyncio.to_thread(_write, sn.writable_path(key) / f"layer-{i}", str(i).encode())
        await sn.commit(f"L{i}", key)
        parent = f"L{i}"
    mounts = await sn.prepare("ctr", parent)
    options = ",".join(mounts[0].options)
    assert len(options) > mounting.MAX_OPTIONS  # the /proc/self/fd path is exercised
    await _mount(env, "ctr")
    assert await _read(env.target / "layer-0") == b"0"
    assert await _read(env.target / f"layer-{count - 1}") == str(count - 1).encode()
    await _unmount(env)


@pytest.mark.asyncio
async def test_mount_errors_carry_strerror(env: Env, tmp_path: Path) -> None:
    from engine.snapshots.base import Mount

    bad = Mount("overlay", "overlay", (f"lowerdir={tmp_path / 'nope'}:{tmp_path / 'nope2'}",))
    with pytest.raises(mounting.MountError, match="No such file or directory"):
        await asyncio.to_thread(mounting.mount, [bad], env.target)
    await asyncio.to_thread(mounting.unmount, env.target)  # not mounted: fine
    await asyncio.to_thread(mounting.unmount, tmp_path / "does-not-exist")
    await asyncio.to_thread(shutil.rmtree, tmp_path / "data" / "tmp", True)


def _many_files(root: Path, count: int) -> None:
    for i in range(count):
        _write(root / f"d{i % 40}" / f"f{i}", b"x")


async def _still_there(sn: Snapshotter, key: str) -> bool:
    try:
        await sn.stat(key)
    except NotFound:
        return False
    return True


@pytest.mark.asyncio
async def test_remove_beside_finish_removals_of_the_same_snapshot(env: Env) -> None:
    """A container's ``rm`` (remove) while an ``rmi`` reaps in the background
    (finish_removals): both see the marked row; neither may fail because the other
    deleted part of the tree first (CI caught ``[Errno 2]`` from ``docker rm -f``)."""
    sn = env.sn
    for round_ in range(3):
        key = f"ctr-{round_}"
        await sn.prepare(key, None)
        await asyncio.to_thread(_many_files, sn.writable_path(key), 3000)
        remove = asyncio.create_task(sn.remove(key))
        for _ in range(100_000):  # until the row is marked and the files are going
            if remove.done() or not await _still_there(sn, key):
                break
            await asyncio.sleep(0)
        await asyncio.gather(remove, sn.finish_removals())
        with pytest.raises(NotFound):
            await sn.stat(key)
    assert await asyncio.to_thread(os.listdir, env.layout.snapshots_dir) == []
    assert await env.db.query("SELECT key FROM snapshots") == []
