"""Snapshotters: where image layers and container rw layers live (containerd's shape).

Lifecycle, by example::

    # unpack a layer on top of its parent
    await sn.prepare("extract-<random>", parent="sha256:<parent chain id>" | None)
    path = sn.writable_path("extract-<random>")     # unpack the tar into it
    await sn.commit("sha256:<chain id>", "extract-<random>")   # now read-only, named
    # a container's rw layer
    mounts = await sn.prepare("<container id>", parent="sha256:<top chain id>")
    # ...mount ``mounts`` at the rootfs at start, unmount at stop...
    await sn.remove("<container id>")

Keys and names share one namespace. A committed snapshot is immutable. ``remove`` of a
snapshot that others use as parent raises ``Conflict``. ``mark_removed`` + (later, in the
background) ``finish_removals`` is ``remove`` in two steps: the key is gone and free for
reuse after the first, the files are deleted by the second (or by ``cleanup`` after a
crash). Unfinished work (a crash between
prepare and commit) is swept by ``cleanup``, which removes every directory no row names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

Kind = Literal["active", "committed"]


@dataclass(frozen=True)
class Mount:
    type: str            # "overlay" or "bind"
    source: str
    options: tuple[str, ...]


@dataclass(frozen=True)
class SnapshotInfo:
    key: str
    parent: str | None
    kind: Kind


class Snapshotter(Protocol):
    async def prepare(self, key: str, parent: str | None) -> list[Mount]: ...
    async def commit(self, name: str, key: str) -> None: ...
    async def mounts(self, key: str) -> list[Mount]: ...
    async def remove(self, key: str) -> None: ...
    async def mark_removed(self, key: str) -> None: ...
    async def finish_removals(self) -> list[str]: ...
    async def stat(self, key: str) -> SnapshotInfo: ...
    async def usage(self, key: str) -> int: ...
    def writable_path(self, key: str) -> Path: ...
    async def cleanup(self) -> list[str]: ...
