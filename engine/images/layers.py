"""Layer ingestion: one pass over a layer's bytes that keeps the blob and unpacks it.

``ingest`` runs in a worker thread. It reads the layer as it arrives (from the network,
a request body, an archive member), hashes it and writes it to a content-store writer,
and hands the same bytes to a second thread that decompresses (gzip, zstd, …), hashes
the tar (the diff id) and extracts it into a snapshot directory. The two threads
overlap: hashing and file writes release the GIL.

The bytes stored are the ones received, so the blob digest is what a registry or an
OCI layout names; for an uncompressed layer it is the diff id itself (hashed once).

Verification order matters for the error a user sees (reliability F15): when the
received bytes do not match the expected digest, that is the error, even if the
corruption also broke decompression or the tar first.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.errors import InvalidParameter
from engine.images.pipes import ThreadPipe
from engine.images.unpack import CHUNK, Readable, UnpackResult, unpack
from engine.store.content import ContentWriter
from engine.store.crashpoints import crash_point

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_BZIP2_MAGIC = b"BZh"
_XZ_MAGIC = b"\xfd7zXZ\x00"
EMPTY_TAR_DIGEST = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"


class VerificationError(InvalidParameter):
    """The bytes received are not the blob that was asked for."""


def sniff_compression(head: bytes) -> str:
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_ZSTD_MAGIC):
        return "zstd"
    if head.startswith(_BZIP2_MAGIC):
        return "bzip2"
    if head.startswith(_XZ_MAGIC):
        return "xz"
    return "none"


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """OCI chain ids: the first is the first diff id, then sha256("<parent> <diff>")."""
    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            text = f"{out[-1]} {diff_id}".encode()
            out.append("sha256:" + hashlib.sha256(text).hexdigest())
    return out


@dataclass(frozen=True)
class Ingested:
    blob_digest: str  # sha256 of the bytes received
    blob_size: int
    compression: str  # "none", "gzip", "zstd", "bzip2", "xz"
    diff_id: str  # sha256 of the uncompressed tar
    tar_size: int
    size: int  # bytes of content unpacked (files and symlink targets)
    entries: int


class _Extraction(threading.Thread):
    """The second stage: decompress + hash + untar, fed through a ThreadPipe."""

    def __init__(self, pipe: ThreadPipe, root: Path, hash_stream: bool) -> None:
        super().__init__(name="wharfd-unpack", daemon=True)
        self._pipe = pipe
        self._root = root
        self._hash_stream = hash_stream
        self.result: UnpackResult | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = unpack(self._pipe, self._root, hash_stream=self._hash_stream)
        except BaseException as exc:  # handed to the ingesting thread
            self.error = exc
        finally:
            self._pipe.close_reader()


def ingest(
    source: Readable,
    writer: ContentWriter,
    root: Path,
    *,
    expected_digest: str | None = None,
    on_bytes: Callable[[int], None] | None = None,
    crash_after_first_chunk: str | None = None,
) -> Ingested:
    """Read ``source`` to its end into ``writer`` (not committed here) and extract it
    into ``root``. Blocking; call from a worker thread."""
    first = _read_some(source)
    compression = sniff_compression(first)
    pipe = ThreadPipe()
    extraction = _Extraction(pipe, root, hash_stream=compression != "none")
    extraction.start()
    try:
        chunk = first
        started = False
        while chunk:
            writer.write(chunk)
            pipe.write(chunk)  # False once extraction stopped: keep hashing regardless
            if on_bytes is not None:
                on_bytes(len(chunk))
            if not started:
                started = True
                if crash_after_first_chunk:
                    crash_point(crash_after_first_chunk)
            chunk = source.read(CHUNK)
    except BaseException as exc:
        pipe.fail(exc)
        extraction.join()
        raise
    pipe.close()
    extraction.join()
    if expected_digest is not None and writer.digest != expected_digest:
        raise VerificationError(
            f"filesystem layer verification failed for digest {expected_digest}"
        )
    if extraction.error is not None:
        raise extraction.error
    result = extraction.result
    assert result is not None
    diff_id = result.diff_id if compression != "none" else writer.digest
    return Ingested(
        blob_digest=writer.digest,
        blob_size=writer.size,
        compression=result.compression if compression != "none" else "none",
        diff_id=diff_id,
        tar_size=result.tar_size,
        size=result.size,
        entries=result.entries,
    )


def _read_some(source: Readable) -> bytes:
    """The first chunk, at least 6 bytes of it when there are (the magic numbers)."""
    data = source.read(CHUNK)
    while data and len(data) < 6:
        more = source.read(CHUNK)
        if not more:
            break
        data += more
    return data
