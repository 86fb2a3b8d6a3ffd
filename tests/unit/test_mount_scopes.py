"""docker cp's mount table (which writes are refused) and the volume subpath walk
(``rootscope`` in its ``beneath`` mode): issue 10 items 1 and 7."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine import rootscope
from engine.containers.mountview import MountTable
from engine.errors import InvalidParameter, NotFound
from engine.volumes.subpath import open_beneath

MOUNTS = [
    {"Type": "volume", "Destination": "/data", "RW": True},
    {"Type": "bind", "Destination": "/data/ro", "RW": False},
    {"Type": "tmpfs", "Destination": "/scratch", "RW": True},
]


def test_innermost_mount_decides() -> None:
    table = MountTable.of(MOUNTS, {}, running=True)
    table.check_writable(["data", "x"])
    table.check_writable(["etc"])
    with pytest.raises(InvalidParameter, match="mounted volume is marked read-only"):
        table.check_writable(["data", "ro", "deep"])
    with pytest.raises(InvalidParameter, match="mounted volume is marked read-only"):
        table.check_writable(["data", "ro"])
    table.check_writable(["data", "rox"])  # a sibling, not below /data/ro


def test_read_only_root_and_tmpfs_by_state() -> None:
    running = MountTable.of(MOUNTS, {"ReadonlyRootfs": True, "Tmpfs": {"/run": ""}},
                            running=True)
    with pytest.raises(InvalidParameter, match="container rootfs is marked read-only"):
        running.check_writable(["etc"])
    running.check_writable(["run", "x"])  # a running container's --tmpfs takes it
    running.check_writable(["scratch"])
    stopped = MountTable.of(MOUNTS, {"ReadonlyRootfs": True, "Tmpfs": {"/run": ""}},
                            running=False)
    for parts in (["run", "x"], ["scratch"]):  # no tmpfs while stopped: the root below
        with pytest.raises(InvalidParameter, match="container rootfs is marked read-only"):
            stopped.check_writable(parts)


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    data = tmp_path / "_data"
    (data / "sub" / "dir").mkdir(parents=True)
    (data / "sub" / "dir" / "f").write_text("f")
    os.symlink("sub", data / "inner")
    os.symlink("../..", data / "up")
    os.symlink("/etc", data / "absolute")
    os.symlink("../sub", data / "sub" / "back")
    (tmp_path / "outside").mkdir()
    return data


@pytest.mark.parametrize("subpath", ["sub/dir", "inner/dir", "sub/back/dir", "sub/./dir/",
                                     "sub/dir/../dir"])
def test_subpath_inside_the_volume(volume: Path, subpath: str) -> None:
    fd = open_beneath(volume, subpath)
    try:
        assert os.stat(fd).st_ino == (volume / "sub" / "dir").stat().st_ino
    finally:
        os.close(fd)


@pytest.mark.parametrize("subpath", ["up", "up/outside", "absolute", "sub/../..",
                                     "inner/../../outside"])
def test_subpath_escaping_the_volume(volume: Path, subpath: str) -> None:
    with pytest.raises(InvalidParameter, match="path concatenation escapes the base directory"):
        os.close(open_beneath(volume, subpath))


def test_subpath_missing(volume: Path) -> None:
    with pytest.raises(NotFound, match="cannot access path sub/nope"):
        os.close(open_beneath(volume, "sub/nope"))
    with pytest.raises(NotFound, match="cannot access path sub/dir/f/x"):
        os.close(open_beneath(volume, "sub/dir/f/x"))


def test_chroot_walk_still_stops_at_the_root(volume: Path) -> None:
    """Without ``beneath`` (docker cp's containers) ``..`` and absolute links stay in."""
    root_fd = rootscope.open_root(volume)
    try:
        with rootscope.resolve(root_fd, ["up", "sub"], follow_last=True) as target:
            assert target.path == "/sub"
    finally:
        os.close(root_fd)
