"""``GET /plugins``: no managed plugins yet, so an empty list, with dockerd's filter checks.
Runs with ``--against-dockerd`` too (a fresh dockerd has no plugins either)."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import pytest

from tests.harness.cli import DockerCLI
from tests.harness.daemon import BaseDaemon

pytestmark = pytest.mark.root


def _filters(value: dict[str, Any]) -> str:
    return urllib.parse.quote(json.dumps(value))


def test_plugin_ls_is_empty(docker_cli: DockerCLI) -> None:
    out = docker_cli.ok("plugin", "ls")
    assert out.split("\n")[0].split() == ["ID", "NAME", "DESCRIPTION", "ENABLED"]
    assert out.strip().count("\n") == 0  # the header alone
    assert docker_cli.ok("plugin", "ls", "--filter", "enabled=true", "-q").strip() == ""


def test_docker_py_lists_no_plugins(dclient: Any) -> None:
    assert dclient.plugins.list() == []


@pytest.mark.parametrize("filters", [
    {"enabled": {"true": True}},
    {"enabled": ["false"]},
    {"capability": {"volumedriver": True}},
])
def test_known_filters_are_accepted(daemon: BaseDaemon, filters: dict[str, Any]) -> None:
    r = daemon.api("GET", "/plugins?filters=" + _filters(filters))
    assert (r.status, r.json()) == (200, [])


@pytest.mark.parametrize("filters", [{"bogus": {"x": True}}, {"enabled": {"maybe": True}}])
def test_bad_filters_are_400(daemon: BaseDaemon, filters: dict[str, Any]) -> None:
    r = daemon.api("GET", "/plugins?filters=" + _filters(filters))
    assert r.status == 400, r.text
    assert "filter" in r.json()["message"].lower()
