"""Fetching a directory from the build client: ``/moby.filesync.v1.FileSync/DiffCopy``
over the session, wharfd receiving (buildkit-notes §6.1).

The client sends one STAT packet per entry (parents before children), then an empty
STAT; an entry's id is its index in that list. We ask for every regular file (REQ), and
the client answers with DATA chunks, an empty DATA ending a file; then FIN both ways.
The client applies ``include-patterns``/``exclude-patterns``/``followpaths`` itself
(the .dockerignore rules), so what arrives is the filtered directory.

Everything is written below ``dest`` as it arrives (memory stays bounded by the HTTP/2
window, whatever the context's size). Paths are checked lexically (relative, no ``..``)
and a file is only ever created inside a directory this receiver made itself, with
``O_EXCL|O_NOFOLLOW``: a symlink sent by the client is created but never followed.
Ownership is not kept (BuildKit's client zeroes it; COPY resets it anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat as statmod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine.builder.buildkit.grpcwire import ClientCall, Code, GrpcError
from engine.builder.buildkit.proto import wire_pb2 as pb
from engine.builder.buildkit.sessions import Session

DIFFCOPY = "/moby.filesync.v1.FileSync/DiffCopy"
log = logging.getLogger(__name__)

# Go os.FileMode bits (not POSIX st_mode)
GO_DIR = 1 << 31
GO_SYMLINK = 1 << 27
GO_DEVICE = 1 << 26
GO_PIPE = 1 << 25
GO_SOCKET = 1 << 24
GO_SETUID = 1 << 23
GO_SETGID = 1 << 22
GO_CHARDEV = 1 << 21
GO_STICKY = 1 << 20
GO_IRREGULAR = 1 << 19
GO_TYPE = GO_DIR | GO_SYMLINK | GO_PIPE | GO_SOCKET | GO_DEVICE | GO_CHARDEV | GO_IRREGULAR

_WRITE_BATCH = 1 << 20
_STAT = pb.Packet.PACKET_STAT
_REQ = pb.Packet.PACKET_REQ
_DATA = pb.Packet.PACKET_DATA
_FIN = pb.Packet.PACKET_FIN
_ERR = pb.Packet.PACKET_ERR


def posix_mode(go_mode: int) -> int:
    """Permission bits of a Go FileMode as POSIX bits (for chmod)."""
    mode = go_mode & 0o777
    if go_mode & GO_SETUID:
        mode |= statmod.S_ISUID
    if go_mode & GO_SETGID:
        mode |= statmod.S_ISGID
    if go_mode & GO_STICKY:
        mode |= statmod.S_ISVTX
    return mode


def safe_relative(path: str) -> str:
    """The entry's path if it is a clean relative path, else a GrpcError."""
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise GrpcError(Code.INVALID_ARGUMENT, f"invalid path in the build context: {path!r}")
    if "\x00" in path:
        raise GrpcError(Code.INVALID_ARGUMENT, "invalid path in the build context")
    return path


@dataclass
class SyncStats:
    entries: int = 0
    files: int = 0
    bytes: int = 0


@dataclass
class _Receiver:
    """The disk side; every method is synchronous and runs in a worker thread."""

    dest: Path
    dirs: set[str] = field(default_factory=lambda: {""})
    open_files: dict[int, int] = field(default_factory=dict)  # id → fd
    hardlinks: list[tuple[str, str]] = field(default_factory=list)
    dir_times: list[tuple[str, int, int]] = field(default_factory=list)

    def _parent_ok(self, path: str) -> Path:
        parent = path.rpartition("/")[0]
        if parent not in self.dirs:
            raise GrpcError(Code.INVALID_ARGUMENT,
                            f"build context entry {path!r} is not inside a directory")
        return self.dest / path

    def make_entries(self, entries: Sequence[pb.Stat]) -> None:
        for st in entries:
            target = self._parent_ok(st.path)
            kind = st.mode & GO_TYPE
            if kind == GO_DIR:
                if st.path not in self.dirs:
                    os.mkdir(target, 0o700)
                    self.dirs.add(st.path)
                self.dir_times.append((st.path, posix_mode(st.mode), st.modTime))
            elif kind == GO_SYMLINK:
                os.symlink(st.linkname, target)
                with contextlib.suppress(OSError):
                    os.utime(target, ns=(st.modTime, st.modTime), follow_symlinks=False)
            elif kind == 0 and st.linkname:
                self.hardlinks.append((safe_relative(st.linkname), st.path))
            # devices, pipes and sockets are skipped (a context is files for COPY)

    def _open(self, file_id: int, st: pb.Stat) -> int:
        fd = self.open_files.get(file_id)
        if fd is None:
            target = self._parent_ok(st.path)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
            self.open_files[file_id] = fd
        return fd

    def write(self, file_id: int, st: pb.Stat, data: bytes) -> None:
        fd = self._open(file_id, st)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    def write_last(self, file_id: int, st: pb.Stat, data: bytes) -> None:
        """The file's last bytes (maybe all of them); then its mode and times."""
        self.write(file_id, st, data)
        fd = self.open_files.pop(file_id)
        try:
            os.fchmod(fd, posix_mode(st.mode))
            os.utime(fd, ns=(st.modTime, st.modTime))
        finally:
            os.close(fd)

    def finish(self) -> None:
        for source, name in self.hardlinks:
            if source in self.dirs:
                raise GrpcError(Code.INVALID_ARGUMENT, f"hard link {name!r} to a directory")
            src = self._parent_ok(source)
            if not src.is_file() or src.is_symlink():
                raise GrpcError(Code.INVALID_ARGUMENT,
                                f"hard link {name!r} to {source!r}, which is not a file")
            os.link(src, self._parent_ok(name), follow_symlinks=False)
        for path, mode, mtime in reversed(self.dir_times):
            target = self.dest / path
            os.chmod(target, mode)
            os.utime(target, ns=(mtime, mtime))

    def abort(self) -> None:
        for fd in self.open_files.values():
            os.close(fd)
        self.open_files.clear()


