"""ImageManager: the local image store (import, resolve, list, tag, remove).

State lives in the database (``images``, ``layers``, ``tags``, ``digests``); after every
commit the manager publishes a frozen ``_Catalog`` that readers use without locks or
database round trips (architecture §4).

Import (``docker import``), crash-safe in this order (architecture §3):

  1. prepare an ``extract-<random>`` snapshot and unpack the tar into it, teeing the
     uncompressed bytes into a content-store writer (one pass: hash + extract + keep);
  2. commit the layer blob (its digest is the diff_id), commit the snapshot under the
     chain id, write the image config blob;
  3. one transaction inserts the layer, image and tag rows.

A crash before 3 leaves an ``extract-`` snapshot (removed by the snapshotter's cleanup), a
committed layer snapshot that no ``layers`` row names, or blobs no row names: ``load()``
sweeps the last two. Crash points (engine/store/crashpoints.py) mark every step.

Removal follows dockerd's graphdriver rules (daemon/images/image_delete.go): a name is
untagged; the image goes when its last reference goes and no container needs it; layers
(snapshot + blob) are released when no image uses them. An image deleted with ``force``
while a stopped container still names it keeps a hidden row (``removed = 1``) because the
container row refers to it; ``collect_removed()`` purges such rows once no container does.
"""

from __future__ import annotations

import asyncio
import builtins
import calendar
import contextlib
import functools
import json
import logging
import platform as host_platform
import re
import secrets
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from engine.errors import Conflict, EngineError, InvalidParameter, NotFound
from engine.events import EventBus
from engine.images.reference import (
    Reference,
    familiar_match,
    parse_any,
    parse_normalized_named,
    repo_tag_reference,
)
from engine.images.unpack import ChunkPipe, Readable, UnpackError, UnpackResult, unpack
from engine.layout import Layout
from engine.snapshots.base import Snapshotter
from engine.snapshots.overlay import EXTRACT_PREFIX
from engine.store.content import ContentStore, ContentWriter
from engine.store.crashpoints import crash_point
from engine.store.db import Database

log = logging.getLogger(__name__)

UsageSource = Callable[[str], list[tuple[str, bool]]]
ImportSource = AsyncIterator[bytes] | Readable
LIST_FILTERS = frozenset({"dangling", "label", "before", "since", "reference", "until"})
DEFAULT_IMPORT_COMMENT = "Imported from -"
ZERO_TIME = "0001-01-01T00:00:00Z"


# =========================================================================== views
@dataclass(frozen=True)
class ImageView:
    """One image as readers see it. ``config`` is the image config JSON object (keys
    ``architecture``, ``os``, ``config``, ``rootfs``, ``history``, …); do not mutate it."""

    id: str  # "sha256:<hex>"
    config: Mapping[str, Any]
    repo_tags: tuple[str, ...]  # familiar, sorted: ("busybox:latest",)
    repo_digests: tuple[str, ...]  # familiar: ("busybox@sha256:…",)
    top_layer: str | None  # chain id of the topmost layer: the snapshot parent to use
    layers: tuple[str, ...]  # chain ids, bottom to top
    layer_sizes: tuple[int, ...]  # bytes unpacked per layer, bottom to top
    size: int
    created: float  # the image's own creation time (unix seconds)
    loaded: float  # when it arrived here
    last_tag_time: float | None

    @property
    def short_id(self) -> str:
        return self.id.removeprefix("sha256:")[:12]

    @property
    def created_text(self) -> str:
        """RFC 3339 with zone, as stored in the config (Go's RFC3339Nano)."""
        text = self.config.get("created")
        return text if isinstance(text, str) and text else rfc3339_nano(int(self.created * 1e9))

    @property
    def last_tag_text(self) -> str:
        if self.last_tag_time is None:
            return ZERO_TIME
        return rfc3339_nano(int(self.last_tag_time * 1e9))

    @property
    def container_config(self) -> Mapping[str, Any]:
        value = self.config.get("config")
        return value if isinstance(value, dict) else {}

    @property
    def labels(self) -> dict[str, str]:
        value = self.container_config.get("Labels")
        return dict(value) if isinstance(value, dict) else {}

    @property
    def diff_ids(self) -> tuple[str, ...]:
        rootfs = self.config.get("rootfs")
        ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        return tuple(ids) if isinstance(ids, list) else ()

    @property
    def dangling(self) -> bool:
        return not self.repo_tags and not self.repo_digests


@dataclass(frozen=True)
class _Layer:
    chain_id: str
    diff_id: str
    parent: str | None
    snapshot_key: str
    size: int
    blob_digest: str | None


