"""Unit tests for the container manager's small pure parts."""

from __future__ import annotations

import signal

import pytest

from engine.containers import createconfig, naming, spec
from engine.containers.etcfiles import hosts_file, resolv_conf
from engine.containers.signals import parse_signal
from engine.containers.state import TRANSITIONS, Status, can_transition
from engine.errors import InvalidParameter


def test_every_status_has_transitions() -> None:
    assert set(TRANSITIONS) == set(Status)
    assert can_transition(Status.CREATED, Status.RUNNING)
    assert not can_transition(Status.RUNNING, Status.CREATED)


@pytest.mark.parametrize("name", ["a1", "web.1", "x_y-z", "/slash-ok", "a" * 300])
def test_valid_names(name: str) -> None:
    assert naming.validate_name(name) == name.lstrip("/")


@pytest.mark.parametrize("name", ["../relx", "a b", "-x", "a", "ü1"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidParameter, match=r"Invalid container name \(.*\), only"):
        naming.validate_name(name)


def test_generated_names_avoid_taken() -> None:
    taken = {naming.generate_name(set()) for _ in range(50)}
    assert naming.generate_name(taken) not in taken


@pytest.mark.parametrize(
    ("raw", "number"),
    [("SIGKILL", 9), ("KILL", 9), ("kill", 9), ("9", 9), ("TERM", 15), ("WINCH", 28),
     ("RTMIN+3", int(signal.SIGRTMIN) + 3), (None, 9)],
)
def test_parse_signal(raw: str | None, number: int) -> None:
    assert parse_signal(raw) == number


@pytest.mark.parametrize("raw", ["SIGRELX", "999", "0", "-1"])
def test_parse_signal_invalid(raw: str) -> None:
    with pytest.raises(InvalidParameter, match="Invalid signal"):
        parse_signal(raw)


def test_merge_keeps_image_defaults_and_overrides_env() -> None:
    image = {"Env": ["PATH=/bin", "A=1"], "Cmd": ["sh"], "WorkingDir": "/w", "Labels": {"i": "1"}}
    merged = createconfig.merge_image_config({"Env": ["A=2"], "Labels": {"c": "2"}}, image)
    assert merged["Env"] == ["PATH=/bin", "A=2"]
    assert merged["Cmd"] == ["sh"]
    assert merged["WorkingDir"] == "/w"
    assert merged["Labels"] == {"i": "1", "c": "2"}


def test_entrypoint_on_create_drops_image_cmd() -> None:
    merged = createconfig.merge_image_config({"Entrypoint": ["echo"]}, {"Cmd": ["sh"]})
    assert createconfig.command_line(merged) == ["echo"]


def test_no_command() -> None:
    with pytest.raises(InvalidParameter, match="No command specified"):
        createconfig.command_line(createconfig.merge_image_config({}, {}))


@pytest.mark.parametrize(
    ("policy", "auto_remove", "message"),
    [
        ({"Name": "bogus"}, False, "invalid restart policy 'bogus'"),
        ({"Name": "on-failure", "MaximumRetryCount": -1}, False, "cannot be negative"),
        ({"Name": "always", "MaximumRetryCount": 3}, False, "cannot be used with restart policy"),
        ({"Name": "always"}, True, "can't create 'AutoRemove' container with restart policy"),
    ],
)
def test_restart_policy_messages(
    policy: dict[str, object], auto_remove: bool, message: str
) -> None:
    with pytest.raises(InvalidParameter, match=message):
        createconfig.validate_restart_policy({"RestartPolicy": policy, "AutoRemove": auto_remove})


def test_env_validation() -> None:
    with pytest.raises(InvalidParameter, match="invalid environment variable: =x"):
        spec.validate_env(["=x"])


def test_fill_host_config_defaults_log_driver() -> None:
    filled = createconfig.fill_host_config({})
    assert filled["LogConfig"] == {"Type": "json-file", "Config": {}}
    assert filled["RestartPolicy"] == {"Name": "no", "MaximumRetryCount": 0}
    assert filled["NetworkMode"] == "default"


def test_hosts_file_has_localhost_and_extra_hosts() -> None:
    text = hosts_file(["foo:1.2.3.4", "v6:[::1]"]).decode()
    assert text.startswith("127.0.0.1\tlocalhost\n")
    assert "1.2.3.4\tfoo\n" in text and "::1\tv6\n" in text


def test_resolv_conf_drops_loopback(tmp_path: object) -> None:
    from pathlib import Path

    host = Path(str(tmp_path)) / "resolv.conf"
    host.write_text("nameserver 127.0.0.53\nnameserver 10.0.0.2\nsearch example.org\n")
    assert resolv_conf(host, [], [], []) == b"nameserver 10.0.0.2\nsearch example.org\n"
    assert resolv_conf(host, ["9.9.9.9"], [], ["ndots:2"]).startswith(b"nameserver 9.9.9.9\n")
