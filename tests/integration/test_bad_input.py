"""Bad input on the container endpoints (reliability.md B1-B8, B18): dockerd's status and
message, and nothing changes. Raw HTTP, so malformed bytes are possible."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import rawhttp
from tests.harness.daemon import BaseDaemon

pytestmark = pytest.mark.root

CREATE = "/v1.50/containers/create"


def _snapshot(daemon: BaseDaemon) -> list[tuple[str, str]]:
    return sorted((c["Id"], c["State"]) for c in daemon.api_json("GET", "/containers/json?all=1"))


@pytest.fixture
def unchanged(daemon: BaseDaemon) -> Iterator[None]:
    before = _snapshot(daemon)
    yield
    assert _snapshot(daemon) == before, "a rejected request changed the container list"


def _error(resp: rawhttp.Response) -> str:
    assert resp.header("Content-Type") == "application/json", resp.headers
    message = resp.json()["message"]
    assert isinstance(message, str)
    return message


def _raw_create(daemon: BaseDaemon, body: bytes, content_type: str | None) -> rawhttp.Response:
    headers = {"Content-Type": content_type} if content_type else {}
    return daemon.api("POST", CREATE, body, headers=headers)


@pytest.mark.usefixtures("unchanged")
def test_b1_truncated_json(daemon: BaseDaemon) -> None:
    resp = _raw_create(daemon, b'{"Image":"busybox",', "application/json")
    assert resp.status == 400
    assert _error(resp).startswith("invalid JSON:")


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    "body",
    [{"Image": 123}, {"Image": "busybox", "HostConfig": {"Memory": "lots"}}, []],
)
def test_b2_wrong_types(daemon: BaseDaemon, body: Any) -> None:
    resp = _raw_create(daemon, json.dumps(body).encode(), "application/json")
    assert resp.status == 400
    assert _error(resp).startswith("invalid JSON: json: cannot unmarshal")


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize("body", [b"", b"null"])
def test_b3_empty_config(daemon: BaseDaemon, body: bytes) -> None:
    resp = _raw_create(daemon, body, "application/json")
    assert resp.status == 400
    assert _error(resp) == "Config cannot be empty in order to create a container"


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize("content_type", ["text/plain", None])
def test_b4_content_type(daemon: BaseDaemon, content_type: str | None) -> None:
    resp = _raw_create(daemon, b'{"Image":"busybox"}', content_type)
    assert resp.status == 400
    assert "must be 'application/json'" in _error(resp)


def test_b5_trailing_bytes_and_unknown_fields(daemon: BaseDaemon) -> None:
    before = _snapshot(daemon)
    resp = _raw_create(daemon, b'{"Image":"busybox"} xyz', "application/json")
    assert resp.status == 400
    assert _error(resp) == "unexpected content after JSON"
    assert _snapshot(daemon) == before
    resp = _raw_create(daemon, b'{"Image":"busybox","Bogus":1}', "application/json")
    assert resp.status == 201
    daemon.api("DELETE", f"/containers/{resp.json()['Id']}")


def test_b6_truncated_body_is_never_acted_on(daemon: BaseDaemon) -> None:
    before = _snapshot(daemon)
    body = b'{"Image":"busybox"}'
    head = (f"POST {CREATE} HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n"
            "Content-Length: 100\r\n\r\n").encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(daemon.socket)
        sock.sendall(head + body)
        sock.settimeout(1.5)
        with pytest.raises(TimeoutError):
            sock.recv(1024)  # the daemon waits for the rest of the body
        assert _snapshot(daemon) == before
    time.sleep(0.2)
    assert _snapshot(daemon) == before


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize("name", ["../relx", "a b"])
def test_b7_invalid_names(daemon: BaseDaemon, name: str) -> None:
    resp = daemon.api("POST", f"{CREATE}?name={name.replace(' ', '%20')}", {"Image": "busybox"})
    assert resp.status == 400
    assert _error(resp) == (
        f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
    )


def test_b7_long_name_allowed_and_b8_duplicate(daemon: BaseDaemon) -> None:
    name = "n" * 300
    first = daemon.api("POST", f"{CREATE}?name={name}", {"Image": "busybox"})
    assert first.status == 201
    before = _snapshot(daemon)
    second = daemon.api("POST", f"{CREATE}?name={name}", {"Image": "busybox"})
    assert second.status == 409
    assert _error(second).startswith(f'Conflict. The container name "/{name}" is already in use')
    assert _snapshot(daemon) == before
    daemon.api("DELETE", f"/containers/{first.json()['Id']}")


def test_missing_image_is_404_no_such_image(daemon: BaseDaemon) -> None:
    resp = daemon.api("POST", CREATE, {"Image": "nosuchimage"})
    assert resp.status == 404
    assert _error(resp) == "No such image: nosuchimage:latest"


@pytest.fixture
def stopped(daemon: BaseDaemon) -> Iterator[str]:
    cid = daemon.api_json("POST", CREATE, {"Image": "busybox", "Cmd": ["true"]})["Id"]
    yield cid
    daemon.api("DELETE", f"/containers/{cid}?force=1")


@pytest.fixture
def running(daemon: BaseDaemon) -> Iterator[str]:
    cid = daemon.api_json("POST", CREATE, {"Image": "busybox", "Cmd": ["sleep", "600"]})["Id"]
    assert daemon.api("POST", f"/containers/{cid}/start").status == 204
    yield cid
    daemon.api("DELETE", f"/containers/{cid}?force=1")


def test_b18_start_twice_is_304(daemon: BaseDaemon, running: str) -> None:
    resp = daemon.api("POST", f"/containers/{running}/start")
    assert resp.status == 304 and resp.body == b""


def test_b18_stop_stopped_is_304(daemon: BaseDaemon, stopped: str) -> None:
    resp = daemon.api("POST", f"/containers/{stopped}/stop")
    assert resp.status == 304 and resp.body == b""


def test_b18_kill_not_running(daemon: BaseDaemon, stopped: str) -> None:
    resp = daemon.api("POST", f"/containers/{stopped}/kill")
    assert resp.status == 409
    assert _error(resp) == (
        f"Cannot kill container: {stopped}: Container {stopped} is not running"
    )


@pytest.mark.parametrize("sig", ["SIGRELX", "999"])
def test_b18_invalid_signal(daemon: BaseDaemon, running: str, sig: str) -> None:
    resp = daemon.api("POST", f"/containers/{running}/kill?signal={sig}")
    assert resp.status == 400
    assert _error(resp) == f"Invalid signal: {sig}"
    assert daemon.api_json("GET", f"/containers/{running}/json")["State"]["Running"] is True


def test_b18_logs_without_streams(daemon: BaseDaemon, stopped: str) -> None:
    resp = daemon.api("GET", f"/containers/{stopped}/logs")
    assert resp.status == 400
    assert _error(resp) == "Bad parameters: you must choose at least one stream"


def test_b18_bad_wait_condition(daemon: BaseDaemon, stopped: str) -> None:
    resp = daemon.api("POST", f"/containers/{stopped}/wait?condition=bogus")
    assert resp.status == 400
    assert "condition" in _error(resp)


def test_b18_bad_resize(daemon: BaseDaemon, running: str) -> None:
    resp = daemon.api("POST", f"/containers/{running}/resize?h=abc&w=10")
    assert resp.status == 400
    _error(resp)


def test_not_found_shapes(daemon: BaseDaemon) -> None:
    for method, url in [("GET", "/containers/nosuch/json"), ("POST", "/containers/nosuch/start"),
                        ("DELETE", "/containers/nosuch"), ("POST", "/containers/nosuch/wait")]:
        resp = daemon.api(method, url)
        assert resp.status == 404, (method, url)
        assert _error(resp) == "No such container: nosuch"


def test_remove_running_without_force(daemon: BaseDaemon, running: str) -> None:
    resp = daemon.api("DELETE", f"/containers/{running}")
    assert resp.status == 409
    assert _error(resp).startswith(f"You cannot remove a running container {running}.")
    assert daemon.api_json("GET", f"/containers/{running}/json")["State"]["Running"] is True
