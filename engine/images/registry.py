"""The Distribution v2 client (an aiohttp *client*: the one place in engine that speaks
HTTP, allowed by the import contract in pyproject).

``Registries`` knows the daemon's registry settings (``insecure-registries``,
``registry-mirrors``; loopback is always insecure, as in dockerd) and turns a reference
domain into endpoints to try in order: mirrors first (pulls of docker.io only), then
HTTPS, then plain HTTP for insecure hosts. ``Repository`` is one repository on one
endpoint with one set of credentials; it answers the ``WWW-Authenticate`` challenges
(bearer tokens from the realm, cached until they expire; HTTP basic) and maps registry
error bodies (``{"errors":[{"code":…}]}``) to ``RegistryError``.

Connection failures raise ``RegistryUnreachable`` with Go's wording (``Get "…": dial
tcp …: connect: connection refused``) because clients and people grep for it; callers
use it to fall back to the next endpoint.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import logging
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from engine.errors import EngineError, InvalidParameter, Unauthorized
from engine.images.auth import (
    AuthConfig,
    Challenge,
    Token,
    TokenCache,
    parse_challenges,
    token_from_response,
)
from engine.images.manifest import ACCEPT

log = logging.getLogger(__name__)

DOCKER_IO = "docker.io"
DOCKER_IO_API = "registry-1.docker.io"
DOCKER_IO_INDEX = "index.docker.io"
DEFAULT_INSECURE_CIDRS = ("127.0.0.0/8", "::1/128")
USER_AGENT = "wharfd/0.1 (linux)"
CLIENT_ID = "docker"
_READ_CHUNK = 1 << 20


class RegistryError(EngineError):
    """The registry answered with an error. ``code`` is its errcode (``MANIFEST_UNKNOWN``,
    ``UNAUTHORIZED``, …) or empty; ``status`` the HTTP status."""

    def __init__(self, message: str, status: int, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class RegistryUnreachable(EngineError):
    """The endpoint could not be talked to (connection, TLS): try the next one."""


@dataclass(frozen=True)
class Endpoint:
    base: str  # "https://127.0.0.1:5000"
    host: str  # "127.0.0.1:5000" (what the reference names)
    mirror: bool = False
    verify_tls: bool = True

    @property
    def v2(self) -> str:
        return self.base.rstrip("/") + "/v2/"


def split_host_port(host: str) -> tuple[str, int | None]:
    if host.startswith("["):
        addr, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return addr, int(port) if port.isdigit() else None
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit():
        return name, int(port)
    return host, None


# -------------------------------------------------------------------- the registry set
class Registries:
    def __init__(
        self,
        insecure: Sequence[str] = (),
        mirrors: Sequence[str] = (),
        *,
        connector: Callable[[], aiohttp.BaseConnector] | None = None,
    ) -> None:
        self._insecure_hosts: set[str] = set()
        self._insecure_nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = [
            ipaddress.ip_network(c) for c in DEFAULT_INSECURE_CIDRS
        ]
        for entry in insecure:
            text = entry.strip().removeprefix("http://").removeprefix("https://").rstrip("/")
            try:
                self._insecure_nets.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                self._insecure_hosts.add(text.lower())
        self._mirrors = [m.rstrip("/") for m in mirrors]
        self._connector = connector
        self._session: aiohttp.ClientSession | None = None
        self._session_lock = asyncio.Lock()
        self.tokens = TokenCache()
        self.challenges: dict[str, list[Challenge]] = {}  # endpoint base → last challenges
        self._working: dict[str, str] = {}  # host → base that answered last time

    # -- settings -----------------------------------------------------------------------
    def is_insecure(self, host: str) -> bool:
        """dockerd's rule: listed hosts, listed CIDRs, and loopback are insecure (plain
        HTTP allowed, certificates not checked). Host names are not resolved."""
        lowered = host.lower()
        if lowered in self._insecure_hosts:
            return True
        name, _port = split_host_port(lowered)
        if name in self._insecure_hosts or name == "localhost":
            return True
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            return False
        return any(address in net for net in self._insecure_nets)

    def endpoints(self, domain: str, *, push: bool = False) -> list[Endpoint]:
        """Where to talk to the registry of ``domain``, in the order to try."""
        if domain == DOCKER_IO:
            found = [] if push else [
                Endpoint(m, DOCKER_IO, mirror=True, verify_tls=not self._mirror_insecure(m))
                for m in self._mirrors
            ]
            return [*found, Endpoint(f"https://{DOCKER_IO_API}", DOCKER_IO)]
        if not self.is_insecure(domain):
            return [Endpoint(f"https://{domain}", domain)]
        candidates = [
            Endpoint(f"https://{domain}", domain, verify_tls=False),
            Endpoint(f"http://{domain}", domain, verify_tls=False),
        ]
        # Remember which scheme answered: saves a failed TLS handshake on every request.
        last = self._working.get(domain)
        candidates.sort(key=lambda e: e.base != last)
        return candidates

    def _mirror_insecure(self, url: str) -> bool:
        host = urllib.parse.urlsplit(url).netloc
        return url.startswith("http://") or self.is_insecure(host)

    def note_working(self, endpoint: Endpoint) -> None:
        if not endpoint.mirror:
            self._working[endpoint.host] = endpoint.base

    def adopt_settings(self, other: Registries) -> None:
        """Take ``other``'s insecure registries and mirrors (a configuration reload); the
        session and token caches stay. Remembered schemes are forgotten: they may differ."""
        self._insecure_hosts = other._insecure_hosts
        self._insecure_nets = other._insecure_nets
        self._mirrors = other._mirrors
        self._working.clear()

    # -- the HTTP session ----------------------------------------------------------------
    async def session(self) -> aiohttp.ClientSession:
        async with self._session_lock:
            if self._session is None or self._session.closed:
                connector = self._connector() if self._connector else aiohttp.TCPConnector(
                    limit=32, ttl_dns_cache=60, enable_cleanup_closed=True
                )
                self._session = aiohttp.ClientSession(
                    connector=connector,
                    auto_decompress=False,  # blobs are verified byte for byte
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=300),
                    headers={"User-Agent": USER_AGENT},
                )
            return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def repository(
        self, endpoint: Endpoint, path: str, auth: AuthConfig, push: bool = False
    ) -> Repository:
        return Repository(self, endpoint, path, auth, push)

    # -- login and search ----------------------------------------------------------------
    async def login(self, auth: AuthConfig) -> str:
        """``POST /auth``: check the credentials against the registry's ``/v2/``; returns
        the identity token the token server gave (often empty)."""
        address = auth.server_address or DOCKER_IO_INDEX
        if "://" not in address:
            address = "https://" + address
        host = urllib.parse.urlsplit(address).netloc
        if not host:
            raise InvalidParameter("unable to parse server address")
        domain = DOCKER_IO if host in (DOCKER_IO_INDEX, DOCKER_IO, DOCKER_IO_API) else host
        last: EngineError | None = None
        for endpoint in self.endpoints(domain, push=True):
            try:
                return await Repository(self, endpoint, "", auth, push=False).login()
            except RegistryUnreachable as exc:
                last = exc
                continue
            except RegistryError as exc:
                if exc.status == 401:
                    raise Unauthorized(exc.message) from None
                raise
        assert last is not None
        raise last

    async def search(self, term: str, limit: int) -> list[dict[str, Any]]:
        """The v1 search API of the index that ``term`` names (docker.io by default)."""
        first, sep, rest = term.partition("/")
        if sep and ("." in first or ":" in first or first == "localhost"):
            host, query = first, rest
        else:
            host, query = DOCKER_IO_INDEX, term
        scheme_hosts = (
            [("https", host), ("http", host)] if self.is_insecure(host) else [("https", host)]
        )
        session = await self.session()
        last: EngineError | None = None
        for scheme, name in scheme_hosts:
            url = f"{scheme}://{name}/v1/search?" + urllib.parse.urlencode(
                {"q": query, "n": str(limit)}
            )
            try:
                async with session.get(url, ssl=scheme != "https") as resp:
                    if resp.status != 200:
                        raise RegistryError(f"Unexpected status code {resp.status}",
                                            resp.status)
                    data = await resp.json(content_type=None)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                last = unreachable("GET", url, exc)
                continue
            results = data.get("results") if isinstance(data, dict) else None
            return [r for r in results if isinstance(r, dict)] if isinstance(results, list) else []
        assert last is not None
        raise last


def unreachable(method: str, url: str, exc: BaseException) -> RegistryUnreachable:
    """Go's error text for a failed request (``Get "url": dial tcp h:p: connect: …``)."""
    verb = method.capitalize()
    parts = urllib.parse.urlsplit(url)
    target = parts.netloc
    if ":" not in target.rsplit("]", 1)[-1]:
        target += ":443" if parts.scheme == "https" else ":80"
    cause: BaseException = exc
    while cause.__cause__ is not None:  # the innermost error says what happened
        cause = cause.__cause__
    if isinstance(cause, aiohttp.ClientConnectorError) and cause.os_error is not None:
        cause = cause.os_error
    if isinstance(cause, ConnectionRefusedError):
        reason = f"dial tcp {target}: connect: connection refused"
    elif isinstance(cause, ssl.SSLError):
        reason = f"tls: {getattr(cause, 'reason', None) or cause}".lower()
    elif isinstance(cause, OSError) and cause.strerror:
        reason = f"dial tcp {target}: {cause.strerror.lower()}"
    elif isinstance(exc, asyncio.TimeoutError | TimeoutError):
        reason = "net/http: request canceled (Client.Timeout exceeded)"
    else:
        reason = str(exc) or type(exc).__name__
    return RegistryUnreachable(f'{verb} "{url}": {reason}')


