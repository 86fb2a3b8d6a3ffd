"""``GET /containers/{id}/attach/ws``: websocket attach, as dockerd.

Raw output (never stdcopy frames), binary frames from API 1.28 (text before), stdin from
the client's frames, ``logs``/``stream``, and ``stdin``/``stdout``/``stderr`` honoured from
API 1.42. The client is aiohttp's websocket client over the unix socket. Runs with
``--against-dockerd`` (20.10 speaks API 1.41 at most: the 1.42 test is skipped there).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from tests.harness.daemon import BaseDaemon, DaemonProcess

pytestmark = pytest.mark.root

MAX_COMMON = "v1.41"  # the newest version dockerd 20.10 and wharfd both speak


def _create(daemon: BaseDaemon, body: dict[str, Any]) -> str:
    cid: str = daemon.api_json("POST", "/containers/create", {"Image": "busybox", **body})["Id"]
    return cid


async def _session(daemon: BaseDaemon, path: str,
                   send: bytes | str | None = None, start: str | None = None,
                   ) -> tuple[list[tuple[aiohttp.WSMsgType, Any]], int]:
    """Connect, optionally start the container and send one frame, then read every frame
    until the server closes. Returns (frames, handshake status)."""
    frames: list[tuple[aiohttp.WSMsgType, Any]] = []
    connector = aiohttp.UnixConnector(path=daemon.socket)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.ws_connect(f"http://docker{path}") as ws:
            if start is not None:
                r = await asyncio.to_thread(daemon.api, "POST", f"/containers/{start}/start")
                assert r.status == 204, r.text
            if isinstance(send, bytes):
                await ws.send_bytes(send)
            elif isinstance(send, str):
                await ws.send_str(send)
            while True:
                message = await ws.receive(timeout=20)
                if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                    aiohttp.WSMsgType.CLOSING):
                    break
                frames.append((message.type, message.data))
            return frames, 101


def _data(frames: list[tuple[aiohttp.WSMsgType, Any]]) -> bytes:
    return b"".join(d if isinstance(d, bytes) else d.encode() for _, d in frames)


def _wait_exited(daemon: BaseDaemon, cid: str) -> None:
    deadline = time.monotonic() + 20
    while daemon.api_json("GET", f"/containers/{cid}/json")["State"]["Running"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_stdin_in_raw_binary_frames_out(daemon: BaseDaemon) -> None:
    cid = _create(daemon, {"Cmd": ["sh", "-c", "read line; echo got:$line; echo err >&2"],
                           "OpenStdin": True, "StdinOnce": True})
    try:
        frames, _ = asyncio.run(_session(
            daemon, f"/{MAX_COMMON}/containers/{cid}/attach/ws?stream=1&stdin=1&stdout=1",
            send=b"hello\n", start=cid))
        assert {kind for kind, _ in frames} == {aiohttp.WSMsgType.BINARY}
        output = _data(frames)
        # raw: no stdcopy headers, stdout and stderr both (all streams before API 1.42)
        assert b"got:hello\n" in output and b"err\n" in output
        assert not output.startswith(b"\x01\x00\x00\x00")
    finally:
        daemon.api("DELETE", f"/containers/{cid}?force=1")


def test_text_frames_before_api_1_28_and_text_stdin(daemon: BaseDaemon) -> None:
    cid = _create(daemon, {"Cmd": ["sh", "-c", "read line; echo text:$line"],
                           "OpenStdin": True, "StdinOnce": True})
    try:
        frames, _ = asyncio.run(_session(
            daemon, f"/v1.27/containers/{cid}/attach/ws?stream=1", send="abc\n", start=cid))
        assert frames and {kind for kind, _ in frames} == {aiohttp.WSMsgType.TEXT}
        assert _data(frames) == b"text:abc\n"
    finally:
        daemon.api("DELETE", f"/containers/{cid}?force=1")


def test_logs_replay_of_an_exited_container(daemon: BaseDaemon) -> None:
    cid = _create(daemon, {"Cmd": ["echo", "from-the-log"]})
    try:
        assert daemon.api("POST", f"/containers/{cid}/start").status == 204
        _wait_exited(daemon, cid)
        frames, _ = asyncio.run(_session(
            daemon, f"/{MAX_COMMON}/containers/{cid}/attach/ws?logs=1&stream=0"))
        assert _data(frames) == b"from-the-log\n"
    finally:
        daemon.api("DELETE", f"/containers/{cid}?force=1")


def test_stream_choice_from_api_1_42(daemon: BaseDaemon) -> None:
    if not isinstance(daemon, DaemonProcess):
        pytest.skip("dockerd 20.10 speaks API 1.41 at most")
    cid = _create(daemon, {"Cmd": ["sh", "-c", "sleep 0.5; echo out; echo err >&2"]})
    try:
        frames, _ = asyncio.run(_session(
            daemon, f"/v1.42/containers/{cid}/attach/ws?stream=1&stderr=1", start=cid))
        assert _data(frames) == b"err\n"
    finally:
        daemon.api("DELETE", f"/containers/{cid}?force=1")


def test_no_such_container_is_404_before_the_upgrade(daemon: BaseDaemon) -> None:
    r = daemon.api("GET", f"/{MAX_COMMON}/containers/no-such-ws/attach/ws?stream=1",
                   headers={"Connection": "Upgrade", "Upgrade": "websocket",
                            "Sec-WebSocket-Version": "13",
                            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert r.status == 404
    assert "no-such-ws" in r.json()["message"]
