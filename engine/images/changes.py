"""Dockerfile-like ``--change`` instructions for ``docker import`` and ``docker commit``
(moby builder/dockerfile: validCommitCommands, BuildFromConfig, dispatchers), and the
container.Config shape moby serialises."""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.errors import InvalidParameter
from engine.images.timefmt import parse_go_duration
from engine.pathnames import clean_components

# Dockerfile-like instructions that ``docker import --change`` / ``commit --change`` take
# (moby builder/dockerfile: validCommitCommands, BuildFromConfig, dispatchers).
_VALID_CHANGES = frozenset({
    "cmd", "entrypoint", "healthcheck", "env", "expose", "label", "onbuild", "stopsignal",
    "user", "volume", "workdir",
})
_CONFIG_FIELDS: list[tuple[str, Any, bool]] = [
    # (field, zero value, omitted when empty): moby's container.Config, in its JSON order
    ("Hostname", "", False), ("Domainname", "", False), ("User", "", False),
    ("AttachStdin", False, False), ("AttachStdout", False, False),
    ("AttachStderr", False, False), ("ExposedPorts", None, True), ("Tty", False, False),
    ("OpenStdin", False, False), ("StdinOnce", False, False), ("Env", None, False),
    ("Cmd", None, False), ("Healthcheck", None, True), ("ArgsEscaped", False, True),
    ("Image", "", False), ("Volumes", None, False), ("WorkingDir", "", False),
    ("Entrypoint", None, False), ("NetworkDisabled", False, True),
    ("OnBuild", None, False), ("Labels", None, False), ("StopSignal", "", True),
    ("StopTimeout", None, True), ("Shell", None, True),
]
_DEFAULT_SHELL = ["/bin/sh", "-c"]


def container_config(values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A container.Config object serialised as moby does (zero fields kept, omitempty
    fields dropped), with ``values`` filled in."""
    values = values or {}
    out: dict[str, Any] = {}
    for name, zero, omit_empty in _CONFIG_FIELDS:
        value = values.get(name, zero)
        if omit_empty and not value:
            continue
        out[name] = value
    return out


@dataclass
class _ChangeState:
    config: dict[str, Any]
    cmd_set: bool = False

    def env_map(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for item in self.config.get("Env") or []:
            key, _, value = item.partition("=")
            env[key] = value
        return env


def build_config_from_changes(
    changes: Sequence[str], base: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Apply ``changes`` (each one or more instruction lines) to ``base`` → container
    config fields. Errors are InvalidParameter with BuildKit/dockerd wording."""
    state = _ChangeState(config=dict(base or {}))
    for line in _instruction_lines(changes):
        word, _, rest = line.strip().partition(" ")
        instruction = word.strip().lower()
        rest = rest.strip()
        if instruction not in _VALID_CHANGES:
            raise InvalidParameter(f"{instruction} is not a valid change command")
        _DISPATCH[instruction](state, rest, line.strip())
    return state.config


def _instruction_lines(changes: Sequence[str]) -> list[str]:
    """Join the changes as one Dockerfile (moby joins them with newlines), honour
    backslash continuations, drop blank lines and comments."""
    lines: list[str] = []
    pending = ""
    for raw in "\n".join(changes).split("\n"):
        text = raw.rstrip("\r")
        if not pending and (not text.strip() or text.lstrip().startswith("#")):
            continue
        if text.endswith("\\"):
            pending += text[:-1]
            continue
        lines.append(pending + text)
        pending = ""
    if pending.strip():
        lines.append(pending)
    return [line.replace("\t", " ") for line in lines]


def _split_words(text: str) -> list[str]:
    """Whitespace-separated words; quotes and backslashes group but are kept (BuildKit's
    parseWords), so ``_process_word`` can interpret them."""
    words: list[str] = []
    current = ""
    quote = ""
    escaped = False
    for ch in text:
        if escaped:
            current += ch
            escaped = False
            continue
        if ch == "\\":
            current += ch
            escaped = True
            continue
        if quote:
            current += ch
            if ch == quote:
                quote = ""
            continue
        if ch in "'\"":
            quote = ch
            current += ch
            continue
        if ch.isspace():
            if current:
                words.append(current)
                current = ""
            continue
        current += ch
    if current:
        words.append(current)
    return words


_VAR = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-+])?(?P<word>[^}]*)\}"
                  r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


def _process_word(word: str, env: Mapping[str, str]) -> str:
    """Remove quotes and escapes and expand ``$VAR``/``${VAR}``/``${VAR:-x}``/``${VAR:+x}``
    (not inside single quotes), as the Dockerfile shell lexer does."""
    out: list[str] = []
    i = 0
    quote = ""
    while i < len(word):
        ch = word[i]
        if quote == "'":
            if ch == "'":
                quote = ""
            else:
                out.append(ch)
            i += 1
            continue
        if ch == "\\" and i + 1 < len(word):
            nxt = word[i + 1]
            if quote == '"' and nxt not in '"\\$`':
                out.append(ch)
            out.append(nxt)
            i += 2
            continue
        if ch in "'\"" and (not quote or ch == quote):
            quote = "" if quote else ch
            i += 1
            continue
        if ch == "$":
            match = _VAR.match(word, i)
            if match is not None:
                out.append(_expand(match, env))
                i = match.end()
                continue
        out.append(ch)
        i += 1
    return "".join(out)


