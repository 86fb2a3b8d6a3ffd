"""ExecManager: ``docker exec`` — extra processes in a running container.

Each started exec runs under a conmon of its own (docs: conmon-notes.md §5), in a session
directory ``<exec-root>/conmon/<container>/exec/<exec id>`` that goes away with the session
(and with the container's own conmon directory at the latest). The process object handed
to ``runc exec`` starts from the container's own (so capabilities, rlimits and
no-new-privileges match the container's, and runc applies the container's seccomp) and
then gets the exec's command, environment, user, working directory and terminal.

Records live in memory only, as in dockerd: after a daemon restart exec ids are unknown.
A finished exec stays inspectable for ``RETENTION`` seconds (the CLI inspects it right
after its output ends, for the exit code); records of a container that stopped or was
removed go away, except finished ones, which dockerd also keeps until its GC.

The exit code is recorded before ``start`` returns, so the API closes the hijacked
stream only after ``GET /exec/{id}/json`` can report it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import logging
import posixpath
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from engine.containers import detachkeys, runspec, spec
from engine.containers.model import ContainerView
from engine.containers.state import Status
from engine.containers.streams import STDOUT, StreamSet
from engine.errors import Conflict, EngineError, InvalidParameter, NotFound, SystemError_
from engine.events import EventBus
from engine.ids import new_id
from engine.layout import Layout
from engine.networks import links
from engine.runtime.base import OCIRuntime
from engine.runtime.conmon import (
    LOST_EXIT_CODE,
    ConmonAttachConnection,
    ConmonExecSession,
    ConmonMonitor,
    ExecLaunch,
    ExecStartError,
)

log = logging.getLogger(__name__)

RETENTION = 300.0
"""Seconds a finished exec stays inspectable (dockerd's GC removes them after 5 to 10 min)."""

START_FAILED_EXIT_CODE = 126
"""dockerd 20.10 reports 126 for every exec that could not start (checked: a missing
command, a missing user and a bad working directory all give 126)."""

MONITOR_EXIT_TIMEOUT = 5.0
"""How long a session's conmon may take to exit after reporting the exit status (its
directory is removed only then)."""

ExecState = Literal["created", "starting", "running", "exited"]

# moby/term's names for control keys: index = the byte.

class ContainerSource(Protocol):
    """What exec needs of the container manager."""

    def get(self, ref: str) -> ContainerView: ...
    def runtime_name(self, view: ContainerView) -> str: ...


# --- the request ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ExecConfig:
    """Docker's ExecConfig, checked."""

    cmd: tuple[str, ...]
    env: tuple[str, ...] = ()
    user: str = ""
    working_dir: str = ""
    tty: bool = False
    attach_stdin: bool = False
    attach_stdout: bool = False
    attach_stderr: bool = False
    privileged: bool = False
    detach_keys: str = ""
    console_size: tuple[int, int] | None = None

    @property
    def entrypoint(self) -> str:
        return self.cmd[0]

    @property
    def arguments(self) -> list[str]:
        return list(self.cmd[1:])

    @property
    def command_line(self) -> str:
        """What the exec_create/exec_start events show: dockerd joins entrypoint and
        arguments with one space, so a bare command keeps a trailing space."""
        return f"{self.entrypoint} {' '.join(self.arguments)}"


def _get(body: Mapping[str, Any], key: str) -> Any:
    """Go decodes JSON object keys case-insensitively; docker-py sends ``detachKeys``."""
    if key in body:
        return body[key]
    lowered = key.lower()
    for name, value in body.items():
        if name.lower() == lowered:
            return value
    return None


def _str_list(body: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = _get(body, key)
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidParameter(f"{key} must be a list of strings")
    return tuple(value)


def _str(body: Mapping[str, Any], key: str) -> str:
    value = _get(body, key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidParameter(f"{key} must be a string")
    return value


def _bool(body: Mapping[str, Any], key: str) -> bool:
    value = _get(body, key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidParameter(f"{key} must be a boolean")
    return value


def console_size(value: Any) -> tuple[int, int] | None:
    """``ConsoleSize: [height, width]``; None when absent or ``[0, 0]``."""
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                       for v in value)):
        raise InvalidParameter("ConsoleSize must be [height, width]")
    height, width = value
    return (height, width) if height and width else None


def detach_key_bytes(keys: str) -> bytes:
    """The byte sequence of a ``--detach-keys`` value ("ctrl-p,ctrl-q", "a,ctrl-@")."""
    if not keys:
        return b""
    try:
        return detachkeys.parse(keys)
    except InvalidParameter:
        raise InvalidParameter(f"Invalid escape keys ({keys}) provided") from None


def parse_exec_config(body: Mapping[str, Any]) -> ExecConfig:
    cmd = _str_list(body, "Cmd")
    if not cmd:
        raise InvalidParameter("No exec command specified")
    env = _str_list(body, "Env")
    spec.validate_env(env)
    config = ExecConfig(
        cmd=cmd,
        env=env,
        user=_str(body, "User"),
        working_dir=_str(body, "WorkingDir"),
        tty=_bool(body, "Tty"),
        attach_stdin=_bool(body, "AttachStdin"),
        attach_stdout=_bool(body, "AttachStdout"),
        attach_stderr=_bool(body, "AttachStderr"),
        privileged=_bool(body, "Privileged"),
        detach_keys=_str(body, "DetachKeys"),
        console_size=console_size(_get(body, "ConsoleSize")),
    )
    detach_key_bytes(config.detach_keys)
    return config


# --- the process ----------------------------------------------------------------------------
def exec_process(
    base: Mapping[str, Any],
    config: ExecConfig,
    *,
    hostname: str,
    container_env: Sequence[str],
    user: spec.ProcessUser,
    all_capabilities: Sequence[str],
    size: tuple[int, int] | None,
) -> dict[str, Any]:
    """The OCI process for ``runc exec``, from the container's own process ``base``.

    Environment as dockerd builds it for an exec: PATH/HOSTNAME (TERM with a tty), then the
    container's Env, then the exec's Env, then HOME of the exec's user. Privileged gets
    every capability the daemon has, as a privileged container does.
    """
    process = copy.deepcopy(dict(base))
    process["terminal"] = config.tty
    process["args"] = list(config.cmd)
    process["env"] = spec.process_env(
        [*container_env, *config.env], hostname, config.tty, user.home
    )
    if config.working_dir:
        process["cwd"] = posixpath.normpath(config.working_dir)
    else:
        process["cwd"] = base.get("cwd") or "/"
    process["user"] = {
        "uid": user.uid,
        "gid": user.gid,
        "additionalGids": list(user.additional_gids or (user.gid,)),
    }
    if config.privileged:
        caps = list(all_capabilities)
        process["capabilities"] = {"bounding": caps, "effective": caps, "permitted": caps}
        process.pop("apparmorProfile", None)
    process.pop("consoleSize", None)
    if config.tty and size is not None:
        process["consoleSize"] = {"height": size[0], "width": size[1]}
    return process


def _container_process(bundle: Path) -> dict[str, Any]:
    try:
        data = json.loads((bundle / "config.json").read_bytes())
    except FileNotFoundError:
        return {}
    process = data.get("process") if isinstance(data, dict) else None
    return process if isinstance(process, dict) else {}


# --- records -------------------------------------------------------------------------------
@dataclass(eq=False)
class ExecRecord:
    id: str
    container_id: str
    container_run: str  # the container's StartedAt at create: which run this exec belongs to
    config: ExecConfig
    state: ExecState = "created"
    pid: int = 0
    exit_code: int | None = None
    size: tuple[int, int] | None = None  # the latest console size asked for
    size_applied: tuple[int, int] | None = None  # the size the pty got at launch
    session: ConmonExecSession | None = None
    launched: asyncio.Future[ConmonExecSession] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def active(self) -> bool:
        return self.state in ("starting", "running")


class ExecManager:
    def __init__(
        self,
        containers: ContainerSource,
        monitor: ConmonMonitor,
        layout: Layout,
        events: EventBus,
        runtimes: Mapping[str, OCIRuntime],
    ) -> None:
        self._containers = containers
        self._monitor = monitor
        self._layout = layout
        self._events = events
        self._runtimes = runtimes
        self._records: dict[str, ExecRecord] = {}
        self._runners: set[asyncio.Task[None]] = set()
        self._expiry: dict[str, asyncio.TimerHandle] = {}
        self._closed = False

    # ------------------------------------------------------------------ create
    def create(self, container_ref: str, body: Mapping[str, Any]) -> str:
        config = parse_exec_config(body)
        view = self._running_container(container_ref)
        self._sweep()
        record = ExecRecord(
            id=new_id(), container_id=view.id, container_run=view.state.started_at,
            config=config, size=config.console_size,
        )
        self._records[record.id] = record
        self._emit(view, f"exec_create: {config.command_line}", {"execID": record.id})
        return record.id

    def _running_container(self, ref: str) -> ContainerView:
        """dockerd's checks, in its order and words (reliability.md B18)."""
        view = self._containers.get(ref)
        if view.state.status == Status.RESTARTING:
            raise Conflict(
                f"Container {view.id} is restarting, wait until the container is running"
            )
        if not view.running:
            raise Conflict(f"Container {view.id} is not running")
        if view.state.status == Status.PAUSED:
            raise Conflict(f"Container {ref} is paused, unpause the container before exec")
        return view

    # ------------------------------------------------------------------ read side
    def get(self, exec_id: str) -> ExecRecord:
        record = self._records.get(exec_id)
        if record is None or self._stale(record):
            if record is not None:
                self._drop(record.id)
            raise NotFound(f"No such exec instance: {exec_id}")
        return record

    def inspect(self, exec_id: str) -> dict[str, Any]:
        record = self.get(exec_id)
        cfg = record.config
        process: dict[str, Any] = {
            "tty": cfg.tty,
            "entrypoint": cfg.entrypoint,
            "arguments": cfg.arguments,
            "privileged": cfg.privileged,
        }
        if cfg.user:
            process["user"] = cfg.user
        return {
            "ID": record.id,
            "Running": record.active,
            "ExitCode": record.exit_code,
            "ProcessConfig": process,
            "OpenStdin": cfg.attach_stdin,
            "OpenStderr": cfg.attach_stderr,
            "OpenStdout": cfg.attach_stdout,
            "CanRemove": False,
            "ContainerID": record.container_id,
            # Go marshals the []byte as base64 ("" when none were given).
            "DetachKeys": base64.b64encode(detach_key_bytes(cfg.detach_keys)).decode(),
            "Pid": record.pid,
        }

    def exec_ids(self, container_id: str) -> list[str]:
        """The container's execs that have not finished (container inspect's ExecIDs)."""
        return [
            r.id for r in list(self._records.values())
            if r.container_id == container_id and r.state != "exited" and not self._stale(r)
        ]

    def _stale(self, record: ExecRecord) -> bool:
        """A record that no longer belongs to a live container run. Finished records stay
        (until RETENTION) unless the container is gone; running ones end by themselves."""
        if record.active:
            return False
        try:
            view = self._containers.get(record.container_id)
        except NotFound:
            return True
        if record.state == "exited":
            return False
        return not view.running or view.state.started_at != record.container_run

    def _sweep(self) -> None:
        for record in list(self._records.values()):
            if self._stale(record):
                self._drop(record.id)

    def _drop(self, exec_id: str) -> None:
        self._records.pop(exec_id, None)
        handle = self._expiry.pop(exec_id, None)
        if handle is not None:
            handle.cancel()

    # ------------------------------------------------------------------ start
    def check_start(self, exec_id: str) -> ExecRecord:
        """Raise what ``start`` would refuse with (the API asks before it hijacks)."""
        record = self.get(exec_id)
        if record.active:
            raise Conflict(f"Error: Exec command {exec_id} is already running")
        if record.state == "exited":
            raise Conflict(f"Error: Exec command {exec_id} has already run")
        self._running_container(record.container_id)
        return record

    async def start(
        self,
        exec_id: str,
        streams: StreamSet | None,
        *,
        detach: bool = False,
        tty: bool | None = None,
        size: tuple[int, int] | None = None,
    ) -> None:
        """Run the exec. Detached (or without streams): return once the process runs; a
        watcher records its exit. Attached: relay output (and stdin) through ``streams``
        until it exits; the exit code is recorded before this returns. A process that
        cannot start is an ``EngineError`` when detached; attached, its error text goes
        to the client as output (as dockerd does) and the exec's exit code is 126.

        ``tty`` (the start body's) only decides the framing, which is the API's business.
        """
        del tty
        if self._closed:
            raise Conflict("the daemon is shutting down")
        record = self.check_start(exec_id)
        view = self._containers.get(record.container_id)
        if size is not None:
            record.size = size
        record.state = "starting"
        launched: asyncio.Future[ConmonExecSession] = asyncio.get_running_loop().create_future()
        launched.add_done_callback(_consume)  # retrieved even if our caller is cancelled
        record.launched = launched
        self._emit(view, f"exec_start: {record.config.command_line}", {"execID": record.id})
        attach = not detach and streams is not None
        # Launch and exit watch run in a task of ours: a client that goes away mid-launch
        # must not leave a process that nobody watches.
        runner = asyncio.create_task(self._run(record, view, attach), name=f"exec-{exec_id}")
        self._runners.add(runner)
        runner.add_done_callback(self._runners.discard)
        try:
            session = await asyncio.shield(launched)
        except EngineError as exc:
            if not attach or streams is None:
                raise _detached_error(exc) from None
            await _write_error(streams, _client_message(exc))
            return
        except asyncio.CancelledError:
            launched.add_done_callback(_close_unrelayed)
            raise
        if attach and streams is not None:
            try:
                await self._relay(record, session, streams)
            finally:
                if session.connection is not None:
                    session.connection.close()

    async def _run(self, record: ExecRecord, view: ContainerView, attach: bool) -> None:
        """Launch, then wait for the exit and record it (state, exit code, exec_die)."""
        assert record.launched is not None
        launched = record.launched
        session_dir = self._session_dir(record)
        session: ConmonExecSession | None = None
        try:
            session = await self._launch(record, view, session_dir, attach)
        except Exception as exc:
            if not isinstance(exc, EngineError):
                log.exception("exec %s: launch failed", record.id)
                exc = SystemError_(f"exec failed: {exc}")
            self._finish(record, START_FAILED_EXIT_CODE, emit=False)
            launched.set_exception(exc)
        except BaseException:
            launched.set_exception(Conflict("the daemon is shutting down"))
            raise
        finally:
            if session is None:
                await _shielded(asyncio.to_thread(self._monitor.cleanup_exec, session_dir))
        if session is None:
            return
        record.session = session
        record.pid = session.pid
        record.state = "running"
        launched.set_result(session)
        # A resize that came in during the launch is applied on the side: when the
        # process is already gone, conmon's ctl FIFO has no reader and the write is
        # retried for a while, which must not delay the exit code.
        resizing = asyncio.create_task(self._apply_pending_size(record, session))
        try:
            code = await session.wait_exit()
        except asyncio.CancelledError:
            # Daemon shutdown: the process runs on; an attached relay ends with us.
            session.close()
            record.done.set()
            raise
        except Exception:
            log.exception("exec %s: watching the process failed", record.id)
            code = LOST_EXIT_CODE
        finally:
            resizing.cancel()
        self._finish(record, code, emit=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(MONITOR_EXIT_TIMEOUT):
                await session.wait_monitor()
        session.close_sync()
        await _shielded(asyncio.to_thread(self._monitor.cleanup_exec, session_dir))

    def _finish(self, record: ExecRecord, code: int, *, emit: bool) -> None:
        """Record the exit, then wake the attached relay: the API closes the client's
        stream only once ExitCode is visible to `GET /exec/{id}/json`."""
        record.exit_code = code
        record.state = "exited"
        if emit:
            self._emit_die(record, code)
        record.done.set()
        self._expire_later(record.id)

    async def _launch(
        self, record: ExecRecord, view: ContainerView, session_dir: Path, attach: bool
    ) -> ConmonExecSession:
        runtime = self._runtimes.get(self._containers.runtime_name(view))
        if runtime is None:
            raise SystemError_(f"runtime {self._containers.runtime_name(view)} is not available")
        size = record.size_applied = record.size
        process = await asyncio.to_thread(self._build_process, record.config, view, size)
        cfg = record.config
        launch = ExecLaunch(
            container_id=view.id, exec_id=record.id, name=view.name,
            session_dir=session_dir, process=process, tty=cfg.tty,
            stdin=attach and cfg.attach_stdin, attach=attach,
        )
        return await self._monitor.exec(launch, runtime)

    def _build_process(
        self, cfg: ExecConfig, view: ContainerView, size: tuple[int, int] | None
    ) -> dict[str, Any]:
        """Blocking (reads config.json and the rootfs's passwd/group): run in a thread."""
        base = _container_process(self._layout.container_dir(view.id))
        if not base:
            raise Conflict(f"Container {view.id} is not running")
        user = spec.lookup_user(
            self._layout.container_rootfs(view.id),
            cfg.user or view.config.config.get("User") or "",
            view.config.host_config.get("GroupAdd") or [],
        )
        return exec_process(
            base, cfg,
            hostname=view.config.config.get("Hostname") or view.id[:12],
            # --link variables of the current run first, as dockerd's exec has them
            container_env=[*links.load(self._layout.container_dir(view.id)),
                           *(view.config.config.get("Env") or [])],
            user=user,
            all_capabilities=runspec.host_facts().capabilities,
            size=size,
        )

    async def _apply_pending_size(self, record: ExecRecord, session: ConmonExecSession) -> None:
        """A resize that arrived while the process was being launched (the launch gave
        the pty the size known then)."""
        size = record.size
        if record.config.tty and size is not None and size != record.size_applied:
            record.size_applied = size
            with contextlib.suppress(EngineError):
                await self._monitor.resize(session.handle, *size)

    def _session_dir(self, record: ExecRecord) -> Path:
        return self._layout.conmon_dir(record.container_id) / "exec" / record.id

    def _expire_later(self, exec_id: str) -> None:
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        self._expiry[exec_id] = loop.call_later(RETENTION, self._drop, exec_id)

    # ------------------------------------------------------------------ attached relay
    async def _relay(
        self, record: ExecRecord, session: ConmonExecSession, streams: StreamSet
    ) -> None:
        conn = session.connection
        assert conn is not None
        cfg = record.config
        output = asyncio.create_task(_pump_output(conn, streams, cfg))
        helpers: list[asyncio.Task[Any]] = []
        watched: set[asyncio.Task[Any]] = {output}
        if cfg.attach_stdin and streams.read_stdin is not None:
            # With a TTY the detach keys (default ctrl-p,ctrl-q) end this session, not
            # the process, as in dockerd.
            keys = detachkeys.parse(cfg.detach_keys) if cfg.tty else b""
            stdin = asyncio.create_task(_pump_stdin(conn, streams, keys))
            helpers.append(stdin)
            watched.add(stdin)
        else:
            stdin = None
        if streams.wait_closed is not None:
            gone = asyncio.ensure_future(streams.wait_closed())
            helpers.append(gone)
            watched.add(gone)
        try:
            while True:
                done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
                if stdin is None or stdin not in done or done - {stdin}:
                    break
                if stdin.result():
                    return  # detached: the process goes on, the client's session ends
                watched.discard(stdin)  # the client's input ended: keep relaying output
            if not (output.done() and output.result()):
                # The client went away. As with dockerd the process runs on (its stdin is
                # closed with our connection); the runner records its exit later.
                return
            await record.done.wait()
        finally:
            for task in [output, *helpers]:
                task.cancel()
            for task in [output, *helpers]:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    # ------------------------------------------------------------------ resize
    async def resize(self, exec_id: str, height: int, width: int) -> None:
        """Apply now, or keep for the launch when the process does not run yet (the CLI
        resizes right after start, possibly before the process exists)."""
        if height < 0 or width < 0:
            raise InvalidParameter("resize: height and width must not be negative")
        record = self.get(exec_id)
        record.size = (height, width) if height and width else record.size
        session = record.session
        if record.state != "running" or session is None or not record.config.tty:
            return
        with contextlib.suppress(Conflict):  # it ended meanwhile
            await self._monitor.resize(session.handle, height, width)

    # ------------------------------------------------------------------ events
    def _emit(self, view: ContainerView, action: str, extra: Mapping[str, str]) -> None:
        attributes = dict(view.config.labels)
        attributes["image"] = view.config.image_ref
        attributes["name"] = view.name
        attributes.update(extra)
        self._events.emit("container", action, view.id, attributes)

    def _emit_die(self, record: ExecRecord, code: int) -> None:
        try:
            view = self._containers.get(record.container_id)
        except NotFound:
            return
        self._emit(view, "exec_die", {"execID": record.id, "exitCode": str(code)})

    # ------------------------------------------------------------------ close
    async def close(self) -> None:
        """End every session we follow; the processes themselves keep running (like the
        containers, with live-restore) and their conmons clean up after them."""
        self._closed = True
        runners = list(self._runners)
        for task in runners:
            task.cancel()
        for task in runners:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for record in self._records.values():
            if record.session is not None and record.active:
                record.session.close()
        for handle in self._expiry.values():
            handle.cancel()
        self._expiry.clear()


# --- stream helpers ---------------------------------------------------------------------------
def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _close_unrelayed(future: asyncio.Future[ConmonExecSession]) -> None:
    """The launch finished after the client's start request was cancelled."""
    if not future.cancelled() and future.exception() is None:
        connection = future.result().connection
        if connection is not None:
            connection.close()


async def _shielded(work: Awaitable[None]) -> None:
    """Cleanup that must finish even when the task is being cancelled."""
    await asyncio.shield(work)


def _detached_error(exc: EngineError) -> EngineError:
    """dockerd answers a detached start whose process could not start with a 400."""
    if isinstance(exc, ExecStartError):
        return InvalidParameter(_client_message(exc))
    return exc


def _client_message(exc: EngineError) -> str:
    if isinstance(exc, ExecStartError):
        return f"OCI runtime exec failed: {exc.message}: unknown"
    return exc.message


async def _write_error(streams: StreamSet, message: str) -> None:
    """dockerd writes a failed start's error on stdout, CRLF-terminated."""
    with contextlib.suppress(ConnectionError, OSError):
        await streams.write_output(STDOUT, (message + "\r\n").encode())


async def _pump_output(
    conn: ConmonAttachConnection, streams: StreamSet, config: ExecConfig
) -> bool:
    """Relay output until conmon closes the socket (True) or the client is gone (False)."""
    wanted = {1: config.attach_stdout or config.tty, 2: config.attach_stderr}
    while True:
        try:
            item = await conn.recv()
        except OSError:
            item = None
        if item is None:
            return True
        stream, data = item
        if not wanted.get(stream, False):
            continue
        try:
            await streams.write_output(stream, data)
        except (ConnectionError, OSError):
            return False


async def _pump_stdin(
    conn: ConmonAttachConnection, streams: StreamSet, detach_keys: bytes = b""
) -> bool:
    """Client stdin to the process; the client's EOF closes the process's stdin.
    Returns True when the client typed the detach keys (nothing after them is sent)."""
    assert streams.read_stdin is not None
    escape = detachkeys.Escape(detach_keys) if detach_keys else None
    while True:
        try:
            data = await streams.read_stdin()
        except (ConnectionError, OSError):
            data = b""
        if not data:
            break
        detached = False
        if escape is not None:
            data, detached = escape.feed(data)
        try:
            if data:
                await conn.send(data)
        except (ConnectionError, OSError):
            return False  # the process is gone
        if detached:
            return True
    await conn.close_stdin()
    return False


