"""Reading a container's log (conmon's k8s-file format) for `docker logs`.

One record per line, written by conmon::

    <RFC3339Nano with local offset> <stdout|stderr> <P|F> <text>\\n

``P`` marks a piece of a line the container flushed without a newline; consecutive ``P``
records of a stream up to its next ``F`` record make one Docker log line, which then ends
in ``\\n``. Pieces are tracked per stream because stdout and stderr records interleave.
A line that grows past ``MAX_LINE`` is handed out in pieces of that size (without the
newline) so one endless line (``cat /dev/zero``) never sits in memory whole; a line the
container never finished is handed out as it is once the log has ended.

Parsing runs in a worker thread over large chunks (``bytes.split``, no per-byte Python),
``tail`` reads backwards from the end in blocks, and ``follow`` polls the file for growth
(and reopens it when conmon rotates it for ``--log-size-max``).

Selection follows dockerd: ``tail`` picks the last N lines of the chosen streams, then
``since`` (inclusive) and ``until`` (inclusive, and reading stops there) filter by time.
"""

from __future__ import annotations

import asyncio
import calendar
import collections
import contextlib
import gzip
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

MAX_LINE = 256 * 1024
"""Bytes of one unfinished line kept before it is handed out as a piece."""

READ_CHUNK = 4 * 1024 * 1024
"""Bytes read and parsed per worker-thread call (one batch)."""

TAIL_BLOCK = 64 * 1024
"""Block size of the backward scan for ``tail``."""

Stream = Literal[1, 2]

_STREAM_IDS: dict[bytes, Stream] = {b"stdout": 1, b"stderr": 2}
_TS_CACHE_MAX = 4096


@dataclass(slots=True)
class LogRecord:
    """One Docker log line (or piece of an overlong/unfinished one).

    Not frozen on purpose: a frozen dataclass costs twice as much to build, and a log
    holds millions of these. Treat it as immutable.
    """

    stream: Stream
    time_nano: int
    data: bytes


