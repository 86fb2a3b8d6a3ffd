"""Container lifecycle states and the legal transitions between them.

    created ──start──▶ running ──exit──▶ exited ──start──▶ running
       │                 │  ▲                │
       │              pause│unpause          │
       │                 ▼  │                │
       │               paused              removing ──▶ (gone)
       └──────────────────────────────────────┘

An illegal transition is a ``Conflict``, except asking for the state the container is
already in (start when running, stop when stopped), which Docker answers with 304.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    RESTARTING = "restarting"
    REMOVING = "removing"
    EXITED = "exited"
    DEAD = "dead"


TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.CREATED: frozenset({Status.RUNNING, Status.REMOVING}),
    Status.RUNNING: frozenset({Status.EXITED, Status.PAUSED}),
    Status.PAUSED: frozenset({Status.RUNNING, Status.EXITED}),
    Status.RESTARTING: frozenset({Status.RUNNING, Status.EXITED, Status.REMOVING}),
    Status.EXITED: frozenset({Status.RUNNING, Status.REMOVING, Status.RESTARTING}),
    Status.REMOVING: frozenset({Status.DEAD}),
    Status.DEAD: frozenset({Status.REMOVING}),
}

ACTIVE = frozenset({Status.RUNNING, Status.PAUSED})


def can_transition(current: Status, target: Status) -> bool:
    return target in TRANSITIONS[current]
