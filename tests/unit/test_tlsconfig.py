"""dockerd's TLS rules for the tcp:// sockets (api.tlsconfig), without a daemon."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from api.main import build_parser, load_config
from api.tlsconfig import (
    ServerTLS,
    TLSConfigError,
    check_tcp_exposure,
    is_loopback,
    resolve_tls,
    server_context,
)
from engine.config import EngineConfig
from tests.harness.tlscerts import TLSFiles

ENV = {"HOME": "/home/op"}
DEFAULTS = Path("/home/op/.docker")


def config(**values: Any) -> EngineConfig:
    return EngineConfig.model_validate(values)


@pytest.mark.parametrize(
    ("values", "verify"),
    [
        ({}, None),  # TLS off
        ({"tls": False}, None),
        ({"tls": True}, True),  # dockerd: --tls alone verifies clients too
        ({"tlsverify": True}, True),
        ({"tlsverify": False}, False),  # TLS on, no client certificates: server-only
        ({"tls": False, "tlsverify": False}, False),  # tlsverify set at all turns TLS on
    ],
)
def test_modes(values: dict[str, Any], verify: bool | None) -> None:
    tls = resolve_tls(config(**values), ENV)
    assert (tls.verify_clients if tls else None) == verify


def test_default_paths_home_then_docker_config() -> None:
    tls = resolve_tls(config(tlsverify=True), ENV)
    assert tls == ServerTLS(True, DEFAULTS / "ca.pem", DEFAULTS / "cert.pem", DEFAULTS / "key.pem")
    tls = resolve_tls(config(tls=True, tlscert="/etc/s.pem"), {"DOCKER_CONFIG": "/etc/d", **ENV})
    assert tls is not None
    assert (tls.cafile, tls.certfile, tls.keyfile) == (
        Path("/etc/d/ca.pem"), Path("/etc/s.pem"), Path("/etc/d/key.pem"))


def test_missing_files_are_named(tmp_path: Path) -> None:
    files = TLSFiles.create(tmp_path)
    good = ServerTLS(True, files.ca, files.server_cert, files.server_key)
    assert server_context(good) is not None
    with pytest.raises(TLSConfigError, match=f"could not read CA certificate \"{tmp_path}/no"):
        server_context(ServerTLS(True, tmp_path / "no", files.server_cert, files.server_key))
    # without client verification the CA is not needed
    server_context(ServerTLS(False, tmp_path / "no", files.server_cert, files.server_key))
    with pytest.raises(TLSConfigError, match=f"open {tmp_path}/nokey: no such file"):
        server_context(ServerTLS(False, files.ca, files.server_cert, tmp_path / "nokey"))
    with pytest.raises(TLSConfigError, match="could not load X509 key pair"):
        server_context(ServerTLS(False, files.ca, files.server_key, files.server_cert))


@pytest.mark.parametrize(
    ("values", "host", "refused"),
    [
        ({}, "10.1.2.3", True),
        ({}, "0.0.0.0", True),
        ({}, "127.0.0.1", False),
        ({}, "::1", False),
        ({}, "localhost", False),
        ({"tls": False}, "10.1.2.3", False),  # the explicit opt-in
        ({"tlsverify": False}, "10.1.2.3", False),
        ({"tlsverify": True}, "10.1.2.3", False),
    ],
)
def test_plain_tcp_refused_off_loopback(values: dict[str, Any], host: str, refused: bool) -> None:
    cfg = config(**values)
    if refused:
        with pytest.raises(TLSConfigError, match="'--tls=false' or '--tlsverify=false'"):
            check_tcp_exposure(cfg, host, f"tcp://{host}:2375")
    else:
        check_tcp_exposure(cfg, host, f"tcp://{host}:2375")


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.2") and is_loopback("localhost")
    assert not is_loopback("192.0.2.1") and not is_loopback("no-such-host.invalid")


def test_tls_without_hosts_listens_on_localhost_2376_like_dockerd(tmp_path: Path) -> None:
    def hosts(values: dict[str, Any], *flags: str) -> list[str]:
        path = tmp_path / "daemon.json"
        path.write_text(json.dumps(values))
        return load_config(build_parser().parse_args(["--config-file", str(path), *flags])).hosts

    assert hosts({"tlsverify": True}) == ["tcp://localhost:2376"]
    assert hosts({"tlsverify": True}, "-H", "unix:///tmp/a.sock") == ["unix:///tmp/a.sock"]
    assert hosts({}) == ["unix:///run/wharfd.sock"]
