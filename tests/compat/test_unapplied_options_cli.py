"""Issue 10 item 6: options that were accepted and silently ignored are refused in
dockerd's words (or applied), through the stock docker CLI.

dockerd answers the create-time refusals with 500 (plain errors), wharfd with 400: the
CLI shows the same line either way, so these tests hold ``--against-dockerd`` too.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.cli import DockerCLI
from tests.harness.daemon import BaseDaemon

pytestmark = pytest.mark.root


def describe(r: subprocess.CompletedProcess[Any]) -> str:
    return f"exit {r.returncode}\nstdout: {r.stdout!r}\nstderr: {r.stderr!r}"


def refused(cli: DockerCLI, *args: str) -> str:
    r = cli("run", "--rm", *args, "busybox", "true")
    assert r.returncode != 0, describe(r)
    return str(r.stderr)


def test_storage_opt_size_is_refused_without_xfs_project_quota(docker_cli: DockerCLI) -> None:
    """The data root is not xfs with pquota here: dockerd's overlay2 refuses the quota."""
    assert ("--storage-opt is supported only for overlay over xfs with 'pquota' mount "
            "option") in refused(docker_cli, "--storage-opt", "size=10M")
    assert "Unknown option foo" in refused(docker_cli, "--storage-opt", "foo=bar")


def test_gpu_requests_are_refused_without_a_device_driver(docker_cli: DockerCLI) -> None:
    assert 'could not select device driver "" with capabilities: [[gpu]]' in refused(
        docker_cli, "--gpus", "all")


def test_isolation_other_than_default_is_refused(docker_cli: DockerCLI) -> None:
    assert "Invalid isolation: \"hyperv\" - linux only supports 'default'" in refused(
        docker_cli, "--isolation", "hyperv")
    docker_cli.ok("run", "--rm", "--isolation", "default", "busybox", "true")


@pytest.fixture
def own_mount(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of the test's own, private to start with."""
    point = tmp_path / "m"
    point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "wharfd-test", str(point)], check=True)
    subprocess.run(["mount", "--make-private", str(point)], check=True)
    try:
        yield point
    finally:
        subprocess.run(["umount", "-R", "-l", str(point)], check=False)


def test_shared_and_slave_binds_need_a_shared_or_slave_source(docker_cli: DockerCLI,
                                                              own_mount: Path) -> None:
    (own_mount / "src").mkdir()
    src = own_mount / "src"
    assert (f"path {src} is mounted on {own_mount} but it is not a shared mount"
            in refused(docker_cli, "-v", f"{src}:/m:rshared"))
    assert (f"path {src} is mounted on {own_mount} but it is not a shared or slave mount"
            in refused(docker_cli, "-v", f"{src}:/m:rslave"))
    docker_cli.ok("run", "--rm", "-v", f"{src}:/m:rprivate", "busybox", "true")


def test_rshared_bind_propagates_a_containers_mount_to_the_host(docker_cli: DockerCLI,
                                                                 own_mount: Path) -> None:
    subprocess.run(["mount", "--make-shared", str(own_mount)], check=True)
    docker_cli.ok("run", "--rm", "--cap-add", "SYS_ADMIN", "--security-opt", "apparmor=unconfined",
                  "-v", f"{own_mount}:/m:rshared", "busybox",
                  "sh", "-c", "mkdir /m/sub && mount -t tmpfs inner /m/sub && touch /m/sub/x")
    assert (own_mount / "sub" / "x").exists(), "the container's mount did not reach the host"
    docker_cli.ok("run", "--rm", "-v", f"{own_mount}:/m:rslave", "busybox", "true")


def _block_device() -> tuple[str, str]:
    """A real block device of this host and its ``major:minor``."""
    for entry in sorted(Path("/sys/block").iterdir()):
        if entry.name.startswith(("loop", "ram", "zram")):
            continue
        dev = Path("/dev") / entry.name
        if dev.exists():
            return str(dev), (entry / "dev").read_text().strip()
    pytest.skip("no block device to throttle")


BLKIO = Path("/sys/fs/cgroup/blkio")


def test_device_throttles_reach_the_cgroup(docker_cli: DockerCLI) -> None:
    """``--device-read-bps`` and friends were stored and never applied."""
    if not (BLKIO / "blkio.throttle.read_bps_device").exists():
        pytest.skip("needs the cgroup v1 blkio throttle files (the check reads them)")
    dev, numbers = _block_device()
    out = docker_cli.ok(
        "run", "--rm", "--device-read-bps", f"{dev}:1mb", "--device-write-iops", f"{dev}:77",
        "busybox", "cat", "/sys/fs/cgroup/blkio/blkio.throttle.read_bps_device",
        "/sys/fs/cgroup/blkio/blkio.throttle.write_iops_device")
    assert out.split("\n")[:2] == [f"{numbers} 1048576", f"{numbers} 77"]
    assert "stat /dev/nonexistent: no such file or directory" in refused(
        docker_cli, "--device-read-bps", "/dev/nonexistent:1mb")


def test_weight_device_without_kernel_support_is_discarded_with_a_warning(
    docker_cli: DockerCLI,
) -> None:
    if (BLKIO / "blkio.weight_device").exists() or not BLKIO.exists():
        pytest.skip("this host's blkio cgroup takes weight_device (or is not v1)")
    dev, _ = _block_device()
    r = docker_cli("run", "--rm", "--blkio-weight-device", f"{dev}:300", "busybox", "true")
    assert r.returncode == 0, describe(r)
    assert ("Your kernel does not support Block I/O weight_device or the cgroup is not "
            "mounted. Weight-device discarded.") in r.stderr


def test_annotations_reach_the_runtime(docker_cli: DockerCLI, against_dockerd: bool) -> None:
    """wharfd-only (reads wharfd's bundle): HostConfig.Annotations (API 1.43) were stored
    and never handed to the runtime."""
    if against_dockerd:
        pytest.skip("reads wharfd's OCI bundle; dockerd keeps it in containerd's state")
    cid = docker_cli.ok("run", "-d", "--annotation", "org.example.k=v", "busybox",
                        "sleep", "60").strip()
    try:
        bundle = docker_cli.daemon.data_root / "containers" / cid / "config.json"
        assert json.loads(bundle.read_text())["annotations"]["org.example.k"] == "v"
    finally:
        docker_cli("rm", "-f", cid)


def test_windows_only_resources_through_the_api(daemon: BaseDaemon,
                                                against_dockerd: bool) -> None:
    """The CLI refuses these flags itself; through the API dockerd refuses the IO maxima
    (500 in 20.10, a 400 here) and drops CpuPercent with a warning."""
    import docker

    client = docker.APIClient(base_url=daemon.docker_host, version="1.41")
    try:
        def create(host_config: dict[str, Any]) -> Any:
            return client._post_json(client._url("/containers/create"), data={
                "Image": "busybox", "Cmd": ["true"], "HostConfig": host_config})

        for key, what in (("IOMaximumBandwidth", "maximum bandwidth"),
                          ("IOMaximumIOps", "maximum IOPs")):
            r = create({key: 10})
            assert r.status_code == (500 if against_dockerd else 400), r.text
            assert r.json()["message"] == (
                f"Invalid QoS settings: linux does not support configuration of {what}")
        r = create({"CpuPercent": 20})
        assert r.status_code == 201, r.text
        try:
            assert r.json()["Warnings"] == [
                "linux does not support CPU percent. Percent discarded."]
            assert client.inspect_container(r.json()["Id"])["HostConfig"]["CpuPercent"] == 0
        finally:
            client.remove_container(r.json()["Id"], force=True)
    finally:
        client.close()
