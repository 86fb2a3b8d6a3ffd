"""engine.containers.logs against hand-written and generated k8s-file logs."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.containers import logs
from engine.containers.logs import (
    LogRecord,
    format_timestamp,
    parse_timestamp,
    read_log_batches,
    read_logs,
)

BASE_NS = parse_timestamp(b"2026-11-27T22:10:50.000000000+00:00")


def ts(i: int, offset: str = "+00:00") -> bytes:
    """A conmon-style timestamp i microseconds after BASE (in the given local offset)."""
    ns = BASE_NS + i * 1000
    secs, frac = divmod(ns, 1_000_000_000)
    sign = -1 if offset[0] == "-" else 1
    shift = sign * (int(offset[1:3]) * 3600 + int(offset[4:6]) * 60)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs + shift))
    return f"{stamp}.{frac:09d}{offset}".encode()


def rec(i: int, stream: str, tag: str, text: bytes) -> bytes:
    return ts(i) + f" {stream} {tag} ".encode() + text + b"\n"


async def collect(
    path: Path,
    *,
    stdout: bool = True,
    stderr: bool = True,
    since_nano: int | None = None,
    until_nano: int | None = None,
    tail: int | None = None,
    follow: bool = False,
    is_running: Callable[[], bool] = lambda: False,
    poll_interval: float = 0.01,
) -> list[LogRecord]:
    return [
        r
        async for r in read_logs(
            path,
            stdout=stdout,
            stderr=stderr,
            since_nano=since_nano,
            until_nano=until_nano,
            tail=tail,
            follow=follow,
            is_running=is_running,
            poll_interval=poll_interval,
        )
    ]


async def put(path: Path, data: bytes) -> None:
    await asyncio.to_thread(path.write_bytes, data)


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


async def append(path: Path, data: bytes) -> None:
    await asyncio.to_thread(_append, path, data)


def simple(records: list[LogRecord]) -> list[tuple[int, bytes]]:
    return [(r.stream, r.data) for r in records]


# --- timestamps ---------------------------------------------------------------------------
def test_format_timestamp_is_docker_rfc3339nano_fixed_utc() -> None:
    ns = parse_timestamp(b"2026-11-27T20:30:59.987728947Z")
    assert format_timestamp(ns) == "2026-11-27T20:30:59.987728947Z"
    assert format_timestamp(1_000_000_000) == "1970-01-01T00:00:01.000000000Z"
    assert format_timestamp(5) == "1970-01-01T00:00:00.000000005Z"


def test_parse_timestamp_honours_the_local_offset_and_short_fractions() -> None:
    utc = parse_timestamp(b"2026-11-27T22:10:50.929604743+00:00")
    assert parse_timestamp(b"2026-11-28T00:10:50.929604743+02:00") == utc
    assert parse_timestamp(b"2026-11-27T17:10:50.929604743-05:00") == utc
    assert parse_timestamp(b"2026-11-27T22:10:50.5Z") == utc - 929604743 + 500_000_000
    assert parse_timestamp(b"2026-11-27T22:10:50Z") == utc - 929604743
    for bad in (b"yesterday", b"2026-11-27 22:10:50Z", b"2026-11-27T22:10:50.+00:00"):
        with pytest.raises(ValueError):
            parse_timestamp(bad)


# --- parsing --------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_partial_records_join_into_one_line_per_stream(tmp_path: Path) -> None:
    log = tmp_path / "ctr.log"
    await put(
        log,
        rec(1, "stdout", "P", b"par")
        + rec(2, "stderr", "F", b"oops")
        + rec(3, "stdout", "P", b"ti")
        + rec(4, "stdout", "F", b"al")
        + rec(5, "stdout", "F", b"")
        + rec(6, "stdout", "F", b"with  two spaces "),
    )
    got = await collect(log)
    assert simple(got) == [
        (2, b"oops\n"),
        (1, b"partial\n"),
        (1, b"\n"),
        (1, b"with  two spaces \n"),
    ]
    # a joined line carries the time its first piece was written
    assert got[1].time_nano == BASE_NS + 1000


@pytest.mark.asyncio
async def test_unfinished_line_is_kept_when_the_log_ended(tmp_path: Path) -> None:
    log = tmp_path / "ctr.log"
    await put(log, rec(1, "stdout", "F", b"one") + rec(2, "stdout", "P", b"no newline"))
    assert simple(await collect(log)) == [(1, b"one\n"), (1, b"no newline")]


@pytest.mark.asyncio
async def test_torn_last_line_and_garbage_are_skipped(tmp_path: Path) -> None:
    log = tmp_path / "ctr.log"
    await put(
        log,
        rec(1, "stdout", "F", b"good")
        + b"not a record at all\n"
        + b"2026-11-27T22:10:50Z stdin F what\n"
        + rec(2, "stderr", "F", b"also good")
        + ts(3)
        + b" stdout F torn wri",
    )
    assert simple(await collect(log)) == [(1, b"good\n"), (2, b"also good\n")]


@pytest.mark.asyncio
async def test_stream_selection(tmp_path: Path) -> None:
    log = tmp_path / "ctr.log"
    await put(log, rec(1, "stdout", "F", b"o") + rec(2, "stderr", "F", b"e"))
    assert simple(await collect(log, stderr=False)) == [(1, b"o\n")]
    assert simple(await collect(log, stdout=False)) == [(2, b"e\n")]
    assert await collect(log, stdout=False, stderr=False) == []


@pytest.mark.asyncio
async def test_missing_file_reads_as_empty(tmp_path: Path) -> None:
    assert await collect(tmp_path / "nope.log") == []
    assert await collect(tmp_path / "nope.log", tail=5) == []


@pytest.mark.asyncio
async def test_overlong_line_comes_in_pieces(tmp_path: Path) -> None:
    log = tmp_path / "ctr.log"
    piece = b"z" * 8192
    count = logs.MAX_LINE // len(piece) * 2 + 3
    await put(
        log,
        b"".join(rec(i, "stdout", "P", piece) for i in range(count))
        + rec(count, "stdout", "F", b"end"),
    )
    got = await collect(log)
    assert b"".join(r.data for r in got) == piece * count + b"end\n"
    assert all(len(r.data) <= logs.MAX_LINE + 8192 for r in got)
    assert len(got) == 3


@pytest.mark.asyncio
async def test_since_and_until_are_inclusive(tmp_path: Path) -> None:
    log = tmp_path / "ctr.log"
    await put(log, b"".join(rec(i, "stdout", "F", b"%d" % i) for i in range(10)))
    got = await collect(log, since_nano=BASE_NS + 3000, until_nano=BASE_NS + 6000)
    assert [r.data for r in got] == [b"3\n", b"4\n", b"5\n", b"6\n"]
    # with tail, the last lines are picked first, then filtered (dockerd's order)
    got = await collect(log, tail=3, since_nano=BASE_NS + 8000)
    assert [r.data for r in got] == [b"8\n", b"9\n"]


@pytest.mark.asyncio
async def test_timestamps_in_a_local_offset(tmp_path: Path) -> None:
    log = tmp_path / "ctr.log"
    await put(log, ts(7, "+05:30") + b" stdout F hi\n")
    (got,) = await collect(log)
    assert got.time_nano == BASE_NS + 7000


# --- tail -------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_tail_basic(tmp_path: Path) -> None:
    log = tmp_path / "ctr.log"
    await put(log, b"".join(rec(i, "stdout", "F", b"line %d" % i) for i in range(1000)))
    got = await collect(log, tail=3)
    assert [r.data for r in got] == [b"line 997\n", b"line 998\n", b"line 999\n"]
    assert await collect(log, tail=0) == []
    assert len(await collect(log, tail=5000)) == 1000


def random_log(rng: random.Random, n: int) -> bytes:
    """Interleaved streams, partial and full records. Only the very last record may leave
    a line unfinished: an unfinished line of a stream that went quiet long before the end
    is handed out at the end of a full read, but is not among the last lines of a tail
    (see ``test_tail_counts_an_old_unfinished_line_where_it_stopped``)."""
    records = [
        (rng.choice(["stdout", "stderr"]), rng.choice(["P", "F", "F"]),
         b"x" * rng.choice([0, 1, 5, 100, 3000]) + b"%d" % i)
        for i in range(n)
    ]  # fmt: skip
    for name in ("stdout", "stderr"):
        last = max((i for i, r in enumerate(records) if r[0] == name), default=None)
        if last is not None and last != n - 1:
            records[last] = (name, "F", records[last][2])
    return b"".join(rec(i, *r) for i, r in enumerate(records))


@pytest.mark.asyncio
@pytest.mark.parametrize("seed", range(40))
async def test_tail_matches_the_end_of_a_full_read(
    tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # small blocks: lines straddle block boundaries all the time
    monkeypatch.setattr(logs, "TAIL_BLOCK", 257)
    rng = random.Random(seed)
    log = tmp_path / "ctr.log"
    await put(log, random_log(rng, rng.randint(0, 60)))
    for stdout, stderr in ((True, True), (True, False), (False, True)):
        full = simple(await collect(log, stdout=stdout, stderr=stderr))
        for n in (0, 1, 2, 3, 7, 20, 100):
            got = simple(await collect(log, stdout=stdout, stderr=stderr, tail=n))
            assert got == (full[-n:] if n else []), (seed, stdout, stderr, n)


@pytest.mark.asyncio
async def test_tail_counts_an_old_unfinished_line_where_it_stopped(tmp_path: Path) -> None:
    log = tmp_path / "ctr.log"
    await put(
        log,
        rec(0, "stderr", "P", b"prompt> ")
        + b"".join(rec(i, "stdout", "F", b"%d" % i) for i in range(1, 50)),
    )
    full = simple(await collect(log))
    assert full[-1] == (2, b"prompt> ")  # the log ended: the unfinished line comes last
    assert simple(await collect(log, tail=2)) == [(1, b"48\n"), (1, b"49\n")]


@pytest.mark.asyncio
async def test_tail_is_not_a_full_scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "ctr.log"
    line = rec(0, "stdout", "F", b"y" * 60)
    await put(log, line * 1_000_000)  # 1e6 lines, ~100 MB
    reads: list[int] = []
    real_pread = os.pread

    def counting_pread(fd: int, size: int, offset: int) -> bytes:
        data = real_pread(fd, size, offset)
        reads.append(len(data))
        return data

    monkeypatch.setattr(os, "pread", counting_pread)
    t0 = time.perf_counter()
    got = await collect(log, tail=10)
    elapsed = time.perf_counter() - t0
    assert [r.data for r in got] == [b"y" * 60 + b"\n"] * 10
    assert sum(reads) < 1024 * 1024
    assert elapsed < 0.5


# --- follow -----------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_follow_reads_appended_lines_until_the_container_stops(tmp_path: Path) -> None:
    log = tmp_path / "ctr.log"
    await put(log, rec(0, "stdout", "F", b"before"))
    running = True

    async def writer() -> None:
        nonlocal running
        for i in range(1, 6):
            await asyncio.sleep(0.02)
            await append(log, rec(i, "stdout", "F", b"tick %d" % i))
        # a torn write: the reader must wait for the rest of the line
        line = rec(6, "stderr", "P", b"half")
        await append(log, line[:20])
        await asyncio.sleep(0.05)
        await append(log, line[20:])
        await asyncio.sleep(0.02)
        await append(
            log, rec(7, "stderr", "F", b" done") + rec(8, "stdout", "P", b"exited mid-line")
        )
        running = False

    task = asyncio.create_task(writer())
    got = await asyncio.wait_for(collect(log, follow=True, is_running=lambda: running), 5)
    await task
    assert simple(got) == [
        (1, b"before\n"),
        *[(1, b"tick %d\n" % i) for i in range(1, 6)],
        (2, b"half done\n"),
        (1, b"exited mid-line"),
    ]


@pytest.mark.asyncio
async def test_follow_with_tail_then_new_lines(tmp_path: Path) -> None:
    log = tmp_path / "ctr.log"
    await put(log, b"".join(rec(i, "stdout", "F", b"%d" % i) for i in range(100)))
    running = True
    seen: list[bytes] = []

    async def reader() -> None:
        async for r in read_logs(
            log, stdout=True, stderr=True, since_nano=None, until_nano=None, tail=2,
            follow=True, is_running=lambda: running, poll_interval=0.01,
        ):  # fmt: skip
            seen.append(r.data)

    task = asyncio.create_task(reader())
    await asyncio.sleep(0.05)
    assert seen == [b"98\n", b"99\n"]
    await append(log, rec(100, "stdout", "F", b"100"))
    await asyncio.sleep(0.05)
    running = False
    await asyncio.wait_for(task, 2)
    assert seen == [b"98\n", b"99\n", b"100\n"]


@pytest.mark.asyncio
async def test_follow_tail_zero_shows_only_new_lines(tmp_path: Path) -> None:
    log = tmp_path / "ctr.log"
    await put(log, rec(0, "stdout", "F", b"old"))
    running = True

    async def writer() -> None:
        nonlocal running
        await asyncio.sleep(0.03)
        await append(log, rec(1, "stdout", "F", b"new"))
        await asyncio.sleep(0.03)
        running = False

    task = asyncio.create_task(writer())
    got = await asyncio.wait_for(collect(log, tail=0, follow=True, is_running=lambda: running), 5)
    await task
    assert simple(got) == [(1, b"new\n")]


@pytest.mark.asyncio
async def test_follow_stops_at_until(tmp_path: Path) -> None:
    log = tmp_path / "ctr.log"
    await put(log, b"".join(rec(i, "stdout", "F", b"%d" % i) for i in range(5)))
    got = await asyncio.wait_for(
        collect(log, follow=True, until_nano=BASE_NS + 2000, is_running=lambda: True), 2
    )
    assert [r.data for r in got] == [b"0\n", b"1\n", b"2\n"]


@pytest.mark.asyncio
async def test_follow_survives_rotation(tmp_path: Path) -> None:
    log = tmp_path / "ctr.log"
    await put(log, rec(0, "stdout", "F", b"first file"))
    running = True

    async def rotate() -> None:
        nonlocal running
        await asyncio.sleep(0.05)
        new = tmp_path / "ctr.log.tmp"
        await put(new, rec(1, "stdout", "F", b"second file"))
        await asyncio.to_thread(os.replace, new, log)  # what conmon does for --log-size-max
        await asyncio.sleep(0.05)
        running = False

    task = asyncio.create_task(rotate())
    got = await asyncio.wait_for(collect(log, follow=True, is_running=lambda: running), 5)
    await task
    assert simple(got) == [(1, b"first file\n"), (1, b"second file\n")]


@pytest.mark.asyncio
async def test_follow_waits_for_the_file_to_appear(tmp_path: Path) -> None:
    log = tmp_path / "ctr.log"
    running = True

    async def create() -> None:
        nonlocal running
        await asyncio.sleep(0.03)
        await put(log, rec(0, "stdout", "F", b"late"))
        await asyncio.sleep(0.03)
        running = False

    task = asyncio.create_task(create())
    got = await asyncio.wait_for(collect(log, follow=True, is_running=lambda: running), 5)
    await task
    assert simple(got) == [(1, b"late\n")]


# --- speed --------------------------------------------------------------------------------------
def write_zeros_log(path: Path, mib: int) -> None:
    """What conmon writes for `head -c <mib>M /dev/zero`: 8 KiB P records."""
    zeros = b"\0" * 8192
    with open(path, "wb") as f:
        for i in range(mib * 128):
            f.write(rec(i, "stdout", "P", zeros))


@pytest.mark.asyncio
async def test_reading_zeros_is_fast(tmp_path: Path) -> None:
    log = tmp_path / "ctr.log"
    await asyncio.to_thread(write_zeros_log, log, 64)
    t0 = time.perf_counter()
    total = 0
    async for batch in read_log_batches(
        log, stdout=True, stderr=True, since_nano=None, until_nano=None, tail=None,
        follow=False, is_running=lambda: False,
    ):  # fmt: skip
        total += sum(len(r.data) for r in batch)
    elapsed = time.perf_counter() - t0
    assert total == 64 * 1024 * 1024
    # hundreds of MiB/s on the development VM; the bound leaves room for a busy machine
    assert total / elapsed > 100 * 1024 * 1024, f"{total / elapsed / 2**20:.0f} MiB/s"