def _expand(match: re.Match[str], env: Mapping[str, str]) -> str:
    name = match.group("plain") or match.group("braced")
    value = env.get(name)
    op = match.group("op")
    if op is None:
        return value or ""
    alt = _process_word(match.group("word"), env)
    present = value is not None and (value != "" or not op.startswith(":"))
    if op.endswith("-"):
        return value if present and value is not None else alt
    return alt if present else ""


def _words(rest: str, state: _ChangeState) -> list[str]:
    env = state.env_map()
    return [_process_word(w, env) for w in _split_words(rest)]


def _maybe_json(rest: str) -> list[str] | None:
    """The JSON (exec) form when ``rest`` is a JSON array of strings, else None."""
    text = rest.strip()
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _name_values(instruction: str, rest: str, state: _ChangeState) -> list[tuple[str, str]]:
    """``ENV``/``LABEL`` pairs: ``k=v k2="v 2"`` or the legacy ``k value with spaces``."""
    upper = instruction.upper()
    words = _split_words(rest)
    if not words:
        raise InvalidParameter(f"{upper} requires at least one argument")
    env = state.env_map()
    if "=" not in words[0]:
        key, _, value = rest.strip().partition(" ")
        if not value.strip():
            raise InvalidParameter(f"{upper} must have two arguments")
        return [(_process_word(key, env), _process_word(value.strip(), env))]
    pairs = []
    for word in words:
        if "=" not in word:
            raise InvalidParameter(
                f'Syntax error - can\'t find = in "{word}". Must be of the form: name=value'
            )
        key, _, value = word.partition("=")
        pairs.append((_process_word(key, env), _process_word(value, env)))
    return pairs


def _change_env(state: _ChangeState, rest: str, _line: str) -> None:
    for key, value in _name_values("env", rest, state):
        if not key:
            raise InvalidParameter("ENV names can not be blank")
        env = list(state.config.get("Env") or [])
        entry = f"{key}={value}"
        for index, item in enumerate(env):
            if item.partition("=")[0] == key:
                env[index] = entry
                break
        else:
            env.append(entry)
        state.config["Env"] = env


def _change_label(state: _ChangeState, rest: str, _line: str) -> None:
    for key, value in _name_values("label", rest, state):
        if not key:
            raise InvalidParameter("LABEL names can not be blank")
        labels = dict(state.config.get("Labels") or {})
        labels[key] = value
        state.config["Labels"] = labels


def _command_form(rest: str, state: _ChangeState) -> list[str]:
    exec_form = _maybe_json(rest)
    if exec_form is not None:
        return exec_form
    shell = state.config.get("Shell") or _DEFAULT_SHELL
    return [*shell, rest]


def _change_cmd(state: _ChangeState, rest: str, _line: str) -> None:
    state.config["Cmd"] = _command_form(rest, state)
    state.cmd_set = True


def _change_entrypoint(state: _ChangeState, rest: str, _line: str) -> None:
    state.config["Entrypoint"] = _command_form(rest, state)
    if not state.cmd_set:
        state.config["Cmd"] = None  # dockerd: ENTRYPOINT resets a CMD it did not just set


_PORT = re.compile(r"^(\d+)(?:-(\d+))?(?:/([A-Za-z]+))?$")


def _change_expose(state: _ChangeState, rest: str, _line: str) -> None:
    words = _words(rest, state)
    if not words:
        raise InvalidParameter("EXPOSE requires at least one argument")
    ports = dict(state.config.get("ExposedPorts") or {})
    for word in words:
        match = _PORT.match(word)
        if match is None:
            raise InvalidParameter(f"invalid containerPort: {word.split('/')[0]}")
        proto = (match.group(3) or "tcp").lower()
        if proto not in ("tcp", "udp", "sctp"):
            raise InvalidParameter(f"invalid proto: {match.group(3)}")
        start = int(match.group(1))
        end = int(match.group(2)) if match.group(2) else start
        if start > 65535 or end > 65535 or end < start:
            raise InvalidParameter(f"invalid containerPort: {word.split('/')[0]}")
        for port in range(start, end + 1):
            ports[f"{port}/{proto}"] = {}
    state.config["ExposedPorts"] = ports


def _exactly_one(instruction: str, rest: str, state: _ChangeState) -> str:
    words = _words(rest, state)
    if len(words) != 1:
        raise InvalidParameter(f"{instruction} requires exactly one argument")
    return words[0]


def _change_user(state: _ChangeState, rest: str, _line: str) -> None:
    state.config["User"] = _exactly_one("USER", rest, state)


