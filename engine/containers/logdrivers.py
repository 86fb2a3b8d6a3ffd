"""Docker's log drivers on top of conmon's log file.

conmon writes every container's output to ``containers/<id>/ctr.log`` (k8s-file format)
and reopens that file when told to (ctl FIFO, ``2 0 0``). The engine provides the
drivers a user asks for:

* ``json-file`` (the default; the name docker-py keys on) and ``local``: the same file,
  rotated by the engine when it passes ``max-size`` — ``ctr.log`` becomes ``ctr.log.1``,
  older ones shift up to ``max-file - 1`` and, with ``compress``, are gzipped from ``.2``
  on; then conmon reopens a fresh ``ctr.log``. ``local`` defaults to 20 MB x 5, compressed,
  as Docker's does.
* ``none``: conmon writes no log; `docker logs` answers 501 as dockerd does.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import InvalidParameter

READABLE_DRIVERS = frozenset({"json-file", "local"})
DRIVERS = READABLE_DRIVERS | {"none"}
_OPTIONS = {
    "json-file": {"max-size", "max-file", "compress", "labels", "labels-regex", "env",
                  "env-regex", "tag"},
    "local": {"max-size", "max-file", "compress"},
    "none": set(),
}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)$", re.IGNORECASE)
_BINARY_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}


@dataclass(frozen=True)
class LogSettings:
    driver: str
    max_size: int | None = None     # bytes; None: never rotate
    max_file: int = 1
    compress: bool = False

    @property
    def readable(self) -> bool:
        return self.driver in READABLE_DRIVERS

    @property
    def writes_file(self) -> bool:
        return self.driver != "none"


def parse_size(text: str) -> int:
    """Docker's RAMInBytes: "10m" is 10 MiB (units are binary, "b"/"ib" optional)."""
    match = _SIZE.match(text.strip())
    if not match:
        raise InvalidParameter(
            f"failed to initialize logging driver: invalid size: '{text}'"
        )
    number, unit, _suffix = match.groups()
    return int(float(number) * _BINARY_UNITS[unit.lower()])


def settings(log_config: Mapping[str, Any]) -> LogSettings:
    """Check a ``HostConfig.LogConfig`` as dockerd does at create."""
    driver = str(log_config.get("Type") or "json-file")
    options = {str(k): str(v) for k, v in dict(log_config.get("Config") or {}).items()}
    if driver not in DRIVERS:
        raise InvalidParameter(f"logger: no log driver named '{driver}' is registered")
    for key in options:
        if key not in _OPTIONS[driver]:
            raise InvalidParameter(f"unknown log opt '{key}' for {driver} log driver")
    defaults = {"max-size": "20m", "max-file": "5", "compress": "true"} if driver == "local" else {}
    merged = {**defaults, **options}
    max_size = parse_size(merged["max-size"]) if "max-size" in merged else None
    try:
        max_file = int(merged.get("max-file", "1"))
    except ValueError:
        raise InvalidParameter(f"invalid value for max-file: {merged['max-file']}") from None
    if max_file < 1:
        raise InvalidParameter("max-file cannot be less than 1")
    compress = merged.get("compress", "false").lower() in ("1", "true", "yes")
    if compress and driver == "json-file" and max_size is None:
        raise InvalidParameter("compress can only be used with max-size")
    if max_size is not None and max_size <= 0:
        max_size = None
    return LogSettings(driver=driver, max_size=max_size, max_file=max_file, compress=compress)


def with_daemon_defaults(
    log_config: Mapping[str, Any], driver: str, options: Mapping[str, str]
) -> dict[str, Any]:
    """An empty LogConfig.Type takes the daemon's log-driver and log-opts (daemon.json)."""
    if log_config.get("Type"):
        return {"Type": log_config["Type"], "Config": dict(log_config.get("Config") or {})}
    return {"Type": driver, "Config": {**options, **dict(log_config.get("Config") or {})}}


def details_prefix(
    log_config: Mapping[str, Any], labels: Mapping[str, str], env: list[str]
) -> bytes:
    """`docker logs --details`: the ``k=v,…`` attributes the ``labels``/``env`` options
    pick, sorted, URL-query-escaped, then a space (empty when there are none)."""
    from urllib.parse import quote_plus as quote  # Go url.QueryEscape

    options = {str(k): str(v) for k, v in dict(log_config.get("Config") or {}).items()}
    attributes: dict[str, str] = {}
    for key in filter(None, options.get("labels", "").split(",")):
        if key in labels:
            attributes[key] = labels[key]
    if pattern := options.get("labels-regex"):
        attributes.update({k: v for k, v in labels.items() if re.search(pattern, k)})
    env_map = dict(_split_env(item) for item in env if "=" in item)
    for key in filter(None, options.get("env", "").split(",")):
        if key in env_map:
            attributes[key] = env_map[key]
    if pattern := options.get("env-regex"):
        attributes.update({k: v for k, v in env_map.items() if re.search(pattern, k)})
    if not attributes:
        return b""
    text = ",".join(f"{quote(k)}={quote(v)}" for k, v in sorted(attributes.items()))
    return text.encode() + b" "


def _split_env(item: str) -> tuple[str, str]:
    key, _, value = item.partition("=")
    return key, value


def rotated_files(log_path: Path) -> list[Path]:
    """Rotated files of a log, oldest first (``ctr.log.3.gz``, ``ctr.log.2``, ``ctr.log.1``)."""
    found: list[tuple[int, Path]] = []
    for entry in log_path.parent.glob(log_path.name + ".*"):
        suffix = entry.name[len(log_path.name) + 1:]
        number = suffix.removesuffix(".gz")
        if number.isdigit():
            found.append((int(number), entry))
    return [path for _, path in sorted(found, reverse=True)]


def needs_rotation(log_path: Path, log: LogSettings) -> bool:
    if log.max_size is None:
        return False
    try:
        return log_path.stat().st_size >= log.max_size
    except FileNotFoundError:
        return False


def rotate(log_path: Path, log: LogSettings) -> None:
    """Shift ``ctr.log`` → ``.1`` → ``.2`` …, dropping what exceeds ``max-file``.

    Blocking. The caller tells conmon to reopen right after; until then conmon keeps
    writing to the renamed file (same inode), so nothing is lost.
    """
    keep = log.max_file - 1
    for path in rotated_files(log_path):
        number = int(path.name[len(log_path.name) + 1:].removesuffix(".gz"))
        if number >= keep:
            path.unlink(missing_ok=True)
    for number in range(keep - 1, 0, -1):
        for gz in (".gz", ""):
            source = log_path.with_name(f"{log_path.name}.{number}{gz}")
            if source.exists():
                target = log_path.with_name(f"{log_path.name}.{number + 1}{gz}")
                os.replace(source, target)
                if log.compress and not gz:
                    _gzip(target)
    if keep >= 1:
        os.replace(log_path, log_path.with_name(log_path.name + ".1"))
    else:
        # max-file 1: the old content goes; conmon's reopen starts an empty file.
        os.replace(log_path, log_path.with_name(log_path.name + ".old"))
        log_path.with_name(log_path.name + ".old").unlink()


def _gzip(path: Path) -> None:
    target = path.with_name(path.name + ".gz")
    with open(path, "rb") as source, gzip.open(target, "wb", compresslevel=6) as sink:
        shutil.copyfileobj(source, sink, 1 << 20)
    path.unlink()


def remove_rotated(log_path: Path) -> None:
    for path in rotated_files(log_path):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
