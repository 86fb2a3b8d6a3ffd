"""The API socket accepts connections from the moment it appears.

A client that connects while the engine is still setting itself up (restoring containers,
networks) waits and is answered once the daemon is ready, as with dockerd; it is never
refused (the CLI would print "Cannot connect to the Docker daemon"). wharfd only: the
test starts the daemon itself and races it to the socket.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Iterator

import pytest

from tests.harness import rawhttp
from tests.harness.busybox import BusyboxArtifacts
from tests.harness.cli import DockerCLI, import_busybox
from tests.harness.daemon import DaemonProcess, wharfd_unavailable_reason

pytestmark = pytest.mark.root


class UnwaitedDaemon(DaemonProcess):
    """Starts the process and returns at once: the test does the waiting."""

    def wait_ready(self, timeout: float = 0) -> None:
        return


@pytest.fixture
def wharfd() -> Iterator[UnwaitedDaemon]:
    reason = wharfd_unavailable_reason()
    if reason:
        pytest.skip(reason)
    d = UnwaitedDaemon()
    try:
        yield d
    finally:
        d.cleanup()


def _race_to_the_socket(d: UnwaitedDaemon, timeout: float = 60.0) -> tuple[int, int, float]:
    """Connect as soon as the socket file exists, again and again until /_ping answers.

    Returns (refused connects, ping status, seconds from the socket's appearance)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(d.socket):
        assert d.running, d.log_tail()
        assert time.monotonic() < deadline, "the socket never appeared"
        time.sleep(0.001)
    appeared = time.monotonic()
    refused = 0
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(max(1.0, deadline - time.monotonic()))
        try:
            sock.connect(d.socket)
        except OSError as exc:
            sock.close()
            if exc.errno != errno.ECONNREFUSED:
                raise
            refused += 1
            assert time.monotonic() < deadline, "still refused at the deadline"
            time.sleep(0.005)
            continue
        try:
            sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        finally:
            sock.close()
        status = int(answer.split(b" ", 2)[1])
        return refused, status, time.monotonic() - appeared


def test_first_connection_waits_instead_of_being_refused(wharfd: UnwaitedDaemon) -> None:
    wharfd.start()
    refused, status, _ = _race_to_the_socket(wharfd)
    assert (refused, status) == (0, 200)


def test_restart_with_containers_is_never_refused(
    wharfd: UnwaitedDaemon, busybox_artifacts: BusyboxArtifacts
) -> None:
    """A restart with containers to restore: the longer set-up the probes saw (1-4 s)."""
    wharfd.start()
    DaemonProcess.wait_ready(wharfd)
    import_busybox(wharfd, busybox_artifacts.tar_path)
    cli = DockerCLI(wharfd)
    for _ in range(3):
        cli.ok("run", "-d", "busybox", "sleep", "300")
    wharfd.stop()
    wharfd.start()
    refused, status, _ = _race_to_the_socket(wharfd)
    assert (refused, status) == (0, 200)
    # the early client was answered by a daemon that had finished restoring
    running = rawhttp.request(wharfd.socket, "GET", "/containers/json").json()
    assert len(running) == 3
