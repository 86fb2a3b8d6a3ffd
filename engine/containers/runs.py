"""RunLifecycle: a container's run from start to recorded exit, and its restart policy.

Starting (through the Launcher), watching conmon for the exit, recording the exit (its
code and time come from conmon's exit file), releasing what the run held, signals and
stops, log rotation, and the restart policy's delays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

from engine.config import EngineConfig
from engine.containers import healthcheck, logdrivers, restart
from engine.containers.launch import Launcher
from engine.containers.model import ContainerState, ContainerView
from engine.containers.signals import parse_signal
from engine.containers.state import Status
from engine.containers.table import ContainerTable, now_rfc3339
from engine.errors import Conflict, EngineError, InvalidParameter, NotFound, SystemError_
from engine.layout import Layout
from engine.runtime.base import MonitorHandle, OCIRuntime
from engine.runtime.conmon import ConmonMonitor
from engine.store.crashpoints import crash_point

log = logging.getLogger(__name__)

ROTATE_CHECK = 0.25
# How often an exit that could not be written is tried again: doubling up to the max.
EXIT_RETRY_FIRST = 0.25
EXIT_RETRY_MAX = 2.0
DEFAULT_STOP_TIMEOUT = 10

RemoveFn = Callable[..., Awaitable[None]]


class RunLifecycle:
    def __init__(
        self,
        *,
        config: EngineConfig,
        layout: Layout,
        table: ContainerTable,
        runtimes: dict[str, Any],
        monitor: ConmonMonitor,
        launcher: Launcher,
        remove: RemoveFn,
    ) -> None:
        self._config = config
        self._layout = layout
        self._table = table
        self._runtimes: dict[str, OCIRuntime] = runtimes
        self._monitor = monitor
        self._launcher = launcher
        # ContainerManager.remove: an AutoRemove container goes once its run ends.
        self._remove = remove
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._restarts: dict[str, asyncio.Task[None]] = {}
        self._rotators: dict[str, asyncio.Task[None]] = {}
        self.uncounted_restart: set[str] = set()
        self._backoff: dict[str, float] = {}
        self._started_mono: dict[str, float] = {}
        # Exits published but not yet written (disk full), and their retry tasks.
        self._unsaved: dict[str, asyncio.Task[None]] = {}

    def reconfigure(self, config: EngineConfig) -> None:
        """A reloaded configuration (SIGHUP): used from the next operation on."""
        self._config = config

    def runtime_name(self, view: ContainerView) -> str:
        return view.config.host_config.get("Runtime") or self._config.default_runtime

    async def start_locked(self, view: ContainerView) -> None:
        cid = view.id
        runtime = self._runtimes.get(self.runtime_name(view))
        if runtime is None:
            raise InvalidParameter(f"Unknown runtime specified {self.runtime_name(view)}")
        try:
            handle = await self._launcher.launch(view, runtime)
        except EngineError as exc:
            await self.record_start_failure(view, exc)
            raise
        # A healthcheck starts as "starting" before start returns, as with dockerd.
        health = None
        if healthcheck.probe_command(view.config.config.get("Healthcheck")) is not None:
            health = {"Status": "starting", "FailingStreak": 0, "Log": []}
        state = view.state.evolve(
            status=Status.RUNNING, pid=handle.init_pid, conmon_pid=handle.conmon_pid,
            exit_code=0, error="", oom_killed=False, started_at=now_rfc3339(),
            finished_at=view.state.finished_at, has_been_started=True, manually_stopped=False,
            health=health, paused_by_commit=False,
        )
        crash_point("start_before_commit")
        try:
            view = await self._table.commit_state(cid, state)
        except BaseException:
            # A run that cannot be recorded (disk full) must not go on unrecorded.
            await self._launcher.abort(cid, runtime, handle, self._launcher.netns_of(view))
            raise
        self._started_mono[cid] = time.monotonic()
        self._table.emit(view, "start")
        self.watch(handle)
        self.start_log_rotation(view, handle)

    async def record_start_failure(self, view: ContainerView, exc: EngineError) -> None:
        state = view.state.evolve(exit_code=_start_exit_code(exc.message), error=exc.message)
        view = await self._table.commit_state(view.id, state)
        if view.config.auto_remove:
            # `docker run --rm nosuchcmd` waits for condition=removed: remove on failure too.
            self._table.spawn(self._remove_after_failure(view.id))

    async def _remove_after_failure(self, cid: str) -> None:
        with contextlib.suppress(EngineError):
            await self._remove(cid, force=True)

    # ------------------------------------------------------------------ exit handling
    def start_log_rotation(self, view: ContainerView, handle: MonitorHandle) -> None:
        settings = logdrivers.settings(view.config.host_config.get("LogConfig") or {})
        if settings.max_size is None:
            return
        self._rotators[view.id] = asyncio.create_task(
            self._rotate_logs(handle, settings), name=f"logrotate-{view.id}"
        )

    async def _rotate_logs(self, handle: MonitorHandle, settings: logdrivers.LogSettings) -> None:
        """Rotate when the log passes max-size: rename the files, then conmon reopens.

        Checked every ROTATE_CHECK seconds, so a file can exceed max-size by what the
        container writes in that time.
        """
        path = self._layout.container_log(handle.container_id)
        while True:
            await asyncio.sleep(ROTATE_CHECK)
            if await asyncio.to_thread(logdrivers.needs_rotation, path, settings):
                await asyncio.to_thread(logdrivers.rotate, path, settings)
                try:
                    await self._monitor.reopen_log(handle)
                except EngineError:
                    return  # conmon is gone: the container exited

    def _stop_log_rotation(self, cid: str) -> None:
        task = self._rotators.pop(cid, None)
        if task is not None:
            task.cancel()

    def watch(self, handle: MonitorHandle) -> None:
        self._table.handles[handle.container_id] = handle
        task = asyncio.create_task(self._await_exit(handle), name=f"exit-{handle.container_id}")
        self._watchers[handle.container_id] = task

    async def _await_exit(self, handle: MonitorHandle) -> None:
        code = await self._monitor.wait_exit(handle)
        cid = handle.container_id
        io = self._table.io.get(cid)
        if io is not None:
            await io.drain()
        async with self._table.locks.hold(cid):
            self._watchers.pop(cid, None)
            # The restart decision is taken in the same transition as the exit, so no
            # request sees the container exited in between (a `rm` there would win).
            restarting = self._will_restart(cid, code)
            await self.finish_run(cid, code, restarting=restarting)
            if restarting:
                ran_for = time.monotonic() - self._started_mono.pop(cid, time.monotonic())
                self._arm_restart(cid, restart.next_delay(self._backoff.get(cid), ran_for))
        if io is not None:
            io.disconnect()
            io.end_sessions()
        view = self._table.views.get(cid)
        if view is None or cid in self._table.removing:
            return
        if view.config.auto_remove:
            with contextlib.suppress(EngineError):
                await self._remove(cid, force=True)

    # ------------------------------------------------------------------ restart policy
    def _will_restart(self, cid: str, code: int) -> bool:
        view = self._table.views.get(cid)
        if view is None or cid in self._table.removing or view.config.auto_remove:
            return False
        state = view.state
        policy = view.config.host_config.get("RestartPolicy") or {}
        return restart.should_restart(policy, code, state.restart_count, state.manually_stopped)

    def _arm_restart(self, cid: str, delay: float) -> None:
        self._backoff[cid] = delay
        self._restarts[cid] = asyncio.create_task(self._restart_later(cid, delay))

    async def _restart_later(self, cid: str, delay: float) -> None:
        await asyncio.sleep(delay)
        async with self._table.locks.hold(cid):
            self._restarts.pop(cid, None)
            view = self._table.views.get(cid)
            if view is None or view.state.status != Status.RESTARTING:
                return
            try:
                if cid in self.uncounted_restart:
                    self.uncounted_restart.discard(cid)
                else:
                    view = await self._table.commit_state(
                        cid, view.state.evolve(restart_count=view.state.restart_count + 1)
                    )
                await self.start_locked(view)
            except EngineError as exc:
                log.warning("restarting container %s failed: %s", cid, exc)
                await self._after_failed_restart(cid)

    async def start_on_daemon_start(self, cid: str) -> None:
        async with self._table.locks.hold(cid):
            view = self._table.views.get(cid)
            if view is None or view.state.status not in (Status.EXITED, Status.RESTARTING):
                return
            try:
                await self.start_locked(view)
            except EngineError as exc:
                log.warning("starting container %s at daemon start failed: %s", cid, exc)
                await self._after_failed_restart(cid)

    async def _after_failed_restart(self, cid: str) -> None:
        """A start by the restart policy (or at daemon start) failed: the policy decides
        again, as after an exit of a run that lasted no time (start failures are exits
        with 126/127, recorded by start_locked). So a failure that goes away (a bind
        source back, room on the disk) is retried with the policy's backoff instead of
        leaving the container "restarting" with nothing to restart it."""
        view = self._table.views.get(cid)
        if view is None or view.running:
            return
        restarting = self._will_restart(cid, view.state.exit_code)
        state = view.state.evolve(status=Status.RESTARTING if restarting else Status.EXITED)
        try:
            await self._table.commit_state(cid, state)
        except (EngineError, sqlite3.Error) as exc:
            # The policy still applies; the row catches up with the next write.
            log.warning("container %s: cannot save its state: %s", cid, exc)
            self._table.publish(cid, state)
        if restarting:
            self._arm_restart(cid, restart.next_delay(self._backoff.get(cid), 0.0))

    def cancel_restart(self, cid: str) -> None:
        task = self._restarts.pop(cid, None)
        if task is not None:
            task.cancel()

    async def stop_restarting(self, cid: str) -> None:
        """A stop or kill of a container waiting to restart: it stays stopped."""
        self.cancel_restart(cid)
        async with self._table.locks.hold(cid):
            view = self._table.views.get(cid)
            if view is not None and view.state.status == Status.RESTARTING:
                await self._table.commit_state(
                    cid, view.state.evolve(status=Status.EXITED, manually_stopped=True)
                )

    def runtime_or_none(self, view: ContainerView) -> OCIRuntime | None:
        return self._runtimes.get(self.runtime_name(view))

    def runtime_of(self, view: ContainerView) -> OCIRuntime:
        runtime = self._runtimes.get(self.runtime_name(view))
        if runtime is None:
            raise SystemError_(f"runtime {self.runtime_name(view)} is not available")
        return runtime

    async def finish_run(
        self, cid: str, code: int, finished: float | None = None, *, restarting: bool = False
    ) -> None:
        view = self._table.views.get(cid)
        if view is None:
            return
        self._table.handles.pop(cid, None)
        self._stop_log_rotation(cid)
        # Read conmon's oom marker before its files are cleaned up below.
        oom = await asyncio.to_thread(self._monitor_oom, cid)
        if finished is None:
            # When conmon wrote the exit file, not when we got round to it (the daemon
            # may have been stopped or busy meanwhile).
            finished = await asyncio.to_thread(self._monitor.exit_time, cid)
        state = view.state.evolve(
            status=Status.RESTARTING if restarting else Status.EXITED, pid=0, conmon_pid=0,
            exit_code=code, finished_at=now_rfc3339(finished), oom_killed=oom,
            paused_by_commit=False,
        )
        view, saved = await self._commit_exit(cid, state)
        if oom:
            self._table.emit(view, "oom")
        self._table.emit(view, "die", {"exitCode": str(code)})
        # What the run held (runtime state, mounts, namespace, addresses and ports) is
        # released before anyone learns of the exit: a stopped container shows no IP.
        # conmon's exit file stays until the exit is in the database: it is the record
        # restore reads if the daemon dies before the row lands.
        runtime = self._runtimes.get(self.runtime_name(view))
        await self._launcher.teardown(
            cid, runtime, self._launcher.netns_of(view), keep_exit_file=not saved
        )
        self._table.answer_exit_waiters(cid, code)

    async def _commit_exit(
        self, cid: str, state: ContainerState
    ) -> tuple[ContainerView, bool]:
        """Commit an exit; when the write fails (a full disk), publish it all the same
        and keep retrying until it lands. An exit is never lost: until then conmon's exit
        file is the record. Returns the view and whether the row was written."""
        try:
            return await self._table.commit_state(cid, state), True
        except (EngineError, sqlite3.Error) as exc:
            log.error("container %s exited (code %d) but its state cannot be saved yet, "
                      "retrying: %s", cid, state.exit_code, exc)
            view = self._table.publish(cid, state)
            if cid not in self._unsaved:
                self._unsaved[cid] = asyncio.create_task(
                    self._save_exit_later(cid), name=f"save-exit-{cid}"
                )
            return view, False

    async def _save_exit_later(self, cid: str) -> None:
        """Write the container's published state until it lands (backoff up to
        EXIT_RETRY_MAX), then let conmon's exit files go."""
        delay = EXIT_RETRY_FIRST
        try:
            while True:
                await asyncio.sleep(delay)
                delay = min(delay * 2, EXIT_RETRY_MAX)
                async with self._table.locks.hold(cid):
                    view = self._table.views.get(cid)
                    if view is None:
                        return  # removed meanwhile: the row is gone with it
                    try:
                        await self._table.commit_state(cid, view.state)
                    except (EngineError, sqlite3.Error) as exc:
                        log.debug("container %s: state still not saved: %s", cid, exc)
                        continue
                    if not view.running:
                        # Still the ended run (a new one would have fresh conmon files).
                        await asyncio.to_thread(
                            self._monitor.cleanup, cid, self._layout.container_dir(cid)
                        )
                    log.info("container %s: exit saved (code %d)", cid, view.state.exit_code)
                    return
        finally:
            self._unsaved.pop(cid, None)

    def _monitor_oom(self, cid: str) -> bool:
        return (self._layout.conmon_dir(cid) / "persist" / "oom").exists()

    async def stop_running(
        self, view: ContainerView, stop_signal: int, grace: int, *, manual: bool
    ) -> None:
        """Signal, wait up to ``grace`` seconds (negative: forever), then SIGKILL and wait.

        ``manual`` records a user's stop, which restart policies respect; a daemon
        shutdown without live-restore is not one.
        """
        if manual:
            await self.mark_manually_stopped(view.id)
        waiter = self._table.exit_future(view.id, of_run=view.state.pid)
        if waiter.done():
            return  # it exited while we marked it: a concurrent stop, kill or restart
        await self.signal(view, stop_signal)
        if grace < 0:
            await asyncio.shield(waiter)
        else:
            try:
                await asyncio.wait_for(asyncio.shield(waiter), grace)
            except TimeoutError:
                if self._table.is_running(view.id):
                    await self.signal(view, signal.SIGKILL)
                await asyncio.shield(waiter)

    async def stop_for_shutdown(self, view: ContainerView) -> None:
        stop_signal, timeout = stop_settings(view, None, None)
        await self.stop_running(view, stop_signal, timeout, manual=False)

    async def mark_manually_stopped(self, cid: str) -> None:
        async with self._table.locks.hold(cid):
            view = self._table.views.get(cid)
            if view is not None and view.running:
                await self._table.commit_state(cid, view.state.evolve(manually_stopped=True))

    async def signal(self, view: ContainerView, number: int) -> None:
        runtime = self._runtimes.get(self.runtime_name(view))
        if runtime is None:
            raise SystemError_(f"runtime {self.runtime_name(view)} is not available")
        self._table.emit(view, "kill", {"signal": str(number)})
        try:
            await runtime.kill(view.id, number, all_processes=number == signal.SIGKILL)
            if self._table.views[view.id].state.status == Status.PAUSED:
                # A frozen process cannot act on the signal: thaw it, as dockerd does
                # (`runc kill --all` may have thawed it already).
                with contextlib.suppress(Conflict, NotFound):
                    await runtime.resume(view.id)
                await self._mark_thawed(view.id)
        except NotFound:
            pass  # it exited meanwhile; the exit watcher records it
        except EngineError as exc:
            if self._table.is_running(view.id):
                raise Conflict(str(exc)) from None

    async def _mark_thawed(self, cid: str) -> None:
        """Paused → running after a signal thawed it; never over an exit recorded
        meanwhile (the signal may have killed it already)."""
        async with self._table.locks.hold(cid):
            current = self._table.views.get(cid)
            if current is not None and current.state.status == Status.PAUSED:
                await self._table.commit_state(
                    cid, current.state.evolve(status=Status.RUNNING, paused_by_commit=False)
                )

    async def close(self) -> None:
        """Cancel and await every task this owns (exit watchers, restarts, rotations)."""
        pending = [*self._watchers.values(), *self._restarts.values(), *self._rotators.values(),
                   *self._unsaved.values()]
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._watchers.clear()


def _start_exit_code(message: str) -> int:
    """dockerd's mapping of a failed start to an exit code (and `docker run`'s)."""
    lowered = message.lower()
    if "permission denied" in lowered or "is a directory" in lowered:
        return 126
    return 127


def stop_settings(
    view: ContainerView, signal_: str | None, stop_timeout: int | None
) -> tuple[int, int]:
    """The signal and grace period of a stop: the request's, else the container's."""
    stop_signal = parse_signal(
        signal_ or view.config.config.get("StopSignal") or None, default=signal.SIGTERM
    )
    if stop_timeout is not None:
        return stop_signal, stop_timeout
    configured = view.config.config.get("StopTimeout")
    return stop_signal, DEFAULT_STOP_TIMEOUT if configured is None else int(configured)
