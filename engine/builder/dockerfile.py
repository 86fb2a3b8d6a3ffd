"""Dockerfile parser: text → stages of typed, still unexpanded, instructions.

Behaviour follows dockerd's classic builder and BuildKit's Dockerfile frontend (parser,
line parsers, instructions), and their error texts where clients show them to people:

* Parser directives (``# escape=``; ``# syntax=`` and ``# check=`` are accepted and
  ignored) count only in the comment lines at the very top; the first line that is not
  a known directive ends them, so a directive after a comment, a blank line or an
  instruction is a plain comment.
* A line whose first non-blank character is ``#`` is a comment, also in the middle of a
  continued instruction; blank lines inside a continuation are skipped too.
* The escape character at the end of a line (trailing blanks allowed, but not a doubled,
  escaped, escape character) continues the instruction on the next line; the pieces are
  joined without a separator.
* ``--name=value`` flags directly after the keyword are split off and checked against
  the instruction's known flags.
* Values stay as written (quotes, escapes, ``$VAR``): the executor expands them with
  :mod:`engine.builder.shellwords`, at the moment the build reaches the instruction.

* Heredocs (BuildKit, Dockerfile syntax 1.4) in RUN, COPY and ADD: ``<<EOF`` (``<<-EOF``
  strips leading tabs; ``<<"EOF"``/``<<'EOF'`` is not expanded) takes the following
  lines up to the terminator line as its content.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from engine.builder.history import go_quote
from engine.builder.shellwords import is_space
from engine.errors import InvalidParameter

__all__ = [
    "AddCommand",
    "ArgCommand",
    "CmdCommand",
    "Command",
    "CopyCommand",
    "Dockerfile",
    "DockerfileParseError",
    "EntrypointCommand",
    "EnvCommand",
    "ExposeCommand",
    "HealthcheckCommand",
    "LabelCommand",
    "MaintainerCommand",
    "OnbuildCommand",
    "RunCommand",
    "ShellCommand",
    "Stage",
    "StopSignalCommand",
    "UserCommand",
    "VolumeCommand",
    "WorkdirCommand",
    "parse",
    "parse_go_duration",
    "parse_instruction",
]


class DockerfileParseError(InvalidParameter):
    """The Dockerfile is malformed; ``line`` is the 1-based first line of the instruction."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"dockerfile parse error line {line}: {reason}")
        self.line = line
        self.reason = reason


# ---------------------------------------------------------------------------------------
# The parsed form
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """One instruction inside a stage.

    ``original`` is the instruction as written, continuation lines joined and comments
    dropped (dockerd prints it as ``Step N/M : <original>``).
    """

    keyword: str
    original: str
    line: int
    flags: Mapping[str, str]


@dataclass(frozen=True)
class RunCommand(Command):
    """``cmd`` is ``(text,)`` with ``prepend_shell`` for the shell form, else the JSON list.
    ``mounts`` are the ``--mount`` specs as written (BuildKit's, repeatable); ``flags``
    may hold ``network`` and ``security``."""

    cmd: tuple[str, ...]
    prepend_shell: bool
    mounts: tuple[str, ...] = ()
    heredocs: tuple[Heredoc, ...] = ()


@dataclass(frozen=True)
class CmdCommand(Command):
    cmd: tuple[str, ...]
    prepend_shell: bool


@dataclass(frozen=True)
class EntrypointCommand(Command):
    cmd: tuple[str, ...]
    prepend_shell: bool


@dataclass(frozen=True)
class EnvCommand(Command):
    pairs: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class LabelCommand(Command):
    pairs: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ArgCommand(Command):
    """``args`` pairs a name with its default, None when the ARG has no ``=``."""

    args: tuple[tuple[str, str | None], ...]


@dataclass(frozen=True)
class ExposeCommand(Command):
    ports: tuple[str, ...]


@dataclass(frozen=True)
class VolumeCommand(Command):
    paths: tuple[str, ...]


@dataclass(frozen=True)
class UserCommand(Command):
    user: str


@dataclass(frozen=True)
class WorkdirCommand(Command):
    path: str


@dataclass(frozen=True)
class StopSignalCommand(Command):
    signal: str


@dataclass(frozen=True)
class MaintainerCommand(Command):
    maintainer: str


@dataclass(frozen=True)
class ShellCommand(Command):
    shell: tuple[str, ...]


