"""Time formats the Docker API uses: Go's RFC 3339 (nano), Go durations, and the
timestamps filters accept (``until``, ``since``: unix seconds, durations, dates)."""

from __future__ import annotations

import calendar
import contextlib
import re
import time

from engine.errors import InvalidParameter


def rfc3339_nano(ns: int) -> str:
    """Go's time.RFC3339Nano in UTC: fraction without trailing zeros, ``Z`` zone."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if fraction:
        text += "." + f"{fraction:09d}".rstrip("0")
    return text + "Z"


_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$"
)


def parse_rfc3339(text: str) -> float | None:
    """Unix seconds of an RFC 3339 time, or None when it does not parse."""
    match = _RFC3339.match(text.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction = float("0." + match.group(7)) if match.group(7) else 0.0
    zone = match.group(8)
    offset = 0
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        offset = sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    try:
        base = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    except (ValueError, OverflowError):
        return None
    return base - offset + fraction


_DURATION_UNITS = {
    "ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000,
    "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> int:
    """Go's ``time.ParseDuration`` → nanoseconds (``1m30s``, ``1.5h``, ``-2s``, ``0``)."""
    raw = text.strip()
    sign = -1 if raw.startswith("-") else 1
    body = raw.lstrip("+-")
    if body == "0":
        return 0
    total = 0.0
    pos = 0
    while pos < len(body):
        match = _DURATION_PART.match(body, pos)
        if match is None:
            raise InvalidParameter(f'time: invalid duration "{text}"')
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not body:
        raise InvalidParameter(f'time: invalid duration "{text}"')
    return sign * int(total)


def parse_timestamp(value: str, now: float) -> float:
    """A filter timestamp as dockerd's ``GetTimestamp`` takes it: unix seconds (with an
    optional fraction), a Go duration before ``now``, or an RFC 3339 date/time."""
    text = value.strip()
    if re.match(r"^-?\d+(\.\d+)?$", text):
        return float(text)
    with contextlib.suppress(InvalidParameter):
        return now - parse_go_duration(text) / 1e9
    parsed = parse_rfc3339(text)
    if parsed is None and re.match(r"^\d{4}-\d{2}-\d{2}$", text):
        parsed = parse_rfc3339(text + "T00:00:00Z")
    if parsed is None and re.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?$", text):
        parsed = parse_rfc3339(text + "Z")
    if parsed is None:
        raise InvalidParameter(f"failed to parse value as time or duration: {value!r}")
    return parsed