@dataclass(frozen=True)
class _Catalog:
    images: Mapping[str, ImageView] = field(default_factory=dict)  # visible ones
    hidden: Mapping[str, ImageView] = field(default_factory=dict)  # removed=1 rows
    tags: Mapping[str, str] = field(default_factory=dict)  # "docker.io/library/x:1" → id
    digests: Mapping[str, str] = field(default_factory=dict)  # "docker.io/…/x@sha256:…" → id
    layers: Mapping[str, _Layer] = field(default_factory=dict)

    def refs_of(self, image_id: str) -> list[Reference]:
        """Every tag and digest reference of an image, in dockerd's (familiar) order."""
        names = [r for r, i in self.tags.items() if i == image_id]
        names += [r for r, i in self.digests.items() if i == image_id]
        refs = [parse_normalized_named(n) for n in names]
        return sorted(refs, key=lambda r: r.familiar())

    def used_layers(self) -> set[str]:
        used: set[str] = set()
        for view in [*self.images.values(), *self.hidden.values()]:
            used.update(view.layers)
        return used


# =========================================================================== time
def rfc3339_nano(ns: int) -> str:
    """Go's time.RFC3339Nano in UTC: fraction without trailing zeros, ``Z`` zone."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if fraction:
        text += "." + f"{fraction:09d}".rstrip("0")
    return text + "Z"


_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$"
)


def parse_rfc3339(text: str) -> float | None:
    """Unix seconds of an RFC 3339 time, or None when it does not parse."""
    match = _RFC3339.match(text.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction = float("0." + match.group(7)) if match.group(7) else 0.0
    zone = match.group(8)
    offset = 0
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        offset = sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    try:
        base = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    except (ValueError, OverflowError):
        return None
    return base - offset + fraction


_DURATION_UNITS = {
    "ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000,
    "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> int:
    """Go's ``time.ParseDuration`` → nanoseconds (``1m30s``, ``1.5h``, ``-2s``, ``0``)."""
    raw = text.strip()
    sign = -1 if raw.startswith("-") else 1
    body = raw.lstrip("+-")
    if body == "0":
        return 0
    total = 0.0
    pos = 0
    while pos < len(body):
        match = _DURATION_PART.match(body, pos)
        if match is None:
            raise InvalidParameter(f'time: invalid duration "{text}"')
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not body:
        raise InvalidParameter(f'time: invalid duration "{text}"')
    return sign * int(total)


def parse_timestamp(value: str, now: float) -> float:
    """A filter timestamp as dockerd's ``GetTimestamp`` takes it: unix seconds (with an
    optional fraction), a Go duration before ``now``, or an RFC 3339 date/time."""
    text = value.strip()
    if re.match(r"^-?\d+(\.\d+)?$", text):
        return float(text)
    with contextlib.suppress(InvalidParameter):
        return now - parse_go_duration(text) / 1e9
    parsed = parse_rfc3339(text)
    if parsed is None and re.match(r"^\d{4}-\d{2}-\d{2}$", text):
        parsed = parse_rfc3339(text + "T00:00:00Z")
    if parsed is None and re.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?$", text):
        parsed = parse_rfc3339(text + "Z")
    if parsed is None:
        raise InvalidParameter(f"failed to parse value as time or duration: {value!r}")
    return parsed


# =========================================================================== platform
_ARCH_ALIASES = {
    "x86_64": ("amd64", ""), "x86-64": ("amd64", ""), "amd64": ("amd64", ""),
    "aarch64": ("arm64", ""), "arm64": ("arm64", ""),
    "armhf": ("arm", "v7"), "armel": ("arm", "v6"), "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"), "arm": ("arm", "v7"),
    "i386": ("386", ""), "i686": ("386", ""), "386": ("386", ""),
    "ppc64le": ("ppc64le", ""), "s390x": ("s390x", ""), "riscv64": ("riscv64", ""),
    "mips64le": ("mips64le", ""), "loong64": ("loong64", ""), "loongarch64": ("loong64", ""),
}
_KNOWN_OS = frozenset({
    "aix", "android", "darwin", "dragonfly", "freebsd", "illumos", "ios", "js", "linux",
    "netbsd", "openbsd", "plan9", "solaris", "wasip1", "windows",
})


def host_arch() -> tuple[str, str]:
    """The host's architecture and variant with Go's names (amd64, arm64, arm/v7)."""
    machine = host_platform.machine().lower()
    return _ARCH_ALIASES.get(machine, (machine, ""))


def parse_platform(value: str | None) -> tuple[str, str, str]:
    """``os[/arch[/variant]]`` or ``arch`` → (os, architecture, variant); Linux only."""
    if not value:
        arch, variant = host_arch()
        return "linux", arch, variant
    parts = value.lower().split("/")
    if len(parts) > 3 or not all(parts):
        raise InvalidParameter(f'"{value}": unknown operating system or architecture: '
                               "invalid argument")
    if len(parts) == 1:
        if parts[0] in _KNOWN_OS:
            os_name, (arch, variant) = parts[0], host_arch()
        else:
            os_name, (arch, variant) = "linux", _normalise_arch(value, parts[0], "")
    else:
        os_name = parts[0]
        arch, variant = _normalise_arch(value, parts[1], parts[2] if len(parts) == 3 else "")
    if os_name not in _KNOWN_OS:
        raise InvalidParameter(f'"{value}": unknown operating system or architecture: '
                               "invalid argument")
    if os_name != "linux":
        raise InvalidParameter("operating system is not supported")
    return os_name, arch, variant


