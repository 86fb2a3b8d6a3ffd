"""TLS for the ``tcp://`` API sockets, with dockerd's options and rules.

Options (flags or daemon.json keys of the same name): ``tls``, ``tlsverify``,
``tlscacert``, ``tlscert``, ``tlskey``. dockerd's rules, which surprise people:

* ``tlsverify`` given at all (true *or* false) turns TLS on;
* ``tls`` alone also verifies clients (``tlsverify`` defaults to the value of ``tls``):
  the server-only mode, where any client may connect over TLS, is ``--tlsverify=false``;
* paths not given default to ``$DOCKER_CONFIG/{ca,cert,key}.pem``, else
  ``~/.docker/…``, and only matter when TLS is on;
* clients are verified against the given CA only, never the system's roots;
* with TLS on and no ``-H``/``hosts`` at all, the only socket is ``tcp://localhost:2376``.

Plain TCP (TLS off, or TLS without client verification) gives root on this host to anyone
who can reach the port. dockerd warns; we also *refuse* it on an address that is not
loopback unless the operator said so explicitly (``--tls=false`` or
``--tlsverify=false``), which is where dockerd's deprecation warnings say it is heading.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from engine.config import EngineConfig

log = logging.getLogger(__name__)

CA_FILE, CERT_FILE, KEY_FILE = "ca.pem", "cert.pem", "key.pem"
DEFAULT_TLS_HOST = "tcp://localhost:2376"  # the socket when TLS is on and no -H is given


class TLSConfigError(Exception):
    """The TLS files cannot be used; the message names the file and why."""


@dataclass(frozen=True)
class ServerTLS:
    verify_clients: bool
    cafile: Path
    certfile: Path
    keyfile: Path


def default_cert_dir(environ: Mapping[str, str]) -> Path:
    """Where dockerd looks for certificates nobody named: $DOCKER_CONFIG or ~/.docker."""
    configured = environ.get("DOCKER_CONFIG")
    if configured:
        return Path(configured)
    return Path(environ.get("HOME") or os.path.expanduser("~")) / ".docker"


def tls_enabled(config: EngineConfig) -> bool:
    return config.tlsverify is not None or bool(config.tls)


def resolve_tls(config: EngineConfig, environ: Mapping[str, str]) -> ServerTLS | None:
    """The effective TLS settings, None when TLS is off."""
    if not tls_enabled(config):
        return None
    # tlsverify unset: it follows tls, which is true here.
    verify = config.tlsverify if config.tlsverify is not None else True
    where = default_cert_dir(environ)
    return ServerTLS(
        verify_clients=verify,
        cafile=Path(config.tlscacert) if config.tlscacert else where / CA_FILE,
        certfile=Path(config.tlscert) if config.tlscert else where / CERT_FILE,
        keyfile=Path(config.tlskey) if config.tlskey else where / KEY_FILE,
    )


def _reason(exc: OSError, path: Path) -> str:
    """Go's wording: ``open <path>: no such file or directory``, or OpenSSL's reason."""
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    return f"open {path}: {(exc.strerror or str(exc)).lower()}"


def server_context(tls: ServerTLS) -> ssl.SSLContext:
    """An SSLContext for the TCP listeners (TLS 1.2 or later, HTTP/1.1 by ALPN)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        for path in (tls.certfile, tls.keyfile):
            path.stat()  # names the missing one, which load_cert_chain does not
        context.load_cert_chain(tls.certfile, tls.keyfile)
    except (OSError, ssl.SSLError) as exc:
        missing = exc.filename if isinstance(exc, FileNotFoundError) else tls.certfile
        raise TLSConfigError(
            f"invalid TLS configuration: could not load X509 key pair "
            f"(cert: {tls.certfile!s}, key: {tls.keyfile!s}): {_reason(exc, Path(missing))}"
        ) from None
    if tls.verify_clients:
        try:
            context.load_verify_locations(cafile=tls.cafile)
        except (OSError, ssl.SSLError) as exc:
            raise TLSConfigError(
                f'invalid TLS configuration: could not read CA certificate "{tls.cafile}": '
                f"{_reason(exc, tls.cafile)}"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def plain_tcp_allowed_explicitly(config: EngineConfig) -> bool:
    """dockerd's "explicit intent": ``tls`` set either way (``tlsverify`` implies it)."""
    return config.tls is not None or config.tlsverify is not None


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP or a name) is a loopback address; unknown names are not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        log.error("error looking up the API address %s: %s", host, exc)
        return False
    return all(ipaddress.ip_address(str(info[4][0])).is_loopback for info in infos)


def check_tcp_exposure(config: EngineConfig, host: str, url: str) -> None:
    """Warn about a TCP socket without client verification; refuse it off loopback unless
    the operator opted in. Raises TLSConfigError with the text the operator sees."""
    tls = resolve_tls(config, {})
    if tls is not None and tls.verify_clients:
        return
    log.warning(
        "Binding to IP address without --tlsverify is insecure and gives root access on "
        "this machine to everyone who has access to your network. host=%s",
        url,
    )
    log.warning(
        "Binding to an IP address, even on localhost, can also give access to scripts run "
        "in a browser. host=%s",
        url,
    )
    if plain_tcp_allowed_explicitly(config) or is_loopback(host):
        return
    raise TLSConfigError(
        f"refusing to listen on {url} without TLS client verification: anyone who can "
        "reach it gets root on this host. Use --tlsverify with --tlscacert, --tlscert and "
        "--tlskey, or override this by explicitly specifying '--tls=false' or "
        "'--tlsverify=false'"
    )
