"""The API sockets: ``-H unix:///path``, ``-H tcp://host:port`` and ``-H fd://`` (systemd
socket activation), several at once.

TCP sockets serve the same app, over TLS when it is on (``api.tlsconfig``: dockerd's
options, and the refusal of unauthenticated TCP off loopback). As in dockerd, a host
without a scheme is TCP, an empty host is ``localhost`` and a missing port is 2375.

Unix sockets follow dockerd (go-connections ``NewUnixSocket``): the file is bound, then
chmod 0660 and chown root:<group>, and only then does it listen, so no one else can
connect during that window. It listens at once, before the engine has set itself up:
clients that connect early wait in the backlog and are answered when the server starts
accepting (as with dockerd, and as with a socket systemd passes us), instead of being
refused while the file already exists. A stale socket file (no one listening) is
replaced; a socket someone is still listening on, or a non-socket file, is an error.

Activated sockets follow ``sd_listen_fds``: ``LISTEN_PID`` must be our pid, ``LISTEN_FDS``
sockets start at fd 3, and the variables are removed from the environment so that our
children (conmon, runtimes) neither see nor inherit them.
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import socket
import ssl
import stat
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from api.server import BACKLOG, Listener
from engine.config import DEFAULT_SOCKET

log = logging.getLogger(__name__)

SD_LISTEN_FDS_START = 3
DEFAULT_TCP_HOST, DEFAULT_TCP_PORT = "localhost", 2375
SOCKET_MODE = 0o660
DEFAULT_GROUP = "docker"


class ListenerError(Exception):
    """A -H value that cannot be served; the message is shown to the operator."""


@dataclass(frozen=True)
class HostSpec:
    scheme: Literal["unix", "fd", "tcp"]
    address: str  # socket path for unix; "" (all) or an fd number for fd; host:port for tcp

    def __str__(self) -> str:
        return f"{self.scheme}://{self.address}"

    @property
    def tcp_host_port(self) -> tuple[str, int]:
        parts = urlsplit(f"tcp://{self.address}")
        return parts.hostname or DEFAULT_TCP_HOST, parts.port or DEFAULT_TCP_PORT


def _parse_tcp(raw: str, address: str) -> HostSpec:
    invalid = f"Invalid bind address format: {raw}"
    try:
        parts = urlsplit(f"tcp://{address}")
        port = parts.port
    except ValueError:
        raise ListenerError(invalid) from None
    if parts.path or parts.query or parts.fragment or parts.username or port == 0:
        raise ListenerError(invalid)
    host = parts.hostname or DEFAULT_TCP_HOST
    shown = f"[{host}]" if ":" in host else host
    return HostSpec("tcp", f"{shown}:{port or DEFAULT_TCP_PORT}")


def parse_host(raw: str) -> HostSpec:
    value = raw.strip()
    if value == "":
        value = DEFAULT_SOCKET
    scheme, sep, address = value.partition("://")
    if not sep:
        return _parse_tcp(raw, value)  # dockerd: "host:port" is tcp
    scheme = scheme.lower()
    if scheme == "unix":
        path = address or DEFAULT_SOCKET.removeprefix("unix://")
        if not path.startswith("/"):
            raise ListenerError(f"Invalid bind address format: {raw}: the path must be absolute")
        if len(os.fsencode(path)) >= 108:
            raise ListenerError(f"Invalid bind address format: {raw}: the path is too long")
        return HostSpec("unix", path)
    if scheme == "fd":
        if address not in ("", "*") and not address.isdigit():
            raise ListenerError(f"Invalid bind address format: {raw}")
        return HostSpec("fd", "" if address == "*" else address)
    if scheme == "tcp":
        return _parse_tcp(raw, address)
    if scheme in ("http", "https", "ssh", "npipe"):
        raise ListenerError(
            f"{scheme}:// listeners are not supported by wharfd (use unix://, tcp:// or "
            f"fd://): {raw}"
        )
    raise ListenerError(f"Invalid bind address format: {raw}")


def socket_gid(group: str) -> int | None:
    """The gid for the socket, None to keep root's. dockerd: a missing *default* group is a
    warning; a missing group that was asked for is an error."""
    if group == "":
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        if group.isdigit():
            return int(group)
        if group == DEFAULT_GROUP:
            log.warning("could not change group of the API socket to %s: group not found", group)
            return None
        raise ListenerError(f"group {group} not found") from None


def _remove_stale(path: Path) -> None:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ListenerError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise ListenerError(f"cannot check the socket {path}: {exc}") from exc
    else:
        raise ListenerError(f"another daemon is listening on {path}")
    finally:
        probe.close()
    log.info("removing stale socket %s", path)
    path.unlink(missing_ok=True)


def open_unix_listener(path: Path, gid: int | None) -> Listener:
    """Bind, chmod/chown, then listen (the server accepts once the engine is ready)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, SOCKET_MODE)
        owner = 0 if os.geteuid() == 0 else -1
        os.chown(path, owner, gid if gid is not None else os.getegid())
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        path.unlink(missing_ok=True)
        raise ListenerError(f"cannot listen on {path}: {exc}") from exc
    return Listener(sock=sock, name=str(path), path=path)