def _normalise_arch(value: str, arch: str, variant: str) -> tuple[str, str]:
    if arch not in _ARCH_ALIASES:
        raise InvalidParameter(f'"{value}": unknown operating system or architecture: '
                               "invalid argument")
    name, default_variant = _ARCH_ALIASES[arch]
    if name == "arm64" and variant in ("v8", "8"):
        variant = ""
    return name, variant or default_variant


# =========================================================================== changes
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
    parts: list[str] = []
    for part in requested.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    state.config["WorkingDir"] = "/" + "/".join(parts)


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


# =========================================================================== manager
@dataclass(frozen=True)
class _ImportPlan:
    ref: Reference | None
    os: str
    architecture: str
    variant: str
    config: dict[str, Any]
    comment: str


class ImageManager:
    def __init__(
        self,
        layout: Layout,
        db: Database,
        events: EventBus,
        content: ContentStore,
        snapshotter: Snapshotter,
    ) -> None:
        self._layout = layout
        self._db = db
        self._events = events
        self._content = content
        self._snapshotter = snapshotter
        self._catalog = _Catalog()
        self._configs: dict[str, Mapping[str, Any]] = {}
        self._lock = asyncio.Lock()  # one writer of rows at a time (import commit, tag, rm)
        self._usage: UsageSource = lambda _image_id: []
        self._tasks: set[asyncio.Task[Any]] = set()

    def set_usage_source(self, fn: UsageSource) -> None:
        """``fn(image id) → [(container id, running)]``, from the container manager."""
        self._usage = fn

    # ------------------------------------------------------------------ loading
    async def load(self) -> None:
        """Read the rows, then sweep what a crash left (call after the snapshotter's and
        the content store's cleanup, before anything else uses the images)."""
        async with self._lock:
            await self._reload()
            await self._sweep()

    async def _reload(self) -> None:
        images, layers, tags, digests = await self._db.transaction(_read_all)
        layer_map = {
            r["chain_id"]: _Layer(
                r["chain_id"], r["diff_id"], r["parent"], r["snapshot_key"], r["size"],
                r["blob_digest"],
            )
            for r in layers
        }
        tag_map = {r["ref"]: r["image_id"] for r in tags}
        digest_map = {r["ref"]: r["image_id"] for r in digests}
        visible: dict[str, ImageView] = {}
        hidden: dict[str, ImageView] = {}
        for row in images:
            view = self._view_of(row, layer_map, tag_map, digest_map)
            (hidden if row["removed"] else visible)[view.id] = view
        self._configs = {k: v for k, v in self._configs.items() if k in visible or k in hidden}
        self._catalog = _Catalog(visible, hidden, tag_map, digest_map, layer_map)

    def _view_of(
        self,
        row: sqlite3.Row,
        layers: Mapping[str, _Layer],
        tags: Mapping[str, str],
        digests: Mapping[str, str],
    ) -> ImageView:
        image_id: str = row["id"]
        config = self._configs.get(image_id)
        if config is None:
            config = json.loads(row["config"])
            self._configs[image_id] = config
        chain: list[str] = []
        current = row["top_layer"]
        while current is not None and current in layers and current not in chain:
            chain.append(current)
            current = layers[current].parent
        refs = [parse_normalized_named(r) for r, i in tags.items() if i == image_id]
        dig = [parse_normalized_named(r) for r, i in digests.items() if i == image_id]
        return ImageView(
            id=image_id,
            config=config,
            repo_tags=tuple(sorted(r.familiar() for r in refs)),
            repo_digests=tuple(sorted(r.familiar() for r in dig)),
            top_layer=row["top_layer"],
            layers=tuple(reversed(chain)),
            layer_sizes=tuple(layers[c].size for c in reversed(chain)),
            size=row["size"],
            created=row["created"],
            loaded=row["loaded"],
            last_tag_time=row["last_tag"],
        )

    async def _sweep(self) -> None:
        await self._collect_removed_locked()
        used = self._catalog.used_layers()
        orphans = [c for c in self._catalog.layers if c not in used]
        if orphans:
            log.info("images: releasing %d layers no image uses", len(orphans))
            await self._release_layers(_top_down(orphans, self._catalog.layers))
        for key in await self._db.transaction(_orphan_layer_snapshots):
            with contextlib.suppress(EngineError):
                await self._snapshotter.remove(key)
                log.info("images: removed layer snapshot %s that no layer row names", key)
        referenced = set(self._catalog.images) | set(self._catalog.hidden)
        referenced |= {
            layer.blob_digest for layer in self._catalog.layers.values() if layer.blob_digest
        }
        await self._content.gc(referenced)

    async def close(self) -> None:
        """Let imports in flight finish (they own their cleanup)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # ------------------------------------------------------------------ readers
    def count(self) -> int:
        return len(self._catalog.images)

    def view_by_id(self, image_id: str, include_removed: bool = False) -> ImageView | None:
        catalog = self._catalog
        view = catalog.images.get(image_id)
        if view is None and include_removed:
            view = catalog.hidden.get(image_id)
        return view

    async def get(self, ref: str) -> ImageView:
        return self.resolve(ref)

    def resolve(self, ref: str) -> ImageView:
        """Name[:tag], name@digest, ``sha256:<hex>``, 64 hex, or a unique id prefix."""
        catalog = self._catalog
        parsed = parse_any(ref)
        if isinstance(parsed, str):
            view = catalog.images.get(parsed)
            if view is None:
                raise NotFound(f"No such image: {parsed}")
            return view
        image_id = self._lookup_named(catalog, parsed)
        if image_id is not None and image_id in catalog.images:
            return catalog.images[image_id]
        found = _search_prefix(ref, catalog.images)
        if found is not None:
            return found
        raise NotFound(f"No such image: {parsed.tag_name_only().familiar()}")

    @staticmethod
    def _lookup_named(catalog: _Catalog, ref: Reference) -> str | None:
        if ref.digest is not None:
            return catalog.digests.get(str(Reference(ref.domain, ref.path, None, ref.digest)))
        return catalog.tags.get(str(ref.tag_name_only()))

    def inspect(self, ref: str) -> ImageView:
        return self.resolve(ref)

    def _bound(self, refs: Sequence[str], pick: Callable[..., float]) -> float | None:
        if not refs:
            return None
        return float(pick(self.resolve(r).created for r in refs))

    def _with_matching_refs(self, view: ImageView, patterns: list[str]) -> ImageView | None:
        refs = self._catalog.refs_of(view.id)
        kept = [r for r in refs if any(familiar_match(p, r) for p in patterns)]
        if not kept:
            return None  # dockerd skips unnamed images when filtering by reference
        return replace(
            view,
            repo_tags=tuple(r.familiar() for r in kept if r.digest is None),
            repo_digests=tuple(r.familiar() for r in kept if r.digest is not None),
        )

    async def lower_dirs(self, image_id: str) -> list[Path]:
        """The image's layer directories, top to bottom (for GraphDriver data)."""
        view = self.view_by_id(image_id, include_removed=True)
        if view is None:
            raise NotFound(f"No such image: {image_id}")
        if view.top_layer is None:
            return []
        mounts = await self._snapshotter.mounts(view.top_layer)
        for m in mounts:
            if m.type == "bind":
                return [Path(m.source)]
            for option in m.options:
                if option.startswith("lowerdir="):
                    return [Path(p) for p in option[len("lowerdir="):].split(":")]
        return []

    # ------------------------------------------------------------------ import
    async def import_image(
        self,
        stream: ImportSource,
        repo: str | None = None,
        tag: str | None = None,
        changes: Sequence[str] = (),
        message: str = "",
        platform: str | None = None,
    ) -> str:
        """``docker import``: one layer from a tar (plain or compressed) → image id.

        Everything that can be refused is checked before the first byte is read. The
        work runs in a task of its own, so a client that goes away mid-import never
        leaves a half-done import behind: the task finishes or cleans up."""
        ref = repo_tag_reference(repo, tag) if repo else None
        os_name, arch, variant = parse_platform(platform)
        config = container_config(build_config_from_changes(changes))
        plan = _ImportPlan(ref, os_name, arch, variant, config,
                           message or DEFAULT_IMPORT_COMMENT)
        task = asyncio.create_task(self._import(stream, plan))
        self._tasks.add(task)
        task.add_done_callback(self._forget)
        return await asyncio.shield(task)

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a caller that went away must not log it as lost

    async def _import(self, stream: ImportSource, plan: _ImportPlan) -> str:
        key = EXTRACT_PREFIX + secrets.token_hex(8)
        await self._snapshotter.prepare(key, None)
        writer: ContentWriter | None = None
        try:
            root = self._snapshotter.writable_path(key)
            writer = await asyncio.to_thread(
                self._content.open_writer, ContentStore.new_ref("layer")
            )
            result = await self._unpack(stream, root, writer)
            crash_point("import_after_unpack")
            async with self._lock:
                image_id = await self._commit_import(key, writer, result, plan)
                writer = None
        except BaseException:
            await self._discard(key, writer)
            raise
        return image_id

    async def _unpack(
        self, stream: ImportSource, root: Path, writer: ContentWriter
    ) -> UnpackResult:
        loop = asyncio.get_running_loop()
        if not hasattr(stream, "__aiter__"):
            reader: Readable = stream
            work = loop.run_in_executor(None, unpack, reader, root, writer)
            try:
                return await work
            except asyncio.CancelledError:
                await asyncio.wait({work})  # the worker must leave root before cleanup
                raise
        pipe = ChunkPipe(loop)
        feeder = asyncio.ensure_future(pipe.feed(stream))  # type: ignore[arg-type]
        work = loop.run_in_executor(None, unpack, pipe, root, writer)
        try:
            return await work
        except BaseException:
            pipe.fail(UnpackError("import aborted"))
            await asyncio.wait({work})
            raise
        finally:
            pipe.close_reader()
            if not feeder.done():
                feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)

    async def _commit_import(
        self, key: str, writer: ContentWriter, result: UnpackResult, plan: _ImportPlan
    ) -> str:
        chain_id = result.diff_id  # one layer without a parent: chain id == diff id
        existing = self._catalog.layers.get(chain_id)
        created_snapshot = False
        if existing is not None:
            await asyncio.to_thread(writer.abort)
            await self._snapshotter.remove(key)
            layer_size, blob = existing.size, existing.blob_digest
        else:
            blob = await asyncio.to_thread(writer.commit)
            crash_point("import_after_blob")
            if await self._snapshot_exists(chain_id):
                # Committed by an earlier import that crashed before its rows: same
                # content (the key is its digest), so adopt it.
                await self._snapshotter.remove(key)
            else:
                await self._snapshotter.commit(chain_id, key)
                created_snapshot = True
            crash_point("import_after_layer_commit")
            layer_size = result.size
        try:
            image_id, config = await self._write_config(plan, result.diff_id)
            crash_point("import_after_config_write")
            now = time.time()
            crash_point("import_before_commit")
            await self._db.transaction(
                lambda conn: _insert_import(
                    conn, chain_id, result.diff_id, layer_size, blob, image_id, config,
                    plan.ref, now,
                )
            )
        except BaseException:
            if created_snapshot:
                with contextlib.suppress(EngineError):
                    await self._snapshotter.remove(chain_id)
            raise
        crash_point("import_after_commit")
        await self._reload()
        if plan.ref is not None:
            self._emit(image_id, "tag", plan.ref.familiar())
        self._emit(image_id, "import", image_id)
        return image_id

    async def _write_config(self, plan: _ImportPlan, diff_id: str) -> tuple[str, bytes]:
        created = rfc3339_nano(time.time_ns())
        image: dict[str, Any] = {"comment": plan.comment, "created": created,
                                 "config": plan.config, "architecture": plan.architecture}
        if plan.variant:
            image["variant"] = plan.variant
        image["os"] = plan.os
        image["rootfs"] = {"type": "layers", "diff_ids": [diff_id]}
        # moby's History.CreatedBy is omitempty: an import has no "created_by".
        image["history"] = [{"created": created, "comment": plan.comment}]
        data = json.dumps(image, separators=(",", ":"), ensure_ascii=False).encode()
        image_id = await self._content.write_blob(data)
        return image_id, data

    async def _snapshot_exists(self, key: str) -> bool:
        try:
            await self._snapshotter.stat(key)
        except NotFound:
            return False
        return True

    async def _discard(self, key: str, writer: ContentWriter | None) -> None:
        """Undo an import that did not commit (best effort: the start-up sweep catches
        whatever this misses)."""
        if writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(writer.abort)
        with contextlib.suppress(Exception):
            await self._snapshotter.remove(key)

    # ------------------------------------------------------------------ tag
    async def tag(self, ref: str, repo: str, tag: str | None) -> str:
        """``POST /images/{ref}/tag``: point ``repo:tag`` at the image; returns the
        familiar new name."""
        new_ref = repo_tag_reference(repo, tag)
        if new_ref.familiar_name() == "sha256":
            raise InvalidParameter(
                "refusing to create an ambiguous tag using digest algorithm as name"
            )
        view = self.resolve(ref)
        async with self._lock:
            if view.id not in self._catalog.images:
                raise NotFound(f"No such image: {ref}")
            now = time.time()
            await self._db.transaction(
                lambda conn: _insert_tag(conn, str(new_ref), view.id, now)
            )
            await self._reload()
        self._emit(view.id, "tag", new_ref.familiar())
        return new_ref.familiar()

    # ------------------------------------------------------------------ remove
    async def remove(self, ref: str, force: bool = False, noprune: bool = False) -> list[
        dict[str, str]
    ]:
        """``DELETE /images/{ref}`` with dockerd's untag/delete rules; returns the
        ``[{"Untagged": …}, {"Deleted": …}]`` records. ``noprune`` only matters for
        parent images, which imported images do not have."""
        view = self.resolve(ref)
        async with self._lock:
            catalog = self._catalog
            if view.id not in catalog.images:
                raise NotFound(f"No such image: {ref}")
            return await self._remove_locked(catalog, view, ref, force)

    async def _remove_locked(
        self, catalog: _Catalog, view: ImageView, ref: str, force: bool
    ) -> list[dict[str, str]]:
        image_id = view.id
        repo_refs = catalog.refs_of(image_id)
        records: list[dict[str, str]] = []
        quiet = False
        if not _is_image_id_prefix(image_id, ref):
            if not force and _is_single_reference(repo_refs):
                users = self._usage(image_id)
                if users:
                    raise Conflict(
                        f'conflict: unable to remove repository reference "{ref}" (must force) '
                        f"- container {users[0][0][:12]} is using its referenced image "
                        f"{view.short_id}"
                    )
            named = parse_normalized_named(ref).tag_name_only()
            doomed = [named, *_digest_refs_to_drop(named, repo_refs)]
            remaining = [r for r in repo_refs if str(r) not in {str(d) for d in doomed}]
            await self._untag(image_id, doomed, records)
            if remaining:
                return records
            quiet = True
        elif _is_single_reference(repo_refs):
            # An id given, with one name at most: the name goes with the image, if the
            # image may go (stopped containers only block without force).
            self._check_conflict(view, running=True, references=False, stopped=not force)
            await self._untag(image_id, repo_refs, records)
        try:
            self._check_conflict(
                view, running=True, references=not force, stopped=not force
            )
        except _DeleteConflict as conflict:
            if quiet and (not self._is_dangling(image_id) or conflict.used):
                return records  # the untag was the whole job
            raise
        await self._untag(image_id, self._catalog.refs_of(image_id), records)
        records += await self._delete_image(view)
        return records

    def _is_dangling(self, image_id: str) -> bool:
        return not self._catalog.refs_of(image_id)

    def _check_conflict(
        self, view: ImageView, running: bool, references: bool, stopped: bool
    ) -> None:
        """dockerd's checkImageDeleteConflict, in its order: running containers (hard),
        other references, stopped containers (soft)."""
        users = self._usage(view.id)
        if running:
            for cid, is_running in users:
                if is_running:
                    raise _DeleteConflict(
                        view.short_id, True, True,
                        f"image is being used by running container {cid[:12]}",
                    )
        if references and self._catalog.refs_of(view.id):
            raise _DeleteConflict(
                view.short_id, False, False, "image is referenced in multiple repositories"
            )
        if stopped:
            for cid, is_running in users:
                if not is_running:
                    raise _DeleteConflict(
                        view.short_id, False, True,
                        f"image is being used by stopped container {cid[:12]}",
                    )

    async def _untag(
        self, image_id: str, refs: Sequence[Reference], records: list[dict[str, str]]
    ) -> None:
        if not refs:
            return
        names = [str(r) for r in refs]
        await self._db.transaction(lambda conn: _delete_refs(conn, names))
        for r in refs:
            records.append({"Untagged": r.familiar()})
            self._emit(image_id, "untag", image_id)
        await self._reload()

    async def _delete_image(self, view: ImageView) -> list[dict[str, str]]:
        image_id = view.id
        hidden = await self._db.transaction(lambda conn: _delete_image_rows(conn, image_id))
        crash_point("remove_after_rows")
        labels = view.labels
        await self._reload()
        self._events.emit("image", "delete", image_id, {**labels, "name": image_id})
        records = [{"Deleted": image_id}]
        if hidden:
            return records  # a container row still names it: keep config and layers
        await self._content.delete(image_id)
        released = await self._release_layers(list(reversed(view.layers)))
        records += [{"Deleted": chain_id} for chain_id in released]
        return records

    async def _release_layers(self, top_down: Sequence[str]) -> list[str]:
        """Drop layers (rows, snapshots, blobs) that no image uses, top first."""
        released = []
        for chain_id in top_down:
            layer = self._catalog.layers.get(chain_id)
            if layer is None or chain_id in self._catalog.used_layers():
                continue
            if any(other.parent == chain_id for other in self._catalog.layers.values()):
                continue
            await self._db.transaction(functools.partial(_delete_layer_row, chain_id=chain_id))
            crash_point("remove_after_layer_row")
            await self._reload()
            try:
                await self._snapshotter.remove(layer.snapshot_key)
            except NotFound:
                pass
            except EngineError as exc:
                # Still in use (a snapshot depends on it): the start-up sweep retries.
                log.warning("images: layer %s kept for now: %s", chain_id, exc)
                continue
            blob = layer.blob_digest
            if blob and not any(x.blob_digest == blob for x in self._catalog.layers.values()):
                await self._content.delete(blob)
            released.append(chain_id)
        return released

    async def collect_removed(self) -> list[str]:
        """Purge images deleted while containers named them, once none does (the
        container manager may call this after removing a container)."""
        async with self._lock:
            return await self._collect_removed_locked()

    async def _collect_removed_locked(self) -> list[str]:
        purged = []
        for view in list(self._catalog.hidden.values()):
            gone = await self._db.transaction(functools.partial(_purge_hidden, image_id=view.id))
            if not gone:
                continue
            await self._reload()
            await self._content.delete(view.id)
            await self._release_layers(list(reversed(view.layers)))
            purged.append(view.id)
        return purged

    # ------------------------------------------------------------------ events
    def _emit(self, image_id: str, action: str, name: str) -> None:
        view = self.view_by_id(image_id, include_removed=True)
        attributes = dict(view.labels) if view is not None else {}
        attributes["name"] = name
        self._events.emit("image", action, image_id, attributes)


    def list(
        self, all: bool = False, filters: Mapping[str, Sequence[str]] | None = None
    ) -> builtins.list[ImageView]:
        """Images for ``GET /images/json``, newest first. ``all`` would add intermediate
        images; imported images have no parents, so there are none to hide. With a
        ``reference`` filter, repo_tags/repo_digests keep only the matching names."""
        filters = filters or {}
        unknown = set(filters) - LIST_FILTERS
        if unknown:
            raise InvalidParameter(f"invalid filter '{sorted(unknown)[0]}'")
        dangling = _dangling_filter(filters.get("dangling") or [])
        now = time.time()
        before = self._bound(filters.get("before") or [], min)
        since = self._bound(filters.get("since") or [], max)
        until = [parse_timestamp(v, now) for v in filters.get("until") or []]
        labels = list(filters.get("label") or [])
        patterns = list(filters.get("reference") or [])
        out = []
        for view in self._catalog.images.values():
            if before is not None and view.created >= before:
                continue
            if since is not None and view.created <= since:
                continue
            if until and not any(view.created <= u for u in until):
                continue
            if labels and not _labels_match(view.labels, labels):
                continue
            shown = self._with_matching_refs(view, patterns) if patterns else view
            if shown is None:
                continue
            if dangling is True and not shown.dangling:
                continue
            if dangling is False and shown.dangling:
                continue
            out.append(shown)
        out.sort(key=lambda v: (v.created, v.id), reverse=True)
        return out


