"""The OCI runtime and its per-container monitor, as the container manager sees them.

Lifecycle of one container (all paths come from ``engine.layout.Layout``)::

    launch = MonitorLaunch(container_id=..., bundle=..., log_path=..., tty=..., stdin=...)
    handle = await monitor.create(launch, runtime)  # conmon runs `runc create`; returns once the
                                              # init pid is known; raises RuntimeCreateError
    attach = await monitor.attach(handle)     # connect BEFORE start: no output is lost
    await monitor.resize(handle, 40, 120)     # optional, TTY only; works before start
    await runtime.start(handle.container_id)  # `runc start`: created → running
    code = await monitor.wait_exit(handle)    # event driven (pidfd on conmon), exit status
    await runtime.delete(handle.container_id) # forget runtime state
    monitor.cleanup(container_id, bundle)     # remove conmon's leftovers

``load``, ``exit_code`` and ``cleanup`` do small blocking file I/O: call them through
``asyncio.to_thread``.

After a daemon restart the handle is rebuilt from disk with ``monitor.load(container_id)``
(None when conmon is gone), and ``monitor.exit_code(container_id)`` reads the exit file
conmon wrote while the daemon was down.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from engine.errors import EngineError

RuntimeStatus = Literal["creating", "created", "running", "paused", "stopped"]


class RuntimeCreateError(EngineError):
    """`runc create` failed; ``message`` is the runtime's own text (for `docker run` 127/126)."""


@dataclass(frozen=True)
class RuntimeState:
    id: str
    status: RuntimeStatus
    pid: int


class OCIRuntime(Protocol):
    """A runc-compatible CLI (runc, crun), always with our own ``--root``."""

    name: str
    path: str
    root: Path              # passed as --root to every call, and to conmon as a runtime arg

    def global_args(self) -> list[str]:
        """Arguments that precede the verb (``--root``, configured ``runtimeArgs``)."""
    async def version(self) -> str: ...
    async def probe(self) -> None:
        """Raise ``EngineError`` with the runtime's message when it cannot run containers here."""
    async def state(self, container_id: str) -> RuntimeState | None: ...
    async def start(self, container_id: str) -> None: ...
    async def kill(self, container_id: str, signal: int, all_processes: bool = False) -> None: ...
    async def pause(self, container_id: str) -> None: ...
    async def resume(self, container_id: str) -> None: ...
    async def update(self, container_id: str, resources_file: Path) -> None: ...
    async def delete(self, container_id: str, force: bool = False) -> None: ...


@dataclass(frozen=True)
class MonitorLaunch:
    container_id: str
    name: str
    bundle: Path            # holds config.json; conmon puts attach/ctl/winsz here
    log_path: Path | None   # k8s-file log written by conmon; None: no log (driver "none")
    tty: bool = False
    stdin: bool = False     # keep the container's stdin open (conmon -i)
    leave_stdin_open: bool = False
    log_size_max: int | None = None
    extra_runtime_args: Sequence[str] = field(default_factory=tuple)


@dataclass(frozen=True)
class MonitorHandle:
    container_id: str
    conmon_pid: int
    init_pid: int
    bundle: Path


class AttachConnection(Protocol):
    """One connection to conmon's attach socket. Output is (stream, bytes), stream 1|2."""

    async def recv(self) -> tuple[int, bytes] | None:
        """Next output chunk; None at end (container exited, conmon closed the socket)."""
    async def send(self, data: bytes) -> None:
        """Write to the container's stdin (needs ``stdin`` or ``tty`` at launch)."""
    async def close_stdin(self) -> None:
        """Half-close: conmon then closes the container's stdin (unless leave_stdin_open)."""
    def close(self) -> None: ...


class Monitor(Protocol):
    async def create(self, launch: MonitorLaunch, runtime: OCIRuntime) -> MonitorHandle: ...
    async def attach(self, handle: MonitorHandle) -> AttachConnection: ...
    async def resize(self, handle: MonitorHandle, height: int, width: int) -> None: ...
    async def reopen_log(self, handle: MonitorHandle) -> None: ...
    async def wait_exit(self, handle: MonitorHandle) -> int: ...
    def load(self, container_id: str, bundle: Path) -> MonitorHandle | None: ...
    def exit_code(self, container_id: str) -> int | None: ...
    def exit_time(self, container_id: str) -> float | None: ...
    def cleanup(self, container_id: str, bundle: Path) -> None: ...
