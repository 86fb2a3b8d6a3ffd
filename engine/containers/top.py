"""``docker top``: ``ps`` on the host, rows kept for the container's processes.

As dockerd: ``ps_args`` (default ``-ef``) split on spaces, first run with ``-q <pids>``
(only the container's processes) and, when that fails (some options cannot be combined
with ``-q``), again without it. Rows are kept whose PID column names a process of the
container's cgroup; a row whose PID is ``-`` (a thread line) follows the row above it.
The last column keeps its spaces (joined by one). A ``ps`` failure is a 500 with the
first line of its stderr, prefixed ``ps: ``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from engine.errors import InvalidParameter, SystemError_

PS_TIMEOUT = 30.0
DEFAULT_PS_ARGS = "-ef"
# v1 hierarchies whose cgroup.procs list the container's processes, best first.
V1_PROC_CONTROLLERS = ("pids", "memory", "cpu", "cpuacct", "devices", "freezer", "blkio")
_ASCII_SPACE = re.compile(r"[ \t\n\v\f\r]+")
_PID_HEADER = re.compile(r"\s+([^\s]*)=\s*(PID[^\s]*)")


def validate_ps_args(ps_args: str) -> None:
    """Refuse renaming another column to PID (``-o user=PID``): the filter would read it."""
    for key, value in _PID_HEADER.findall(ps_args):
        if key != "pid":
            raise InvalidParameter(f'specifying "{key}={value}" is not allowed')


def procs_dir(version: str, dirs: Mapping[str, Path]) -> Path | None:
    """The cgroup directory whose ``cgroup.procs`` lists the container's processes."""
    if version == "2":
        return dirs.get("")
    for controller in V1_PROC_CONTROLLERS:
        candidate = dirs.get(controller)
        if candidate is not None and (candidate / "cgroup.procs").exists():
            return candidate
    return None


def container_pids(directory: Path | None) -> set[int]:
    """PIDs in ``directory``'s cgroup and every cgroup below it (blocking)."""
    pids: set[int] = set()
    if directory is None:
        return pids
    for current, _, _ in os.walk(directory):
        try:
            text = Path(current, "cgroup.procs").read_text()
        except OSError:
            continue  # removed meanwhile
        pids.update(int(line) for line in text.split() if line.isdigit())
    return pids


def _fields(line: str) -> list[str]:
    return [f for f in _ASCII_SPACE.split(line) if f]


def parse_ps_output(output: str, pids: Iterable[int]) -> dict[str, Any]:
    """``ps`` output → ``{"Titles": [...], "Processes": [[...], ...]}`` for ``pids``."""
    wanted = set(pids)
    lines = [line for line in output.splitlines() if line.strip()]
    if not lines:
        raise SystemError_("Couldn't find PID field in ps output")
    titles = _fields(lines[0])
    if "PID" not in titles:
        raise SystemError_("Couldn't find PID field in ps output")
    pid_index = titles.index("PID")
    processes: list[list[str]] = []
    keep_threads = False
    for line in lines[1:]:
        fields = _fields(line)
        if len(fields) <= pid_index:
            continue
        if fields[pid_index] == "-":
            if keep_threads:
                processes.append(_row(fields, len(titles)))
            continue
        try:
            pid = int(fields[pid_index])
        except ValueError:
            raise SystemError_(f"Unexpected pid '{fields[pid_index]}'") from None
        keep_threads = pid in wanted
        if keep_threads:
            processes.append(_row(fields, len(titles)))
    return {"Titles": titles, "Processes": processes}


def _row(fields: list[str], columns: int) -> list[str]:
    if len(fields) <= columns:
        return fields
    return [*fields[:columns - 1], " ".join(fields[columns - 1:])]


async def _run_ps(args: list[str]) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        "ps", *args, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), PS_TIMEOUT)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out, err


async def top(ps_args: str, pids: set[int]) -> dict[str, Any]:
    """Run ``ps`` and keep the container's rows."""
    args = [a for a in (ps_args or DEFAULT_PS_ARGS).split(" ") if a]
    code, out, err = await _run_ps([*args, "-q", ",".join(str(p) for p in sorted(pids))])
    if code != 0:
        code, out, err = await _run_ps(args)
        if code != 0:
            first = err.decode(errors="replace").split("\n", 1)[0].strip()
            raise SystemError_(f"ps: {first or f'exit status {code}'}")
    return parse_ps_output(out.decode(errors="replace"), pids)
