"""aiohttp names the client of a failed request by its address, empty on a unix socket
("Error handling request from " and nothing after it): api.server names it by the pid
and uid of the process on the other end instead."""

from __future__ import annotations

import os
import socket
from typing import Any

from api.server import _peer_name


class _Transport:
    def __init__(self, extra: dict[str, Any]) -> None:
        self._extra = extra

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)


def test_unix_socket_peer_is_named_by_pid_and_uid() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        name = _peer_name(_Transport({"peername": "", "socket": ours}))  # type: ignore[arg-type]
    finally:
        ours.close()
        theirs.close()
    assert name == f"a unix socket client (pid {os.getpid()}, uid {os.getuid()})"


def test_network_peer_keeps_its_address() -> None:
    name = _peer_name(_Transport({"peername": ("10.0.0.5", 4242)}))  # type: ignore[arg-type]
    assert name == "('10.0.0.5', 4242)"


def test_unknown_peer_still_says_something() -> None:
    assert _peer_name(_Transport({"peername": ""})) == "a unix socket client"  # type: ignore[arg-type]
