"""Docker image references: parse, normalise, print familiar forms.

The grammar and the error texts follow distribution/reference (v0.6, what moby v28 and
CLI 28 vendor) and opencontainers/go-digest, because clients show these texts verbatim:

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [domain "/"] path-component ["/" path-component]*
    domain     := host [":" port]   (host: DNS-ish components, IPv4, or [IPv6])
    path-component := [a-z0-9]+ (separator [a-z0-9]+)*   separator := [._] | __ | -+
    tag        := [\\w][\\w.-]{0,127}
    digest     := algorithm ":" hex{32,}

Normalisation (``parse_normalized_named``): a name without a domain lives on
``docker.io``; a one-component name on Docker Hub gets ``library/``. The first path
component counts as a domain when it is ``localhost``, contains ``.`` or ``:``, or holds
an uppercase letter (uppercase is never valid in a path, so ``UPPER/x`` is the registry
"UPPER"). ``familiar()`` undoes that for display: ``docker.io/library/busybox:latest`` →
``busybox:latest``; ``localhost:5000/x:1`` stays as it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from engine.errors import InvalidParameter

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

# -- the grammar as regular expressions (Python's re is leftmost-first like Go's) -------
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = _ALNUM + r"(?:" + _SEPARATOR + _ALNUM + r")*"
_REMOTE_NAME = _PATH_COMPONENT + r"(?:/" + _PATH_COMPONENT + r")*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = _DOMAIN_COMPONENT + r"(?:\." + _DOMAIN_COMPONENT + r")*"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_DOMAIN = r"(?:" + _DOMAIN_NAME + r"|" + _IPV6 + r")(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*[:][0-9a-fA-F]{32,}"
_NAME = r"(?:" + _DOMAIN + r"/)?" + _REMOTE_NAME

_REFERENCE_RE = re.compile(
    r"^(" + _NAME + r")(?::(" + _TAG + r"))?(?:@(" + _DIGEST + r"))?$", re.ASCII
)
_ANCHORED_NAME_RE = re.compile(r"^(?:(" + _DOMAIN + r")/)?(" + _REMOTE_NAME + r")$", re.ASCII)
_TAG_RE = re.compile(r"^" + _TAG + r"$", re.ASCII)
_IDENTIFIER_RE = re.compile(r"^[a-f0-9]{64}$")
_ALGORITHM_SIZES = {"sha256": 64, "sha384": 96, "sha512": 128}
_ENCODED_RE = re.compile(r"^[a-f0-9]+$")
_MAX_INPUT = 4096  # longer input is never valid; keeps the regexes' work bounded


class ReferenceError(InvalidParameter):
    """A reference, tag or digest that does not parse (400, dockerd's message)."""


@dataclass(frozen=True)
class Reference:
    """A named reference. ``domain`` is empty only for references parsed without
    normalisation; everything from ``parse_normalized_named`` has one."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        return f"{self.domain}/{self.path}" if self.domain else self.path

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += ":" + self.tag
        if self.digest is not None:
            text += "@" + self.digest
        return text

    @property
    def is_name_only(self) -> bool:
        return self.tag is None and self.digest is None

    @property
    def is_canonical(self) -> bool:
        """Has a digest (distribution's ``Canonical``)."""
        return self.digest is not None

    def familiar_name(self) -> str:
        if self.domain != DEFAULT_DOMAIN:
            return self.name
        path = self.path
        if path.startswith(OFFICIAL_REPO_PREFIX):
            rest = path[len(OFFICIAL_REPO_PREFIX):]
            if "/" not in rest:
                path = rest
        return path

    def familiar(self) -> str:
        text = self.familiar_name()
        if self.tag is not None:
            text += ":" + self.tag
        if self.digest is not None:
            text += "@" + self.digest
        return text

    def with_tag(self, tag: str) -> Reference:
        if not _TAG_RE.match(tag):
            raise ReferenceError("invalid tag format")
        return Reference(self.domain, self.path, tag, self.digest)

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.domain, self.path, self.tag, parse_digest(digest))

    def trim(self) -> Reference:
        """The repository alone (no tag, no digest)."""
        return Reference(self.domain, self.path)

    def tag_name_only(self) -> Reference:
        """Add ``latest`` to a bare name (distribution's ``TagNameOnly``)."""
        return Reference(self.domain, self.path, DEFAULT_TAG) if self.is_name_only else self


# ------------------------------------------------------------------------ digests
def parse_digest(value: str) -> str:
    """Validate ``algorithm:hex`` as go-digest does; returns it unchanged."""
    algorithm, sep, encoded = value.partition(":")
    if not algorithm or not sep or not encoded:
        raise ReferenceError("invalid checksum digest format")
    size = _ALGORITHM_SIZES.get(algorithm)
    if size is None:
        if not re.match(r"^" + _DIGEST + r"$", value, re.ASCII):
            raise ReferenceError("invalid checksum digest format")
        raise ReferenceError("unsupported digest algorithm")
    if len(encoded) != size:
        raise ReferenceError("invalid checksum digest length")
    if not _ENCODED_RE.match(encoded):
        raise ReferenceError("invalid checksum digest format")
    return value


def is_identifier(value: str) -> bool:
    """64 lowercase hex digits: an image id without its ``sha256:``."""
    return bool(_IDENTIFIER_RE.match(value))


# ------------------------------------------------------------------------ parsing
def parse(value: str) -> Reference:
    """Parse without normalising (distribution's ``Parse``); names only."""
    if value == "":
        raise ReferenceError("repository name must have at least one component")
    match = _REFERENCE_RE.match(value) if len(value) <= _MAX_INPUT else None
    if match is None:
        lowered = value.lower()
        if lowered != value and len(value) <= _MAX_INPUT and _REFERENCE_RE.match(lowered):
            raise ReferenceError("repository name must be lowercase")
        raise ReferenceError("invalid reference format")
    name, tag, digest = match.group(1), match.group(2), match.group(3)
    name_match = _ANCHORED_NAME_RE.match(name)
    if name_match is not None:
        domain, path = name_match.group(1) or "", name_match.group(2)
    else:
        domain, path = "", name
    if len(path) > NAME_TOTAL_LENGTH_MAX:
        raise ReferenceError(
            f"repository name must not be more than {NAME_TOTAL_LENGTH_MAX} characters"
        )
    if digest is not None:
        parse_digest(digest)
    return Reference(domain, path, tag, digest)


def _split_docker_domain(value: str) -> tuple[str, str]:
    maybe_domain, sep, maybe_remote = value.partition("/")
    if not sep:
        return DEFAULT_DOMAIN, OFFICIAL_REPO_PREFIX + value
    if maybe_domain == "localhost":
        domain, remote = maybe_domain, maybe_remote
    elif maybe_domain == LEGACY_DEFAULT_DOMAIN:
        domain, remote = DEFAULT_DOMAIN, maybe_remote
    elif "." in maybe_domain or ":" in maybe_domain:
        domain, remote = maybe_domain, maybe_remote
    elif maybe_domain.lower() != maybe_domain:
        domain, remote = maybe_domain, maybe_remote
    else:
        domain, remote = DEFAULT_DOMAIN, value
    if domain == DEFAULT_DOMAIN and "/" not in remote:
        remote = OFFICIAL_REPO_PREFIX + remote
    return domain, remote


def parse_normalized_named(value: str) -> Reference:
    """A familiar or full name → fully qualified reference (``ParseNormalizedNamed``)."""
    if _IDENTIFIER_RE.match(value):
        raise ReferenceError(
            f"invalid repository name ({value}), cannot specify 64-byte hexadecimal strings"
        )
    domain, remainder = _split_docker_domain(value)
    remote = remainder.split(":", 1)[0]
    if remote.lower() != remote:
        raise ReferenceError(
            f"invalid reference format: repository name ({remote}) must be lowercase"
        )
    return parse(f"{domain}/{remainder}")


def parse_docker_ref(value: str) -> Reference:
    """Normalise; add ``latest`` to bare names; name:tag@digest keeps only the digest."""
    ref = parse_normalized_named(value)
    if ref.tag is not None and ref.digest is not None:
        return Reference(ref.domain, ref.path, None, ref.digest)
    return ref.tag_name_only()


def parse_any(value: str) -> Reference | str:
    """An image id (64 hex, or a full ``algo:hex`` digest) as the digest string, or a
    normalised name (``ParseAnyReference``)."""
    if _IDENTIFIER_RE.match(value):
        return "sha256:" + value
    try:
        return parse_digest(value)
    except ReferenceError:
        pass
    return parse_normalized_named(value)


def repo_tag_reference(repo: str, tag: str | None) -> Reference:
    """``repo`` and ``tag`` query parameters (tag, commit, import) → name:tag.

    moby's ``httputils.RepoTagReference``: digests are refused, a missing tag is latest.
    """
    if repo == "":
        raise ReferenceError("repository name must have at least one component")
    ref = parse_normalized_named(repo)
    if ref.digest is not None:
        raise ReferenceError("cannot import digest reference")
    if tag:
        return ref.trim().with_tag(tag)
    return ref.tag_name_only()


def familiar(ref: Reference | str) -> str:
    """The short display form of a reference (a normalised string is parsed first)."""
    if isinstance(ref, Reference):
        return ref.familiar()
    return parse_normalized_named(ref).familiar()


# ------------------------------------------------------------------------ matching
def familiar_match(pattern: str, ref: Reference) -> bool:
    """``reference.FamiliarMatch``: Go ``path.Match`` against the familiar string, then
    (for a miss) against the familiar name alone."""
    compiled = _compile_path_pattern(pattern)
    if compiled.match(ref.familiar()):
        return True
    return bool(compiled.match(ref.familiar_name()))


def _compile_path_pattern(pattern: str) -> re.Pattern[str]:
    """Go's ``path.Match`` syntax: ``*`` and ``?`` never match ``/``; ``[^…]`` negates;
    ``\\`` escapes. A malformed pattern is an error, as in Go."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\":
            i += 1
            if i >= len(pattern):
                raise InvalidParameter("syntax error in pattern")
            out.append(re.escape(pattern[i]))
        elif c == "[":
            i, cls = _char_class(pattern, i + 1)
            out.append(cls)
            continue
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("^" + "".join(out) + "$", re.DOTALL)


def _char_class(pattern: str, i: int) -> tuple[int, str]:
    negate = i < len(pattern) and pattern[i] == "^"
    if negate:
        i += 1
    parts: list[str] = []
    first = True
    while True:
        if i >= len(pattern):
            raise InvalidParameter("syntax error in pattern")
        if pattern[i] == "]" and not first:
            i += 1
            break
        first = False
        lo, i = _class_char(pattern, i)
        if i < len(pattern) and pattern[i] == "-":
            hi, i = _class_char(pattern, i + 1)
            if hi < lo:
                raise InvalidParameter("syntax error in pattern")
            parts.append(re.escape(lo) + "-" + re.escape(hi))
        else:
            parts.append(re.escape(lo))
    body = "".join(parts)
    # A negated class still never matches the separator, as in Go.
    return i, ("[^/" + body + "]") if negate else ("[" + body + "]")


def _class_char(pattern: str, i: int) -> tuple[str, int]:
    if i >= len(pattern) or pattern[i] in "-]":
        raise InvalidParameter("syntax error in pattern")
    if pattern[i] == "\\":
        i += 1
        if i >= len(pattern):
            raise InvalidParameter("syntax error in pattern")
    return pattern[i], i + 1
