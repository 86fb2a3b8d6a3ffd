"""Pieces of the daemon process that run without a daemon: signal counting, the log
format, and the serving sequence driven by an event instead of a signal."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from api.listeners import close_listeners, open_unix_listener
from api.main import LogfmtFormatter, Signals, _serve_until
from api.notify import Notifier
from engine.config import EngineConfig
from tests.unit.api_fakes import fake_app_factory


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="wt-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_first_signal_stops_third_forces(monkeypatch: pytest.MonkeyPatch) -> None:
    exits: list[int] = []
    monkeypatch.setattr(os, "_exit", exits.append)
    stop = asyncio.Event()
    signals = Signals(stop)
    signals._on_stop(signal.SIGTERM)
    assert stop.is_set() and exits == []
    signals._on_stop(signal.SIGINT)
    assert exits == []
    signals._on_stop(signal.SIGTERM)
    assert exits == [128 + signal.SIGTERM]


def test_logfmt_like_dockerd() -> None:
    record = logging.LogRecord("wharfd", logging.WARNING, __file__, 1, 'say "%s"', ("hi",), None)
    line = LogfmtFormatter().format(record)
    assert line.startswith('time="')
    assert ' level=warning msg="say \\"hi\\""' in line
    debug = logging.LogRecord("api.x", logging.DEBUG, __file__, 1, "m", (), None)
    assert LogfmtFormatter().format(debug).endswith(" module=api.x")


@pytest.mark.asyncio
async def test_serve_ready_then_graceful_stop(short_tmp: Path) -> None:
    config = EngineConfig.model_validate({"data-root": short_tmp, "shutdown-timeout": 2})
    path = short_tmp / "api.sock"
    listener = await asyncio.to_thread(open_unix_listener, path, None)
    notify_path = short_tmp / "notify"
    receiver = await asyncio.to_thread(_datagram, notify_path)
    stop = asyncio.Event()
    task = asyncio.create_task(
        _serve_until(stop, config, fake_app_factory, [listener], Notifier(str(notify_path)))
    )
    try:
        loop = asyncio.get_running_loop()
        assert await asyncio.wait_for(loop.sock_recv(receiver, 64), 5) == b"READY=1"
        connector = aiohttp.UnixConnector(path=str(path))
        async with aiohttp.ClientSession(connector=connector) as session:
            # since=0 replays the fake engine's "start" event; until lies far ahead
            async with session.get("http://d/events?since=0&until=4000000000") as events:
                first = json.loads(await asyncio.wait_for(events.content.readline(), 5))
                assert (first["Type"], first["Action"]) == ("daemon", "start")
                stop.set()
                assert await asyncio.wait_for(loop.sock_recv(receiver, 64), 5) == b"STOPPING=1"
                # the follower ends with the daemon instead of holding the stop up
                assert await asyncio.wait_for(events.content.read(), 5) == b""
        assert await asyncio.wait_for(task, 5) == 0
    finally:
        task.cancel()
        receiver.close()
        await asyncio.to_thread(close_listeners, [listener])


def _datagram(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    return sock
