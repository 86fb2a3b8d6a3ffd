"""A raw HTTP/1.1 client over AF_UNIX, for tests that need exact bytes on the wire.

Not aiohttp, not http.client: the point is to be able to send malformed requests, read
an early error response before finishing an upload, keep a connection alive across
requests, take over the socket after ``101 UPGRADED`` (attach/exec hijack), and read
chunked streams incrementally.

Also here: an offset-based demultiplexer for Docker's stdcopy framing
(``[stream, 0, 0, 0, size(4, big-endian)] + payload``), which never re-slices the
input buffer (so 20 MB of logs is linear, not quadratic).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

CRLF = b"\r\n"


class HTTPError(Exception):
    pass


@dataclass
class Response:
    status: int
    reason: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    raw_head: bytes = b""
    chunked: bool = False

    def header(self, name: str, default: str | None = None) -> str | None:
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return default

    def header_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


@dataclass
class _Buffered:
    sock: socket.socket
    buf: bytearray = field(default_factory=bytearray)
    pos: int = 0
    eof: bool = False

    def _fill(self, deadline: float | None) -> bool:
        if self.eof:
            return False
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out reading from the daemon")
            self.sock.settimeout(remaining)
        else:
            self.sock.settimeout(None)
        try:
            data = self.sock.recv(1 << 16)
        except TimeoutError as e:
            raise TimeoutError("timed out reading from the daemon") from e
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        if self.pos > (1 << 20) and self.pos > len(self.buf) // 2:
            del self.buf[: self.pos]
            self.pos = 0
        self.buf += data
        return True

    def available(self) -> int:
        return len(self.buf) - self.pos

    def read_until(self, sep: bytes, deadline: float | None, limit: int = 1 << 20) -> bytes:
        while True:
            idx = self.buf.find(sep, self.pos)
            if idx >= 0:
                out = bytes(self.buf[self.pos : idx + len(sep)])
                self.pos = idx + len(sep)
                return out
            if self.available() > limit:
                raise HTTPError(f"line longer than {limit} bytes")
            if not self._fill(deadline):
                raise HTTPError(f"connection closed before {sep!r}")

    def read_exact(self, n: int, deadline: float | None) -> bytes:
        while self.available() < n:
            if not self._fill(deadline):
                raise HTTPError(f"connection closed after {self.available()} of {n} bytes")
        out = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return out

    def read_some(self, deadline: float | None) -> bytes:
        if self.available() == 0 and not self._fill(deadline):
            return b""
        out = bytes(self.buf[self.pos :])
        self.pos = len(self.buf)
        return out

    def read_to_eof(self, deadline: float | None) -> bytes:
        while self._fill(deadline):
            pass
        return self.read_some(deadline)


class Connection:
    """One keep-alive connection to a daemon's unix socket."""

    def __init__(self, path: str, timeout: float = 60.0) -> None:
        self.path = path
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self._r = _Buffered(self.sock)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _deadline(self, timeout: float | None) -> float | None:
        t = self.timeout if timeout is None else timeout
        return None if t <= 0 else time.monotonic() + t

    # -- sending --------------------------------------------------------------------
    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def shutdown_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def send_request(
        self,
        method: str,
        path: str,
        body: bytes | str | Mapping[str, Any] | list[Any] | None = None,
        headers: Mapping[str, str] | None = None,
        chunked: bool = False,
    ) -> None:
        hdrs = {"Host": "docker"}
        data: bytes | None
        if body is None:
            data = None
        elif isinstance(body, bytes):
            data = body
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        if headers:
            hdrs.update(headers)
        if data is not None and not chunked:
            hdrs.setdefault("Content-Length", str(len(data)))
        if chunked:
            hdrs["Transfer-Encoding"] = "chunked"
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
        out = head.encode("latin-1") + CRLF
        if data is not None:
            if chunked:
                if data:
                    out += f"{len(data):x}\r\n".encode() + data + CRLF
                out += b"0\r\n\r\n"
            else:
                out += data
        self.sock.sendall(out)

    # -- receiving ------------------------------------------------------------------
    def read_head(self, timeout: float | None = None) -> Response:
        deadline = self._deadline(timeout)
        raw = self._r.read_until(b"\r\n\r\n", deadline, limit=1 << 20)
        lines = raw[:-4].split(CRLF)
        status_line = lines[0].decode("latin-1")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise HTTPError(f"bad status line {status_line!r}")
        headers = []
        for line in lines[1:]:
            k, _, v = line.decode("latin-1").partition(":")
            headers.append((k.strip(), v.strip()))
        resp = Response(
            status=int(parts[1]),
            reason=parts[2] if len(parts) > 2 else "",
            version=parts[0],
            headers=headers,
            raw_head=raw,
        )
        te = (resp.header("Transfer-Encoding") or "").lower()
        resp.chunked = "chunked" in te
        return resp

    def iter_body(self, resp: Response, method: str = "GET", timeout: float | None = None,
                  ) -> Iterator[bytes]:
        """Yield the body as it arrives: one item per chunk for chunked responses."""
        deadline = self._deadline(timeout)
        if method == "HEAD" or resp.status in (101, 204, 304) or 100 <= resp.status < 200:
            return
        if resp.chunked:
            while True:
                size_line = self._r.read_until(CRLF, deadline, limit=4096)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # trailers until empty line
                    while self._r.read_until(CRLF, deadline, limit=1 << 16) != CRLF:
                        pass
                    return
                chunk = self._r.read_exact(size, deadline)
                if self._r.read_exact(2, deadline) != CRLF:
                    raise HTTPError("chunk not followed by CRLF")
                yield chunk
        elif (cl := resp.header("Content-Length")) is not None:
            remaining = int(cl)
            while remaining > 0:
                data = self._r.read_some(deadline)
                if not data:
                    raise HTTPError(f"connection closed with {remaining} body bytes missing")
                if len(data) > remaining:  # pipelined bytes: give them back
                    self._r.pos -= len(data) - remaining
                    data = data[:remaining]
                remaining -= len(data)
                yield data
        else:
            while True:
                data = self._r.read_some(deadline)
                if not data:
                    return
                yield data

    def read_response(self, method: str = "GET", timeout: float | None = None) -> Response:
        resp = self.read_head(timeout)
        resp.body = b"".join(self.iter_body(resp, method, timeout))
        return resp

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | Mapping[str, Any] | list[Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Response:
        self.send_request(method, path, body, headers)
        return self.read_response(method, timeout)

    # -- after 101 / hijack -------------------------------------------------------------
    def recv_some(self, timeout: float | None = None) -> bytes:
        """Raw bytes after a hijack (what the buffer holds first). b"" at EOF."""
        return self._r.read_some(self._deadline(timeout))

    def recv_to_eof(self, timeout: float | None = None) -> bytes:
        return self._r.read_to_eof(self._deadline(timeout))


def request(
    path: str,
    method: str,
    url: str,
    body: bytes | str | Mapping[str, Any] | list[Any] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> Response:
    """One request on a fresh connection (closed afterwards)."""
    with Connection(path, timeout) as c:
        return c.request(method, url, body, headers)


def send_raw(path: str, data: bytes, timeout: float = 30.0, half_close: bool = False
             ) -> Response:
    """Send arbitrary bytes and parse whatever response comes back."""
    with Connection(path, timeout) as c:
        c.send_raw(data)
        if half_close:
            c.shutdown_write()
        return c.read_response()


def ping(path: str, timeout: float = 2.0) -> bool:
    try:
        r = request(path, "GET", "/_ping", headers={"Connection": "close"}, timeout=timeout)
    except (OSError, HTTPError, TimeoutError, ValueError):
        return False
    return r.status == 200


# -- stdcopy -------------------------------------------------------------------------------

STDIN, STDOUT, STDERR, SYSTEMERR = 0, 1, 2, 3


def iter_frames(data: bytes | bytearray | memoryview) -> Iterator[tuple[int, memoryview]]:
    """Yield (stream, payload) for each complete stdcopy frame; raises on a truncated one."""
    mv = memoryview(data)
    off, n = 0, len(mv)
    while off < n:
        if n - off < 8:
            raise HTTPError(f"truncated stdcopy header at offset {off}")
        stream = mv[off]
        size = int.from_bytes(mv[off + 4 : off + 8], "big")
        start = off + 8
        end = start + size
        if end > n:
            raise HTTPError(f"truncated stdcopy frame at offset {off} ({size} bytes)")
        yield stream, mv[start:end]
        off = end


def demux(data: bytes | bytearray | memoryview) -> tuple[bytes, bytes]:
    """(stdout, stderr) of a complete multiplexed stream."""
    out, err = bytearray(), bytearray()
    for stream, payload in iter_frames(data):
        if stream == STDERR:
            err += payload
        elif stream in (STDOUT, STDIN):
            out += payload
        elif stream == SYSTEMERR:
            err += payload
        else:
            raise HTTPError(f"unknown stdcopy stream {stream}")
    return bytes(out), bytes(err)


class Demuxer:
    """Incremental stdcopy parser: feed() arbitrary slices, read .stdout/.stderr."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.frames = 0

    def feed(self, data: bytes) -> None:
        self._buf += data
        buf, pos, n = self._buf, self._pos, len(self._buf)
        while n - pos >= 8:
            size = int.from_bytes(buf[pos + 4 : pos + 8], "big")
            if n - pos - 8 < size:
                break
            stream = buf[pos]
            payload = buf[pos + 8 : pos + 8 + size]
            (self.stderr if stream in (STDERR, SYSTEMERR) else self.stdout).extend(payload)
            self.frames += 1
            pos += 8 + size
        if pos > (1 << 20):
            del buf[:pos]
            pos = 0
        self._pos = pos

    @property
    def pending(self) -> int:
        return len(self._buf) - self._pos