# =========================================================================== rm rules
class _DeleteConflict(Conflict):
    def __init__(self, short_id: str, hard: bool, used: bool, message: str) -> None:
        how = "cannot be forced" if hard else "must be forced"
        super().__init__(f"conflict: unable to delete {short_id} ({how}) - {message}")
        self.hard = hard
        self.used = used


def _is_image_id_prefix(image_id: str, candidate: str) -> bool:
    return image_id.startswith(candidate) or image_id.removeprefix("sha256:").startswith(
        candidate
    )


def _is_single_reference(refs: Sequence[Reference]) -> bool:
    """All references in one repository, with at most one tag (dockerd's rule)."""
    if len(refs) <= 1:
        return len(refs) == 1
    single: Reference | None = None
    canonical: set[str] = set()
    for r in refs:
        if r.digest is not None:
            canonical.add(r.name)
        elif single is None:
            single = r
        else:
            return False
    if single is None:
        single = refs[0]
    return len(canonical) == 1 and single.name in canonical


def _digest_refs_to_drop(removed: Reference, refs: Sequence[Reference]) -> list[Reference]:
    """Untagging the last tag of a repository also drops that repository's digests."""
    if removed.digest is not None:
        return []
    for r in refs:
        if r.digest is None and r.name == removed.name and str(r) != str(removed):
            return []
    return [r for r in refs if r.digest is not None and r.name == removed.name]


