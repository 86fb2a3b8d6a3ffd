"""`docker system df` and docker-py df() (issue 3: images; issue 6: volumes)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.harness.cli import DockerCLI

pytestmark = pytest.mark.root


def test_system_df_cli(docker_cli: DockerCLI) -> None:
    docker_cli.ok("volume", "create", "dfvol")
    docker_cli.ok("run", "--name", "dfc", "-v", "dfvol:/data", "busybox", "sh", "-c",
                  "head -c 100000 /dev/zero > /data/f; head -c 5000 /dev/zero > /big")
    try:
        out = docker_cli.ok("system", "df")
        lines = {line.split()[0]: line for line in out.splitlines()[1:]}
        assert {"Images", "Containers", "Local", "Build"} <= set(lines)
        verbose = docker_cli.ok("system", "df", "-v")
        assert "dfvol" in verbose and "busybox" in verbose
    finally:
        docker_cli("rm", "-f", "dfc")
        docker_cli("volume", "rm", "dfvol")


def test_df_docker_py(dclient: Any) -> None:
    data = dclient.df()
    assert isinstance(data["LayersSize"], int) and data["LayersSize"] > 0
    busybox = [i for i in data["Images"] if any(t.startswith("busybox") for t in i["RepoTags"])]
    assert busybox and busybox[0]["Size"] > 1_000_000
    assert data["BuildCache"] == []
    assert isinstance(data["Volumes"], list) and isinstance(data["Containers"], list)
