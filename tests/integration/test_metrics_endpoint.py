"""``--metrics-addr``: a real daemon serving ``/metrics`` on 127.0.0.1 inside its own
network namespace, scraped with curl there and by Debian's ``prometheus`` server started
by the test in the same namespace (queried through its HTTP API).

wharfd only: the per-container families are ours (dockerd has none), and dockerd 20.10
serves its engine families on the same flag.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.cli import DockerCLI, import_busybox
from tests.harness.daemon import DaemonProcess, DaemonStartError, wharfd_unavailable_reason
from tests.harness.netns import NetNS

pytestmark = pytest.mark.root

METRICS = "127.0.0.1:9323"
PROMETHEUS = "/usr/bin/prometheus"
PROM_PORT = 9090


@pytest.fixture(scope="module")
def daemon(pytestconfig: pytest.Config, busybox_tar: Path) -> Iterator[DaemonProcess]:
    if pytestconfig.getoption("against_dockerd"):
        pytest.skip("wharfd's own metrics families")
    reason = wharfd_unavailable_reason()
    if reason:
        pytest.skip(reason)
    d = DaemonProcess(["--metrics-addr", METRICS])
    try:
        d.start()
        import_busybox(d, busybox_tar)
        yield d
    finally:
        d.cleanup()


@pytest.fixture(scope="module")
def web(daemon: DaemonProcess) -> Iterator[str]:
    """A running container with compose labels, named ``web``."""
    cli = DockerCLI(daemon)
    cid = cli.ok(
        "run", "-d", "--name", "web", "--label", "com.docker.compose.project=shop",
        "--label", "com.docker.compose.service=front", "busybox",
        "sh", "-c", "dd if=/dev/zero of=/fill bs=1M count=8 2>/dev/null; sleep 600",
    ).strip()
    try:
        yield cid
    finally:
        cli.remove([cid])


def curl(daemon: DaemonProcess, url: str) -> subprocess.CompletedProcess[str]:
    """``curl -i`` in the daemon's netns (text mode: the header lines end in ``\\n``)."""
    return daemon.netns.run(["curl", "-sS", "--max-time", "10", "-i", url],
                            capture_output=True, text=True)


def scrape(daemon: DaemonProcess) -> dict[str, float]:
    """``series{labels}`` → value (the exposition's sample lines)."""
    found = curl(daemon, f"http://{METRICS}/metrics")
    assert found.returncode == 0, found.stderr
    head, _, body = found.stdout.partition("\n\n")
    assert head.startswith("HTTP/1.1 200")
    assert "text/plain; version=0.0.4" in head
    samples = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            samples[series] = float(value)
    return samples


def one(samples: dict[str, float], family: str, *needles: str) -> float:
    hits = [v for k, v in samples.items()
            if k.startswith(family + "{") and all(n in k for n in needles)]
    assert len(hits) == 1, (family, needles, [k for k in samples if k.startswith(family)])
    return hits[0]


def test_scrape_shows_engine_and_container_series(daemon: DaemonProcess, web: str) -> None:
    samples = scrape(daemon)
    assert one(samples, "engine_daemon_container_states_containers", 'state="running"') >= 1
    assert one(samples, "engine_daemon_container_actions_seconds_count",
               'action="start"') >= 1
    assert one(samples, "engine_daemon_container_actions_seconds_count",
               'action="create"') >= 1
    assert one(samples, "engine_daemon_network_actions_seconds_count",
               'action="allocate"') >= 1
    assert samples["engine_daemon_events_total"] > 0
    assert one(samples, "engine_daemon_engine_info", 'os_type="linux"') == 1
    web_labels = (f'id="{web}"', 'name="web"', 'image="busybox"',
                  'compose_project="shop"', 'compose_service="front"')
    # the container writes 8 MiB into its rw layer: page cache charged to its cgroup
    deadline = time.monotonic() + 20
    while one(samples, "container_memory_usage_bytes", *web_labels) < 8 << 20:
        assert time.monotonic() < deadline, "memory usage never showed the 8 MiB written"
        time.sleep(0.2)
        samples = scrape(daemon)
    assert one(samples, "container_pids", *web_labels) >= 1
    assert one(samples, "container_cpu_usage_seconds_total", *web_labels) > 0
    assert one(samples, "container_network_receive_bytes_total", *web_labels,
               'interface="eth0"') >= 0


def test_scrape_follows_container_lifecycle(daemon: DaemonProcess, web: str) -> None:
    cli = DockerCLI(daemon)
    before = scrape(daemon)
    starts = one(before, "engine_daemon_container_actions_seconds_count", 'action="start"')
    cid = cli.ok("run", "-d", "--name", "brief", "busybox", "sleep", "600").strip()
    try:
        during = scrape(daemon)
        assert one(during, "engine_daemon_container_actions_seconds_count",
                   'action="start"') == starts + 1
        assert one(during, "container_pids", 'name="brief"') >= 1
        cli.ok("stop", "-t", "0", cid)
        after = scrape(daemon)
        assert not [k for k in after if 'name="brief"' in k]  # stopped: no usage series
        assert one(after, "engine_daemon_container_states_containers",
                   'state="stopped"') >= 1
    finally:
        cli.remove([cid])
    deletes = one(scrape(daemon), "engine_daemon_container_actions_seconds_count",
                  'action="delete"')
    assert deletes >= 1


