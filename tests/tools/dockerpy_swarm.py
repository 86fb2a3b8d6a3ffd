#!/usr/bin/env python3
"""Run docker-py's own swarm integration tests (issue 12 item 6) against a wharfd.

Not part of the test suite and not a pytest module: a runner for a docker-py source tree
that is not in this repository (never commit one). Get it with, e.g.::

    git -C <docker-py clone> archive 7.2.0 | tar -x -C /work/dpy-src
    .venv/bin/pip install --target /work/dpy-deps paramiko websocket-client

then, as root::

    .venv/bin/python tests/tools/dockerpy_swarm.py /work/dpy-src --deps /work/dpy-deps
    .venv/bin/python tests/tools/dockerpy_swarm.py /work/dpy-src --against-dockerd
    .venv/bin/python tests/tools/dockerpy_swarm.py /work/dpy-src -- -k test_init_swarm

It starts one daemon through the test harness (its own netns with ``lo`` up, temporary
roots; wharfd from this repository's venv, or the reference dockerd 20.10), imports the
harness' busybox rootfs as ``busybox:latest`` and tags it ``alpine:3.10`` (docker-py's
``TEST_IMG``; its session fixture would otherwise pull it, and there is no network),
then runs ``tests/integration/{api_swarm_test,models_swarm_test,models_nodes_test}.py``
from the source tree with ``DOCKER_HOST`` at that daemon. Prints pytest's output and a
one-line summary (passed/failed/skipped/xfailed counts from its JUnit XML); exits with
pytest's status. The daemon and everything it made are removed at the end.

Known on dockerd 20.10 (swarm-api-notes §11): ``test_join_on_already_joined_swarm``
fails there (``swarm.init()`` without an advertise address needs a default route, which
the daemon's namespace has not).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.harness.busybox import BusyboxArtifacts  # noqa: E402
from tests.harness.cli import import_busybox, run_docker  # noqa: E402
from tests.harness.daemon import BaseDaemon, DaemonProcess, DockerdReference  # noqa: E402

SWARM_TESTS = (
    "tests/integration/api_swarm_test.py",
    "tests/integration/models_swarm_test.py",
    "tests/integration/models_nodes_test.py",
)
TEST_IMG = "alpine:3.10"


def summarize(junit: Path) -> dict[str, int]:
    counts = {"tests": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    if not junit.exists():
        return counts
    for case in ET.parse(junit).getroot().iter("testcase"):
        counts["tests"] += 1
        kinds = {child.tag for child in case}
        if "failure" in kinds:
            counts["failed"] += 1
        elif "error" in kinds:
            counts["errors"] += 1
        elif "skipped" in kinds:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts


def run(a: argparse.Namespace) -> int:
    src = Path(a.source).resolve()
    missing = [t for t in a.tests if not (src / t).exists()]
    if missing:
        print(f"not a docker-py source tree ({src}): missing {missing}", file=sys.stderr)
        return 2
    cls: type[BaseDaemon] = DockerdReference if a.against_dockerd else DaemonProcess
    d = cls()
    bb = BusyboxArtifacts.create()
    junit = Path(tempfile.mkstemp(prefix="dockerpy-swarm-", suffix=".xml")[1])
    try:
        d.start()
        import_busybox(d, bb.tar_path)
        tagged = run_docker(d, "tag", "busybox:latest", TEST_IMG)
        if tagged.returncode != 0:
            print(f"docker tag failed: {tagged.stderr}", file=sys.stderr)
            return 2
        print(f"{d.kind} pid {d.pid} in netns {d.netns.name}, DOCKER_HOST={d.docker_host}")
        env = d.env
        path = [str(src), *([str(Path(a.deps).resolve())] if a.deps else [])]
        env["PYTHONPATH"] = os.pathsep.join(path)
        env.pop("DOCKER_TEST_API_VERSION", None)
        argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "-rfEsx",
                f"--junitxml={junit}", *a.tests, *a.pytest_args]
        rc = subprocess.run(argv, cwd=src, env=env, timeout=a.timeout).returncode
        counts = summarize(junit)
        print(f"\n{d.kind}: " + ", ".join(f"{k} {v}" for k, v in counts.items())
              + f" (pytest exit {rc}; JUnit counts xfailed as skipped, xpassed as passed)")
        if a.log_tail and rc != 0:
            print(f"--- {d.kind} log tail ---\n{d.log_tail(a.log_tail)}")
        return rc
    finally:
        left = d.cleanup()
        if left:
            print(f"{d.kind} left behind: {left}", file=sys.stderr)
        bb.cleanup()
        junit.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="a docker-py source tree (tag 7.2.0)")
    p.add_argument("--deps", help="a pip --target dir with paramiko and websocket-client")
    p.add_argument("--against-dockerd", action="store_true",
                   help="the reference dockerd 20.10 instead of wharfd")
    p.add_argument("--tests", nargs="+", default=list(SWARM_TESTS),
                   help="test files, relative to the source tree")
    p.add_argument("--timeout", type=float, default=1200, help="for the whole pytest run")
    p.add_argument("--log-tail", type=int, default=0,
                   help="print this many lines of the daemon's log when tests failed")
    p.add_argument("pytest_args", nargs="*", help="after --: passed on to pytest")
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces, runc, cgroups)", file=sys.stderr)
        return 2
    # SIGTERM unwinds like Ctrl-C, so the daemon is always cleaned up
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return run(a)


if __name__ == "__main__":
    sys.exit(main())
