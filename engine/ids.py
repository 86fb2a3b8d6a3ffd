"""Object ids and reference resolution.

Resolution order, as dockerd's ``GetContainer``: full id, then exact name, then a unique
id prefix. An ambiguous prefix is an ``InvalidParameter``; nothing found is ``NotFound``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from engine.errors import InvalidParameter, NotFound

T = TypeVar("T")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_BASE36_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
SWARM_ID_LENGTH = 25
_SWARM_ID = re.compile(r"^[0-9a-z]{25}$")


def new_id() -> str:
    """A 64-hex id that is never all digits (dockerd's rule, so it cannot read as a number)."""
    while True:
        candidate = secrets.token_hex(32)
        if not candidate[:12].isdigit():
            return candidate


def is_full_id(value: str) -> bool:
    return bool(_HEX64.match(value))


def to_base36(value: int) -> str:
    """``value`` in lowercase base36, no padding (``0`` for zero), as Go's ``big.Int.Text(36)``."""
    if value < 0:
        raise ValueError("base36 of a negative number")
    digits = []
    while True:
        value, remainder = divmod(value, 36)
        digits.append(_BASE36_DIGITS[remainder])
        if value == 0:
            return "".join(reversed(digits))


def new_swarm_id() -> str:
    """A 25-character lowercase base36 id for swarm objects (nodes, services, tasks, ...).

    As swarmkit: 17 random bytes with the top bit forced on, so the base36 text always has
    the same length (27 characters); its first character carries little randomness and is
    dropped, and the next 25 are the id.
    """
    raw = bytearray(secrets.token_bytes(17))
    raw[0] |= 0x80
    return to_base36(int.from_bytes(raw, "big"))[1 : 1 + SWARM_ID_LENGTH]


def is_swarm_id(value: str) -> bool:
    return bool(_SWARM_ID.match(value))


def resolve(
    ref: str,
    by_id: Mapping[str, T],
    name_of: Callable[[T], str],
    not_found: Callable[[str], Exception],
) -> T:
    """Find one object among ``by_id`` by full id, exact name, or unique id prefix."""
    if not ref:
        raise not_found(ref)
    if ref in by_id:
        return by_id[ref]
    name = ref[1:] if ref.startswith("/") else ref
    for obj in by_id.values():
        if name_of(obj) == name:
            return obj
    matches = [obj for obj_id, obj in by_id.items() if obj_id.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise InvalidParameter(f"multiple IDs found with provided prefix: {ref}")
    raise not_found(ref)


def unique_prefix_matches(ref: str, ids: Iterable[str]) -> list[str]:
    return [i for i in ids if i.startswith(ref)]


def not_found_factory(message: str) -> Callable[[str], Exception]:
    """``not_found_factory("No such container: {}")`` → a callable making NotFound errors."""
    return lambda ref: NotFound(message.format(ref))
