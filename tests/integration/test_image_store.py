"""ImageManager on a real data root: import, resolve, tag, list, remove, crash safety.

The stack here is the start-up order of engine/daemon.py (dirs, tmp wiped, database,
content cleanup, snapshot cleanup, image load) without the container side; a fake usage
source stands in for the container manager. ``DRIVER`` runs the same stack in a child
process that dies at a crash point (``WHARFD_CRASH_AT``).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from api.app import Mount, build_app
from api.routers import images as images_router
from engine.errors import Conflict, InvalidParameter, NotFound
from engine.events import Event, EventBus
from engine.images.manager import ImageManager
from engine.images.unpack import UnpackError
from engine.layout import Layout
from engine.snapshots import mount as mounting
from engine.snapshots.overlay import OverlaySnapshotter
from engine.store.atomic import ensure_dir
from engine.store.content import ContentStore
from engine.store.db import Database
from tests.harness.busybox import files_tar

REPO_ROOT = Path(__file__).resolve().parents[2]
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, mknod, mount)")
pytestmark = [pytest.mark.root, ROOT_ONLY]


# ------------------------------------------------------------------ the stack
class RecordingBus(EventBus):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Event] = []

    def publish(self, event: Event) -> None:
        self.seen.append(event)
        super().publish(event)

    def actions(self) -> list[str]:
        return [e.action for e in self.seen]


@dataclass
class Stack:
    layout: Layout
    db: Database
    events: RecordingBus
    content: ContentStore
    snapshotter: OverlaySnapshotter
    images: ImageManager
    usage: dict[str, list[tuple[str, bool]]] = field(default_factory=dict)


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
    content = ContentStore(layout)
    snapshotter = OverlaySnapshotter(layout, db)
    events = RecordingBus()
    images = ImageManager(layout, db, events, content, snapshotter)
    stack = Stack(layout, db, events, content, snapshotter, images)
    images.set_usage_source(lambda image_id: stack.usage.get(image_id, []))
    await content.cleanup()
    await snapshotter.cleanup()
    await images.load()
    return stack


async def close_stack(stack: Stack) -> None:
    await stack.images.close()
    # Database.close() joins its worker thread on the loop; do it off the loop.
    conn, stack.db._conn = stack.db._conn, None
    if conn is not None:
        await asyncio.to_thread(conn.close)
    await asyncio.to_thread(stack.db._executor.shutdown, True)


async def file_chunks(path: Path, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    """An upload as the API hands it over: an async iterator of chunks."""
    f = await asyncio.to_thread(open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(f.read, size):
            yield chunk
    finally:
        await asyncio.to_thread(f.close)


async def bytes_chunks(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


@pytest_asyncio.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    s = await open_stack(tmp_path / "data")
    try:
        yield s
    finally:
        await close_stack(s)


def _sha256_file(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


async def _leftovers(stack: Stack) -> dict[str, Any]:
    """Everything on disk and in the tables that an empty image store must not have
    (once the files of removed layers, deleted after the reply, are gone)."""
    await stack.images.released_files_deleted()

    def disk() -> dict[str, Any]:
        return {
            "snapshot dirs": sorted(os.listdir(stack.layout.snapshots_dir)),
            "blobs": sorted(os.listdir(stack.layout.blobs_dir)),
            "ingest": sorted(os.listdir(stack.layout.ingest_dir)),
            "tmp": sorted(os.listdir(stack.layout.tmp_dir)),
        }

    found = await asyncio.to_thread(disk)
    for table in ("images", "layers", "tags", "snapshots"):
        found[table] = len(await stack.db.query(f"SELECT 1 FROM {table}"))
    return found


EMPTY = {"snapshot dirs": [], "blobs": [], "ingest": [], "tmp": [],
         "images": 0, "layers": 0, "tags": 0, "snapshots": 0}


# ------------------------------------------------------------------ import and resolve
@pytest.mark.asyncio
async def test_import_busybox_and_resolve_every_form(stack: Stack, busybox_tar: Path) -> None:
    started = time.perf_counter()
    image_id = await stack.images.import_image(file_chunks(busybox_tar), "busybox", "latest")
    elapsed = time.perf_counter() - started
    size = (await asyncio.to_thread(busybox_tar.stat)).st_size
    print(f"\nimport of a {size} byte busybox tar: {elapsed * 1000:.0f} ms")
    diff_id = await asyncio.to_thread(_sha256_file, busybox_tar)

    view = stack.images.resolve("busybox")
    assert view.id == image_id and image_id.startswith("sha256:")
    assert view.repo_tags == ("busybox:latest",) and view.repo_digests == ()
    assert view.diff_ids == (diff_id,)
    assert view.layers == (diff_id,) and view.top_layer == diff_id
    assert 1_000_000 < view.size < 4_000_000
    assert view.config["os"] == "linux" and view.config["architecture"] == "amd64"
    assert view.config["history"][0]["comment"] == "Imported from -"
    assert "created_by" not in view.config["history"][0]
    assert view.container_config["Cmd"] is None and view.container_config["Hostname"] == ""
    assert view.last_tag_time is not None and abs(view.created - time.time()) < 60
    # the config blob is the id; the uncompressed layer is kept under its diff id
    assert await stack.content.read_blob(image_id) != b""
    assert await asyncio.to_thread(stack.content.exists, diff_id)
    assert stack.events.actions() == ["tag", "import"]
    assert stack.events.seen[0].attributes["name"] == "busybox:latest"

    hexid = image_id.removeprefix("sha256:")
    for ref in ("busybox", "busybox:latest", "docker.io/library/busybox:latest",
                "library/busybox", image_id, hexid, hexid[:12], hexid[:4], "sha256:" + hexid[:8]):
        assert (await stack.images.get(ref)).id == image_id, ref
    with pytest.raises(NotFound, match=r"^No such image: nope:latest$"):
        await stack.images.get("nope")
    with pytest.raises(NotFound, match="No such image: busybox:1"):
        await stack.images.get("busybox:1")
    with pytest.raises(NotFound, match=r"^No such image: sha256:0{64}$"):
        await stack.images.get("sha256:" + "0" * 64)
    with pytest.raises(InvalidParameter, match="must be lowercase"):
        await stack.images.get("UPPER")
    assert stack.images.count() == 1


@pytest.mark.asyncio
async def test_container_snapshot_on_the_image(
    stack: Stack, busybox_tar: Path, tmp_path: Path
) -> None:
    view = await stack.images.get(await stack.images.import_image(file_chunks(busybox_tar)))
    target = tmp_path / "rootfs"
    await asyncio.to_thread(target.mkdir)
    mounts = await stack.snapshotter.prepare("ctr1", view.top_layer)
    await asyncio.to_thread(mounting.mount, mounts, target)
    try:
        def check() -> None:
            assert (target / "bin" / "busybox").is_file()
            assert os.readlink(target / "bin" / "sh") == "busybox"
            assert (target / "etc" / "passwd").read_text().startswith("root:")
            out = subprocess.run(["chroot", str(target), "/bin/sh", "-c", "echo hi"],
                                 capture_output=True, text=True, timeout=30)
            assert out.stdout == "hi\n"

        await asyncio.to_thread(check)
    finally:
        await asyncio.to_thread(mounting.unmount, target)
    assert await stack.images.lower_dirs(view.id) == [
        Path((await stack.snapshotter.mounts(view.top_layer or ""))[0].source)
    ]
    # The image can go while a snapshot still builds on its layer: the layer stays
    # until the snapshot is gone, then the start-up sweep releases it.
    records = await stack.images.remove(view.id)
    assert records == [{"Deleted": view.id}]
    await stack.snapshotter.remove("ctr1")
    await stack.images.load()
    assert await _leftovers(stack) == EMPTY


@pytest.mark.asyncio
async def test_import_with_changes_message_and_compression(stack: Stack) -> None:
    import gzip

    data = gzip.compress(files_tar({"app/run.sh": b"#!/bin/sh\n"}))
    changes = [
        'CMD ["sh", "-c", "echo $HOME"]',
        "ENV A=1 B=\"two words\"\nENV C=${A}x",
        "LABEL com.example.team=core version=1.0",
        "EXPOSE 80 53/udp 8000-8001",
        "WORKDIR /app\nWORKDIR sub",
        "USER nobody",
        'VOLUME ["/data", "/cache"]',
        "STOPSIGNAL SIGINT",
        "ENTRYPOINT exec /app/run.sh",
        "ONBUILD RUN echo hi",
        "HEALTHCHECK --interval=5s --retries=3 CMD wget -q localhost",
    ]
    image_id = await stack.images.import_image(
        bytes_chunks(data), "localhost:5000/app", "v1", changes, "my message", "linux/amd64"
    )
    view = stack.images.resolve("localhost:5000/app:v1")
    assert view.id == image_id
    cfg = view.container_config
    assert cfg["Cmd"] == ["sh", "-c", "echo $HOME"]  # CMD came before ENTRYPOINT: kept
    assert cfg["Entrypoint"] == ["/bin/sh", "-c", "exec /app/run.sh"]
    assert cfg["Env"] == ["A=1", "B=two words", "C=1x"]
    assert cfg["Labels"] == {"com.example.team": "core", "version": "1.0"}
    assert cfg["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}, "8000/tcp": {}, "8001/tcp": {}}
    assert cfg["WorkingDir"] == "/app/sub" and cfg["User"] == "nobody"
    assert cfg["Volumes"] == {"/data": {}, "/cache": {}}
    assert cfg["StopSignal"] == "SIGINT"
    assert cfg["OnBuild"] == ["RUN echo hi"]
    assert cfg["Healthcheck"] == {
        "Test": ["CMD-SHELL", "wget -q localhost"], "Interval": 5_000_000_000, "Retries": 3,
    }
    assert view.config["comment"] == "my message"
    assert view.repo_tags == ("localhost:5000/app:v1",)
    assert stack.events.seen[-1].attributes["com.example.team"] == "core"


class _Untouchable:
    """A body that must not be read: refusals come before the first byte."""

    def __aiter__(self) -> _Untouchable:
        return self

    async def __anext__(self) -> bytes:
        raise AssertionError("the body was read")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"changes": ["RUN echo"]}, "^run is not a valid change command$"),
        ({"changes": ["FROM x"]}, "^from is not a valid change command$"),
        ({"changes": ["ENV"]}, "^ENV requires at least one argument$"),
        ({"changes": ["ENV =x"]}, "^ENV names can not be blank$"),
        ({"changes": ["LABEL a"]}, "^LABEL must have two arguments$"),
        ({"changes": ["ENV a=1 b"]}, "can't find = in \"b\""),
        ({"changes": ["EXPOSE abc"]}, "^invalid containerPort: abc$"),
        ({"changes": ["EXPOSE 80/xyz"]}, "^invalid proto: xyz$"),
        ({"changes": ["STOPSIGNAL SIGRELX"]}, "^Invalid signal: SIGRELX$"),
        ({"changes": ["USER a b"]}, "^USER requires exactly one argument$"),
        ({"changes": ["ONBUILD ONBUILD RUN x"]}, "Chaining ONBUILD"),
        ({"changes": ["HEALTHCHECK WHAT x"]}, "Unknown type"),
        ({"repo": "UPPER"}, "repository name \\(library/UPPER\\) must be lowercase"),
        ({"repo": "busybox", "tag": "bad tag"}, "^invalid tag format$"),
        ({"platform": "windows/amd64"}, "^operating system is not supported$"),
        ({"platform": "linux/nonsense"}, "unknown operating system or architecture"),
    ],
)
@pytest.mark.asyncio
async def test_refusals_come_before_reading(
    stack: Stack, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidParameter, match=message):
        await stack.images.import_image(_Untouchable(), **kwargs)
    assert await _leftovers(stack) == EMPTY


@pytest.mark.asyncio
async def test_bad_archives_leave_nothing(stack: Stack) -> None:
    for body in (b"not a tar at all" * 100, files_tar({"f": b"x" * 5000})[:1500]):
        with pytest.raises(UnpackError):
            await stack.images.import_image(bytes_chunks(body), "broken")
    assert await _leftovers(stack) == EMPTY
    assert stack.events.seen == []


@pytest.mark.asyncio
async def test_escaping_entries_are_clamped(stack: Stack, tmp_path: Path) -> None:
    marker = f"wharfd-escape-{os.getpid()}"
    body = files_tar({f"../../{marker}": b"x", f"/{marker}-abs": b"y"})
    view = await stack.images.get(await stack.images.import_image(bytes_chunks(body)))
    layer = (await stack.images.lower_dirs(view.id))[0]
    assert sorted(await asyncio.to_thread(os.listdir, layer)) == [marker, f"{marker}-abs"]
    for place in (Path("/") / marker, tmp_path / marker, stack.layout.data_root / marker):
        assert not await asyncio.to_thread(os.path.lexists, place)
    assert view.dangling and view.repo_tags == ()


# ------------------------------------------------------------------ tag and list
@pytest.mark.asyncio
async def test_tag_and_list_filters(stack: Stack) -> None:
    first = await stack.images.import_image(
        bytes_chunks(files_tar({"a": b"1"})), "busybox", "latest", ["LABEL tier=base"]
    )
    await asyncio.sleep(0.01)
    second = await stack.images.import_image(bytes_chunks(files_tar({"b": b"2"})))
    assert await stack.images.tag("busybox", "docker.io/library/captag", "1") == "captag:1"
    assert await stack.images.tag(first, "localhost:5000/x", None) == "localhost:5000/x:latest"
    view = stack.images.resolve(first)
    assert view.repo_tags == ("busybox:latest", "captag:1", "localhost:5000/x:latest")
    assert stack.events.actions()[-2:] == ["tag", "tag"]

    ids = [v.id for v in stack.images.list()]
    assert ids == [second, first]  # newest first
    assert [v.id for v in stack.images.list(filters={"dangling": ["true"]})] == [second]
    assert [v.id for v in stack.images.list(filters={"dangling": ["false"]})] == [first]
    assert [v.id for v in stack.images.list(filters={"label": ["tier"]})] == [first]
    assert stack.images.list(filters={"label": ["tier=other"]}) == []
    matched = stack.images.list(filters={"reference": ["cap*"]})
    assert [v.repo_tags for v in matched] == [("captag:1",)]
    assert [v.id for v in stack.images.list(filters={"since": ["busybox"]})] == [second]
    assert [v.id for v in stack.images.list(filters={"before": [second]})] == [first]
    assert len(stack.images.list(filters={"until": ["1h"]})) == 0
    assert len(stack.images.list(filters={"until": [str(int(time.time()) + 5)]})) == 2
    with pytest.raises(InvalidParameter, match="invalid filter 'dangling=\\[maybe\\]'"):
        stack.images.list(filters={"dangling": ["maybe"]})
    with pytest.raises(NotFound):
        stack.images.list(filters={"since": ["nope"]})

    # a tag moves: the old holder becomes dangling
    await stack.images.tag(second, "busybox", "latest")
    assert stack.images.resolve("busybox").id == second
    with pytest.raises(InvalidParameter, match="invalid tag format"):
        await stack.images.tag("busybox", "x", "bad tag")
    with pytest.raises(InvalidParameter, match="ambiguous tag"):
        await stack.images.tag("busybox", "sha256", "1")
    with pytest.raises(NotFound):
        await stack.images.tag("nope", "x", "1")


# ------------------------------------------------------------------ remove rules
@pytest.mark.asyncio
async def test_remove_rules(stack: Stack) -> None:
    image_id = await stack.images.import_image(bytes_chunks(files_tar({"f": b"1"})), "busybox")
    view = stack.images.resolve(image_id)
    short = view.short_id
    ctr = "c" * 64

    stack.usage[image_id] = [(ctr, False)]
    with pytest.raises(Conflict) as info:
        await stack.images.remove("busybox")
    assert str(info.value) == (
        f'conflict: unable to remove repository reference "busybox" (must force) - container '
        f"{ctr[:12]} is using its referenced image {short}"
    )
    with pytest.raises(Conflict) as info:
        await stack.images.remove(image_id)
    assert str(info.value) == (
        f"conflict: unable to delete {short} (must be forced) - image is being used by "
        f"stopped container {ctr[:12]}"
    )
    stack.usage[image_id] = [(ctr, True)]
    with pytest.raises(Conflict) as info:
        await stack.images.remove(short, force=True)
    assert str(info.value) == (
        f"conflict: unable to delete {short} (cannot be forced) - image is being used by "
        f"running container {ctr[:12]}"
    )
    # with force a name goes even when a running container uses the image; the image stays
    assert await stack.images.remove("busybox:latest", force=True) == [
        {"Untagged": "busybox:latest"}
    ]
    assert stack.images.resolve(image_id).dangling

    stack.usage.clear()
    await stack.images.tag(image_id, "busybox", "latest")
    await stack.images.tag(image_id, "captag", "1")
    with pytest.raises(Conflict) as info:
        await stack.images.remove(short)
    assert str(info.value) == (
        f"conflict: unable to delete {short} (must be forced) - image is referenced in "
        "multiple repositories"
    )
    assert await stack.images.remove("captag:1") == [{"Untagged": "captag:1"}]
    assert stack.images.resolve(image_id).repo_tags == ("busybox:latest",)
    await stack.images.tag(image_id, "captag", "1")

    with pytest.raises(NotFound):
        await stack.images.remove("nope")
    records = await stack.images.remove(image_id, force=True)
    assert records == [
        {"Untagged": "busybox:latest"},
        {"Untagged": "captag:1"},
        {"Deleted": image_id},
        {"Deleted": view.layers[0]},
    ]
    assert stack.events.actions()[-3:] == ["untag", "untag", "delete"]
    assert await _leftovers(stack) == EMPTY


@pytest.mark.asyncio
async def test_remove_by_name_deletes_the_last_reference(stack: Stack) -> None:
    image_id = await stack.images.import_image(bytes_chunks(files_tar({"f": b"2"})), "busybox")
    layer = stack.images.resolve(image_id).layers[0]
    assert await stack.images.remove("busybox") == [
        {"Untagged": "busybox:latest"}, {"Deleted": image_id}, {"Deleted": layer},
    ]
    assert await _leftovers(stack) == EMPTY


@pytest.mark.asyncio
async def test_same_layer_twice_is_shared(stack: Stack) -> None:
    body = files_tar({"same": b"content"})
    one = await stack.images.import_image(bytes_chunks(body), "one")
    await asyncio.sleep(0.01)
    two = await stack.images.import_image(bytes_chunks(body), "two")
    assert one != two
    assert len(await stack.db.query("SELECT 1 FROM layers")) == 1
    layer = stack.images.resolve(one).layers[0]
    assert stack.images.resolve(two).layers == (layer,)
    assert await stack.images.remove("one") == [{"Untagged": "one:latest"}, {"Deleted": one}]
    assert await stack.images.remove("two") == [
        {"Untagged": "two:latest"}, {"Deleted": two}, {"Deleted": layer},
    ]
    assert await _leftovers(stack) == EMPTY


@pytest.mark.asyncio
async def test_forced_delete_while_a_stopped_container_names_the_image(stack: Stack) -> None:
    image_id = await stack.images.import_image(bytes_chunks(files_tar({"f": b"3"})), "busybox")
    ctr = "d" * 64
    await stack.db.execute(
        "INSERT INTO containers (id, name, image_id, config, state, created) "
        "VALUES (?, 'c', ?, '{}', '{}', 0)",
        (ctr, image_id),
    )
    stack.usage[image_id] = [(ctr, False)]
    records = await stack.images.remove(image_id, force=True)
    assert records == [{"Untagged": "busybox:latest"}, {"Deleted": image_id}]
    with pytest.raises(NotFound):
        stack.images.resolve(image_id)
    assert stack.images.count() == 0 and stack.images.list() == []
    hidden = stack.images.view_by_id(image_id, include_removed=True)
    assert hidden is not None and hidden.top_layer is not None  # its layer is still there
    assert await stack.images.collect_removed() == []  # the container row still names it
    await stack.db.execute("DELETE FROM containers WHERE id = ?", (ctr,))
    stack.usage.clear()
    assert await stack.images.collect_removed() == [image_id]
    assert await _leftovers(stack) == EMPTY


# ------------------------------------------------------------------ HTTP
@pytest.mark.asyncio
async def test_http_round_trip(stack: Stack, busybox_tar: Path) -> None:
    backend: images_router.ImageBackend = stack.images  # the manager meets the Protocol
    app = build_app([Mount(images_router.routes, images_router.BACKEND, backend)])
    body = await asyncio.to_thread(busybox_tar.read_bytes)
    async with TestClient(TestServer(app)) as client:
        resp = await client.post(
            "/v1.50/images/create?fromSrc=-&repo=docker.io%2Flibrary%2Fbusybox&tag=latest"
            "&changes=CMD%20%5B%22sh%22%5D&message=",
            data=bytes_chunks(body),
        )
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json"
        raw = await resp.read()
        assert raw.endswith(b"\r\n")
        image_id = (await resp.json(content_type=None))["status"]
        assert image_id.startswith("sha256:")

        items = await (await client.get("/images/json")).json()
        assert items == [{
            "Containers": -1, "Created": items[0]["Created"], "Id": image_id, "Labels": None,
            "ParentId": "", "RepoDigests": [], "RepoTags": ["busybox:latest"],
            "SharedSize": -1, "Size": items[0]["Size"],
        }]
        assert isinstance(items[0]["Created"], int) and isinstance(items[0]["Size"], int)
        old = await (await client.get("/v1.41/images/json")).json()
        assert old[0]["VirtualSize"] == old[0]["Size"]

        inspect = await (await client.get("/images/busybox/json")).json()
        assert inspect["Id"] == image_id and inspect["RepoTags"] == ["busybox:latest"]
        assert inspect["Config"] == {"Cmd": ["sh"]}
        assert inspect["RootFS"]["Type"] == "layers" and len(inspect["RootFS"]["Layers"]) == 1
        assert inspect["Created"].endswith("Z") and inspect["Os"] == "linux"
        assert inspect["Metadata"]["LastTagTime"].endswith("Z")
        assert inspect["GraphDriver"]["Name"] == "overlay2"
        assert inspect["Comment"] == "Imported from -"
        history = await (await client.get("/images/busybox/history")).json()
        assert history == [{
            "Comment": "Imported from -", "Created": items[0]["Created"], "CreatedBy": "",
            "Id": image_id, "Size": inspect["Size"], "Tags": ["busybox:latest"],
        }]
        legacy = await (await client.get(f"/v1.44/images/{image_id}/json")).json()
        assert legacy["Config"]["Hostname"] == "" and legacy["Config"]["Env"] is None
        assert legacy["ContainerConfig"]["Cmd"] is None and "VirtualSize" not in legacy

        resp = await client.post("/images/busybox/tag?repo=docker.io%2Flibrary%2Fcaptag&tag=1")
        assert resp.status == 201 and await resp.read() == b""
        resp = await client.post("/images/busybox/tag?repo=UPPER&tag=1")
        assert resp.status == 400
        assert resp.headers["Content-Type"] == "application/json"
        assert (await resp.json())["message"] == (
            "invalid reference format: repository name (library/UPPER) must be lowercase"
        )
        resp = await client.delete("/images/captag:1")
        assert resp.status == 200 and await resp.json() == [{"Untagged": "captag:1"}]

        resp = await client.get("/images/nope/json")
        assert resp.status == 404
        assert await resp.json() == {"message": "No such image: nope:latest"}
        resp = await client.post("/images/create")
        assert resp.status == 400
        # Refused before any registry is contacted (this test has no network of its own).
        resp = await client.post("/images/create?fromImage=UPPER/x&tag=latest")
        assert resp.status == 400
        resp = await client.post("/images/create?fromImage=busybox&tag=bad%20tag")
        assert resp.status == 400
        resp = await client.get('/images/json?filters={"bogus":["x"]}')
        assert resp.status == 400

        resp = await client.delete(f"/images/{image_id}?force=1")
        records = await resp.json()
        assert records[:2] == [{"Untagged": "busybox:latest"}, {"Deleted": image_id}]
    assert await _leftovers(stack) == EMPTY


# ------------------------------------------------------------------ crash safety
DRIVER = """
import asyncio, os, sys
from pathlib import Path
from tests.integration.test_image_store import file_chunks, open_stack

