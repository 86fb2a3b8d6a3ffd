"""Attachment: attach sessions, stdin, resize, and reading a container's logs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from engine.containers import detachkeys, logdrivers
from engine.containers.logs import LogRecord, read_logs
from engine.containers.model import ContainerView
from engine.containers.state import Status
from engine.containers.streams import ContainerIO, Session, StreamSet
from engine.containers.table import ContainerTable
from engine.errors import Conflict, EngineError, NotSupported
from engine.layout import Layout
from engine.runtime.conmon import ConmonMonitor


class Attachment:
    def __init__(
        self,
        *,
        layout: Layout,
        table: ContainerTable,
        monitor: ConmonMonitor,
        start: Callable[[str], Awaitable[None]],
        kill: Callable[[str], Awaitable[None]],
    ) -> None:
        self._layout = layout
        self._table = table
        self._monitor = monitor
        # ContainerManager.start and kill (SIGKILL), for run_attached.
        self._start = start
        self._kill = kill

    async def attach(
        self, ref: str, streams: StreamSet, *, use_stdin: bool, logs: bool = False
    ) -> None:
        """Run one attach session until the container's run ends or the client detaches."""
        view = self._table.get(ref)
        if view.state.status == Status.PAUSED:
            raise Conflict(f"container {view.id} is paused, unpause the container before attach")
        io = self._table.io_of(view.id)
        if logs:
            await self._replay_logs(view, streams)
        session = io.add_session(streams)
        self._table.emit(view, "attach")
        helpers: list[asyncio.Task[None]] = []
        if use_stdin and view.config.open_stdin and streams.read_stdin is not None:
            helpers.append(asyncio.create_task(self._pump_stdin(view, io, streams, session)))
        if streams.wait_closed is not None:
            helpers.append(asyncio.create_task(_end_when(streams.wait_closed(), session)))
        try:
            await session.done.wait()
        finally:
            io.remove_session(session)
            for task in helpers:
                task.cancel()
            for task in helpers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def run_attached(
        self, ref: str, write_output: Callable[[int, bytes], Awaitable[None]]
    ) -> int:
        """Start a created container with ``write_output`` receiving its output from
        the first byte, and return its exit code once it has exited and its output has
        been delivered (the builder's RUN)."""
        view = self._table.get(ref)
        io = self._table.io_of(view.id)
        session = io.add_session(StreamSet(write_output=write_output))
        try:
            waiter = self._table.exit_future(view.id)
            # Started as a task of its own: a cancelled caller must not cut a start in
            # half (the run would go on, unrecorded); it finishes, then is killed.
            start = asyncio.ensure_future(self._start(view.id))
            try:
                await asyncio.shield(start)
                code = await asyncio.shield(waiter)
            except asyncio.CancelledError:
                # Whoever ran it went away (a build cancelled with its client): the
                # container does not run on unobserved.
                await asyncio.shield(self._abandon(view.id, start, waiter))
                raise
            except BaseException:
                self._table.forget_waiter(waiter)
                raise
            await session.done.wait()
        finally:
            io.remove_session(session)
        return code

    async def _abandon(
        self, cid: str, start: asyncio.Future[None], waiter: asyncio.Future[int]
    ) -> None:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await start
        self._table.forget_waiter(waiter)
        with contextlib.suppress(EngineError):
            await self._kill(cid)

    async def _pump_stdin(
        self, view: ContainerView, io: ContainerIO, streams: StreamSet, session: Session
    ) -> None:
        assert streams.read_stdin is not None
        # Detach keys apply to a TTY's stdin only, as in dockerd.
        escape = detachkeys.Escape(streams.detach_keys) if view.config.tty else None
        while True:
            try:
                data = await streams.read_stdin()
            except (ConnectionError, OSError):
                data = b""
            if not data:
                break
            if escape is not None:
                data, detached = escape.feed(data)
                if detached:
                    if data:
                        await io.write_stdin(data)
                    self._table.emit(view, "detach")
                    session.end()
                    return
            await io.write_stdin(data)
        if view.config.stdin_once and not view.config.tty:
            await io.close_stdin()
        else:
            self._table.emit(view, "detach")
            session.end()

    async def _replay_logs(self, view: ContainerView, streams: StreamSet) -> None:
        async for record in self.logs(view.id, stdout=streams.stdout, stderr=streams.stderr):
            try:
                await streams.write_output(record.stream, record.data)
            except (ConnectionError, OSError):
                return

    async def resize(self, ref: str, height: int, width: int) -> None:
        view = self._table.get(ref)
        handle = self._table.handles.get(view.id)
        if handle is None or not view.running:
            raise Conflict(f"Container {view.id} is not running")
        await self._monitor.resize(handle, height, width)

    def logs(
        self,
        ref: str,
        *,
        stdout: bool = True,
        stderr: bool = True,
        since_nano: int | None = None,
        until_nano: int | None = None,
        tail: int | None = None,
        follow: bool = False,
    ) -> AsyncIterator[LogRecord]:
        """The container's log records. Errors (unknown container, a driver that cannot
        be read) are raised here, before the caller has sent any response."""
        view = self._table.get(ref)
        if not logdrivers.settings(view.config.host_config.get("LogConfig") or {}).readable:
            raise NotSupported("configured logging driver does not support reading")
        return self._log_records(
            view, stdout=stdout, stderr=stderr, since_nano=since_nano, until_nano=until_nano,
            tail=tail, follow=follow and view.running,
        )

    async def _log_records(
        self, view: ContainerView, *, stdout: bool, stderr: bool, since_nano: int | None,
        until_nano: int | None, tail: int | None, follow: bool,
    ) -> AsyncIterator[LogRecord]:
        path = self._layout.container_log(view.id)
        cid = view.id
        history = await asyncio.to_thread(logdrivers.rotated_files, path)
        async for record in read_logs(
            path, stdout=stdout, stderr=stderr, since_nano=since_nano, until_nano=until_nano,
            tail=tail, follow=follow, is_running=lambda: self._table.is_running(cid),
            history=history,
        ):
            yield record

    def log_details(self, ref: str) -> bytes:
        """`docker logs --details`: the attributes the log options select, as a prefix."""
        view = self._table.get(ref)
        return logdrivers.details_prefix(
            view.config.host_config.get("LogConfig") or {}, view.config.labels,
            list(view.config.config.get("Env") or []),
        )


async def _end_when(event: Awaitable[None], session: Session) -> None:
    await event
    session.end()