@dataclass(frozen=True)
class OnbuildCommand(Command):
    """``expression`` is the trigger instruction, e.g. ``RUN echo hi``."""

    expression: str


@dataclass(frozen=True)
class HealthcheckCommand(Command):
    """``test`` is ``("NONE",)``, ``("CMD-SHELL", text)`` or ``("CMD", *argv)``.

    Durations are in seconds and None when the flag is absent or empty (the image then
    inherits the default, as with Docker's zero); ``retries`` likewise.
    """

    test: tuple[str, ...] | None
    interval: float | None
    timeout: float | None
    start_period: float | None
    start_interval: float | None
    retries: int | None


@dataclass(frozen=True)
class CopyCommand(Command):
    """COPY, or ADD when ``is_add`` (``keyword`` says which, too)."""

    sources: tuple[str, ...]
    dest: str
    is_add: bool
    heredocs: tuple[Heredoc, ...] = ()  # sources named ``<<NAME`` are these files


# ADD is a CopyCommand with is_add=True; the alias keeps `isinstance` checks readable.
AddCommand = CopyCommand


@dataclass(frozen=True)
class Stage:
    """A ``FROM`` and the instructions up to the next one.

    ``name`` is the lower-cased ``AS`` name; ``base`` and ``platform`` are unexpanded.
    """

    name: str | None
    base: str
    platform: str | None
    original: str
    line: int
    commands: tuple[Command, ...]


@dataclass(frozen=True)
class Dockerfile:
    escape: str
    meta_args: tuple[ArgCommand, ...]
    stages: tuple[Stage, ...]


# ---------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------


def parse(text: str | bytes) -> Dockerfile:
    """Parse a whole Dockerfile; raise DockerfileParseError at the first problem."""
    lines = _split_lines(text)
    escape = _read_directives(lines)
    logical = list(_logical_lines(lines, escape))
    if not logical:
        raise DockerfileParseError(max(len(lines), 1), "file with no instructions")

    meta_args: list[ArgCommand] = []
    stages: list[_StageDraft] = []
    for item in logical:
        parsed = _parse_logical_line(item, escape)
        if isinstance(parsed, _From):
            _check_unique_name(parsed, stages)
            stages.append(_StageDraft(parsed))
        elif stages:
            stages[-1].commands.append(parsed)
        elif isinstance(parsed, ArgCommand):
            meta_args.append(parsed)  # ARGs before the first FROM parameterise the FROMs
        else:
            raise DockerfileParseError(item.number, "no build stage in current context")
    if not stages:
        raise DockerfileParseError(logical[-1].number, "dockerfile contains no stages to build")
    return Dockerfile(
        escape=escape,
        meta_args=tuple(meta_args),
        stages=tuple(draft.freeze() for draft in stages),
    )


def parse_instruction(text: str, line: int = 1, escape: str = "\\") -> Command:
    """Parse one instruction, as stored in an image's ONBUILD triggers.

    ``line`` is the line number errors report; ``escape`` the escape character in force.
    """
    logical = list(_logical_lines(_split_lines(text), escape))
    if len(logical) != 1:
        raise DockerfileParseError(line, f"expected exactly one instruction, found {len(logical)}")
    item = _LogicalLine(logical[0].text, line)
    parsed = _parse_logical_line(item, escape)
    if isinstance(parsed, _From):
        raise DockerfileParseError(line, "FROM isn't allowed as an ONBUILD trigger")
    return parsed


# ---------------------------------------------------------------------------------------
# Physical lines → logical lines
# ---------------------------------------------------------------------------------------

_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
# ``syntax`` and ``check`` are BuildKit's; accepted so that they do not end the directives.
_KNOWN_DIRECTIVES = frozenset({"escape", "syntax", "check"})
# The separator dockerd uses between the keyword and its arguments and between the
# plain words of FROM, EXPOSE, COPY, ...: ASCII blanks only (no newline can occur here).
_BLANKS = re.compile(r"[\t\v\f\r ]+")


@dataclass(frozen=True)
class Heredoc:
    """One ``<<NAME`` of a RUN, COPY or ADD: ``content`` ends with a newline (unless
    empty); ``raw`` is the lines as written, terminator included (a shell reads them)."""

    name: str
    content: str
    expand: bool  # unquoted: variables in the content are expanded (COPY/ADD)
    raw: str


