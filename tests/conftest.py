"""Shared fixtures. The harness itself lives in ``tests/harness``.

Fixtures:
  busybox_artifacts (session)  rootfs dir, plain tar, docker-archive, in one tmp dir
  busybox_tar       (session)  Path of the plain rootfs tar (for ``docker import``)
  daemon            (module)   a running wharfd with ``busybox:latest`` imported
                               (``--against-dockerd``: the real dockerd 20.10 instead;
                               a module's ``REFERENCE_DOCKERD`` picks its variant)
  fresh_daemon      (function) a running daemon of the same kind, with no images
  docker_cli        (function) ``docker_cli("ps", "-a")`` against ``daemon``
  dclient           (function) docker-py ``DockerClient`` for ``daemon``
  registry          (module)   a local docker-registry on 127.0.0.1:5000 in its netns
  cluster           (function) factory: ``cluster(3)`` brings up 3 hosts on one LAN, each
                               with its own wharfd (tests/harness/cluster.py), torn down
                               after the test; ``module_cluster`` the same per module
  against_dockerd   (session)  True under ``--against-dockerd``

When a test fails, the tail of the log of every daemon still running is attached to its
report (only what the daemon wrote during that test, when it was already running).
Async tests get an autouse check that fails on blocking calls made inside the event loop
(blockbuster when installed; else asyncio debug mode's slow-callback warnings).
"""

from __future__ import annotations

import inspect
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.busybox import BusyboxArtifacts, BusyboxUnavailable
from tests.harness.cli import DockerCLI, docker_py_client, import_busybox
from tests.harness.cluster import Cluster
from tests.harness.daemon import (
    LIVE,
    BaseDaemon,
    DaemonProcess,
    DockerdReference,
    dockerd_unavailable_reason,
    wharfd_unavailable_reason,
)
from tests.harness.registry import LocalRegistry, registry_unavailable_reason

try:  # pragma: no cover - depends on the test extras
    from blockbuster import blockbuster_ctx
except ImportError:  # pragma: no cover
    blockbuster_ctx = None  # type: ignore[assignment]

