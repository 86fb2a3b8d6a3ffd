"""Query and body parsing with dockerd's rules (api/params.py)."""

from __future__ import annotations

import asyncio
import json
from unittest import mock
from urllib.parse import quote

import pytest
from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.test_utils import make_mocked_request

from api.params import (
    bool_param,
    bool_value,
    filters_param,
    int_param,
    parse_filters,
    read_json,
)
from engine.errors import InvalidParameter

ALLOWED = frozenset({"label", "status", "type"})


def query_request(query: str) -> web.Request:
    return make_mocked_request("GET", f"/x?{query}")


# --- booleans (moby httputils.BoolValue) --------------------------------------------------


@pytest.mark.parametrize(
    "raw", ["", "0", "no", "false", "none", "False", "FALSE", "No", "NONE", " false "]
)
def test_false_values(raw: str) -> None:
    assert bool_value(raw) is False


@pytest.mark.parametrize("raw", ["1", "true", "True", "yes", "on", "anything", "2"])
def test_true_values(raw: str) -> None:
    assert bool_value(raw) is True


def test_bool_absent_uses_default_present_empty_is_false() -> None:
    assert bool_param(query_request("a=1"), "b") is False
    assert bool_param(query_request("a=1"), "b", default=True) is True
    assert bool_param(query_request("b="), "b", default=True) is False
    assert bool_param(query_request("v=False&force=True"), "v") is False  # docker-py
    assert bool_param(query_request("v=False&force=True"), "force") is True


def test_int_param() -> None:
    assert int_param(query_request("t=10"), "t") == 10
    assert int_param(query_request("t=-1"), "t") == -1
    assert int_param(query_request("t="), "t", 5) == 5
    assert int_param(query_request("x=1"), "t") is None
    with pytest.raises(InvalidParameter, match="invalid value for t"):
        int_param(query_request("t=abc"), "t")


# --- filters ----------------------------------------------------------------------------


def test_filters_map_form_from_the_cli() -> None:
    raw = json.dumps({"label": {"app=x": True}, "status": {"running": True}})
    assert filters_param(query_request("filters=" + quote(raw)), ALLOWED) == {
        "label": ["app=x"],
        "status": ["running"],
    }


def test_filters_legacy_list_form_from_docker_py() -> None:
    raw = json.dumps({"label": ["app=x", "b"], "type": ["container"]})
    assert parse_filters(raw, ALLOWED) == {"label": ["app=x", "b"], "type": ["container"]}


def test_filters_map_values_are_ignored_like_moby() -> None:
    assert parse_filters('{"status":{"running":false}}', ALLOWED) == {"status": ["running"]}


@pytest.mark.parametrize("raw", [None, "", "  ", "null", "{}"])
def test_filters_empty(raw: str | None) -> None:
    assert parse_filters(raw, ALLOWED) == {}


def test_filters_unknown_key_names_it() -> None:
    with pytest.raises(InvalidParameter, match=r"^invalid filter 'relx'$"):
        parse_filters('{"relx":["x"]}', ALLOWED)


@pytest.mark.parametrize(
    "raw",
    [
        "{bad",
        "[1,2]",
        '"label"',
        '{"label":"x"}',
        '{"label":[1]}',
        '{"label":{"a":1}, "x":3}',
        "[" * 100_000,
    ],
)
def test_filters_malformed_are_invalid_parameter(raw: str) -> None:
    with pytest.raises(InvalidParameter, match=r"^invalid filter"):
        parse_filters(raw, ALLOWED)


# --- JSON bodies (B1-B5, L12) -------------------------------------------------------------


async def body_request(body: bytes, content_type: str | None = "application/json") -> web.Request:
    protocol = mock.Mock(_reading_paused=False)
    reader = StreamReader(protocol, 2**16, loop=asyncio.get_running_loop())
    reader.feed_data(body)
    reader.feed_eof()
    headers = {"Content-Length": str(len(body))}
    if content_type is not None:
        headers["Content-Type"] = content_type
    return make_mocked_request("POST", "/containers/create", headers=headers, payload=reader)


@pytest.mark.asyncio
async def test_read_json_object() -> None:
    assert await read_json(await body_request(b'{"Image":"busybox"}')) == {"Image": "busybox"}


@pytest.mark.asyncio
async def test_read_json_charset_in_content_type_is_fine() -> None:
    request = await body_request(b"{}", "application/json; charset=utf-8")
    assert await read_json(request) == {}


@pytest.mark.asyncio
@pytest.mark.parametrize("body", [b"", b"   ", b"null"])
async def test_read_json_empty_and_null_are_none(body: bytes) -> None:
    # B3: the caller decides ("Config cannot be empty in order to create a container")
    assert await read_json(await body_request(body)) is None


@pytest.mark.asyncio
async def test_empty_body_needs_no_content_type() -> None:
    assert await read_json(await body_request(b"", None)) is None
    assert await read_json(await body_request(b"", "text/plain")) is None


@pytest.mark.asyncio
async def test_b1_truncated_json() -> None:
    with pytest.raises(InvalidParameter, match=r"^invalid JSON: "):
        await read_json(await body_request(b'{"Image":"busybox",'))


@pytest.mark.asyncio
async def test_b2_wrong_shapes_are_returned_for_the_model_to_reject() -> None:
    assert await read_json(await body_request(b"[]")) == []
    assert await read_json(await body_request(b'{"Image":123}')) == {"Image": 123}


@pytest.mark.asyncio
@pytest.mark.parametrize("content_type", ["text/plain", None])
async def test_b4_content_type(content_type: str | None) -> None:
    shown = content_type or ""
    with pytest.raises(InvalidParameter) as caught:
        await read_json(await body_request(b'{"Image":"busybox"}', content_type))
    assert str(caught.value) == (
        f"unsupported Content-Type header ({shown}): must be 'application/json'"
    )


@pytest.mark.asyncio
async def test_b5_trailing_content() -> None:
    with pytest.raises(InvalidParameter, match=r"^unexpected content after JSON$"):
        await read_json(await body_request(b'{"Image":"busybox"} xyz'))


@pytest.mark.asyncio
async def test_b5_trailing_whitespace_is_fine_and_unknown_fields_are_kept() -> None:
    body = b'{"Image":"busybox","Bogus":1}\n\n '
    assert await read_json(await body_request(body)) == {"Image": "busybox", "Bogus": 1}


@pytest.mark.asyncio
async def test_l12_deep_nesting_is_400_not_a_crash() -> None:
    depth = 100_000
    with pytest.raises(InvalidParameter, match=r"^invalid JSON"):
        await read_json(await body_request(b"[" * depth + b"]" * depth))
