"""``ADD <url>``: the file is downloaded into the build's own directory, then added
like a file of the context (dockerd: never extracted, mode 0600, the ``Last-Modified``
time as mtime, named after the URL's last path element).

Blocking (urllib in a worker thread): one request per source, with a timeout, and a
size limit so that a hostile or endless response cannot fill the disk.
"""

from __future__ import annotations

import email.utils
import os
import posixpath
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from engine.errors import InvalidParameter

TIMEOUT = 60.0
MAX_BYTES = 8 << 30
_CHUNK = 1 << 20


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def file_name(url: str) -> str:
    """The name the download gets: the URL path's last element (dockerd's rule)."""
    path = urllib.parse.urlsplit(url).path
    name = posixpath.basename(path.rstrip("/")) if path else ""
    if not name or name in {".", ".."}:
        raise InvalidParameter(
            f"cannot determine filename from url: {url}: use a destination ending in a "
            "file name, not /")
    return name


def download(url: str, directory: Path, name: str) -> Path:
    """Fetch ``url`` to ``directory/name``; errors say which URL and why."""
    target = directory / name
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            mtime = _last_modified(response.headers.get("Last-Modified"))
            size = 0
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                while chunk := response.read(_CHUNK):
                    size += len(chunk)
                    if size > MAX_BYTES:
                        raise InvalidParameter(f"failed to fetch {url}: larger than 8 GiB")
                    os.write(fd, chunk)
            finally:
                os.close(fd)
    except urllib.error.HTTPError as exc:
        raise InvalidParameter(
            f"failed to GET {url} with status {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise InvalidParameter(f"failed to fetch {url}: {reason}") from None
    os.chmod(target, 0o600)
    if mtime is not None:
        os.utime(target, (mtime, mtime))
    return target


def _last_modified(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
