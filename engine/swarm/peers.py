"""Node-to-node HTTPS on the cluster port (``ListenAddr``, 2377 by default).

Managers serve it; every node is its client. The server asks for a client certificate but
does not require one at the TLS level, because a joining node has none yet: only
``GET /ca`` (the public root bundle) and ``POST /join`` (which checks the join token's
secret) are answered without one. Every other call needs a node certificate of this
cluster; its OU says the caller's role.

A joiner first fetches the root bundle over an unverified connection and checks it
against the CA digest in its token (:meth:`JoinToken.check_ca`): a manager whose CA does
not match is refused before the token's secret or anything else is sent. Only then does
it open a verified connection (server name ``swarm-manager``) and post the join.

This module serves HTTP with ``aiohttp.web`` inside ``engine``: it is a node-to-node
listener, not the Docker API (docs/decisions.md).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from pydantic import BaseModel, ValidationError

from engine.errors import (
    Conflict,
    EngineError,
    Forbidden,
    InvalidParameter,
    NotFound,
    Unauthorized,
    Unavailable,
)
from engine.swarm.ca import NodeIdentity, RootCA, identity_of_peer, parse_join_token

log = logging.getLogger(__name__)

MANAGER_SERVER_NAME = "swarm-manager"
REQUEST_TIMEOUT = 15.0
CONNECT_TIMEOUT = 3.0

# Engine error categories travel between nodes by name so the joiner can raise what the
# manager raised (a bad token stays a 400 on the joiner's API).
_CATEGORIES: dict[str, type[EngineError]] = {
    "NotFound": NotFound,
    "InvalidParameter": InvalidParameter,
    "Conflict": Conflict,
    "Forbidden": Forbidden,
    "Unauthorized": Unauthorized,
    "Unavailable": Unavailable,
}


# --------------------------------------------------------------------------- messages


class JoinPeerRequest(BaseModel):
    token: str
    csr: str
    advertise_addr: str  # IP the joiner is reached at (its certificate's IP SAN)
    listen_port: int  # its cluster port; etcd ports are +2 / +3 for a manager
    availability: str = "active"
    description: dict[str, Any]  # the Node.Description document


class JoinPeerAnswer(BaseModel):
    node_id: str
    cluster_id: str
    role: str
    ca_bundle: str
    certificate: str
    ca_key: str | None = None  # managers sign certificates too
    etcd_endpoints: list[str]  # the managers' etcd client URLs
    manager_addrs: list[str]  # the managers' cluster API addresses (ip:port)
    initial_cluster: str | None = None  # managers: etcd's --initial-cluster
    member_name: str | None = None
    member_id: int | None = None  # managers join as an etcd learner and promote it


class CertificateRequest(BaseModel):
    csr: str


class CertificateAnswer(BaseModel):
    role: str
    ca_bundle: str
    certificate: str
    ca_key: str | None = None


class PeerHandlers(Protocol):
    """What the manager behind the server does (engine.swarm.cluster.SwarmManager)."""

    def root_bundle(self) -> bytes: ...

    def cluster_id(self) -> str: ...

    async def handle_join(self, request: JoinPeerRequest) -> JoinPeerAnswer: ...

    async def handle_certificate(
        self, caller: NodeIdentity, request: CertificateRequest
    ) -> CertificateAnswer: ...


# --------------------------------------------------------------------------- server


def server_tls_context(cert_path: Path, key_path: Path, root: RootCA) -> ssl.SSLContext:
    """Our node certificate; a client certificate is asked for but optional (joiners)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_OPTIONAL
    context.load_verify_locations(cadata=root.bundle_pem.decode("ascii"))
    context.load_cert_chain(str(cert_path), str(key_path))
    return context


_HANDLERS = web.AppKey("handlers", PeerHandlers)