def _search_prefix(term: str, images: Mapping[str, ImageView]) -> ImageView | None:
    """A unique image id prefix (``613d``, ``sha256:613d``); ambiguous counts as none."""
    algorithm, sep, rest = term.partition(":")
    if sep:
        if algorithm != "sha256":
            return None
        term = rest
    if not term or not re.fullmatch(r"[0-9a-f]+", term):
        return None
    found = [v for i, v in images.items() if i.removeprefix("sha256:").startswith(term)]
    return found[0] if len(found) == 1 else None


def _dangling_filter(values: Sequence[str]) -> bool | None:
    if not values:
        return None
    if all(v.lower() in ("true", "1") for v in values):
        return True
    if all(v.lower() in ("false", "0") for v in values):
        return False
    raise InvalidParameter(f"invalid filter 'dangling=[{' '.join(values)}]'")


def _labels_match(labels: Mapping[str, str], wanted: Sequence[str]) -> bool:
    for item in wanted:
        key, sep, value = item.partition("=")
        if key not in labels:
            return False
        if sep and labels[key] != value:
            return False
    return True


def _top_down(chain_ids: Sequence[str], layers: Mapping[str, _Layer]) -> list[str]:
    """Order layers so that children come before their parents."""
    ordered: list[str] = []
    pending = set(chain_ids)
    while pending:
        leaves = [c for c in pending if not any(layers[o].parent == c for o in pending)]
        if not leaves:
            ordered.extend(sorted(pending))
            break
        for leaf in sorted(leaves):
            ordered.append(leaf)
            pending.discard(leaf)
    return ordered


