"""Issue 11: ``docker compose build`` on Compose v2's default path, BuildKit over ``/grpc``
(the docker driver: wharfd's Control/LLBBridge services, the context through the session).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.builder.buildkit.grpcwire import Code, GrpcError
from engine.builder.buildkit.proto import wire_pb2 as pb
from tests.harness import buildkit
from tests.harness.cli import DockerCLI
from tests.harness.compose import Compose, compose_v2_unavailable_reason
from tests.harness.daemon import BaseDaemon
from tests.harness.registry import LocalRegistry, registry_unavailable_reason

pytestmark = pytest.mark.root

DOCKER_DRIVER = 'building with "default" instance using docker driver'

DOCKERFILE = """\
FROM busybox AS base
ARG GREETING=unset
RUN echo "$GREETING from buildkit" > /greeting && echo to-stdout && echo to-stderr >&2
FROM base
COPY data.txt sub/ /data/
CMD ["cat", "/greeting"]
"""

COMPOSE_FILE = """\
services:
  app:
    image: {image}
    build:
      context: ./app
      args:
        GREETING: hello
      labels:
        built.with: compose-buildkit
"""


@pytest.fixture
def project(daemon: BaseDaemon, tmp_path: Path, docker_cli: DockerCLI) -> Iterator[Compose]:
    reason = compose_v2_unavailable_reason()
    if reason:
        pytest.skip(reason)
    name = "wbk" + secrets.token_hex(3)
    proj = tmp_path / "project"
    (proj / "app" / "sub").mkdir(parents=True)
    (proj / "compose.yaml").write_text(COMPOSE_FILE.format(image=f"{name}-img"))
    (proj / "app" / "Dockerfile").write_text(DOCKERFILE)
    (proj / "app" / "data.txt").write_text("data v1\n")
    (proj / "app" / "sub" / "nested.txt").write_text("nested\n")
    (proj / "app" / "ignored.txt").write_text("must not be sent\n")
    (proj / "app" / ".dockerignore").write_text("ignored.txt\n")
    c = Compose(daemon, proj, name, 2, tmp_path / "docker-config", buildkit=True)
    try:
        yield c
    finally:
        docker_cli("rmi", "-f", f"{name}-img")


def inspect(cli: DockerCLI, ref: str) -> dict[str, Any]:
    data = json.loads(cli.ok("image", "inspect", ref))
    assert isinstance(data, list) and len(data) == 1
    obj: dict[str, Any] = data[0]
    return obj


def test_compose_build_through_buildkit(project: Compose, docker_cli: DockerCLI) -> None:
    image = f"{project.project}-img"
    out = project.ok("--progress", "plain", "build")
    assert DOCKER_DRIVER in out, out
    assert "docker-container" not in out, out
    assert "[app internal] load build definition from Dockerfile" in out, out
    assert "[app base 1/2] FROM docker.io/library/busybox\n" in out, out
    assert "[app base 2/2] RUN echo" in out, out
    assert "[app stage-1 2/2] COPY data.txt sub/ /data/" in out, out
    assert "ARG GREETING" not in out, out  # metadata instructions have no vertex
    assert "to-stdout" in out and "to-stderr" in out, out
    assert f"naming to docker.io/library/{image}:latest" in out, out
    obj = inspect(docker_cli, image)
    labels = obj["Config"]["Labels"] or {}
    assert labels.get("built.with") == "compose-buildkit", labels
    assert labels.get("com.docker.compose.service") == "app", labels
    got = docker_cli.ok("run", "--rm", image)
    assert got == "hello from buildkit\n"
    listing = docker_cli.ok("run", "--rm", image, "ls", "/data")
    assert listing.split() == ["data.txt", "nested.txt"]
    # .dockerignore applied by the client: the ignored file never reached the daemon
    docker_cli.ok("run", "--rm", image, "sh", "-c", "! ls / | grep -q ignored")

    # again: every step from the cache, the same image
    out = project.ok("--progress", "plain", "build")
    assert re.search(r"#(\d+) \[app base 2/2\] RUN echo.*\n#\1 CACHED", out), out
    assert re.search(r"#(\d+) \[app stage-1 2/2\] COPY.*\n#\1 CACHED", out), out
    assert inspect(docker_cli, image)["Id"] == obj["Id"]


def test_failing_run_exits_non_zero(project: Compose, docker_cli: DockerCLI) -> None:
    (project.project_dir / "app" / "Dockerfile").write_text(
        "FROM busybox\nRUN echo before-failing && exit 3\n")
    r = project("--progress", "plain", "build")
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert DOCKER_DRIVER in out, out
    assert "before-failing" in out, out
    # BuildKit's words, in the step's box and in compose's last line
    message = 'process "/bin/sh -c echo before-failing && exit 3" did not complete ' \
              "successfully: exit code: 3"
    assert f"ERROR: {message}" in out and f"failed to solve: {message}" in out, out
    assert docker_cli("image", "inspect", f"{project.project}-img").returncode != 0


def test_interrupted_build_stops_and_leaves_no_container(
        project: Compose, docker_cli: DockerCLI, tmp_path: Path) -> None:
    (project.project_dir / "app" / "Dockerfile").write_text(
        "FROM busybox\nRUN echo sleeping-now && sleep 60\n")
    log = tmp_path / "compose.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(project.argv("--progress", "plain", "build"), env=project.env,
                                cwd=project.project_dir, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while "sleeping-now" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert _build_containers(docker_cli), "the RUN's container should be running"
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0, log.read_text()
    # the daemon stops the step: its container goes, nothing is tagged
    deadline = time.monotonic() + 20
    while _build_containers(docker_cli):
        assert time.monotonic() < deadline, docker_cli.ok("ps", "-a")
        time.sleep(0.2)
    assert docker_cli("image", "inspect", f"{project.project}-img").returncode != 0


def _build_containers(cli: DockerCLI) -> list[str]:
    out = cli.ok("ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Command}}")
    return [line for line in out.splitlines() if "sleeping-now" in line]


def test_disk_usage_prune_and_history_api(project: Compose, daemon: BaseDaemon) -> None:
    project.ok("build")
    usage = pb.DiskUsageResponse.FromString(
        buildkit.unary(daemon.socket, "DiskUsage", pb.DiskUsageRequest().SerializeToString()))
    runs = [r for r in usage.record if "from buildkit" in r.Description]
    assert len(runs) == 1, usage
    assert runs[0].Size > 0 and runs[0].RecordType == "regular" and runs[0].Parents, runs[0]
    assert runs[0].CreatedAt.seconds > 0

    pruned = [pb.UsageRecord.FromString(m) for m in buildkit.server_stream(
        daemon.socket, "Prune", pb.PruneRequest(all=True).SerializeToString())]
    # every entry leaves the cache (the RUN's image stays: the tagged image is its child)
    assert runs[0].ID in {r.ID for r in pruned}, pruned
    assert {r.ID for r in pruned} == {r.ID for r in usage.record}
    after = pb.DiskUsageResponse.FromString(
        buildkit.unary(daemon.socket, "DiskUsage", pb.DiskUsageRequest().SerializeToString()))
    assert list(after.record) == []
    out = project.ok("--progress", "plain", "build")
    assert "CACHED" not in out, out  # the cache is gone: every step ran again

    with pytest.raises(GrpcError) as exc:
        buildkit.unary(daemon.socket, "ListenBuildHistory", b"")
    assert exc.value.code == Code.UNIMPLEMENTED
    info = pb.InfoResponse.FromString(buildkit.unary(daemon.socket, "Info", b""))
    assert info.buildkitVersion.version


MOUNTS_DOCKERFILE = """\
FROM busybox AS base
ARG RUNID=1
RUN --mount=type=cache,id=mounts-test,target=/cache echo $RUNID >> /cache/runs \\
    && wc -l < /cache/runs