def _peer_identity(request: web.Request, handlers: PeerHandlers) -> NodeIdentity:
    """The caller's verified node certificate, or Unauthorized."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        raise Unauthorized("a node certificate is required")
    identity = identity_of_peer(der)
    if identity.cluster_id != handlers.cluster_id():
        raise Unauthorized("certificate is for another cluster")
    return identity


def _error(exc: EngineError) -> web.Response:
    status = {
        NotFound: 404,
        InvalidParameter: 400,
        Conflict: 409,
        Forbidden: 403,
        Unauthorized: 401,
        Unavailable: 503,
    }.get(type(exc), 500)
    for name, category in _CATEGORIES.items():
        if isinstance(exc, category):
            kind = name
            break
    else:
        kind = "EngineError"
    return web.json_response({"kind": kind, "message": str(exc)}, status=status)


@web.middleware
async def _errors(
    request: web.Request, handler: Any
) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except EngineError as exc:
        return _error(exc)
    except ValidationError as exc:
        return _error(InvalidParameter(f"invalid request: {exc.errors()[0].get('msg')}"))


async def _get_ca(request: web.Request) -> web.Response:
    return web.Response(body=request.app[_HANDLERS].root_bundle(),
                        content_type="application/x-pem-file")


async def _post_join(request: web.Request) -> web.Response:
    body = JoinPeerRequest.model_validate_json(await request.read())
    answer = await request.app[_HANDLERS].handle_join(body)
    return web.json_response(answer.model_dump(mode="json"))


async def _post_certificate(request: web.Request) -> web.Response:
    handlers = request.app[_HANDLERS]
    caller = _peer_identity(request, handlers)
    body = CertificateRequest.model_validate_json(await request.read())
    answer = await handlers.handle_certificate(caller, body)
    return web.json_response(answer.model_dump(mode="json"))


class PeerServer:
    """The HTTPS listener; ``start`` binds, ``close`` stops (connections are dropped)."""

    def __init__(
        self, handlers: PeerHandlers, host: str, port: int, tls: ssl.SSLContext
    ) -> None:
        self.tls = tls
        self._host, self._port = host, port
        app = web.Application(middlewares=[_errors], client_max_size=1 << 20)
        app[_HANDLERS] = handlers
        app.router.add_get("/ca", _get_ca)
        app.router.add_post("/join", _post_join)
        app.router.add_post("/certificate", _post_certificate)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self._host, self._port, ssl_context=self.tls, reuse_address=True
        )
        try:
            await site.start()
        except OSError as err:
            await self._runner.cleanup()
            raise InvalidParameter(
                f"failed to listen on remote API address: listen tcp "
                f"{self._host}:{self._port}: {err.strerror or err}"
            ) from err

    def reload_certificate(self, cert_path: Path, key_path: Path) -> None:
        """New connections present the new certificate (after a renewal or promotion)."""
        self.tls.load_cert_chain(str(cert_path), str(key_path))

    async def close(self) -> None:
        await self._runner.cleanup()


# --------------------------------------------------------------------------- client


def _url(addr: str, path: str) -> str:
    return f"https://{addr}{path}"


def _timeout() -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=REQUEST_TIMEOUT, sock_connect=CONNECT_TIMEOUT)


async def _raise_for_answer(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    try:
        body: dict[str, Any] = await resp.json(content_type=None)
    except ValueError:
        body = {}
    if resp.status == 200:
        return body
    category = _CATEGORIES.get(str(body.get("kind")), EngineError)
    raise category(str(body.get("message") or f"HTTP {resp.status}"))


async def fetch_root_bundle(addr: str, token_text: str) -> bytes:
    """The manager's root bundle, checked against the token's digest before anything
    else is sent (the connection is not verified yet: the digest is what verifies)."""
    token = parse_join_token(token_text)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context), timeout=_timeout()
        ) as session, session.get(_url(addr, "/ca")) as resp:
            if resp.status != 200:
                raise Unavailable(f"manager {addr} did not hand out its CA: HTTP {resp.status}")
            bundle = await resp.read()
    except (aiohttp.ClientError, TimeoutError, OSError) as err:
        raise Unavailable(f"could not reach manager {addr}: {err or type(err).__name__}") from err
    token.check_ca(bundle)
    return bundle


def client_tls_context(
    root_bundle: bytes, cert_path: Path | None = None, key_path: Path | None = None
) -> ssl.SSLContext:
    """Verify the manager against the swarm root only; present our certificate if any."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cadata=root_bundle.decode("ascii"))
    if cert_path is not None and key_path is not None:
        context.load_cert_chain(str(cert_path), str(key_path))
    return context


async def _post(
    addr: str, path: str, body: BaseModel, context: ssl.SSLContext
) -> dict[str, Any]:
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context), timeout=_timeout()
        ) as session, session.post(
            _url(addr, path),
            data=body.model_dump_json(),
            headers={"Content-Type": "application/json"},
            server_hostname=MANAGER_SERVER_NAME,
        ) as resp:
            return await _raise_for_answer(resp)
    except (aiohttp.ClientError, TimeoutError, OSError) as err:
        raise Unavailable(f"could not reach manager {addr}: {err or type(err).__name__}") from err


async def join(addr: str, root_bundle: bytes, request: JoinPeerRequest) -> JoinPeerAnswer:
    """Post a join to a manager already verified by :func:`fetch_root_bundle`."""
    answer = await _post(addr, "/join", request, client_tls_context(root_bundle))
    return JoinPeerAnswer.model_validate(answer)


async def request_certificate(
    addrs: list[str],
    root_bundle: bytes,
    cert_path: Path,
    key_path: Path,
    request: CertificateRequest,
) -> CertificateAnswer:
    """Ask any manager (in turn) for a certificate for our node's current role."""
    context = await asyncio.to_thread(client_tls_context, root_bundle, cert_path, key_path)
    failures: list[str] = []
    for addr in addrs:
        try:
            answer = await _post(addr, "/certificate", request, context)
        except Unavailable as err:
            failures.append(str(err))
            continue
        return CertificateAnswer.model_validate(answer)
    raise Unavailable("no manager answered: " + "; ".join(failures))
