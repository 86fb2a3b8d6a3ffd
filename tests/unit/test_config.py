"""Flags, daemon.json and their merge with dockerd's rules (api/main.py, engine/config.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import api.main
from api.main import (
    ConfigError,
    build_parser,
    flag_values,
    go_format,
    load_config,
    main,
    merge,
)
from engine.config import DEFAULT_SOCKET, EngineConfig, config_keys, parse_mem_bytes


def config_from(argv: list[str]) -> EngineConfig:
    return load_config(build_parser().parse_args(argv))


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "daemon.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.fixture(autouse=True)
def _no_host_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # the host's /etc/wharfd/daemon.json must never leak into these tests
    monkeypatch.setattr(api.main, "DEFAULT_CONFIG_FILE", tmp_path / "absent.json")


# --- defaults and flags ---------------------------------------------------------------------


def test_defaults() -> None:
    config = config_from([])
    assert config.hosts == [DEFAULT_SOCKET] == ["unix:///run/wharfd.sock"]
    assert config.data_root == Path("/var/lib/wharfd")
    assert config.exec_root == Path("/run/wharfd")
    assert config.effective_pidfile() == Path("/run/wharfd/wharfd.pid")
    assert config.live_restore is True
    assert config.default_runtime == "runc"
    assert config.group == "docker"
    assert config.shutdown_timeout == 15


def test_flags() -> None:
    config = config_from(
        [
            "-H", "unix:///tmp/a.sock", "--host", "fd://",
            "--data-root", "/d", "--exec-root", "/e", "-p", "/e/x.pid",
            "-D", "--log-level", "warn", "-G", "wheel",
            "--add-runtime", "crun2=/usr/bin/crun", "--default-runtime", "crun2",
            "--live-restore=false", "--shutdown-timeout", "3",
            "--experimental", "--no-new-privileges=true", "--default-shm-size", "128M",
            "--label", "a=b", "--label", "c", "--insecure-registry", "10.0.0.0/8",
            "--registry-mirror", "https://m.example", "--log-opt", "max-size=10m",
            "--default-address-pool", "base=10.10.0.0/16,size=24",
        ]
    )
    assert config.hosts == ["unix:///tmp/a.sock", "fd://"]
    assert (config.data_root, config.exec_root) == (Path("/d"), Path("/e"))
    assert config.effective_pidfile() == Path("/e/x.pid")
    assert config.debug and config.log_level == "warn" and config.group == "wheel"
    assert config.runtimes["crun2"].path == "/usr/bin/crun"
    assert config.default_runtime == "crun2"
    assert config.live_restore is False and config.shutdown_timeout == 3
    assert config.experimental and config.no_new_privileges
    assert config.default_shm_size == 128 * 1024 * 1024
    assert config.labels == ["a=b", "c"]
    assert config.insecure_registries == ["10.0.0.0/8"]
    assert config.registry_mirrors == ["https://m.example/"]  # dockerd adds the slash
    assert config.log_opts == {"max-size": "10m"}
    assert config.default_address_pools[0].base == "10.10.0.0/16"


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--live-restore", True), ("--live-restore=true", True), ("--live-restore=false", False),
     ("--live-restore=0", False), ("--live-restore=F", False)],
)
def test_bool_flags_take_go_values(flag: str, value: bool) -> None:
    assert config_from([flag]).live_restore is value


def test_bad_bool_flag_is_a_usage_error() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--live-restore=maybe"])


def test_only_given_flags_count() -> None:
    assert flag_values(build_parser().parse_args(["-D"])) == {"debug": True}


# --- the file -----------------------------------------------------------------------------


def test_file_values(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {"data-root": "/srv/w", "debug": True, "default-shm-size": "1g", "log-level": "ERROR",
         "runtimes": {"crun2": {"path": "/usr/bin/crun", "runtimeArgs": ["--debug"]}},
         "features": {"buildkit": False}, "dns": ["1.1.1.1"]},
    )
    config = config_from(["--config-file", str(path)])
    assert config.data_root == Path("/srv/w")
    assert config.debug is True
    assert config.default_shm_size == 1 << 30
    assert config.log_level == "error"
    assert config.runtimes["crun2"].runtime_args == ["--debug"]
    assert config.dns == ["1.1.1.1"]


def test_unknown_keys_are_named(tmp_path: Path) -> None:
    path = write(tmp_path, {"bogus": 1, "debug": True, "zzz": 2, "data_root": "/x"})
    with pytest.raises(ConfigError) as caught:
        config_from(["--config-file", str(path)])
    assert str(caught.value) == (
        f"unable to configure the daemon with file {path}: the following directives don't "
        "match any configuration option: bogus, data_root, zzz"
    )


def test_keys_in_file_and_flags_are_named_like_dockerd(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {"hosts": ["unix:///tmp/y.sock"], "debug": True, "labels": ["a=b"],
         "live-restore": True, "shutdown-timeout": 3},
    )
    argv = ["--config-file", str(path), "-H", "unix:///tmp/x.sock", "-H", "unix:///tmp/z.sock",
            "-D", "--label", "c=d", "--live-restore=false", "--shutdown-timeout", "5"]
    with pytest.raises(ConfigError) as caught:
        config_from(argv)
    # the text dockerd 20.10 prints for the same input (captured), our file prefix aside
    assert str(caught.value).endswith(
        "the following directives are specified both as a flag and in the configuration file: "
        "debug: (from flag: true, from file: true), "
        "hosts: (from flag: [unix:///tmp/x.sock unix:///tmp/z.sock], "
        "from file: [unix:///tmp/y.sock]), "
        "labels: (from flag: [c=d], from file: [a=b]), "
        "live-restore: (from flag: false, from file: true), "
        "shutdown-timeout: (from flag: 5, from file: 3)"
    )


def test_runtime_flag_conflicts_with_runtimes_key(tmp_path: Path) -> None:
    path = write(tmp_path, {"runtimes": {"a": {"path": "/a"}}})
    with pytest.raises(ConfigError, match=r"runtimes: \(from flag: map\[b:map\[path:/b\]\]"):
        config_from(["--config-file", str(path), "--add-runtime", "b=/b"])


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file or directory"):
        config_from(["--config-file", str(tmp_path / "nope.json")])


def test_missing_default_file_is_fine() -> None:
    assert config_from([]).debug is False


@pytest.mark.parametrize("text", ["", "  \n"])
def test_empty_file_is_empty_config(tmp_path: Path, text: str) -> None:
    assert config_from(["--config-file", str(write(tmp_path, text))]).debug is False


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ('{"hosts": ', "invalid JSON"),
        ("[1]", "must contain a JSON object"),
        ({"debug": "yes"}, "debug"),
        ({"shutdown-timeout": "3"}, "shutdown-timeout"),
        ({"default-shm-size": "lots"}, "invalid size: 'lots'"),
        ({"log-level": "loud"}, "unable to parse logging level: loud"),
        ({"default-runtime": "nope"}, "specified default runtime 'nope' does not exist"),
        ({"runtimes": {"runc": {"path": "/x"}}}, "runtime name 'runc' is reserved"),
        ({"hosts": ["ssh://host"]}, "ssh:// listeners are not supported"),
        ({"hosts": ["tcp://0.0.0.0:2375/x"]}, "Invalid bind address format"),
        ({"tlsverify": "yes"}, "tlsverify"),
        ({"hosts": ["/run/x.sock"]}, "Invalid bind address format"),
        ({"runtimes": {"x": {"paht": "/x"}}}, "runtimes"),
    ],
)
def test_invalid_files(tmp_path: Path, data: Any, fragment: str) -> None:
    with pytest.raises(ConfigError, match=None) as caught:
        config_from(["--config-file", str(write(tmp_path, data))])
    assert fragment in str(caught.value)


def test_crun_is_a_builtin_runtime() -> None:
    config = EngineConfig.model_validate({"default-runtime": "crun"})
    assert set(config.effective_runtimes()) >= {"runc", "crun"}


def test_every_field_has_a_dockerd_key() -> None:
    keys = config_keys()
    assert {"hosts", "data-root", "exec-root", "pidfile", "live-restore", "runtimes"} <= keys
    assert not any("_" in key for key in keys)


def test_merge_is_plain_union_without_overlap() -> None:
    assert merge({"debug": True}, {"hosts": ["fd://"]}) == {"debug": True, "hosts": ["fd://"]}


def test_frozen() -> None:
    config = EngineConfig()
    with pytest.raises(ValidationError):
        config.__setattr__("debug", True)


@pytest.mark.parametrize(
    ("value", "text"),
    [(True, "true"), (None, "<nil>"), (3.0, "3"), (["a", "b"], "[a b]"), ("s", "s"),
     ({"b": 1, "a": [True]}, "map[a:[true] b:1]")],
)
def test_go_format(value: Any, text: str) -> None:
    assert go_format(value) == text


@pytest.mark.parametrize(
    ("raw", "size"),
    [("64m", 64 << 20), ("64MB", 64 << 20), ("64MiB", 64 << 20), ("1.5g", 3 << 29),
     ("1024", 1024), (2048, 2048), ("10k", 10240)],
)
def test_mem_bytes(raw: str | int, size: int) -> None:
    assert parse_mem_bytes(raw) == size


# --- main(): --validate and --version ---------------------------------------------------------


def test_validate_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, {"debug": True})
    assert main(["--config-file", str(path), "--validate"]) == 0
    assert capsys.readouterr().out == "configuration OK\n"


def test_validate_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, {"bogus": True})
    assert main(["--config-file", str(path), "--validate"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "the following directives don't match any configuration option: bogus" in captured.err


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-v"]) == 0
    assert capsys.readouterr().out.startswith("wharfd version ")


# ------------------------------------------------------------------ registry mirrors
@pytest.mark.parametrize(
    ("given", "kept"),
    [("https://m.example", "https://m.example/"), ("https://m.example/", "https://m.example/"),
     ("http://10.0.0.1:5000", "http://10.0.0.1:5000/")],
)
def test_mirrors_end_in_one_slash_as_in_dockerd(given: str, kept: str) -> None:
    assert EngineConfig.model_validate({"registry-mirrors": [given]}).registry_mirrors == [kept]


@pytest.mark.parametrize(
    ("given", "why"),
    [("m.example", "unsupported scheme"), ("ftp://m.example", "unsupported scheme"),
     ("https://m.example/v2/", "path, query, or fragment"),
     ("https://m.example//", "path, query, or fragment"),
     ("https://m.example/?a=b", "path, query, or fragment"),
     ("https://u:p@m.example", "username/password not allowed")],
)
def test_bad_mirrors_stop_the_daemon(tmp_path: Path, given: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        config_from(["--config-file", str(write(tmp_path, {"registry-mirrors": [given]}))])


# ------------------------------------------------------------------ metrics address
@pytest.mark.parametrize("address", ["127.0.0.1:9323", "[::1]:9323", ":9323"])
def test_metrics_address(address: str) -> None:
    assert config_from(["--metrics-addr", address]).metrics_addr == address


@pytest.mark.parametrize("address", ["127.0.0.1", "localhost:http", "1.2.3.4:0", "x:70000"])
def test_bad_metrics_address_is_refused(address: str) -> None:
    with pytest.raises(ConfigError, match="invalid metrics address"):
        config_from(["--metrics-addr", address])

