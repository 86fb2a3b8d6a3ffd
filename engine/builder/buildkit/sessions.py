"""Build sessions: the ``/session`` connections clients open, where wharfd is the gRPC
client of the services they expose (FileSync, Auth, Secrets; buildkit-notes §6).

A session registers under its ``X-Docker-Expose-Session-Uuid`` for as long as its
connection lives. A solve names its session, which may connect after the solve arrived,
so lookups wait for it (bounded).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from engine.builder.buildkit.grpcwire import Code, GrpcClientConnection, GrpcError
from engine.builder.buildkit.proto import wire_pb2 as pb
from engine.errors import InvalidParameter
from engine.images.auth import AuthConfig

SESSION_WAIT = 10.0
GET_SECRET = "/moby.buildkit.secrets.v1.Secrets/GetSecret"
CREDENTIALS = "/moby.filesync.v1.Auth/Credentials"


@dataclass(eq=False)
class Session:
    session_id: str
    shared_key: str
    methods: frozenset[str]
    conn: GrpcClientConnection

    def supports(self, method: str) -> bool:
        return method in self.methods

    async def secret(self, secret_id: str) -> bytes | None:
        """The client's secret ``secret_id`` (``--secret id=…``), None if it has none."""
        if not self.supports(GET_SECRET):
            return None
        request = pb.GetSecretRequest(ID=secret_id).SerializeToString()
        try:
            raw = await self.conn.unary(GET_SECRET, request)
        except GrpcError as exc:
            if exc.code in (Code.NOT_FOUND, Code.UNIMPLEMENTED):
                return None
            raise
        data: bytes = pb.GetSecretResponse.FromString(raw).data
        return data

    async def credentials(self, host: str) -> AuthConfig | None:
        """The client's credentials for registry ``host`` (its docker config), None when
        it has none: then the pull is anonymous. An empty username means the secret is
        an identity token."""
        if not self.supports(CREDENTIALS):
            return None
        request = pb.CredentialsRequest(Host=host).SerializeToString()
        try:
            answer = pb.CredentialsResponse.FromString(await self.conn.unary(CREDENTIALS,
                                                                             request))
        except GrpcError as exc:
            if exc.code in (Code.NOT_FOUND, Code.UNIMPLEMENTED):
                return None
            raise
        if not answer.Secret:
            return None
        if not answer.Username:
            return AuthConfig(identity_token=answer.Secret, server_address=host)
        return AuthConfig(username=answer.Username, password=answer.Secret,
                          server_address=host)


class SessionRegistry:
    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self._changed = asyncio.Condition()

    def check_new(self, session_id: str) -> None:
        """Refuse an id already connected (dockerd's 400, before the upgrade)."""
        if not session_id:
            raise InvalidParameter("no session id in request")
        if session_id in self._sessions:
            raise InvalidParameter(f"session {session_id} already exists")

    @contextlib.asynccontextmanager
    async def registered(self, session_id: str, shared_key: str, methods: Sequence[str],
                         conn: GrpcClientConnection) -> AsyncIterator[Session]:
        self.check_new(session_id)
        session = Session(session_id, shared_key, frozenset(methods), conn)
        async with self._changed:
            self._sessions[session_id] = session
            self._changed.notify_all()
        try:
            yield session
        finally:
            if self._sessions.get(session_id) is session:
                del self._sessions[session_id]

    async def get(self, session_id: str, wait: float = SESSION_WAIT) -> Session:
        """The connected session ``session_id``, waiting up to ``wait`` seconds for it."""
        async def connected() -> Session:
            async with self._changed:
                await self._changed.wait_for(lambda: session_id in self._sessions)
                return self._sessions[session_id]
        try:
            return await asyncio.wait_for(connected(), wait)
        except TimeoutError:
            raise GrpcError(Code.NOT_FOUND,
                            f"no active session for {session_id}: context deadline exceeded"
                            ) from None
