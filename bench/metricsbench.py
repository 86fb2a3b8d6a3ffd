"""Scrape cost of ``--metrics-addr`` (issue 16 item 4: at most 50 ms for 100 containers).

Starts wharfd through the test harness (own netns, temporary roots) with
``--metrics-addr 127.0.0.1:9323``, runs ``--containers`` (100) ``sleep`` containers on the
default bridge, then times ``--scrapes`` (50) ``GET /metrics`` over one keep-alive
connection from a client inside the daemon's namespace, after one untimed warm-up scrape.
Prints the median, p90 and max in ms, and the scrape's size. Wall time as a client sees
it: the cgroup and /proc reads, the rendering and the transfer; it grows with the
machine's load, so the daemon's CPU time per scrape (utime + stime over the scrapes, in
clock ticks) and the load average are printed too. Run as root:

    .venv/bin/python bench/metricsbench.py [--containers 100] [--scrapes 50]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.harness.busybox import BusyboxArtifacts  # noqa: E402
from tests.harness.cli import import_busybox  # noqa: E402
from tests.harness.daemon import DaemonProcess  # noqa: E402

ADDRESS = "127.0.0.1:9323"

# Runs inside the daemon's netns: N timed scrapes on one connection, as JSON.
_CLIENT = """
import http.client, json, sys, time
host, port = sys.argv[1].rsplit(":", 1)
conn = http.client.HTTPConnection(host, int(port), timeout=30)
def scrape():
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    body = response.read()
    assert response.status == 200, response.status
    return body
scrape()
times = []
for _ in range(int(sys.argv[2])):
    started = time.perf_counter()
    body = scrape()
    times.append((time.perf_counter() - started) * 1000)
print(json.dumps({"ms": times, "bytes": len(body), "lines": body.count(b"\\n")}))
"""


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of the daemon (all its threads) so far: unlike wall time,
    it does not grow when other work on the machine takes the CPUs."""
    assert pid is not None
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=100)
    parser.add_argument("--scrapes", type=int, default=50)
    args = parser.parse_args()
    artifacts = BusyboxArtifacts.create()
    daemon = DaemonProcess(["--metrics-addr", ADDRESS, "--log-level", "info"])
    try:
        daemon.start()
        import_busybox(daemon, artifacts.tar_path)
        started = time.monotonic()
        for index in range(args.containers):
            cid = daemon.api_json("POST", f"/containers/create?name=m{index}", {
                "Image": "busybox", "Cmd": ["sleep", "3600"],
                "Labels": {"com.docker.compose.project": "bench",
                           "com.docker.compose.service": f"s{index % 10}"},
            })["Id"]
            response = daemon.api("POST", f"/containers/{cid}/start")
            assert response.status == 204, response.status
        print(f"{args.containers} containers running after {time.monotonic() - started:.1f}s")
        cpu_before = _cpu_seconds(daemon.pid)
        found = daemon.netns.run([sys.executable, "-c", _CLIENT, ADDRESS, str(args.scrapes)],
                                 capture_output=True, text=True, timeout=600)
        if found.returncode != 0:
            print(found.stderr, file=sys.stderr)
            return 1
        cpu_ms = (_cpu_seconds(daemon.pid) - cpu_before) * 1000 / (args.scrapes + 1)
        result = json.loads(found.stdout)
        times = sorted(result["ms"])
        median = times[len(times) // 2]
        p90 = times[int(len(times) * 0.9) - 1]
        print(f"scrape of {args.containers} containers: median {median:.1f} ms, "
              f"p90 {p90:.1f} ms, max {times[-1]:.1f} ms "
              f"({result['bytes']} bytes, {result['lines']} lines, {len(times)} scrapes); "
              f"daemon CPU time {cpu_ms:.1f} ms per scrape; load average {_load()}")
        return 0
    finally:
        daemon.cleanup()
        artifacts.cleanup()


if __name__ == "__main__":
    sys.exit(main())