RUN --mount=type=secret,id=tok test "$(cat /run/secrets/tok)" = s3cr3t && echo secret-seen
RUN --mount=type=secret,id=tok,env=TOK test "$TOK" = s3cr3t && echo env-secret-seen
RUN --mount=type=bind,source=data.txt,target=/mnt/data.txt cat /mnt/data.txt
RUN --mount=type=tmpfs,target=/scratch touch /scratch/x && ! mount | grep -q ' /cache '
RUN --network=none sh -c '! ip route 2>/dev/null | grep -q default' && echo no-network
"""

MOUNTS_COMPOSE = """\
services:
  app:
    image: {image}
    build:
      context: ./app
      secrets: [tok]
secrets:
  tok:
    file: ./token.txt
"""


def test_run_mounts_through_buildkit(project: Compose, docker_cli: DockerCLI) -> None:
    image = f"{project.project}-img"
    (project.project_dir / "app" / "Dockerfile").write_text(MOUNTS_DOCKERFILE)
    (project.project_dir / "compose.yaml").write_text(MOUNTS_COMPOSE.format(image=image))
    (project.project_dir / "token.txt").write_text("s3cr3t")
    out = project.ok("--progress", "plain", "build")
    for text in ("secret-seen", "env-secret-seen", "data v1", "no-network"):
        assert text in out, out
    assert re.search(r"#\d+ \d+\.\d+ 1\n", out), out  # one run recorded in the cache mount
    # nothing of the mounts is in the image
    docker_cli.ok("run", "--rm", image, "sh", "-c",
                  "test ! -e /cache/runs && test ! -s /run/secrets/tok && "
                  "test ! -e /scratch/x && ! grep -rqs s3cr3t /run /etc /root")
    # a changed build arg reruns the step; the cache mount kept its file
    out = project.ok("--progress", "plain", "build", "--build-arg", "RUNID=2")
    assert re.search(r"#\d+ \d+\.\d+ 2\n", out), out
    # --no-cache reruns everything and starts the cache mount empty
    out = project.ok("--progress", "plain", "build", "--no-cache", "--build-arg", "RUNID=3")
    assert re.search(r"#\d+ \d+\.\d+ 1\n", out), out
    assert "CACHED" not in out, out



SCENARIO_DOCKERFILE = """\
# syntax=docker/dockerfile:1
FROM busybox AS base
ARG RUNID=1
RUN --mount=type=cache,target=/cache echo $RUNID >> /cache/runs && wc -l /cache/runs
FROM busybox
COPY --from=base --chmod=0755 /bin/busybox /usr/local/bin/bb
ARG NAME=heredoc
ARG TARGETPLATFORM
ARG BUILDARCH
RUN echo "target=$TARGETPLATFORM build=$BUILDARCH"
COPY <<EOF /etc/greeting
hello $NAME
EOF
RUN <<EOT
echo built > /built
EOT
CMD ["cat", "/built"]
"""


def test_issue_scenario_through_compose(project: Compose, docker_cli: DockerCLI) -> None:
    """The issue's scenario: a syntax line, a cache mount, COPY --from --chmod, heredocs."""
    image = f"{project.project}-img"
    (project.project_dir / "app" / "Dockerfile").write_text(SCENARIO_DOCKERFILE)
    out = project.ok("--progress", "plain", "build")
    assert DOCKER_DRIVER in out and "/cache/runs" in out, out
    assert re.search(r"#\d+ \d+\.\d+ 1 /cache/runs", out), out
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    assert f"target=linux/{arch} build={arch}" in out, out
    r = project("run", "--rm", "app")
    assert (r.returncode, r.stdout) == (0, "built\n"), r
    assert docker_cli.ok("run", "--rm", image, "cat", "/etc/greeting") == "hello heredoc\n"
    mode = docker_cli.ok("run", "--rm", image, "stat", "-c", "%a", "/usr/local/bin/bb")
    assert mode.strip() == "755"
    out = project.ok("--progress", "plain", "build", "--build-arg", "RUNID=2")
    assert re.search(r"#\d+ \d+\.\d+ 2 /cache/runs", out), out
    out = project.ok("--progress", "plain", "build", "--no-cache")
    assert "CACHED" not in out, out
    assert re.search(r"#\d+ \d+\.\d+ 1 /cache/runs", out), out


