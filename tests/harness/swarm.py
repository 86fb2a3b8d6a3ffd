"""Swarm steps through the stock docker CLI, on the hosts of a :class:`Cluster`.

Shared by the swarm acceptance tests (tests/compat/test_swarm_*.py) and the swarm
benchmarks (bench/swarmbench.py). Everything goes through ``docker`` (CLI 28) against one
host's daemon, exactly as a user types it; nothing here knows whether that daemon is
wharfd or the reference dockerd.

Waiting is always bounded: :func:`wait_for` polls a probe until it returns something
truthy or the deadline passes, and then fails with the last thing the probe saw.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .cluster import Cluster, Host

#: the cluster port every test uses (dockerd's and wharfd's default)
CLUSTER_PORT = 2377
#: ``docker swarm init --dispatcher-heartbeat`` of the tests: down within ~3 s
FAST_HEARTBEAT = "1s"

T = TypeVar("T")


class SwarmStepError(AssertionError):
    """A swarm step through the CLI failed or a wait ran out (the message says which)."""


def wait_for(probe: Callable[[], T | None], timeout: float, what: str,
             interval: float = 0.2) -> T:
    """Call ``probe`` until it returns a truthy value (returned) or ``timeout`` seconds
    pass (SwarmStepError naming ``what`` and the probe's last answer). A probe that
    raises SwarmStepError counts as "not yet"."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = probe()
        except SwarmStepError as e:
            value, last = None, e  # type: ignore[assignment]
        else:
            last = value
        if value:
            return value  # truthy, so not None
        if time.monotonic() >= deadline:
            raise SwarmStepError(f"{what}: not within {timeout:.0f}s; last seen: {last!r}")
        time.sleep(interval)


def ok(host: Host, *args: str, timeout: float = 60) -> str:
    """``docker <args>`` on ``host``; its stdout, or SwarmStepError with its stderr."""
    r = host.docker(*args, timeout=timeout)
    if r.returncode != 0:
        raise SwarmStepError(f"{host.hostname}$ docker {' '.join(args)} -> {r.returncode}: "
                             f"{r.stderr.strip()}")
    return str(r.stdout)


def fails(host: Host, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[Any]:
    """``docker <args>`` that must fail; the completed process (for its stderr)."""
    r = host.docker(*args, timeout=timeout)
    if r.returncode == 0:
        raise SwarmStepError(f"{host.hostname}$ docker {' '.join(args)} succeeded: "
                             f"{r.stdout.strip()!r}")
    return r


# -- reading the swarm -----------------------------------------------------------------------

def nodes(host: Host, timeout: float = 30) -> list[dict[str, Any]]:
    """``docker node ls`` as rows (ID, Hostname, Status, Availability, ManagerStatus,
    EngineVersion, Self, TLSStatus), from ``--format '{{json .}}'``."""
    out = ok(host, "node", "ls", "--format", "{{json .}}", timeout=timeout)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def nodes_by_hostname(host: Host) -> dict[str, dict[str, Any]]:
    return {row["Hostname"]: row for row in nodes(host)}


def swarm_info(host: Host) -> dict[str, Any]:
    """``/info``'s Swarm section as the CLI sees it."""
    info: dict[str, Any] = json.loads(ok(host, "info", "--format", "{{json .Swarm}}"))
    return info


def node_inspect(host: Host, ref: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(ok(host, "node", "inspect", ref))[0]
    return doc


def leader_hostname(host: Host) -> str | None:
    """The hostname ``node ls`` on ``host`` shows as Leader, None when it shows none
    (or cannot answer)."""
    try:
        rows = nodes(host, timeout=15)
    except (SwarmStepError, subprocess.TimeoutExpired):
        return None
    leaders = [r["Hostname"] for r in rows if r["ManagerStatus"] == "Leader"]
    return str(leaders[0]) if len(leaders) == 1 else None


def new_leader(observer: Host, old: str) -> str | None:
    """The leader ``observer`` shows when it is not ``old`` (None while it still is, or
    while there is none)."""
    leader = leader_hostname(observer)
    return leader if leader not in (None, old) else None


def node_status(host: Host, hostname: str) -> str | None:
    """``Status`` (Ready, Down, ...) of ``hostname``'s row in ``host``'s node ls."""
    try:
        row = nodes_by_hostname(host).get(hostname)
    except (SwarmStepError, subprocess.TimeoutExpired):
        return None
    return str(row["Status"]) if row else None


# -- forming a swarm -------------------------------------------------------------------------

INIT_RE = re.compile(r"Swarm initialized: current node \((?P<id>[0-9a-z]{25})\) is now a manager\.")
JOIN_CMD_RE = re.compile(r"docker swarm join --token (?P<token>SWMTKN-1-[0-9a-z]+-[0-9a-z]+) "
                         r"(?P<addr>[0-9.]+:\d+)")


def init(host: Host, *flags: str) -> str:
    """``docker swarm init --advertise-addr <host> <flags>``; the CLI's output."""
    return ok(host, "swarm", "init", "--advertise-addr", host.address, *flags, timeout=60)


def join_token(host: Host, role: str = "worker") -> str:
    return ok(host, "swarm", "join-token", "-q", role).strip()


def join(host: Host, token: str, manager: Host, timeout: float = 60) -> str:
    """``docker swarm join --token <token> <manager>:2377`` on ``host``; the CLI's output."""
    return ok(host, "swarm", "join", "--token", token,
              f"{manager.address}:{CLUSTER_PORT}", timeout=timeout)


def wait_managers_reachable(observer: Host, hostnames: Sequence[str],
                            timeout: float = 60) -> None:
    """Until ``observer``'s node ls shows every one of ``hostnames`` as a manager
    (Leader or Reachable). A promotion is asynchronous: the node must have taken its
    place among the managers before quorum counts on it."""
    def all_managers() -> bool:
        rows = nodes_by_hostname(observer)
        return all(rows.get(h, {}).get("ManagerStatus") in ("Leader", "Reachable")
                   for h in hostnames)
    wait_for(all_managers, timeout, f"{', '.join(hostnames)} reachable managers")


def form(cluster: Cluster, managers: int = 1, heartbeat: str | None = FAST_HEARTBEAT,
         init_flags: Sequence[str] = ()) -> None:
    """h1 inits (with ``--dispatcher-heartbeat``), every other host joins as a worker,
    then the first ``managers`` hosts are managers (promoted, and waited for)."""
    first, *rest = cluster.hosts
    flags = [*(("--dispatcher-heartbeat", heartbeat) if heartbeat else ()), *init_flags]
    init(first, *flags)
    token = join_token(first, "worker")
    for host in rest:
        join(host, token, first)
    promoted = [h.hostname for h in cluster.hosts[1:managers]]
    if promoted:
        ok(first, "node", "promote", *promoted)
        wait_managers_reachable(first, [first.hostname, *promoted])
    wait_for(lambda: all(r["Status"] == "Ready" for r in nodes(first))
             and len(nodes(first)) == len(cluster.hosts),
             60, "every node Ready")


def write_accepted(host: Host, target: str, label: str) -> bool:
    """One write through ``host``: ``node update --label-add <label> <target>``."""
    try:
        r = host.docker("node", "update", "--label-add", label, target, timeout=30)
    except subprocess.TimeoutExpired:
        return False
    return r.returncode == 0
