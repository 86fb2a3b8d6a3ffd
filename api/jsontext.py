"""Text that can always be sent: lone surrogates as Go has them, and listings that one
bad record cannot break.

Go's JSON decoder turns a lone surrogate escape (``"\\ud800"``) into U+FFFD; Python's
keeps it, and it then cannot be encoded as UTF-8. Bodies are cleaned when they are read
(``api.params.read_json``); what was stored before that, or any record that fails to
render for another reason, must not take a whole listing down with it: the listing
shows the others and the log names the bad one in one line.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from aiohttp import web

from api.errors import json_bytes

log = logging.getLogger(__name__)

T = TypeVar("T")

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def replace_lone_surrogates(value: Any) -> Any:
    """``value`` (decoded JSON) with every lone surrogate replaced by U+FFFD."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [replace_lone_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {replace_lone_surrogates(key): replace_lone_surrogates(item)
                for key, item in value.items()}
    return value


def encode(data: Any) -> bytes:
    """JSON bytes of ``data``; text stored with a lone surrogate goes out as U+FFFD."""
    try:
        return json_bytes(data)
    except UnicodeEncodeError:
        return json_bytes(replace_lone_surrogates(data))


def encode_each(records: Iterable[T], render: Callable[[T], Any],
                name: Callable[[T], str], what: str) -> bytes:
    """A JSON array of ``render(record)``; a record that cannot be rendered is left out
    and logged (one line), so the rest still lists."""
    parts: list[bytes] = []
    for record in records:
        try:
            parts.append(encode(render(record)))
        except Exception as exc:  # any failure of one record stays with that record
            log.warning("listing %s: left out %s: %s: %s", what, name(record),
                        type(exc).__name__, exc)
    return b"[" + b",".join(parts) + b"]"


def json_list_response(records: Iterable[T], render: Callable[[T], Any],
                       name: Callable[[T], str], what: str) -> web.Response:
    return web.Response(body=encode_each(records, render, name, what),
                        content_type="application/json")


def json_body_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=encode(data), status=status, content_type="application/json")
