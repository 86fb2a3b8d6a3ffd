"""Remote files: ``ADD <url>`` and ``remote=<url>`` build contexts.

``ADD <url>``: the file is downloaded into the build's own directory, then added
like a file of the context (dockerd: never extracted, mode 0600, the ``Last-Modified``
time as mtime, named after the URL's last path element).

Blocking (urllib in a worker thread): one request per source, with a timeout, and a
size limit so that a hostile or endless response cannot fill the disk.
"""

from __future__ import annotations

import email.utils
import io
import os
import posixpath
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO

from engine.builder.context import BuildContext, escapes, prepare_context
from engine.errors import InvalidParameter
from engine.images.unpack import open_uncompressed, read_upto

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


# =========================================================================== remote contexts
def is_git_context(remote: str) -> bool:
    """What dockerd would clone with git (``git://``, ``git@``, ``github.com/``, URLs
    of ``*.git``)."""
    if remote.startswith(("git://", "git@", "github.com/")):
        return True
    return is_url(remote) and urllib.parse.urlsplit(remote).path.endswith(".git")


def fetch_context(remote: str, dest: Path, dockerfile: str) -> BuildContext:
    """``remote=<url>``: a tar (any compression we read) becomes the context; anything
    else is taken as the Dockerfile itself, as dockerd does. Blocking."""
    if is_git_context(remote):
        raise InvalidParameter(
            f"git build contexts are not supported ({remote}): clone the repository and "
            "send it as the build context")
    if not is_url(remote):
        raise InvalidParameter(f"unable to prepare context: '{remote}' is not a valid URL")
    download_dir = dest.parent / "remote"
    download_dir.mkdir()
    try:
        path = download(remote, download_dir, "context")
        with open(path, "rb") as source:
            if _is_tar(source):
                source.seek(0)
                return prepare_context(source, dest, dockerfile)
        name = dockerfile if not escapes(dockerfile) else "Dockerfile"
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(path, target)
        return prepare_context(io.BytesIO(_empty_tar()), dest, dockerfile)
    finally:
        shutil.rmtree(download_dir, ignore_errors=True)


def _is_tar(source: BinaryIO) -> bool:
    plain, _compression = open_uncompressed(source)
    try:
        head = read_upto(plain, 512)
    except (OSError, EOFError, ValueError):
        return False  # compressed-looking garbage: not an archive, so a Dockerfile
    return len(head) == 512 and head[257:262] == b"ustar"


def _empty_tar() -> bytes:
    return b"\0" * 1024
