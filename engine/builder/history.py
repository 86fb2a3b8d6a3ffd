"""How the classic builder writes a step into an image's history.

``docker history`` shows ``created_by``, which is the step's run-config ``Cmd`` joined by
spaces, and that ``Cmd`` is also what the build cache compares. dockerd 20.10 formats the
arguments of metadata steps with Go's ``fmt`` verbs, so the texts below reproduce what
``%q`` and ``%v`` print (captured from dockerd 20.10, e.g. ``VOLUME [/v1 /v2]``,
``CMD ["/bin/sh" "-c" "echo hi"]``, ``HEALTHCHECK &{["CMD-SHELL" "true"] "5s" "0s"
"0s" '\\x00'}``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

NOP = "#(nop) "


def metadata_cmd(shell: Sequence[str], comment: str) -> list[str]:
    """A metadata step (ENV, LABEL, CMD, ...): ``/bin/sh -c #(nop)  <comment>`` once
    joined (moby appends ``"#(nop) "`` and the comment as two words)."""
    return [*shell, NOP, comment]


def file_step_cmd(shell: Sequence[str], comment: str) -> list[str]:
    """WORKDIR, COPY and ADD: ``/bin/sh -c #(nop) <comment>`` (one word, one space)."""
    return [*shell, NOP + comment]


def go_quote(text: str) -> str:
    """Go's ``%q`` of a string (close enough: JSON's escapes without ASCII-only)."""
    return json.dumps(text, ensure_ascii=False)


def go_quoted_list(items: Sequence[str]) -> str:
    """Go's ``%q`` of a ``[]string``: ``["a" "b"]``."""
    return "[" + " ".join(go_quote(i) for i in items) + "]"


def go_list(items: Sequence[str]) -> str:
    """Go's ``%v`` of a ``[]string``: ``[a b]``."""
    return "[" + " ".join(items) + "]"


def go_duration(ns: int) -> str:
    """Go's ``time.Duration.String()``: ``0s``, ``500ms``, ``1m30s``, ``1h0m0s``."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= size:
                return sign + _trim(ns / size) + unit
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    seconds = _trim(rest / 1_000_000_000) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{seconds}"
    if minutes:
        return f"{sign}{minutes}m{seconds}"
    return sign + seconds


def _trim(value: float) -> str:
    text = f"{value:.9f}".rstrip("0").rstrip(".")
    return text or "0"


def healthcheck_text(health: Mapping[str, Any]) -> str:
    """``%v`` of a ``*container.HealthConfig``: ``&{[test] interval timeout start
    retries}`` with durations quoted and the retry count printed as a Go rune."""
    test = [str(t) for t in health.get("Test") or []]
    durations = [
        go_quote(go_duration(int(health.get(k) or 0)))
        for k in ("Interval", "Timeout", "StartPeriod")
    ]
    retries = int(health.get("Retries") or 0)
    return "&{" + " ".join([go_quoted_list(test), *durations, _go_rune(retries)]) + "}"


def _go_rune(value: int) -> str:
    char = chr(value) if 0 <= value <= 0x10FFFF else "\ufffd"
    if char.isprintable() and char != "'":
        return f"'{char}'"
    if value < 0x100:
        return f"'\\x{value:02x}'"
    return f"'\\u{value:04x}'"


def build_args_prefix(args: Mapping[str, str]) -> list[str]:
    """RUN's history/cache prefix when build args are in effect: ``|N K=V ...``
    (sorted by name, as moby's classic builder records them)."""
    if not args:
        return []
    return [f"|{len(args)}", *(f"{k}={v}" for k, v in sorted(args.items()))]
