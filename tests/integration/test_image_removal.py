"""``docker rmi`` answers before the image's unpacked files are deleted, the files do go,
and a kill -9 between the reply and the deletion is finished at the next start.

Rule 3 of the architecture (mark ``removing`` and commit, delete the files, delete the
row) split across the reply: the layer rows go and the snapshots are marked before the
reply; a task the image manager owns deletes the files and the rows afterwards.
wharfd only: the checks look into wharfd's data root, and the crash point is wharfd's.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.busybox import files_tar
from tests.harness.cli import DockerCLI
from tests.harness.crash import armed_with, converged, own_wharfd
from tests.harness.daemon import DaemonProcess

pytestmark = pytest.mark.root

BIG = "bigfiles:1"


@pytest.fixture
def wharfd() -> Iterator[DaemonProcess]:
    with own_wharfd() as daemon:
        yield daemon


@pytest.fixture(scope="module")
def big_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rootfs of 4 000 small files (20 MB): unpacked files that take a while to delete."""
    files = {f"data/d{i // 200:03d}/f{i:05d}": os.urandom(5000) for i in range(4000)}
    path = tmp_path_factory.mktemp("rmi") / "big.tar"
    path.write_bytes(files_tar(files))
    return path


def _snapshot_dirs(daemon: DaemonProcess) -> set[str]:
    return set(os.listdir(daemon.data_root / "snapshots"))


def _snapshot_rows(daemon: DaemonProcess) -> list[tuple[str, int]]:
    db = sqlite3.connect(f"file:{daemon.data_root / 'engine.db'}?mode=ro", uri=True)
    try:
        return [(r[0], r[1]) for r in db.execute("SELECT dir, removing FROM snapshots")]
    finally:
        db.close()


def _wait_until_gone(daemon: DaemonProcess, dirs: set[str], timeout: float = 30) -> set[str]:
    deadline = time.monotonic() + timeout
    while (left := dirs & _snapshot_dirs(daemon)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def test_rmi_deletes_the_files_after_answering(wharfd: DaemonProcess, big_tar: Path) -> None:
    cli = DockerCLI(wharfd)
    cli.ok("import", str(big_tar), BIG)
    image_dirs = _snapshot_dirs(wharfd)
    assert image_dirs, "the import made no snapshot"
    out = cli.ok("rmi", BIG)
    assert f"Untagged: {BIG}" in out and "Deleted: sha256:" in out
    assert BIG not in cli.ok("images", "--format", "{{.Repository}}:{{.Tag}}")
    assert _wait_until_gone(wharfd, image_dirs) == set()
    assert _snapshot_rows(wharfd) == []
    assert converged(wharfd) == {}


def test_same_image_again_right_after_rmi(wharfd: DaemonProcess, big_tar: Path) -> None:
    """The layer's key is free at once, while its old files may still be going."""
    cli = DockerCLI(wharfd)
    for _ in range(3):
        cli.ok("import", str(big_tar), BIG)
        cli.ok("rmi", BIG)
    cli.ok("import", str(big_tar), BIG)
    layer_dirs = _snapshot_dirs(wharfd)
    deadline = time.monotonic() + 30
    while any(removing for _, removing in _snapshot_rows(wharfd)):
        assert time.monotonic() < deadline, _snapshot_rows(wharfd)
        time.sleep(0.1)
    assert [d for d, _ in _snapshot_rows(wharfd)] == sorted(layer_dirs & _snapshot_dirs(wharfd))
    assert converged(wharfd) == {}


def test_kill_between_reply_and_delete_is_finished_at_start(
    wharfd: DaemonProcess, big_tar: Path
) -> None:
    cli = DockerCLI(wharfd)
    cli.ok("import", str(big_tar), BIG)
    image_dirs = _snapshot_dirs(wharfd)
    with armed_with(wharfd, "snapshot_reap_before_files"):
        r = cli("rmi", BIG)
        # the client had its answer: the daemon dies after replying, in the background
        assert r.returncode == 0, r.stderr
        assert "Deleted: sha256:" in r.stdout
    # the files were still there when the daemon died, their rows marked
    assert image_dirs <= _snapshot_dirs(wharfd)
    assert {removing for _, removing in _snapshot_rows(wharfd)} == {1}
    wharfd.start()
    assert _snapshot_dirs(wharfd) & image_dirs == set()
    assert _snapshot_rows(wharfd) == []
    assert BIG not in cli.ok("images", "--format", "{{.Repository}}:{{.Tag}}")
    assert converged(wharfd) == {}
    cli.ok("import", str(big_tar), BIG)
