"""``GET /events``: the engine's event bus as a chunked JSON stream.

Headers go out at once (clients wait for them before anything else), then one JSON
object and a newline per event, each written (and so flushed) on its own. ``since``
replays the bus's ring buffer; ``until`` ends the stream (at once when it is in the past).
The stream also ends when the daemon shuts down or the client goes away.

Wire shape (api-notes §3.7): ``status``/``id``/``from`` are deprecated but still sent
for container and image events up to API 1.51; the actor's attributes are what the
publisher put there (container labels, ``image``, ``name``, ``exitCode`` on ``die``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Protocol

from aiohttp import web

from api import lifecycle, params
from api.errors import json_bytes
from api.models.system import EventMessage
from api.timestamps import parse_unix_nano
from engine.errors import InvalidParameter
from engine.events import KNOWN_FILTERS, Event


class EventsBackend(Protocol):
    def subscribe(
        self,
        filters: Mapping[str, list[str]] | None = None,
        since_nano: int | None = None,
        until_nano: int | None = None,
    ) -> AsyncIterator[Event]: ...


BACKEND: web.AppKey[EventsBackend] = web.AppKey("events", EventsBackend)
routes = web.RouteTableDef()


def event_message(event: Event) -> EventMessage:
    message: EventMessage = {}  # type: ignore[typeddict-item]
    if event.type == "container":
        message["status"] = event.action
        message["id"] = event.actor_id
        image = event.attributes.get("image")
        if image:
            message["from"] = image
    elif event.type == "image":
        message["status"] = event.action
        message["id"] = event.actor_id
    message["Type"] = event.type
    message["Action"] = event.action
    message["Actor"] = {"ID": event.actor_id, "Attributes": dict(event.attributes)}
    message["scope"] = event.scope
    message["time"] = event.time_nano // 1_000_000_000
    message["timeNano"] = event.time_nano
    return message


def _time_param(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    try:
        value = parse_unix_nano(raw)
    except InvalidParameter as exc:
        raise InvalidParameter(f"invalid value for {name}: {exc}") from None
    # "0" is a real instant for dockerd (replay everything), not "absent".
    if value is None and raw is not None and raw.strip() != "":
        return 0
    return value


def event_window(request: web.Request) -> tuple[int | None, int | None]:
    since = _time_param(request, "since")
    until = _time_param(request, "until")
    if until is not None and since is not None and until < since:
        raise InvalidParameter(
            f"`since` time ({request.query.get('since')}) cannot be after "
            f"`until` time ({request.query.get('until')})"
        )
    # With only `until`, dockerd replays the buffer up to it.
    if until is not None and since is None:
        since = 0
    return since, until


@routes.get("/events", allow_head=False)
async def get_events(request: web.Request) -> web.StreamResponse:
    since, until = event_window(request)
    filters = params.filters_param(request, KNOWN_FILTERS)
    source = request.app[BACKEND].subscribe(filters, since, until)
    response = web.StreamResponse()
    response.content_type = "application/json"
    response.enable_chunked_encoding()
    await response.prepare(request)
    try:
        async with contextlib.aclosing(lifecycle.follow(request, source)) as events:
            async for event in events:
                await response.write(json_bytes(event_message(event)) + b"\n")
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client left; its subscription is already released
    return response