# =========================================================================== SQL
def _read_all(
    conn: sqlite3.Connection,
) -> tuple[list[sqlite3.Row], list[sqlite3.Row], list[sqlite3.Row], list[sqlite3.Row]]:
    images = conn.execute(
        "SELECT id, config, top_layer, size, created, loaded, last_tag, removed FROM images"
    ).fetchall()
    layers = conn.execute(
        "SELECT chain_id, diff_id, parent, snapshot_key, size, blob_digest FROM layers"
    ).fetchall()
    tags = conn.execute("SELECT ref, image_id FROM tags").fetchall()
    digests = conn.execute("SELECT ref, image_id FROM digests").fetchall()
    return images, layers, tags, digests


def _insert_import(
    conn: sqlite3.Connection,
    chain_id: str,
    diff_id: str,
    size: int,
    blob: str | None,
    image_id: str,
    config: bytes,
    ref: Reference | None,
    now: float,
) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO layers "
        "(chain_id, diff_id, parent, snapshot_key, size, blob_digest, created) "
        "VALUES (?, ?, NULL, ?, ?, ?, ?)",
        (chain_id, diff_id, chain_id, size, blob, now),
    )
    parsed = json.loads(config)
    created = parse_rfc3339(parsed.get("created", "")) or now
    conn.execute(
        "INSERT INTO images (id, config, top_layer, size, created, loaded, last_tag, removed) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, 0) "
        "ON CONFLICT(id) DO UPDATE SET removed = 0",
        (image_id, config.decode(), chain_id, size, created, now, now if ref else None),
    )
    if ref is not None:
        _insert_tag(conn, str(ref), image_id, now)


