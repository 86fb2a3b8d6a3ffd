"""Concurrency on one daemon (reliability.md L1, L2, L5, L6, L13, L14): exact outcomes,
never a 5xx, a consistent end state, every event once and in order, nothing leaked."""

from __future__ import annotations

import json
import os
import random
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.harness import rawhttp
from tests.harness.daemon import BaseDaemon

pytestmark = pytest.mark.root


def _create(daemon: BaseDaemon, name: str, cmd: list[str]) -> rawhttp.Response:
    return daemon.api("POST", f"/containers/create?name={name}",
                      {"Image": "busybox", "Cmd": cmd})


def test_l1_concurrent_lists(daemon: BaseDaemon) -> None:
    with ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(
            lambda _: daemon.api("GET", "/containers/json?all=1").status, range(200)
        ))
    assert statuses == [200] * 200


def test_l2_one_name_many_creates(daemon: BaseDaemon) -> None:
    with ThreadPoolExecutor(50) as pool:
        responses = list(pool.map(lambda _: _create(daemon, "l2same", ["true"]), range(50)))
    statuses = sorted(r.status for r in responses)
    assert statuses == [201] + [409] * 49
    for r in responses:
        if r.status == 409:
            assert "is already in use by container" in r.json()["message"]
    daemon.api("DELETE", "/containers/l2same?force=1")


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_l5_mixed_lifecycle_calls(daemon: BaseDaemon, seed: int) -> None:
    cid = _create(daemon, f"l5-{seed}", ["sleep", "600"]).json()["Id"]
    ops = ["start", "stop?t=1", "kill", "restart?t=1", "pause", "unpause"] * 10
    random.Random(seed).shuffle(ops)
    statuses: list[tuple[str, int, str]] = []
    lock = threading.Lock()

    def call(op: str) -> None:
        resp = daemon.api("POST", f"/containers/{cid}/{op}", timeout=60)
        with lock:
            statuses.append((op, resp.status, resp.text[:200]))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(call, ops))
    bad = [s for s in statuses if s[1] not in (200, 204, 304, 409)]
    assert not bad, bad
    state = daemon.api_json("GET", f"/containers/{cid}/json")["State"]
    if state["Running"]:
        assert state["Pid"] > 0 and os.path.exists(f"/proc/{state['Pid']}")
    else:
        assert state["Pid"] == 0
    daemon.api("DELETE", f"/containers/{cid}?force=1")


def test_l6_concurrent_force_removes(daemon: BaseDaemon) -> None:
    cid = _create(daemon, "l6", ["sleep", "600"]).json()["Id"]
    assert daemon.api("POST", f"/containers/{cid}/start").status == 204
    with ThreadPoolExecutor(5) as pool:
        statuses = sorted(pool.map(
            lambda _: daemon.api("DELETE", f"/containers/{cid}?force=1").status, range(5)
        ))
    assert statuses.count(204) == 1
    assert set(statuses) <= {204, 404, 409}
    assert daemon.api("GET", f"/containers/{cid}/json").status == 404


def test_l13_events_once_in_order_and_l14_no_leaks(daemon: BaseDaemon) -> None:
    since = time.time()
    cids = []
    for i in range(3):
        cid = _create(daemon, f"l13-{i}", ["true"]).json()["Id"]
        cids.append(cid)
        daemon.api("POST", f"/containers/{cid}/start")
        daemon.api("POST", f"/containers/{cid}/wait")
        daemon.api("DELETE", f"/containers/{cid}")
    until = time.time() + 0.5
    filters = urllib.parse.quote(json.dumps({"type": ["container"]}))
    resp = daemon.api("GET", f"/events?since={since:.9f}&until={until:.9f}&filters={filters}",
                      timeout=30)
    events = [json.loads(line) for line in resp.body.splitlines() if line.strip()]
    for cid in cids:
        actions = [e["Action"] for e in events if e["Actor"]["ID"] == cid]
        assert actions == ["create", "start", "die", "destroy"], actions

    pid = daemon.pid
    assert pid is not None
    fds_before = len(os.listdir(f"/proc/{pid}/fd"))
    followers = []
    for _ in range(100):
        conn = rawhttp.Connection(daemon.socket, timeout=10)
        conn.send_request("GET", "/events")
        assert conn.read_head().status == 200
        followers.append(conn)
    for conn in followers:
        conn.close()
    deadline = time.time() + 10
    while time.time() < deadline and len(os.listdir(f"/proc/{pid}/fd")) > fds_before + 2:
        time.sleep(0.1)
    assert len(os.listdir(f"/proc/{pid}/fd")) <= fds_before + 2
    assert Path(f"/proc/{pid}").exists()
