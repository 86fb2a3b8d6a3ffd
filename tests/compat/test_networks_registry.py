"""Issue 5, the seed's private registry: Debian's ``docker-registry`` in a container of
an imported image, published on port 5000, and the daemon pushing to and pulling from
it through that port (127.0.0.1:5000 inside the daemon's network namespace).

Run with ``--against-dockerd`` to check the scenario on dockerd 20.10 (with its own
default bridge, in its own netns).
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from tests.harness.cli import DockerCLI
from tests.harness.daemon import BaseDaemon, BridgedDockerd
from tests.harness.registry import REGISTRY_BINARY, registry_unavailable_reason

pytestmark = pytest.mark.root

P = "wr" + secrets.token_hex(3)

REFERENCE_DOCKERD = BridgedDockerd

# No auth (Debian's own config asks for an htpasswd file it does not ship), storage on
# the image's volume, every address of the container.
REGISTRY_CONFIG = b"""\
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: /var/lib/registry
  delete:
    enabled: true
http:
  addr: :5000
  headers:
    X-Content-Type-Options: [nosniff]
"""

_LDD_PATH = re.compile(r"(/\S+)")


def shared_libraries(binary: str) -> list[str]:
    """The absolute paths ``ldd`` names (the loader included; none for a static one)."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    paths = []
    for line in out.splitlines():
        if "=>" in line:
            line = line.split("=>", 1)[1]
        match = _LDD_PATH.search(line)
        if match:
            paths.append(match.group(1))
    return paths


def _add_file(tar: tarfile.TarFile, source: str, name: str, mode: int) -> None:
    """``source`` (symlinks followed) as a regular file at ``name`` in the image."""
    data = Path(source).read_bytes()
    info = tarfile.TarInfo(name.lstrip("/"))
    info.size, info.mode, info.mtime = len(data), mode, int(time.time())
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name.lstrip("/"))
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, int(time.time())
    tar.addfile(info)


def registry_rootfs() -> bytes:
    """A rootfs tar: the registry binary, its libraries and loader, a config, /tmp."""
    libraries = shared_libraries(REGISTRY_BINARY)
    files = [(REGISTRY_BINARY, 0o755), *((lib, 0o755) for lib in libraries)]
    dirs = {"/etc", "/etc/docker", "/etc/docker/registry", "/var", "/var/lib",
            "/var/lib/registry"}
    for path, _ in files:
        parent = os.path.dirname(path)
        while parent not in ("/", ""):
            dirs.add(parent)
            parent = os.path.dirname(parent)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for directory in sorted(dirs):
            _add_dir(tar, directory)
        _add_dir(tar, "/tmp", 0o1777)
        for path, mode in files:
            _add_file(tar, path, path, mode)
        info = tarfile.TarInfo("etc/docker/registry/config.yml")
        info.size, info.mode = len(REGISTRY_CONFIG), 0o644
        tar.addfile(info, io.BytesIO(REGISTRY_CONFIG))
    return buf.getvalue()


def wait_for_registry(daemon: BaseDaemon, timeout: float = 20.0) -> None:
    """Until GET /v2/ answers through the published port, from the daemon's netns."""
    deadline = time.monotonic() + timeout
    while True:
        r = daemon.netns.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m",
                              "2", "http://127.0.0.1:5000/v2/"])
        if r.stdout.strip() == "200":
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"registry not answering on 127.0.0.1:5000: {r!r}")
        time.sleep(0.1)


def test_registry_in_a_container(docker_cli: DockerCLI, daemon: BaseDaemon) -> None:
    reason = registry_unavailable_reason()
    if reason:
        pytest.skip(reason)
    cli, image, name, remote = docker_cli, f"{P}-registry:1", f"{P}-registry", \
        "127.0.0.1:5000/test"
    try:
        cli.ok("import", "-c", f'ENTRYPOINT ["{REGISTRY_BINARY}"]',
               "-c", 'CMD ["serve", "/etc/docker/registry/config.yml"]',
               "-c", "EXPOSE 5000", "-c", 'VOLUME ["/var/lib/registry"]',
               "-", image, input=registry_rootfs(), timeout=120)
        cli.ok("run", "-d", "-p", "5000:5000", "--restart=always", "--name", name, image)
        info = json.loads(cli.ok("inspect", name))[0]
        assert info["HostConfig"]["RestartPolicy"]["Name"] == "always"
        assert info["NetworkSettings"]["Ports"]["5000/tcp"][0] == {
            "HostIp": "0.0.0.0", "HostPort": "5000"}, info["NetworkSettings"]["Ports"]
        wait_for_registry(daemon)
        busybox_id = cli.ok("image", "inspect", "-f", "{{.Id}}", "busybox").strip()
        cli.ok("tag", "busybox", remote)
        cli.ok("push", remote, timeout=120)
        cli.ok("rmi", remote)
        assert cli("image", "inspect", remote).returncode != 0
        cli.ok("pull", remote, timeout=120)
        assert cli.ok("image", "inspect", "-f", "{{.Id}}", remote).strip() == busybox_id
        # what came back runs
        assert cli.ok("run", "--rm", remote, "echo", "pulled").strip() == "pulled"
        # the registry stored it (seen from inside its container's volume)
        listing = cli.ok("run", "--rm", "--volumes-from", name, "busybox", "ls",
                         "/var/lib/registry/docker/registry/v2/repositories")
        assert listing.split() == ["test"], listing
        # restart=always: when it dies (not stopped by the user) it comes back and serves
        pid = int(cli.ok("inspect", "-f", "{{.State.Pid}}", name))
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while cli.ok("inspect", "-f", "{{.State.Pid}}", name).strip() in ("0", str(pid)):
            assert time.monotonic() < deadline, "registry was not restarted"
            time.sleep(0.1)
        assert int(cli.ok("inspect", "-f", "{{.RestartCount}}", name)) == 1
        wait_for_registry(daemon)
    finally:
        cli("rm", "-f", name)
        cli("rmi", remote)
        cli("rmi", image)
