"""Stats JSON from recorded cgroup files (v1 recorded here, v2 in the kernel's format),
and ``docker top``'s ps parsing and pid collection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.containers import stats, top
from engine.errors import InvalidParameter, SystemError_

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cgroups"
V1 = FIXTURES / "v1-container"
V2 = FIXTURES / "v2-container"
NOW = 1_795_819_936_123_456_789


def v1_files() -> stats.CgroupFiles:
    return stats.CgroupFiles(
        "1", {c: V1 / c for c in ("memory", "cpuacct", "cpu", "blkio", "pids")}
    )


def v2_files() -> stats.CgroupFiles:
    return stats.CgroupFiles("2", {"": V2 / "group"})


def v1_sample() -> stats.Sample:
    host = stats.HostFiles(V1 / "proc_stat", V1 / "meminfo")
    return stats.read_sample(v1_files(), V1 / "net_dev", host, now_ns=NOW)


def v2_sample() -> stats.Sample:
    host = stats.HostFiles(V2 / "proc_stat", V2 / "meminfo")
    return stats.read_sample(v2_files(), V2 / "net_dev", host, now_ns=NOW)


# ------------------------------------------------------------------ cgroup v1
def test_v1_cpu_fields() -> None:
    cpu = v1_sample().cpu
    assert list(cpu) == ["cpu_usage", "system_cpu_usage", "online_cpus", "throttling_data"]
    assert cpu["cpu_usage"] == {
        "total_usage": 19137898,
        "percpu_usage": [2968050, 16169848],
        "usage_in_kernelmode": 10_000_000,  # 1 tick of cpuacct.stat "system"
        "usage_in_usermode": 0,
    }
    # /proc/stat: the first seven fields of "cpu", ticks (USER_HZ 100) in ns
    ticks = 62011 + 0 + 43726 + 358634 + 2236 + 0 + 538
    assert cpu["system_cpu_usage"] == ticks * 10_000_000
    assert cpu["online_cpus"] == 2
    assert cpu["throttling_data"] == {"periods": 0, "throttled_periods": 0, "throttled_time": 0}


def test_v1_memory_fields() -> None:
    memory = v1_sample().memory
    assert memory["usage"] == 618496
    assert memory["max_usage"] == 3829760
    assert "failcnt" not in memory  # 0 is omitted, as Go's omitempty
    # no limit set (PAGE_COUNTER_MAX): capped at the host's RAM
    assert memory["limit"] == 24684092 * 1024
    assert sorted(memory["stats"]) == list(stats.V1_MEMORY_KEYS)
    captured_keys = (  # dockerd 20.10's memory_stats.stats on this host, in order
        "active_anon active_file cache dirty hierarchical_memory_limit "
        "hierarchical_memsw_limit inactive_anon inactive_file mapped_file pgfault pgmajfault "
        "pgpgin pgpgout rss rss_huge total_active_anon total_active_file total_cache "
        "total_dirty total_inactive_anon total_inactive_file total_mapped_file total_pgfault "
        "total_pgmajfault total_pgpgin total_pgpgout total_rss total_rss_huge "
        "total_unevictable total_writeback unevictable writeback"
    ).split()
    assert list(memory["stats"]) == captured_keys
    assert "total_inactive_file" in memory["stats"]
    assert "shmem" not in memory["stats"]  # moby's key set, not the whole file
    assert memory["stats"]["rss"] == 110592
    assert memory["stats"]["hierarchical_memory_limit"] == 9223372036854771712


def test_v1_blkio_pids_networks() -> None:
    sample = v1_sample()
    # no CFQ files on this kernel: throttle counters, only a "Total 0" line → []
    assert sample.blkio == {key: [] for key in stats.BLKIO_KEYS}
    assert sample.pids == {"current": 2}  # pids.max "max" → no limit field
    assert sample.networks is not None
    assert set(sample.networks) == {"ifb0", "ifb1", "eth0"}  # lo left out
    assert sample.networks["eth0"] == {
        "rx_bytes": 309325107, "rx_packets": 8812, "rx_errors": 0, "rx_dropped": 0,
        "tx_bytes": 546254, "tx_packets": 5140, "tx_errors": 0, "tx_dropped": 0,
    }


def test_v1_blkio_cfq_and_throttle_lines(tmp_path: Path) -> None:
    text = "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 12288\n8:0 Total 12288\nTotal 12288\n"
    assert stats.parse_blkio_v1(text) == [
        {"major": 8, "minor": 0, "op": "Read", "value": 4096},
        {"major": 8, "minor": 0, "op": "Write", "value": 8192},
        {"major": 8, "minor": 0, "op": "Sync", "value": 12288},
        {"major": 8, "minor": 0, "op": "Total", "value": 12288},
    ]
    (tmp_path / "blkio.io_serviced_recursive").write_text("8:0 Read 3\nTotal 3\n")
    (tmp_path / "blkio.io_service_bytes_recursive").write_text("8:0 Read 4096\nTotal 4096\n")
    files = stats.CgroupFiles("1", {"blkio": tmp_path})
    blkio = stats._v1_blkio(files)
    assert blkio["io_service_bytes_recursive"] == [
        {"major": 8, "minor": 0, "op": "Read", "value": 4096}]
    assert blkio["io_serviced_recursive"] == [{"major": 8, "minor": 0, "op": "Read", "value": 3}]
    assert blkio["sectors_recursive"] == []


def test_v1_document_shape_and_order() -> None:
    first = v1_sample()
    second = stats.read_sample(v1_files(), V1 / "net_dev",
                               stats.HostFiles(V1 / "proc_stat", V1 / "meminfo"),
                               now_ns=NOW + 1_000_000_000)
    doc = stats.stats_json("t1", "a" * 64, second, first)
    assert list(doc) == ["read", "preread", "pids_stats", "blkio_stats", "num_procs",
                         "storage_stats", "cpu_stats", "precpu_stats", "memory_stats",
                         "name", "id", "networks"]
    assert doc["read"] == "2026-11-27T22:52:17.123456789Z"
    assert doc["preread"] == "2026-11-27T22:52:16.123456789Z"
    assert doc["name"] == "/t1"
    assert doc["num_procs"] == 0 and doc["storage_stats"] == {}
    assert doc["precpu_stats"] == first.cpu
    _assert_integers(doc)


def _assert_integers(value: object) -> None:
    """No float anywhere: Go decodes these into integer fields."""
    assert not isinstance(value, float)
    if isinstance(value, dict):
        for item in value.values():
            _assert_integers(item)
    elif isinstance(value, list):
        for item in value:
            _assert_integers(item)


def test_cli_figures_from_v1_document() -> None:
    """What docker/cli's stats_helpers compute from two samples (CPU %, MEM)."""
    pre = v1_sample()
    base = v1_files().dirs["cpuacct"]
    assert base.exists()
    doc = stats.stats_json("t1", "b" * 64, v1_sample(), pre)
    mem = doc["memory_stats"]
    used = mem["usage"] - mem["stats"]["total_inactive_file"]
    assert used == 618496
    assert 0 < used / mem["limit"] * 100 < 1
    online = doc["cpu_stats"]["online_cpus"] or len(doc["cpu_stats"]["cpu_usage"]["percpu_usage"])
    assert online == 2


