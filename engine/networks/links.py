"""Legacy ``--link`` environment variables, as dockerd 20.10 writes them.

Pure: the container manager passes the linked ("child") container's address on the
default bridge, its ``Config.Env`` and ``ExposedPorts``, and puts the result between
the daemon's defaults (PATH, HOSTNAME, TERM) and the container's own Env, where dockerd
puts it. The order and the quirks are dockerd's (moby ``daemon/links/links.go`` as of
20.10), checked against it with the CLI (tests/compat/test_networks_links.py):

- ``<ALIAS>_PORT`` is the lowest exposed port (tcp first on a tie), udp included;
- a run of at least three consecutive port numbers also gets ``_START``/``_END``
  variables (two consecutive ports do not), whatever their protocols;
- ``<ALIAS>_ENV_<VAR>`` for each of the child's variables except HOME and PATH.

Keys repeat (a range's ``_ADDR`` and the port's own): the caller's merge keeps the first
position and the last value, as runc's de-duplication does for dockerd.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LINK_ENV_FILE = "links.env.json"
"""In the container's bundle, next to hosts and resolv.conf: the link variables of the
current run. ``docker exec`` processes get them too, as with dockerd; the exec side
reads them here because it knows nothing of other containers' addresses."""

# Added by image builds, meaningless in another container (dockerd skips them too).
_SKIPPED_CHILD_ENV = frozenset({"HOME", "PATH"})


@dataclass(frozen=True, order=True)
class _Port:
    number: int
    proto: str

    @property
    def upper(self) -> str:
        return self.proto.upper()


def env_alias(link_name: str) -> str:
    """``/web/my-db`` → ``MY_DB``: the last path element, upper-cased, '-' → '_'."""
    return link_name.rsplit("/", 1)[-1].upper().replace("-", "_")


def _exposed(ports: Iterable[str]) -> list[_Port]:
    """ExposedPorts keys (``80/tcp``) sorted by number, tcp before other protocols."""
    parsed = []
    for key in ports:
        number, _, proto = key.partition("/")
        if number.isdigit():
            parsed.append(_Port(int(number), (proto or "tcp").lower()))
    return sorted(parsed, key=lambda p: (p.number, p.proto != "tcp", p.proto))


def _run_end(ports: Sequence[_Port], index: int) -> int:
    """Index of the last port of the run of consecutive numbers starting at ``index``
    (dockerd compares numbers only, so 80/tcp 81/udp 82/tcp is a run)."""
    expected = ports[index].number
    for i in range(index + 1, len(ports)):
        if ports[i].number > expected + 1:
            return i - 1
        expected += 1
    return len(ports) - 1


def _url(port: _Port, address: str) -> str:
    return f"{port.proto}://{address}:{port.number}"


def _range_env(alias: str, ports: Sequence[_Port], address: str) -> list[str]:
    env: list[str] = []
    i = 0
    while i < len(ports):
        end = _run_end(ports, i)
        if end <= i + 1:
            i += 1
            continue
        first, last = ports[i], ports[end]
        prefix = f"{alias}_PORT_{first.number}_{first.upper}"
        last_prefix = f"{alias}_PORT_{first.number}_{last.upper}"
        env += [
            f"{prefix}_START={_url(first, address)}",
            f"{prefix}_ADDR={address}",
            f"{prefix}_PROTO={first.proto}",
            f"{prefix}_PORT_START={first.number}",
            f"{last_prefix}_END={_url(last, address)}",
            f"{last_prefix}_PORT_END={last.number}",
        ]
        i = end + 1
    return env


def _port_env(alias: str, ports: Sequence[_Port], address: str) -> list[str]:
    env: list[str] = []
    for port in ports:
        prefix = f"{alias}_PORT_{port.number}_{port.upper}"
        env += [
            f"{prefix}={_url(port, address)}",
            f"{prefix}_ADDR={address}",
            f"{prefix}_PORT={port.number}",
            f"{prefix}_PROTO={port.proto}",
        ]
    return env


def _child_env(alias: str, env: Iterable[str]) -> list[str]:
    out = []
    for entry in env:
        key, sep, value = entry.partition("=")
        if sep and key not in _SKIPPED_CHILD_ENV:
            out.append(f"{alias}_ENV_{key}={value}")
    return out


def link_env(link_name: str, address: str, child_env: Sequence[str] | None,
             exposed: Mapping[str, Any] | None) -> list[str]:
    """The variables one link gives: ``link_name`` is dockerd's ``/<container>/<alias>``,
    ``address`` the child's IPv4 address on the default bridge."""
    alias = env_alias(link_name)
    ports = _exposed(exposed or {})
    env: list[str] = []
    if ports:
        env.append(f"{alias}_PORT={_url(ports[0], address)}")
    env += _range_env(alias, ports, address)
    env += _port_env(alias, ports, address)
    env.append(f"{alias}_NAME={link_name}")
    env += _child_env(alias, child_env or [])
    return env


def save(bundle: Path, env: Sequence[str]) -> None:
    """Record the run's link variables (blocking: call in a thread)."""
    (bundle / LINK_ENV_FILE).write_text(json.dumps(list(env)))


def load(bundle: Path) -> list[str]:
    """The variables :func:`save` recorded; none when the file is missing or damaged
    (a container started before this file existed)."""
    try:
        data = json.loads((bundle / LINK_ENV_FILE).read_text())
    except (OSError, ValueError):
        return []
    return [str(e) for e in data] if isinstance(data, list) else []
