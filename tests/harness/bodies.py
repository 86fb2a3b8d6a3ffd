"""Request-body test helpers: raw JSON posts at dockerd 20.10's API version, dockerd's
error text, listing snapshots, and a running container to aim bodies at."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import rawhttp
from tests.harness.daemon import BaseDaemon

V = "/v1.41"  # dockerd 20.10's maximum; wharfd serves it too
LONE = "\ud800"  # a lone surrogate: JSON can carry it, UTF-8 cannot
DOCKERD_2010_500 = ("dockerd 20.10 answers 500 for a body it cannot decode; upstream dockerd "
                    "answers 400 (reliability.md B2)")


def post(daemon: BaseDaemon, url: str, body: Any) -> rawhttp.Response:
    return daemon.api("POST", V + url, json.dumps(body).encode(),
                      headers={"Content-Type": "application/json"})


def message(resp: rawhttp.Response) -> str:
    text = resp.json()["message"]
    assert isinstance(text, str)
    return text


def assert_unmarshal_refused(resp: rawhttp.Response, pattern: str, against_dockerd: bool,
                             dockerd_2010_500: bool) -> None:
    """Go's decoder text; status 400 (20.10: 500 where ``dockerd_2010_500``, an xfail)."""
    text = message(resp)
    assert re.search("json: cannot unmarshal " + pattern, text), text
    if against_dockerd:
        if dockerd_2010_500 and resp.status == 500:
            pytest.xfail(DOCKERD_2010_500)
    else:
        assert text.startswith("invalid JSON: json: cannot unmarshal"), text
    assert resp.status == 400, (resp.status, text)


def names(daemon: BaseDaemon, url: str, key: str = "Id") -> list[str]:
    data = daemon.api_json("GET", V + url)
    if isinstance(data, dict):
        data = data["Volumes"] or []
    return sorted(item[key] for item in data)


def running_container(daemon: BaseDaemon, name: str) -> Iterator[str]:
    """For a module fixture: a started ``sleep 600`` container, removed afterwards."""
    resp = post(daemon, f"/containers/create?name={name}",
                {"Image": "busybox", "Cmd": ["sleep", "600"]})
    assert resp.status == 201, resp.text
    cid = resp.json()["Id"]
    assert daemon.api("POST", f"{V}/containers/{cid}/start").status == 204
    yield cid
    daemon.api("DELETE", f"{V}/containers/{cid}?force=1")


def unchanged_containers(daemon: BaseDaemon) -> Iterator[None]:
    """For a fixture: the container list is the same after the test."""
    before = names(daemon, "/containers/json?all=1")
    yield
    assert names(daemon, "/containers/json?all=1") == before
