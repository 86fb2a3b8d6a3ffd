"""Lexical path cleaning shared by everything that takes a path from a client or an
archive and must keep it inside a root."""

from __future__ import annotations


def clean_components(path: str) -> list[str]:
    """The components of ``path`` taken as absolute, cleaned like Go's ``filepath.Clean``:
    ``.`` and empty parts vanish, ``..`` pops one part and stops at the root (it never
    climbs out)."""
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return parts
