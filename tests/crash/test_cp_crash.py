"""A `docker cp` cut short by a daemon kill -9 (issue 10, "stale rootfs mounts stack"):
the created container's rootfs stays mounted; the next `cp` or start must not mount it
again on top, and leaves nothing mounted behind."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.harness.cli import DockerCLI, docker_binary
from tests.harness.daemon import DaemonProcess, mounts_under

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_cp_killed_mid_stream_leaves_no_stacked_rootfs(wharfd: DaemonProcess,
                                                      tmp_path: Path) -> None:
    cli = DockerCLI(wharfd)
    cid = cli.ok("create", "busybox", "cat", "/etc/passwd").strip()
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (32 << 20))
    cli.ok("cp", str(big), f"{cid}:/big.bin")
    rootfs = wharfd.data_root / "containers" / cid / "rootfs"
    assert mounts_under(rootfs) == []

    # A copy out that the client stops reading: the daemon holds the rootfs mounted.
    reader = subprocess.Popen([docker_binary(), "cp", f"{cid}:/big.bin", "-"],
                              stdout=subprocess.PIPE, env=wharfd.env)
    try:
        deadline = time.monotonic() + 20
        while not mounts_under(rootfs):
            assert time.monotonic() < deadline, "the copy never mounted the rootfs"
            time.sleep(0.05)
        wharfd.kill9()
    finally:
        reader.kill()
        reader.wait()
    wharfd.start()

    out = subprocess.run([docker_binary(), "cp", f"{cid}:/etc/passwd", "-"],
                         capture_output=True, env=wharfd.env, timeout=60)
    assert out.returncode == 0, out.stderr
    # The daemon unmounts after the last byte went out: give it a moment; a stacked
    # mount (the stale one below the copy's own) would stay for good.
    deadline = time.monotonic() + 10
    while mounts_under(rootfs) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mounts_under(rootfs) == [], "a mount was stacked on the stale rootfs mount"
    r = subprocess.run([docker_binary(), "start", "-a", cid], capture_output=True,
                       env=wharfd.env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert mounts_under(rootfs) == []
