"""The stock clients, aimed at one daemon: the docker CLI (28, first on PATH; the 20.10
client at /usr/bin/docker on request) and docker-py."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import docker


class HasDockerEnv(Protocol):
    @property
    def env(self) -> dict[str, str]: ...

    @property
    def docker_host(self) -> str: ...


def docker_binary() -> str:
    """The docker CLI under test: $WHARFD_TEST_DOCKER, else the first ``docker`` on PATH."""
    env = os.environ.get("WHARFD_TEST_DOCKER")
    if env:
        return env
    found = shutil.which("docker")
    if not found:
        raise FileNotFoundError("docker CLI not found on PATH")
    return found


def legacy_docker_binary() -> str | None:
    """Debian's 20.10 client (docker.io), when installed and distinct from the main CLI."""
    p = Path("/usr/bin/docker")
    if p.exists() and str(p.resolve()) != str(Path(docker_binary()).resolve()):
        return str(p)
    return None


def run_docker(
    daemon: HasDockerEnv,
    *args: str,
    input: str | bytes | None = None,
    timeout: float = 60,
    check: bool = False,
    binary: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[Any]:
    """Run the docker CLI against ``daemon``. Text mode unless ``input`` is bytes."""
    e = daemon.env
    if env:
        e.update(env)
    text = not isinstance(input, bytes)
    return subprocess.run(
        [binary or docker_binary(), *args],
        input=input,
        capture_output=True,
        text=text,
        timeout=timeout,
        check=check,
        env=e,
        stdin=None if input is not None else subprocess.DEVNULL,
    )


def popen_docker(daemon: HasDockerEnv, *args: str, **kwargs: Any) -> subprocess.Popen[Any]:
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([docker_binary(), *args], env=daemon.env, **kwargs)


def docker_py_client(daemon: HasDockerEnv, timeout: int = 60) -> docker.DockerClient:
    import docker

    return docker.DockerClient(base_url=daemon.docker_host, timeout=timeout)


class DockerCLI:
    """``docker_cli("run", "--rm", "busybox", "true")`` bound to one daemon."""

    def __init__(self, daemon: HasDockerEnv) -> None:
        self.daemon = daemon

    def __call__(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        return run_docker(self.daemon, *args, **kwargs)

    def ok(self, *args: str, **kwargs: Any) -> str:
        """Run, assert exit 0, return stdout."""
        r = run_docker(self.daemon, *args, **kwargs)
        assert r.returncode == 0, (
            f"docker {' '.join(args)} exited {r.returncode}\nstdout: {r.stdout!r}\n"
            f"stderr: {r.stderr!r}"
        )
        return str(r.stdout) if not isinstance(r.stdout, bytes) else r.stdout.decode()

    def popen(self, *args: str, **kwargs: Any) -> subprocess.Popen[Any]:
        return popen_docker(self.daemon, *args, **kwargs)

    def remove(self, containers: Sequence[str] = (), networks: Sequence[str] = ()) -> None:
        """Best-effort teardown: force-remove the containers, then the networks."""
        if containers:
            self("rm", "-f", *containers)
        for net in networks:
            self("network", "rm", net)


def import_busybox(daemon: HasDockerEnv, tar_path: Path, ref: str = "busybox:latest") -> str:
    """``docker import -c 'CMD ["sh"]' - <ref>`` with the busybox rootfs tar on stdin."""
    r = run_docker(
        daemon, "import", "-c", 'CMD ["sh"]', "-", ref, input=tar_path.read_bytes(), timeout=120
    )
    if r.returncode != 0:
        raise RuntimeError(
            f"docker import failed ({r.returncode}): {r.stderr.decode(errors='replace')}"
        )
    return str(r.stdout.decode().strip())
