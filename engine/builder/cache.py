"""The classic builder's cache: (parent image, step key) → the image that step made.

The key is a digest of the step's run config, the ``container_config`` dockerd also
compares (its ``Cmd`` names the instruction, its arguments, the build args in effect
and, for COPY/ADD, a digest of the files' content and metadata). Rows live in SQLite
(schema migration 5), so hits survive a daemon restart; a hit counts only while its
image still exists. ``docker builder prune`` drops the rows.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Callable, Mapping
from typing import Any

from engine.store.db import Database

# Per-container values that never make two steps different.
_NOT_IN_KEY = frozenset({"Hostname", "Domainname", "AttachStdin", "AttachStdout",
                         "AttachStderr", "Tty", "OpenStdin", "StdinOnce"})


def step_key(run_config: Mapping[str, Any]) -> str:
    """The cache key of a step: sha256 of its run config in a canonical JSON form."""
    relevant = {k: v for k, v in run_config.items() if k not in _NOT_IN_KEY}
    text = json.dumps(relevant, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


class BuildCache:
    def __init__(self, db: Database, image_exists: Callable[[str], bool]) -> None:
        self._db = db
        self._image_exists = image_exists

    async def lookup(self, parent: str | None, key: str) -> str | None:
        rows = await self._db.query(
            "SELECT image_id FROM build_cache WHERE parent = ? AND key = ?", (parent or "", key)
        )
        for row in rows:
            if self._image_exists(row["image_id"]):
                return str(row["image_id"])
        return None

    async def record(self, parent: str | None, key: str, image_id: str) -> None:
        await self._db.execute(
            "INSERT OR REPLACE INTO build_cache (parent, key, image_id, created) "
            "VALUES (?, ?, ?, ?)", (parent or "", key, image_id, time.time()),
        )

    async def entries(self) -> list[tuple[str, str, float]]:
        """(image id, parent image id or "", created) of every entry, oldest first,
        one per image (its first recording)."""
        rows = await self._db.query(
            "SELECT image_id, parent, MIN(created) AS created FROM build_cache "
            "GROUP BY image_id ORDER BY created")
        return [(str(r["image_id"]), str(r["parent"]), float(r["created"])) for r in rows]

    async def prune(self) -> list[str]:
        """Forget every entry; returns the image ids they named (oldest first)."""

        def drop(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute("SELECT image_id FROM build_cache ORDER BY created").fetchall()
            conn.execute("DELETE FROM build_cache")
            return list(dict.fromkeys(str(r[0]) for r in rows))

        return await self._db.transaction(drop)
