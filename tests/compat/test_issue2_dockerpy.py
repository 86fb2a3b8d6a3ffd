"""Issue 2 acceptance through docker-py 7 (``docker.DockerClient``), no exec involved.

Checked against the real dockerd 20.10 with ``pytest --against-dockerd``.
"""

from __future__ import annotations

from typing import Any

import pytest

docker = pytest.importorskip("docker")

pytestmark = pytest.mark.root


def test_ping_and_version(dclient: Any) -> None:
    assert dclient.ping() is True
    v = dclient.version()
    assert v["ApiVersion"] and v["Os"] == "linux"
    # docker-py talks the version the server announces
    assert dclient.api.api_version == v["ApiVersion"]


def test_run_remove_returns_output(dclient: Any) -> None:
    before = {c.id for c in dclient.containers.list(all=True)}
    out = dclient.containers.run("busybox", "echo hello", remove=True)
    assert out == b"hello\n"
    assert {c.id for c in dclient.containers.list(all=True)} == before


def test_run_nonzero_exit_raises(dclient: Any) -> None:
    with pytest.raises(docker.errors.ContainerError) as err:
        dclient.containers.run("busybox", ["sh", "-c", "echo oops >&2; exit 3"], remove=True)
    assert err.value.exit_status == 3
    assert b"oops" in (err.value.stderr or b"")


def test_run_detach_logs_wait(dclient: Any) -> None:
    c = dclient.containers.run(
        "busybox", ["sh", "-c", "echo out; echo err >&2; exit 5"], detach=True
    )
    try:
        assert len(c.id) == 64
        res = c.wait(timeout=30)
        assert res["StatusCode"] == 5
        assert c.logs(stdout=True, stderr=False) == b"out\n"
        assert c.logs(stdout=False, stderr=True) == b"err\n"
        assert sorted(c.logs().splitlines()) == [b"err", b"out"]
        c.reload()
        assert c.status == "exited"
        assert c.attrs["State"]["ExitCode"] == 5
    finally:
        c.remove(force=True)


def test_stop_and_remove(dclient: Any) -> None:
    c = dclient.containers.run("busybox", ["sleep", "3600"], detach=True, name="pystop")
    c.reload()
    assert c.status == "running"
    assert c.name == "pystop"
    c.stop(timeout=1)  # sleep as PID 1 ignores SIGTERM: SIGKILL after 1 s
    c.reload()
    assert c.status == "exited"
    assert c.attrs["State"]["ExitCode"] == 137
    c.remove()
    with pytest.raises(docker.errors.NotFound):
        dclient.containers.get(c.id)
    with pytest.raises(docker.errors.NotFound):
        dclient.containers.get("pystop")


def test_images_list(dclient: Any) -> None:
    images = dclient.images.list()
    tags = {t for img in images for t in img.tags}
    assert "busybox:latest" in tags
    img = dclient.images.get("busybox")
    assert img.attrs["Config"]["Cmd"] == ["sh"]
    assert img.id.startswith("sha256:")


def test_containers_list_exited(dclient: Any) -> None:
    c = dclient.containers.run("busybox", "true", detach=True)
    try:
        assert c.wait(timeout=30)["StatusCode"] == 0
        exited = dclient.containers.list(all=True, filters={"status": "exited"})
        assert c.id in {x.id for x in exited}
        assert all(x.status == "exited" for x in exited)
        assert c.id not in {x.id for x in dclient.containers.list()}
    finally:
        c.remove()
    assert c.id not in {x.id for x in dclient.containers.list(all=True)}


def test_not_found_errors(dclient: Any) -> None:
    with pytest.raises(docker.errors.NotFound):
        dclient.containers.get("no-such-container-" + "x" * 8)
    with pytest.raises(docker.errors.ImageNotFound):
        dclient.images.get("no-such-image:latest")
