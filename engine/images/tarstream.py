"""A lean streaming tar reader for layer extraction.

Python's tarfile spends more time decoding a header (~30 µs) than the kernel spends
creating the file it describes, which dominates layers of many small files. This reader
decodes only what extraction needs, from a read-ahead buffer, and hands out members with
tarfile.TarInfo's attribute names (``name``, ``type``, ``mode``, ``uid``, ``gid``,
``size``, ``mtime``, ``linkname``, ``devmajor``, ``devminor``, ``pax_headers`` and the
``isreg()``-style predicates), so the extractor works on either.

Formats: v7, ustar (with its name prefix), GNU (``L``/``K`` long names, base-256
numbers) and POSIX pax (``x`` per-file and ``g`` global records: path, linkpath, size,
uid, gid, mtime, atime, uname, gname and xattrs). GNU sparse files and multi-volume
archives are refused: layers do not use them. Every header's checksum is verified.
Names are decoded as UTF-8 with surrogate escapes, like tarfile, so any byte survives
the round trip to the file system.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from typing import Protocol

BLOCK = 512
_READAHEAD = 256 * 1024
_MAX_META = 16 << 20  # a pax record set or a GNU long name is never this big
_ENCODING = "utf-8"
_ERRORS = "surrogateescape"


class TarFormatError(ValueError):
    """The stream is not a tar archive we can read."""


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class TarMember:
    """One entry (tarfile.TarInfo's names, so the extractor accepts either)."""

    __slots__ = ("devmajor", "devminor", "gid", "gname", "linkname", "mode", "mtime", "name",
                 "pax_headers", "size", "type", "uid", "uname")

    def __init__(self) -> None:
        self.name = ""
        self.type = tarfile.REGTYPE
        self.mode = 0
        self.uid = 0
        self.gid = 0
        self.size = 0
        self.mtime: float = 0
        self.linkname = ""
        self.uname = ""
        self.gname = ""
        self.devmajor = 0
        self.devminor = 0
        self.pax_headers: dict[str, str] = {}

    def isreg(self) -> bool:
        return self.type in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)

    def isdir(self) -> bool:
        return self.type == tarfile.DIRTYPE

    def issym(self) -> bool:
        return self.type == tarfile.SYMTYPE

    def islnk(self) -> bool:
        return self.type == tarfile.LNKTYPE

    def ischr(self) -> bool:
        return self.type == tarfile.CHRTYPE

    def isblk(self) -> bool:
        return self.type == tarfile.BLKTYPE

    def isfifo(self) -> bool:
        return self.type == tarfile.FIFOTYPE


def _number(field: bytes) -> int:
    """An octal number, or GNU base-256 when the top bit of the first byte is set."""
    if field and field[0] & 0x80:
        value = int.from_bytes(field[1:], "big")
        if field[0] == 0xFF:  # negative
            value -= 1 << (8 * (len(field) - 1))
        return value
    text = field.split(b"\0", 1)[0].strip()
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise TarFormatError(f"invalid number field {field!r}") from None


