"""A single etcd member inside a test's own network namespace.

etcd listens on 127.0.0.1 of that namespace, so nothing outside it can reach the member
and it reaches nothing. A test talks to it from a thread that entered the namespace
(:func:`thread_in_netns`): sockets belong to the namespace of the thread that creates
them, so an event loop on that thread connects inside. The member is started and
stopped by PID and its data directory is removed afterwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.harness.netns import NetNS

CLONE_NEWNET = 0x40000000
ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def thread_in_netns(netns: NetNS) -> Iterator[None]:
    """Move the calling thread (only it) into ``netns``, and back on exit."""
    with open(f"/proc/{os.getpid()}/task/{ctypes.CDLL(None).gettid()}/ns/net", "rb") as home:
        with open(netns.path, "rb") as target:
            _setns(target.fileno())
        try:
            yield
        finally:
            _setns(home.fileno())


@dataclass(frozen=True)
class ThrowawayPKI:
    """A throwaway CA, a server pair for 127.0.0.1 and a client pair, made with openssl."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_test_pki(directory: Path) -> ThrowawayPKI:
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    ca_key, ca = directory / "ca.key", directory / "ca.pem"
    openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca),
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
    )
    pairs = {}
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        key, csr, cert = (directory / f"{name}.{s}" for s in ("key", "csr", "pem"))
        openssl(
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(csr),
            "-subj",
            f"/CN={name}",
        )
        extfile = directory / f"{name}.ext"
        extfile.write_text(ext + "\n")
        openssl(
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(ca),
            "-CAkey",
            str(ca_key),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            str(extfile),
            "-out",
            str(cert),
        )
        pairs[name] = (cert, key)
    return ThrowawayPKI(ca, *pairs["server"], *pairs["client"])


class EtcdMember:
    """``etcd`` on 127.0.0.1:<client_port> inside ``netns``; :meth:`start` / :meth:`stop`."""

    def __init__(
        self, netns: NetNS, client_port: int = 2379, peer_port: int = 2380, tls: bool = False
    ) -> None:
        self.netns = netns
        self.data_dir = Path(tempfile.mkdtemp(prefix="wharfd-etcd-"))
        # With tls, clients need a certificate from pki.ca (etcd's --client-cert-auth).
        self.pki = make_test_pki(self.data_dir) if tls else None
        scheme = "https" if tls else "http"
        self.client_url = f"{scheme}://127.0.0.1:{client_port}"
        self.peer_url = f"http://127.0.0.1:{peer_port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = open(self.data_dir / "etcd.log", "wb")  # closed in stop()

    def start(self, ready_timeout: float = 20.0) -> EtcdMember:
        argv = [
            ETCD,
            "--name=t0",
            f"--data-dir={self.data_dir / 'member'}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster=t0={self.peer_url}",
            "--initial-cluster-state=new",
            "--log-outputs=stderr",
        ]
        if self.pki is not None:
            argv += [
                f"--cert-file={self.pki.server_cert}",
                f"--key-file={self.pki.server_key}",
                f"--trusted-ca-file={self.pki.ca}",
                "--client-cert-auth",
            ]
        self.proc = self.netns.popen(argv, stdout=self._log, stderr=self._log)
        self._wait_healthy(ready_timeout)
        return self

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited {self.proc.returncode}: {self.log_tail()}")
            if self._healthy():
                return
            time.sleep(0.1)
        raise RuntimeError(f"etcd not healthy after {timeout}s: {self.log_tail()}")

    def _healthy(self) -> bool:
        context = None
        if self.pki is not None:
            context = ssl.create_default_context(cafile=str(self.pki.ca))
            context.load_cert_chain(str(self.pki.client_cert), str(self.pki.client_key))
        with thread_in_netns(self.netns):
            try:
                with urllib.request.urlopen(
                    self.client_url + "/health", timeout=1, context=context
                ) as resp:
                    return b'"true"' in resp.read()
            except OSError:
                return False

    def log_tail(self) -> str:
        self._log.flush()
        return (self.data_dir / "etcd.log").read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        """Stop by PID (TERM, then KILL) and remove the data directory."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EtcdMember:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
