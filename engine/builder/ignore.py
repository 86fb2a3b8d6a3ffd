""".dockerignore: parsing and matching with Docker's semantics.

Parsing follows moby ``builder/dockerignore`` / ``moby/patternmatcher/ignorefile``
``ReadAll``: a UTF-8 BOM is dropped from the first line; a line *starting* with ``#`` is
a comment (checked before trimming, so ``" #x"`` is a pattern); lines are trimmed and
empty ones skipped; a leading ``!`` marks an exception (the rest trimmed again); the
pattern is cleaned like Go's ``filepath.Clean`` and a leading ``/`` removed (the context
root is the only root there is).

Matching follows ``moby/patternmatcher``: each pattern becomes a regular expression
(``*`` and ``?`` never match ``/``, ``**`` matches any number of directories, ``[...]``
classes and ``\\`` escapes pass through); a path is matched when the pattern matches it
*or one of its parent directories* (``MatchesOrParentMatches``); patterns are tried in
order and the last one that matches decides (an exception re-includes).

``excludes`` adds what the client's context walker (``TarWithOptions``) does with
directories: an excluded directory is skipped whole — its children are excluded whatever
the later patterns say — unless some exception pattern *starts with* that directory's
path (``!dir/keep``), in which case the walk goes in and each child is matched itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from engine.errors import InvalidParameter

_BOM = "\ufeff"
_REGEX_SPECIALS = ".+()|{}$"  # escaped as patternmatcher's shouldEscape does


def clean_path(path: str) -> str:
    """Go's ``path.Clean``: the shortest equivalent of ``path``, lexically."""
    if path == "":
        return "."
    rooted = path.startswith("/")
    out: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out and out[-1] != "..":
                out.pop()
            elif not rooted:
                out.append("..")
            continue
        out.append(part)
    text = "/".join(out)
    if rooted:
        return "/" + text
    return text or "."


def read_patterns(text: str) -> list[str]:
    """The pattern lines of a .dockerignore, as ``ignorefile.ReadAll`` returns them."""
    patterns: list[str] = []
    for number, raw in enumerate(text.splitlines()):
        line = raw[1:] if number == 0 and raw.startswith(_BOM) else raw
        if line.startswith("#"):
            continue
        line = line.strip()
        if not line:
            continue
        invert = line.startswith("!")
        if invert:
            line = line[1:].strip()
        if line:
            line = clean_path(line)
            if len(line) > 1 and line.startswith("/"):
                line = line[1:]
        patterns.append("!" + line if invert else line)
    return patterns


@dataclass(frozen=True)
class Pattern:
    text: str  # cleaned, without the "!"
    exclusion: bool  # an exception ("!pattern"): a match re-includes
    regex: re.Pattern[str]

    def match(self, path: str) -> bool:
        return self.regex.match(path) is not None


def compile_pattern(line: str) -> Pattern:
    """One pattern line as ``NewPatternMatcher`` compiles it; a syntax error is a 400."""
    text = clean_path(line.strip())
    exclusion = text.startswith("!")
    if exclusion:
        if len(text) == 1:
            raise InvalidParameter('invalid .dockerignore: illegal exclusion pattern: "!"')
        text = text[1:]
    try:
        regex = re.compile(_to_regex(text), re.DOTALL)
    except re.error:
        raise InvalidParameter(f"invalid .dockerignore: syntax error in pattern {text!r}") from None
    return Pattern(text, exclusion, regex)


def _to_regex(pattern: str) -> str:
    """patternmatcher's translation of a filepath.Match-style pattern to a regexp."""
    out = ["^"]
    i = 0
    n = len(pattern)
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*":
            if i < n and pattern[i] == "*":
                i += 1
                if i < n and pattern[i] == "/":
                    i += 1  # "**/" is "**"
                # "**" at the end accepts everything; elsewhere any number of dirs (even 0)
                out.append(".*" if i >= n else "(.*/)?")
            else:
                out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch in _REGEX_SPECIALS:
            out.append("\\" + ch)
        elif ch == "\\":
            if i < n:
                out.append(re.escape(pattern[i]))
                i += 1
            else:
                out.append("\\\\")
        elif ch in "[]":
            # Character classes pass through to the regexp, as in patternmatcher (an
            # unterminated one is a syntax error when compiling).
            out.append(ch)
        else:
            out.append(ch)  # as moby: raw (a "-" or "^" may belong to a class)
    out.append("$")
    return "".join(out)


class IgnoreRules:
    """The compiled patterns of one .dockerignore."""

    def __init__(self, patterns: list[Pattern]) -> None:
        self.patterns = patterns
        self.has_exceptions = any(p.exclusion for p in patterns)

    @classmethod
    def parse(cls, text: str) -> IgnoreRules:
        return cls([compile_pattern(line) for line in read_patterns(text)])

    @classmethod
    def empty(cls) -> IgnoreRules:
        return cls([])

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def matches(self, rel_path: str) -> bool:
        """patternmatcher's ``MatchesOrParentMatches`` for one path."""
        path = clean_path(rel_path)
        parents = path.split("/")[:-1]
        matched = False
        for pattern in self.patterns:
            # An inclusion cannot change an already excluded path, nor an exception a
            # path not excluded yet: skip the work (patternmatcher does the same).
            if pattern.exclusion != matched:
                continue
            hit = pattern.match(path) or any(
                pattern.match("/".join(parents[: i + 1])) for i in range(len(parents))
            )
            if hit:
                matched = not pattern.exclusion
        return matched

    def excludes(self, rel_path: str) -> bool:
        """Whether the client would leave ``rel_path`` out of the context."""
        if not self.patterns:
            return False
        path = clean_path(rel_path)
        parts = path.split("/")
        for depth in range(1, len(parts)):
            if self.skips_dir("/".join(parts[:depth])):
                return True
        return self.matches(path)

    def skips_dir(self, dir_path: str) -> bool:
        """The walker skips a matched directory unless an exception starts inside it."""
        if not self.matches(dir_path):
            return False
        prefix = dir_path + "/"
        return not any((p.text + "/").startswith(prefix) for p in self.patterns if p.exclusion)
