"""Ending long-lived responses: daemon shutdown and clients that went away.

A graceful shutdown gives in-flight requests ``shutdown-timeout`` seconds; a follower
(``/events``, ``logs -f``, ``wait``) would use all of it. So the app's ``on_shutdown``
sets ``SHUTTING_DOWN`` (it runs after the listeners are closed and before in-flight
requests are awaited), and streaming handlers stop at once.

aiohttp does not cancel a handler when its client disconnects (we keep
``handler_cancellation`` off so that no engine operation is cut in half), so a follower
that waits for the next item would linger until one arrives. ``api.server``'s protocol
sets a per-connection ``closed`` event that ``follow`` watches too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import TypeVar

from aiohttp import web

T = TypeVar("T")

SHUTTING_DOWN = web.AppKey("shutting_down", asyncio.Event)


def install(app: web.Application) -> None:
    app[SHUTTING_DOWN] = asyncio.Event()
    app.on_shutdown.append(_mark_shutting_down)


async def _mark_shutting_down(app: web.Application) -> None:
    app[SHUTTING_DOWN].set()


def shutting_down(app: web.Application) -> asyncio.Event:
    return app[SHUTTING_DOWN]


def connection_closed(request: web.BaseRequest) -> asyncio.Event | None:
    """Set when the client's connection is gone (None when served by a plain aiohttp)."""
    closed = getattr(request.protocol, "closed", None)
    return closed if isinstance(closed, asyncio.Event) else None


def stop_signals(request: web.Request) -> list[asyncio.Event]:
    events = [shutting_down(request.app)]
    closed = connection_closed(request)
    if closed is not None:
        events.append(closed)
    return events


async def first_of(events: list[asyncio.Event], *others: Awaitable[object]) -> None:
    """Return as soon as one event is set or one of ``others`` finishes."""
    waiters: list[asyncio.Future[object]] = [asyncio.ensure_future(e.wait()) for e in events]
    waiters += [asyncio.ensure_future(o) for o in others]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def follow(request: web.Request, source: AsyncIterator[T]) -> AsyncGenerator[T, None]:
    """Items of ``source`` until it ends, the daemon shuts down or the client leaves.

    Use as ``async with contextlib.aclosing(follow(request, it)) as items:``; ``source``
    is closed on every exit path, so its subscriptions are released.
    """
    stop = asyncio.ensure_future(first_of(stop_signals(request)))
    try:
        while not stop.done():
            step = asyncio.ensure_future(anext(source))
            await asyncio.wait({step, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                step.cancel()
                # wait() rather than await: only our own cancellation may propagate.
                await asyncio.wait({step})
                if not step.cancelled():
                    step.exception()
                return
            try:
                item = step.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        stop.cancel()
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()
