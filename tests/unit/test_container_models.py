"""The create body's type checks and the inspect/list shapes clients dereference."""

from __future__ import annotations

import time

import pytest

from api.models.containers import _human_duration, inspect_body, list_item, parse_create_body
from engine.containers.model import ContainerConfig, ContainerState, ContainerView
from engine.containers.state import Status
from engine.errors import InvalidParameter


def test_empty_body_is_rejected() -> None:
    with pytest.raises(InvalidParameter, match="Config cannot be empty"):
        parse_create_body(None)


@pytest.mark.parametrize(
    "body", [{"Image": 123}, {"Image": "x", "HostConfig": {"Memory": "lots"}}, []]
)
def test_wrong_types_are_invalid_json(body: object) -> None:
    with pytest.raises(InvalidParameter, match=r"^invalid JSON: json: cannot unmarshal"):
        parse_create_body(body)


def test_string_cmd_is_a_one_element_list_and_unknown_fields_ignored() -> None:
    parsed = parse_create_body({"Image": "busybox", "Cmd": "sh", "Bogus": 1})
    assert parsed["Cmd"] == ["sh"]
    assert "Bogus" not in parsed


def test_host_config_keeps_unmodelled_keys() -> None:
    parsed = parse_create_body({"Image": "b", "HostConfig": {"Memory": 5, "OomKillDisable": True}})
    assert parsed["HostConfig"]["OomKillDisable"] is True


def _view(status: Status = Status.RUNNING) -> ContainerView:
    config = ContainerConfig(
        id="a" * 64, name="c1", image_ref="busybox", image_id="sha256:" + "b" * 64,
        created="2026-11-27T10:00:00.000000001Z", config={"Tty": False, "Labels": {"a": "b"}},
        host_config={"NetworkMode": "default"}, networking={}, path="sh", args=("-c", "echo hi"),
    )
    return ContainerView(config, ContainerState(status=status, started_at="2026-11-27T10:00:01Z"))


def test_inspect_sections_are_never_null() -> None:
    body = inspect_body(_view(), log_path="/x/ctr.log", bundle="/x")
    for key in ("State", "Config", "HostConfig", "NetworkSettings"):
        assert isinstance(body[key], dict)
    assert body["Name"] == "/c1"
    assert body["Image"].startswith("sha256:")
    assert body["State"]["Running"] is True


def test_list_item_shape() -> None:
    item = list_item(_view(Status.EXITED), time.time())
    assert item["Names"] == ["/c1"]
    assert item["Command"] == "sh -c 'echo hi'"
    assert isinstance(item["Created"], int)
    assert item["Status"].startswith("Exited (0)")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.5, "Less than a second"), (1, "1 second"), (59, "59 seconds"), (60, "About a minute"),
     (3599, "59 minutes"), (3600, "About an hour"), (7200, "2 hours"), (86400 * 3, "3 days")],
)
def test_human_duration(seconds: float, text: str) -> None:
    assert _human_duration(seconds) == text
