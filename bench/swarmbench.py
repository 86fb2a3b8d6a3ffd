"""Swarm benchmarks (issue 12 item 7): a small swarm of the daemon's kind, side by side.

Each pass of each metric builds a fresh cluster of hosts in namespaces of their own
(tests/harness/cluster.py) running the same kind of daemon as the one ``bench/run.py``
hands in (wharfd, or the reference dockerd 20.10), does the swarm steps through the
docker CLI 28 (tests/harness/swarm.py) and times one of them:

- ``swarm_init``: ``docker swarm init --advertise-addr``;
- ``swarm_join``: ``docker swarm join`` of a worker (the CLI returns once joined);
- ``swarm_worker_down_5s`` / ``_1s``: kill -9 of a worker's daemon until the manager's
  ``node ls`` shows it ``Down``, with the default heartbeat (5 s) and with
  ``--dispatcher-heartbeat 1s``;
- ``swarm_leader_failover``: kill -9 of the leader's daemon (3 managers) until another
  manager's ``node ls`` shows a new leader and a write through it (``node update
  --label-add``) is accepted; ``swarm_leader_host_lost``: the same when the leader's
  host goes as a whole (daemon killed, cable cut: wharfd's etcd member goes with it);
- ``swarm_manager_restart``: a manager's daemon stopped (SIGTERM) and started again,
  from the spawn until its ``node ls`` answers.

Observation polls every 0.1 s with one CLI call each (~0.05-0.1 s): figures include
that much granularity on both sides alike.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from tests.harness.cluster import Cluster, Host
from tests.harness.daemon import BaseDaemon
from tests.harness.swarm import (
    form,
    init,
    join,
    join_token,
    new_leader,
    node_status,
    nodes,
    write_accepted,
)

POLL_S = 0.1
#: longest wait for any one observation (dockerd's failover is ~20 s, restart ~15 s)
OBSERVE_TIMEOUT_S = 90.0


class SwarmBenchError(RuntimeError):
    pass


@contextlib.contextmanager
def _cluster(d: BaseDaemon, n: int) -> Iterator[Cluster]:
    """``n`` hosts running the same kind of daemon as ``d``; torn down afterwards."""
    c = Cluster(n, client=False, daemon_factory=type(d))
    c.up()
    try:
        yield c
    finally:
        left = c.down()
        if left:
            raise SwarmBenchError(f"cluster left behind: {left}")


def _until(what: str, probe: object) -> float:
    """Seconds (monotonic) at which ``probe()`` first answered truthy."""
    assert callable(probe)
    deadline = time.monotonic() + OBSERVE_TIMEOUT_S
    while True:
        try:
            if probe():
                return time.monotonic()
        except AssertionError:
            pass
        if time.monotonic() > deadline:
            raise SwarmBenchError(f"{what}: not within {OBSERVE_TIMEOUT_S:.0f}s")
        time.sleep(POLL_S)


def init_seconds(d: BaseDaemon) -> float:
    with _cluster(d, 1) as c:
        t0 = time.monotonic()
        init(c.hosts[0])
        return time.monotonic() - t0


def join_seconds(d: BaseDaemon) -> float:
    with _cluster(d, 2) as c:
        h1, h2 = c.hosts
        init(h1)
        token = join_token(h1)
        t0 = time.monotonic()
        join(h2, token, h1)
        return time.monotonic() - t0


def worker_down_seconds(d: BaseDaemon, heartbeat: str | None) -> float:
    with _cluster(d, 2) as c:
        h1, h2 = c.hosts
        form(c, managers=1, heartbeat=heartbeat)
        t0 = time.monotonic()
        h2.kill9()
        return _until("worker Down", lambda: node_status(h1, "h2") == "Down") - t0


def leader_failover_seconds(d: BaseDaemon, host_lost: bool = False) -> float:
    """Until another manager shows a new leader and accepts a write. ``host_lost``: the
    leader's host goes as a whole (daemon killed and cable cut: wharfd's etcd member,
    which outlives a daemon's kill -9, goes too)."""
    with _cluster(d, 3) as c:
        h1, h2, _h3 = c.hosts
        form(c, managers=3, heartbeat=None)
        n = 0

        def failed_over() -> bool:
            nonlocal n
            n += 1
            return (new_leader(h2, "h1") is not None
                    and write_accepted(h2, "h3", f"failover={n}"))

        t0 = time.monotonic()
        h1.kill9()
        if host_lost:
            h1.disconnect("link")
        return _until("a new leader and a write after the leader's loss", failed_over) - t0


def _answers(host: Host) -> bool:
    return bool(nodes(host, timeout=30))


def manager_restart_seconds(d: BaseDaemon) -> float:
    with _cluster(d, 3) as c:
        _h1, h2, _h3 = c.hosts
        form(c, managers=3, heartbeat=None)
        h2.stop()
        t0 = time.monotonic()
        h2.require_daemon().start(timeout=OBSERVE_TIMEOUT_S)  # returns once /_ping answers
        return _until("node ls on the restarted manager", lambda: _answers(h2)) - t0
