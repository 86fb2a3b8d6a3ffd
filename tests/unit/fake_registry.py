"""A tiny in-process Distribution v2 registry for unit tests, served on a unix socket.

The client reaches it through ``aiohttp.UnixConnector`` whatever host the URL names, so
no TCP socket is opened anywhere (tests may not use the network, loopback included,
outside a namespace of their own). It keeps blobs and manifests in memory and can ask
for HTTP basic or bearer-token auth (with its own token endpoint), flip a byte of any
blob it serves (reliability F15), and count what it was asked.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class FakeRegistry:
    auth: str = "none"  # "none", "basic", "bearer"
    user: str = "user"
    password: str = "pass"
    realm: str = "http://fake-auth/token"
    blobs: dict[str, bytes] = field(default_factory=dict)
    manifests: dict[tuple[str, str], tuple[bytes, str]] = field(default_factory=dict)
    corrupt: set[str] = field(default_factory=set)  # blob digests served with a flipped byte
    hits: Counter[str] = field(default_factory=Counter)
    token_scopes: list[list[str]] = field(default_factory=list)
    uploads: dict[str, bytearray] = field(default_factory=dict)

    # -- content ------------------------------------------------------------------------
    def add_blob(self, data: bytes) -> str:
        digest = digest_of(data)
        self.blobs[digest] = data
        return digest

    def add_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str:
        digest = digest_of(data)
        self.manifests[(repo, ref)] = (data, media_type)
        self.manifests[(repo, digest)] = (data, media_type)
        return digest

    # -- auth ---------------------------------------------------------------------------
    def _challenge(self, scope: str) -> web.Response:
        if self.auth == "basic":
            header = 'Basic realm="basic-realm"'
        else:
            header = f'Bearer realm="{self.realm}",service="fake",scope="{scope}"'
        body = json.dumps({"errors": [{"code": "UNAUTHORIZED",
                                       "message": "authentication required"}]})
        return web.Response(status=401, text=body, content_type="application/json",
                            headers={"WWW-Authenticate": header})

    def _basic_ok(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        expected = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return header == f"Basic {expected}"

    def _authorized(self, request: web.Request) -> bool:
        if self.auth == "none":
            return True
        if self.auth == "basic":
            return self._basic_ok(request)
        return request.headers.get("Authorization", "") == "Bearer good-token"

    async def token(self, request: web.Request) -> web.Response:
        self.hits["token"] += 1
        self.token_scopes.append(request.query.getall("scope", []))
        if not self._basic_ok(request):
            return web.Response(status=401, text="{}", content_type="application/json")
        return web.json_response({"token": "good-token", "expires_in": 300})

    # -- routes -------------------------------------------------------------------------
    async def ping(self, request: web.Request) -> web.Response:
        self.hits["ping"] += 1
        if not self._authorized(request):
            return self._challenge("")
        return web.json_response({})

    async def manifest(self, request: web.Request) -> web.Response:
        repo, ref = request.match_info["repo"], request.match_info["ref"]
        self.hits[f"manifest {repo}:{ref}"] += 1
        if not self._authorized(request):
            return self._challenge(f"repository:{repo}:pull")
        found = self.manifests.get((repo, ref))
        if found is None:
            body = json.dumps({"errors": [{"code": "MANIFEST_UNKNOWN",
                                           "message": "manifest unknown"}]})
            return web.Response(status=404, text=body, content_type="application/json")
        data, media_type = found
        return web.Response(body=data, headers={"Content-Type": media_type,
                                                "Docker-Content-Digest": digest_of(data)})

    async def blob(self, request: web.Request) -> web.StreamResponse:
        repo, digest = request.match_info["repo"], request.match_info["digest"]
        self.hits[f"blob {digest}"] += 1
        if not self._authorized(request):
            return self._challenge(f"repository:{repo}:pull")
        data = self.blobs.get(digest)
        if data is None:
            body = json.dumps({"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown"}]})
            return web.Response(status=404, text=body, content_type="application/json")
        if digest in self.corrupt:
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1:]
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": str(len(data))})
        return web.Response(body=data, content_type="application/octet-stream")

    async def start_upload(self, request: web.Request) -> web.Response:
        repo = request.match_info["repo"]
        if not self._authorized(request):
            return self._challenge(f"repository:{repo}:pull,push")
        mount = request.query.get("mount")
        if mount and mount in self.blobs:
            return web.Response(status=201)
        upload = f"u{len(self.uploads)}"
        self.uploads[upload] = bytearray()
        return web.Response(status=202,
                            headers={"Location": f"/v2/{repo}/blobs/uploads/{upload}"})

    async def patch_upload(self, request: web.Request) -> web.Response:
        upload = request.match_info["upload"]
        self.uploads[upload] += await request.read()
        self.hits["patch"] += 1
        return web.Response(status=202, headers={"Location": request.path})

    async def put_upload(self, request: web.Request) -> web.Response:
        upload = request.match_info["upload"]
        self.uploads[upload] += await request.read()
        digest = request.query["digest"]
        data = bytes(self.uploads.pop(upload))
        if digest_of(data) != digest:
            body = json.dumps({"errors": [{"code": "DIGEST_INVALID", "message": "bad"}]})
            return web.Response(status=400, text=body, content_type="application/json")
        self.blobs[digest] = data
        return web.Response(status=201)

    async def put_manifest(self, request: web.Request) -> web.Response:
        repo, ref = request.match_info["repo"], request.match_info["ref"]
        data = await request.read()
        digest = self.add_manifest(repo, ref, data, request.headers.get("Content-Type", ""))
        return web.Response(status=201, headers={"Docker-Content-Digest": digest})

    def app(self) -> web.Application:
        app = web.Application()
        r = app.router
        r.add_get("/token", self.token)
        r.add_get("/v2/", self.ping)
        r.add_get("/v2/{repo:.+}/manifests/{ref}", self.manifest)
        r.add_put("/v2/{repo:.+}/manifests/{ref}", self.put_manifest)
        r.add_get("/v2/{repo:.+}/blobs/{digest:sha256:[0-9a-f]+}", self.blob)
        r.add_post("/v2/{repo:.+}/blobs/uploads/", self.start_upload)
        r.add_patch("/v2/{repo:.+}/blobs/uploads/{upload}", self.patch_upload)
        r.add_put("/v2/{repo:.+}/blobs/uploads/{upload}", self.put_upload)
        return app


async def serve(registry: FakeRegistry, socket_path: Path) -> web.AppRunner:
    runner = web.AppRunner(registry.app())
    await runner.setup()
    await web.UnixSite(runner, str(socket_path)).start()
    return runner
