"""Variable substitution in Dockerfile words, with Docker's shell-lexer semantics.

The builder never runs a shell to expand ``$VAR`` in ENV, COPY, WORKDIR and friends: it
applies a small lexer of its own (BuildKit's ``frontend/dockerfile/shell`` ``Lex``, which
dockerd's classic builder shares). We follow its observable behaviour, quirks included,
because Dockerfiles in the wild depend on them:

* ``$NAME``/``${NAME}``; a name starts with a letter or ``_``, or is a run of digits, or one
  special parameter (``@*#?-$!0``); a ``$`` not followed by a name stays a literal ``$``.
* ``${NAME-w}`` ``${NAME:-w}`` ``${NAME+w}`` ``${NAME:+w}`` ``${NAME?w}`` ``${NAME:?w}``
  (the colon makes an empty value count as unset), ``${NAME#p}`` ``${NAME##p}``
  ``${NAME%p}`` ``${NAME%%p}`` (shortest/longest prefix/suffix removal, ``*`` and ``?``
  wildcards), ``${NAME/p/r}`` ``${NAME//p/r}`` (first/all replacement).
* Unset variables expand to the empty string.
* Single quotes are literal; double quotes allow ``$`` expansion and escaping of
  ``"``, ``$`` and the escape character only; quotes are removed.
* The escape character (``\\`` or the ``# escape=`` directive's backtick) makes the next
  character literal; a trailing escape is dropped.

``expand_words`` also splits the result into fields on unquoted whitespace, where the
text produced by an expansion is split too (``$A`` with ``A="x y"`` gives two fields),
and a field of nothing but quotes (``""``) vanishes, as in BuildKit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from engine.errors import InvalidParameter

__all__ = ["ShellWordsError", "expand_word", "expand_words", "is_space"]

# Characters that name a special shell parameter after ``$`` (POSIX 2.5.2).
_SPECIAL_PARAMETERS = frozenset("@*#?-$!0")


class ShellWordsError(InvalidParameter):
    """A word could not be expanded (unbalanced quote, malformed ``${...}``, ``${X?}``)."""

    def __init__(self, word: str, reason: str) -> None:
        # Same shape as BuildKit's errors.Wrapf(err, "failed to process %q", word).
        super().__init__(f"failed to process {json.dumps(word, ensure_ascii=False)}: {reason}")
        self.word = word
        self.reason = reason


def is_space(ch: str) -> bool:
    """Whether ``ch`` is white space for Go's ``unicode.IsSpace``.

    Python's ``str.isspace`` also accepts the information separators U+001C..U+001F,
    which Go does not; Docker splits words with Go's rule.
    """
    return ch.isspace() and ch not in "\x1c\x1d\x1e\x1f"


def expand_word(word: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """Expand variables in ``word`` and remove quotes and escapes (ProcessWord)."""
    result, _ = _expand(word, env, escape)
    return result


def expand_words(word: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """Expand ``word`` and split it into fields on unquoted white space (ProcessWords)."""
    _, fields = _expand(word, env, escape)
    return fields


def _expand(word: str, env: Mapping[str, str], escape: str) -> tuple[str, list[str]]:
    lexer = _Lexer(word, env, escape)
    try:
        return lexer.process_until(None, raw_escapes=False)
    except _LexError as exc:
        raise ShellWordsError(word, str(exc)) from None


class _LexError(Exception):
    """Internal: the reason a word is malformed; wrapped into ShellWordsError once."""


class _Fields:
    """Collects the fields of a word as ProcessWords sees them.

    Literal unquoted text and the results of ``$`` expansions are split on white space;
    quoted text and escaped characters are kept whole.
    """

    def __init__(self) -> None:
        self._fields: list[str] = []
        self._current = ""

    def add_splittable(self, text: str) -> None:
        for ch in text:
            if not is_space(ch):
                self.add_literal(ch)
            elif self._current:
                self._fields.append(self._current)
                self._current = ""

    def add_literal(self, text: str) -> None:
        self._current += text

    def finish(self) -> list[str]:
        # A field made only of quotes ("") is empty here and is dropped, like BuildKit.
        if self._current:
            self._fields.append(self._current)
            self._current = ""
        return self._fields


class _Lexer:
    """A cursor over one word; each method consumes the construct it is named after."""

    def __init__(self, text: str, env: Mapping[str, str], escape: str) -> None:
        self._text = text
        self._pos = 0
        self._env = env
        self._escape = escape

    # -- cursor -------------------------------------------------------------------------

    def _peek(self) -> str:
        """The next character, or "" at the end of the word."""
        return self._text[self._pos] if self._pos < len(self._text) else ""

    def _next(self) -> str:
        ch = self._peek()
        if ch:
            self._pos += 1
        return ch

    # -- the grammar --------------------------------------------------------------------

    def process_until(self, stop: str | None, *, raw_escapes: bool) -> tuple[str, list[str]]:
        """Process text up to ``stop`` (consumed) or to the end when ``stop`` is None.

        ``raw_escapes`` keeps escape characters in the output: shell patterns
        (``${X#pat}``, ``${X/pat/rep}``) need them to tell ``\\*`` from ``*``.
        """
        out: list[str] = []
        fields = _Fields()
        while ch := self._peek():
            if stop is not None and ch == stop:
                self._next()
                return "".join(out), fields.finish()
            if ch == "$":
                value = self._dollar()
                out.append(value)
                fields.add_splittable(value)
            elif ch == "'":
                value = self._single_quoted()
                out.append(value)
                fields.add_literal(value)
            elif ch == '"':
                value = self._double_quoted(raw_escapes=raw_escapes)
                out.append(value)
                fields.add_literal(value)
            elif ch == self._escape:
                self._next()
                if raw_escapes:
                    out.append(ch)
                    fields.add_literal(ch)
                escaped = self._next()
                if not escaped:
                    break  # a trailing escape is dropped
                out.append(escaped)
                fields.add_literal(escaped)
            else:
                self._next()
                out.append(ch)
                fields.add_splittable(ch)
        if stop is not None:
            raise _LexError(f"unexpected end of statement while looking for matching {stop}")
        return "".join(out), fields.finish()

    def _single_quoted(self) -> str:
        # Everything up to the next ' is literal; a ' cannot be escaped inside.
        self._next()
        end = self._text.find("'", self._pos)
        if end < 0:
            self._pos = len(self._text)  # consumed to the end, as the caller checks
            raise _LexError("unexpected end of statement while looking for matching single-quote")
        value = self._text[self._pos : end]
        self._pos = end + 1
        return value

    def _double_quoted(self, *, raw_escapes: bool) -> str:
        # Like sh: only $, " and the escape character itself can be escaped here; an
        # escape before any other character stays in the text.
        self._next()
        out: list[str] = []
        while True:
            ch = self._peek()
            if not ch:
                raise _LexError(
                    "unexpected end of statement while looking for matching double-quote"
                )
            if ch == '"':
                self._next()
                return "".join(out)
            if ch == "$":
                out.append(self._dollar())
                continue
            self._next()
            if ch == self._escape:
                if raw_escapes:
                    out.append(ch)
                following = self._peek()
                if not following:
                    continue  # the missing closing quote is reported next turn
                if following in ('"', "$", self._escape):
                    ch = self._next()
            out.append(ch)

    def _name(self) -> str:
        """A parameter name: letters/digits/_, or a run of digits, or one special char."""
        start = self._pos
        first = self._peek()
        if first.isdecimal():
            while self._peek().isdecimal():
                self._pos += 1
            return self._text[start : self._pos]
        if first and first in _SPECIAL_PARAMETERS:
            self._pos += 1
            return first
        while (ch := self._peek()) and (ch.isalpha() or ch.isdecimal() or ch == "_"):
            self._pos += 1
        return self._text[start : self._pos]

    def _lookup(self, name: str) -> str | None:
        return self._env.get(name)

    def _dollar(self) -> str:
        self._next()  # the $
        if self._peek() != "{":
            name = self._name()
            if not name:
                return "$"
            return self._lookup(name) or ""
        self._next()  # the {
        first = self._peek()
        if not first:
            raise _LexError("syntax error: missing '}'")
        if first in "{}:":
            raise _LexError("syntax error: bad substitution")
        name = self._name()
        op = self._next()
        if not op:
            raise _LexError("syntax error: missing '}'")
        if op == "}":
            return self._lookup(name) or ""
        if op == "/":
            return self._replace(name)
        colon = op == ":"
        if colon:
            op = self._next()
            if not op:
                raise _LexError("syntax error: missing '}'")
        if op not in "-+?#%":
            shown = ":" + op if colon else op
            raise _LexError(f"unsupported modifier ({shown}) in substitution")
        return self._modified(name, op, null_is_unset=colon)

    def _operand(self, stop: str, *, raw_escapes: bool, missing: str) -> str:
        """The word after a ${} modifier, itself expanded, up to ``stop``."""
        try:
            word, _ = self.process_until(stop, raw_escapes=raw_escapes)
        except _LexError:
            if not self._peek():
                raise _LexError(missing) from None
            raise
        return word

    def _modified(self, name: str, op: str, *, null_is_unset: bool) -> str:
        word = self._operand("}", raw_escapes=op in "#%", missing="syntax error: missing '}'")
        value = self._lookup(name)
        absent = value is None or (null_is_unset and value == "")
        if op == "-":
            return word if absent else (value or "")
        if op == "+":
            return "" if absent else word
        if op == "?":
            if value is None:
                raise _LexError(f"{name}: {word or 'is not allowed to be unset'}")
            if absent:
                raise _LexError(f"{name}: {word or 'is not allowed to be empty'}")
            return value
        # '#' trims a prefix, '%' a suffix; doubled, the longest match.
        greedy = word.startswith(op)
        if greedy:
            word = word[1:]
        if op == "#":
            return _trim_prefix(word, value or "", greedy=greedy)
        return _trim_suffix(word, value or "", greedy=greedy)

    def _replace(self, name: str) -> str:
        replace_all = self._peek() == "/"
        if replace_all:
            self._next()
        pattern = self._operand("/", raw_escapes=True, missing="syntax error: missing '/' in ${}")
        replacement = self._operand("}", raw_escapes=True, missing="syntax error: missing '}'")
        value = self._lookup(name) or ""
        regex = _pattern_regex(pattern, greedy=True, anchored=False)
        # The replacement is literal text: a function keeps re.sub from reading \1 in it.
        return regex.sub(lambda _: replacement, value, count=0 if replace_all else 1)


def _pattern_regex(pattern: str, *, greedy: bool, anchored: bool) -> re.Pattern[str]:
    """Translate a shell wildcard pattern (``*``, ``?``, backslash escapes) to a regex.

    As in BuildKit, the escape here is always a backslash, and ``\\}``/``\\/`` mean a
    literal brace/slash (they had to be escaped to stay inside ``${...}``).
    """
    out = ["^"] if anchored else []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        i += 1
        if ch == "*":
            out.append(".*" if greedy else ".*?")
        elif ch == "?":
            out.append(".")
        elif ch == "\\":
            following = pattern[i] if i < len(pattern) else ""
            if following in ("}", "/"):
                continue  # the next character is emitted literally on the next turn
            if following not in ("*", "?", "\\"):
                raise _LexError(
                    f"invalid pattern ({pattern}) in substitution: invalid escape '\\{following}'"
                )
            out.append(re.escape(following))
            i += 1
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out))


def _trim_prefix(pattern: str, value: str, *, greedy: bool) -> str:
    match = _pattern_regex(pattern, greedy=greedy, anchored=True).match(value)
    return value[match.end() :] if match else value


def _trim_suffix(pattern: str, value: str, *, greedy: bool) -> str:
    # A regex finds the leftmost match, not the shortest rightmost one: reverse both the
    # pattern (keeping each escape before the character it escapes) and the value, and
    # trim a prefix instead.
    return _trim_prefix(_reverse_pattern(pattern), value[::-1], greedy=greedy)[::-1]


def _reverse_pattern(pattern: str) -> str:
    units: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\" and i + 1 < len(pattern):
            units.append(pattern[i : i + 2])
            i += 2
        else:
            units.append(pattern[i])
            i += 1
    return "".join(reversed(units))
