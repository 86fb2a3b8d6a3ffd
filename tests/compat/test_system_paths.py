"""``HostConfig.MaskedPaths`` and ``ReadonlyPaths`` as dockerd stores them at create: the
default lists for a plain container, null for a privileged one, what was given otherwise
(``--security-opt systempaths=unconfined`` is the docker CLI sending empty lists); and
the stored lists are the ones the container really has masked and read-only.

Checked against dockerd 20.10 with ``--against-dockerd`` (its masked list lacks the later
``/proc/interrupts`` and ``thermal_throttle`` entries, so only the paths every dockerd
masks are compared by name).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness.cli import DockerCLI
from tests.harness.daemon import BaseDaemon

docker = pytest.importorskip("docker")

pytestmark = pytest.mark.root

MASKED_BY_EVERY_DOCKERD = {
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/sched_debug", "/proc/scsi", "/proc/timer_list", "/proc/timer_stats",
    "/sys/firmware",
}
READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


@pytest.fixture
def made(dclient: Any) -> Iterator[list[str]]:
    """Ids of the containers a test made, force-removed afterwards."""
    ids: list[str] = []
    yield ids
    for cid in ids:
        try:
            dclient.api.remove_container(cid, force=True)
        except docker.errors.NotFound:
            pass


def _paths(dclient: Any, cid: str) -> tuple[Any, Any]:
    host_config = dclient.api.inspect_container(cid)["HostConfig"]
    return host_config["MaskedPaths"], host_config["ReadonlyPaths"]


def test_defaults_are_stored_at_create(dclient: Any, made: list[str]) -> None:
    made.append(dclient.containers.create("busybox", ["true"]).id)
    masked, readonly = _paths(dclient, made[-1])
    assert isinstance(masked, list) and MASKED_BY_EVERY_DOCKERD <= set(masked), masked
    assert readonly == READONLY


def test_privileged_given_and_unconfined(daemon: BaseDaemon, dclient: Any,
                                         docker_cli: DockerCLI, made: list[str]) -> None:
    made.append(dclient.containers.create("busybox", ["true"], privileged=True).id)
    assert _paths(dclient, made[-1]) == (None, None)
    made.append(docker_cli.ok("create", "--security-opt", "systempaths=unconfined",
                              "busybox", "true").strip())
    assert _paths(dclient, made[-1]) == ([], [])
    made.append(daemon.api_json("POST", "/containers/create", {
        "Image": "busybox", "Cmd": ["true"],
        "HostConfig": {"MaskedPaths": ["/proc/kcore"], "ReadonlyPaths": None}})["Id"])
    masked, readonly = _paths(dclient, made[-1])
    assert masked == ["/proc/kcore"] and readonly == READONLY


def test_stored_lists_are_the_applied_ones(daemon: BaseDaemon, dclient: Any,
                                           made: list[str], against_dockerd: bool) -> None:
    container = dclient.containers.run("busybox", ["sleep", "600"], detach=True)
    made.append(container.id)
    masked, readonly = _paths(dclient, container.id)
    listed = " ".join(masked + readonly)
    code, out = container.exec_run(
        ["sh", "-c", f"for p in {listed}; do [ -e $p ] && echo $p; done; true"])
    assert code == 0
    present = out.decode().split()
    _, mountinfo = container.exec_run(["cat", "/proc/self/mountinfo"])
    mount_points = {line.split()[4] for line in mountinfo.decode().splitlines()}
    assert present and set(present) <= mount_points, set(present) - mount_points
    if not against_dockerd:  # wharfd's bundle: the spec holds exactly the stored lists
        bundle = daemon.data_root / "containers" / container.id / "config.json"
        linux = json.loads(bundle.read_text())["linux"]
        assert (linux["maskedPaths"], linux["readonlyPaths"]) == (masked, readonly)
