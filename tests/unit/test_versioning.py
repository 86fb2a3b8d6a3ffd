"""API version parsing, range checks and headers (api/versioning.py)."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from api.versioning import (
    API_VERSION,
    EXPERIMENTAL,
    MAX_VERSION,
    MIN_API_VERSION,
    REQUEST_VERSION,
    check_version,
    common_headers,
    compare_versions,
    handler_min_version,
    min_api_version,
    parse_version,
    request_version,
    server_header,
    version_in_path,
)
from engine.errors import InvalidParameter
from engine.system.info import ENGINE_VERSION


def test_claimed_range() -> None:
    assert (API_VERSION, MIN_API_VERSION) == ("1.50", "1.24")


@pytest.mark.parametrize(
    ("left", "right", "result"),
    [
        ("1.50", "1.50", 0),
        ("1.9", "1.24", -1),  # numeric, not lexical
        ("1.100", "1.50", 1),
        ("1", "1.0", 0),
        ("1.50.1", "1.50", 1),
        ("2.0", "1.50", 1),
        ("1.x", "1.0", 0),
    ],
)
def test_compare_like_moby(left: str, right: str, result: int) -> None:
    assert compare_versions(left, right) == result
    assert compare_versions(right, left) == -result


@pytest.mark.parametrize("raw", ["1.24", "1.30", "1.41", "1.50"])
def test_accepted(raw: str) -> None:
    assert check_version(raw) == parse_version(raw)


@pytest.mark.parametrize("raw", ["1.51", "1.99", "2.0", "1.50.1"])
def test_too_new(raw: str) -> None:
    with pytest.raises(InvalidParameter) as caught:
        check_version(raw)
    assert str(caught.value) == (
        f"client version {raw} is too new. Maximum supported API version is 1.50"
    )


@pytest.mark.parametrize("raw", ["1.23", "1.12", "1", "0.9"])
def test_too_old(raw: str) -> None:
    with pytest.raises(InvalidParameter) as caught:
        check_version(raw)
    assert str(caught.value) == (
        f"client version {raw} is too old. Minimum supported API version is 1.24, please "
        "upgrade your client to a newer version"
    )


@pytest.mark.parametrize(
    ("path", "version"),
    [
        ("/v1.41/containers/json", "1.41"),
        ("/v1.50", "1.50"),
        ("/v1/_ping", "1"),
        ("/version", None),
        ("/vabc/_ping", None),
        ("/volumes/x", None),
        ("/v1.41x/_ping", None),
    ],
)
def test_version_in_path(path: str, version: str | None) -> None:
    assert version_in_path(path) == version


def test_request_version_default_and_stored() -> None:
    request = make_mocked_request("GET", "/version")
    assert request_version(request) == MAX_VERSION
    request[REQUEST_VERSION] = (1, 41)
    assert request_version(request) == (1, 41)
    assert request_version(request) < (1, 42)


def test_min_api_version_marks_handler() -> None:
    @min_api_version("1.44")
    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    assert handler_min_version(handler) == "1.44"
    assert handler_min_version(lambda: None) is None


def test_common_headers() -> None:
    assert common_headers() == {
        "Api-Version": "1.50",
        "Server": f"Docker/{ENGINE_VERSION} (linux)",
        "Ostype": "linux",
        "Docker-Experimental": "false",
    }
    assert server_header() == f"Docker/{ENGINE_VERSION} (linux)"


def test_common_headers_follow_the_app_experimental_flag() -> None:
    app = web.Application()
    app[EXPERIMENTAL] = True
    request = make_mocked_request("GET", "/_ping", app=app)
    assert common_headers(request)["Docker-Experimental"] == "true"
