"""api.models.gojson (bodies decoded as Go decodes them) and api.jsontext (text that can
always be encoded; listings that one bad record cannot break)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api import jsontext
from api.models.containers import parse_create_body, parse_update_body
from api.models.execs import check_exec_create
from api.models.gojson import decode
from api.models.hostconfig import HostConfig
from engine.errors import InvalidParameter


def _refusal(data: Any) -> str:
    with pytest.raises(InvalidParameter) as info:
        parse_create_body(data)
    return info.value.message


@pytest.mark.parametrize(("body", "message"), [
    ({"Image": 1},
     "invalid JSON: json: cannot unmarshal number into Go struct field CreateRequest.Image "
     "of type string"),
    ({"HostConfig": {"Memory": "1g"}},
     "invalid JSON: json: cannot unmarshal string into Go struct field "
     "HostConfig.HostConfig.Memory of type int64"),
    ({"HostConfig": {"CpuShares": 2**63}},
     "invalid JSON: json: cannot unmarshal number 9223372036854775808 into Go struct field "
     "HostConfig.HostConfig.CpuShares of type int64"),
    ({"HostConfig": {"BlkioWeight": True}},
     "invalid JSON: json: cannot unmarshal bool into Go struct field "
     "HostConfig.HostConfig.BlkioWeight of type uint16"),
    ({"HostConfig": {"Ulimits": [{"Soft": "x"}]}},
     "invalid JSON: json: cannot unmarshal string into Go struct field "
     "Ulimit.HostConfig.Ulimits.Soft of type int64"),
    ({"Labels": {"k": []}},
     "invalid JSON: json: cannot unmarshal array into Go struct field CreateRequest.Labels "
     "of type string"),
    ({"HostConfig": "x"},
     "invalid JSON: json: cannot unmarshal string into Go struct field "
     "CreateRequest.HostConfig of type HostConfig"),
    ([], "invalid JSON: json: cannot unmarshal array into Go value of type "
         "container.CreateRequest"),
    ({"Env": ["A=\x00"]}, "invalid Env: NUL byte (\\x00) not allowed: 'A=\\x00'"),
])
def test_go_decoder_messages(body: Any, message: str) -> None:
    assert _refusal(body) == message


def test_null_is_the_zero_value_and_unknown_keys_are_ignored() -> None:
    body = parse_create_body({"Image": "busybox", "Env": None, "Bogus": [1],
                              "HostConfig": {"Memory": None, "CapAdd": "NET_ADMIN",
                                             "Unknown": {"x": 1}}})
    assert body["Env"] is None
    assert body["HostConfig"] == {"CapAdd": ["NET_ADMIN"]}  # only what was given


def test_keys_match_without_regard_to_case_as_in_go() -> None:
    """docker-py sends ``detachKeys``; Go's decoder matches it to DetachKeys."""
    with pytest.raises(InvalidParameter, match=r"ExecOptions\.DetachKeys of type string"):
        check_exec_create({"Cmd": ["true"], "detachKeys": 1})
    assert parse_update_body({"memory": 7 * 2**20}) == {"Memory": 7 * 2**20}
    # an exact match wins over a case-insensitive one
    assert parse_update_body({"Memory": 8 * 2**20, "memory": "x"}) == {"Memory": 8 * 2**20}


def test_nested_structs_keep_the_shape_the_client_sent() -> None:
    mount = {"Type": "volume", "Target": "/x"}
    body = parse_create_body({"Image": "b", "HostConfig": {"Mounts": [mount]}})
    assert body["HostConfig"]["Mounts"] == [mount]


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["Memory", "CpuShares", "PidsLimit", "Binds",
                                        "RestartPolicy", "Ulimits", "CapAdd", "Sysctls"]),
                       st.recursive(st.none() | st.booleans() | st.integers() | st.floats()
                                    | st.text(max_size=4),
                                    lambda c: st.lists(c, max_size=2)
                                    | st.dictionaries(st.text(max_size=3), c, max_size=2),
                                    max_leaves=4),
                       max_size=3))
def test_any_json_is_decoded_or_refused_with_invalid_parameter(data: dict[str, Any]) -> None:
    try:
        decode(HostConfig, data, "container.HostConfig")
    except InvalidParameter as exc:
        assert exc.message.startswith(("invalid JSON: json: cannot unmarshal", "invalid "))


# ------------------------------------------------------------------ jsontext
def test_lone_surrogates_become_replacement_characters() -> None:
    value = json.loads('{"a\\ud800": ["\\udc00x", "\\ud83d\\ude00"]}')
    assert jsontext.replace_lone_surrogates(value) == {"a\ufffd": ["\ufffdx", "\U0001f600"]}
    assert json.loads(jsontext.encode({"k": "\ud800"})) == {"k": "\ufffd"}


def test_a_listing_leaves_out_the_record_it_cannot_render_and_logs_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def render(record: str) -> Any:
        if record == "bad":
            raise KeyError("Labels")
        return {"Id": record, "Text": "\ud800" if record == "odd" else "ok"}

    with caplog.at_level(logging.WARNING, logger="api.jsontext"):
        body = jsontext.encode_each(["a", "bad", "odd"], render, lambda r: f"container {r}",
                                    "containers")
    assert json.loads(body) == [{"Id": "a", "Text": "ok"}, {"Id": "odd", "Text": "\ufffd"}]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "container bad" in lines[0] and "\n" not in lines[0]


def test_a_create_body_with_keys_in_another_case_is_read_as_go_reads_it() -> None:
    body = parse_create_body({"image": "busybox", "hostconfig": {"memory": 7 * 2**20},
                              "networkingconfig": {"EndpointsConfig": {"n": {}}}})
    assert body["Image"] == "busybox"
    assert body["HostConfig"] == {"Memory": 7 * 2**20}
    assert body["NetworkingConfig"] == {"EndpointsConfig": {"n": {}}}


def test_null_inside_lists_and_maps_is_the_zero_value_as_in_go() -> None:
    body = parse_create_body({"Image": "b", "Labels": {"a": None},
                              "ExposedPorts": {"80/tcp": None},
                              "HostConfig": {"ConsoleSize": [None, 3]}})
    assert body["Labels"] == {"a": ""}
    assert body["ExposedPorts"] == {"80/tcp": {}}
    assert body["HostConfig"]["ConsoleSize"] == [0, 3]
    assert "of type struct {}" in _refusal({"Image": "b", "ExposedPorts": {"80/tcp": 1}})