def _change_workdir(state: _ChangeState, rest: str, _line: str) -> None:
    requested = _exactly_one("WORKDIR", rest, state)
    if not requested.startswith("/"):
        requested = "/".join([state.config.get("WorkingDir") or "", requested])
    state.config["WorkingDir"] = "/" + "/".join(clean_components(requested))


def _change_volume(state: _ChangeState, rest: str, _line: str) -> None:
    listed = _maybe_json(rest)
    paths = listed if listed is not None else _words(rest, state)
    if not paths:
        raise InvalidParameter("VOLUME requires at least one argument")
    volumes = dict(state.config.get("Volumes") or {})
    for path in paths:
        if not path.strip():
            raise InvalidParameter("VOLUME specified can not be an empty string")
        volumes[path] = {}
    state.config["Volumes"] = volumes


def _change_stopsignal(state: _ChangeState, rest: str, _line: str) -> None:
    value = _exactly_one("STOPSIGNAL", rest, state)
    parse_signal(value)
    state.config["StopSignal"] = value


def _change_onbuild(state: _ChangeState, rest: str, line: str) -> None:
    if not rest:
        raise InvalidParameter("ONBUILD requires at least one argument")
    trigger = rest.split(None, 1)[0].upper()
    if trigger == "ONBUILD":
        raise InvalidParameter("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
    if trigger in ("MAINTAINER", "FROM"):
        raise InvalidParameter(f"{trigger} isn't allowed as an ONBUILD trigger")
    expression = re.sub(r"(?i)^\s*ONBUILD\s*", "", line)
    state.config["OnBuild"] = [*(state.config.get("OnBuild") or []), expression]


_HEALTH_FLAGS = {
    "interval": "Interval", "timeout": "Timeout", "start-period": "StartPeriod",
    "start-interval": "StartInterval",
}


def _change_healthcheck(state: _ChangeState, rest: str, _line: str) -> None:
    words = rest.split()
    health: dict[str, Any] = {}
    while words and words[0].startswith("--"):
        flag, _, value = words.pop(0)[2:].partition("=")
        if flag in _HEALTH_FLAGS:
            nanos = parse_go_duration(value)
            if nanos < 0:
                raise InvalidParameter(f"--{flag} cannot be negative")
            health[_HEALTH_FLAGS[flag]] = nanos
        elif flag == "retries":
            try:
                health["Retries"] = int(value)
            except ValueError:
                raise InvalidParameter(
                    f'strconv.ParseInt: parsing "{value}": invalid syntax'
                ) from None
        else:
            raise InvalidParameter(f"unknown flag: {flag}")
    if not words:
        raise InvalidParameter("HEALTHCHECK requires at least one argument")
    kind = words[0].upper()
    if kind == "NONE":
        if len(words) > 1 or health:
            raise InvalidParameter("HEALTHCHECK NONE takes no arguments")
        state.config["Healthcheck"] = {"Test": ["NONE"]}
        return
    if kind != "CMD":
        raise InvalidParameter(f'Unknown type "{words[0]}" in HEALTHCHECK (try CMD)')
    command = rest.split("CMD", 1)[1] if "CMD" in rest else rest.split(words[0], 1)[1]
    exec_form = _maybe_json(command)
    test = ["CMD", *exec_form] if exec_form is not None else ["CMD-SHELL", command.strip()]
    state.config["Healthcheck"] = {"Test": test, **health}


_DISPATCH: dict[str, Callable[[_ChangeState, str, str], None]] = {
    "env": _change_env, "label": _change_label, "cmd": _change_cmd,
    "entrypoint": _change_entrypoint, "expose": _change_expose, "user": _change_user,
    "workdir": _change_workdir, "volume": _change_volume, "stopsignal": _change_stopsignal,
    "onbuild": _change_onbuild, "healthcheck": _change_healthcheck,
}

_SIGNAL_NAMES = frozenset(name[3:] for name in signal.Signals.__members__ if name.startswith("SIG"))


def parse_signal(raw: str) -> int:
    """A stop signal as moby's ``signal.ParseSignal`` accepts it (TERM, SIGTERM, 15,
    RTMIN+3); anything else is ``Invalid signal: <raw>``."""
    if raw.isdigit():
        if int(raw) == 0:
            raise InvalidParameter(f"Invalid signal: {raw}")
        return int(raw)
    name = raw.upper().removeprefix("SIG")
    if name in _SIGNAL_NAMES:
        return int(signal.Signals["SIG" + name])
    match = re.match(r"^RT(MIN|MAX)([+-])(\d+)$", name)
    if match is not None:
        base = signal.SIGRTMIN if match.group(1) == "MIN" else signal.SIGRTMAX
        number = base + int(match.group(3)) * (1 if match.group(2) == "+" else -1)
        if signal.SIGRTMIN <= number <= signal.SIGRTMAX:
            return int(number)
    raise InvalidParameter(f"Invalid signal: {raw}")
