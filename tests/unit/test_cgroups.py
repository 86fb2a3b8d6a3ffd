"""cgroup detection over recorded trees (tests/fixtures/cgroups)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import InvalidParameter
from engine.runtime import cgroups
from engine.runtime.cgroups import CgroupInfo, cgroup_dirs, cgroups_path, detect

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "cgroups"


def _detect(name: str) -> CgroupInfo:
    base = FIXTURES / name
    return detect(base / "mountinfo", base / "sys_fs_cgroup", base / "self_cgroup")


def test_v1_hybrid_is_version_1_with_v1_controllers() -> None:
    info = _detect("v1-hybrid")
    root = FIXTURES / "v1-hybrid" / "sys_fs_cgroup"
    assert info.version == "1"
    assert info.driver == "cgroupfs"
    assert info.controllers == {
        "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids"
    }
    assert info.mount_points["memory"] == root / "memory"
    assert info.mount_points["name=systemd"] == root / "systemd"
    # the hybrid cgroup2 mount, where runc also creates the container's group
    assert info.mount_points[""] == root / "unified"


def test_v1_hybrid_feature_flags() -> None:
    info = _detect("v1-hybrid")
    assert info.memory_limit and info.swap_limit and info.memory_reservation
    assert info.oom_kill_disable and info.memory_swappiness
    assert info.kernel_memory and info.kernel_memory_tcp
    assert info.cpu_shares and info.cpu_cfs and info.cpu_realtime
    assert info.cpuset and info.cpus == "0-1" and info.mems == "0"
    assert info.pids_limit and info.devices
    # this host's blkio (BFQ) has no blkio.weight, but has the throttle files
    assert not info.blkio_weight and not info.blkio_weight_device
    assert info.blkio_read_bps_device and info.blkio_write_iops_device
    assert info.warnings == ("Your kernel does not support cgroup blkio weight",)


def test_v2_unified() -> None:
    info = _detect("v2-unified")
    root = FIXTURES / "v2-unified" / "sys_fs_cgroup"
    assert info.version == "2"
    assert info.controllers == {"cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma",
                                "misc"}
    assert info.mount_points == {"": root}
    assert info.memory_limit and info.swap_limit and info.memory_reservation
    assert not info.oom_kill_disable and not info.memory_swappiness
    assert not info.kernel_memory and not info.cpu_realtime
    assert info.cpu_shares and info.cpu_cfs and info.pids_limit
    assert info.blkio_weight and info.blkio_read_bps_device
    assert info.cpus == "0-3" and info.mems == "0"
    assert info.devices
    assert info.warnings == ()


def test_v2_without_own_group_has_no_swap_limit(tmp_path: Path) -> None:
    base = FIXTURES / "v2-unified"
    other = tmp_path / "cgroup"
    other.write_text("0::/elsewhere\n")
    info = detect(base / "mountinfo", base / "sys_fs_cgroup", other)
    assert info.memory_limit and not info.swap_limit


def test_v1_without_proc_self_cgroup_falls_back_to_known_controllers(tmp_path: Path) -> None:
    base = FIXTURES / "v1-hybrid"
    info = detect(base / "mountinfo", base / "sys_fs_cgroup", tmp_path / "missing")
    assert "memory" in info.controllers
    assert "name=systemd" not in info.mount_points  # unknown without /proc/self/cgroup


def test_the_live_host_is_detected() -> None:
    if not Path("/proc/self/mountinfo").exists():
        pytest.skip("no /proc")
    info = detect()
    assert info.version in ("1", "2")


def test_mountinfo_parsing_handles_optional_fields_and_escapes() -> None:
    entries = cgroups.read_mountinfo(FIXTURES / "v2-unified" / "mountinfo")
    by_point = {e.mount_point: e for e in entries}
    cg = by_point["/sys/fs/cgroup"]
    assert cg.fs_type == "cgroup2"
    assert cg.super_options == ("rw", "nsdelegate", "memory_recursiveprot")
    spaced = by_point["/mnt/with space"]
    assert spaced.root == "/var/lib/with space"
    assert cgroups.parse_mountinfo("garbage line\n\n") == []


def test_version_is_decided_by_the_last_mount_on_sys_fs_cgroup() -> None:
    v2 = "1 0 0:1 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    tmpfs = "2 1 0:2 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
    assert cgroups.cgroup_version(cgroups.parse_mountinfo(v2)) == "2"
    assert cgroups.cgroup_version(cgroups.parse_mountinfo(v2 + tmpfs)) == "1"
    assert cgroups.cgroup_version([]) == "1"


def test_self_cgroup_parsing() -> None:
    parsed = cgroups.parse_self_cgroup("2:cpu,cpuacct:/a\n1:name=systemd:/\n0::/x.slice\n")
    assert parsed == {"cpu": "/a", "cpuacct": "/a", "name=systemd": "/", "": "/x.slice"}


def test_host_path_rebases_only_cgroup_mounts() -> None:
    root = Path("/fixture")
    assert cgroups.host_path("/sys/fs/cgroup", root) == root
    assert cgroups.host_path("/sys/fs/cgroup/cpu", root) == root / "cpu"
    assert cgroups.host_path("/sys/fs/cgroupx", root) == Path("/sys/fs/cgroupx")


def test_cgroups_path() -> None:
    cid = "a" * 64
    assert cgroups_path("", cid) == f"/wharfd/{cid}"
    assert cgroups_path("/docker", cid) == f"/docker/{cid}"
    assert cgroups_path("/a/../b/", cid) == f"/b/{cid}"
    assert cgroups_path("/../..", cid) == f"/{cid}"
    assert cgroups_path("mine", cid) == f"mine/{cid}"  # relative to the runtime's cgroup
    with pytest.raises(InvalidParameter):
        cgroups_path("../up", cid)
    with pytest.raises(InvalidParameter):
        cgroups_path("/x", "../../etc")


def test_cgroup_dirs_cover_every_hierarchy() -> None:
    info = _detect("v1-hybrid")
    root = FIXTURES / "v1-hybrid" / "sys_fs_cgroup"
    dirs = cgroup_dirs(info, "/wharfd-test/abc")
    assert dirs["devices"] == root / "devices" / "wharfd-test" / "abc"
    assert dirs[""] == root / "unified" / "wharfd-test" / "abc"
    v2 = _detect("v2-unified")
    assert cgroup_dirs(v2, "/x/y") == {"": FIXTURES / "v2-unified" / "sys_fs_cgroup" / "x/y"}
    with pytest.raises(ValueError):
        cgroup_dirs(v2, "relative")
