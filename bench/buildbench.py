"""Builder benchmarks (issue 7 item 9), run through the docker CLI with the classic
builder (``DOCKER_BUILDKIT=0``) against each daemon.

- ``ten_steps``: a 10-step build (FROM busybox, RUN/COPY/ENV/WORKDIR) without cache;
- ``ten_steps_cached``: the same build again, every step a cache hit;
- ``big_context``: ``COPY . /ctx`` of a 100 MiB context in 20 000 files, without cache.

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
