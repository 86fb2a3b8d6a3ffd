"""Log driver options, rotation of conmon's file, and --details attributes."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from engine.containers import logdrivers
from engine.errors import InvalidParameter


@pytest.mark.parametrize(("text", "value"), [("10", 10), ("1k", 1024), ("1m", 1024**2),
                                             ("2MB", 2 * 1024**2), ("1.5g", int(1.5 * 1024**3))])
def test_parse_size(text: str, value: int) -> None:
    assert logdrivers.parse_size(text) == value


def test_settings() -> None:
    s = logdrivers.settings({"Type": "json-file", "Config": {"max-size": "1m", "max-file": "2"}})
    assert (s.max_size, s.max_file, s.readable) == (1024**2, 2, True)
    local = logdrivers.settings({"Type": "local", "Config": {}})
    assert (local.max_size, local.max_file, local.compress) == (20 * 1024**2, 5, True)
    assert not logdrivers.settings({"Type": "none"}).readable


@pytest.mark.parametrize(
    ("config", "message"),
    [({"Type": "syslogx"}, "no log driver named 'syslogx' is registered"),
     ({"Type": "json-file", "Config": {"max-size": "lots"}}, "invalid size: 'lots'"),
     ({"Type": "json-file", "Config": {"bogus": "1"}}, "unknown log opt 'bogus'"),
     ({"Type": "json-file", "Config": {"compress": "true"}}, "compress can only be used"),
     ({"Type": "json-file", "Config": {"max-size": "1m", "max-file": "0"}}, "less than 1")],
)
def test_bad_settings(config: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidParameter, match=message):
        logdrivers.settings(config)


def test_daemon_defaults_apply_only_without_a_type() -> None:
    merged = logdrivers.with_daemon_defaults({}, "local", {"max-size": "5m"})
    assert merged == {"Type": "local", "Config": {"max-size": "5m"}}
    kept = logdrivers.with_daemon_defaults({"Type": "none"}, "local", {"max-size": "5m"})
    assert kept == {"Type": "none", "Config": {}}


def test_rotate_shifts_compresses_and_drops(tmp_path: Path) -> None:
    log = tmp_path / "ctr.log"
    settings = logdrivers.LogSettings("json-file", max_size=10, max_file=3, compress=True)
    for round_ in range(4):
        log.write_bytes(f"round {round_}\n".encode())
        logdrivers.rotate(log, settings)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ctr.log.1", "ctr.log.2.gz"]
    assert (tmp_path / "ctr.log.1").read_bytes() == b"round 3\n"
    assert gzip.decompress((tmp_path / "ctr.log.2.gz").read_bytes()) == b"round 2\n"
    assert [p.name for p in logdrivers.rotated_files(log)] == ["ctr.log.2.gz", "ctr.log.1"]


def test_rotate_with_one_file_discards(tmp_path: Path) -> None:
    log = tmp_path / "ctr.log"
    log.write_bytes(b"x\n")
    logdrivers.rotate(log, logdrivers.LogSettings("json-file", max_size=1, max_file=1))
    assert list(tmp_path.iterdir()) == []


def test_details_prefix() -> None:
    config = {"Type": "json-file", "Config": {"labels": "a,missing", "env": "E"}}
    prefix = logdrivers.details_prefix(config, {"a": "x y", "b": "2"}, ["E=1", "F=2"])
    assert prefix == b"E=1,a=x+y "
    assert logdrivers.details_prefix({"Type": "json-file"}, {"a": "1"}, []) == b""


def test_max_file_alone_is_accepted_as_dockerd_does() -> None:
    s = logdrivers.settings({"Type": "json-file", "Config": {"max-file": "100"}})
    assert s.max_size is None  # no size limit: nothing ever rotates
