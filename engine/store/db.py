"""SQLite access for the engine: one connection, one thread, WAL, synchronous=FULL.

Every statement runs on a single dedicated thread so the event loop never blocks and
writers never interleave. ``transaction`` runs a plain function on that thread inside
BEGIN IMMEDIATE … COMMIT; it is the only way to write.

A write that finds the filesystem full raises ``StorageFull`` (a 500 that says so, as
dockerd's "no space left on device" errors do) and leaves no transaction open behind it:
a failed COMMIT is rolled back, so the next write can succeed once there is room.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from engine.errors import SystemError_
from engine.store.schema import MIGRATIONS, SCHEMA_VERSION

T = TypeVar("T")
Params = Sequence[Any] | dict[str, Any]

# sqlite3's primary result code for a full disk (sqlite3.h).
SQLITE_FULL = 13


class StorageFull(SystemError_):
    """The data root's filesystem has no room for a state write."""


class Database:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wharfd-db")
        self._conn: sqlite3.Connection | None = None

    # --- lifecycle ----------------------------------------------------------------
    async def open(self) -> None:
        await self._run(self._open_sync)

    def _open_sync(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        self._conn = conn
        self._migrate(conn)

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        current = conn.execute("PRAGMA user_version").fetchone()[0]
        if current > SCHEMA_VERSION:
            raise RuntimeError(
                f"database schema {current} is newer than this wharfd ({SCHEMA_VERSION})"
            )
        for version in range(current, SCHEMA_VERSION):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _split_statements(MIGRATIONS[version]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={version + 1}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    async def close(self) -> None:
        if self._conn is not None:
            await self._run(self._conn.close)
            self._conn = None
        await asyncio.to_thread(self._executor.shutdown, True)

    # --- access -------------------------------------------------------------------
    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("database is not open")
        return self._conn

    async def query(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        def run() -> list[sqlite3.Row]:
            return self._connection().execute(sql, params).fetchall()

        return await self._run(run)

    async def transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` on the db thread inside one IMMEDIATE transaction."""

        def run() -> T:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException as exc:
                # A COMMIT that failed (disk full) may leave the transaction open; a
                # later BEGIN would then fail for ever.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if _is_disk_full(exc):
                    raise StorageFull(
                        f"no space left on device: cannot write {self._path}: {exc}"
                    ) from exc
                raise
            return result

        return await self._run(run)

    async def execute(self, sql: str, params: Params = ()) -> int:
        """One write statement in its own transaction; returns the row count."""
        return await self.transaction(lambda conn: conn.execute(sql, params).rowcount)


def _is_disk_full(exc: BaseException) -> bool:
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF == SQLITE_FULL:
        return True
    return "database or disk is full" in str(exc)


def _split_statements(script: str) -> list[str]:
    """Split a migration script on ';' (our migrations contain no ';' inside literals)."""
    parts = []
    for raw in script.split(";"):
        lines = [line.split("--", 1)[0] for line in raw.splitlines()]
        statement = "\n".join(lines).strip()
        if statement:
            parts.append(statement)
    return parts
