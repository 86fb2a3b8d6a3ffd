"""The per-container /etc/hostname, /etc/hosts and /etc/resolv.conf, as dockerd writes them."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

_HOSTS_BASE = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "ff00::0\tip6-mcastprefix\n"
    "ff02::1\tip6-allnodes\n"
    "ff02::2\tip6-allrouters\n"
)


def hostname_file(hostname: str) -> bytes:
    return f"{hostname}\n".encode()


def hosts_file(extra_hosts: Iterable[str], own_entries: Iterable[tuple[str, str]] = ()) -> bytes:
    """``extra_hosts`` are ``name:ip`` (Docker's ``--add-host``); ip may be IPv6."""
    lines = [_HOSTS_BASE]
    for entry in extra_hosts:
        name, _, address = entry.partition(":")
        if address.startswith("[") and address.endswith("]"):
            address = address[1:-1]
        lines.append(f"{address}\t{name}\n")
    for address, names in own_entries:
        lines.append(f"{address}\t{names}\n")
    return "".join(lines).encode()


EMBEDDED_RESOLVER = "127.0.0.11"


def resolv_conf(
    host_resolv: Path, dns: list[str], search: list[str], options: list[str],
    embedded: bool = False,
) -> bytes:
    """The host's resolv.conf without loopback resolvers (unreachable from a container's
    namespace), unless the container sets its own servers, search domains or options.

    On user-defined networks (``embedded``) the only server is the embedded resolver,
    which forwards to the container's ``--dns`` servers or the host's, and dockerd adds
    ``ndots:0`` there."""
    servers: list[str] = []
    host_search: list[str] = []
    host_options: list[str] = []
    try:
        text = host_resolv.read_text()
    except OSError:
        text = ""
    for raw in text.splitlines():
        words = raw.split()
        if not words or words[0].startswith(("#", ";")):
            continue
        if words[0] == "nameserver" and len(words) > 1 and not _is_loopback(words[1]):
            servers.append(words[1])
        elif words[0] in ("search", "domain"):
            host_search = words[1:]
        elif words[0] == "options":
            host_options.extend(words[1:])
    if embedded:
        servers, dns = [EMBEDDED_RESOLVER], []
        if not options and "ndots:0" not in host_options:
            host_options = [*host_options, "ndots:0"]
    out = [f"nameserver {s}\n" for s in (dns or servers)]
    if search or host_search:
        out.append("search " + " ".join(search or host_search) + "\n")
    if options or host_options:
        out.append("options " + " ".join(options or host_options) + "\n")
    return "".join(out).encode()


def _is_loopback(address: str) -> bool:
    return address.startswith("127.") or address == "::1"
