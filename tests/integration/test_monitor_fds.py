"""conmon holds nothing of the daemon's. It lives as long as its container, across daemon
restarts, so every descriptor it inherits stays open that long: uvloop's spawn let a pipe
and two more descriptors of the daemon's through to it. The pipes conmon needs are the
container's stdio, whose other ends the container's process holds; no socket or pipe
of the daemon's own may be among them either."""

from __future__ import annotations

import json
import os

from tests.harness.cli import DockerCLI
from tests.harness.daemon import BaseDaemon


def _sockets_and_pipes(pid: int) -> set[str]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith(("socket:", "pipe:")):
            found.add(target)
    return found


def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def test_conmon_holds_no_socket_or_pipe_of_the_daemon(daemon: BaseDaemon) -> None:
    cli = DockerCLI(daemon)
    cid = cli.ok("run", "-d", "busybox", "sleep", "600").strip()
    try:
        init_pid = json.loads(cli.ok("inspect", cid))[0]["State"]["Pid"]
        conmon_pid = _parent_of(init_pid)
        with open(f"/proc/{conmon_pid}/comm") as comm:
            assert comm.read().strip() == "conmon"
        assert daemon.pid is not None
        held = _sockets_and_pipes(conmon_pid)
        assert held & _sockets_and_pipes(daemon.pid) == set()
        container_stdio = _sockets_and_pipes(init_pid)
        assert {p for p in held if p.startswith("pipe:")} <= container_stdio
    finally:
        cli.ok("rm", "-f", cid)
