"""The crash tests' daemon: a wharfd of each test's own with busybox, since they kill it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.crash import own_wharfd
from tests.harness.daemon import DaemonProcess


@pytest.fixture
def wharfd(busybox_tar: Path) -> Iterator[DaemonProcess]:
    with own_wharfd(busybox_tar) as daemon:
        yield daemon