# ------------------------------------------------------------------ cgroup v2
def test_v2_cpu_fields() -> None:
    cpu = v2_sample().cpu
    assert cpu["cpu_usage"] == {
        "total_usage": 2046377 * 1000,
        "usage_in_kernelmode": 808256 * 1000,
        "usage_in_usermode": 1238121 * 1000,
    }  # no percpu_usage on v2
    assert cpu["online_cpus"] == 4
    assert cpu["system_cpu_usage"] == (59252 + 12 + 42224 + 336750 + 2133 + 0 + 513) * 10**7
    assert cpu["throttling_data"] == {
        "periods": 240, "throttled_periods": 12, "throttled_time": 530210 * 1000}


def test_v2_memory_fields() -> None:
    memory = v2_sample().memory
    assert memory["usage"] == 4304896
    assert "max_usage" not in memory  # v2 has no max_usage
    assert memory["limit"] == 2014508 * 1024  # memory.max "max" → host RAM
    assert memory["failcnt"] == 1  # memory.events oom
    assert sorted(memory["stats"]) == list(stats.V2_MEMORY_KEYS)
    assert memory["stats"]["inactive_file"] == 1310720
    assert memory["stats"]["pgmajfault"] == 12
    assert memory["stats"]["workingset_refault"] == 0  # absent from newer kernels: 0
    assert "total_inactive_file" not in memory["stats"]


