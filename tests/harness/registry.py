"""A local registry for pull/push tests: Debian's ``docker-registry`` (distribution 2.8)
on 127.0.0.1 inside a daemon's network namespace, started with ``nsenter`` and stopped
by its PID.

Each instance writes its own config file and storage under a temporary directory, so
tests can look at (and corrupt) the blobs it stores: ``blob_path(digest)``. With
``htpasswd=(user, password)`` the registry asks for HTTP basic auth (distribution only
reads bcrypt entries: made with ``htpasswd -B`` when apache2-utils is installed, else
with the C library's bcrypt through Python's ``crypt``).

Nothing here talks to the registry from the test process (which lives in the host's
network namespace): readiness is probed from inside the namespace.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .netns import NetNS

REGISTRY_BINARY = "/usr/bin/docker-registry"
START_TIMEOUT = 20.0

_CONFIG = """\
version: 0.1
log:
  level: warn
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  headers:
    X-Content-Type-Options: [nosniff]
{auth}"""

# A pull-through cache of another registry (never of the Hub: tests stay offline).
_PROXY = """\
proxy:
  remoteurl: {remote}
"""

_AUTH = """\
auth:
  htpasswd:
    realm: basic-realm
    path: {path}
"""


def registry_unavailable_reason() -> str | None:
    if not os.path.exists(REGISTRY_BINARY):
        return f"{REGISTRY_BINARY} not installed (apt-get install docker-registry)"
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    return None


def bcrypt_entry(user: str, password: str) -> str:
    """One htpasswd line with a bcrypt hash."""
    tool = shutil.which("htpasswd")
    if tool:
        out = subprocess.run([tool, "-Bbn", user, password], capture_output=True, text=True,
                             check=True)
        return out.stdout.strip()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # the C library's bcrypt ($2b$), no extra package needed

        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))
    if not hashed or not hashed.startswith("$2"):
        raise RuntimeError("no bcrypt available to write an htpasswd file")
    return f"{user}:{hashed}"


class LocalRegistry:
    def __init__(
        self,
        netns: NetNS,
        port: int = 5000,
        htpasswd: tuple[str, str] | None = None,
        tmp_base: str | os.PathLike[str] | None = None,
        proxy_remote: str | None = None,
    ) -> None:
        """``proxy_remote``: serve as a pull-through mirror of that registry URL (in
        the same namespace), as ``registry-mirrors`` entries are."""
        self.netns = netns
        self.proxy_remote = proxy_remote
        self.port = port
        self.credentials = htpasswd
        self.tmp = Path(tempfile.mkdtemp(prefix=f"wharfd-reg-{port}-", dir=tmp_base))
        self.storage = self.tmp / "storage"
        self.config_path = self.tmp / "config.yml"
        self.log_path = self.tmp / "registry.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> LocalRegistry:
        reason = registry_unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        self.storage.mkdir(parents=True, exist_ok=True)
        auth = ""
        if self.credentials is not None:
            path = self.tmp / "htpasswd"
            path.write_text(bcrypt_entry(*self.credentials) + "\n")
            auth = _AUTH.format(path=path)
        if self.proxy_remote is not None:
            auth += _PROXY.format(remote=self.proxy_remote)
        self.config_path.write_text(
            _CONFIG.format(storage=self.storage, port=self.port, auth=auth)
        )
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.netns.wrap([REGISTRY_BINARY, "serve", str(self.config_path)]),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True,
            )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        probe = (f"import socket; socket.create_connection(('127.0.0.1', {self.port}), 0.5)"
                 ".close()")
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited {self.proc.returncode}: "
                                   f"{self.log_path.read_text()[-2000:]}")
            if self.netns.run([sys.executable, "-c", probe]).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError("docker-registry did not start listening in time")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM the registry by its PID, SIGKILL after 10 s; remove its files."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self.proc = None
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> LocalRegistry:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- looking inside -------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        hexpart = digest.removeprefix("sha256:")
        return (self.storage / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexpart[:2]
                / hexpart / "data")

    def repositories(self) -> list[str]:
        root = self.storage / "docker" / "registry" / "v2" / "repositories"
        if not root.exists():
            return []
        return sorted(str(p.parent.relative_to(root)) for p in root.rglob("_manifests"))

    def requests(self, method: str, path_part: str) -> int:
        """How many ``method`` requests whose path contains ``path_part`` the access log
        shows (counts what the daemon under test asked for)."""
        needle = f'"{method} '
        return sum(1 for line in self.log_text().splitlines()
                   if needle in line and path_part in line)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""
