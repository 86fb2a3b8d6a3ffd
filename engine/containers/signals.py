"""Signal names as Docker accepts them: SIGKILL, KILL, kill, 9, RTMIN+3."""

from __future__ import annotations

import signal

from engine.errors import InvalidParameter

_MAX_SIGNAL = 64


def parse_signal(value: str | int | None, default: int = signal.SIGKILL) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, int):
        number = value
    else:
        text = value.strip()
        if text.isdigit():
            number = int(text)
        else:
            number = _by_name(text)
    if not 0 < number <= _MAX_SIGNAL:
        raise InvalidParameter(f"Invalid signal: {value}")
    return number


def _by_name(text: str) -> int:
    name = text.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    if name.startswith("SIGRTMIN+") or name.startswith("SIGRTMAX-"):
        base, _, offset = name.partition("+") if "+" in name else name.partition("-")
        if offset.isdigit():
            start = signal.SIGRTMIN if base == "SIGRTMIN" else signal.SIGRTMAX
            return int(start) + int(offset) if base == "SIGRTMIN" else int(start) - int(offset)
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise InvalidParameter(f"Invalid signal: {text}") from None


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)