@dataclass(frozen=True)
class _LogicalLine:
    text: str  # continuation lines joined, comments dropped, not yet stripped
    number: int  # 1-based line where the instruction starts
    heredocs: tuple[Heredoc, ...] = ()


_HEREDOC = re.compile(r"<<(-?)(['\"]?)([A-Za-z_][A-Za-z0-9_.-]*)\2")
_HEREDOC_KEYWORDS = frozenset({"RUN", "COPY", "ADD"})


def _read_heredocs(text: str, lines: Sequence[str], index: int
                   ) -> tuple[tuple[Heredoc, ...], int]:
    """The heredocs an instruction opens, read from ``lines[index:]``; the index after."""
    keyword = _BLANKS.split(text.strip(), maxsplit=1)[0].upper()
    rest = text.strip()[len(keyword):].lstrip()
    if keyword not in _HEREDOC_KEYWORDS or rest.startswith("["):
        return (), index
    found = []
    for match in _HEREDOC.finditer(rest):
        strip_tabs, quote, name = match.group(1) == "-", match.group(2), match.group(3)
        body: list[str] = []
        raw: list[str] = []
        while True:
            if index >= len(lines):
                raise DockerfileParseError(index, f"unterminated heredoc {name}")
            line = lines[index]
            index += 1
            raw.append(line)
            candidate = line.lstrip("\t") if strip_tabs else line
            if candidate == name:
                break
            body.append(candidate)
        content = "".join(f"{b}\n" for b in body)
        found.append(Heredoc(name, content, expand=not quote, raw="\n".join(raw) + "\n"))
    return tuple(found), index


def _split_lines(text: str | bytes) -> list[str]:
    if isinstance(text, bytes):
        # Go keeps invalid UTF-8 bytes as they are and its JSON encoder turns them into
        # U+FFFD when the image config is written; replacing them here ends the same.
        text = text.decode("utf-8", errors="replace")
    text = text.removeprefix("\ufeff")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line does not start another
    return [line.removesuffix("\r") for line in lines]


def syntax_directive(text: str | bytes) -> str | None:
    """The ``# syntax=`` parser directive's value, if the Dockerfile has one."""
    for line in _split_lines(text):
        match = _DIRECTIVE.match(_lstrip(line))
        if match is None or match.group(1).lower() not in _KNOWN_DIRECTIVES:
            return None
        if match.group(1).lower() == "syntax":
            return match.group(2)
    return None


def _read_directives(lines: Sequence[str]) -> str:
    """The escape character set by the directives at the top (a backslash by default)."""
    escape = "\\"
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        match = _DIRECTIVE.match(_lstrip(line))
        if match is None or match.group(1).lower() not in _KNOWN_DIRECTIVES:
            break
        name, value = match.group(1).lower(), match.group(2)
        if name in seen:
            raise DockerfileParseError(number, f"only one {name} parser directive can be used")
        seen.add(name)
        if name == "escape":
            if value not in ("\\", "`"):
                raise DockerfileParseError(
                    number, f"invalid escape token '{value}' does not match ` or \\"
                )
            escape = value
    return escape


def _logical_lines(lines: Sequence[str], escape: str) -> Iterator[_LogicalLine]:
    # The escape character ending a line continues it, unless it is itself escaped
    # (``C:\\`` ends a line; BuildKit and dockerd since 20.10 do the same).
    esc = re.escape(escape)
    continuation = re.compile(rf"(?<!{esc}){esc}[ \t]*$")
    index = 0
    while index < len(lines):
        number = index + 1
        first = _lstrip(lines[index])
        index += 1
        if first.startswith("#"):
            continue
        text, continued = _trim_continuation(first, continuation)
        parts = [text]
        while continued and index < len(lines):
            raw = lines[index]
            index += 1
            # Comments and blank lines do not end a continued instruction: they vanish.
            if _lstrip(raw).startswith("#") or not _lstrip(raw):
                continue
            text, continued = _trim_continuation(raw, continuation)
            parts.append(text)
        joined = "".join(parts)
        if joined.strip():
            heredocs, index = _read_heredocs(joined, lines, index)
            yield _LogicalLine(joined, number, heredocs)


def _trim_continuation(line: str, continuation: re.Pattern[str]) -> tuple[str, bool]:
    match = continuation.search(line)
    if match is None:
        return line, False
    return line[: match.start()], True


