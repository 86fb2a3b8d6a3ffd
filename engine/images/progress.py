"""Progress of pulls, pushes and loads, as engine values (the API renders them as JSON
lines, api-notes §3.8).

The statuses are moby's (daemon/internal/distribution, xfer): compose and the CLI key
their display on these exact strings, so they live here as constants.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# Pull (per layer, ``id`` = 12 hex of the compressed blob digest)
PULLING_FS_LAYER = "Pulling fs layer"
WAITING = "Waiting"
DOWNLOADING = "Downloading"
VERIFYING = "Verifying Checksum"
DOWNLOAD_COMPLETE = "Download complete"
EXTRACTING = "Extracting"
PULL_COMPLETE = "Pull complete"
ALREADY_EXISTS = "Already exists"
# Push (per layer, ``id`` = 12 hex of the diff id)
PREPARING = "Preparing"
PUSHING = "Pushing"
PUSHED = "Pushed"
LAYER_EXISTS = "Layer already exists"
# Load (per layer, ``id`` = 12 hex of the diff id)
LOADING_LAYER = "Loading layer"

_THROTTLE = 0.1  # seconds between byte-count updates of one id (moby: 100 ms)


@dataclass(frozen=True)
class Progress:
    """One message. ``detail`` says whether ``progressDetail`` is present (layer
    messages carry it, ``{}`` when there are no numbers; plain status lines do not)."""

    status: str = ""
    id: str = ""
    current: int | None = None
    total: int | None = None
    detail: bool = False
    aux: Mapping[str, Any] | None = None
    stream: str | None = None


ProgressSink = Callable[[Progress], None]


def discard(_message: Progress) -> None:
    """A sink for callers that do not want progress."""


def message(status: str, id: str = "") -> Progress:
    return Progress(status=status, id=id)


def layer(status: str, id: str) -> Progress:
    return Progress(status=status, id=id, detail=True)


def short(digest: str) -> str:
    """moby's stringid.TruncateID: the first 12 hex digits, algorithm dropped."""
    return digest.partition(":")[2][:12] if ":" in digest else digest[:12]


class ByteProgress:
    """Byte-count updates of one id, at most every 100 ms (the last one always goes)."""

    def __init__(self, sink: ProgressSink, id: str, status: str, total: int | None) -> None:
        self._sink = sink
        self._id = id
        self._status = status
        self.total = total
        self.current = 0
        self._last = 0.0

    def add(self, n: int) -> None:
        self.current += n
        now = time.monotonic()
        if now - self._last >= _THROTTLE:
            self._last = now
            self.emit()

    def emit(self) -> None:
        self._sink(Progress(self._status, self._id, self.current, self.total, True))


# -------------------------------------------------------------------- the text bar
def human_size(size: float) -> str:
    """go-units HumanSize: decimal units, 4 significant digits (``32.77kB``)."""
    units = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"]
    index = 0
    while size >= 1000 and index < len(units) - 1:
        size /= 1000.0
        index += 1
    return f"{size:.4g}{units[index]}"


def progress_bar(current: int, total: int | None) -> str:
    """The pre-rendered ``progress`` string moby still sends (JSONProgress.String at
    the daemon's width, so the bar is included); clients draw their own from
    ``progressDetail``."""
    if current <= 0 and (total is None or total <= 0):
        return ""
    if total is None or total <= 0:
        return f"{human_size(current):>8}"
    percentage = min(int(current / total * 100) // 2, 50)
    bar = "[" + "=" * percentage + ">" + " " * max(50 - percentage, 0) + "] "
    if current > total:
        return bar + f"{human_size(current):>8}"
    return bar + f"{human_size(current):>8}/{human_size(total)}"
