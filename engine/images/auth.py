"""Registry credentials and authentication challenges (pure parsing, no I/O).

- ``AuthConfig``: what ``X-Registry-Auth`` (base64url of JSON, api-notes §3.14) and the
  ``POST /auth`` body carry. Decoding is tolerant on purpose (reliability B29): anything
  unreadable is "anonymous", and nothing here ever puts a secret into a message or a
  ``repr``.
- ``parse_challenges``: ``WWW-Authenticate`` values (RFC 7235) → scheme + parameters,
  e.g. ``Bearer realm="https://auth/token",service="registry",scope="repository:x:pull"``.
- ``TokenCache``: bearer tokens per (realm, service, scopes, identity) until they expire.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_TOKEN_LIFETIME = 60  # seconds, when the token server says nothing (distribution)
_EARLY_EXPIRY = 5  # refresh a little before the server's deadline


@dataclass(frozen=True)
class AuthConfig:
    username: str = ""
    password: str = field(default="", repr=False)
    auth: str = field(default="", repr=False)
    email: str = ""
    server_address: str = ""
    identity_token: str = field(default="", repr=False)
    registry_token: str = field(default="", repr=False)

    def credentials(self) -> tuple[str, str] | None:
        """Username and password, from the fields or from ``auth`` (base64 user:pass)."""
        if self.username or self.password:
            return self.username, self.password
        if self.auth:
            try:
                text = base64.b64decode(self.auth + "=" * (-len(self.auth) % 4)).decode()
            except (binascii.Error, ValueError):
                return None
            user, sep, password = text.partition(":")
            if sep:
                return user, password
        return None

    @property
    def anonymous(self) -> bool:
        return self.credentials() is None and not self.identity_token and not self.registry_token

    def identity(self) -> str:
        """A stable, non-reversible key for caches (never the secret itself)."""
        creds = self.credentials()
        material = json.dumps([creds, self.identity_token, self.registry_token])
        return hashlib.sha256(material.encode()).hexdigest()[:16]


def auth_from_object(data: Any) -> AuthConfig:
    """An AuthConfig from decoded JSON; fields of the wrong type are ignored."""
    if not isinstance(data, Mapping):
        return AuthConfig()

    def text(key: str) -> str:
        value = data.get(key)
        return value if isinstance(value, str) else ""

    return AuthConfig(
        username=text("username"),
        password=text("password"),
        auth=text("auth"),
        email=text("email"),
        server_address=text("serveraddress"),
        identity_token=text("identitytoken"),
        registry_token=text("registrytoken"),
    )


def decode_registry_auth(header: str | None) -> AuthConfig:
    """``X-Registry-Auth``: base64url (padded or not; plain base64 accepted too) of a JSON
    AuthConfig. Empty, undecodable or not-JSON values mean anonymous, as for dockerd's
    pulls; the value is never echoed."""
    return auth_from_object(_decode_header_json(header))


def decode_registry_config(header: str | None) -> dict[str, AuthConfig]:
    """``X-Registry-Config`` (build): the same encoding, of a map registry → AuthConfig.
    Anything that does not decode is no credentials, never echoed (reliability B29)."""
    data = _decode_header_json(header)
    if not isinstance(data, Mapping):
        return {}
    return {str(k): auth_from_object(v) for k, v in data.items()}


def _decode_header_json(header: str | None) -> Any:
    """base64url (padded or not; plain base64 accepted too) of JSON; None when it is not."""
    if not header:
        return None
    raw = header.strip()
    padded = raw + "=" * (-len(raw) % 4)
    for decode in (base64.urlsafe_b64decode, base64.b64decode):
        try:
            return json.loads(decode(padded.encode("ascii")))
        except (binascii.Error, ValueError, UnicodeError):
            continue
    return None


# -------------------------------------------------------------------- challenges
@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "bearer", "basic"
    params: Mapping[str, str]  # keys in lower case

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")


_SEPARATORS = set('()<>@,;:\\"/[]?={} \t')


def _token(text: str, i: int) -> tuple[str, int]:
    start = i
    while i < len(text) and text[i] not in _SEPARATORS:
        i += 1
    return text[start:i], i


def _quoted(text: str, i: int) -> tuple[str, int]:
    """A quoted-string starting at ``text[i] == '"'``; backslash escapes one character."""
    out: list[str] = []
    i += 1
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    return "".join(out), i


def _skip(text: str, i: int, chars: str) -> int:
    while i < len(text) and text[i] in chars:
        i += 1
    return i


def parse_challenges(values: Iterable[str]) -> list[Challenge]:
    """Every challenge in the given ``WWW-Authenticate`` header values, in order."""
    found: list[Challenge] = []
    for value in values:
        scheme = ""
        params: dict[str, str] = {}
        i = 0
        while i < len(value):
            i = _skip(value, i, " \t,")
            word, i = _token(value, i)
            if not word:
                i += 1  # a stray separator (or token68 padding): skip it
                continue
            j = _skip(value, i, " \t")
            if j < len(value) and value[j] == "=" and scheme:
                j = _skip(value, j + 1, " \t")
                if j < len(value) and value[j] == '"':
                    param, i = _quoted(value, j)
                else:
                    param, i = _token(value, j)
                params[word.lower()] = param
                continue
            if j < len(value) and value[j] == "=":
                i = j + 1  # token68 of a scheme-less value: nothing to keep
                continue
            if scheme:
                found.append(Challenge(scheme, params))
            scheme, params = word.lower(), {}
            i = j
        if scheme:
            found.append(Challenge(scheme, params))
    return found


# -------------------------------------------------------------------- tokens
@dataclass(frozen=True)
class Token:
    value: str = field(repr=False)
    expires: float  # time.monotonic() deadline
    refresh_token: str = field(default="", repr=False)


def token_from_response(data: Any, now: float | None = None) -> Token:
    """A token server's JSON answer (``token`` or ``access_token``, ``expires_in``)."""
    if not isinstance(data, Mapping):
        raise ValueError("token server answered something that is not a JSON object")
    value = data.get("token") or data.get("access_token")
    if not isinstance(value, str) or not value:
        raise ValueError("token server answered without a token")
    lifetime = data.get("expires_in")
    if not isinstance(lifetime, int | float) or isinstance(lifetime, bool) or lifetime <= 0:
        lifetime = DEFAULT_TOKEN_LIFETIME
    refresh = data.get("refresh_token")
    start = time.monotonic() if now is None else now
    return Token(
        value=value,
        expires=start + max(float(lifetime) - _EARLY_EXPIRY, 1.0),
        refresh_token=refresh if isinstance(refresh, str) else "",
    )


class TokenCache:
    """Bearer tokens by (realm, service, scopes, identity), dropped once expired."""

    def __init__(self, max_entries: int = 512) -> None:
        self._tokens: dict[tuple[str, str, str, str], Token] = {}
        self._max = max_entries

    @staticmethod
    def key(realm: str, service: str, scopes: Iterable[str], identity: str) -> tuple[
        str, str, str, str
    ]:
        return realm, service, " ".join(sorted(set(scopes))), identity

    def get(self, key: tuple[str, str, str, str], now: float | None = None) -> Token | None:
        token = self._tokens.get(key)
        if token is None:
            return None
        if (time.monotonic() if now is None else now) >= token.expires:
            del self._tokens[key]
            return None
        return token

    def put(self, key: tuple[str, str, str, str], token: Token) -> None:
        if len(self._tokens) >= self._max:
            now = time.monotonic()
            for stale in [k for k, t in self._tokens.items() if t.expires <= now]:
                del self._tokens[stale]
            if len(self._tokens) >= self._max:
                self._tokens.pop(next(iter(self._tokens)))
        self._tokens[key] = token

    def __len__(self) -> int:
        return len(self._tokens)