def _insert_tag(conn: sqlite3.Connection, ref: str, image_id: str, now: float) -> None:
    conn.execute(
        "INSERT INTO tags (ref, image_id) VALUES (?, ?) "
        "ON CONFLICT(ref) DO UPDATE SET image_id = excluded.image_id",
        (ref, image_id),
    )
    conn.execute("UPDATE images SET last_tag = ? WHERE id = ?", (now, image_id))


def _delete_refs(conn: sqlite3.Connection, refs: Sequence[str]) -> None:
    for ref in refs:
        conn.execute("DELETE FROM tags WHERE ref = ?", (ref,))
        conn.execute("DELETE FROM digests WHERE ref = ?", (ref,))


def _delete_image_rows(conn: sqlite3.Connection, image_id: str) -> bool:
    """Delete the image (or hide it while a container row names it); True when hidden."""
    conn.execute("DELETE FROM tags WHERE image_id = ?", (image_id,))
    conn.execute("DELETE FROM digests WHERE image_id = ?", (image_id,))
    if _named_by_container(conn, image_id):
        conn.execute("UPDATE images SET removed = 1 WHERE id = ?", (image_id,))
        return True
    conn.execute("DELETE FROM images WHERE id = ?", (image_id,))
    return False


def _purge_hidden(conn: sqlite3.Connection, image_id: str) -> bool:
    if _named_by_container(conn, image_id):
        return False
    conn.execute("DELETE FROM images WHERE id = ? AND removed = 1", (image_id,))
    return True


def _named_by_container(conn: sqlite3.Connection, image_id: str) -> bool:
    row = conn.execute("SELECT 1 FROM containers WHERE image_id = ? LIMIT 1", (image_id,))
    return row.fetchone() is not None


def _delete_layer_row(conn: sqlite3.Connection, chain_id: str) -> None:
    conn.execute("DELETE FROM layers WHERE chain_id = ?", (chain_id,))


def _orphan_layer_snapshots(conn: sqlite3.Connection) -> list[str]:
    """Committed layer snapshots (keys ``sha256:…``) that no layer row names and no
    snapshot builds on: what a crash between snapshot commit and the import
    transaction leaves."""
    rows = conn.execute(
        "SELECT key FROM snapshots s WHERE kind = 'committed' AND removing = 0 "
        "AND key LIKE 'sha256:%' "
        "AND NOT EXISTS (SELECT 1 FROM layers l WHERE l.snapshot_key = s.key) "
        "AND NOT EXISTS (SELECT 1 FROM snapshots c WHERE c.parent = s.key)"
    ).fetchall()
    return [r["key"] for r in rows]

