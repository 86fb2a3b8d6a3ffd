"""Detach key parsing and recognition across chunk boundaries."""

from __future__ import annotations

import pytest

from engine.containers.detachkeys import Escape, parse
from engine.errors import InvalidParameter


def test_parse() -> None:
    assert parse(None) == b"\x10\x11"
    assert parse("ctrl-a,x") == b"\x01x"
    assert parse("ctrl-@,ctrl-[") == b"\x00\x1b"
    with pytest.raises(InvalidParameter, match=r"Invalid detach keys \(ctrl-,\) provided"):
        parse("ctrl-,")


def test_sequence_split_over_chunks_detaches() -> None:
    esc = Escape(b"\x10\x11")
    assert esc.feed(b"ls\x10") == (b"ls", False)
    assert esc.feed(b"\x11more") == (b"", True)


def test_partial_sequence_is_forwarded() -> None:
    esc = Escape(b"\x10\x11")
    assert esc.feed(b"a\x10") == (b"a", False)
    assert esc.feed(b"b") == (b"\x10b", False)
    assert esc.feed(b"\x10\x10\x11") == (b"\x10", True)
