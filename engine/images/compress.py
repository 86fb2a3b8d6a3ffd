"""Parallel gzip for pushes (pigz's scheme): one gzip member whose deflate stream is cut
into independently compressed chunks.

Each chunk is raw deflate ended by a sync flush (a non-final, byte-aligned block
boundary), so the chunks can be compressed on several cores and simply concatenated; a
final empty block and the trailer (CRC-32 and length of the whole input) close the
member. Any gzip reader (Go's, zlib's, GNU gzip) reads it as one ordinary stream.

Chunks that do not compress (already-compressed or random data, where deflate spends
its time for nothing) are detected on a sample and stored: output about the size of
the input, at memory speed.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

CHUNK = 1 << 20
_SAMPLE = 64 << 10
_STORE_RATIO = 0.97  # a sample that shrinks less than 3% is not worth deflating
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # no name, mtime 0, OS unknown
_FINAL_BLOCK = b"\x03\x00"  # an empty final block with fixed Huffman codes


@dataclass(frozen=True)
class Compressed:
    digest: str  # sha256 of the gzip output
    size: int  # bytes of the gzip output
    input_size: int


def _deflate(data: bytes, level: int) -> bytes:
    if level > 0 and len(data) >= _SAMPLE:
        probe = zlib.compressobj(1, zlib.DEFLATED, -15)
        sample = probe.compress(data[:_SAMPLE]) + probe.flush(zlib.Z_SYNC_FLUSH)
        if len(sample) > _SAMPLE * _STORE_RATIO:
            level = 0
    compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)


def gzip_parallel(
    read: Callable[[int], bytes],
    emit: Callable[[bytes], None],
    *,
    level: int = 6,
    chunk: int = CHUNK,
    workers: int | None = None,
    on_input: Callable[[int], None] | None = None,
) -> Compressed:
    """Compress everything ``read(n)`` returns (b"" at the end), handing the gzip bytes
    in order to ``emit``. Blocking: run it in a worker thread."""
    threads = max(1, workers or os.cpu_count() or 1)
    digest = hashlib.sha256()
    out_size = 0
    in_size = 0
    crc = 0

    def put(data: bytes) -> None:
        nonlocal out_size
        if data:
            digest.update(data)
            out_size += len(data)
            emit(data)

    put(_GZIP_HEADER)
    pending: deque[Future[bytes]] = deque()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wharfd-gzip") as pool:
        try:
            while True:
                data = _read_full(read, chunk)
                if not data:
                    break
                in_size += len(data)
                crc = zlib.crc32(data, crc)
                pending.append(pool.submit(_deflate, data, level))
                if on_input is not None:
                    on_input(len(data))
                # Keep every worker busy while bounding memory to a few chunks.
                while len(pending) > threads * 2:
                    put(pending.popleft().result())
            while pending:
                put(pending.popleft().result())
        finally:
            for future in pending:
                future.cancel()
    put(_FINAL_BLOCK + struct.pack("<II", crc & 0xFFFFFFFF, in_size & 0xFFFFFFFF))
    return Compressed("sha256:" + digest.hexdigest(), out_size, in_size)


def _read_full(read: Callable[[int], bytes], size: int) -> bytes:
    """Up to ``size`` bytes (short only at the end): chunks of one size compress evenly."""
    parts: list[bytes] = []
    missing = size
    while missing > 0:
        data = read(missing)
        if not data:
            break
        parts.append(data)
        missing -= len(data)
    return b"".join(parts)