def test_buildkit_syntax_on_the_classic_builder(docker_cli: DockerCLI, tmp_path: Path) -> None:
    """The same Dockerfile through ``POST /build`` (the docker CLI without buildx)."""
    (tmp_path / "Dockerfile").write_text(SCENARIO_DOCKERFILE)
    tag = "wbkclassic" + secrets.token_hex(3)
    try:
        out = docker_cli.ok("build", "-t", tag, str(tmp_path))
        assert "/cache/runs" in out, out
        assert docker_cli.ok("run", "--rm", tag) == "built\n"
        assert docker_cli.ok("run", "--rm", tag, "cat", "/etc/greeting") == "hello heredoc\n"
    finally:
        docker_cli("rmi", "-f", tag)


@pytest.fixture(scope="module")
def auth_registry(daemon: BaseDaemon) -> Iterator[LocalRegistry]:
    reason = registry_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with LocalRegistry(daemon.netns, 5002, htpasswd=("bkuser", "bkpass")) as reg:
        yield reg


def test_from_a_private_registry_with_the_clients_credentials(
        project: Compose, docker_cli: DockerCLI, auth_registry: LocalRegistry) -> None:
    base = f"127.0.0.1:5002/bkbase{secrets.token_hex(2)}:1"
    docker_cli.ok("login", "127.0.0.1:5002", "-u", "bkuser", "-p", "bkpass")
    docker_cli.ok("tag", "busybox", base)
    docker_cli.ok("push", base, timeout=120)
    docker_cli.ok("rmi", base)
    (project.project_dir / "app" / "Dockerfile").write_text(
        f"FROM {base}\nRUN echo pulled-base\n")
    # without credentials the daemon's pull is anonymous and refused
    r = project("--progress", "plain", "build")
    assert r.returncode != 0, r.stdout + r.stderr
    assert docker_cli("image", "inspect", base).returncode != 0
    # the client's docker config has them: the daemon asks through the session
    auth = base64.b64encode(b"bkuser:bkpass").decode()
    (project.config_dir / "config.json").write_text(
        json.dumps({"auths": {"127.0.0.1:5002": {"auth": auth}}}))
    out = project.ok("--progress", "plain", "build")
    assert "pulled-base" in out, out
    docker_cli.ok("image", "inspect", base)
    docker_cli("rmi", base)