async def main(root, tar, mode, point):
    stack = await open_stack(Path(root))
    if mode == "remove":
        await stack.images.import_image(file_chunks(Path(tar)), "busybox", "latest")
    os.environ["WHARFD_CRASH_AT"] = point
    if mode == "import":
        await stack.images.import_image(file_chunks(Path(tar)), "busybox", "latest")
    else:
        await stack.images.remove("busybox")
    print("no crash at", point)
    sys.exit(3)

asyncio.run(main(*sys.argv[1:]))
"""

CRASH_POINTS = [
    ("import", "snapshot_after_rename"),
    ("import", "import_after_unpack"),
    ("import", "import_after_blob"),
    ("import", "import_after_layer_commit"),
    ("import", "import_after_config_write"),
    ("import", "import_before_commit"),
    ("import", "import_after_commit"),
    ("remove", "remove_after_rows"),
    ("remove", "remove_after_layer_row"),
    ("remove", "snapshot_remove_marked"),
]


def _run_driver(
    data_root: Path, tar: Path, mode: str, point: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "WHARFD_CRASH_AT"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run(
        [sys.executable, "-c", DRIVER, str(data_root), str(tar), mode, point],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize(("mode", "point"), CRASH_POINTS, ids=[p for _, p in CRASH_POINTS])
@pytest.mark.asyncio
async def test_crash_points_converge(
    tmp_path: Path, busybox_tar: Path, mode: str, point: str
) -> None:
    data_root = tmp_path / "data"
    proc = await asyncio.to_thread(_run_driver, data_root, busybox_tar, mode, point)
    assert proc.returncode == 137, proc.stdout + proc.stderr

    stack = await open_stack(data_root)  # the restart: every sweep runs
    try:
        if point == "import_after_commit":
            # Committed before the crash: the image must be whole.
            view = stack.images.resolve("busybox")
            assert view.top_layer is not None
            await stack.snapshotter.stat(view.top_layer)
            assert await asyncio.to_thread(stack.content.exists, view.id)
            assert await asyncio.to_thread(stack.content.exists, view.layers[0])
            await stack.images.remove("busybox")
        assert await _leftovers(stack) == EMPTY
        image_id = await stack.images.import_image(file_chunks(busybox_tar), "busybox")
        view = stack.images.resolve("busybox")
        assert view.id == image_id and stack.images.count() == 1
    finally:
        await close_stack(stack)

