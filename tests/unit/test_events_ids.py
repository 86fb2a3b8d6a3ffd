"""EventBus replay/follow/filters and id resolution."""

from __future__ import annotations

import asyncio
import time

import pytest

from engine.errors import InvalidParameter, NotFound
from engine.events import Event, EventBus, matches
from engine.ids import new_id, resolve


def _event(action: str = "start", **attrs: str) -> Event:
    return Event(type="container", action=action, actor_id="abc123", attributes=attrs)


def test_filters() -> None:
    event = _event("die", name="web", exitCode="0", **{"com.docker.compose.project": "p"})
    assert matches(event, {"type": ["container"], "event": ["die"]})
    assert not matches(event, {"event": ["start"]})
    assert matches(event, {"container": ["web"]})
    assert matches(event, {"container": ["abc"]})
    assert matches(event, {"label": ["com.docker.compose.project=p"]})
    assert not matches(event, {"label": ["com.docker.compose.project=q"]})
    assert matches(Event("container", "exec_start: sh", "x"), {"event": ["exec_start"]})


@pytest.mark.asyncio
async def test_replay_then_follow_until() -> None:
    bus = EventBus()
    start = time.time_ns()
    bus.emit("container", "create", "c1")
    received: list[str] = []

    async def consume() -> None:
        async for event in bus.subscribe(since_nano=start, until_nano=time.time_ns() + 300_000_000):
            received.append(event.action)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    bus.emit("container", "start", "c1")
    await asyncio.wait_for(task, 2)
    assert received == ["create", "start"]
    assert bus.listener_count == 0


def test_new_ids_are_hex_and_not_numeric() -> None:
    for _ in range(100):
        value = new_id()
        assert len(value) == 64 and not value[:12].isdigit()


def test_resolve_order() -> None:
    objs = {"abc1" + "0" * 60: "first", "abd2" + "0" * 60: "second"}
    names = {"first": "web", "second": "abc1"}

    def name_of(obj: str) -> str:
        return names[obj]

    def nf(ref: str) -> Exception:
        return NotFound(f"No such container: {ref}")

    assert resolve("web", objs, name_of, nf) == "first"
    assert resolve("/web", objs, name_of, nf) == "first"
    # An exact name wins over an id prefix.
    assert resolve("abc1", objs, name_of, nf) == "second"
    assert resolve("abd", objs, name_of, nf) == "second"
    with pytest.raises(InvalidParameter):
        resolve("ab", objs, name_of, nf)
    with pytest.raises(NotFound, match="No such container: zz"):
        resolve("zz", objs, name_of, nf)
