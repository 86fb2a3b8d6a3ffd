"""Pull, push, save and load on a real data root against the in-process fake registry
(unix socket, no TCP): progress messages, platform choice, verification (F15), one
download per layer for simultaneous pulls (L15), nothing left behind on failure, and
save → load round trips in both archive layouts."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from engine.errors import EngineError
from engine.images.auth import AuthConfig
from engine.images.manifest import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
)
from engine.images.progress import Progress
from engine.images.registry import Registries
from tests.integration.test_image_store import (
    ROOT_ONLY,
    Stack,
    bytes_chunks,
    close_stack,
    file_chunks,
    open_stack,
)
from tests.unit.fake_registry import FakeRegistry, digest_of, serve

pytestmark = [pytest.mark.root, ROOT_ONLY]

REF = "127.0.0.1:5000/app"


def layer_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def publish(registry: FakeRegistry, repo: str, tag: str,
            layers: list[dict[str, bytes]], arch: str = "amd64") -> tuple[str, list[str]]:
    """Push an image into the fake registry; returns (manifest digest, layer digests)."""
    tars = [layer_tar(files) for files in layers]
    blobs = [gzip.compress(t, mtime=0) for t in tars]
    config = json.dumps({
        "architecture": arch, "os": "linux", "created": "2026-01-01T00:00:00Z",
        "config": {"Cmd": ["sh"], "Labels": {"from": "fake"}},
        "rootfs": {"type": "layers", "diff_ids": [digest_of(t) for t in tars]},
        "history": [{"created": "2026-01-01T00:00:00Z", "created_by": f"layer {i}"}
                    for i in range(len(tars))],
    }).encode()
    config_digest = registry.add_blob(config)
    digests = [registry.add_blob(b) for b in blobs]
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": DOCKER_LAYER_GZIP, "digest": d, "size": len(b)}
                   for d, b in zip(digests, blobs, strict=True)],
    }).encode()
    return registry.add_manifest(repo, tag, manifest, DOCKER_MANIFEST), digests


@pytest_asyncio.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[Stack, FakeRegistry]]:
    registry = FakeRegistry()
    sock = tmp_path / "registry.sock"
    runner = await serve(registry, sock)
    stack = await open_stack(tmp_path / "data")
    stack.images.registries = Registries(
        connector=lambda: aiohttp.UnixConnector(path=str(sock))
    )
    try:
        yield stack, registry
    finally:
        await close_stack(stack)
        await runner.cleanup()


async def pull(stack: Stack, ref: str = REF, tag: str | None = "1",
               platform: str | None = None) -> list[Progress]:
    seen: list[Progress] = []
    await stack.images.pull(ref, tag, platform, AuthConfig(), seen.append)
    return seen


def statuses(seen: list[Progress]) -> list[str]:
    return [f"{m.id}: {m.status}" if m.id else m.status for m in seen
            if m.status and m.current is None]


async def disk_state(stack: Stack) -> dict[str, Any]:
    def scan() -> dict[str, Any]:
        return {"ingest": sorted(os.listdir(stack.layout.ingest_dir)),
                "tmp": sorted(os.listdir(stack.layout.tmp_dir))}

    state = await asyncio.to_thread(scan)
    rows = await stack.db.query("SELECT key FROM snapshots WHERE key LIKE 'extract-%'")
    state["extract snapshots"] = [r["key"] for r in rows]
    return state


CLEAN: dict[str, Any] = {"ingest": [], "tmp": [], "extract snapshots": []}


# ------------------------------------------------------------------ pull
@pytest.mark.asyncio
async def test_pull_two_layers_progress_and_rows(env: tuple[Stack, FakeRegistry]) -> None:
    stack, registry = env
    manifest, digests = publish(registry, "app", "1",
                                [{"a.txt": b"A" * 5000}, {"b/c.txt": b"C" * 7000}])
    seen = await pull(stack)
    short = [d[7:19] for d in digests]
    lines = statuses(seen)
    assert lines[0] == "1: Pulling from app"
    for s in short:
        for status in ("Pulling fs layer", "Verifying Checksum", "Download complete",
                       "Pull complete"):
            assert f"{s}: {status}" in lines
    assert lines[-2:] == [f"Digest: {manifest}",
                          f"Status: Downloaded newer image for {REF}:1"]
    assert any(m.status == "Downloading" and m.total for m in seen)
    view = stack.images.resolve(f"{REF}:1")
    assert view.repo_tags == (f"{REF}:1",) and view.repo_digests == (f"{REF}@{manifest}",)
    assert len(view.layers) == 2 and view.labels == {"from": "fake"}
    dirs = await stack.images.lower_dirs(view.id)
    assert await asyncio.to_thread((dirs[0] / "b" / "c.txt").read_bytes) == b"C" * 7000
    assert await asyncio.to_thread((dirs[1] / "a.txt").read_bytes) == b"A" * 5000
    # the compressed blobs are kept (push sends them as they are, save inflates them)
    for layer in view.layers:
        record = stack.images.layer(layer)
        assert record is not None and record.blob_digest in digests
        assert record.blob_compression == "gzip" and record.tar_size
    again = await pull(stack)
    assert statuses(again)[-1] == f"Status: Image is up to date for {REF}:1"
    assert not any(m.status == "Already exists" for m in again)  # dockerd: silent
    assert await disk_state(stack) == CLEAN


@pytest.mark.asyncio
async def test_pull_by_digest_index_and_platform(env: tuple[Stack, FakeRegistry]) -> None:
    stack, registry = env
    amd64, _ = publish(registry, "multi", "amd", [{"amd": b"x86"}])
    arm64, _ = publish(registry, "multi", "arm", [{"arm": b"aarch64"}], arch="arm64")
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": arm64, "size": 10,
         "platform": {"os": "linux", "architecture": "arm64"}},
        {"mediaType": OCI_MANIFEST, "digest": amd64, "size": 10,
         "platform": {"os": "linux", "architecture": "amd64"}},
    ]}).encode()
    index_digest = registry.add_manifest("multi", "latest", index, OCI_INDEX)
    await pull(stack, "127.0.0.1:5000/multi", "latest", platform="linux/arm64")
    view = stack.images.resolve("127.0.0.1:5000/multi:latest")
    assert view.config["architecture"] == "arm64"
    seen = await pull(stack, "127.0.0.1:5000/multi", index_digest, platform="linux/amd64")
    assert statuses(seen)[0] == f"{index_digest}: Pulling from multi"
    by_digest = stack.images.resolve(f"127.0.0.1:5000/multi@{amd64}")
    assert by_digest.config["architecture"] == "amd64"
    with pytest.raises(EngineError, match="no matching manifest for linux/s390x"):
        await pull(stack, "127.0.0.1:5000/multi", "latest", platform="linux/s390x")
    with pytest.raises(EngineError, match=r"manifest for 127\.0\.0\.1:5000/multi:nope not found"):
        await pull(stack, "127.0.0.1:5000/multi", "nope")


@pytest.mark.asyncio
async def test_flipped_byte_fails_and_registers_nothing(
    env: tuple[Stack, FakeRegistry]
) -> None:
    """Reliability F15."""
    stack, registry = env
    _, digests = publish(registry, "app", "1", [{"a": os.urandom(50_000)},
                                                {"b": os.urandom(80_000)}])
    registry.corrupt.add(digests[1])
    with pytest.raises(EngineError,
                       match=f"filesystem layer verification failed for digest {digests[1]}"):
        await pull(stack)
    assert stack.images.list(all=True) == []
    assert await stack.db.query("SELECT * FROM layers") == []
    assert await stack.db.query("SELECT key FROM snapshots") == []
    assert await asyncio.to_thread(os.listdir, stack.layout.blobs_dir) == []
    assert await disk_state(stack) == CLEAN
    registry.corrupt.clear()
    await pull(stack)
    assert len(stack.images.resolve(f"{REF}:1").layers) == 2


@pytest.mark.asyncio
async def test_simultaneous_pulls_download_each_layer_once(
    env: tuple[Stack, FakeRegistry]
) -> None:
    """Reliability L15."""
    stack, registry = env
    _, digests = publish(registry, "app", "1", [{"a": os.urandom(300_000)},
                                                {"b": os.urandom(300_000)}])
    results = await asyncio.gather(pull(stack), pull(stack), pull(stack))
    for digest in digests:
        assert registry.hits[f"blob {digest}"] == 1
    finals = sorted(statuses(r)[-1] for r in results)
    assert finals[0].startswith("Status: Downloaded newer image")
    assert all(f.startswith("Status: ") for f in finals)
    assert len(stack.images.list()) == 1
    assert await disk_state(stack) == CLEAN


# ------------------------------------------------------------------ push
@pytest.mark.asyncio
async def test_push_kept_blobs_and_compressed_uploads(
    env: tuple[Stack, FakeRegistry], busybox_tar: Path
) -> None:
    stack, registry = env
    publish(registry, "app", "1", [{"a": b"pulled"}])
    await pull(stack)
    await stack.images.tag(f"{REF}:1", "127.0.0.1:5000/copy", "2")
    seen: list[Progress] = []
    await stack.images.push("127.0.0.1:5000/copy", "2", AuthConfig(), seen.append)
    assert any(m.status == "Layer already exists" for m in seen)
    # an imported image: its uncompressed layer is gzip-compressed on the way out
    image_id = await stack.images.import_image(file_chunks(busybox_tar),
                                               "127.0.0.1:5000/bb", "1")
    seen = []
    await stack.images.push("127.0.0.1:5000/bb", "1", AuthConfig(), seen.append)
    lines = statuses(seen)
    view = stack.images.resolve(image_id)
    diff = view.diff_ids[0]
    assert lines[0] == "The push refers to repository [127.0.0.1:5000/bb]"
    assert f"{diff[7:19]}: Preparing" in lines and f"{diff[7:19]}: Pushed" in lines
    aux = [m.aux for m in seen if m.aux]
    manifest = json.loads(registry.manifests[("bb", "1")][0])
    assert aux == [{"Tag": "1", "Digest": digest_of(registry.manifests[("bb", "1")][0]),
                    "Size": len(registry.manifests[("bb", "1")][0])}]
    layer = registry.blobs[manifest["layers"][0]["digest"]]
    assert "sha256:" + hashlib.sha256(gzip.decompress(layer)).hexdigest() == diff
    assert registry.blobs[image_id] == await stack.content.read_blob(image_id)
    assert stack.images.resolve(image_id).repo_digests == (
        f"127.0.0.1:5000/bb@{aux[0]['Digest']}",)
    # the registry now holds it: a second push skips the upload
    seen = []
    await stack.images.push("127.0.0.1:5000/bb", "1", AuthConfig(), seen.append)
    assert f"{diff[7:19]}: Layer already exists" in statuses(seen)


# ------------------------------------------------------------------ save / load
async def save_bytes(stack: Stack, names: list[str]) -> bytes:
    out = bytearray()
    async for chunk in stack.images.save(names).chunks():
        out += chunk
    return bytes(out)


@pytest.mark.asyncio
async def test_save_load_round_trip_both_layouts(env: tuple[Stack, FakeRegistry]) -> None:
    stack, registry = env
    publish(registry, "app", "1", [{"a": b"one"}, {"b": b"two"}])
    await pull(stack)
    view = stack.images.resolve(f"{REF}:1")
    archive = await save_bytes(stack, [f"{REF}:1"])
    names, manifest, index = await asyncio.to_thread(_read_archive, archive)
    assert names.index("manifest.json") < names.index(manifest[0]["Layers"][0])
    assert manifest[0]["RepoTags"] == [f"{REF}:1"]
    assert manifest[0]["Layers"] == [f"blobs/sha256/{d[7:]}" for d in view.diff_ids]
    assert index["manifests"][0]["annotations"]["io.containerd.image.name"] == f"{REF}:1"
    assert "oci-layout" in names and "repositories" in names

    await stack.images.remove(f"{REF}:1")
    assert stack.images.list() == []
    seen: list[Progress] = []
    await stack.images.load_archive(bytes_chunks(archive), False, seen.append)
    assert [m.stream for m in seen if m.stream] == [f"Loaded image: {REF}:1\n"]
    assert any(m.status == "Loading layer" for m in seen)
    assert stack.images.resolve(f"{REF}:1").id == view.id

    # OCI layout alone (no manifest.json): tags from the index annotations
    oci = await asyncio.to_thread(_without_docker_files, archive)
    await stack.images.remove(f"{REF}:1")
    seen = []
    await stack.images.load_archive(bytes_chunks(oci), True, seen.append)
    assert [m.stream for m in seen if m.stream] == [f"Loaded image: {REF}:1\n"]
    assert not any(m.status for m in seen)  # quiet
    assert stack.images.resolve(f"{REF}:1").id == view.id
    assert await disk_state(stack) == CLEAN


def _read_archive(archive: bytes) -> tuple[list[str], Any, Any]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
    return names, manifest, index


def _without_docker_files(archive: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(archive)) as src, \
            tarfile.open(fileobj=out, mode="w") as dst:
        for member in src:
            if member.name in ("manifest.json", "repositories"):
                continue
            dst.addfile(member, src.extractfile(member) if member.isreg() else None)
    return out.getvalue()
