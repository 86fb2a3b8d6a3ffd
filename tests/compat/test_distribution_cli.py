"""Issue 3 acceptance: pull, push, login, save, load, commit, history, prune through the
stock docker CLI 28 and docker-py, against Debian's docker-registry running on
127.0.0.1 inside the daemon's network namespace (port 5000 open, 5001 with htpasswd).

Written against Docker's behaviour: ``pytest --against-dockerd`` runs the same tests on
the real dockerd 20.10. Checks of wharfd's data root (no staging left) are skipped there.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import secrets
import sqlite3
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import rawhttp
from tests.harness.cli import DockerCLI, docker_py_client, run_docker
from tests.harness.daemon import BaseDaemon
from tests.harness.registry import LocalRegistry, registry_unavailable_reason

pytestmark = pytest.mark.root

REG = "127.0.0.1:5000"
AUTH_REG = "127.0.0.1:5001"
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")



@pytest.fixture(scope="module")
def auth_registry(daemon: BaseDaemon) -> Iterator[LocalRegistry]:
    reason = registry_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with LocalRegistry(daemon.netns, 5001, htpasswd=("user", "pass")) as reg:
        yield reg


def name(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(3)}"


def image_ids(cli: DockerCLI) -> set[str]:
    return set(cli.ok("images", "-aq", "--no-trunc").split())


def image_id(cli: DockerCLI, ref: str) -> str:
    return cli.ok("image", "inspect", "-f", "{{.Id}}", ref).strip()


def staging_left(daemon: BaseDaemon, against_dockerd: bool) -> dict[str, Any]:
    """wharfd's unfinished work on disk: ingests, tmp, extract- snapshots (empty when
    nothing is half there)."""
    if against_dockerd:
        return {}
    root = daemon.data_root
    found: dict[str, Any] = {}
    for sub in ("content/ingest", "tmp"):
        entries = sorted(os.listdir(root / sub)) if (root / sub).exists() else []
        if entries:
            found[sub] = entries
    db = sqlite3.connect(f"file:{root / 'engine.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT key FROM snapshots WHERE key LIKE 'extract-%'").fetchall()
    finally:
        db.close()
    if rows:
        found["extract snapshots"] = [r[0] for r in rows]
    return found


def push_busybox(cli: DockerCLI, ref: str) -> str:
    cli.ok("tag", "busybox", ref)
    out = cli.ok("push", ref, timeout=120)
    match = re.search(r"digest: (sha256:[0-9a-f]{64}) size: \d+", out)
    assert match, out
    return match.group(1)


# ------------------------------------------------------------------ helpers
def _layer_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for member, data in files.items():
            info = tarfile.TarInfo(member)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _layer_digests(registry: LocalRegistry, ref: str) -> list[str]:
    """The layer digests of ``ref``'s manifest, read from the registry's storage."""
    repo = ref.split("/", 1)[1].split(":", 1)[0]
    tags = (registry.storage / "docker/registry/v2/repositories" / repo / "_manifests/tags")
    tag = sorted(os.listdir(tags))[0]
    link = (tags / tag / "current/link").read_text().strip()
    manifest = json.loads(registry.blob_path(link).read_bytes())
    return [layer["digest"] for layer in manifest["layers"]]



# ------------------------------------------------------------------ the scenarios
def test_push_pull_by_tag_and_digest(docker_cli: DockerCLI, registry: LocalRegistry,
                                     daemon: BaseDaemon, against_dockerd: bool) -> None:
    ref = f"{REG}/test"
    digest = push_busybox(docker_cli, ref)
    out = docker_cli.ok("rmi", ref)
    assert f"Untagged: {ref}:latest" in out and f"Untagged: {ref}@{digest}" in out
    r = docker_cli("pull", ref, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "latest: Pulling from test" in r.stdout
    assert f"Digest: {digest}" in r.stdout
    assert f"Status: Downloaded newer image for {ref}:latest" in r.stdout
    assert r.stdout.strip().endswith(f"{ref}:latest")
    repo_digests = json.loads(docker_cli.ok("image", "inspect", "-f", "{{json .RepoDigests}}",
                                            ref))
    assert repo_digests == [f"{ref}@{digest}"]
    again = docker_cli.ok("pull", ref)
    assert f"Status: Image is up to date for {ref}:latest" in again
    docker_cli.ok("rmi", ref)
    out = docker_cli.ok("pull", f"{ref}@{digest}", timeout=120)
    assert f"{digest}: Pulling from test" in out
    assert f"Status: Downloaded newer image for {ref}@{digest}" in out
    assert image_id(docker_cli, f"{ref}@{digest}") == image_id(docker_cli, "busybox")
    digests = docker_cli.ok("images", "--digests", "--format",
                            "{{.Repository}} {{.Tag}} {{.Digest}}")
    assert f"{ref} <none> {digest}" in digests
    docker_cli.ok("rmi", f"{ref}@{digest}")
    assert staging_left(daemon, against_dockerd) == {}


def test_pull_downloads_layers_with_progress(registry: LocalRegistry, daemon: BaseDaemon,
                                             docker_cli: DockerCLI) -> None:
    """A fresh download (no layer shared with a local image), seen on the wire."""
    ref = f"{REG}/{name('big')}"
    layer = _layer_tar({"big.bin": os.urandom(3 << 20)})
    docker_cli.ok("import", "-", f"{ref}:1", input=layer)
    digest = docker_cli.ok("push", f"{ref}:1", timeout=120)
    docker_cli.ok("rmi", f"{ref}:1")
    r = daemon.api("POST", f"/v1.41/images/create?fromImage={ref}&tag=1",
                   headers={"X-Registry-Auth": "e30="}, timeout=120)
    assert r.status == 200 and r.header("Content-Type") == "application/json"
    assert r.body.endswith(b"\r\n")
    messages = [json.loads(line) for line in r.body.split(b"\r\n") if line]
    assert messages[0] == {"status": "Pulling from " + ref.split("/", 1)[1], "id": "1"}
    layer_id = messages[1]["id"]
    assert messages[1] == {"status": "Pulling fs layer", "progressDetail": {}, "id": layer_id}
    statuses = [m.get("status") for m in messages if m.get("id") == layer_id]
    for status in ("Downloading", "Verifying Checksum", "Download complete", "Extracting",
                   "Pull complete"):
        assert status in statuses
    downloading = [m for m in messages if m.get("status") == "Downloading"]
    assert len({m["progressDetail"]["total"] for m in downloading}) == 1
    assert all(0 < m["progressDetail"]["current"] <= m["progressDetail"]["total"]
               for m in downloading)
    assert messages[-2]["status"].startswith("Digest: sha256:")
    assert messages[-1] == {"status": f"Status: Downloaded newer image for {ref}:1"}
    assert "digest" in digest
    assert int(docker_cli.ok("image", "inspect", "-f", "{{.Size}}", f"{ref}:1")) == 3 << 20
    docker_cli.ok("rmi", f"{ref}:1")


def test_save_load_round_trip(docker_cli: DockerCLI, tmp_path: Path, daemon: BaseDaemon,
                              against_dockerd: bool) -> None:
    docker_cli.ok("tag", "busybox", "saved:1")
    before = image_id(docker_cli, "saved:1")
    archive = tmp_path / "b.tar"
    docker_cli.ok("save", "-o", str(archive), "saved:1")
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        repositories = json.load(tar.extractfile("repositories"))  # type: ignore[arg-type]
    assert manifest[0]["RepoTags"] == ["saved:1"] and "saved" in repositories
    for layer in manifest[0]["Layers"]:
        assert layer in names
    docker_cli.ok("rmi", "saved:1")
    out = docker_cli.ok("load", "-i", str(archive))
    assert "Loaded image: saved:1" in out
    assert image_id(docker_cli, "saved:1") == before
    docker_cli.ok("rmi", "saved:1")
    # stdin, quiet
    out = docker_cli.ok("load", "-q", input=archive.read_bytes())
    assert out.strip() == "Loaded image: saved:1"
    docker_cli.ok("rmi", "saved:1")
    assert staging_left(daemon, against_dockerd) == {}


def test_commit_run_history_inspect(docker_cli: DockerCLI) -> None:
    container = name("c1")
    docker_cli.ok("run", "--name", container, "busybox", "sh", "-c", "echo data > /f")
    try:
        out = docker_cli.ok("commit", "-c", 'CMD ["cat","/f"]', "-m", "msg", "-a", "me",
                            container, "mine:1")
        new_id = out.strip()
        assert DIGEST.fullmatch(new_id)
        assert docker_cli.ok("run", "--rm", "mine:1") == "data\n"
        info = json.loads(docker_cli.ok("image", "inspect", "mine:1"))[0]
        base = image_id(docker_cli, "busybox")
        assert info["Id"] == new_id and info["RepoTags"] == ["mine:1"]
        assert info["Parent"] == base and info["Comment"] == "msg" and info["Author"] == "me"
        assert info["Config"]["Cmd"] == ["cat", "/f"]
        assert len(info["RootFS"]["Layers"]) == 2
        history = docker_cli.ok("history", "--no-trunc", "--format",
                                "{{.ID}}|{{.CreatedBy}}|{{.Comment}}", "mine:1").splitlines()
        assert history[0] == f"{new_id}|sh -c echo data > /f|msg"
        assert history[1].startswith(base + "|")
        # the runtime's mount points are not part of the image
        diff = docker_cli.ok("run", "--rm", "mine:1", "ls", "-a", "/etc")
        assert diff == docker_cli.ok("run", "--rm", "busybox", "ls", "-a", "/etc")
        # the parent cannot go while the child is there
        r = docker_cli("rmi", base)
        assert r.returncode != 0
    finally:
        docker_cli("rm", "-f", container)
        docker_cli("rmi", "mine:1")


def test_image_prune_dangling_and_all_with_filters(docker_cli: DockerCLI) -> None:
    layer = _layer_tar({"x": b"prune me"})
    dangling = docker_cli.ok("import", "-", input=layer).strip()
    labelled = docker_cli.ok("import", "-c", "LABEL keep=yes", "-", "labelled:1",
                             input=_layer_tar({"y": b"keep"})).strip()
    out = docker_cli.ok("image", "prune", "-f")
    assert f"deleted: {dangling}" in out
    assert dangling not in image_ids(docker_cli) and labelled in image_ids(docker_cli)
    out = docker_cli.ok("image", "prune", "-a", "-f", "--filter", "label=keep=no")
    assert labelled in image_ids(docker_cli)
    out = docker_cli.ok("image", "prune", "-a", "-f", "--filter", "label=keep=yes",
                        "--filter", "until=2000-01-01T00:00:00")
    assert labelled in image_ids(docker_cli)  # newer than "until"
    out = docker_cli.ok("image", "prune", "-a", "-f", "--filter", "label=keep=yes")
    assert "untagged: labelled:1" in out and labelled not in image_ids(docker_cli)
    assert "busybox" in docker_cli.ok("images")  # used by no container, but unlabelled


def test_login_push_pull_with_basic_auth(docker_cli: DockerCLI,
                                         auth_registry: LocalRegistry) -> None:
    ref = f"{AUTH_REG}/priv"
    docker_cli.ok("tag", "busybox", ref)
    r = docker_cli("push", ref)
    assert r.returncode != 0 and "no basic auth credentials" in (r.stdout + r.stderr)
    r = docker_cli("login", AUTH_REG, "-u", "user", "-p", "wrong")
    assert r.returncode != 0
    assert "401 Unauthorized" in r.stderr
    out = docker_cli.ok("login", AUTH_REG, "-u", "user", "-p", "pass")
    assert "Login Succeeded" in out
    try:
        docker_cli.ok("push", ref, timeout=120)
        docker_cli.ok("rmi", ref)
        docker_cli.ok("pull", ref, timeout=120)
    finally:
        docker_cli("logout", AUTH_REG)
    docker_cli.ok("rmi", ref)
    r = docker_cli("pull", ref)
    assert r.returncode != 0 and "no basic auth credentials" in r.stderr


def test_pulled_image_pushed_to_another_registry(docker_cli: DockerCLI,
                                                 registry: LocalRegistry,
                                                 auth_registry: LocalRegistry) -> None:
    """A pulled layer (kept compressed) goes to another registry as it is."""
    ref = f"{REG}/{name('moved')}:1"
    docker_cli.ok("import", "-", ref, input=_layer_tar({"f": os.urandom(1 << 20)}))
    docker_cli.ok("push", ref, timeout=120)
    docker_cli.ok("rmi", ref)
    docker_cli.ok("pull", ref, timeout=120)
    other = f"{AUTH_REG}/{name('moved')}:1"
    docker_cli.ok("tag", ref, other)
    docker_cli.ok("login", AUTH_REG, "-u", "user", "-p", "pass")
    try:
        out = docker_cli.ok("push", other, timeout=120)
        assert "Pushed" in out
        pushed = re.search(r"digest: (sha256:[0-9a-f]{64})", out)
        assert pushed is not None
        docker_cli.ok("rmi", ref, other)
        docker_cli.ok("pull", other, timeout=120)
        assert _layer_digests(auth_registry, other) == _layer_digests(registry, ref)
    finally:
        docker_cli("logout", AUTH_REG)
        docker_cli("rmi", other)


def test_search_without_index_is_a_clear_error(docker_cli: DockerCLI,
                                               registry: LocalRegistry) -> None:
    r = docker_cli("search", f"{REG}/test")
    assert r.returncode != 0 and "Unexpected status code 404" in r.stderr


# ------------------------------------------------------------------ faults
def test_corrupted_blob_fails_and_registers_nothing(
    docker_cli: DockerCLI, registry: LocalRegistry, daemon: BaseDaemon, against_dockerd: bool
) -> None:
    """Reliability F15: a registry serves a blob with one flipped byte."""
    ref = f"{REG}/{name('corrupt')}"
    docker_cli.ok("import", "-", f"{ref}:1", input=_layer_tar({"f": os.urandom(200_000)}))
    docker_cli.ok("push", f"{ref}:1", timeout=120)
    manifest = json.loads(daemon.api("GET", f"/distribution/{ref}:1/json").body)
    assert manifest["Descriptor"]["digest"].startswith("sha256:")
    docker_cli.ok("rmi", f"{ref}:1")
    before = image_ids(docker_cli)
    layer_digest = _layer_digests(registry, ref)[0]
    blob = registry.blob_path(layer_digest)
    original = blob.read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x01
    blob.write_bytes(bytes(flipped))
    try:
        r = docker_cli("pull", f"{ref}:1", timeout=120)
        assert r.returncode != 0
        assert f"filesystem layer verification failed for digest {layer_digest}" in (
            r.stdout + r.stderr)
        assert image_ids(docker_cli) == before
        assert staging_left(daemon, against_dockerd) == {}
    finally:
        blob.write_bytes(original)
    docker_cli.ok("pull", f"{ref}:1", timeout=120)
    docker_cli.ok("rmi", f"{ref}:1")


def test_simultaneous_pulls_download_once(docker_cli: DockerCLI, registry: LocalRegistry,
                                          against_dockerd: bool) -> None:
    """Reliability L15."""
    ref = f"{REG}/{name('twice')}"
    docker_cli.ok("import", "-", f"{ref}:1", input=_layer_tar({"f": os.urandom(4 << 20)}))
    docker_cli.ok("push", f"{ref}:1", timeout=120)
    docker_cli.ok("rmi", f"{ref}:1")
    layer_digest = _layer_digests(registry, ref)[0]
    results: list[subprocess.CompletedProcess[Any]] = []
    threads = [threading.Thread(target=lambda: results.append(
        docker_cli("pull", f"{ref}:1", timeout=120))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.returncode for r in results] == [0, 0], results
    assert registry.requests("GET", f"/blobs/{layer_digest}") == 1
    docker_cli.ok("rmi", f"{ref}:1")


# ------------------------------------------------------------------ bad input
def test_bad_references_and_parameters(daemon: BaseDaemon, docker_cli: DockerCLI,
                                       registry: LocalRegistry, against_dockerd: bool) -> None:
    """Reliability B9, B27, B29, B30 (20.10's known 500s are whitelisted there)."""
    bad_request = (400, 500) if against_dockerd else (400,)
    r = daemon.api("POST", "/images/busybox/tag?repo=UPPER&tag=x")
    assert r.status in bad_request and "must be lowercase" in r.json()["message"]
    r = daemon.api("POST", "/images/busybox/tag?repo=ok&tag=bad%20tag")
    assert r.status in bad_request
    r = daemon.api("POST", "/images/create?fromImage=busybox%40sha256%3A1234")
    assert r.status == 400 and r.json()["message"] == "invalid reference format"
    r = daemon.api("POST", "/images/create")
    assert r.status in bad_request
    r = daemon.api("POST", "/images/create?fromImage=127.0.0.1%3A1%2Fx&tag=latest")
    assert r.status == 500 and "connect: connection refused" in r.json()["message"]
    r = daemon.api("POST", f"/images/create?fromImage={REG}%2Fnothing&tag=1",
                   headers={"X-Registry-Auth": "!!!notbase64"})
    assert r.status == 404 and "!!!" not in r.text
    # commit with a bad name: refused before anything is committed
    container = name("b27")
    docker_cli.ok("create", "--name", container, "busybox", "true")
    try:
        before = image_ids(docker_cli)
        r = daemon.api("POST", f"/commit?container={container}&repo=UPPER")
        assert r.status in bad_request, r.text
        if not against_dockerd:  # 20.10 commits first and leaves a dangling image (B27)
            assert image_ids(docker_cli) == before
        r = daemon.api("POST", "/commit?container=nope-nope&repo=x")
        assert r.status == 404
        r = daemon.api("POST", f"/commit?container={container}&changes=BOGUS%201")
        assert r.status in bad_request
        if not against_dockerd:
            assert image_ids(docker_cli) == before
    finally:
        docker_cli("rm", "-f", container)


B24_CASES = {
    "garbage": b"this is not a tar archive at all" * 40,
    "empty": b"",
    "empty tar": b"\0" * 1024,
}


def _archive(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for target, link in (links or {}).items():
            info = tarfile.TarInfo(target)
            info.type, info.linkname = tarfile.SYMTYPE, link
            tar.addfile(info)
        for member, data in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _load_cases() -> dict[str, bytes]:
    layer = _layer_tar({"ok": b"ok"})
    import hashlib

    diff = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps({"os": "linux", "architecture": "amd64",
                         "rootfs": {"type": "layers", "diff_ids": [diff]}}).encode()
    escape = _layer_tar({"../../../../tmp/wharfd-b24-escape": b"x"})
    cases = dict(B24_CASES)
    cases["bad manifest json"] = _archive({"manifest.json": b"[{bad"})
    cases["config outside"] = _archive({"manifest.json": json.dumps(
        [{"Config": "../../../../etc/passwd", "RepoTags": ["b24:1"], "Layers": []}]).encode()})
    cases["missing config"] = _archive({"manifest.json": json.dumps(
        [{"Config": "nope.json", "RepoTags": ["b24:1"], "Layers": []}]).encode()})
    cases["symlinked config"] = _archive({"manifest.json": json.dumps(
        [{"Config": "evil/passwd", "RepoTags": ["b24:1"], "Layers": []}]).encode()},
        links={"evil": "/etc"})
    cases["layer mismatch"] = _archive({
        "c.json": config, "l/layer.tar": escape,
        "manifest.json": json.dumps([{"Config": "c.json", "RepoTags": ["b24:1"],
                                      "Layers": ["l/layer.tar"]}]).encode()})
    return cases


@pytest.mark.parametrize("case", list(_load_cases()))
def test_load_bad_archives(case: str, daemon: BaseDaemon, docker_cli: DockerCLI,
                           against_dockerd: bool) -> None:
    """Reliability B24: an error (in the stream or as a status), nothing loaded or
    tagged, nothing written outside, no scratch left."""
    before = image_ids(docker_cli)
    r = daemon.api("POST", "/images/load?quiet=1", body=_load_cases()[case],
                   headers={"Content-Type": "application/x-tar"}, timeout=60)
    if r.status == 200:
        messages = [json.loads(x) for x in r.body.split(b"\r\n") if x.strip()]
        assert any("errorDetail" in m for m in messages), messages
    else:
        assert r.status >= 400
    assert image_ids(docker_cli) == before
    assert "b24" not in docker_cli.ok("images")
    assert not Path("/tmp/wharfd-b24-escape").exists()
    assert staging_left(daemon, against_dockerd) == {}


# ------------------------------------------------------------------ docker-py
def test_docker_py_pull_push_save_load_commit(daemon: BaseDaemon, registry: LocalRegistry,
                                              auth_registry: LocalRegistry) -> None:
    client = docker_py_client(daemon, timeout=120)
    try:
        image = client.images.get("busybox")
        assert image.tag(f"{AUTH_REG}/py", "1")
        out = client.images.push(f"{AUTH_REG}/py", "1",
                                 auth_config={"username": "user", "password": "pass"})
        assert "digest: sha256:" in out
        client.images.remove(f"{AUTH_REG}/py:1")
        pulled = client.images.pull(f"{AUTH_REG}/py", "1",
                                    auth_config={"username": "user", "password": "pass"})
        assert pulled.id == image.id
        data = b"".join(image.save(named=True))
        loaded = client.images.load(data)
        assert loaded and loaded[0].id == image.id
        container = client.containers.run("busybox", ["sh", "-c", "echo py > /py"],
                                          detach=True)
        container.wait()
        committed = container.commit(repository="pycommit", tag="1", changes=["ENV A=1"])
        assert "A=1" in committed.attrs["Config"]["Env"]
        container.remove()
        client.images.remove("pycommit:1")
        client.images.remove(f"{AUTH_REG}/py:1")
    finally:
        client.close()


__all__ = ["base64", "rawhttp", "run_docker"]