def error_from_body(status: int, body: bytes, fallback_code: str = "") -> RegistryError:
    """A registry error body → RegistryError with distribution's ``code: message``."""
    try:
        doc = json.loads(body) if body else None
    except ValueError:
        doc = None
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        code = str(errors[0].get("code") or "UNKNOWN")
        message = str(errors[0].get("message") or code.lower().replace("_", " "))
        return RegistryError(f"{code.lower().replace('_', ' ')}: {message}", status, code)
    if fallback_code:
        text = fallback_code.lower().replace("_", " ")
        return RegistryError(f"{text}: {text}", status, fallback_code)
    if status == 401:
        return RegistryError("unauthorized: authentication required", status, "UNAUTHORIZED")
    reason = _REASONS.get(status, "")
    return RegistryError(f"received unexpected HTTP status: {status} {reason}".strip(), status)


_REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 500: "Internal Server Error", 502: "Bad Gateway",
            503: "Service Unavailable"}


# -------------------------------------------------------------------- one repository
@dataclass
class BlobStream:
    """An open blob download: its size (from Content-Length) and its bytes."""

    size: int | None
    response: aiohttp.ClientResponse = field(repr=False)

    def chunks(self) -> AsyncIterator[bytes]:
        return self.response.content.iter_any()


@dataclass(frozen=True)
class Mounted:
    """A cross-repository mount succeeded: the blob is there, nothing to upload."""

    digest: str


