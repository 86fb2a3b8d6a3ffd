"""SIGHUP reloads daemon.json (issue 16, item 2), with the docker CLI and the events API.

The daemon is signalled by PID; the reload is seen through the ``daemon reload`` event,
``docker info`` and the daemon's log. Under ``--against-dockerd`` the same checks run on
dockerd 20.10, except the log texts (ours).
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness.cli import run_docker
from tests.harness.daemon import BaseDaemon, DaemonProcess, DockerdReference

pytestmark = pytest.mark.root


def write_config(d: BaseDaemon, values: dict[str, Any]) -> None:
    """Replace the daemon's config file, keeping what the harness put there (dockerd's)."""
    base = {"deprecated-key-path": str(d.tmp / "key.json")} if isinstance(
        d, DockerdReference) else {}
    d.config_file.write_text(json.dumps({**base, **values}))  # type: ignore[attr-defined]


def reload_events(d: BaseDaemon, since: float) -> list[dict[str, Any]]:
    filters = urllib.parse.quote(json.dumps({"type": ["daemon"], "event": ["reload"]}))
    r = d.api("GET", f"/events?since={since:.3f}&until={time.time():.3f}&filters={filters}")
    return [json.loads(line) for line in r.text.splitlines() if line.strip()]


def hup_and_wait(d: BaseDaemon, expect_event: bool = True, timeout: float = 10) -> Any:
    """SIGHUP by PID; the reload event it caused (None when none came within 2 s)."""
    since = time.time() - 0.001
    assert d.pid is not None
    os.kill(d.pid, signal.SIGHUP)
    deadline = time.monotonic() + (timeout if expect_event else 2.0)
    while time.monotonic() < deadline:
        found = reload_events(d, since)
        if found:
            return found[-1]
        time.sleep(0.1)
    return None


def info(d: BaseDaemon) -> dict[str, Any]:
    r = run_docker(d, "info", "--format", "{{json .}}")
    assert r.returncode == 0, r.stderr
    result: dict[str, Any] = json.loads(r.stdout)
    return result


@pytest.fixture
def daemon_(fresh_daemon: BaseDaemon) -> Iterator[BaseDaemon]:
    yield fresh_daemon


def test_reload_applies_reloadable_keys_and_emits_the_event(daemon_: BaseDaemon) -> None:
    d = daemon_
    before = info(d)
    assert before["Labels"] in (None, [])
    write_config(d, {
        "labels": ["env=reloaded"],
        "insecure-registries": ["10.9.8.7:5000"],
        "registry-mirrors": ["https://mirror.invalid"],
        "max-concurrent-downloads": 7,
        "shutdown-timeout": 9,
        "live-restore": False,
    })
    event = hup_and_wait(d)
    assert event is not None, d.log_tail(20)
    assert event["Type"] == "daemon" and event["Action"] == "reload"
    attrs = event["Actor"]["Attributes"]
    assert event["Actor"]["ID"] == before["ID"]
    assert attrs["labels"] == '["env=reloaded"]'
    assert attrs["registry-mirrors"] == '["https://mirror.invalid/"]' or attrs[
        "registry-mirrors"] == '["https://mirror.invalid"]'
    assert "10.9.8.7:5000" in attrs["insecure-registries"]
    assert (attrs["max-concurrent-downloads"], attrs["max-concurrent-uploads"]) == ("7", "5")
    assert (attrs["shutdown-timeout"], attrs["live-restore"]) == ("9", "false")
    assert attrs["name"] == before["Name"]
    after = info(d)
    assert after["Labels"] == ["env=reloaded"]
    assert after["LiveRestoreEnabled"] is False
    assert [m.rstrip("/") for m in after["RegistryConfig"]["Mirrors"]] == ["https://mirror.invalid"]
    assert after["RegistryConfig"]["IndexConfigs"]["10.9.8.7:5000"]["Secure"] is False


def test_bad_file_changes_nothing(daemon_: BaseDaemon) -> None:
    d = daemon_
    write_config(d, {"labels": ["first=1"]})
    assert hup_and_wait(d) is not None
    for bad in ('{"labels": ["second=2"], ', json.dumps({"labels": ["x=y"], "no-such-key": 1}),
                json.dumps({"labels": ["x=y"], "shutdown-timeout": "soon"})):
        log_from = d.log_size()
        d.config_file.write_text(bad)  # type: ignore[attr-defined]
        assert hup_and_wait(d, expect_event=False) is None
        assert info(d)["Labels"] == ["first=1"]
        if isinstance(d, DaemonProcess):
            deadline = time.monotonic() + 5
            while "error reloading configuration" not in d.log_text(log_from):
                assert time.monotonic() < deadline, d.log_text(log_from)
                time.sleep(0.05)
            text = d.log_text(log_from)
            assert "the running configuration is unchanged" in text
            assert any(why in text for why in ("invalid JSON", "no-such-key", "shutdown-timeout"))


def test_key_also_given_as_flag_is_refused(daemon_: BaseDaemon) -> None:
    d = daemon_
    write_config(d, {"labels": ["a=b"], "data-root": str(d.data_root)})
    assert hup_and_wait(d, expect_event=False) is None
    assert info(d)["Labels"] in (None, [])


@pytest.mark.parametrize("against", ["wharfd"])
def test_non_reloadable_key_is_reported_not_applied(daemon_: BaseDaemon, against: str) -> None:
    d = daemon_
    if not isinstance(d, DaemonProcess):
        pytest.skip("the report is wharfd's log line")
    log_from = d.log_size()
    write_config(d, {"labels": ["k=v"], "mtu": 1400, "experimental": True})
    assert hup_and_wait(d) is not None
    assert info(d)["Labels"] == ["k=v"]
    assert info(d)["ExperimentalBuild"] is False
    deadline = time.monotonic() + 5
    while "restart is needed for: experimental, mtu" not in d.log_text(log_from):
        assert time.monotonic() < deadline, d.log_text(log_from)
        time.sleep(0.05)


class QuietDaemon(DaemonProcess):
    """wharfd without the harness's ``--log-level debug`` flag, so the file may set it."""

    def argv(self) -> list[str]:
        argv = super().argv()
        i = argv.index("--log-level")
        return argv[:i] + argv[i + 2:]