def _string(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode(_ENCODING, _ERRORS)


def _checksum_ok(block: bytes) -> bool:
    stored = _number(block[148:156])
    unsigned = sum(block[:148]) + 256 + sum(block[156:])  # the field itself as spaces
    if stored == unsigned:
        return True
    signed = sum(b - 256 if b > 127 else b for b in block[:148] + block[156:]) + 256
    return stored == signed


def _pax_records(data: bytes) -> dict[str, str]:
    """``"<len> <key>=<value>\\n"`` records."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:
            break
        space = data.find(b" ", pos)
        if space < 0:
            raise TarFormatError("invalid pax header")
        try:
            length = int(data[pos:space])
        except ValueError:
            raise TarFormatError("invalid pax header") from None
        if length <= 0 or pos + length > len(data):
            raise TarFormatError("invalid pax header")
        record = data[space + 1: pos + length]
        if not record.endswith(b"\n") or b"=" not in record:
            raise TarFormatError("invalid pax header")
        key, _, value = record[:-1].partition(b"=")
        records[key.decode(_ENCODING, _ERRORS)] = value.decode(_ENCODING, _ERRORS)
        pos += length
    return records


class TarReader:
    """Members of the tar in ``source``, one after another; ``read(n)`` reads the
    current member's data (what is left unread is skipped by the next ``next()``)."""

    def __init__(self, source: Readable) -> None:
        self._source = source
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self._left = 0  # data bytes of the current member not read yet
        self._pad = 0  # padding after them
        self._global: dict[str, str] = {}
        self.consumed = 0  # bytes of the archive taken so far

    # -- the buffer -------------------------------------------------------------------
    def _fill(self, n: int) -> bool:
        """At least ``n`` bytes buffered (False at EOF before that)."""
        while len(self._buf) - self._pos < n:
            if self._eof:
                return False
            if self._pos:
                del self._buf[: self._pos]
                self._pos = 0
            data = self._source.read(max(_READAHEAD, n))
            if not data:
                self._eof = True
                return len(self._buf) >= n
            self._buf += data
        return True

    def _take(self, n: int) -> bytes:
        if not self._fill(n):
            raise TarFormatError("unexpected end of archive")
        out = bytes(self._buf[self._pos: self._pos + n])
        self._pos += n
        self.consumed += n
        return out

    def _skip_padding(self, n: int) -> bool:
        """Skip a member's padding; False when the archive ends inside it."""
        while n > 0:
            available = len(self._buf) - self._pos
            if available == 0 and not self._fill(1):
                return False
            step = min(n, len(self._buf) - self._pos)
            self._pos += step
            self.consumed += step
            n -= step
        return True

    def _skip(self, n: int) -> None:
        while n > 0:
            available = len(self._buf) - self._pos
            if available == 0 and not self._fill(1):
                raise TarFormatError("unexpected end of archive")
            step = min(n, len(self._buf) - self._pos)
            self._pos += step
            self.consumed += step
            n -= step

    # -- data of the current member ---------------------------------------------------
    def read(self, n: int = -1, /) -> bytes:
        if self._left == 0:
            return b""
        want = self._left if n < 0 else min(n, self._left)
        available = len(self._buf) - self._pos
        if available == 0:
            if not self._fill(1):
                raise TarFormatError("unexpected end of archive data")
            available = len(self._buf) - self._pos
        step = min(want, available)
        out = bytes(self._buf[self._pos: self._pos + step])
        self._pos += step
        self.consumed += step
        self._left -= step
        return out

    # -- headers ----------------------------------------------------------------------
    def __iter__(self) -> Iterator[TarMember]:
        while True:
            member = self.next()
            if member is None:
                return
            yield member

    def next(self) -> TarMember | None:
        self._skip(self._left)
        pad, self._left, self._pad = self._pad, 0, 0
        if not self._skip_padding(pad):
            return None  # ended right after the last member's data, as the CLI's `-f -` tar
        pax: dict[str, str] = {}
        long_name: str | None = None
        long_link: str | None = None
        while True:
            if not self._fill(BLOCK):
                if len(self._buf) - self._pos == 0 and self.consumed > 0:
                    return None  # ended without the zero blocks: tolerated, as tarfile does
                if self.consumed == 0 and len(self._buf) - self._pos == 0:
                    return None
                raise TarFormatError("unexpected end of archive")
            block = self._take(BLOCK)
            if not any(block):
                return None  # the end-of-archive marker
            if not _checksum_ok(block):
                raise TarFormatError("invalid header checksum" if self.consumed > BLOCK
                                     else "not a tar archive")
            kind = block[156:157]
            size = _number(block[124:136])
            if size < 0:
                raise TarFormatError("negative size")
            padded = size + (-size % BLOCK)
            if kind in (tarfile.XHDTYPE, tarfile.XGLTYPE, b"X"):
                records = _pax_records(self._meta(size, padded))
                if kind == tarfile.XGLTYPE:
                    self._global.update(records)
                else:
                    pax.update(records)
                continue
            if kind == tarfile.GNUTYPE_LONGNAME:
                long_name = self._meta(size, padded).split(b"\0", 1)[0].decode(_ENCODING, _ERRORS)
                continue
            if kind == tarfile.GNUTYPE_LONGLINK:
                long_link = self._meta(size, padded).split(b"\0", 1)[0].decode(_ENCODING, _ERRORS)
                continue
            if kind in (tarfile.GNUTYPE_SPARSE, b"M", b"V"):
                raise TarFormatError(f"unsupported tar entry type {kind!r}")
            return self._member(block, kind, size, padded, {**self._global, **pax},
                                long_name, long_link)

    def _meta(self, size: int, padded: int) -> bytes:
        if size > _MAX_META:
            raise TarFormatError("tar metadata record too large")
        data = self._take(size)
        self._skip(padded - size)
        return data

    def _member(
        self, block: bytes, kind: bytes, size: int, padded: int, pax: dict[str, str],
        long_name: str | None, long_link: str | None,
    ) -> TarMember:
        m = TarMember()
        name = _string(block[0:100])
        magic = block[257:263]
        if magic == b"ustar\x00":  # POSIX: a prefix may hold the leading directories
            prefix = _string(block[345:500])
            if prefix:
                name = f"{prefix}/{name}"
        m.name = pax.get("path", long_name if long_name is not None else name)
        m.linkname = pax.get("linkpath", long_link if long_link is not None
                             else _string(block[157:257]))
        m.mode = _number(block[100:108])
        m.uid = _pax_int(pax, "uid", block[108:116])
        m.gid = _pax_int(pax, "gid", block[116:124])
        m.mtime = _pax_float(pax, "mtime", block[136:148])
        m.uname = pax.get("uname", _string(block[265:297]))
        m.gname = pax.get("gname", _string(block[297:329]))
        m.devmajor = _number(block[329:337])
        m.devminor = _number(block[337:345])
        if "size" in pax:
            try:
                size = int(pax["size"])
            except ValueError:
                raise TarFormatError("invalid pax size") from None
            padded = size + (-size % BLOCK)
        if kind == tarfile.AREGTYPE and m.name.endswith("/"):
            kind = tarfile.DIRTYPE
        m.type = kind
        m.pax_headers = pax
        carries_data = kind in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
        m.size = size if carries_data else 0
        # Data of entries that carry none by type (a hard link with a size) is skipped.
        self._left = size
        self._pad = padded - size
        if not carries_data:
            self._skip(size)
            self._left = 0
        return m


def _pax_int(pax: dict[str, str], key: str, field: bytes) -> int:
    if key in pax:
        try:
            return int(pax[key])
        except ValueError:
            raise TarFormatError(f"invalid pax {key}") from None
    return _number(field)


def _pax_float(pax: dict[str, str], key: str, field: bytes) -> float:
    if key in pax:
        try:
            return float(pax[key])
        except ValueError:
            raise TarFormatError(f"invalid pax {key}") from None
    return _number(field)