def _lstrip(text: str) -> str:
    index = 0
    while index < len(text) and is_space(text[index]):
        index += 1
    return text[index:]


# ---------------------------------------------------------------------------------------
# Logical line → keyword, flags, arguments
# ---------------------------------------------------------------------------------------

_FlagKind = Literal["string", "bool"]
_NO_FLAGS: Mapping[str, _FlagKind] = MappingProxyType({})


@dataclass(frozen=True)
class _Instruction:
    """A logical line split into its parts, with the helpers every builder needs."""

    keyword: str  # upper case
    original: str
    line: int
    flag_words: tuple[str, ...]
    rest: str  # the arguments, stripped
    escape: str
    heredocs: tuple[Heredoc, ...] = ()

    def error(self, reason: str) -> DockerfileParseError:
        return DockerfileParseError(self.line, reason)

    def flags(self, allowed: Mapping[str, _FlagKind]) -> Mapping[str, str]:
        return MappingProxyType(_parse_flags(self, allowed))

    def common(
        self, allowed: Mapping[str, _FlagKind] = _NO_FLAGS
    ) -> tuple[str, str, int, Mapping[str, str]]:
        """The positional fields of Command (keyword, original, line, flags)."""
        return self.keyword, self.original, self.line, self.flags(allowed)


def _split_instruction(item: _LogicalLine, escape: str) -> _Instruction:
    original = item.text.strip()
    head = _BLANKS.split(original, maxsplit=1)
    flag_words: list[str] = []
    rest = ""
    if len(head) == 2:
        rest, flag_words = _extract_flags(head[1])
    return _Instruction(
        keyword=head[0].upper(),
        original=original,
        line=item.number,
        flag_words=tuple(flag_words),
        rest=rest.strip(),
        escape=escape,
        heredocs=item.heredocs,
    )


def _extract_flags(text: str) -> tuple[str, list[str]]:
    """Split the leading ``--flag`` words off; return the rest and the flag words.

    A bare ``--`` ends the flags. Quotes in flag words are removed and a backslash
    escapes the next character (always a backslash here, whatever the escape directive).
    """
    words: list[str] = []
    pos = 0
    while True:
        while pos < len(text) and is_space(text[pos]):
            pos += 1
        if not text.startswith("--", pos):
            return text[pos:], words
        word, pos = _read_flag_word(text, pos)
        if word == "--":
            return text[pos:], words
        words.append(word)


def _read_flag_word(text: str, pos: int) -> tuple[str, int]:
    out: list[str] = []
    quote = ""
    while pos < len(text):
        ch = text[pos]
        pos += 1
        if not quote and is_space(ch):
            return "".join(out), pos
        if not quote and ch in "'\"":
            quote = ch
        elif quote and ch == quote:
            quote = ""
        elif ch == "\\":
            if pos < len(text):
                out.append(text[pos])
                pos += 1
        else:
            out.append(ch)
    return "".join(out), pos


def _parse_flags(instr: _Instruction, allowed: Mapping[str, _FlagKind]) -> dict[str, str]:
    flags: dict[str, str] = {}
    for word in instr.flag_words:
        name, equals, value = word[2:].partition("=")
        kind = allowed.get(name)
        if kind is None:
            raise instr.error(f"Unknown flag: {name}")
        if name in flags:
            raise instr.error(f"Duplicate flag specified: {name}")
        if kind == "string":
            if not equals:
                raise instr.error(f"Missing a value on flag: {name}")
            flags[name] = value
            continue
        # A boolean flag: bare means true; with "=" it needs true or false.
        if equals and not value:
            raise instr.error(f"Missing a value on flag: {name}")
        if not equals:
            flags[name] = "true"
        elif value.lower() in ("true", "false"):
            flags[name] = value.lower()
        else:
            raise instr.error(f"Expecting boolean value for flag {name}, not: {value}")
    return flags


# ---------------------------------------------------------------------------------------
# Argument shapes shared by several instructions
# ---------------------------------------------------------------------------------------

_NOT_STRING_ARRAY = "when using JSON array syntax, arrays must be comprised of strings only"


def _json_array(instr: _Instruction) -> list[str] | None:
    """The arguments as a JSON array of strings, or None when they are not JSON.

    Text that is not a valid JSON array is the shell form; a valid array holding
    anything but strings is an error (as in dockerd, not a silent shell form).
    """
    if not instr.rest.startswith("["):
        return None
    try:
        value = json.loads(instr.rest, parse_constant=_reject_json_constant)
    except ValueError:
        return None
    if not isinstance(value, list):
        return None
    if not all(isinstance(element, str) for element in value):
        raise instr.error(_NOT_STRING_ARRAY)
    return value