def test_debug_and_log_level_are_reloaded(pytestconfig: pytest.Config) -> None:
    if pytestconfig.getoption("against_dockerd"):
        pytest.skip("wharfd's log")
    d = QuietDaemon()
    try:
        write_config(d, {"log-level": "info"})
        d.start()
        assert info(d)["Debug"] is False
        mark = d.log_size()
        run_docker(d, "version")
        assert "level=debug" not in d.log_text(mark)
        write_config(d, {"debug": True})
        assert hup_and_wait(d)["Actor"]["Attributes"]["debug"] == "true"
        assert info(d)["Debug"] is True
        mark = d.log_size()
        run_docker(d, "version")
        assert "GET /v" in d.log_text(mark)  # the access lines come with debug
        write_config(d, {"debug": False, "log-level": "error"})
        assert hup_and_wait(d)["Actor"]["Attributes"]["log-level"] == "error"
        mark = d.log_size()
        run_docker(d, "version")
        assert "level=info" not in d.log_text(mark)
    finally:
        d.cleanup()


def test_runtimes_reload(daemon_: BaseDaemon) -> None:
    d = daemon_
    runc = "/usr/sbin/runc" if os.path.exists("/usr/sbin/runc") else "/usr/bin/runc"
    write_config(d, {"runtimes": {"other": {"path": runc}}, "default-runtime": "other"})
    event = hup_and_wait(d)
    assert event is not None
    assert event["Actor"]["Attributes"]["default-runtime"] == "other"
    assert f"other:{runc}" in event["Actor"]["Attributes"]["runtimes"]
    now = info(d)
    assert now["DefaultRuntime"] == "other" and "other" in now["Runtimes"]


@pytest.mark.slow
def test_live_restore_off_by_reload_stops_containers_with_the_daemon(
    daemon_: BaseDaemon, busybox_tar: Any
) -> None:
    from tests.harness.cli import import_busybox
    from tests.harness.daemon import pid_alive

    d = daemon_
    import_busybox(d, busybox_tar)
    r = run_docker(d, "run", "-d", "--name", "lr", "busybox", "sleep", "300")
    assert r.returncode == 0, r.stderr
    pid = int(run_docker(d, "inspect", "-f", "{{.State.Pid}}", "lr").stdout)
    write_config(d, {"live-restore": False, "shutdown-timeout": 2})
    assert hup_and_wait(d)["Actor"]["Attributes"]["live-restore"] == "false"
    d.stop()
    deadline = time.monotonic() + 10
    while pid_alive(pid):
        assert time.monotonic() < deadline, "the container outlived the daemon"
        time.sleep(0.1)
