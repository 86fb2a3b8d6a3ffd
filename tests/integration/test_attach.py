"""Attach at the wire level: 101 then raw/multiplexed output, half-close, detach keys."""

from __future__ import annotations

import time

import pytest

from tests.harness import rawhttp
from tests.harness.daemon import BaseDaemon

pytestmark = pytest.mark.root


def _create(daemon: BaseDaemon, body: dict[str, object]) -> str:
    cid: str = daemon.api_json("POST", "/containers/create", {"Image": "busybox", **body})["Id"]
    return cid


def _attach(daemon: BaseDaemon, cid: str, query: str) -> rawhttp.Connection:
    conn = rawhttp.Connection(daemon.socket, timeout=20)
    conn.send_request("POST", f"/v1.50/containers/{cid}/attach?{query}",
                      headers={"Connection": "Upgrade", "Upgrade": "tcp"})
    head = conn.read_head()
    assert head.status == 101
    return conn


def test_stdin_before_start_and_half_close(daemon: BaseDaemon) -> None:
    cid = _create(daemon, {"Cmd": ["cat"], "OpenStdin": True, "StdinOnce": True,
                           "AttachStdin": True, "AttachStdout": True})
    try:
        conn = _attach(daemon, cid, "stream=1&stdin=1&stdout=1&stderr=1")
        conn.send_raw(b"line1\nline2\n")
        conn.shutdown_write()  # the CLI half-closes before it even calls start
        assert daemon.api("POST", f"/containers/{cid}/start").status == 204
        out, err = rawhttp.demux(conn.recv_to_eof(timeout=20))
        assert out == b"line1\nline2\n" and err == b""
        conn.close()
        state = daemon.api_json("GET", f"/containers/{cid}/json")["State"]
        deadline = time.time() + 10
        while state["Running"] and time.time() < deadline:
            time.sleep(0.05)
            state = daemon.api_json("GET", f"/containers/{cid}/json")["State"]
        assert state["ExitCode"] == 0
    finally:
        daemon.api("DELETE", f"/containers/{cid}?force=1")


def test_detach_keys_end_the_session_not_the_container(daemon: BaseDaemon) -> None:
    cid = _create(daemon, {"Cmd": ["sh"], "Tty": True, "OpenStdin": True})
    try:
        assert daemon.api("POST", f"/containers/{cid}/start").status == 204
        conn = _attach(daemon, cid, "stream=1&stdin=1&stdout=1&detachKeys=ctrl-a,x")
        conn.send_raw(b"echo mark-$((40+2))\r")
        seen = b""
        deadline = time.time() + 10
        while b"mark-42" not in seen and time.time() < deadline:
            seen += conn.recv_some(timeout=5)
        assert b"mark-42" in seen
        conn.send_raw(b"\x01x")
        rest = conn.recv_to_eof(timeout=10)  # the daemon ends the session
        assert b"x" not in rest.replace(b"\r\n", b"")[-1:]
        conn.close()
        assert daemon.api_json("GET", f"/containers/{cid}/json")["State"]["Running"] is True
    finally:
        daemon.api("DELETE", f"/containers/{cid}?force=1")


def test_bad_detach_keys(daemon: BaseDaemon) -> None:
    cid = _create(daemon, {"Cmd": ["true"]})
    try:
        resp = daemon.api("POST", f"/containers/{cid}/attach?stream=1&detachKeys=ctrl-")
        assert resp.status == 400
        assert "Invalid detach keys" in resp.json()["message"]
    finally:
        daemon.api("DELETE", f"/containers/{cid}?force=1")


def test_exec_detach_keys_leave_the_process_running(daemon: BaseDaemon) -> None:
    cid = _create(daemon, {"Cmd": ["sleep", "600"]})
    try:
        assert daemon.api("POST", f"/containers/{cid}/start").status == 204
        exec_id = daemon.api_json("POST", f"/containers/{cid}/exec", {
            "Cmd": ["sh"], "Tty": True, "AttachStdin": True, "AttachStdout": True,
            "detachKeys": "ctrl-a,x"})["Id"]
        conn = rawhttp.Connection(daemon.socket, timeout=20)
        conn.send_request("POST", f"/v1.50/exec/{exec_id}/start",
                          {"Detach": False, "Tty": True},
                          headers={"Connection": "Upgrade", "Upgrade": "tcp"})
        assert conn.read_head().status == 101
        conn.send_raw(b"echo in-exec-$((6*7))\r")
        seen = b""
        deadline = time.time() + 10
        while b"in-exec-42" not in seen and time.time() < deadline:
            seen += conn.recv_some(timeout=5)
        conn.send_raw(b"\x01x")
        conn.recv_to_eof(timeout=10)
        conn.close()
        time.sleep(0.5)
        assert daemon.api_json("GET", f"/exec/{exec_id}/json")["Running"] is True
    finally:
        daemon.api("DELETE", f"/containers/{cid}?force=1")