NAMED_COMPOSE = """\
services:
  app:
    image: {image}
    build:
      context: ./app
      additional_contexts:
        extra: ./extra
        base: docker-image://busybox
"""


def test_named_contexts_from_compose(project: Compose, docker_cli: DockerCLI) -> None:
    image = f"{project.project}-img"
    extra = project.project_dir / "extra"
    extra.mkdir()
    (extra / "note.txt").write_text("from the extra context\n")
    (project.project_dir / "compose.yaml").write_text(NAMED_COMPOSE.format(image=image))
    (project.project_dir / "app" / "Dockerfile").write_text(
        "FROM base\nCOPY --from=extra note.txt /note.txt\n"
        "RUN --mount=from=extra,target=/x cat /x/note.txt\n")
    out = project.ok("--progress", "plain", "build")
    assert "[app internal] load build context extra" in out, out
    assert re.search(r"#\d+ \d+\.\d+ from the extra context", out), out
    assert docker_cli.ok("run", "--rm", image, "cat", "/note.txt") == "from the extra context\n"
    # a changed file of the named context reruns the steps that use it
    (extra / "note.txt").write_text("changed\n")
    out = project.ok("--progress", "plain", "build")
    assert re.search(r"#\d+ \d+\.\d+ changed", out), out
    assert docker_cli.ok("run", "--rm", image, "cat", "/note.txt") == "changed\n"


PARALLEL_DOCKERFILE = """\
FROM busybox AS left
RUN --mount=type=cache,id={meet},target=/meet touch /meet/left && \\
    for i in $(seq 150); do [ -e /meet/right ] && echo left-met && exit 0; sleep 0.1; done; \\
    exit 1
FROM busybox AS right
RUN --mount=type=cache,id={meet},target=/meet touch /meet/right && \\
    for i in $(seq 150); do [ -e /meet/left ] && echo right-met && exit 0; sleep 0.1; done; \\
    exit 1
FROM busybox
COPY --from=left /bin/true /left-true
COPY --from=right /bin/true /right-true
"""


def test_independent_stages_run_concurrently(project: Compose) -> None:
    """Each of two independent stages waits (15 s at most) for the other to have
    started: built one after the other, the first would fail."""
    (project.project_dir / "app" / "Dockerfile").write_text(
        PARALLEL_DOCKERFILE.format(meet="meet" + secrets.token_hex(4)))
    out = project.ok("--progress", "plain", "build")
    assert "left-met" in out and "right-met" in out, out


def test_a_failing_stage_fails_the_build_and_names_its_step(
        project: Compose, docker_cli: DockerCLI) -> None:
    (project.project_dir / "app" / "Dockerfile").write_text(
        "FROM busybox AS slow\nRUN sleep 30\nFROM busybox AS bad\nRUN exit 7\n"
        "FROM busybox\nCOPY --from=slow /bin/true /a\nCOPY --from=bad /bin/true /b\n")
    started = time.monotonic()
    r = project("--progress", "plain", "build")
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert re.search(r'#\d+ ERROR: process "/bin/sh -c exit 7" did not complete '
                     r"successfully: exit code: 7", out), out
    # the other stage was cancelled, not waited for, and its container removed
    assert time.monotonic() - started < 25, out
    left = docker_cli.ok("ps", "-a", "--no-trunc", "--format", "{{.Command}}")
    assert "sleep 30" not in left and "exit 7" not in left, left


@pytest.mark.slow
def test_a_large_context_arrives_whole(project: Compose, docker_cli: DockerCLI) -> None:
    """32 MiB in 32 files plus 3000 small ones: many times the HTTP/2 windows."""
    app = project.project_dir / "app"
    (app / "Dockerfile").write_text(
        "FROM busybox\nCOPY big /big\nCOPY small /small\n"
        "RUN find /small -type f | wc -l && cat /big/* | md5sum\n")
    (app / "big").mkdir()
    digest = hashlib.md5()
    for i in range(32):
        data = os.urandom(1 << 20)
        (app / "big" / f"{i:02d}.bin").write_bytes(data)
        digest.update(data)
    for i in range(30):
        sub = app / "small" / f"d{i}"
        sub.mkdir(parents=True)
        for j in range(100):
            (sub / f"f{j}").write_text(f"{i}-{j}\n")
    out = project.ok("--progress", "plain", "build", timeout=300)
    assert re.search(r"#\d+ \d+\.\d+ 3000\n", out), out
    assert digest.hexdigest() in out, out
