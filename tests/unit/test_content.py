"""ContentStore: crash-safe ingest, verification, idempotent commits, cleanup and gc."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from pathlib import Path

import pytest

from engine.errors import InvalidParameter, NotFound
from engine.layout import Layout
from engine.store.atomic import ensure_dir
from engine.store.content import ContentStore


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    layout = Layout(data_root=tmp_path / "root", exec_root=tmp_path / "run")
    for path, mode in layout.persistent_dirs():
        ensure_dir(path, mode)
    return ContentStore(layout)


def _ingest_entries(store: ContentStore) -> list[str]:
    return os.listdir(store.path(_digest(b"")).parent.parent.parent / "ingest")


def test_commit_writes_read_only_blob(store: ContentStore) -> None:
    data = b"hello world" * 1000
    with store.open_writer("ref1", expected_digest=_digest(data), expected_size=len(data)) as w:
        w.write(data[:10])
        w.write(memoryview(data)[10:])
        assert w.size == len(data) and w.digest == _digest(data)
        digest = w.commit()
    assert digest == _digest(data)
    path = store.path(digest)
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert store.exists(digest)
    assert _ingest_entries(store) == []


def test_already_exists_is_success(store: ContentStore) -> None:
    for ref in ("a", "b"):
        with store.open_writer(ref) as w:
            w.write(b"same")
            assert w.commit() == _digest(b"same")
    assert store.digests() == [_digest(b"same")]
    assert _ingest_entries(store) == []


def test_digest_mismatch_is_refused_and_cleaned(store: ContentStore) -> None:
    wrong = _digest(b"other")
    w = store.open_writer("bad", expected_digest=wrong)
    w.write(b"data")
    with pytest.raises(InvalidParameter, match="unexpected commit digest"):
        w.commit()
    assert store.digests() == []
    assert _ingest_entries(store) == []
    # the ref is free again
    with store.open_writer("bad") as again:
        again.write(b"x")
        again.commit()


def test_size_checks(store: ContentStore) -> None:
    w = store.open_writer("big", expected_size=3)
    with pytest.raises(InvalidParameter, match="unexpected size"):
        w.write(b"four")
    w.abort()
    w = store.open_writer("small", expected_size=10)
    w.write(b"abc")
    with pytest.raises(InvalidParameter, match="unexpected commit size 3, expected 10"):
        w.commit()
    assert store.digests() == [] and _ingest_entries(store) == []


def test_abort_and_double_open(store: ContentStore) -> None:
    w = store.open_writer("busy")
    with pytest.raises(InvalidParameter, match="locked"):
        store.open_writer("busy")
    w.write(b"partial")
    w.abort()
    w.abort()  # idempotent
    assert _ingest_entries(store) == []


@pytest.mark.parametrize("ref", ["", "../x", "a/b", ".hidden", "x" * 200])
def test_bad_refs(store: ContentStore, ref: str) -> None:
    with pytest.raises(InvalidParameter):
        store.open_writer(ref)


def test_bad_digests(store: ContentStore) -> None:
    for digest in ("sha256:abc", "md5:" + "a" * 32, "sha256:" + "A" * 64, "../../etc/passwd"):
        with pytest.raises(InvalidParameter):
            store.path(digest)


@pytest.mark.asyncio
async def test_cleanup_removes_leftovers_but_not_live_writers(store: ContentStore) -> None:
    ingest = store.path(_digest(b"")).parent.parent.parent / "ingest"

    def setup() -> None:
        (ingest / "crashed").mkdir()
        (ingest / "crashed" / "data").write_bytes(b"half")
        (ingest / "stray-file").write_bytes(b"x")

    await asyncio.to_thread(setup)
    live = await asyncio.to_thread(store.open_writer, "live")
    await asyncio.to_thread(live.write, b"in progress")
    removed = await store.cleanup()
    assert sorted(removed) == ["crashed", "stray-file"]
    assert await asyncio.to_thread(os.listdir, ingest) == ["live"]
    assert await asyncio.to_thread(live.commit) == _digest(b"in progress")


@pytest.mark.asyncio
async def test_blob_helpers_and_gc(store: ContentStore) -> None:
    keep = await store.write_blob(b"keep")
    drop = await store.write_blob(b"drop")
    assert await store.read_blob(keep) == b"keep"
    with pytest.raises(InvalidParameter):
        await store.write_blob(b"x", expected_digest=_digest(b"y"))
    assert await store.gc({keep}) == [drop]
    assert await asyncio.to_thread(store.digests) == [keep]
    assert await store.delete(keep) is True
    assert await store.delete(keep) is False
    with pytest.raises(NotFound):
        await store.read_blob(keep)