def _reject_json_constant(name: str) -> object:
    # Python's json accepts NaN/Infinity; Go's does not, so such text is the shell form.
    raise ValueError(name)


def _blank_separated(text: str) -> list[str]:
    return _BLANKS.split(text) if text else []


def _json_or_words(instr: _Instruction) -> list[str]:
    """COPY/ADD/VOLUME arguments: a JSON array or blank-separated words (quotes kept)."""
    array = _json_array(instr)
    return array if array is not None else _blank_separated(instr.rest)


def _command_line(instr: _Instruction) -> tuple[tuple[str, ...], bool]:
    """RUN/CMD/ENTRYPOINT: ``(argv, prepend_shell)``; the shell form is one string."""
    if not instr.rest:
        return (), True
    array = _json_array(instr)
    if array is not None:
        return tuple(array), False
    return (instr.rest,), True


def _words_keeping_quotes(text: str, escape: str) -> list[str]:
    """Split on blanks outside quotes, keeping quotes and escapes in the words.

    Used for ENV/LABEL/ARG, whose quotes are removed later, by the expansion.
    """
    words: list[str] = []
    current: list[str] = []
    in_word = False
    quote = ""
    # A word made of quotes only ('' or "") is kept even though it is empty of text.
    keep_empty = False
    pos = 0
    while pos < len(text):
        ch = text[pos]
        pos += 1
        if not quote and is_space(ch):
            if in_word and (current or keep_empty):
                words.append("".join(current))
            current, in_word, keep_empty = [], False, False
            continue
        in_word = True
        if quote and ch == quote:
            quote = ""
        elif not quote and ch in "'\"":
            quote, keep_empty = ch, True
        elif ch == escape and quote != "'":
            if pos == len(text):
                break  # an escape at the very end is dropped
            current.append(ch)
            ch = text[pos]
            pos += 1
        current.append(ch)
    if in_word and (current or keep_empty):
        words.append("".join(current))
    return words


def _key_value_pairs(instr: _Instruction) -> tuple[tuple[str, str], ...]:
    """ENV/LABEL: ``KEY value with blanks`` (legacy) or ``K1=v1 K2="v 2"``.

    Whether the first word has an ``=`` decides the form, as in dockerd.
    """
    words = _words_keeping_quotes(instr.rest, instr.escape)
    if not words:
        raise instr.error(f"{instr.keyword} requires at least one argument")
    if "=" not in words[0]:
        parts = _BLANKS.split(instr.rest, maxsplit=1)
        if len(parts) < 2:
            raise instr.error(f"{instr.keyword} must have two arguments")
        return ((parts[0], parts[1]),)
    pairs: list[tuple[str, str]] = []
    for word in words:
        key, equals, value = word.partition("=")
        if not equals:
            raise instr.error(
                f"Syntax error - can't find = in {go_quote(word)}. Must be of the form: name=value"
            )
        if not key:
            raise instr.error(f"{instr.keyword} names can not be blank")
        pairs.append((key, value))
    return tuple(pairs)


def _single_argument(instr: _Instruction) -> str:
    # USER/WORKDIR/... take the whole rest of the line as their one argument.
    if not instr.rest:
        raise instr.error(f"{instr.keyword} requires exactly one argument")
    return instr.rest


# ---------------------------------------------------------------------------------------
# One function per instruction
# ---------------------------------------------------------------------------------------

_STAGE_NAME = re.compile(r"^[a-z][a-z0-9-_.]*$")


@dataclass(frozen=True)
class _From:
    """A parsed FROM line: the header of a Stage."""

    name: str | None
    base: str
    platform: str | None
    original: str
    line: int


@dataclass
class _StageDraft:
    header: _From
    commands: list[Command] = field(default_factory=list)

    def freeze(self) -> Stage:
        return Stage(
            name=self.header.name,
            base=self.header.base,
            platform=self.header.platform,
            original=self.header.original,
            line=self.header.line,
            commands=tuple(self.commands),
        )


def _check_unique_name(header: _From, stages: Sequence[_StageDraft]) -> None:
    if header.name is not None and any(s.header.name == header.name for s in stages):
        raise DockerfileParseError(header.line, f"duplicate stage name {go_quote(header.name)}")


