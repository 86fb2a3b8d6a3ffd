"""Query-string and body parsing with dockerd's rules.

Booleans follow moby's ``httputils.BoolValue``: false for "", 0, no, false, none
(any case), true otherwise; docker-py sends Python reprs ("True"/"False").
JSON bodies follow ``httputils.CheckForJSON``/``ReadJSON`` of current dockerd.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from api.jsontext import replace_lone_surrogates
from engine.errors import InvalidParameter

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_GO_INTEGER = re.compile(r"[+-]?[0-9]+")
_FALSE = frozenset({"", "0", "no", "false", "none"})
# dockerd reads JSON bodies without a limit and accepts a 64 MiB label value; we allow a
# 64 MiB payload plus room for the rest of the document, and answer 413 beyond that.
MAX_JSON_BODY = 65 * 1024 * 1024


def bool_value(raw: str | None, default: bool = False) -> bool:
    if raw is None:
        return default
    return raw.strip().lower() not in _FALSE


def bool_param(request: web.Request, name: str, default: bool = False) -> bool:
    return bool_value(request.query.get(name), default)


def int_param(request: web.Request, name: str, default: int | None = None) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        if not _GO_INTEGER.fullmatch(raw):
            raise ValueError(raw)  # int() would also take "1_000" and " 5"
        value = int(raw)
    except ValueError:
        raise InvalidParameter(f"invalid value for {name}: {raw!r}: invalid syntax") from None
    if not _INT64_MIN <= value <= _INT64_MAX:
        # dockerd parses query integers as Go int64 (strconv.ParseInt)
        raise InvalidParameter(f"invalid value for {name}: {raw!r}: value out of range")
    return value


def filters_param(request: web.Request, allowed: frozenset[str] | set[str]) -> dict[str, list[str]]:
    """Parse ``filters`` in the map form ``{"k":{"v":true}}`` or the legacy ``{"k":["v"]}``."""
    return parse_filters(request.query.get("filters"), allowed)


def parse_filters(raw: str | None, allowed: frozenset[str] | set[str]) -> dict[str, list[str]]:
    """moby's ``filters.FromJSON`` then ``Validate``: unknown keys are an error.

    In the map form only the keys count (moby ignores the booleans); the legacy form
    is a list of strings. Anything else is not a filter.
    """
    if raw is None or raw.strip() == "":
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InvalidParameter(f"invalid filter: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidParameter("invalid filter: expected a JSON object")
    result: dict[str, list[str]] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            values = list(value)
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            values = list(value)
        else:
            raise InvalidParameter(f"invalid filter: bad value for '{key}'")
        if key not in allowed:
            raise InvalidParameter(f"invalid filter '{key}'")
        result[key] = values
    return result


async def read_json(request: web.Request) -> Any:
    """The JSON body, or None when the body is empty. Errors are dockerd's 400 messages."""
    body = await request.read()
    if not body.strip():
        return None
    content_type = request.headers.get("Content-Type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise InvalidParameter(
            f"unsupported Content-Type header ({content_type}): must be 'application/json'"
        )
    decoder = json.JSONDecoder()
    text = body.decode("utf-8", errors="replace")
    try:
        value, end = decoder.raw_decode(text, _skip_ws(text, 0))
    except RecursionError:
        raise InvalidParameter("invalid JSON: exceeded max depth") from None
    except ValueError as exc:
        raise InvalidParameter(f"invalid JSON: {exc}") from None
    if text[end:].strip():
        raise InvalidParameter("unexpected content after JSON")
    if _ESCAPED_SURROGATE.search(text):
        try:
            value = replace_lone_surrogates(value)
        except RecursionError:
            raise InvalidParameter("invalid JSON: exceeded max depth") from None
    return value


# A ``\ud800``-style escape: the only way a lone surrogate gets into decoded JSON (invalid
# UTF-8 bytes were already replaced when the body was decoded).
_ESCAPED_SURROGATE = re.compile(r"\\[uU][dD][89a-fA-F]")


def _skip_ws(text: str, index: int) -> int:
    while index < len(text) and text[index] in " \t\r\n":
        index += 1
    return index


_GO_UINT = re.compile(r"[0-9]+")
_UINT64_MAX = 2**64 - 1


def go_quote(text: str) -> str:
    """Go's strconv.Quote for the texts that reach it here (JSON's escapes match it)."""
    return json.dumps(text, ensure_ascii=False)


def version_param(request: web.Request, kind: str) -> int:
    """``?version=`` of a swarm object update, with dockerd's 400 text when it is not a
    uint64: ``invalid <kind> version '': strconv.ParseUint: parsing "": invalid syntax``."""
    raw = request.query.get("version", "")
    if not _GO_UINT.fullmatch(raw):
        reason = "invalid syntax"
    elif int(raw) > _UINT64_MAX:
        reason = "value out of range"
    else:
        return int(raw)
    raise InvalidParameter(
        f"invalid {kind} version '{raw}': strconv.ParseUint: parsing {go_quote(raw)}: {reason}")


_GO_TRUE = frozenset({"1", "t", "T", "true", "TRUE", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "false", "FALSE", "False"})


def go_bool_param(request: web.Request, name: str) -> bool:
    """A flag dockerd reads with strconv.ParseBool (absent or "" is false); anything
    else is 400 ``invalid value for <name>: <value>``."""
    raw = request.query.get(name, "")
    if raw == "" or raw in _GO_FALSE:
        return False
    if raw in _GO_TRUE:
        return True
    raise InvalidParameter(f"invalid value for {name}: {raw}")
