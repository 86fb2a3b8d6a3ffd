"""A wharfd of a test's own, to kill and restart, and its deterministic crash points.

Crash tests need a daemon nobody else uses (they SIGKILL it, restart it armed with a
crash point, fill its data root); ``own_wharfd`` gives one, with busybox imported when
asked, and cleans everything up. ``armed_with`` restarts it so that it kills itself at a
point of engine/store/crashpoints.py; ``converged`` lists what a crash left on disk.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.harness.cli import import_busybox
from tests.harness.daemon import DaemonProcess, wharfd_unavailable_reason

CRASH_ENV = "WHARFD_CRASH_AT"
SIGKILLED = 137  # the exit status a crash point gives the daemon (it SIGKILLs itself)


@contextlib.contextmanager
def own_wharfd(
    busybox_tar: Path | None = None, *, data_tmpfs_mb: int | None = None,
    extra_args: Sequence[str] = (),
) -> Iterator[DaemonProcess]:
    """A started wharfd of its own (skips the test where wharfd cannot run).

    ``data_tmpfs_mb``: the data root is a tmpfs of that size (cleanup unmounts it)."""
    reason = wharfd_unavailable_reason()
    if reason:
        pytest.skip(reason)
    daemon = DaemonProcess(extra_args=extra_args)
    try:
        if data_tmpfs_mb is not None:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={data_tmpfs_mb}m,mode=0700",
                            "tmpfs", str(daemon.data_root)], check=True)
        daemon.start()
        if busybox_tar is not None:
            import_busybox(daemon, busybox_tar)
        yield daemon
    finally:
        daemon.cleanup()
        if data_tmpfs_mb is not None:
            with contextlib.suppress(subprocess.CalledProcessError):
                subprocess.run(["umount", "-l", str(daemon.data_root)], check=True,
                               capture_output=True)


@contextlib.contextmanager
def armed_with(daemon: DaemonProcess, point: str, *, timeout: float = 30) -> Iterator[None]:
    """Restart ``daemon`` (SIGTERM, so live containers keep running) armed with ``point``;
    the body makes it reach the point. On leaving, the daemon must have died there; it is
    left stopped and unarmed, for the caller to look at what it left and start it again."""
    daemon.stop()
    daemon.extra_env[CRASH_ENV] = point
    try:
        daemon.start()
        yield
        assert daemon.proc is not None
        assert daemon.proc.wait(timeout) == SIGKILLED, f"{point} was not reached"
    finally:
        daemon.extra_env.pop(CRASH_ENV, None)


def converged(daemon: DaemonProcess) -> dict[str, Any]:
    """Whatever a crash may have left on disk (empty when the restart cleaned up)."""
    root = daemon.data_root
    left: dict[str, Any] = {}
    for sub in ("content/ingest", "tmp"):
        entries = sorted(os.listdir(root / sub))
        if entries:
            left[sub] = entries
    db = sqlite3.connect(f"file:{root / 'engine.db'}?mode=ro", uri=True)
    try:
        unnamed = db.execute(
            "SELECT key FROM snapshots WHERE key NOT IN (SELECT snapshot_key FROM layers) "
            "AND key NOT IN (SELECT id FROM containers)").fetchall()
        rows = db.execute("SELECT dir FROM snapshots").fetchall()
        referenced = {r[0] for r in db.execute("SELECT id FROM images")}
        referenced |= {r[0] for r in db.execute(
            "SELECT blob_digest FROM layers WHERE blob_digest IS NOT NULL")}
    finally:
        db.close()
    if unnamed:
        left["unnamed snapshots"] = [r[0] for r in unnamed]
    dirs = set(os.listdir(root / "snapshots"))
    if dirs != {r[0] for r in rows}:
        left["snapshot dirs"] = sorted(dirs ^ {r[0] for r in rows})
    blobs = {"sha256:" + b for b in os.listdir(root / "content/blobs/sha256")}
    if blobs - referenced:
        left["blobs"] = sorted(blobs - referenced)
    return left
