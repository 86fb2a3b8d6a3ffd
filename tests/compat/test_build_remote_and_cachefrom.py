"""`ADD <url>` and remote contexts (a file server inside the daemon's network
namespace; docker-py sends `remote=` for a URL path, the docker CLI downloads URLs
itself) and `--cache-from` (an image whose parent chain was lost through
save/rmi/load), with the classic builder."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.harness.busybox import files_tar
from tests.harness.daemon import BaseDaemon

pytestmark = pytest.mark.root


def _build(daemon: BaseDaemon, ctx: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **daemon.env, "DOCKER_BUILDKIT": "0"}
    return subprocess.run(["docker", "build", *args, str(ctx)], env=env, capture_output=True,
                          text=True, timeout=300)


def _docker(daemon: BaseDaemon, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **daemon.env}
    return subprocess.run(["docker", *args], env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def file_server(daemon: BaseDaemon, tmp_path: Path) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 in the daemon's netns serving ``tmp_path/www``."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "remote.txt").write_text("fetched over http\n")
    port = 18000 + os.getpid() % 1000
    proc = daemon.netns.popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(www),
         str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), 0.5).close()"
    deadline = time.monotonic() + 15
    while daemon.netns.run([sys.executable, "-c", probe]).returncode != 0:
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail("the file server did not start")
        time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_add_url_downloads_the_file(daemon: BaseDaemon, file_server: str,
                                    tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        f"FROM busybox\nADD {file_server}/remote.txt /fetched/\n"
        f"ADD {file_server}/remote.txt /named.txt\n"
    )
    r = _build(daemon, ctx, "-t", "addurl:1")
    assert r.returncode == 0, r.stderr
    out = _docker(daemon, "run", "--rm", "addurl:1", "sh", "-c",
                  "cat /fetched/remote.txt /named.txt; stat -c %a /named.txt")
    assert out.stdout == "fetched over http\nfetched over http\n600\n", out
    _docker(daemon, "rmi", "addurl:1")


def test_add_url_that_cannot_be_fetched_fails_clearly(daemon: BaseDaemon, file_server: str,
                                                      tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM busybox\nADD {file_server}/missing.txt /x\n")
    r = _build(daemon, ctx, "-t", "addurl:missing")
    assert r.returncode != 0
    assert f"{file_server}/missing.txt" in r.stderr and "404" in r.stderr, r.stderr
    assert _docker(daemon, "image", "inspect", "addurl:missing").returncode != 0
    # nothing listens on port 9 here
    (ctx / "Dockerfile").write_text("FROM busybox\nADD http://127.0.0.1:9/x.txt /x\n")
    r = _build(daemon, ctx, "-t", "addurl:refused")
    assert r.returncode != 0
    assert "http://127.0.0.1:9/x.txt" in r.stderr, r.stderr


def test_cache_from_an_image_without_its_parents(daemon: BaseDaemon, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        "FROM busybox\nRUN echo one > /one\nCOPY f /f\nENV K=v\nRUN cat /f /one > /both\n"
    )
    (ctx / "f").write_text("file\n")
    assert _build(daemon, ctx, "-t", "cachesrc:1").returncode == 0
    archive = tmp_path / "img.tar"
    assert _docker(daemon, "save", "-o", str(archive), "cachesrc:1").returncode == 0
    assert _docker(daemon, "rmi", "cachesrc:1").returncode == 0
    assert _docker(daemon, "load", "-i", str(archive)).returncode == 0

    r = _build(daemon, ctx, "-t", "cachesrc:2")
    assert r.stdout.count("Using cache") == 0, r.stdout  # the loaded image has no parents

    r = _build(daemon, ctx, "-t", "cachesrc:3", "--cache-from", "cachesrc:1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("Using cache") == 4, r.stdout
    ids = {_docker(daemon, "image", "inspect", "-f", "{{.Id}}", f"cachesrc:{n}").stdout
           for n in (1, 3)}
    assert len(ids) == 1, ids
    for n in (1, 2, 3):
        _docker(daemon, "rmi", f"cachesrc:{n}")


def test_remote_context_tarball_and_plain_dockerfile(daemon: BaseDaemon, file_server: str,
                                                     tmp_path: Path,
                                                     dclient: docker.DockerClient) -> None:
    www = tmp_path / "www"
    (www / "ctx.tar.gz").write_bytes(files_tar(gz=True, files={
        "Dockerfile": "FROM busybox\nCOPY greeting /greeting\n", "greeting": "from a tarball\n",
    }))
    (www / "Dockerfile").write_text("FROM busybox\nRUN echo from a remote Dockerfile > /g\n")
    image, _logs = dclient.images.build(path=f"{file_server}/ctx.tar.gz", tag="remotectx:1")
    out = dclient.containers.run(image.id, ["cat", "/greeting"], remove=True)
    assert out == b"from a tarball\n"
    image, _logs = dclient.images.build(path=f"{file_server}/Dockerfile", tag="remotectx:2")
    out = dclient.containers.run(image.id, ["cat", "/g"], remove=True)
    assert out == b"from a remote Dockerfile\n"
    for tag in ("remotectx:1", "remotectx:2"):
        dclient.images.remove(tag)


def test_remote_context_that_cannot_be_fetched(daemon: BaseDaemon, file_server: str,
                                               dclient: docker.DockerClient) -> None:
    with pytest.raises(docker.errors.APIError) as failure:
        dclient.images.build(path=f"{file_server}/nothing-here.tar", tag="remotectx:missing")
    assert f"{file_server}/nothing-here.tar" in str(failure.value)
    with pytest.raises(docker.errors.ImageNotFound):
        dclient.images.get("remotectx:missing")
