"""SIGHUP: re-read daemon.json and apply what can change without a restart.

The sequence (dockerd's, ``reloadConfig`` in its daemon command):

1. tell systemd ``RELOADING=1`` (with ``MONOTONIC_USEC``, for ``Type=notify-reload``);
2. read the file again and merge it with the start-up flags, with the rules of the
   start (unknown keys, keys also given as a flag, invalid values): any error is logged
   and *nothing* changes;
3. the engine applies the reloadable keys and publishes the ``daemon reload`` event
   (``Engine.reload``; ``engine.reload`` decides what is reloadable); keys that need a
   restart are logged, not applied;
4. the process applies its own part: log level, shutdown timeout;
5. ``READY=1`` again, whatever happened.

One reload runs at a time; a SIGHUP during a reload starts another one after it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from api.notify import Notifier
from engine.config import EngineConfig
from engine.errors import EngineError
from engine.reload import ReloadPlan

log = logging.getLogger("wharfd")



class Reloader(Protocol):
    """``Engine.reload``: apply a re-read configuration, return what it did."""

    def __call__(self, loaded: EngineConfig, file_keys: frozenset[str]) -> Awaitable[ReloadPlan]:
        ...


#: set by the app factory when its backend can reload (the real engine)
RELOADER = web.AppKey("wharfd.reloader", Reloader)

LoadConfig = Callable[[], tuple[EngineConfig, frozenset[str]]]


class ReloadError(Exception):
    """The file cannot be used; the message says why."""


@dataclass
class ConfigReload:
    """Runs reloads for the serving loop. ``load`` reads and merges the file (blocking:
    run in a thread); ``apply_process`` applies the process's own settings."""

    load: LoadConfig
    reloader: Reloader | None
    apply_process: Callable[[EngineConfig], None]
    notifier: Notifier
    config_file: str

    def __post_init__(self) -> None:
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    def trigger(self) -> None:
        """From the SIGHUP handler."""
        task = asyncio.get_running_loop().create_task(self.run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def run(self) -> None:
        async with self._lock:
            log.info("got signal to reload configuration (config file %s)", self.config_file)
            self.notifier.notify(
                f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}"
            )
            try:
                await self._reload()
            except ReloadError as exc:
                log.error("error reloading configuration: %s", exc)
            except Exception:
                log.exception("error reloading configuration")
            finally:
                self.notifier.notify("READY=1")

    async def _reload(self) -> None:
        if self.reloader is None:
            raise ReloadError("this daemon's backend cannot reload its configuration")
        try:
            loaded, file_keys = await asyncio.to_thread(self.load)
        except Exception as exc:  # ConfigError from api.main: the message is the reason
            raise ReloadError(f"{exc}; the running configuration is unchanged") from None
        try:
            plan = await self.reloader(loaded, file_keys)
        except EngineError as exc:
            raise ReloadError(f"{exc}; the running configuration is unchanged") from None
        self.apply_process(plan.config)
        if plan.needs_restart:
            log.warning(
                "configuration reload: not applied, a restart is needed for: %s",
                ", ".join(plan.needs_restart),
            )
        changed = ", ".join(plan.changed) or "nothing"
        log.info("reloaded configuration; changed: %s", changed)
