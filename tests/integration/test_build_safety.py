"""Issue 7 item 7, reliability rows B25, B29 and F7: ``POST /build`` with hostile contexts,
on the wire (hand-made tars through ``tests/harness/rawhttp``).

Build contexts never resolve outside themselves (``..`` entries, ``COPY ../``, a
``dockerfile`` parameter with ``..``, symlinks and hardlinks pointing out), bad input is an
error, a broken ``X-Registry-Config`` is ignored, and no error ever leaves a tagged image.
kill -9 of the daemon during a ``RUN`` leaves no tag and only removable leftovers.

Checked against the real dockerd 20.10 with ``pytest --against-dockerd``.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import subprocess
import tarfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness.busybox import MTIME
from tests.harness.cli import DockerCLI, docker_binary, import_busybox
from tests.harness.daemon import BaseDaemon

pytestmark = pytest.mark.root

P = "wbs" + secrets.token_hex(3)
TAR = {"Content-Type": "application/x-tar"}


@dataclass
class Entry:
    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    linkname: str = ""
    mode: int = 0o644


def make_tar(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = e.type
            info.mode = e.mode
            info.mtime = MTIME
            info.linkname = e.linkname
            if e.type == tarfile.REGTYPE:
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def dockerfile(text: str) -> Entry:
    return Entry("Dockerfile", text.encode())


@dataclass
class BuildResult:
    status: int
    messages: list[dict[str, Any]]
    body: str

    @property
    def error(self) -> str | None:
        """The error: an HTTP error's message, or the stream's errorDetail message."""
        if self.status >= 400:
            try:
                return str(json.loads(self.body)["message"])
            except (ValueError, KeyError, TypeError):
                return self.body or f"HTTP {self.status}"
        for m in self.messages:
            if "errorDetail" in m or "error" in m:
                return str((m.get("errorDetail") or {}).get("message") or m.get("error"))
        return None

    @property
    def stream(self) -> str:
        return "".join(str(m.get("stream", "")) for m in self.messages)

    @property
    def image_id(self) -> str | None:
        for m in self.messages:
            aux = m.get("aux")
            if isinstance(aux, dict) and "ID" in aux:
                return str(aux["ID"])
        return None


def post_build(daemon: BaseDaemon, body: bytes, headers: dict[str, str] | None = None,
               timeout: float = 120, **params: str) -> BuildResult:
    query = urllib.parse.urlencode(params)
    r = daemon.api("POST", f"/build?{query}", body, timeout=timeout,
                   headers={**TAR, **(headers or {})})
    messages = []
    if r.status < 400:
        for line in r.body.splitlines():
            if line.strip():
                messages.append(json.loads(line))
    return BuildResult(r.status, messages, r.text)


def repo_tags(daemon: BaseDaemon) -> set[str]:
    return {t for img in daemon.api_json("GET", "/images/json?all=1") or []
            for t in (img.get("RepoTags") or []) if t != "<none>:<none>"}


def image_ids(daemon: BaseDaemon) -> set[str]:
    return {img["Id"] for img in daemon.api_json("GET", "/images/json?all=1") or []}


@pytest.fixture
def tracked(daemon: BaseDaemon) -> Any:
    """Checks that a test leaves no new tag; removes the images it built."""
    tags_before, ids_before = repo_tags(daemon), image_ids(daemon)
    yield
    new_ids = image_ids(daemon) - ids_before
    for iid in new_ids:
        daemon.api("DELETE", f"/images/{iid}?force=1")
    assert repo_tags(daemon) <= tags_before


def run_in(daemon: BaseDaemon, image: str, *cmd: str) -> str:
    return DockerCLI(daemon).ok("run", "--rm", "--entrypoint", cmd[0], image, *cmd[1:])


def find_named(root: Path, name: str, depth: int = 12) -> list[Path]:
    found = []
    base = len(root.parts)
    for dirpath, dirs, files in os.walk(root):
        if len(Path(dirpath).parts) - base >= depth:
            dirs[:] = []
        if name in files:
            found.append(Path(dirpath) / name)
    return found


# ====================================================================== B25: paths
def test_dotdot_entry_stays_inside(daemon: BaseDaemon, tracked: None) -> None:
    name = f"relx-escape-{secrets.token_hex(4)}.txt"
    tag = f"{P}-dotdot"
    body = make_tar([dockerfile("FROM busybox\nCOPY . /ctx\n"),
                     Entry(f"../{name}", b"escaped?\n"), Entry(f"a/../../../{name}2", b"2\n")])
    res = post_build(daemon, body, t=tag)
    # never outside the context: not next to the daemon's files, not in /tmp, not in /
    outside = [p for p in find_named(daemon.tmp, name) if p.parent.name != "ctx"]
    assert outside == [], outside
    assert not Path("/tmp", name).exists() and not Path("/", name).exists()
    assert not Path("/tmp", name + "2").exists() and not Path("/", name + "2").exists()
    if res.error is None:
        # clamped into the context (what dockerd does)
        assert run_in(daemon, tag, "cat", f"/ctx/{name}") == "escaped?\n"
        daemon.api("DELETE", f"/images/{tag}?force=1")
    else:
        assert tag + ":latest" not in repo_tags(daemon)


@pytest.mark.parametrize(("dockerfile_text", "message"), [
    ("FROM busybox\nCOPY ../../../../etc/hostname /x\n",
     "forbidden path outside the build context: ../../../../etc/hostname"),
    ("FROM busybox\nADD ../../../../etc/hostname /x\n",
     "forbidden path outside the build context: ../../../../etc/hostname"),
    ("FROM busybox\nCOPY /../../etc/os-release /x\n",
     "forbidden path outside the build context: ../../etc/os-release"),
])
def test_copy_outside_context(daemon: BaseDaemon, tracked: None, dockerfile_text: str,
                              message: str) -> None:
    tag = f"{P}-outside"
    res = post_build(daemon, make_tar([dockerfile(dockerfile_text)]), t=tag)
    assert res.error is not None and message in res.error, (res.status, res.body)
    assert tag + ":latest" not in repo_tags(daemon)


def test_dockerfile_param_outside_context(daemon: BaseDaemon, tracked: None) -> None:
    tag = f"{P}-dfout"
    body = make_tar([dockerfile("FROM busybox\n")])
    res = post_build(daemon, body, t=tag, dockerfile="../../etc/passwd")
    assert res.error is not None, (res.status, res.body)
    assert "root:x:0:0" not in res.body and "root:x:0:0" not in res.stream
    assert tag + ":latest" not in repo_tags(daemon)


def test_symlink_out_of_context_not_followed(daemon: BaseDaemon, tracked: None) -> None:
    tag = f"{P}-symlink"
    body = make_tar([dockerfile("FROM busybox\nCOPY link/ /x/\nCOPY abs /y\n"),
                     Entry("link", type=tarfile.SYMTYPE, linkname="/etc"),
                     Entry("abs", type=tarfile.SYMTYPE, linkname="/etc/os-release")])
    res = post_build(daemon, body, t=tag)
    host_etc = {p.name for p in Path("/etc").iterdir()}
    if res.error is not None:
        assert "not found in build context" in res.error, res.error
        assert tag + ":latest" not in repo_tags(daemon)
    else:
        # resolved inside the context (which has no etc/): nothing of the host's /etc
        listing = run_in(daemon, tag, "ls", "-a", "/x/").split()
        assert not {"os-release", "hostname", "shadow"} & set(listing) & host_etc, listing
        daemon.api("DELETE", f"/images/{tag}?force=1")


def test_hardlink_out_of_context(daemon: BaseDaemon, tracked: None) -> None:
    tag = f"{P}-hardlink"
    body = make_tar([dockerfile("FROM busybox\nCOPY hl /hl\n"),
                     Entry("hl", type=tarfile.LNKTYPE, linkname="/etc/shadow")])
    res = post_build(daemon, body, t=tag)
    assert res.error is not None, (res.status, res.body)
    assert "root:" not in res.error
    assert tag + ":latest" not in repo_tags(daemon)


# ====================================================================== B25: bad input
def test_parse_error_is_400(daemon: BaseDaemon, tracked: None) -> None:
    res = post_build(daemon, make_tar([dockerfile("FROMM busybox\n")]), t=f"{P}-fromm")
    assert res.status == 400, (res.status, res.body)
    assert res.error == "dockerfile parse error line 1: unknown instruction: FROMM"


def test_no_dockerfile(daemon: BaseDaemon, tracked: None) -> None:
    res = post_build(daemon, make_tar([Entry("other.txt", b"x")]), t=f"{P}-nodf")
    assert res.error is not None and "Cannot locate specified Dockerfile: Dockerfile" in (
        res.error), (res.status, res.body)
    assert res.status >= 400


def test_bad_tag(daemon: BaseDaemon, tracked: None, against_dockerd: bool) -> None:
    res = post_build(daemon, make_tar([dockerfile("FROM busybox\nRUN true\n")]), t="UPPER:x")
    # B25 asks for 400; dockerd 20.10 answers 500
    assert res.status == 400 or (against_dockerd and res.status == 500), (res.status, res.body)
    assert res.error is not None and "invalid reference format" in res.error
    assert not any(t.startswith("UPPER") for t in repo_tags(daemon))


@pytest.mark.parametrize("body", [
    b"this is not a tar archive at all" * 40,
    b"\x1f\x8b\x08\x00garbage-after-a-gzip-magic" * 20,
    make_tar([dockerfile("FROM busybox\n" + "# pad\n" * 200)])[:1100],
], ids=["text", "gzip-magic", "truncated"])
def test_garbage_body(daemon: BaseDaemon, tracked: None, body: bytes) -> None:
    tag = f"{P}-garbage"
    res = post_build(daemon, body, t=tag)
    assert res.error is not None, (res.status, res.body)
    assert tag + ":latest" not in repo_tags(daemon)
    assert rawping(daemon)


def rawping(daemon: BaseDaemon) -> bool:
    return daemon.api("GET", "/_ping").status == 200


# ====================================================================== B29
def test_bad_registry_config_header_ignored(daemon: BaseDaemon, tracked: None) -> None:
    tag = f"{P}-regcfg"
    res = post_build(daemon, make_tar([dockerfile("FROM busybox\nRUN echo ok\n")]), t=tag,
                     headers={"X-Registry-Config": "!!!notbase64"})
    assert res.error is None, (res.status, res.body)
    assert "!!!notbase64" not in res.body
    assert f"Successfully tagged {tag}:latest" in res.stream
    assert daemon.api("DELETE", f"/images/{tag}").status == 200


def test_context_compressions(daemon: BaseDaemon, tracked: None) -> None:
    import bz2
    import gzip
    import lzma

    raw = make_tar([dockerfile("FROM busybox\nCOPY f /f\n"), Entry("f", b"compressed\n")])
    for name, body in [("gz", gzip.compress(raw)), ("bz2", bz2.compress(raw)),
                       ("xz", lzma.compress(raw))]:
        tag = f"{P}-{name}"
        res = post_build(daemon, body, t=tag)
        assert res.error is None, (name, res.status, res.body)
        assert run_in(daemon, tag, "cat", "/f") == "compressed\n"
        daemon.api("DELETE", f"/images/{tag}")


# ====================================================================== F7
@pytest.mark.slow
def test_kill9_during_run(fresh_daemon: BaseDaemon, busybox_tar: Path, tmp_path: Path,
                          against_dockerd: bool) -> None:
    d = fresh_daemon
    import_busybox(d, busybox_tar)
    busybox_id = DockerCLI(d).ok("image", "inspect", "--format", "{{.Id}}", "busybox").strip()
    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN echo started; sleep 30\n")
    tag = f"{P}-killed"
    proc = subprocess.Popen(
        [docker_binary(), "build", "-t", tag, str(tmp_path)], env={**d.env, "DOCKER_BUILDKIT": "0"},
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not d.api_json("GET", "/containers/json"):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the RUN container never ran"
            time.sleep(0.1)
        d.kill9()
        proc.communicate(timeout=30)
        assert proc.returncode != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if against_dockerd:
        # 20.10 does not start while the managed containerd of the killed one still runs
        # (F9): stop what that instance left (its netns' processes, by PID)
        d.kill_leftovers()
    d.start()
    cli = DockerCLI(d)
    assert tag + ":latest" not in repo_tags(d)
    assert repo_tags(d) == {"busybox:latest"}
    for c in d.containers(all=True):
        r = cli("rm", "-f", c["Id"])
        assert r.returncode == 0, r.stderr
    assert d.containers(all=True) == []
    for iid in image_ids(d) - {busybox_id}:
        r = cli("rmi", "-f", iid)
        assert r.returncode == 0, r.stderr
    assert image_ids(d) == {busybox_id}
    # and the daemon still builds
    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN echo again > /again\n")
    out = cli.ok("build", "-q", str(tmp_path), env={"DOCKER_BUILDKIT": "0"}, timeout=60)
    assert run_in(d, out.strip(), "cat", "/again") == "again\n"


# ====================================================================== issue 10 (probe)
@pytest.mark.slow
def test_client_killed_during_run(daemon: BaseDaemon, tracked: None, tmp_path: Path) -> None:
    """A build whose client is killed in the middle of a RUN is cancelled, as dockerd
    cancels it: the RUN's container stops and nothing is tagged."""
    d = daemon
    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN echo started; sleep 5\n")
    tag = f"{P}-abandoned"
    before = {c["Id"] for c in d.containers(all=True)}

    def build_containers(running_only: bool) -> list[str]:
        return [c["Id"] for c in d.containers(all=not running_only) if c["Id"] not in before]

    proc = subprocess.Popen(
        [docker_binary(), "build", "-t", tag, str(tmp_path)],
        env={**d.env, "DOCKER_BUILDKIT": "0"},
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not build_containers(running_only=True):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the RUN container never ran"
            time.sleep(0.1)
        started = time.monotonic()
        proc.kill()
        proc.wait()
        while build_containers(running_only=True) and time.monotonic() < started + 3:
            time.sleep(0.1)
        assert build_containers(running_only=True) == [], "the RUN went on without its client"
        # Long enough for the RUN to have ended and its image to be tagged, had it gone on.
        time.sleep(max(0.0, started + 6 - time.monotonic()))
        assert tag + ":latest" not in repo_tags(d)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for cid in build_containers(running_only=False):
            d.api("DELETE", f"/containers/{cid}?force=1")