async def fetch_dir(session: Session, dir_name: str, dest: Path, *,
                    followpaths: Sequence[str] = (), exclude: Sequence[str] = (),
                    include: Sequence[str] = ()) -> SyncStats:
    """Copy the client's local ``dir_name`` (``context``, ``dockerfile``, a named
    context...) into ``dest``, an empty directory."""
    if not session.supports(DIFFCOPY):
        raise GrpcError(Code.UNIMPLEMENTED,
                        "the client's session does not offer file sync (FileSync/DiffCopy)")
    metadata = [("dir-name", dir_name)]
    metadata += [("followpaths", p) for p in followpaths]
    metadata += [("exclude-patterns", p) for p in exclude]
    metadata += [("include-patterns", p) for p in include]
    if any(not v.isascii() for _, v in metadata):
        from urllib.parse import quote_plus
        metadata = [(k, quote_plus(v)) for k, v in metadata]
        metadata += [(f"{k}-encoded", "1") for k in
                     ("dir-name", "followpaths", "exclude-patterns", "include-patterns")]
    log.debug("filesync %s: fetching into %s", dir_name, dest)
    call = await session.conn.open(DIFFCOPY, metadata)
    receiver = _Receiver(dest)
    requester: asyncio.Task[None] | None = None
    try:
        entries = await _receive_stats(call)
        await asyncio.to_thread(receiver.make_entries, entries)
        wanted = {i: st for i, st in enumerate(entries)
                  if st.mode & GO_TYPE == 0 and not st.linkname}
        # Requests go out from their own task while DATA comes in: both directions are
        # flow-controlled, and the client may stop reading until we read.
        requester = asyncio.create_task(_request_files(call, sorted(wanted)))
        stats = SyncStats(entries=len(entries), files=len(wanted))
        pending = set(wanted)
        # A file's data is written in batches (the client interleaves at most a few
        # files, so this holds a few MiB at most).
        buffers: dict[int, bytearray] = {}
        while pending:
            packet = await _next_packet(call)
            if packet.type != _DATA:
                raise GrpcError(Code.INTERNAL, f"unexpected filesync packet {packet.type}")
            st = wanted.get(packet.ID)
            if st is None or packet.ID not in pending:
                raise GrpcError(Code.INTERNAL, f"filesync data for unrequested id {packet.ID}")
            buffer = buffers.setdefault(packet.ID, bytearray())
            if packet.data:
                stats.bytes += len(packet.data)
                buffer += packet.data
                if len(buffer) >= _WRITE_BATCH:
                    await asyncio.to_thread(receiver.write, packet.ID, st, bytes(buffer))
                    buffer.clear()
            else:
                # one thread hop for a small file: open, write, set mode and times, close
                await asyncio.to_thread(receiver.write_last, packet.ID, st, bytes(buffer))
                del buffers[packet.ID]
                pending.discard(packet.ID)
        await requester
        await call.send(pb.Packet(type=_FIN).SerializeToString())
        while (closing := await _next_packet_or_end(call)) is not None:
            if closing.type == _FIN:
                break
        await call.done_sending()
        with contextlib.suppress(GrpcError):
            while await call.receive() is not None:
                pass
        await asyncio.to_thread(receiver.finish)
        log.debug("filesync %s: %d entries, %d bytes", dir_name, stats.entries, stats.bytes)
        return stats
    finally:
        if requester is not None and not requester.done():
            requester.cancel()
        await asyncio.to_thread(receiver.abort)
        await call.cancel()


async def _receive_stats(call: ClientCall) -> list[pb.Stat]:
    entries: list[pb.Stat] = []
    while True:
        packet = await _next_packet(call)
        if packet.type != _STAT:
            raise GrpcError(Code.INTERNAL, f"unexpected filesync packet {packet.type}")
        if not packet.HasField("stat"):
            return entries
        safe_relative(packet.stat.path)
        entries.append(packet.stat)


async def _request_files(call: ClientCall, ids: Sequence[int]) -> None:
    for start in range(0, len(ids), 512):
        await call.send_many(pb.Packet(type=_REQ, ID=file_id).SerializeToString()
                             for file_id in ids[start:start + 512])


async def _next_packet(call: ClientCall) -> pb.Packet:
    packet = await _next_packet_or_end(call)
    if packet is None:
        raise GrpcError(Code.UNAVAILABLE, "the client ended the file transfer early")
    return packet


async def _next_packet_or_end(call: ClientCall) -> pb.Packet | None:
    raw = await call.receive()
    if raw is None:
        return None
    packet: pb.Packet = pb.Packet.FromString(raw)
    if packet.type == _ERR:
        raise GrpcError(Code.UNKNOWN, packet.data.decode("utf-8", "replace")
                        or "the client reported an error during file transfer")
    return packet
