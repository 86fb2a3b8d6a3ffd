"""Network namespaces made by engine.networks.netns: lo up, pinned, removable."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from engine.networks import netns

pytestmark = pytest.mark.root


@pytest.fixture
def ns_path(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    return tmp_path / "ns1"


def test_create_has_loopback_up_and_delete_cleans(ns_path: Path) -> None:
    own = os.readlink("/proc/self/ns/net")
    netns.create(ns_path)
    try:
        assert os.readlink("/proc/self/ns/net") == own  # the daemon's namespace is untouched
        out = subprocess.run(
            ["nsenter", f"--net={ns_path}", "ip", "-o", "link", "show", "lo"],
            capture_output=True, text=True, check=True,
        ).stdout
        assert "UP" in out
        links = subprocess.run(
            ["nsenter", f"--net={ns_path}", "ip", "-o", "link"],
            capture_output=True, text=True, check=True,
        ).stdout.splitlines()
        assert len(links) == 1
    finally:
        netns.delete(ns_path)
    assert not ns_path.exists()
    assert str(ns_path) not in Path("/proc/self/mountinfo").read_text()
    netns.delete(ns_path)  # idempotent
