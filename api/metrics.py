"""``--metrics-addr``: a second HTTP listener (plain TCP, as dockerd's) serving ``/metrics``.

It is separate from the API sockets on purpose: it answers a scraper with no Docker API
behind it (no version prefix, no API headers), and it is started after the engine and
stopped before it (a cleanup context registered after the engine's). A scrape is
``engine.system.metrics.MetricsCollector.scrape``; the text format is built there.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from aiohttp import web

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsSource(Protocol):
    async def scrape(self) -> str: ...


SOURCE: web.AppKey[MetricsSource] = web.AppKey("metrics", MetricsSource)


def split_address(address: str) -> tuple[str | None, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` (every address) → (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"invalid metrics address {address!r}: want HOST:PORT")
    host = host.removeprefix("[").removesuffix("]")
    return (host or None), int(port)


async def get_metrics(request: web.Request) -> web.Response:
    text = await request.app[SOURCE].scrape()
    return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})


def metrics_app(source: MetricsSource) -> web.Application:
    app = web.Application()
    app[SOURCE] = source
    app.router.add_get("/metrics", get_metrics)
    return app


def metrics_lifecycle(
    address: str, source: Callable[[], MetricsSource]
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context serving ``/metrics`` on ``address`` while the app runs;
    ``source`` is asked once the engine has started."""
    host, port = split_address(address)

    async def run(app: web.Application) -> AsyncIterator[None]:
        runner = web.AppRunner(metrics_app(source()), handle_signals=False, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, reuse_address=True).start()
        except BaseException:
            await runner.cleanup()
            raise
        log.info("metrics API listening on %s", address)
        yield
        await runner.cleanup()

    return run