def _from(instr: _Instruction) -> _From:
    args = _blank_separated(instr.rest)
    name: str | None = None
    if len(args) == 3 and args[1].lower() == "as":
        name = args[2].lower()
        if not _STAGE_NAME.match(name):
            raise instr.error(
                f"invalid name for build stage: {go_quote(args[2])}, "
                "name can't start with a number or contain symbols"
            )
    elif len(args) != 1:
        raise instr.error("FROM requires either one or three arguments")
    flags = instr.flags({"platform": "string"})
    return _From(
        name=name,
        base=args[0],
        platform=flags.get("platform") or None,  # an empty value means no platform
        original=instr.original,
        line=instr.line,
    )


# BuildKit's RUN flags (Dockerfile syntax 1.2+); dockerd's classic builder refuses them,
# wharfd runs them on both paths.
_RUN_FLAGS: Mapping[str, _FlagKind] = MappingProxyType({"network": "string",
                                                        "security": "string"})


def _run(instr: _Instruction) -> Command:
    mounts = tuple(w.partition("=")[2] for w in instr.flag_words if w.startswith("--mount="))
    for word in instr.flag_words:
        if word == "--mount":
            raise instr.error("Missing a value on flag: mount")
    others = dataclasses.replace(
        instr, flag_words=tuple(w for w in instr.flag_words if not w.startswith("--mount=")))
    cmd, prepend_shell = _command_line(instr)
    if instr.heredocs and prepend_shell:
        cmd = (_heredoc_script(instr),)
    return RunCommand(*others.common(_RUN_FLAGS), cmd=cmd, prepend_shell=prepend_shell,
                      mounts=mounts, heredocs=instr.heredocs)


def _heredoc_script(instr: _Instruction) -> str:
    """The shell text of a RUN with heredocs: ``RUN <<EOF`` alone runs the content as
    the script; otherwise the shell gets the line and the heredocs as written, and reads
    them itself (BuildKit does the same)."""
    first = instr.heredocs[0]
    match = _HEREDOC.fullmatch(instr.rest)
    if match is not None and len(instr.heredocs) == 1:
        return first.content
    return instr.rest + "\n" + "".join(h.raw for h in instr.heredocs)


def _cmd(instr: _Instruction) -> Command:
    cmd, prepend_shell = _command_line(instr)
    return CmdCommand(*instr.common(), cmd=cmd, prepend_shell=prepend_shell)


def _entrypoint(instr: _Instruction) -> Command:
    cmd, prepend_shell = _command_line(instr)
    return EntrypointCommand(*instr.common(), cmd=cmd, prepend_shell=prepend_shell)


def _env(instr: _Instruction) -> Command:
    common = instr.common()
    return EnvCommand(*common, pairs=_key_value_pairs(instr))


def _label(instr: _Instruction) -> Command:
    common = instr.common()
    return LabelCommand(*common, pairs=_key_value_pairs(instr))


def _arg(instr: _Instruction) -> Command:
    common = instr.common()
    words = _words_keeping_quotes(instr.rest, instr.escape)
    if not words:
        raise instr.error("ARG requires at least one argument")
    args: list[tuple[str, str | None]] = []
    for word in words:
        key, equals, value = word.partition("=")
        if equals and not key:
            raise instr.error("ARG names can not be blank")
        args.append((key, value if equals else None))
    return ArgCommand(*common, args=tuple(args))


def _expose(instr: _Instruction) -> Command:
    common = instr.common()
    ports = _blank_separated(instr.rest)
    if not ports:
        raise instr.error("EXPOSE requires at least one argument")
    # dockerd sorts the (unexpanded) words; history and cache keys see that order.
    return ExposeCommand(*common, ports=tuple(sorted(ports)))


def _volume(instr: _Instruction) -> Command:
    common = instr.common()
    paths = [path.strip() for path in _json_or_words(instr)]
    if not paths:
        raise instr.error("VOLUME requires at least one argument")
    if "" in paths:
        raise instr.error("VOLUME specified can not be an empty string")
    return VolumeCommand(*common, paths=tuple(paths))


def _user(instr: _Instruction) -> Command:
    common = instr.common()
    return UserCommand(*common, user=_single_argument(instr))


def _workdir(instr: _Instruction) -> Command:
    common = instr.common()
    return WorkdirCommand(*common, path=_single_argument(instr))


