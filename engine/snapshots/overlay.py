"""The overlayfs snapshotter: rows in ``snapshots``, directories under ``snapshots/``.

    snapshots/<dir>/fs      the layer's files (upperdir while active)
    snapshots/<dir>/work    overlay workdir (used only while active and mounted)

``<dir>`` is a short random name, not the key: keys can be long (``sha256:…``) and every
byte of a lower path counts against the overlay option limit (see mount.py).

Crash safety (architecture §3):
- prepare builds ``<dir>`` under ``tmp/``, fsyncs, renames it into ``snapshots/``, fsyncs
  that directory, and only then commits the row (rule 2). A crash before the row leaves a
  directory that ``cleanup`` removes.
- commit runs syncfs(2) on the snapshot's filesystem before the row says "committed", so a
  committed layer never has half-written files after a power cut.
- remove marks the row ``removing``, deletes the files, then deletes the row (rule 3);
  ``cleanup`` finishes any marked removal. ``mark_removed`` is the first step alone, for
  callers that answer before the files go (``docker rmi``): the row is marked and renamed
  to a tombstone key (``removing:<dir>``, no parent) in one statement, so the key can be
  used again at once; ``finish_removals`` (a background task of the caller) deletes the
  files and rows of every marked snapshot.
- ``cleanup`` also drops active snapshots whose key starts with ``extract-`` (unpacks that
  never finished) and directories no row names.

Metadata lives in memory too (loaded once from the table), so ``writable_path`` and
``mounts`` never touch the database. Writes go to the table first, then to memory.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import secrets
import shutil
import sqlite3
import stat
import time
from dataclasses import dataclass, replace
from pathlib import Path

from engine.errors import Conflict, InvalidParameter, NotFound, SystemError_
from engine.layout import Layout
from engine.snapshots.base import Kind, Mount, SnapshotInfo
from engine.store.atomic import fsync_dir
from engine.store.crashpoints import crash_point
from engine.store.db import Database

log = logging.getLogger(__name__)

EXTRACT_PREFIX = "extract-"
TOMBSTONE_PREFIX = "removing:"
# Present when the kernel knows overlay's inodes index; with the index on, an upper dir
# stays "in use" and lower dirs get bound to their first upper, so turn it off.
_INDEX_PARAM = "/sys/module/overlay/parameters/index"
_TMP_PREFIX = "snapshot-"
_DIR_BYTES = 6  # 12 hex characters: short lower paths, 2^48 names


@dataclass(frozen=True)
class _Row:
    key: str
    dir: str
    parent: str | None
    kind: Kind
    removing: bool


class OverlaySnapshotter:
    def __init__(self, layout: Layout, db: Database) -> None:
        self._layout = layout
        self._db = db
        self._rows: dict[str, _Row] = {}
        self._loaded = False
        self._lock = asyncio.Lock()  # guards metadata changes, never held across file work
        self._reaping = asyncio.Lock()  # one finish_removals at a time
        # Directories whose files are being deleted right now: a marked row is seen by
        # its own remove() and by a background finish_removals(); one deletes, the other
        # leaves it (two rmtrees of one tree fail on what the other already took).
        self._deleting: set[str] = set()
        self._index_off: tuple[str, ...] = ()

    # ------------------------------------------------------------------ loading
    async def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        rows = await self._db.query("SELECT key, dir, parent, kind, removing FROM snapshots")
        self._rows = {r["key"]: _row_of(r) for r in rows}
        if await asyncio.to_thread(os.path.exists, _INDEX_PARAM):
            self._index_off = ("index=off",)
        self._loaded = True

    def _dir(self, row: _Row) -> Path:
        return self._layout.snapshot_dir(row.dir)

    def _get(self, key: str) -> _Row:
        row = self._rows.get(key)
        if row is None or row.removing:
            raise NotFound(f"snapshot {key} does not exist")
        return row

    # ------------------------------------------------------------------ lifecycle
    async def prepare(self, key: str, parent: str | None) -> list[Mount]:
        if not key:
            raise InvalidParameter("snapshot key must not be empty")
        await self._ensure_loaded()
        self._check_prepare(key, parent)
        name = secrets.token_hex(_DIR_BYTES)
        await asyncio.to_thread(self._create_dirs, name)
        crash_point("snapshot_after_rename")
        try:
            async with self._lock:
                self._check_prepare(key, parent)  # again: another task may have won the key
                await self._db.execute(
                    "INSERT INTO snapshots (key, dir, parent, kind, created) "
                    "VALUES (?, ?, ?, 'active', ?)",
                    (key, name, parent, time.time()),
                )
                row = _Row(key, name, parent, "active", False)
                self._rows[key] = row
        except BaseException:
            await asyncio.to_thread(_rmtree, self._layout.snapshot_dir(name))
            raise
        return self._mounts_of(row)

    def _check_prepare(self, key: str, parent: str | None) -> None:
        if key in self._rows:
            raise Conflict(f"snapshot {key} already exists")
        if parent is None:
            return
        row = self._rows.get(parent)
        if row is None or row.removing:
            raise NotFound(f"parent snapshot {parent} does not exist")
        if row.kind != "committed":
            raise InvalidParameter(f"parent snapshot {parent} is not committed")

    def _create_dirs(self, name: str) -> None:
        staging = self._layout.tmp_dir / f"{_TMP_PREFIX}{name}"
        staging.mkdir(mode=0o710, parents=False)
        (staging / "fs").mkdir(mode=0o755)
        (staging / "work").mkdir(mode=0o700)
        os.chmod(staging / "fs", 0o755)  # mkdir's mode is filtered by the umask
        fsync_dir(staging)
        target = self._layout.snapshot_dir(name)
        os.rename(staging, target)  # fails if the name exists: never reuse a directory
        fsync_dir(self._layout.snapshots_dir)

    async def commit(self, name: str, key: str) -> None:
        await self._ensure_loaded()
        row = self._get(key)
        if row.kind != "active":
            raise InvalidParameter(f"snapshot {key} is already committed")
        if name in self._rows:
            raise Conflict(f"snapshot {name} already exists")
        await asyncio.to_thread(_syncfs, self._dir(row) / "fs")
        async with self._lock:
            row = self._get(key)
            if name in self._rows:
                raise Conflict(f"snapshot {name} already exists")
            await self._db.execute(
                "UPDATE snapshots SET key = ?, kind = 'committed' "
                "WHERE key = ? AND kind = 'active'",
                (name, key),
            )
            del self._rows[key]
            self._rows[name] = replace(row, key=name, kind="committed")

    async def remove(self, key: str) -> None:
        await self._ensure_loaded()
        async with self._lock:
            row = self._get(key)
            self._check_no_children(key)
            await self._db.execute("UPDATE snapshots SET removing = 1 WHERE key = ?", (key,))
            self._rows[key] = replace(row, removing=True)
        crash_point("snapshot_remove_marked")
        await self._finish_remove(row)

    async def mark_removed(self, key: str) -> None:
        """Rule 3's mark, alone: ``key`` is gone (and free) once this returns; the files
        stay until ``finish_removals`` (or the next ``cleanup``) deletes them."""
        await self._ensure_loaded()
        async with self._lock:
            row = self._get(key)
            self._check_no_children(key)
            tombstone = TOMBSTONE_PREFIX + row.dir
            await self._db.execute(
                "UPDATE snapshots SET removing = 1, key = ?, parent = NULL WHERE key = ?",
                (tombstone, key),
            )
            del self._rows[key]
            self._rows[tombstone] = replace(row, key=tombstone, parent=None, removing=True)
        crash_point("snapshot_remove_marked")

    async def finish_removals(self) -> list[str]:
        """Delete the files, then the rows, of every snapshot marked for removal (one
        caller at a time; a later call finds what an earlier one left). Returns the keys."""
        await self._ensure_loaded()
        done: list[str] = []
        async with self._reaping:
            for row in [r for r in self._rows.values() if r.removing]:
                if row.dir in self._deleting:
                    continue  # its remove() is deleting it
                crash_point("snapshot_reap_before_files")
                await self._finish_remove(row)
                done.append(row.key)
        return done

    def _check_no_children(self, key: str) -> None:
        children = [r.key for r in self._rows.values() if r.parent == key]
        if children:
            raise Conflict(
                f"cannot remove snapshot {key}: {len(children)} snapshot(s) depend on it"
            )

    async def _finish_remove(self, row: _Row) -> None:
        self._deleting.add(row.dir)
        try:
            await asyncio.to_thread(_rmtree, self._dir(row))
        except OSError as exc:
            # The row stays marked: the next cleanup() tries again.
            raise SystemError_(f"removing snapshot {row.key}: {exc}") from exc
        finally:
            self._deleting.discard(row.dir)
        async with self._lock:
            await self._db.execute("DELETE FROM snapshots WHERE key = ?", (row.key,))
            self._rows.pop(row.key, None)

    # ------------------------------------------------------------------ queries
    async def stat(self, key: str) -> SnapshotInfo:
        await self._ensure_loaded()
        row = self._get(key)
        return SnapshotInfo(key=row.key, parent=row.parent, kind=row.kind)

    async def mounts(self, key: str) -> list[Mount]:
        await self._ensure_loaded()
        return self._mounts_of(self._get(key))

    def writable_path(self, key: str) -> Path:
        row = self._get(key)
        if row.kind != "active":
            raise InvalidParameter(f"snapshot {key} is committed and not writable")
        return self._dir(row) / "fs"

    async def usage(self, key: str) -> int:
        """Bytes in the snapshot's own fs dir, counted as Docker counts a layer's size:
        the apparent size of every non-directory, each inode once (hardlinks)."""
        await self._ensure_loaded()
        row = self._get(key)
        return await asyncio.to_thread(_apparent_size, self._dir(row) / "fs")

    def keys(self) -> list[str]:
        """Every live snapshot key (from memory; call after ``cleanup`` or any async use)."""
        return [k for k, r in self._rows.items() if not r.removing]

    def children(self, key: str) -> list[str]:
        return [r.key for r in self._rows.values() if r.parent == key and not r.removing]

    def _chain(self, row: _Row) -> list[_Row]:
        """``row`` and its ancestors, top to bottom."""
        chain = [row]
        seen = {row.key}
        while chain[-1].parent is not None:
            parent = self._rows.get(chain[-1].parent)
            if parent is None or parent.key in seen:
                raise SystemError_(f"snapshot {row.key}: broken parent chain")
            seen.add(parent.key)
            chain.append(parent)
        return chain

    def _mounts_of(self, row: _Row) -> list[Mount]:
        chain = self._chain(row)
        fs_dirs = [str(self._dir(r) / "fs") for r in chain]
        if row.kind == "active":
            if len(chain) == 1:
                return [Mount("bind", fs_dirs[0], ("rbind", "rw"))]
            return [
                Mount(
                    "overlay",
                    "overlay",
                    (
                        "lowerdir=" + ":".join(fs_dirs[1:]),
                        f"upperdir={fs_dirs[0]}",
                        f"workdir={self._dir(row) / 'work'}",
                        *self._index_off,
                    ),
                )
            ]
        if len(chain) == 1:
            return [Mount("bind", fs_dirs[0], ("rbind", "ro"))]
        # Overlay with lower layers only (no upper) is read-only by construction.
        return [Mount("overlay", "overlay", ("lowerdir=" + ":".join(fs_dirs),))]

    # ------------------------------------------------------------------ start-up sweep
    async def cleanup(self) -> list[str]:
        """Finish interrupted removals, drop unfinished unpacks and unnamed directories.
        Returns what was removed (keys and directory names). Run it before any other use."""
        self._loaded = False
        await self._ensure_loaded()
        removed: list[str] = []
        for row in list(self._rows.values()):
            if row.removing:
                await self._finish_remove(row)
                removed.append(row.key)
        for row in list(self._rows.values()):
            if row.kind == "active" and row.key.startswith(EXTRACT_PREFIX):
                try:
                    await self.remove(row.key)
                except (Conflict, SystemError_) as exc:
                    log.warning("snapshots: cannot drop unfinished %s: %s", row.key, exc)
                    continue
                removed.append(row.key)
        named = {r.dir for r in self._rows.values()}
        removed += await asyncio.to_thread(self._sweep_dirs, named)
        if removed:
            log.info("snapshots: cleanup removed %s", ", ".join(removed))
        return removed

    def _sweep_dirs(self, named: set[str]) -> list[str]:
        gone = []
        try:
            entries = os.listdir(self._layout.snapshots_dir)
        except FileNotFoundError:
            entries = []
        for name in entries:
            path = self._layout.snapshot_dir(name)
            if name in named:
                continue
            if os.path.ismount(path / "fs") or os.path.ismount(path):
                log.warning("snapshots: orphan %s is mounted; leaving it", path)
                continue
            _rmtree(path)
            gone.append(name)
        if gone:
            fsync_dir(self._layout.snapshots_dir)
        try:
            staging = [n for n in os.listdir(self._layout.tmp_dir) if n.startswith(_TMP_PREFIX)]
        except FileNotFoundError:
            staging = []
        for name in staging:
            _rmtree(self._layout.tmp_dir / name)
            gone.append(f"tmp/{name}")
        return gone


# ---------------------------------------------------------------------- helpers
def _row_of(r: sqlite3.Row) -> _Row:
    kind: Kind = "committed" if r["kind"] == "committed" else "active"
    return _Row(r["key"], r["dir"], r["parent"], kind, bool(r["removing"]))


def _rmtree(path: Path) -> None:
    """Remove a tree that may hold read-only dirs or overlay's mode-000 work dirs (root
    ignores modes) without following symlinks; a missing path, or entries someone else
    removed meanwhile, are fine."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path, onerror=_gone_is_fine)
    else:
        path.unlink(missing_ok=True)


def _gone_is_fine(
    _function: object, _path: str, exc_info: tuple[type[BaseException], BaseException, object]
) -> None:
    """rmtree's error hook: an entry that vanished under us is what we wanted."""
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]


_libc: ctypes.CDLL | None = None


def _syncfs(path: Path) -> None:
    """Flush the filesystem holding ``path`` (one syscall instead of an fsync per file)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def _apparent_size(root: Path) -> int:
    total = 0
    seen: set[tuple[int, int]] = set()
    stack = [str(root)]
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except FileNotFoundError:
            continue
        for entry in entries:
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                stack.append(entry.path)
                continue
            if st.st_nlink > 1:
                ident = (st.st_dev, st.st_ino)
                if ident in seen:
                    continue
                seen.add(ident)
            total += st.st_size
    return total
