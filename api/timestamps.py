"""Timestamps in query strings, as the Docker clients send them.

The Go client converts `--since 10m` / RFC 3339 into `<unix>` or `<unix>.<9 digits>`;
docker-py sends integer or float seconds. An RFC 3339 string is accepted too.
"""

from __future__ import annotations

from datetime import datetime

from engine.errors import InvalidParameter


def parse_unix_nano(value: str | None) -> int | None:
    """Nanoseconds since the epoch, or None when absent/empty/zero."""
    if value is None or value.strip() == "":
        return None
    text = value.strip()
    seconds, dot, fraction = text.partition(".")
    if seconds.lstrip("-").isdigit() and (not dot or fraction.isdigit()):
        nanos = int(fraction.ljust(9, "0")[:9]) if fraction else 0
        total = int(seconds) * 1_000_000_000 + nanos
        return total if total > 0 else None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidParameter(f"failed to parse value {text!r} as a timestamp") from None
    return int(parsed.timestamp() * 1_000_000_000)