def test_v2_memory_limit_below_host(tmp_path: Path) -> None:
    group = tmp_path / "group"
    group.mkdir()
    for name in ("memory.current", "memory.stat", "memory.events"):
        (group / name).write_text((V2 / "group" / name).read_text())
    (group / "memory.max").write_text("209715200\n")
    files = stats.CgroupFiles("2", {"": group})
    host = stats.HostFiles(V2 / "proc_stat", V2 / "meminfo")
    sample = stats.read_sample(files, None, host, now_ns=NOW)
    assert sample.memory["limit"] == 209715200
    assert sample.networks is None


def test_v2_blkio_and_pids() -> None:
    sample = v2_sample()
    assert sample.blkio["io_service_bytes_recursive"] == [
        {"major": 254, "minor": 0, "op": "read", "value": 2621440},
        {"major": 254, "minor": 0, "op": "write", "value": 8192},
        {"major": 7, "minor": 0, "op": "read", "value": 1024},
        {"major": 7, "minor": 0, "op": "write", "value": 0},
    ]
    assert all(sample.blkio[key] is None for key in stats.BLKIO_KEYS[1:])
    assert sample.pids == {"current": 3, "limit": 512}
    assert sample.networks == {"eth0": {
        "rx_bytes": 10866, "rx_packets": 101, "rx_errors": 1, "rx_dropped": 2,
        "tx_bytes": 3208, "tx_packets": 34, "tx_errors": 3, "tx_dropped": 4}}


def test_v2_empty_io_stat_is_null() -> None:
    assert stats.parse_io_stat("") is None
    assert stats.parse_io_stat(None) is None


def test_v2_document_is_json() -> None:
    doc = stats.stats_json("web", "c" * 64, v2_sample(), None)
    assert doc["preread"] == stats.ZERO_TIME
    assert doc["precpu_stats"] == stats.zero_cpu()
    assert "percpu_usage" not in doc["cpu_stats"]["cpu_usage"]
    json.dumps(doc)
    _assert_integers(doc)


def test_missing_cgroup_gives_zeros(tmp_path: Path) -> None:
    """A container that stopped between the check and the read: zeros, no error."""
    files = stats.CgroupFiles("1", {c: tmp_path / "gone" / c for c in ("memory", "cpuacct")})
    sample = stats.read_sample(files, tmp_path / "gone" / "net_dev",
                               stats.HostFiles(V1 / "proc_stat", V1 / "meminfo"), now_ns=NOW)
    assert sample.memory == {}
    assert sample.cpu["cpu_usage"]["total_usage"] == 0
    assert sample.networks is None


# ------------------------------------------------------------------ not running
def test_not_running_document_matches_dockerd() -> None:
    doc = stats.stats_json("c1", "d" * 64, None, None)
    captured = (
        '{"read":"0001-01-01T00:00:00Z","preread":"0001-01-01T00:00:00Z","pids_stats":{},'
        '"blkio_stats":{"io_service_bytes_recursive":null,"io_serviced_recursive":null,'
        '"io_queue_recursive":null,"io_service_time_recursive":null,'
        '"io_wait_time_recursive":null,"io_merged_recursive":null,"io_time_recursive":null,'
        '"sectors_recursive":null},"num_procs":0,"storage_stats":{},"cpu_stats":{"cpu_usage":'
        '{"total_usage":0,"usage_in_kernelmode":0,"usage_in_usermode":0},"throttling_data":'
        '{"periods":0,"throttled_periods":0,"throttled_time":0}},"precpu_stats":{"cpu_usage":'
        '{"total_usage":0,"usage_in_kernelmode":0,"usage_in_usermode":0},"throttling_data":'
        '{"periods":0,"throttled_periods":0,"throttled_time":0}},"memory_stats":{},'
        '"name":"/c1","id":"' + "d" * 64 + '"}'
    )
    assert json.dumps(doc, separators=(",", ":")) == captured


