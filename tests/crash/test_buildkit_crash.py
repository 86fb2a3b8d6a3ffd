"""kill -9 of the daemon in the middle of a BuildKit build (compose v2's default path;
issue 11 item 6, reliability F7): after the restart nothing is tagged, what the build
left (the RUN's container, still running its command, and the finished steps' images)
is removable, and the same project then builds."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.harness.cli import DockerCLI
from tests.harness.compose import Compose, compose_v2_unavailable_reason
from tests.harness.daemon import DaemonProcess

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_kill9_during_a_buildkit_run(wharfd: DaemonProcess, tmp_path: Path) -> None:
    reason = compose_v2_unavailable_reason()
    if reason:
        pytest.skip(reason)
    cli = DockerCLI(wharfd)
    proj = tmp_path / "project"
    (proj / "app").mkdir(parents=True)
    (proj / "compose.yaml").write_text(
        "services:\n  app:\n    image: crashbk\n    build: ./app\n")
    (proj / "app" / "Dockerfile").write_text(
        "FROM busybox\nRUN echo first > /first\nRUN echo crash-now && sleep 60\n")
    compose = Compose(wharfd, proj, "crashbk", 2, tmp_path / "config", buildkit=True)
    log = tmp_path / "compose.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(compose.argv("--progress", "plain", "build"), env=compose.env,
                                cwd=proj, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while "crash-now" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        wharfd.kill9()
        assert proc.wait(timeout=30) != 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wharfd.start()

    assert cli("image", "inspect", "crashbk").returncode != 0  # nothing tagged
    # The RUN's container: conmon kept its process alive through the kill, and the
    # restarted daemon adopts it like any container; it is removable.
    leftovers = cli.ok("ps", "-aq").split()
    assert len(leftovers) <= 1, cli.ok("ps", "-a")
    for cid in leftovers:
        cli.ok("rm", "-f", cid)
    cli.ok("builder", "prune", "-f")
    assert cli.ok("images", "-q", "--filter", "dangling=true").split() == []

    (proj / "app" / "Dockerfile").write_text("FROM busybox\nRUN echo first > /first\n")
    out = compose.ok("--progress", "plain", "build")
    assert 'building with "default" instance using docker driver' in out, out
    assert cli.ok("run", "--rm", "crashbk", "cat", "/first") == "first\n"
