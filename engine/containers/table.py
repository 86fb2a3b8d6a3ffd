"""ContainerTable: the state the ContainerManager's collaborators share.

The published frozen views (readers never lock), the per-container locks, the streams
of each container, the exit and removal waiters, and the one way a state change lands:
commit the row, then publish the new view.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

from engine.containers.model import ContainerState, ContainerView
from engine.containers.streams import ContainerIO
from engine.errors import NotFound
from engine.events import EventBus
from engine.ids import resolve
from engine.locks import KeyedLock
from engine.runtime.base import MonitorHandle
from engine.store.db import Database


def now_rfc3339(at: float | None = None) -> str:
    """RFC 3339 UTC with nanoseconds; ``at`` (unix seconds) instead of now when given."""
    ns = time.time_ns() if at is None else int(at * 1_000_000_000)
    stamp = datetime.fromtimestamp(ns // 1_000_000_000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ns % 1_000_000_000:09d}Z"


class ContainerTable:
    def __init__(self, db: Database, events: EventBus) -> None:
        self.db = db
        self.events = events
        self.views: dict[str, ContainerView] = {}
        self.locks = KeyedLock()
        self.name_lock = asyncio.Lock()
        self.io: dict[str, ContainerIO] = {}
        self.handles: dict[str, MonitorHandle] = {}
        self.exit_waiters: dict[str, list[asyncio.Future[int]]] = {}
        self.removal_waiters: dict[str, list[asyncio.Future[int]]] = {}
        self.removing: set[str] = set()
        self.background: set[asyncio.Task[Any]] = set()

    def get(self, ref: str) -> ContainerView:
        return resolve(ref, self.views, lambda v: v.name, _no_such_container)

    def is_running(self, container_id: str) -> bool:
        view = self.views.get(container_id)
        return view is not None and view.running

    def io_of(self, container_id: str) -> ContainerIO:
        return self.io.setdefault(container_id, ContainerIO())

    async def commit_state(self, cid: str, state: ContainerState) -> ContainerView:
        encoded = state.to_json()
        await self.db.execute("UPDATE containers SET state = ? WHERE id = ?", (encoded, cid))
        return self.publish(cid, state)

    def publish(self, cid: str, state: ContainerState) -> ContainerView:
        """The new view readers see (after its state was committed, or as an exit that is
        still being committed: see RunLifecycle)."""
        old = self.views[cid]
        view = ContainerView(old.config, state, old.image_names, old.exec_ids)
        self.views[cid] = view
        return view

    def emit(self, view: ContainerView, action: str, extra: dict[str, str] | None = None) -> None:
        attributes = dict(view.config.labels)
        attributes["image"] = view.config.image_ref
        attributes["name"] = view.name
        if extra:
            attributes.update(extra)
        self.events.emit("container", action, view.id, attributes)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def exit_future(self, cid: str, of_run: int | None = None) -> asyncio.Future[int]:
        """A future for the container's next exit. With ``of_run`` (the pid of the run
        the caller acts on) it is already done when that run has ended: callers that
        awaited something since they looked at the container (a lock, a state write)
        could otherwise miss the exit and wait for one that never comes."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        current = self.views.get(cid)
        if of_run is not None and (
            current is None or not current.running or current.state.pid != of_run
        ):
            future.set_result(current.state.exit_code if current is not None else 0)
            return future
        self.exit_waiters.setdefault(cid, []).append(future)
        return future

    def answer_exit_waiters(self, cid: str, code: int) -> None:
        for future in self.exit_waiters.pop(cid, []):
            if not future.done():
                future.set_result(code)

    def forget_waiter(self, future: asyncio.Future[int]) -> None:
        for table in (self.exit_waiters, self.removal_waiters):
            for waiters in table.values():
                if future in waiters:
                    waiters.remove(future)


def _no_such_container(ref: str) -> NotFound:
    return NotFound(f"No such container: {ref}")
