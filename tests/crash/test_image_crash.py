"""kill -9 in the middle of a pull, a load and a commit (reliability F4, F5, F6; issue 3
item 5), with deterministic crash points (``WHARFD_CRASH_AT``, engine/store/crashpoints.py):
after the restart no image or tag is half there, no staging file, ``extract-``
snapshot, unnamed layer snapshot or unreferenced blob is left, and the same operation
then succeeds."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.cli import DockerCLI
from tests.harness.crash import armed_with, converged, own_wharfd
from tests.harness.daemon import DaemonProcess
from tests.harness.registry import LocalRegistry, registry_unavailable_reason

pytestmark = [pytest.mark.root, pytest.mark.slow]

REMOTE = "127.0.0.1:5000/crash:1"


@pytest.fixture
def wharfd(busybox_tar: Path) -> Iterator[DaemonProcess]:
    reason = registry_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with own_wharfd(busybox_tar) as daemon:
        yield daemon


@pytest.fixture
def registry(wharfd: DaemonProcess) -> Iterator[LocalRegistry]:
    with LocalRegistry(wharfd.netns, 5000) as reg:
        yield reg


def crash_during(daemon: DaemonProcess, point: str, *args: str, **kwargs: Any) -> None:
    """Restart the daemon armed with ``point``, run ``docker args``: the daemon dies
    (exit 137); then start it again unarmed."""
    with armed_with(daemon, point):
        r = DockerCLI(daemon)(*args, timeout=120, **kwargs)
        assert r.returncode != 0, f"{point}: the operation finished: {r.stdout!r}"
    daemon.start()


def images(cli: DockerCLI) -> list[str]:
    return sorted(cli.ok("images", "-a", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}")
                  .splitlines())


def publish_two_layer_image(cli: DockerCLI) -> None:
    """A committed image (busybox + a layer of its own) in the registry, and nothing of
    it left locally (busybox too is removed, so a pull downloads both layers)."""
    cli.ok("run", "--name", "maker", "busybox", "sh", "-c",
           "dd if=/dev/urandom of=/payload bs=1M count=4 2>/dev/null")
    cli.ok("commit", "maker", REMOTE)
    cli.ok("push", REMOTE, timeout=120)
    cli.ok("rm", "maker")
    cli.ok("rmi", REMOTE, "busybox")
    assert images(cli) == []


@pytest.mark.parametrize("point", ["pull_mid_download", "pull_after_layer_commit",
                                   "pull_before_commit", "pull_after_commit"])
def test_kill_during_pull(wharfd: DaemonProcess, registry: LocalRegistry, point: str) -> None:
    """F4 (download), F5 (a layer committed, others in flight)."""
    cli = DockerCLI(wharfd)
    publish_two_layer_image(cli)
    crash_during(wharfd, point, "pull", REMOTE)
    if point == "pull_after_commit":
        assert [line.split()[0] for line in images(cli)] == [REMOTE]  # all or nothing
    else:
        assert images(cli) == []
    assert converged(wharfd) == {}
    out = cli.ok("pull", REMOTE, timeout=120)
    assert "Status: " in out
    assert cli.ok("run", "--rm", REMOTE, "ls", "-l", "/payload").split()[4] == str(4 << 20)
    assert converged(wharfd) == {}


@pytest.mark.parametrize("point", ["load_mid_stream", "load_before_commit"])
def test_kill_during_load(wharfd: DaemonProcess, tmp_path: Path, point: str) -> None:
    """F6."""
    cli = DockerCLI(wharfd)
    archive = tmp_path / "busybox.tar"
    cli.ok("save", "-o", str(archive), "busybox")
    cli.ok("rmi", "busybox")
    crash_during(wharfd, point, "load", "-i", str(archive))
    assert images(cli) == []
    assert converged(wharfd) == {}
    assert "Loaded image: busybox:latest" in cli.ok("load", "-i", str(archive))
    assert cli.ok("run", "--rm", "busybox", "echo", "ok") == "ok\n"
    assert converged(wharfd) == {}


@pytest.mark.parametrize("point", ["commit_after_layer", "commit_before_commit"])
def test_kill_during_commit(wharfd: DaemonProcess, point: str) -> None:
    cli = DockerCLI(wharfd)
    cli.ok("run", "--name", "src", "busybox", "sh", "-c", "echo hi > /hello")
    before = images(cli)
    crash_during(wharfd, point, "commit", "src", "committed:1")
    assert images(cli) == before
    assert converged(wharfd) == {}
    cli.ok("commit", "src", "committed:1")
    assert cli.ok("run", "--rm", "committed:1", "cat", "/hello") == "hi\n"
    state = json.loads(cli.ok("inspect", "-f", "{{json .State}}", "src"))
    assert state["Status"] == "exited"
    assert converged(wharfd) == {}