def _stopsignal(instr: _Instruction) -> Command:
    common = instr.common()
    return StopSignalCommand(*common, signal=_single_argument(instr))


def _maintainer(instr: _Instruction) -> Command:
    common = instr.common()
    return MaintainerCommand(*common, maintainer=_single_argument(instr))


def _shell(instr: _Instruction) -> Command:
    common = instr.common()
    array = _json_array(instr)
    if array is None and instr.rest:
        raise instr.error("SHELL requires the arguments to be in JSON form")
    if not array:
        raise instr.error("SHELL requires at least one argument")
    return ShellCommand(*common, shell=tuple(array))


_ONBUILD_PREFIX = re.compile(r"^\s*ONBUILD\s*", re.IGNORECASE)


def _onbuild(instr: _Instruction) -> Command:
    common = instr.common()
    if not instr.rest:
        raise instr.error("ONBUILD requires at least one argument")
    trigger = _BLANKS.split(instr.rest, maxsplit=1)[0].upper()
    if trigger == "ONBUILD":
        raise instr.error("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
    if trigger in ("MAINTAINER", "FROM"):
        raise instr.error(f"{trigger} isn't allowed as an ONBUILD trigger")
    # Like dockerd, the rest of the trigger is checked when a child image runs it.
    expression = _ONBUILD_PREFIX.sub("", instr.original, count=1)
    return OnbuildCommand(*common, expression=expression)


_COPY_FLAGS: Mapping[str, _FlagKind] = MappingProxyType(
    {"from": "string", "chown": "string", "chmod": "string", "link": "bool"}
)
_ADD_FLAGS: Mapping[str, _FlagKind] = MappingProxyType(
    {
        "chown": "string",
        "chmod": "string",
        "link": "bool",
        "checksum": "string",
        "keep-git-dir": "bool",
    }
)


def _copy(instr: _Instruction) -> Command:
    return _copy_or_add(instr, _COPY_FLAGS)


def _add(instr: _Instruction) -> Command:
    return _copy_or_add(instr, _ADD_FLAGS)


def _copy_or_add(instr: _Instruction, allowed: Mapping[str, _FlagKind]) -> Command:
    args = _json_or_words(instr)
    if len(args) < 2:
        raise instr.error(
            f"{instr.keyword} requires at least two arguments, but only one was provided. "
            "Destination could not be determined"
        )
    return CopyCommand(
        *instr.common(allowed),
        sources=tuple(args[:-1]),
        dest=args[-1],
        is_add=instr.keyword == "ADD",
        heredocs=instr.heredocs,
    )


_HEALTHCHECK_FLAGS: Mapping[str, _FlagKind] = MappingProxyType(
    {
        "interval": "string",
        "timeout": "string",
        "start-period": "string",
        "start-interval": "string",
        "retries": "string",
    }
)
# Docker's container.MinimumDuration: shorter non-zero health intervals are refused.
_MINIMUM_DURATION_NS = 1_000_000


def _healthcheck(instr: _Instruction) -> Command:
    common = instr.common(_HEALTHCHECK_FLAGS)
    flags = common[3]
    if not instr.rest:
        raise instr.error("HEALTHCHECK requires at least one argument")
    end = 0
    while end < len(instr.rest) and not is_space(instr.rest[end]):
        end += 1
    kind = instr.rest[:end].upper()
    command = dataclasses.replace(instr, rest=_lstrip(instr.rest[end:]))
    test: tuple[str, ...]
    if kind == "NONE":
        if command.rest:
            raise instr.error("HEALTHCHECK NONE takes no arguments")
        test = ("NONE",)
    elif kind == "CMD":
        argv, shell_form = _command_line(command)
        if not argv:
            raise instr.error("Missing command after HEALTHCHECK CMD")
        test = ("CMD-SHELL", *argv) if shell_form else ("CMD", *argv)
    else:
        raise instr.error(f"Unknown type {go_quote(kind)} in HEALTHCHECK (try CMD)")
    return HealthcheckCommand(
        *common,
        test=test,
        interval=_health_interval(instr, flags, "interval"),
        timeout=_health_interval(instr, flags, "timeout"),
        start_period=_health_interval(instr, flags, "start-period"),
        start_interval=_health_interval(instr, flags, "start-interval"),
        retries=_health_retries(instr, flags),
    )


def _health_interval(instr: _Instruction, flags: Mapping[str, str], name: str) -> float | None:
    text = flags.get(name, "")
    if not text:
        return None
    try:
        nanoseconds = parse_go_duration(text)
    except ValueError as exc:
        raise instr.error(str(exc)) from None
    if nanoseconds != 0 and nanoseconds < _MINIMUM_DURATION_NS:
        raise instr.error(f"Interval {go_quote(name)} cannot be less than 1ms")
    return nanoseconds / 1e9


def _health_retries(instr: _Instruction, flags: Mapping[str, str]) -> int | None:
    text = flags.get("retries", "")
    if not text:
        return None
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise instr.error(f"strconv.ParseInt: parsing {go_quote(text)}: invalid syntax")
    retries = int(text)
    if not -(2**31) <= retries < 2**31:
        raise instr.error(f"strconv.ParseInt: parsing {go_quote(text)}: value out of range")
    if retries < 0:
        raise instr.error(f"--retries cannot be negative ({retries})")
    return retries


_BUILDERS: Mapping[str, Callable[[_Instruction], Command]] = MappingProxyType(
    {
        "ADD": _add,
        "ARG": _arg,
        "CMD": _cmd,
        "COPY": _copy,
        "ENTRYPOINT": _entrypoint,
        "ENV": _env,
        "EXPOSE": _expose,
        "HEALTHCHECK": _healthcheck,
        "LABEL": _label,
        "MAINTAINER": _maintainer,
        "ONBUILD": _onbuild,
        "RUN": _run,
        "SHELL": _shell,
        "STOPSIGNAL": _stopsignal,
        "USER": _user,
        "VOLUME": _volume,
        "WORKDIR": _workdir,
    }
)


def _parse_logical_line(item: _LogicalLine, escape: str) -> Command | _From:
    instr = _split_instruction(item, escape)
    if instr.keyword == "FROM":
        return _from(instr)
    builder = _BUILDERS.get(instr.keyword)
    if builder is None:
        raise instr.error(f"unknown instruction: {instr.keyword}")
    return builder(instr)


# ---------------------------------------------------------------------------------------
# Go durations (HEALTHCHECK flags)
# ---------------------------------------------------------------------------------------

_DURATION_UNITS_NS: Mapping[str, int] = MappingProxyType(
    {
        "ns": 1,
        "us": 1_000,
        "\u00b5s": 1_000,  # micro sign
        "\u03bcs": 1_000,  # Greek mu
        "ms": 1_000_000,
        "s": 1_000_000_000,
        "m": 60_000_000_000,
        "h": 3_600_000_000_000,
    }
)
_DURATION_NUMBER = re.compile(r"([0-9]*)(?:\.([0-9]*))?")
_DURATION_UNIT = re.compile(r"[^0-9.]*")
_MAX_DURATION_NS = 2**63 - 1


def parse_go_duration(text: str) -> int:
    """Nanoseconds in a Go duration string (``"1m30s"``, ``"500ms"``, ``"-1.5h"``).

    Raises ValueError with Go's ``time.ParseDuration`` message.
    """
    rest = text
    negative = rest.startswith("-")
    if rest[:1] in ("-", "+"):
        rest = rest[1:]
    if rest == "0":
        return 0
    if not rest:
        raise ValueError(f"time: invalid duration {go_quote(text)}")
    total = 0
    while rest:
        number = _DURATION_NUMBER.match(rest)
        assert number is not None  # the pattern can match the empty string
        whole, fraction = number.group(1), number.group(2) or ""
        if not whole and not fraction:
            raise ValueError(f"time: invalid duration {go_quote(text)}")
        rest = rest[number.end() :]
        unit_match = _DURATION_UNIT.match(rest)
        unit = unit_match.group(0) if unit_match else ""
        rest = rest[len(unit) :]
        if not unit:
            raise ValueError(f"time: missing unit in duration {go_quote(text)}")
        scale = _DURATION_UNITS_NS.get(unit)
        if scale is None:
            raise ValueError(f"time: unknown unit {go_quote(unit)} in duration {go_quote(text)}")
        total += int(whole or "0") * scale
        if fraction:
            total += int(fraction) * scale // 10 ** len(fraction)
        if total > _MAX_DURATION_NS:
            raise ValueError(f"time: invalid duration {go_quote(text)}")
    return -total if negative else total