class Repository:
    def __init__(
        self, registries: Registries, endpoint: Endpoint, path: str, auth: AuthConfig,
        push: bool,
    ) -> None:
        self._reg = registries
        self.endpoint = endpoint
        self.path = path
        self._auth = auth
        self._actions = "pull,push" if push else "pull"
        self._extra_scopes: set[str] = set()

    # -- URLs and scopes -----------------------------------------------------------------
    def url(self, tail: str) -> str:
        return f"{self.endpoint.v2}{self.path}/{tail}"

    def _scopes(self) -> list[str]:
        if not self.path:
            return []
        return [f"repository:{self.path}:{self._actions}", *sorted(self._extra_scopes)]

    def add_pull_scope(self, path: str) -> None:
        """Also ask for pull access to ``path`` (the source of a cross-repo mount)."""
        self._extra_scopes.add(f"repository:{path}:pull")

    def _ssl(self) -> bool:
        """aiohttp's ``ssl``: True verifies certificates, False does not (insecure)."""
        return self.endpoint.verify_tls or not self.endpoint.base.startswith("https://")

    # -- authentication ------------------------------------------------------------------
    async def _authorization(self, challenges: Sequence[Challenge]) -> str | None:
        for challenge in challenges:
            if challenge.scheme == "bearer":
                return "Bearer " + await self._bearer_token(challenge)
        for challenge in challenges:
            if challenge.scheme == "basic":
                creds = self._auth.credentials()
                if creds is None:
                    raise RegistryError("no basic auth credentials", 401, "UNAUTHORIZED")
                return _basic(*creds)
        return None

    async def _bearer_token(self, challenge: Challenge, scopes: Iterable[str] | None = None) -> str:
        if self._auth.registry_token:
            return self._auth.registry_token
        realm = challenge.realm
        service = challenge.params.get("service", "")
        wanted = list(self._scopes() if scopes is None else scopes)
        if "scope" in challenge.params and not wanted:
            wanted = [challenge.params["scope"]]
        key = TokenCache.key(realm, service, wanted, self._auth.identity())
        cached = self._reg.tokens.get(key)
        if cached is not None:
            return cached.value
        token = await self._fetch_token(realm, service, wanted)
        self._reg.tokens.put(key, token)
        return token.value

    async def _fetch_token(self, realm: str, service: str, scopes: Sequence[str]) -> Token:
        if not realm.startswith(("http://", "https://")):
            raise RegistryError(f"invalid token realm {realm!r}", 401, "UNAUTHORIZED")
        session = await self._reg.session()
        creds = self._auth.credentials()
        try:
            if self._auth.identity_token:
                form = {"grant_type": "refresh_token", "refresh_token": self._auth.identity_token,
                        "service": service, "client_id": CLIENT_ID,
                        "scope": " ".join(scopes)}
                request = session.post(realm, data=form, ssl=self._ssl())
            else:
                params: list[tuple[str, str]] = []
                if service:
                    params.append(("service", service))
                params += [("scope", s) for s in scopes]
                headers = {}
                if creds is not None:
                    params.append(("account", creds[0]))
                    headers["Authorization"] = _basic(*creds)
                if not scopes:
                    params += [("client_id", CLIENT_ID), ("offline_token", "true")]
                request = session.get(realm, params=params, headers=headers, ssl=self._ssl())
            async with request as resp:
                body = await resp.read()
                if resp.status != 200:
                    if resp.status == 401:
                        raise RegistryError(
                            "unauthorized: incorrect username or password", 401, "UNAUTHORIZED"
                        )
                    raise error_from_body(resp.status, body)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise unreachable("GET", realm, exc) from exc
        try:
            return token_from_response(json.loads(body))
        except ValueError as exc:
            raise RegistryError(f"unable to decode token response: {exc}", 401,
                                "UNAUTHORIZED") from None

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        data: Any = None,
        params: Mapping[str, str] | None = None,
        replayable: bool = True,
    ) -> aiohttp.ClientResponse:
        """Send one request, answering one authentication challenge. The caller must
        release (``async with``) the response. Connection errors → RegistryUnreachable."""
        session = await self._reg.session()
        send_headers = dict(headers or {})
        known = self._reg.challenges.get(self.endpoint.base)
        if known:
            try:
                authorization = await self._authorization(known)
            except RegistryError as exc:
                if exc.message != "no basic auth credentials":
                    raise
                raise RegistryError(
                    f'{method.capitalize()} "{url}": no basic auth credentials', 401,
                    "UNAUTHORIZED",
                ) from None
            if authorization:
                send_headers["Authorization"] = authorization
        for attempt in range(2):
            try:
                resp = await session.request(
                    method, url, headers=send_headers, data=data, params=params,
                    ssl=self._ssl(), allow_redirects=True,
                )
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise unreachable(method, url, exc) from exc
            if resp.status != 401 or attempt == 1 or not replayable:
                return resp
            challenges = parse_challenges(resp.headers.getall("WWW-Authenticate", []))
            if not challenges:
                return resp
            body = await resp.read()
            resp.release()
            self._reg.challenges[self.endpoint.base] = challenges
            try:
                authorization = await self._authorization(challenges)
            except RegistryError as exc:
                if exc.message == "no basic auth credentials":
                    raise RegistryError(
                        f'{method.capitalize()} "{url}": no basic auth credentials', 401,
                        "UNAUTHORIZED",
                    ) from None
                raise
            if authorization is None or send_headers.get("Authorization") == authorization:
                raise error_from_body(401, body)
            send_headers["Authorization"] = authorization
        raise AssertionError("unreachable")

    async def ping(self) -> None:
        """GET /v2/ without credentials: any HTTP answer means the endpoint speaks to us
        (its challenge is remembered for the requests that follow)."""
        url = self.endpoint.v2
        session = await self._reg.session()
        try:
            async with session.get(url, ssl=self._ssl()) as resp:
                await resp.read()
                challenges = parse_challenges(resp.headers.getall("WWW-Authenticate", []))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise unreachable("GET", url, exc) from exc
        if challenges:
            self._reg.challenges[self.endpoint.base] = challenges
        self._reg.note_working(self.endpoint)

    async def login(self) -> str:
        """GET /v2/ with the credentials; the identity token when the server gave one."""
        url = self.endpoint.v2
        session = await self._reg.session()
        try:
            async with session.get(url, ssl=self._ssl()) as resp:
                await resp.read()
                if resp.status == 200:
                    self._reg.note_working(self.endpoint)
                    return ""
                challenges = parse_challenges(resp.headers.getall("WWW-Authenticate", []))
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise unreachable("GET", url, exc) from exc
        self._reg.note_working(self.endpoint)
        failed = f"login attempt to {url} failed with status: 401 Unauthorized"
        for challenge in challenges:
            if challenge.scheme == "bearer":
                try:
                    token = await self._fetch_token(
                        challenge.realm, challenge.params.get("service", ""), []
                    )
                except RegistryError as exc:
                    raise RegistryError(failed if exc.status == 401 else exc.message, 401,
                                        "UNAUTHORIZED") from None
                return token.refresh_token
        creds = self._auth.credentials()
        if creds is None:
            raise RegistryError(failed, 401, "UNAUTHORIZED")
        try:
            async with session.get(
                url, ssl=self._ssl(), headers={"Authorization": _basic(*creds)}
            ) as resp:
                await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise unreachable("GET", url, exc) from exc
        if status != 200:
            reason = _REASONS.get(status, "")
            raise RegistryError(
                f"login attempt to {url} failed with status: {status} {reason}".strip(),
                401 if status == 401 else 500, "UNAUTHORIZED" if status == 401 else "",
            )
        return ""

    # -- manifests -----------------------------------------------------------------------
    async def get_manifest(self, reference: str) -> tuple[bytes, str, str]:
        """(bytes, Content-Type, Docker-Content-Digest or "") of a tag or digest."""
        url = self.url(f"manifests/{reference}")
        async with await self.request("GET", url, headers={"Accept": ACCEPT}) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise error_from_body(resp.status, body,
                                      "MANIFEST_UNKNOWN" if resp.status == 404 else "")
            self._reg.note_working(self.endpoint)
            return (body, resp.headers.get("Content-Type", ""),
                    resp.headers.get("Docker-Content-Digest", ""))

    async def put_manifest(self, reference: str, data: bytes, media_type: str) -> str:
        url = self.url(f"manifests/{reference}")
        async with await self.request(
            "PUT", url, headers={"Content-Type": media_type}, data=data
        ) as resp:
            body = await resp.read()
            if resp.status not in (200, 201, 202):
                raise error_from_body(resp.status, body)
            return resp.headers.get("Docker-Content-Digest", "")

    async def list_tags(self) -> list[str]:
        async with await self.request("GET", self.url("tags/list")) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise error_from_body(resp.status, body,
                                      "NAME_UNKNOWN" if resp.status == 404 else "")
        try:
            tags = json.loads(body).get("tags")
        except (ValueError, AttributeError):
            tags = None
        return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []

    # -- blobs ---------------------------------------------------------------------------
    async def head_blob(self, digest: str) -> int | None:
        """The blob's size when the repository has it, else None."""
        async with await self.request("HEAD", self.url(f"blobs/{digest}")) as resp:
            if resp.status == 200:
                length = resp.headers.get("Content-Length")
                return int(length) if length and length.isdigit() else 0
            if resp.status == 404:
                return None
            raise error_from_body(resp.status, b"")

    @contextlib.asynccontextmanager
    async def open_blob(self, digest: str) -> AsyncIterator[BlobStream]:
        async with await self.request("GET", self.url(f"blobs/{digest}")) as resp:
            if resp.status != 200:
                body = await resp.read()
                raise error_from_body(resp.status, body,
                                      "BLOB_UNKNOWN" if resp.status == 404 else "")
            yield BlobStream(resp.content_length, resp)

    async def read_blob(self, digest: str, limit: int = 64 << 20) -> bytes:
        """A small blob (a config) in memory; refuses more than ``limit`` bytes."""
        async with self.open_blob(digest) as blob:
            if blob.size is not None and blob.size > limit:
                raise RegistryError(f"blob {digest} is too large ({blob.size} bytes)", 500)
            data = bytearray()
            async for chunk in blob.chunks():
                data += chunk
                if len(data) > limit:
                    raise RegistryError(f"blob {digest} is too large", 500)
            return bytes(data)

    # -- uploads -------------------------------------------------------------------------
    async def start_upload(self, mount_from: tuple[str, str] | None = None) -> str | Mounted:
        """POST an upload session (or a cross-repository mount of ``(digest, from)``);
        returns the upload location, or Mounted when the registry mounted the blob."""
        params = {"mount": mount_from[0], "from": mount_from[1]} if mount_from else None
        async with await self.request(
            "POST", self.url("blobs/uploads/"), params=params, headers={"Content-Length": "0"}
        ) as resp:
            body = await resp.read()
            if resp.status == 201 and mount_from is not None:
                return Mounted(mount_from[0])
            if resp.status != 202:
                raise error_from_body(resp.status, body)
            return self._location(resp)

    def _location(self, resp: aiohttp.ClientResponse) -> str:
        location = resp.headers.get("Location", "")
        if not location:
            raise RegistryError("registry did not return an upload location", resp.status)
        return urllib.parse.urljoin(self.endpoint.base + "/", location)

    async def upload_chunk(self, location: str, data: Any, offset: int | None = None,
                           length: int | None = None) -> str:
        """PATCH bytes (or a stream of them) into an upload; returns the next location.
        With ``offset``/``length`` the request carries a Content-Range (a chunk of a
        chunked upload); without, it is one streamed request."""
        headers = {"Content-Type": "application/octet-stream"}
        if offset is not None and length is not None:
            headers["Content-Range"] = f"{offset}-{offset + length - 1}"
            headers["Content-Length"] = str(length)
        async with await self.request(
            "PATCH", location, headers=headers, data=data, replayable=False
        ) as resp:
            body = await resp.read()
            if resp.status != 202:
                raise error_from_body(resp.status, body)
            return self._location(resp)

    async def finish_upload(self, location: str, digest: str, data: bytes = b"") -> None:
        """PUT the last bytes (monolithic upload: all of them) and the digest."""
        url = _with_query(location, {"digest": digest})
        async with await self.request(
            "PUT", url, headers={"Content-Type": "application/octet-stream"}, data=data
        ) as resp:
            body = await resp.read()
            if resp.status not in (201, 204):
                raise error_from_body(resp.status, body)


def _basic(user: str, password: str) -> str:
    """An HTTP basic ``Authorization`` value."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _with_query(url: str, extra: Mapping[str, str]) -> str:
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    query += list(extra.items())
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))