MARKERS = {
    "slow": "long-running scenario (still run in CI)",
    "root": "needs root, runc, conmon and overlayfs",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("wharfd")
    group.addoption(
        "--against-dockerd",
        action="store_true",
        default=False,
        help="run daemon-backed tests against the real dockerd (docker.io) instead of "
        "wharfd, to check that the tests themselves describe Docker's behaviour",
    )
    group.addoption(
        "--keep-daemon-tmp",
        action="store_true",
        default=False,
        help="keep each daemon's temp dir (logs, data root) after cleanup",
    )


def pytest_configure(config: pytest.Config) -> None:
    known = {line.split(":", 1)[0].strip() for line in config.getini("markers")}
    for name, doc in MARKERS.items():
        if name not in known:
            config.addinivalue_line("markers", f"{name}: {doc}")
    if blockbuster_ctx is None:
        # fallback for the blocking-call check: asyncio debug mode, which logs callbacks
        # slower than loop.slow_callback_duration (pytest-asyncio sets the loop's debug flag
        # from its own option, so set that; the env var covers loops made elsewhere)
        if hasattr(config.option, "asyncio_debug") and config.option.asyncio_debug is None:
            config.option.asyncio_debug = True
        os.environ.setdefault("PYTHONASYNCIODEBUG", "1")


# -- reports: daemon log tails on failure ------------------------------------------------

_log_offsets = pytest.StashKey[dict[int, int]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    item.stash[_log_offsets] = {id(d): d.log_size() for d in LIVE}
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    rep = yield
    if rep.failed:
        offsets = item.stash.get(_log_offsets, {})
        for d in sorted(LIVE, key=lambda d: d.name):
            tail = d.log_tail(120, since=offsets.get(id(d), 0))
            if tail:
                where = f"{d.log_path}; kept with --keep-daemon-tmp"
                rep.sections.append((f"{d.kind} log {d.name} ({where})", tail))
    return rep


# -- images ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def busybox_artifacts() -> Iterator[BusyboxArtifacts]:
    try:
        art = BusyboxArtifacts.create()
    except BusyboxUnavailable as e:
        pytest.skip(str(e))
    try:
        yield art
    finally:
        art.cleanup()


@pytest.fixture(scope="session")
def busybox_tar(busybox_artifacts: BusyboxArtifacts) -> Path:
    return busybox_artifacts.tar_path


# -- daemons ----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def against_dockerd(pytestconfig: pytest.Config) -> bool:
    return bool(pytestconfig.getoption("against_dockerd"))


def _daemon_class(config: pytest.Config, module: Any = None) -> type[BaseDaemon]:
    """wharfd, or the reference under --against-dockerd: ``DockerdReference`` unless the
    test module names another in ``REFERENCE_DOCKERD`` (e.g. one with its bridge)."""
    if not config.getoption("against_dockerd"):
        return DaemonProcess
    reference: type[BaseDaemon] = getattr(module, "REFERENCE_DOCKERD", DockerdReference)
    return reference


def _skip_unless_runnable(cls: type[BaseDaemon]) -> None:
    if issubclass(cls, DockerdReference):
        reason = dockerd_unavailable_reason()
    else:
        reason = wharfd_unavailable_reason()
    if reason:
        pytest.skip(f"{cls.kind}: {reason}")


def _start_daemon(config: pytest.Config, module: Any = None) -> BaseDaemon:
    cls = _daemon_class(config, module)
    _skip_unless_runnable(cls)
    return cls()


def _finish(d: BaseDaemon, config: pytest.Config) -> None:
    left = d.cleanup(keep_tmp=bool(config.getoption("keep_daemon_tmp")))
    if left:
        warnings.warn(f"{d!r} left behind: {left}", stacklevel=1)


@pytest.fixture(scope="module")
def daemon(
    request: pytest.FixtureRequest, pytestconfig: pytest.Config, busybox_tar: Path
) -> Iterator[BaseDaemon]:
    """A daemon for the whole module, with ``busybox:latest`` imported from the tar."""
    d = _start_daemon(pytestconfig, request.module)
    try:
        d.start()
        import_busybox(d, busybox_tar)
        yield d
    finally:
        _finish(d, pytestconfig)


@pytest.fixture
def fresh_daemon(pytestconfig: pytest.Config) -> Iterator[BaseDaemon]:
    """A daemon of its own for one test, with no images."""
    d = _start_daemon(pytestconfig)
    try:
        d.start()
        yield d
    finally:
        _finish(d, pytestconfig)


@pytest.fixture(scope="module")
def registry(daemon: BaseDaemon) -> Iterator[LocalRegistry]:
    """Debian's docker-registry on 127.0.0.1:5000 inside the module daemon's netns."""
    reason = registry_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with LocalRegistry(daemon.netns, 5000) as reg:
        yield reg


@pytest.fixture
def docker_cli(daemon: BaseDaemon) -> DockerCLI:
    return DockerCLI(daemon)


@pytest.fixture
def dclient(daemon: BaseDaemon) -> Iterator[Any]:
    client = docker_py_client(daemon)
    try:
        yield client
    finally:
        client.close()


# -- several hosts --------------------------------------------------------------------------

ClusterFactory = Callable[..., Cluster]


def _cluster_factory(config: pytest.Config) -> Iterator[ClusterFactory]:
    """Yields ``make(n, up=True, **Cluster keywords)``; tears every cluster made down afterwards.
    Under ``--against-dockerd`` the hosts run the reference dockerd instead of wharfd."""
    made: list[Cluster] = []
    cls = _daemon_class(config)
    _skip_unless_runnable(cls)

    def make(n: int, *, up: bool = True, **kwargs: Any) -> Cluster:
        kwargs.setdefault("daemon_factory", cls)
        c = Cluster(n, **kwargs)
        made.append(c)
        return c.up() if up else c

    try:
        yield make
    finally:
        for c in reversed(made):
            if left := c.down():
                warnings.warn(f"cluster left behind: {left}", stacklevel=1)


@pytest.fixture
def cluster(pytestconfig: pytest.Config) -> Iterator[ClusterFactory]:
    """``cluster(3)``: three hosts h1..h3 (192.168.77.1-3) and a client, for one test."""
    yield from _cluster_factory(pytestconfig)


@pytest.fixture(scope="module")
def module_cluster(pytestconfig: pytest.Config) -> Iterator[ClusterFactory]:
    """Like ``cluster``, torn down at the end of the module."""
    yield from _cluster_factory(pytestconfig)


# -- no blocking calls inside the event loop -----------------------------------------------

def _is_async_test(item: pytest.Item) -> bool:
    fn = getattr(item, "obj", None)
    return inspect.iscoroutinefunction(fn) or item.get_closest_marker("asyncio") is not None


class _SlowCallbackRecorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("Executing ") and " took " in msg:
            self.records.append(msg)


@pytest.fixture(autouse=True)
def _no_blocking_calls_in_event_loop(request: pytest.FixtureRequest) -> Iterator[None]:
    if not _is_async_test(request.node):
        yield
        return
    if blockbuster_ctx is not None:
        with blockbuster_ctx(["engine", "api", "tests"]):
            yield
        return
    # weaker fallback: asyncio debug mode logs callbacks slower than slow_callback_duration
    rec = _SlowCallbackRecorder()
    logger = logging.getLogger("asyncio")
    logger.addHandler(rec)
    try:
        yield
    finally:
        logger.removeHandler(rec)
    if rec.records:
        pytest.fail("event loop blocked:\n" + "\n".join(rec.records[:10]), pytrace=False)
