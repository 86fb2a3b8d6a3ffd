"""The content store: immutable blobs named by their sha256 digest.

    content/ingest/<ref>/data      a blob being written (one writer per ref)
    content/blobs/sha256/<hex>     committed blobs, mode 0444, never modified

A writer streams into ``ingest/<ref>/data`` while hashing. ``commit`` fsyncs the data,
checks the expected size and digest when the caller gave them, renames the file into
``blobs/sha256/<hex>`` and fsyncs that directory (architecture §3 rule 5). A blob that is
already there is a success: content-addressed data is the same whoever wrote it.

Writers are plain blocking objects meant for a worker thread (``asyncio.to_thread``);
``open_writer`` itself does a mkdir and an open, so call it from that thread too. The
async methods run their file work in a thread.

Nothing here knows which blobs are in use: ``gc(referenced)`` deletes every blob outside
the set it is given, so its caller must pass a complete set and must not run it while
another task is between committing a blob and committing the row that names it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import secrets
import shutil
import threading
from pathlib import Path
from types import TracebackType

from engine.errors import InvalidParameter, NotFound
from engine.layout import Layout
from engine.store.atomic import fsync_dir

log = logging.getLogger(__name__)

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_BLOB_MODE = 0o444


def validate_digest(digest: str) -> str:
    """``digest`` when it is a canonical ``sha256:<64 lowercase hex>``, else InvalidParameter."""
    if not _DIGEST.match(digest):
        raise InvalidParameter(f"invalid digest {digest!r}: expected sha256:<64 hex digits>")
    return digest


class ContentWriter:
    """One blob being written. Not thread-safe: one thread writes, then commits or aborts."""

    def __init__(
        self,
        store: ContentStore,
        ref: str,
        directory: Path,
        expected_digest: str | None,
        expected_size: int | None,
    ) -> None:
        self._store = store
        self.ref = ref
        self._dir = directory
        self._expected_digest = expected_digest
        self._expected_size = expected_size
        self._hash = hashlib.sha256()
        self._size = 0
        self._fd: int | None = os.open(
            directory / "data", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
        )
        self._done = False

    # -- writing -------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self._size

    @property
    def digest(self) -> str:
        """The digest of everything written so far (the blob's digest once complete)."""
        return "sha256:" + self._hash.hexdigest()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._fd is None:
            raise ValueError(f"content writer {self.ref} is closed")
        view = memoryview(data)
        if self._expected_size is not None and self._size + len(view) > self._expected_size:
            # Fail early: more bytes than announced can never verify.
            raise InvalidParameter(
                f"unexpected size {self._size + len(view)} for {self.ref}, "
                f"expected {self._expected_size}"
            )
        self._hash.update(view)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._size += len(data)
        return len(data)

    # -- finishing -----------------------------------------------------------------
    def commit(self) -> str:
        """Make the blob durable under its digest and return the digest."""
        if self._fd is None:
            raise ValueError(f"content writer {self.ref} is closed")
        try:
            os.fchmod(self._fd, _BLOB_MODE)  # read-only before anyone can see it
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            digest = self.digest
            self._verify(digest)
            target = self._store.path(digest)
            if not target.exists():
                os.replace(self._dir / "data", target)
                fsync_dir(target.parent)
        except BaseException:
            self.abort()
            raise
        self._finish()
        return digest

    def _verify(self, digest: str) -> None:
        if self._expected_size is not None and self._size != self._expected_size:
            raise InvalidParameter(
                f"unexpected commit size {self._size}, expected {self._expected_size}: "
                "failed precondition"
            )
        if self._expected_digest is not None and digest != self._expected_digest:
            raise InvalidParameter(
                f"unexpected commit digest {digest}, expected {self._expected_digest}: "
                "failed precondition"
            )

    def abort(self) -> None:
        """Drop what was written. Idempotent; a no-op after commit."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if not self._done:
            self._finish()

    def _finish(self) -> None:
        self._done = True
        shutil.rmtree(self._dir, ignore_errors=True)
        self._store._release(self.ref)

    def __enter__(self) -> ContentWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()


class ContentStore:
    def __init__(self, layout: Layout) -> None:
        self._layout = layout
        self._active: set[str] = set()
        self._active_lock = threading.Lock()

    # -- names ---------------------------------------------------------------------
    def path(self, digest: str) -> Path:
        return self._layout.blob_path(validate_digest(digest))

    def exists(self, digest: str) -> bool:
        """One stat(2); cheap enough to call from the event loop."""
        return self.path(digest).is_file()

    @staticmethod
    def new_ref(prefix: str) -> str:
        """A fresh ingest ref such as ``layer-1f2e…`` (refs are directory names)."""
        return f"{prefix}-{secrets.token_hex(8)}"

    # -- writing -------------------------------------------------------------------
    def open_writer(
        self, ref: str, expected_digest: str | None = None, expected_size: int | None = None
    ) -> ContentWriter:
        """Start a blob. Blocking (mkdir + open): call it from a worker thread."""
        if not _REF.match(ref):
            raise InvalidParameter(f"invalid ingest ref {ref!r}")
        if expected_digest is not None:
            validate_digest(expected_digest)
        with self._active_lock:
            if ref in self._active:
                raise InvalidParameter(f"ref {ref} is locked: another writer is active")
            self._active.add(ref)
        try:
            self._layout.blobs_dir.mkdir(parents=True, exist_ok=True)
            directory = self._layout.ingest_dir / ref
            # A directory left by a crashed run under the same ref holds nothing we need.
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True, mode=0o700)
            return ContentWriter(self, ref, directory, expected_digest, expected_size)
        except BaseException:
            self._release(ref)
            raise

    def _release(self, ref: str) -> None:
        with self._active_lock:
            self._active.discard(ref)

    async def write_blob(self, data: bytes, expected_digest: str | None = None) -> str:
        """Store ``data`` (a config, a manifest) and return its digest."""

        def run() -> str:
            with self.open_writer(self.new_ref("blob"), expected_digest, len(data)) as writer:
                writer.write(data)
                return writer.commit()

        return await asyncio.to_thread(run)

    async def read_blob(self, digest: str) -> bytes:
        path = self.path(digest)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise NotFound(f"content {digest}: not found") from None

    # -- removal -------------------------------------------------------------------
    async def delete(self, digest: str) -> bool:
        """Remove one blob; True when it existed."""
        path = self.path(digest)

        def run() -> bool:
            try:
                path.unlink()
            except FileNotFoundError:
                return False
            fsync_dir(path.parent)
            return True

        return await asyncio.to_thread(run)

    def digests(self) -> list[str]:
        """Every committed blob (blocking directory listing)."""
        try:
            names = os.listdir(self._layout.blobs_dir)
        except FileNotFoundError:
            return []
        return [f"sha256:{name}" for name in names if _DIGEST.match(f"sha256:{name}")]

    async def cleanup(self) -> list[str]:
        """Remove every ingest directory no live writer owns (unfinished writes of a
        previous run). Returns the refs removed."""

        def run() -> list[str]:
            try:
                entries = os.listdir(self._layout.ingest_dir)
            except FileNotFoundError:
                return []
            with self._active_lock:
                active = set(self._active)
            removed = []
            for name in entries:
                if name in active:
                    continue
                path = self._layout.ingest_dir / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed.append(name)
            # Blob names that are not digests (a crashed rename target cannot be, but a
            # stray file can) are garbage as well.
            try:
                for name in os.listdir(self._layout.blobs_dir):
                    if not _DIGEST.match(f"sha256:{name}"):
                        (self._layout.blobs_dir / name).unlink(missing_ok=True)
                        removed.append(f"blobs/{name}")
            except FileNotFoundError:
                pass
            return removed

        removed = await asyncio.to_thread(run)
        if removed:
            log.info("content store: removed %d unfinished ingests", len(removed))
        return removed

    async def gc(self, referenced: set[str]) -> list[str]:
        """Delete every blob whose digest is not in ``referenced``; returns those digests."""

        def run() -> list[str]:
            gone = []
            for digest in self.digests():
                if digest in referenced:
                    continue
                try:
                    self.path(digest).unlink()
                except FileNotFoundError:
                    continue
                gone.append(digest)
            if gone:
                fsync_dir(self._layout.blobs_dir)
            return gone

        gone = await asyncio.to_thread(run)
        if gone:
            log.info("content store: collected %d unreferenced blobs", len(gone))
        return gone