def format_timestamp(time_nano: int) -> str:
    """Docker's RFC3339Nano with a fixed 9-digit fraction, in UTC:
    ``2026-11-27T20:30:59.987728947Z``."""
    secs, frac = divmod(time_nano, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


def parse_timestamp(text: bytes) -> int:
    """Nanoseconds since the epoch of an RFC3339(Nano) timestamp with ``Z`` or ``±hh:mm``.

    Raises ValueError when it is not one.
    """
    s = text.decode("ascii")
    if len(s) < 20 or s[4] != "-" or s[7] != "-" or s[10] not in "Tt" or s[13] != ":":
        raise ValueError(f"not an RFC3339 timestamp: {s!r}")
    secs = calendar.timegm(
        (int(s[0:4]), int(s[5:7]), int(s[8:10]), int(s[11:13]), int(s[14:16]), int(s[17:19]))
    )
    i = 19
    frac = 0
    if s[i] == ".":
        j = i + 1
        while j < len(s) and s[j].isdigit():
            j += 1
        digits = s[i + 1 : j]
        if not digits:
            raise ValueError(f"not an RFC3339 timestamp: {s!r}")
        frac = int(digits[:9].ljust(9, "0"))
        i = j
    zone = s[i:]
    if zone in ("Z", "z"):
        offset = 0
    elif len(zone) == 6 and zone[0] in "+-" and zone[3] == ":":
        offset = int(zone[1:3]) * 3600 + int(zone[4:6]) * 60
        if zone[0] == "-":
            offset = -offset
    else:
        raise ValueError(f"not an RFC3339 timestamp: {s!r}")
    return (secs - offset) * 1_000_000_000 + frac


class _Parser:
    """Turns complete k8s-file lines into LogRecords; keeps unfinished lines per stream.

    Used from one worker thread at a time (calls are sequential), never concurrently.
    """

    def __init__(self, streams: frozenset[int]) -> None:
        self.streams = streams
        # stream -> (time of the first piece, pieces, size); insertion order = start order
        self.pending: dict[int, tuple[int, list[bytes], int]] = {}
        self._ts_cache: dict[bytes, int] = {}

    def feed(self, lines: Iterable[bytes], out: list[LogRecord]) -> None:
        want_out = 1 in self.streams
        want_err = 2 in self.streams
        cache = self._ts_cache
        pending = self.pending
        append = out.append
        for line in lines:
            parts = line.split(b" ", 3)
            if len(parts) != 4:
                continue  # not a record (corrupt or foreign line): skip it, like dockerd
            ts, name, tag, text = parts
            if name == b"stdout":
                if not want_out:
                    continue
                stream: Stream = 1
            elif name == b"stderr":
                if not want_err:
                    continue
                stream = 2
            else:
                continue
            t = cache.get(ts)
            if t is None:
                try:
                    t = parse_timestamp(ts)
                except ValueError:
                    continue
                if len(cache) >= _TS_CACHE_MAX:
                    cache.clear()
                cache[ts] = t
            if tag == b"F":
                if stream in pending:
                    t0, pieces, _ = pending.pop(stream)
                    pieces.append(text)
                    pieces.append(b"\n")
                    append(LogRecord(stream, t0, b"".join(pieces)))
                else:
                    append(LogRecord(stream, t, text + b"\n"))
            elif tag == b"P":
                self._add_piece(stream, t, text, out)

    def _add_piece(self, stream: Stream, t: int, text: bytes, out: list[LogRecord]) -> None:
        entry = self.pending.get(stream)
        if entry is None:
            self.pending[stream] = (t, [text], len(text))
            return
        t0, pieces, size = entry
        pieces.append(text)
        size += len(text)
        if size >= MAX_LINE:
            del self.pending[stream]
            out.append(LogRecord(stream, t0, b"".join(pieces)))
        else:
            self.pending[stream] = (t0, pieces, size)

    def flush(self, out: list[LogRecord]) -> None:
        """Hand out the unfinished lines (the log has ended mid-line)."""
        for stream, (t0, pieces, _) in self.pending.items():
            out.append(LogRecord(_as_stream(stream), t0, b"".join(pieces)))
        self.pending.clear()


def _as_stream(value: int) -> Stream:
    return 1 if value == 1 else 2


class _LogFile:
    """The reading position in one log file (and, after a rotation, its successor)."""

    def __init__(self, path: Path, streams: frozenset[int]) -> None:
        self.path = path
        self.fd: int | None = None
        self.pos = 0
        self.parser = _Parser(streams)
        self.streams = streams

    def open(self) -> bool:
        if self.fd is None:
            try:
                self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return False
            self.pos = 0
        return True

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def read_batch(self, out: list[LogRecord]) -> int:
        """Parse the complete lines from ``pos`` on (one chunk); returns bytes consumed.
        A torn last line stays unread until its newline is there."""
        if not self.open():
            return 0
        assert self.fd is not None
        size = READ_CHUNK
        while True:
            buf = os.pread(self.fd, size, self.pos)
            end = buf.rfind(b"\n") + 1
            if end or len(buf) < size:
                break
            size *= 2  # one line longer than a chunk: not conmon's, but read it whole
        if not end:
            return 0
        lines = buf.split(b"\n")
        lines.pop()  # the torn remainder (or b"" after the final newline)
        self.parser.feed(lines, out)
        self.pos += end
        return end

    def changed(self) -> Literal["opened", "replaced", "truncated"] | None:
        """At the end of our file: did a file appear, was ours rotated away (replaced) or
        truncated in place?"""
        if self.fd is None:
            return "opened" if self.open() else None
        try:
            st_path = os.stat(self.path)
        except FileNotFoundError:
            return None
        st_fd = os.fstat(self.fd)
        if (st_path.st_ino, st_path.st_dev) != (st_fd.st_ino, st_fd.st_dev):
            return "replaced"
        if st_fd.st_size < self.pos:
            self.pos = 0
            return "truncated"
        return None

    def tail_start(self, n: int, count_unfinished: bool) -> int:
        """Offset from which the last ``n`` lines of the selected streams are complete.

        Walks back from the end: counts finished lines (F records); a stream counted is
        "open" until its previous F record (where its line began) is found. Unfinished
        lines at the end are not counted but are kept open the same way, so the window
        holds them whole; ``count_unfinished`` makes them count (the log has ended).
        An unfinished line counts where its last piece is: the scan stops before the
        line of a stream that went quiet long ago, though a full read hands it out last.
        """
        if not self.open():
            return 0
        assert self.fd is not None
        end = os.fstat(self.fd).st_size
        counted = 0
        open_streams: set[bytes] = set()
        seen: set[bytes] = set()
        names = {name for name, sid in _STREAM_IDS.items() if sid in self.streams}
        for line_start, line in _lines_backwards(self.fd, end):
            parts = line.split(b" ", 3)
            if len(parts) != 4 or parts[1] not in names:
                continue
            name, tag = parts[1], parts[2]
            if tag == b"F":
                open_streams.discard(name)  # that stream's line starts after this record
                if counted < n:
                    counted += 1
                    open_streams.add(name)
            elif tag == b"P" and name not in seen:
                open_streams.add(name)  # the unfinished line at the end
                if count_unfinished and counted < n:
                    counted += 1
            seen.add(name)
            if counted >= n and not open_streams:
                return line_start + len(line) + 1
        return 0


def _lines_backwards(fd: int, end: int) -> Iterable[tuple[int, bytes]]:
    """(offset, line without its newline) of the complete lines before ``end``, last
    first. A torn last line (no newline yet) is skipped."""
    pos = end
    rest = b""  # a line's end, whose beginning lies in an earlier block
    torn = True  # the first element seen from the end is what follows the last newline
    while pos > 0:
        size = min(TAIL_BLOCK, pos)
        pos -= size
        combined = os.pread(fd, size, pos) + rest
        lines = combined.split(b"\n")
        off = pos + len(combined)
        for i in range(len(lines) - 1, 0, -1):
            line = lines[i]
            off -= len(line)
            if not torn:
                yield off, line
            torn = False
            off -= 1  # the newline before it
        rest = lines[0]
    if rest and not torn:
        yield 0, rest


def _since_until(
    records: list[LogRecord], since_nano: int | None, until_nano: int | None
) -> tuple[list[LogRecord], bool]:
    """Records within [since, until]; True when a record was after ``until`` (stop)."""
    if since_nano is None and until_nano is None:
        return records, False
    kept: list[LogRecord] = []
    for rec in records:
        if until_nano is not None and rec.time_nano > until_nano:
            return kept, True
        if since_nano is None or rec.time_nano >= since_nano:
            kept.append(rec)
    return kept, False


def _read_whole(path: Path, streams: frozenset[int]) -> list[LogRecord]:
    """Every record of a rotated (finished) log file; ``.gz`` ones are decompressed."""
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as compressed:
                data = compressed.read()
        else:
            data = path.read_bytes()
    except FileNotFoundError:
        return []  # rotated away meanwhile
    parser = _Parser(streams)
    out: list[LogRecord] = []
    lines = data.split(b"\n")
    lines.pop()
    parser.feed(lines, out)
    parser.flush(out)
    return out


class _Session:
    """The thread-side work of one ``read_logs`` call.

    ``history`` are the rotated files, oldest first: read whole before the live file.
    """

    def __init__(self, path: Path, streams: frozenset[int], history: list[Path]) -> None:
        self.file = _LogFile(path, streams)
        self.history = list(history)
        self.streams = streams

    def tail(self, n: int, log_ended: bool) -> list[LogRecord]:
        older: list[LogRecord] = []
        if n > 0:
            for path in self.history:
                older.extend(_read_whole(path, self.streams))
            self.history = []
        records = self._tail_current(n, log_ended)
        if len(records) >= n or not older:
            return records
        return (older + records)[-n:]

    def _tail_current(self, n: int, log_ended: bool) -> list[LogRecord]:
        start = self.file.tail_start(n, count_unfinished=log_ended) if n > 0 else None
        if start is None:  # tail=0: nothing now, follow from the end
            if self.file.open():
                assert self.file.fd is not None
                self.file.pos = _end_of_complete_lines(self.file.fd)
            return []
        self.file.pos = start
        window: collections.deque[LogRecord] = collections.deque(maxlen=n)
        batch: list[LogRecord] = []
        while self.file.read_batch(batch):
            window.extend(batch)
            batch.clear()
        if log_ended:
            self.file.parser.flush(batch)
            window.extend(batch)
        return list(window)

    def switch_file(self, out: list[LogRecord]) -> None:
        """Finish the rotated-away file (conmon may have written to it until it reopened),
        then continue with the new one from its start."""
        while self.file.read_batch(out):
            pass
        self.file.close()
        self.file.open()

    def read(self) -> tuple[list[LogRecord], int]:
        if self.history:
            path = self.history.pop(0)
            older = _read_whole(path, self.streams)
            return older, max(1, len(older))
        out: list[LogRecord] = []
        consumed = self.file.read_batch(out)
        if not consumed:
            change = self.file.changed()
            if change == "replaced":
                self.switch_file(out)
            if change is not None:
                consumed = self.file.read_batch(out) or len(out)
        return out, consumed

    def flush(self) -> list[LogRecord]:
        out: list[LogRecord] = []
        self.file.parser.flush(out)
        return out

    def close(self) -> None:
        self.file.close()


def _end_of_complete_lines(fd: int) -> int:
    end = os.fstat(fd).st_size
    pos = end
    while pos > 0:
        size = min(TAIL_BLOCK, pos)
        pos -= size
        idx = os.pread(fd, size, pos).rfind(b"\n")
        if idx >= 0:
            return pos + idx + 1
    return 0


async def read_log_batches(
    path: Path,
    *,
    stdout: bool,
    stderr: bool,
    since_nano: int | None,
    until_nano: int | None,
    tail: int | None,
    follow: bool,
    is_running: Callable[[], bool],
    poll_interval: float = 0.05,
    history: Sequence[Path] = (),
) -> AsyncGenerator[list[LogRecord], None]:
    """Like :func:`read_logs`, in batches (one per chunk parsed): cheaper per line for a
    consumer that can write many lines at once."""
    streams = frozenset(s for s, on in ((1, stdout), (2, stderr)) if on)
    if not streams:
        return
    session = _Session(path, streams, list(history))
    try:
        if tail is not None and tail >= 0:
            ended = not follow or not is_running()
            records = await asyncio.to_thread(session.tail, tail, ended)
            records, stop = _since_until(records, since_nano, until_nano)
            if records:
                yield records
            if stop or not follow:
                return
        stopping = False
        while True:
            records, consumed = await asyncio.to_thread(session.read)
            records, stop = _since_until(records, since_nano, until_nano)
            if records:
                yield records
            if stop:
                return
            if consumed:
                continue
            if not follow or stopping:
                break
            if not is_running():
                stopping = True  # read once more: the last output may have come meanwhile
                continue
            await asyncio.sleep(poll_interval)
        records, _ = _since_until(session.flush(), since_nano, until_nano)
        if records:
            yield records
    finally:
        with contextlib.suppress(OSError):
            session.close()


async def read_logs(
    path: Path,
    *,
    stdout: bool,
    stderr: bool,
    since_nano: int | None,
    until_nano: int | None,
    tail: int | None,
    follow: bool,
    is_running: Callable[[], bool],
    poll_interval: float = 0.05,
    history: Sequence[Path] = (),
) -> AsyncIterator[LogRecord]:
    """The container's log lines, oldest first.

    ``tail`` (None = all) keeps the last N lines of the selected streams; ``since_nano`` /
    ``until_nano`` filter by time (both inclusive). With ``follow`` the file is watched
    for new lines until ``is_running()`` turns False and everything written is read.
    """
    batches = read_log_batches(
        path,
        stdout=stdout,
        stderr=stderr,
        since_nano=since_nano,
        until_nano=until_nano,
        tail=tail,
        follow=follow,
        is_running=is_running,
        poll_interval=poll_interval,
        history=history,
    )
    async with contextlib.aclosing(batches):
        async for batch in batches:
            for record in batch:
                yield record
