"""Remote access over TCP with TLS (issue 16, item 1), with the stock clients.

Every daemon listens on its unix socket *and* on a TCP address of its own network
namespace (10.99.0.1 on its lo, or 127.0.0.1); the clients (docker CLI, docker-py,
Compose v2) run inside that namespace too, so nothing is reachable from the host. The
certificates are made per module (tests/harness/tlscerts.py).

Under ``--against-dockerd`` the same tests run on dockerd 20.10 (with its own bridge and
iptables off), except the refusal of plain TCP off loopback, which dockerd only warns
about (docs/operations.md).
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.cli import docker_binary
from tests.harness.compose import compose_v2_binary, compose_v2_unavailable_reason
from tests.harness.daemon import (
    BaseDaemon,
    DaemonProcess,
    DaemonStartError,
    DockerdReference,
    dockerd_unavailable_reason,
    wharfd_unavailable_reason,
)
from tests.harness.etcd import thread_in_netns
from tests.harness.netns import NetNS
from tests.harness.tlscerts import TLSFiles

pytestmark = pytest.mark.root

ADDRESS = "10.99.0.1"
TLS_PORT = 2376


class NetnsWithAddress(NetNS):
    """A test namespace whose ``lo`` also holds ``ADDRESS``: an address that is not a
    loopback one (what dockerd's check looks at), reachable only inside."""

    def create(self) -> NetnsWithAddress:
        super().create()
        try:
            self.run(["ip", "addr", "add", f"{ADDRESS}/32", "dev", "lo"], check=True)
        except BaseException:
            self.delete()
            raise
        return self


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return TLSFiles.create(tmp_path_factory.mktemp("tls"), ("127.0.0.1", ADDRESS))


AGAINST_DOCKERD = False  # set from the command line by the autouse fixture below


@pytest.fixture(autouse=True, scope="module")
def _which_daemon(pytestconfig: pytest.Config) -> None:
    global AGAINST_DOCKERD
    AGAINST_DOCKERD = bool(pytestconfig.getoption("against_dockerd"))


def _daemon(args: list[str]) -> tuple[BaseDaemon, NetnsWithAddress]:
    cls: type[BaseDaemon] = DockerdReference if AGAINST_DOCKERD else DaemonProcess
    reason = dockerd_unavailable_reason() if AGAINST_DOCKERD else wharfd_unavailable_reason()
    if reason:
        pytest.skip(reason)
    netns = NetnsWithAddress("wharfd-t")
    netns.create()
    return cls(args, netns=netns), netns


def write_daemon_json(d: BaseDaemon, values: dict[str, Any]) -> None:
    """The daemon's config file, keeping what the harness wrote there for dockerd."""
    path: Path = d.config_file  # type: ignore[attr-defined]
    current = json.loads(path.read_text() or "{}")
    path.write_text(json.dumps({**current, **values}))


@pytest.fixture
def start_daemon() -> Iterator[Any]:
    """``start_daemon([flags])`` → a started wharfd in a namespace with ADDRESS; a daemon
    that fails to start raises DaemonStartError (its log is in the message)."""
    made: list[tuple[BaseDaemon, NetNS]] = []

    def start(args: list[str], env: dict[str, str] | None = None) -> BaseDaemon:
        d, netns = _daemon(args)
        d.extra_env.update(env or {})
        made.append((d, netns))
        d.start()
        return d

    try:
        yield start
    finally:
        for d, netns in made:
            d.cleanup()
            netns.delete()


@pytest.fixture(scope="module")
def mtls_daemon(certs: TLSFiles, busybox_tar: Path) -> Iterator[BaseDaemon]:
    """--tlsverify on tcp://ADDRESS:2376 beside the unix socket, busybox imported."""
    d, netns = _daemon(["--tlsverify", *certs.daemon_flags(), "-H", f"tcp://{ADDRESS}:{TLS_PORT}"])
    try:
        d.start()
        subprocess.run(
            [docker_binary(), "import", "-c", 'CMD ["sh"]', "-", "busybox:latest"],
            input=busybox_tar.read_bytes(), env=d.env, check=True, capture_output=True,
            timeout=120,
        )
        yield d
    finally:
        d.cleanup()
        netns.delete()


def tls_env(d: BaseDaemon, cert_dir: Path, port: int = TLS_PORT) -> dict[str, str]:
    """A client environment aimed at the daemon's TCP socket only."""
    env = d.env
    env.update(
        DOCKER_HOST=f"tcp://{ADDRESS}:{port}",
        DOCKER_TLS_VERIFY="1",
        DOCKER_CERT_PATH=str(cert_dir),
    )
    return env


def docker_in(
    d: BaseDaemon, env: dict[str, str], *args: str, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The docker CLI run inside the daemon's namespace (the only place ADDRESS exists)."""
    return subprocess.run(
        d.netns.wrap([docker_binary(), *args]), env=env, capture_output=True, text=True,
        timeout=120, input=input, stdin=None if input is not None else subprocess.DEVNULL,
    )


def raw_exchange(
    d: BaseDaemon, port: int, context: ssl.SSLContext | None, request: bytes
) -> bytes | BaseException:
    """Connect from inside the namespace, send ``request``, return what came back (or the
    exception that ended it). Runs in a thread of its own moved into the namespace."""
    result: list[bytes | BaseException] = []

    def talk() -> None:
        with thread_in_netns(d.netns):
            try:
                raw = socket.create_connection((ADDRESS, port), timeout=10)
                conn: socket.socket = (
                    context.wrap_socket(raw, server_hostname=ADDRESS) if context else raw
                )
                with conn:
                    conn.sendall(request)
                    data = b""
                    while chunk := conn.recv(65536):
                        data += chunk
                result.append(data)
            except (OSError, ssl.SSLError) as exc:
                result.append(exc)

    worker = threading.Thread(target=talk)
    worker.start()
    worker.join(30)
    return result[0]


PING = b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n"


def client_context(certs: TLSFiles, cert_dir: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca))
    if cert_dir is not None:
        context.load_cert_chain(cert_dir / "cert.pem", cert_dir / "key.pem")
    return context


# --- mutual TLS ---------------------------------------------------------------------------


def test_cli_over_mutual_tls_and_unix_socket_at_once(
    mtls_daemon: BaseDaemon, certs: TLSFiles
) -> None:
    env = tls_env(mtls_daemon, certs.client_dir)
    r = docker_in(mtls_daemon, env, "run", "--name", "over-tls", "busybox", "echo", "hi tls")
    assert (r.returncode, r.stdout) == (0, "hi tls\n"), r.stderr
    # interactive attach with stdin over TLS (the hijacked stream, both directions)
    r = docker_in(mtls_daemon, env, "run", "--rm", "-i", "busybox", "cat", input="piped\n")
    assert (r.returncode, r.stdout) == (0, "piped\n"), r.stderr
    # the same app behind both sockets: the unix socket sees what TCP made
    local = subprocess.run(
        [docker_binary(), "ps", "-a", "--format", "{{.Names}}"], env=mtls_daemon.env,
        capture_output=True, text=True, timeout=60,
    )
    assert "over-tls" in local.stdout.split()
    r = docker_in(mtls_daemon, env, "rm", "over-tls")
    assert r.returncode == 0, r.stderr


def test_large_streams_both_ways_over_tls(mtls_daemon: BaseDaemon, certs: TLSFiles) -> None:
    """Back-pressure through the TLS bridge: 20 MB out of a container, 4 MB through exec's
    stdin and back."""
    env = tls_env(mtls_daemon, certs.client_dir)
    r = subprocess.run(
        mtls_daemon.netns.wrap([docker_binary(), "run", "--rm", "busybox", "head", "-c",
                                "20000000", "/dev/zero"]),
        env=env, capture_output=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert (r.returncode, len(r.stdout)) == (0, 20_000_000), r.stderr[-500:]
    r2 = docker_in(mtls_daemon, env, "run", "-d", "--name", "tls-exec", "busybox", "sleep", "60")
    assert r2.returncode == 0, r2.stderr
    try:
        payload = ("0123456789abcdef" * 64 + "\n") * 4000
        r2 = docker_in(mtls_daemon, env, "exec", "-i", "tls-exec", "cat", input=payload)
        assert r2.returncode == 0, r2.stderr
        assert r2.stdout == payload
    finally:
        docker_in(mtls_daemon, env, "rm", "-f", "tls-exec")


def test_docker_py_from_env(
    mtls_daemon: BaseDaemon, certs: TLSFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    import docker

    # requests lets these override the CA docker-py sets on its session (requests#3829);
    # this machine sets them, a client host with them set would fail against dockerd too.
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)

    out: list[Any] = []

    def use() -> None:
        with thread_in_netns(mtls_daemon.netns):
            client = docker.from_env(environment=tls_env(mtls_daemon, certs.client_dir))
            try:
                out.append(client.ping())
                out.append(client.containers.run("busybox", ["echo", "from docker-py"],
                                                 remove=True))
            except Exception as exc:  # reported by the assert below
                out.append(exc)
            finally:
                client.close()

    worker = threading.Thread(target=use)
    worker.start()
    worker.join(120)
    assert out == [True, b"from docker-py\n"]


def test_compose_v2_over_tls(
    mtls_daemon: BaseDaemon, certs: TLSFiles, tmp_path: Path
) -> None:
    if compose_v2_binary() is None:
        pytest.skip(str(compose_v2_unavailable_reason()))
    (tmp_path / "compose.yaml").write_text(
        "services:\n  app:\n    image: busybox\n    command: sleep 60\n"
    )
    plugins = tmp_path / "config" / "cli-plugins"
    plugins.mkdir(parents=True)
    (plugins / "docker-compose").symlink_to(str(compose_v2_binary()))
    env = tls_env(mtls_daemon, certs.client_dir)
    env["DOCKER_CONFIG"] = str(tmp_path / "config")
    project = ["compose", "-p", "tlsproj", "--project-directory", str(tmp_path)]
    try:
        r = docker_in(mtls_daemon, env, *project, "up", "-d")
        assert r.returncode == 0, r.stderr
        r = docker_in(mtls_daemon, env, *project, "ps", "--format", "{{.Service}} {{.State}}")
        assert r.stdout.split() == ["app", "running"], r.stdout + r.stderr
    finally:
        docker_in(mtls_daemon, env, *project, "down", "-t", "0")


def test_client_without_certificate_is_refused(
    mtls_daemon: BaseDaemon, certs: TLSFiles
) -> None:
    got = raw_exchange(mtls_daemon, TLS_PORT, client_context(certs, None), PING)
    assert isinstance(got, ssl.SSLError | ConnectionError), got
    # TLS 1.3's certificate_required alert (OpenSSL), or bad_certificate (Go's dockerd)
    assert isinstance(got, ConnectionError) or any(
        alert in str(got).lower() for alert in ("certificate required", "bad certificate"))
    # with the CLI: no cert files in its cert path
    nocert = certs.root / "ca-only"
    nocert.mkdir(exist_ok=True)
    (nocert / "ca.pem").write_bytes(certs.ca.read_bytes())
    r = docker_in(mtls_daemon, tls_env(mtls_daemon, nocert), "version")
    assert r.returncode != 0
    assert "Server:" not in r.stdout


def test_client_with_certificate_of_another_ca_is_refused(
    mtls_daemon: BaseDaemon, certs: TLSFiles
) -> None:
    got = raw_exchange(mtls_daemon, TLS_PORT, client_context(certs, certs.rogue_dir), PING)
    assert isinstance(got, ssl.SSLError | ConnectionError), got
    r = docker_in(mtls_daemon, tls_env(mtls_daemon, certs.rogue_dir), "version")
    assert r.returncode != 0
    assert "certificate" in r.stderr.lower(), r.stderr
    # the trusted client still gets in
    got = raw_exchange(mtls_daemon, TLS_PORT, client_context(certs, certs.client_dir), PING)
    assert isinstance(got, bytes) and got.startswith(b"HTTP/1.1 200"), got


def test_plain_http_to_the_tls_port_gets_no_api(mtls_daemon: BaseDaemon) -> None:
    got = raw_exchange(mtls_daemon, TLS_PORT, None, PING)
    assert not (isinstance(got, bytes) and b"200 OK" in got), got


# --- the other modes ----------------------------------------------------------------------


def test_tlsverify_false_is_server_tls_without_client_certificates(
    start_daemon: Any, certs: TLSFiles
) -> None:
    d = start_daemon([
        "--tlsverify=false", f"--tlscert={certs.server_cert}", f"--tlskey={certs.server_key}",
        "-H", f"tcp://{ADDRESS}:{TLS_PORT}",
    ])
    got = raw_exchange(d, TLS_PORT, client_context(certs, None), PING)
    assert isinstance(got, bytes) and got.startswith(b"HTTP/1.1 200"), got
    # the CLI's --tls: no client certificate (the CLI insists on reading a CA file)
    env = d.env
    env["DOCKER_HOST"] = f"tcp://{ADDRESS}:{TLS_PORT}"
    r = docker_in(d, env, "--tls", f"--tlscacert={certs.ca}", "version", "--format",
                  "{{.Server.Os}}")
    assert (r.returncode, r.stdout.strip()) == (0, "linux"), r.stderr


def test_tls_alone_verifies_clients_like_dockerd(
    start_daemon: Any, certs: TLSFiles, tmp_path: Path
) -> None:
    """dockerd: --tls without --tlsverify still requires client certificates, so it needs
    a CA; the default one (~/.docker/ca.pem) is missing here."""
    flags = ["--tls", f"--tlscert={certs.server_cert}", f"--tlskey={certs.server_key}",
             "-H", f"tcp://{ADDRESS}:{TLS_PORT}"]
    with pytest.raises(DaemonStartError) as failed:
        start_daemon(flags, env={"HOME": str(tmp_path), "DOCKER_CONFIG": ""})
    text = str(failed.value)
    assert "could not read CA certificate" in text
    assert f"open {tmp_path}/.docker/ca.pem: no such file or directory" in text
    d = start_daemon([*flags, f"--tlscacert={certs.ca}"])
    assert isinstance(raw_exchange(d, TLS_PORT, client_context(certs, None), PING),
                      ssl.SSLError | ConnectionError)
    got = raw_exchange(d, TLS_PORT, client_context(certs, certs.client_dir), PING)
    assert isinstance(got, bytes) and got.startswith(b"HTTP/1.1 200"), got


def test_default_cert_paths_from_docker_config(start_daemon: Any, certs: TLSFiles,
                                              tmp_path: Path) -> None:
    where = tmp_path / "dotdocker"
    where.mkdir()
    for src, name in ((certs.ca, "ca.pem"), (certs.server_cert, "cert.pem"),
                      (certs.server_key, "key.pem")):
        (where / name).write_bytes(src.read_bytes())
    d = start_daemon(["--tlsverify", "-H", f"tcp://{ADDRESS}:{TLS_PORT}"],
                     env={"DOCKER_CONFIG": str(where)})
    got = raw_exchange(d, TLS_PORT, client_context(certs, certs.client_dir), PING)
    assert isinstance(got, bytes) and got.startswith(b"HTTP/1.1 200"), got


def test_plain_tcp_off_loopback_is_refused(start_daemon: Any) -> None:
    if AGAINST_DOCKERD:
        pytest.skip("dockerd warns, waits 15 s and starts: wharfd refuses (operations.md)")
    with pytest.raises(DaemonStartError) as failed:
        start_daemon(["-H", f"tcp://{ADDRESS}:2375"])
    text = str(failed.value)
    assert "Binding to IP address without --tlsverify is insecure" in text
    assert f"refusing to listen on tcp://{ADDRESS}:2375" in text
    assert "'--tls=false' or '--tlsverify=false'" in text


def test_plain_tcp_allowed_explicitly_and_on_loopback(start_daemon: Any) -> None:
    d = start_daemon(["--tls=false", "-H", f"tcp://{ADDRESS}:2375", "-H", "tcp://127.0.0.1:2375"])
    got = raw_exchange(d, 2375, None, PING)
    assert isinstance(got, bytes) and got.startswith(b"HTTP/1.1 200"), got
    assert "Binding to IP address without --tlsverify is insecure" in d.log_text()
    loopback_only = start_daemon(["-H", "tcp://127.0.0.1:2375"])
    r = subprocess.run(
        loopback_only.netns.wrap([docker_binary(), "-H", "tcp://127.0.0.1:2375", "version",
                                  "--format", "{{.Server.Os}}"]),
        env=loopback_only.env, capture_output=True, text=True, timeout=60,
    )
    assert (r.returncode, r.stdout.strip()) == (0, "linux"), r.stderr


def test_tls_keys_from_daemon_json(certs: TLSFiles, busybox_tar: Path) -> None:
    d, netns = _daemon(["-H", f"tcp://{ADDRESS}:{TLS_PORT}"])
    try:
        write_daemon_json(d, {
            "tlsverify": True, "tlscacert": str(certs.ca), "tlscert": str(certs.server_cert),
            "tlskey": str(certs.server_key),
        })
        d.start()
        assert isinstance(raw_exchange(d, TLS_PORT, client_context(certs, None), PING),
                          ssl.SSLError | ConnectionError)
        r = docker_in(d, tls_env(d, certs.client_dir), "version", "--format", "{{.Server.Os}}")
        assert (r.returncode, r.stdout.strip()) == (0, "linux"), r.stderr
    finally:
        d.cleanup()
        netns.delete()


@pytest.mark.slow
def test_silent_client_is_dropped_after_the_handshake_timeout(mtls_daemon: BaseDaemon) -> None:
    """A TCP connection that never starts its TLS handshake does not stay open (10 s)."""
    if AGAINST_DOCKERD:
        pytest.skip("wharfd's own limit; dockerd sets no handshake timeout")
    outcome: list[float | BaseException] = []

    def idle() -> None:
        with thread_in_netns(mtls_daemon.netns):
            started = time.monotonic()
            try:
                with socket.create_connection((ADDRESS, TLS_PORT), timeout=30) as conn:
                    conn.recv(1)  # b"" when the daemon hangs up
                outcome.append(time.monotonic() - started)
            except OSError as exc:
                outcome.append(exc)

    worker = threading.Thread(target=idle)
    worker.start()
    worker.join(40)
    assert isinstance(outcome[0], float) and 5 < outcome[0] < 20, outcome
