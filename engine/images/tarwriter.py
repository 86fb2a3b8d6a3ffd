"""Streaming tar output (save archives, commit diffs) the way Go's archive/tar writes it:
USTAR headers, PAX records only when a field does not fit, data padded to 512 bytes,
and two zero blocks at the end with no padding to a record size (so an empty layer is
1024 zero bytes, whose sha256 Docker knows as the empty layer)."""

from __future__ import annotations

import tarfile
from collections.abc import Mapping

BLOCK = 512
END = b"\0" * (2 * BLOCK)


def header(
    name: str,
    size: int = 0,
    *,
    mode: int = 0o644,
    mtime: float = 0,
    kind: bytes = tarfile.REGTYPE,
    linkname: str = "",
    uid: int = 0,
    gid: int = 0,
    uname: str = "",
    gname: str = "",
    devmajor: int = 0,
    devminor: int = 0,
    pax: Mapping[str, str] | None = None,
) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size if kind == tarfile.REGTYPE else 0
    info.mode = mode & 0o7777
    info.mtime = int(mtime) if float(mtime).is_integer() else mtime
    info.type = kind
    info.linkname = linkname
    info.uid, info.gid = uid, gid
    info.uname, info.gname = uname, gname
    info.devmajor, info.devminor = devmajor, devminor
    if pax:
        info.pax_headers = dict(pax)
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")


def padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def file_entry(name: str, data: bytes, *, mode: int = 0o644, mtime: float = 0) -> bytes:
    """A whole small regular file: header, data, padding."""
    return header(name, len(data), mode=mode, mtime=mtime) + data + padding(len(data))


def dir_entry(name: str, *, mode: int = 0o755, mtime: float = 0) -> bytes:
    return header(name.rstrip("/") + "/", mode=mode, mtime=mtime, kind=tarfile.DIRTYPE)