def test_actions_and_health_checks_are_counted(daemon: DaemonProcess, web: str) -> None:
    cli = DockerCLI(daemon)
    before = scrape(daemon)

    def count(samples: dict[str, float], family: str, action: str) -> float:
        return one(samples, family + "_count", f'action="{action}"')

    containers, networks = ("engine_daemon_container_actions_seconds",
                            "engine_daemon_network_actions_seconds")
    cli.ok("diff", web)
    image = cli.ok("commit", web).strip()
    cli.ok("network", "create", "metrics-net")
    cli.ok("network", "connect", "metrics-net", web)
    cli.ok("network", "disconnect", "metrics-net", web)
    cli.ok("network", "rm", "metrics-net")
    sick = cli.ok("run", "-d", "--health-cmd", "false", "--health-interval", "1s",
                  "busybox", "sleep", "600").strip()
    try:
        deadline = time.monotonic() + 20
        while True:
            after = scrape(daemon)
            if after["engine_daemon_health_checks_failed_total"] >= 2:
                break
            assert time.monotonic() < deadline, "no failed health checks counted"
            time.sleep(0.5)
    finally:
        cli.remove([sick])
        cli("rmi", image)
    assert count(after, containers, "changes") == count(before, containers, "changes") + 1
    assert count(after, containers, "commit") == count(before, containers, "commit") + 1
    for action in ("create", "connect", "disconnect", "delete"):
        assert count(after, networks, action) >= 1, action
    assert after["engine_daemon_health_checks_total"] >= \
        after["engine_daemon_health_checks_failed_total"]


def test_other_paths_are_not_found(daemon: DaemonProcess) -> None:
    found = curl(daemon, f"http://{METRICS}/containers/json")
    assert found.stdout.startswith("HTTP/1.1 404")


def test_a_busy_metrics_address_stops_the_start(daemon: DaemonProcess) -> None:
    """The address taken by another process in the daemon's namespace: the daemon exits
    1 (as dockerd), having closed its engine again. (A namespace of its own: the module's
    daemon only decides whether the module runs at all.)"""
    with NetNS("wharfd-t") as netns:
        holder = netns.popen(
            [sys.executable, "-c", "import socket, sys; s = socket.socket(); "
             f"s.bind(('127.0.0.1', {METRICS.rsplit(':', 1)[1]})); s.listen(); "
             "print('bound', flush=True); sys.stdin.read()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        d = DaemonProcess(["--metrics-addr", METRICS], netns=netns)
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "bound\n"
            with pytest.raises(DaemonStartError):
                d.start(timeout=30)
            log = d.log_text()
            assert "failed to start daemon" in log and "address already in use" in log
            assert "engine closed" in log
        finally:
            d.cleanup()
            if holder.poll() is None:
                os.kill(holder.pid, signal.SIGKILL)
            holder.wait(10)


# ------------------------------------------------------------------ prometheus
_PROM_CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: wharfd
    static_configs:
      - targets: ["{target}"]
"""


@contextlib.contextmanager
def prometheus(daemon: DaemonProcess) -> Iterator[str]:
    """Debian's prometheus in the daemon's netns, scraping it every second; yields its
    base URL. Stopped by its PID."""
    tmp = Path(tempfile.mkdtemp(prefix="wharfd-prom-"))
    (tmp / "prometheus.yml").write_text(_PROM_CONFIG.format(target=METRICS))
    base = f"http://127.0.0.1:{PROM_PORT}"
    with open(tmp / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(
            daemon.netns.wrap([
                PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{PROM_PORT}",
            ]),
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while not curl(daemon, base + "/-/ready").stdout.startswith("HTTP/1.1 200"):
            assert proc.poll() is None, (tmp / "prometheus.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "prometheus did not become ready"
            time.sleep(0.5)
        yield base
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
def test_prometheus_scrapes_a_per_container_series(daemon: DaemonProcess, web: str) -> None:
    if not os.path.exists(PROMETHEUS):
        pytest.skip(f"{PROMETHEUS} not installed (apt-get install prometheus)")
    query = 'container_memory_usage_bytes{name="web",compose_service="front"}'
    with prometheus(daemon) as base:
        url = f"{base}/api/v1/query?query={urllib.parse.quote(query)}"
        deadline = time.monotonic() + 60
        while True:
            answer = curl(daemon, url).stdout.partition("\n\n")[2]
            data = json.loads(answer) if answer.startswith("{") else {}
            result = data.get("data", {}).get("result", [])
            if result:
                break
            assert time.monotonic() < deadline, f"no series in prometheus: {answer[:500]}"
            time.sleep(1)
        targets = json.loads(curl(daemon, f"{base}/api/v1/targets").stdout
                             .partition("\n\n")[2])
    (series,) = result
    assert series["metric"]["id"] == web
    assert series["metric"]["compose_project"] == "shop"
    assert float(series["value"][1]) > 8 << 20
    (target,) = targets["data"]["activeTargets"]
    assert target["health"] == "up", target
