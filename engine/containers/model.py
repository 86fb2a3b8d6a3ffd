"""A container as the engine keeps it: immutable config, small mutable state, frozen view.

``config`` and ``host_config`` keep Docker's own shapes (the create body, with image
defaults merged and daemon defaults filled in), because inspect returns them as they are.
``ContainerState`` is what changes; every change is committed to SQLite before a new
``ContainerView`` is published for readers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from engine.containers.state import Status

ZERO_TIME = "0001-01-01T00:00:00Z"


@dataclass(frozen=True)
class ContainerConfig:
    id: str
    name: str                       # without the leading '/'
    image_ref: str                  # as the client gave it ("busybox")
    image_id: str                   # sha256:...
    created: str                    # RFC 3339 with nanoseconds
    config: dict[str, Any]          # Docker "Config"
    host_config: dict[str, Any]     # Docker "HostConfig"
    networking: dict[str, Any]      # Docker "NetworkingConfig"
    path: str                       # entrypoint+cmd split as Docker shows: Path + Args
    args: tuple[str, ...]
    platform: str = "linux"
    driver: str = "overlay2"

    def to_json(self) -> str:
        data = asdict(self)
        data["args"] = list(self.args)
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> ContainerConfig:
        data = json.loads(text)
        data["args"] = tuple(data["args"])
        return cls(**data)

    @property
    def tty(self) -> bool:
        return bool(self.config.get("Tty"))

    @property
    def open_stdin(self) -> bool:
        return bool(self.config.get("OpenStdin"))

    @property
    def stdin_once(self) -> bool:
        return bool(self.config.get("StdinOnce"))

    @property
    def auto_remove(self) -> bool:
        return bool(self.host_config.get("AutoRemove"))

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.config.get("Labels") or {})


@dataclass(frozen=True)
class ContainerState:
    status: Status = Status.CREATED
    pid: int = 0
    exit_code: int = 0
    error: str = ""
    oom_killed: bool = False
    started_at: str = ZERO_TIME
    finished_at: str = ZERO_TIME
    restart_count: int = 0
    has_been_started: bool = False
    manually_stopped: bool = False
    conmon_pid: int = 0
    # Docker's State.Health: {"Status", "FailingStreak", "Log": [...]}; None without a
    # healthcheck. Kept in the state row so `docker inspect` shows it after a restart.
    health: dict[str, Any] | None = None
    # `docker commit` paused it (recorded before the pause): restore thaws it if the
    # daemon died inside the commit.
    paused_by_commit: bool = False

    def to_json(self) -> str:
        data = asdict(self)
        data["status"] = self.status.value
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> ContainerState:
        data = json.loads(text)
        data["status"] = Status(data["status"])
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def evolve(self, **changes: Any) -> ContainerState:
        return replace(self, **changes)


@dataclass(frozen=True)
class ContainerView:
    """What readers (inspect, list, events) see; never mutated."""

    config: ContainerConfig
    state: ContainerState
    image_names: tuple[str, ...] = field(default_factory=tuple)
    exec_ids: tuple[str, ...] = field(default_factory=tuple)

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def running(self) -> bool:
        return self.state.status in (Status.RUNNING, Status.PAUSED)