def test_system_cpu_counts_cpu_lines_only() -> None:
    usage, cpus = stats.system_cpu("cpu  1 2 3 4 5 6 7 8 9\ncpu0 1 1 1 1 1 1 1\n"
                                   "cpufreq 1\nintr 9\n")
    assert usage == 28 * 1_000_000_000 // stats.CLOCK_TICKS
    assert cpus == 1


# ------------------------------------------------------------------ top
PS_EF = """UID          PID    PPID  C STIME TTY          TIME CMD
root           1       0  0 20:00 ?        00:00:01 /sbin/init
root        9896    9885  0 22:52 ?        00:00:00 sh -c while true; do  sleep 3600; done
root        9906    9896  0 22:52 ?        00:00:00 sleep 3600
"""


def test_parse_ps_keeps_container_rows() -> None:
    out = top.parse_ps_output(PS_EF, {9896, 9906})
    assert out["Titles"] == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    assert out["Processes"] == [
        ["root", "9896", "9885", "0", "22:52", "?", "00:00:00",
         "sh -c while true; do sleep 3600; done"],
        ["root", "9906", "9896", "0", "22:52", "?", "00:00:00", "sleep 3600"],
    ]


def test_parse_ps_thread_rows_follow_their_process() -> None:
    text = ("  PID TTY      STAT   TIME COMMAND\n"
            " 9896 ?        -      0:00 sh\n"
            "    - -        Ss     0:00 -\n"
            "   77 ?        -      0:00 other\n"
            "    - -        S      0:00 -\n")
    out = top.parse_ps_output(text, {9896})
    assert [row[0] for row in out["Processes"]] == ["9896", "-"]


def test_parse_ps_without_pid_column() -> None:
    with pytest.raises(SystemError_, match="Couldn't find PID field in ps output"):
        top.parse_ps_output("COMMAND\nsh\n", {1})


def test_ps_args_renaming_a_column_to_pid_is_refused() -> None:
    top.validate_ps_args("-o pid=PID")
    with pytest.raises(InvalidParameter, match='specifying "user=PID" is not allowed'):
        top.validate_ps_args("-o user=PID")


def test_container_pids_v1_and_v2() -> None:
    v1 = top.procs_dir("1", v1_files().dirs)
    assert v1 == V1 / "pids"
    assert top.container_pids(v1) == {9896, 9906}
    v2 = top.procs_dir("2", v2_files().dirs)
    assert top.container_pids(v2) == {4011, 4032, 4040, 4101}  # child groups included
    assert top.container_pids(None) == set()


def test_lean_v1_sample_reads_only_what_the_metrics_use() -> None:
    """``full=False`` (the metrics scrape) drops per-CPU usage, max_usage and I/O
    counts; the rest is the same sample."""
    host = stats.HostFiles(V1 / "proc_stat", V1 / "meminfo")
    full = stats.read_sample(v1_files(), V1 / "net_dev", host, now_ns=NOW)
    lean = stats.read_sample(v1_files(), V1 / "net_dev", host, now_ns=NOW, full=False)
    assert "percpu_usage" not in lean.cpu["cpu_usage"]
    assert "max_usage" not in lean.memory
    assert lean.memory["usage"] == full.memory["usage"]
    assert lean.memory["stats"] == full.memory["stats"]
    assert lean.blkio["io_service_bytes_recursive"] == full.blkio["io_service_bytes_recursive"]
    assert lean.networks == full.networks and lean.pids == full.pids
