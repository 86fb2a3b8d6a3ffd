"""``docker import <url>`` (``POST /images/create?fromSrc=<url>``): the tarball comes from
a local HTTP server on 127.0.0.1 in the daemon's netns. Runs with ``--against-dockerd``."""

from __future__ import annotations

import gzip
import shutil
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from tests.compat.test_build_remote_and_cachefrom import file_server  # noqa: F401 (fixture)
from tests.harness.cli import DockerCLI
from tests.harness.daemon import BaseDaemon

pytestmark = pytest.mark.root


@pytest.fixture
def www(tmp_path: Path, busybox_tar: Path, file_server: str) -> Path:  # noqa: F811
    """The file server's directory, with busybox's rootfs plain and gzipped."""
    root = tmp_path / "www"
    shutil.copyfile(busybox_tar, root / "rootfs.tar")
    (root / "rootfs.tar.gz").write_bytes(gzip.compress(busybox_tar.read_bytes()))
    return root


def test_cli_imports_from_a_url(docker_cli: DockerCLI, www: Path, file_server: str) -> None:  # noqa: F811
    try:
        out = docker_cli.ok("import", "--change", "CMD [\"echo\", \"from-url\"]",
                            f"{file_server}/rootfs.tar.gz", "fromurl:1")
        assert "sha256:" in out
        assert docker_cli.ok("run", "--rm", "fromurl:1") == "from-url\n"
        comment = docker_cli.ok("image", "inspect", "-f", "{{.Comment}}", "fromurl:1")
        assert comment.strip() == "Imported from " + f"{file_server}/rootfs.tar.gz"
    finally:
        docker_cli("rmi", "fromurl:1")


def test_a_source_without_scheme_is_http(daemon: BaseDaemon, www: Path, file_server: str) -> None:  # noqa: F811
    source = file_server.removeprefix("http://") + "/rootfs.tar"
    query = urllib.parse.urlencode({"fromSrc": source, "repo": "noscheme", "tag": "1"})
    r = daemon.api("POST", f"/images/create?{query}")
    try:
        assert r.status == 200, r.text
        lines = [line for line in r.text.splitlines() if line.strip()]
        assert f"Downloading from http://{source}" in lines[0]
        assert '"status":"sha256:' in lines[-1].replace(" ", "")
        assert daemon.api("GET", "/images/noscheme:1/json").status == 200
    finally:
        daemon.api("DELETE", "/images/noscheme:1")


def test_missing_file_is_a_plain_404(daemon: BaseDaemon, www: Path, file_server: str) -> None:  # noqa: F811
    url = f"{file_server}/nothing-here.tar"
    r = daemon.api("POST", "/images/create?" + urllib.parse.urlencode({"fromSrc": url}))
    assert r.status == 404, r.text
    assert r.json()["message"].startswith(f"failed to GET {url} with status 404")


def test_docker_py_import_from_url(dclient: Any, www: Path, file_server: str) -> None:  # noqa: F811
    dclient.api.import_image_from_url(f"{file_server}/rootfs.tar", repository="pyurl",
                                      tag="1")
    try:
        image = dclient.images.get("pyurl:1")
        assert image.attrs["Os"] == "linux"
    finally:
        dclient.images.remove("pyurl:1")
