"""``registry-mirrors`` (issue 16 item 3): pulls of Docker Hub names go to the mirrors
first, in order, and ``docker info`` lists them.

Everything stays inside the daemon's network namespace; the Hub is never asked. The
mirror is Debian's ``docker-registry`` configured as a pull-through cache, and what it
caches is another local registry (the "upstream") into which the test pushed the image
first: a pull of ``busybox:mirrored`` (docker.io/library/busybox) must come from the
second mirror, the first one being down (nothing listens on its port). The mirror
holds the image, so the daemon never falls back to the Hub.

Written against Docker's behaviour: ``--against-dockerd`` runs it on dockerd 20.10 too;
the log line that names the mirror that served is wharfd's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.cli import DockerCLI, import_busybox
from tests.harness.daemon import (
    BaseDaemon,
    DaemonProcess,
    DockerdReference,
    dockerd_unavailable_reason,
    wharfd_unavailable_reason,
)
from tests.harness.registry import LocalRegistry, registry_unavailable_reason

pytestmark = pytest.mark.root

DOWN_MIRROR = "http://127.0.0.1:5009/"  # nothing listens there
MIRROR = "http://127.0.0.1:5001"  # given without the slash: dockerd adds it
UPSTREAM = "127.0.0.1:5002"
TAG = "mirrored"


@pytest.fixture(scope="module")
def daemon(pytestconfig: pytest.Config, busybox_tar: Path) -> Iterator[BaseDaemon]:
    reason = registry_unavailable_reason()
    if reason:
        pytest.skip(reason)
    args = ["--registry-mirror", DOWN_MIRROR, "--registry-mirror", MIRROR]
    cls: type[BaseDaemon]
    if pytestconfig.getoption("against_dockerd"):
        cls, reason = DockerdReference, dockerd_unavailable_reason()
    else:
        cls, reason = DaemonProcess, wharfd_unavailable_reason()
    if reason:
        pytest.skip(reason)
    d = cls(args)
    try:
        d.start()
        import_busybox(d, busybox_tar)
        yield d
    finally:
        d.cleanup()


@pytest.fixture(scope="module")
def registries(daemon: BaseDaemon) -> Iterator[tuple[LocalRegistry, LocalRegistry]]:
    """(upstream holding library/busybox:mirrored, the pull-through mirror of it)."""
    upstream = LocalRegistry(daemon.netns, 5002)
    mirror = LocalRegistry(daemon.netns, 5001, proxy_remote=f"http://{UPSTREAM}")
    with upstream, mirror:
        cli = DockerCLI(daemon)
        pushed = f"{UPSTREAM}/library/busybox:{TAG}"
        cli.ok("tag", "busybox", pushed)
        cli.ok("push", pushed)
        cli.ok("rmi", pushed, "busybox")  # gone: the pull must download every blob
        yield upstream, mirror


def test_info_lists_the_mirrors_normalised(daemon: BaseDaemon) -> None:
    info = daemon.api_json("GET", "/info")
    mirrors = [DOWN_MIRROR, MIRROR + "/"]
    assert info["RegistryConfig"]["Mirrors"] == mirrors
    assert info["RegistryConfig"]["IndexConfigs"]["docker.io"]["Mirrors"] == mirrors
    text = DockerCLI(daemon).ok("info")
    lines = text.splitlines()
    start = lines.index(" Registry Mirrors:")
    assert [line.strip() for line in lines[start + 1:start + 3]] == mirrors


def test_hub_pull_is_served_by_the_second_mirror(
    daemon: BaseDaemon, registries: tuple[LocalRegistry, LocalRegistry]
) -> None:
    upstream, mirror = registries
    cli = DockerCLI(daemon)
    offset = daemon.log_size()
    cli.ok("pull", f"busybox:{TAG}")
    image = json.loads(cli.ok("image", "inspect", f"busybox:{TAG}"))[0]
    assert image["RepoTags"] == [f"busybox:{TAG}"]
    assert mirror.requests("GET", "/v2/library/busybox/blobs/sha256:") >= 2  # config, layer
    assert image["RepoDigests"][0].startswith("busybox@sha256:")
    # the mirror was asked (dockerd asks with HEAD, then GETs by digest), and fetched
    # from its upstream (a real pull-through cache)
    manifest = f"/v2/library/busybox/manifests/{TAG}"
    assert mirror.requests("GET", manifest) + mirror.requests("HEAD", manifest) >= 1
    assert upstream.requests("GET", manifest) + upstream.requests("HEAD", manifest) >= 1
    assert "library/busybox" in mirror.repositories()
    # the pulled image runs
    assert cli.ok("run", "--rm", f"busybox:{TAG}", "echo", "from-mirror").strip() == \
        "from-mirror"
    if isinstance(daemon, DaemonProcess):
        log = daemon.log_text(offset)
        assert f"pull busybox:{TAG}: mirror {DOWN_MIRROR.rstrip('/')} is unreachable" in log
        assert f"pull busybox:{TAG}: served by {MIRROR} (mirror)" in log


def test_other_registries_never_use_the_mirrors(
    daemon: BaseDaemon, registries: tuple[LocalRegistry, LocalRegistry]
) -> None:
    upstream, mirror = registries
    cli = DockerCLI(daemon)
    before = mirror.requests("GET", "/v2/")
    asked = upstream.requests("GET", "/v2/")
    cli.ok("pull", f"{UPSTREAM}/library/busybox:{TAG}")
    assert mirror.requests("GET", "/v2/") == before
    assert upstream.requests("GET", "/v2/") > asked
    cli.ok("rmi", f"{UPSTREAM}/library/busybox:{TAG}")
