"""Registry client pieces: credentials and challenges, manifests and platform choice,
parallel gzip, the streaming tar reader, and the HTTP client against a fake registry
on a unix socket (no TCP anywhere)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from engine.errors import NotFound
from engine.images.auth import (
    AuthConfig,
    TokenCache,
    decode_registry_auth,
    parse_challenges,
    token_from_response,
)
from engine.images.compress import gzip_parallel
from engine.images.manifest import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    ImageManifest,
    ManifestError,
    ManifestIndex,
    parse_manifest,
    select_platform,
)
from engine.images.platforms import Platform
from engine.images.pull import pull_reference, translate
from engine.images.registry import (
    Endpoint,
    Registries,
    RegistryError,
    error_from_body,
    unreachable,
)
from engine.images.tarstream import TarFormatError, TarReader
from tests.unit.fake_registry import FakeRegistry, digest_of, serve

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


# =========================================================================== auth
def _b64url(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode()


def test_registry_auth_header_decodes_padded_unpadded_and_std() -> None:
    creds = {"username": "u", "password": "p+/?", "serveraddress": "127.0.0.1:5001"}
    padded = _b64url(creds)
    assert decode_registry_auth(padded).credentials() == ("u", "p+/?")
    assert decode_registry_auth(padded.rstrip("=")).credentials() == ("u", "p+/?")
    std = base64.b64encode(json.dumps(creds).encode()).decode()
    assert decode_registry_auth(std).server_address == "127.0.0.1:5001"


@pytest.mark.parametrize("header", [None, "", "e30=", "!!!notbase64", _b64url([1, 2]),
                                    base64.b64encode(b"not json").decode()])
def test_registry_auth_garbage_is_anonymous(header: str | None) -> None:
    auth = decode_registry_auth(header)
    assert auth.anonymous and auth.credentials() is None


def test_auth_field_and_secrets_never_in_repr() -> None:
    auth = AuthConfig(auth=base64.b64encode(b"alice:s3cret").decode())
    assert auth.credentials() == ("alice", "s3cret")
    text = repr(AuthConfig(username="alice", password="s3cret", identity_token="tok"))
    assert "s3cret" not in text and "tok" not in text
    assert AuthConfig(username="a", password="b").identity() != AuthConfig().identity()


def test_parse_challenges() -> None:
    found = parse_challenges([
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/busybox:pull"',
        'Basic realm="basic-realm", Bearer realm="https://x/t",error="insufficient_scope"',
        'Basic realm="with \\"quotes\\" and, comma"',
    ])
    assert [c.scheme for c in found] == ["bearer", "basic", "bearer", "basic"]
    assert found[0].realm == "https://auth.docker.io/token"
    assert found[0].params["scope"] == "repository:library/busybox:pull"
    assert found[2].params == {"realm": "https://x/t", "error": "insufficient_scope"}
    assert found[3].realm == 'with "quotes" and, comma'
    assert parse_challenges(["", "   "]) == []


def test_token_response_and_cache_expiry() -> None:
    token = token_from_response({"access_token": "abc", "expires_in": 100}, now=1000.0)
    assert token.value == "abc" and token.expires == pytest.approx(1095.0)
    default = token_from_response({"token": "t"}, now=0.0)
    assert default.expires == pytest.approx(55.0)
    with pytest.raises(ValueError):
        token_from_response({"nothing": 1})
    cache = TokenCache()
    key = TokenCache.key("realm", "svc", ["repository:x:pull"], "id")
    cache.put(key, token)
    assert cache.get(key, now=1090.0) is token
    assert cache.get(key, now=1096.0) is None and len(cache) == 0


# =========================================================================== manifests
def _desc(digest: str, media_type: str = "", **platform: str) -> dict[str, object]:
    out: dict[str, object] = {"mediaType": media_type, "digest": digest, "size": 10}
    if platform:
        out["platform"] = platform
    return out


def test_parse_docker_and_oci_manifests() -> None:
    doc = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
           "config": _desc(D1, "application/vnd.docker.container.image.v1+json"),
           "layers": [_desc(D2, "application/vnd.docker.image.rootfs.diff.tar.gzip")]}
    parsed = parse_manifest(json.dumps(doc).encode(), "text/plain")
    assert isinstance(parsed, ImageManifest) and parsed.media_type == DOCKER_MANIFEST
    assert parsed.config.digest == D1 and parsed.layers[0].compression == "gzip"
    del doc["mediaType"]
    oci = parse_manifest(json.dumps(doc).encode(), OCI_MANIFEST)
    assert isinstance(oci, ImageManifest) and oci.media_type == OCI_MANIFEST


@pytest.mark.parametrize("doc,message", [
    ({"schemaVersion": 1, "name": "x"}, "schema 1 support has been removed"),
    ({"mediaType": DOCKER_MANIFEST, "config": _desc("sha256:12"), "layers": []},
     "invalid config digest"),
    ({"mediaType": DOCKER_MANIFEST, "config": {"digest": D1, "size": -1}, "layers": []},
     "invalid config size"),
    ({"mediaType": DOCKER_MANIFEST, "config": _desc(D1)}, "no layers"),
    ({"mediaType": "application/x-weird"}, "unsupported manifest media type"),
])
def test_bad_manifests(doc: dict[str, object], message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse_manifest(json.dumps(doc).encode(), None, "x:1")
    with pytest.raises(ManifestError):
        parse_manifest(b"{not json", None)


def _index() -> ManifestIndex:
    digests = ["sha256:" + c * 64 for c in "abcdef"]
    doc = {"mediaType": OCI_INDEX, "manifests": [
        _desc(digests[0], OCI_MANIFEST, os="linux", architecture="arm", variant="v6"),
        _desc(digests[1], OCI_MANIFEST, os="linux", architecture="arm64", variant="v8"),
        _desc(digests[2], OCI_MANIFEST, os="linux", architecture="amd64"),
        _desc(digests[3], OCI_MANIFEST, os="unknown", architecture="unknown"),
        _desc(digests[4], OCI_MANIFEST, os="linux", architecture="arm", variant="v7"),
        _desc(digests[5], OCI_MANIFEST, os="windows", architecture="amd64"),
    ]}
    parsed = parse_manifest(json.dumps(doc).encode(), DOCKER_MANIFEST_LIST)
    assert isinstance(parsed, ManifestIndex)
    return parsed


@pytest.mark.parametrize("wanted,expected", [
    ("linux/amd64", "c"), ("linux/arm64", "b"), ("linux/arm64/v8", "b"),
    ("linux/arm/v7", "e"), ("linux/arm/v6", "a"), ("linux/arm", "e"),
])
def test_platform_selection(wanted: str, expected: str) -> None:
    assert select_platform(_index(), Platform.parse(wanted)).digest == "sha256:" + expected * 64


def test_platform_fallback_and_no_match() -> None:
    index = _index()
    only_v6 = ManifestIndex(index.media_type, (index.manifests[0],))
    assert select_platform(only_v6, Platform.parse("linux/arm/v7")).digest.endswith("a" * 64)
    with pytest.raises(NotFound, match="no matching manifest for linux/arm/v5"):
        select_platform(only_v6, Platform.parse("linux/arm/v5"))
    with pytest.raises(NotFound, match="no matching manifest for linux/s390x"):
        select_platform(index, Platform.parse("linux/s390x"))


# =========================================================================== references
def test_pull_reference_rules() -> None:
    assert str(pull_reference("busybox", "latest")) == "docker.io/library/busybox:latest"
    by_digest = pull_reference("127.0.0.1:5000/x", D1)
    assert by_digest.digest == D1 and by_digest.tag is None
    assert pull_reference("127.0.0.1:5000/x", None).is_name_only
    assert pull_reference("x:", None).is_name_only  # "pull -a" sends a trailing ":"
    for image, tag, message in (("UPPER/x", "latest", "must be lowercase"),
                                ("busybox@sha256:1234", None, "invalid reference format"),
                                ("busybox", "bad tag", "invalid tag format")):
        with pytest.raises(Exception, match=message):
            pull_reference(image, tag)


def test_translate_registry_errors() -> None:
    ref = pull_reference("127.0.0.1:5000/nope", "latest")
    err = error_from_body(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest '
                               b'unknown"}]}')
    assert str(translate(err, ref)) == ("manifest for 127.0.0.1:5000/nope:latest not found: "
                                        "manifest unknown: manifest unknown")
    denied = error_from_body(403, b'{"errors":[{"code":"DENIED","message":"no"}]}')
    assert "pull access denied for 127.0.0.1:5000/nope" in str(translate(denied, ref))
    assert error_from_body(500, b"").message.startswith("received unexpected HTTP status: 500")
    refused = unreachable("GET", "http://127.0.0.1:1/v2/", aiohttp.ClientConnectorError(
        None, ConnectionRefusedError(111, "Connection refused")))  # type: ignore[arg-type]
    assert str(refused).endswith("dial tcp 127.0.0.1:1: connect: connection refused")


# =========================================================================== gzip
@pytest.mark.parametrize("data", [b"", b"x", os.urandom(3 << 20),
                                  b"compressible text " * 200_000])
def test_gzip_parallel_round_trip(data: bytes) -> None:
    out = bytearray()
    result = gzip_parallel(io.BytesIO(data).read, out.extend, chunk=256 << 10)
    assert gzip.decompress(bytes(out)) == data
    assert result.digest == digest_of(bytes(out)) and result.size == len(out)
    # GNU gzip reads it as one member too (and checks CRC and length)
    proc = subprocess.run(["gzip", "-t"], input=bytes(out), capture_output=True)
    assert proc.returncode == 0, proc.stderr


# =========================================================================== tar reader
def _tar(members: list[tuple[tarfile.TarInfo, bytes]], fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_tar_reader_formats(fmt: int) -> None:
    long_name = "d/" + "n" * 90 + "/" + "m" * 40 + ".txt"
    info = tarfile.TarInfo(long_name)
    info.size, info.mode, info.uid, info.mtime = 5, 0o640, 1000, 1_700_000_000
    link = tarfile.TarInfo("lnk")
    link.type, link.linkname = tarfile.SYMTYPE, "target/" + "t" * 60
    members = [(info, b"hello"), (link, b"")]
    if fmt == tarfile.PAX_FORMAT:
        xattr = tarfile.TarInfo("x")
        xattr.pax_headers = {"SCHILY.xattr.user.k": "v", "mtime": "1.5"}
        members.append((xattr, b""))
    reader = TarReader(io.BytesIO(_tar(members, fmt)))
    first = reader.next()
    assert first is not None and first.name == long_name and first.isreg()
    assert (first.size, first.mode, first.uid, int(first.mtime)) == (5, 0o640, 1000, 1_700_000_000)
    assert reader.read(100) == b"hello" and reader.read() == b""
    second = reader.next()
    assert second is not None and second.issym() and second.linkname == link.linkname
    if fmt == tarfile.PAX_FORMAT:
        third = reader.next()
        assert third is not None and third.pax_headers["SCHILY.xattr.user.k"] == "v"
        assert third.mtime == 1.5
    assert reader.next() is None


def test_tar_reader_refuses_corruption() -> None:
    info = tarfile.TarInfo("f")
    info.size = 3
    data = bytearray(_tar([(info, b"abc")], tarfile.USTAR_FORMAT))
    data[0] ^= 0x20  # the name changes, the checksum does not
    with pytest.raises(TarFormatError):
        TarReader(io.BytesIO(bytes(data))).next()
    assert TarReader(io.BytesIO(b"")).next() is None
    whole = _tar([(info, b"abc")], tarfile.USTAR_FORMAT)
    reader = TarReader(io.BytesIO(whole[:514]))  # two of the three data bytes
    assert reader.next() is not None
    with pytest.raises(TarFormatError):
        reader.next()
    # Ending inside the last member's padding is an end (the docker CLI's `-f -` context
    # ends so), not corruption: the data is all there.
    reader = TarReader(io.BytesIO(whole[:600]))
    assert reader.next() is not None
    assert reader.next() is None


# =========================================================================== HTTP client
@pytest_asyncio.fixture
async def fake(tmp_path: Path) -> AsyncIterator[tuple[FakeRegistry, Registries]]:
    registry = FakeRegistry()
    sock = tmp_path / "registry.sock"
    runner = await serve(registry, sock)
    registries = Registries(connector=lambda: aiohttp.UnixConnector(path=str(sock)))
    try:
        yield registry, registries
    finally:
        await registries.close()
        await runner.cleanup()


ENDPOINT = Endpoint("http://registry.test:5000", "registry.test:5000", verify_tls=False)


@pytest.mark.asyncio
async def test_client_bearer_flow_caches_the_token(
    fake: tuple[FakeRegistry, Registries]
) -> None:
    registry, registries = fake
    registry.auth = "bearer"
    blob = registry.add_blob(b"config")
    registry.add_manifest("lib/x", "1", b'{"schemaVersion":2}', DOCKER_MANIFEST)
    repo = registries.repository(ENDPOINT, "lib/x", AuthConfig(username="user", password="pass"))
    await repo.ping()
    data, media_type, digest = await repo.get_manifest("1")
    assert data == b'{"schemaVersion":2}' and media_type == DOCKER_MANIFEST
    assert digest == digest_of(data)
    assert await repo.read_blob(blob) == b"config"
    assert registry.hits["token"] == 1  # cached for the blob request
    assert registry.token_scopes[0] == ["repository:lib/x:pull"]
    anonymous = registries.repository(ENDPOINT, "lib/x", AuthConfig())
    with pytest.raises(RegistryError) as caught:
        await anonymous.get_manifest("1")
    assert caught.value.status == 401


@pytest.mark.asyncio
async def test_client_basic_flow_and_login(fake: tuple[FakeRegistry, Registries]) -> None:
    registry, registries = fake
    registry.auth = "basic"
    registry.add_manifest("x", "1", b"{}", DOCKER_MANIFEST)
    good = AuthConfig(username="user", password="pass")
    assert await registries.repository(ENDPOINT, "", good).login() == ""
    with pytest.raises(RegistryError, match="failed with status: 401 Unauthorized"):
        await registries.repository(ENDPOINT, "", AuthConfig(username="user",
                                                             password="bad")).login()
    repo = registries.repository(ENDPOINT, "x", good)
    assert (await repo.get_manifest("1"))[0] == b"{}"
    with pytest.raises(RegistryError, match="no basic auth credentials"):
        await registries.repository(ENDPOINT, "x", AuthConfig()).get_manifest("1")


@pytest.mark.asyncio
async def test_client_errors_and_uploads(fake: tuple[FakeRegistry, Registries]) -> None:
    registry, registries = fake
    repo = registries.repository(ENDPOINT, "x", AuthConfig(), push=True)
    with pytest.raises(RegistryError) as caught:
        await repo.get_manifest("nope")
    assert caught.value.code == "MANIFEST_UNKNOWN"
    assert await repo.head_blob(D1) is None
    data = os.urandom(100_000)
    location = await repo.start_upload()
    assert isinstance(location, str)
    location = await repo.upload_chunk(location, data[:60_000], 0, 60_000)
    location = await repo.upload_chunk(location, data[60_000:], 60_000, 40_000)
    await repo.finish_upload(location, digest_of(data))
    assert registry.blobs[digest_of(data)] == data and registry.hits["patch"] == 2
    assert await repo.head_blob(digest_of(data)) == len(data)
    mounted = await repo.start_upload((digest_of(data), "other"))
    assert not isinstance(mounted, str)
    digest = await repo.put_manifest("1", b'{"a":1}', DOCKER_MANIFEST)
    assert digest == digest_of(b'{"a":1}')


def test_insecure_rules() -> None:
    registries = Registries(insecure=["myreg:5000", "10.0.0.0/8"], mirrors=["https://m.test"])
    assert registries.is_insecure("127.0.0.1:5000") and registries.is_insecure("localhost:1")
    assert registries.is_insecure("[::1]:5000") and registries.is_insecure("myreg:5000")
    assert registries.is_insecure("10.2.3.4") and not registries.is_insecure("example.com")
    assert [e.base for e in registries.endpoints("127.0.0.1:5000")] == [
        "https://127.0.0.1:5000", "http://127.0.0.1:5000"]
    assert [e.base for e in registries.endpoints("example.com")] == ["https://example.com"]
    hub = registries.endpoints("docker.io")
    assert [e.base for e in hub] == ["https://m.test", "https://registry-1.docker.io"]
    assert hub[0].mirror and not registries.endpoints("docker.io", push=True)[0].mirror


def test_sha_helper() -> None:
    assert digest_of(b"") == "sha256:" + hashlib.sha256(b"").hexdigest()
