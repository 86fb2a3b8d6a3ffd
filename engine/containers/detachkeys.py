"""Detach keys: the key sequence that ends an attach session without stopping the
container (Docker's default ctrl-p,ctrl-q), recognised in a TTY's stdin stream."""

from __future__ import annotations

from engine.errors import InvalidParameter

DEFAULT = "ctrl-p,ctrl-q"
_CTRL_SPECIALS = {"@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}


def parse(spec: str | None) -> bytes:
    """``"ctrl-p,ctrl-q"`` → ``b"\\x10\\x11"``; single characters stand for themselves."""
    text = DEFAULT if not spec else spec
    out = bytearray()
    for key in text.split(","):
        key = key.strip()
        if len(key) == 1 and key.isascii():
            # a key is one byte, as in Go (len counts UTF-8 bytes there): "é" is not one
            out.append(ord(key))
            continue
        lowered = key.lower()
        if lowered.startswith("ctrl-") and len(key) == 6:
            char = lowered[5]
            if "a" <= char <= "z":
                out.append(ord(char) - ord("a") + 1)
                continue
            if char in _CTRL_SPECIALS:
                out.append(_CTRL_SPECIALS[char])
                continue
        raise InvalidParameter(f"Invalid detach keys ({text}) provided")
    return bytes(out)


class Escape:
    """Feeds stdin through, holding back a possible start of the sequence.

    ``feed`` returns the bytes to forward and whether the full sequence was typed (then
    nothing after it is forwarded: the session ends).
    """

    def __init__(self, keys: bytes) -> None:
        self._keys = keys
        self._held = b""

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        out = bytearray()
        for byte in data:
            candidate = self._held + bytes([byte])
            if self._keys.startswith(candidate):
                if candidate == self._keys:
                    self._held = b""
                    return bytes(out), True
                self._held = candidate
                continue
            out += self._held
            self._held = b""
            if self._keys.startswith(bytes([byte])):
                self._held = bytes([byte])
            else:
                out.append(byte)
        return bytes(out), False