def open_tcp_listener(spec: HostSpec, tls: ssl.SSLContext | None) -> Listener:
    host, port = spec.tcp_host_port
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except OSError as exc:
        raise ListenerError(f"cannot listen on tcp://{spec.address}: {exc}") from exc
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise ListenerError(f"cannot listen on tcp://{spec.address}: {exc}") from exc
    return Listener(sock=sock, name=str(spec), path=None, tls=tls)


def take_activated_fds(environ: MutableMapping[str, str]) -> list[int]:
    """sd_listen_fds(unset_environment=1): the fds systemd passed us, or []."""
    pid, count = environ.get("LISTEN_PID"), environ.get("LISTEN_FDS")
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        environ.pop(name, None)
    if pid is None or count is None:
        return []
    if not pid.isdigit() or int(pid) != os.getpid() or not count.isdigit():
        return []
    return list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)))


def activated_listeners(
    spec: HostSpec, fds: list[int], tls: ssl.SSLContext | None = None
) -> list[Listener]:
    if not fds:
        raise ListenerError(
            "no sockets found via socket activation: make sure the service was started by systemd"
        )
    chosen = fds
    if spec.address:
        wanted = int(spec.address)
        if wanted not in fds:
            raise ListenerError(f"fd://{wanted} was not passed by systemd (got {fds})")
        chosen = [wanted]
    listeners = []
    for fd in chosen:
        # Children (conmon) must not keep the API socket open after we exit.
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
        if sock.type != socket.SOCK_STREAM:
            raise ListenerError(f"fd {fd} from systemd is not a stream socket")
        # TLS applies to network sockets systemd passes, not to unix ones.
        network = sock.family in (socket.AF_INET, socket.AF_INET6)
        listeners.append(
            Listener(sock=sock, name=f"fd://{fd}", path=None, tls=tls if network else None)
        )
    return listeners


def open_listeners(
    hosts: list[str],
    group: str,
    environ: MutableMapping[str, str],
    tls: ssl.SSLContext | None = None,
) -> list[Listener]:
    """Every -H, in order; ``tls`` wraps the TCP ones. On error, what was opened is closed
    again. (Whether a TCP socket may be opened at all is ``api.tlsconfig``'s question.)"""
    specs = [parse_host(host) for host in hosts]
    fds = take_activated_fds(environ)
    gid = socket_gid(group) if any(s.scheme == "unix" for s in specs) else None
    opened: list[Listener] = []
    used_fds: set[int] = set()
    try:
        for spec in specs:
            if spec.scheme == "unix":
                opened.append(open_unix_listener(Path(spec.address), gid))
                continue
            if spec.scheme == "tcp":
                opened.append(open_tcp_listener(spec, tls))
                continue
            unused = [f for f in fds if f not in used_fds]
            for listener in activated_listeners(spec, unused, tls):
                used_fds.add(listener.sock.fileno())
                opened.append(listener)
    except BaseException:
        close_listeners(opened)
        raise
    return opened


def close_listeners(listeners: list[Listener]) -> None:
    """Close sockets and remove the files we created (never systemd's)."""
    for listener in listeners:
        try:
            listener.sock.close()
        except OSError:
            pass
        if listener.path is not None:
            try:
                listener.path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot remove %s: %s", listener.path, exc)
