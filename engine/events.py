"""The engine's event bus: what ``GET /events`` streams.

Publishers call ``publish``; subscribers get an async iterator that first replays the
ring buffer (``since``), then follows live events until ``until`` or cancellation.
Filtering follows dockerd (daemon/events/filter.go): ``type`` and ``event`` exact
(``event`` also as prefix for ``exec_create``/``exec_start``/``health_status``), object
filters match the actor id or its ``name`` attribute by prefix, ``label`` matches
``key`` or ``key=value`` against the attributes.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

RING_SIZE = 256
_PREFIX_ACTIONS = ("exec_create", "exec_start", "health_status")
_OBJECT_FILTERS = {
    "container": "container",
    "network": "network",
    "volume": "volume",
    "plugin": "plugin",
    "service": "service",
    "node": "node",
    "secret": "secret",
    "config": "config",
}
KNOWN_FILTERS = frozenset({"type", "event", "image", "label", "scope", "daemon", *_OBJECT_FILTERS})


@dataclass(frozen=True)
class Event:
    type: str
    action: str
    actor_id: str
    attributes: Mapping[str, str] = field(default_factory=dict)
    time_nano: int = field(default_factory=time.time_ns)
    scope: str = "local"


Filters = Mapping[str, list[str]]


def _matches_action(action: str, wanted: list[str]) -> bool:
    for want in wanted:
        if action == want:
            return True
        if want in _PREFIX_ACTIONS and action.startswith(want + ":"):
            return True
        if action.startswith(want + ":") and action.split(":", 1)[0] in _PREFIX_ACTIONS:
            return True
    return False


def _matches_image(event: Event, wanted: list[str]) -> bool:
    candidates = {event.attributes.get("image", "")}
    if event.type == "image":
        candidates.add(event.actor_id)
        candidates.add(event.attributes.get("name", ""))
    stripped = {c.rsplit(":", 1)[0] if "/" not in c.rsplit(":", 1)[-1] else c for c in candidates}
    for want in wanted:
        if want in candidates or want in stripped:
            return True
        if want.startswith("sha256:") and event.actor_id == want:
            return True
    return False


def _matches_label(attributes: Mapping[str, str], wanted: list[str]) -> bool:
    for want in wanted:
        key, sep, value = want.partition("=")
        if key not in attributes:
            return False
        if sep and attributes[key] != value:
            return False
    return True


def matches(event: Event, filters: Filters) -> bool:
    """True when ``event`` passes every filter (values of one key are OR-ed)."""
    for key, wanted in filters.items():
        if not wanted:
            continue
        if key == "type" and event.type not in wanted:
            return False
        if key == "event" and not _matches_action(event.action, wanted):
            return False
        if key == "scope" and event.scope not in wanted:
            return False
        if key == "label" and not _matches_label(event.attributes, wanted):
            return False
        if key == "image" and not _matches_image(event, wanted):
            return False
        if key in _OBJECT_FILTERS:
            if event.type != _OBJECT_FILTERS[key]:
                return False
            name = event.attributes.get("name", "")
            if not any(event.actor_id.startswith(w) or name == w for w in wanted):
                return False
    return True


class EventBus:
    def __init__(self, ring_size: int = RING_SIZE) -> None:
        self._ring: deque[Event] = deque(maxlen=ring_size)
        self._subscribers: set[asyncio.Queue[Event]] = set()
        self.published_count = 0  # engine_daemon_events_total

    @property
    def listener_count(self) -> int:
        return len(self._subscribers)

    def publish(self, event: Event) -> None:
        self._ring.append(event)
        self.published_count += 1
        for queue in self._subscribers:
            queue.put_nowait(event)

    def emit(
        self, type_: str, action: str, actor_id: str, attributes: Mapping[str, str] | None = None
    ) -> Event:
        event = Event(
            type=type_, action=action, actor_id=actor_id, attributes=dict(attributes or {})
        )
        self.publish(event)
        return event

    async def subscribe(
        self,
        filters: Filters | None = None,
        since_nano: int | None = None,
        until_nano: int | None = None,
    ) -> AsyncIterator[Event]:
        """Replay from ``since`` then follow; stops at ``until`` (which may lie in the future)."""
        filters = filters or {}
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self._subscribers.add(queue)
        try:
            if since_nano is not None:
                for event in list(self._ring):
                    if event.time_nano < since_nano:
                        continue
                    if until_nano is not None and event.time_nano > until_nano:
                        return
                    if matches(event, filters):
                        yield event
                # Events published while replaying are in the queue, but may repeat the ring.
                replay_end = self._ring[-1].time_nano if self._ring else 0
            else:
                replay_end = 0
            while True:
                if until_nano is not None:
                    remaining = (until_nano - time.time_ns()) / 1e9
                    if remaining <= 0:
                        return
                    try:
                        event = await asyncio.wait_for(queue.get(), timeout=remaining)
                    except TimeoutError:
                        return
                else:
                    event = await queue.get()
                if since_nano is not None and event.time_nano <= replay_end:
                    continue
                if until_nano is not None and event.time_nano > until_nano:
                    return
                if matches(event, filters):
                    yield event
        finally:
            self._subscribers.discard(queue)
