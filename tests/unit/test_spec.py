"""The OCI spec builder: Docker's default security posture and its knobs."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.containers import spec as specmod
from engine.containers.spec import (
    DEFAULT_CAPABILITIES,
    DEFAULT_MASKED_PATHS,
    DEFAULT_READONLY_PATHS,
    KNOWN_CAPABILITIES,
    HostFacts,
    NamespaceChoice,
    ProcessUser,
    ResolvedDevice,
    Resources,
    SpecRequest,
    Ulimit,
    build_spec,
    capability_mask,
    lookup_user,
    parse_device_cgroup_rule,
    parse_security_opts,
    resolve_device,
    resolve_user,
    tweak_capabilities,
    validate_sysctls,
)
from engine.errors import InvalidParameter

# like this host: every capability but CAP_SYS_RESOURCE
HOST_CAPS = tuple(c for c in KNOWN_CAPABILITIES if c != "CAP_SYS_RESOURCE")
HOST_NULL = ResolvedDevice("/dev/null", "c", 1, 3, 0o666, 0, 0)
HOST_SDA = ResolvedDevice("/dev/sda", "b", 8, 0, 0o660, 0, 6)
HOST = HostFacts(capabilities=HOST_CAPS, kernel=(6, 1), host_devices=(HOST_NULL, HOST_SDA))
REQ = SpecRequest(args=["sh"], rootfs="/var/lib/wharfd/x/rootfs", cgroups_path="/wharfd/x")

DEFAULT_DEVICE_RULES = [
    {"allow": False, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 9, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 8, "access": "rwm"},
    {"allow": True, "type": "c", "major": 5, "minor": 0, "access": "rwm"},
    {"allow": True, "type": "c", "major": 5, "minor": 1, "access": "rwm"},
    {"allow": False, "type": "c", "major": 10, "minor": 229, "access": "rwm"},
]


def build(**changes: Any) -> dict[str, Any]:
    host = changes.pop("host", HOST)
    return build_spec(replace(REQ, **changes), host)


def mounts_by_dest(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["destination"]: m for m in spec["mounts"]}


def invalid(fragment: str, **changes: Any) -> str:
    with pytest.raises(InvalidParameter) as info:
        build(**changes)
    assert fragment in info.value.message, info.value.message
    return info.value.message


# -- capabilities ---------------------------------------------------------------------------


def test_default_capabilities_are_dockers_14() -> None:
    caps = build()["process"]["capabilities"]
    assert caps["bounding"] == list(DEFAULT_CAPABILITIES)
    assert caps["effective"] == caps["permitted"] == caps["bounding"]
    assert "inheritable" not in caps and "ambient" not in caps
    assert len(DEFAULT_CAPABILITIES) == 14
    assert capability_mask(caps["bounding"]) == 0x00000000A80425FB


def test_non_root_user_keeps_docker_capability_sets() -> None:
    # The kernel, not the spec, drops effective caps at exec for uid != 0 (CapEff 0 with
    # CapBnd unchanged is what `docker run -u 1000` shows).
    user = ProcessUser(uid=1000, gid=1000, additional_gids=(1000,))
    process = build(user=user)["process"]
    assert process["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [1000]}
    assert process["capabilities"]["effective"] == list(DEFAULT_CAPABILITIES)


@pytest.mark.parametrize("name", ["NET_ADMIN", "net_admin", "CAP_NET_ADMIN", "cap_Net_Admin"])
def test_cap_add_accepts_any_case_with_or_without_prefix(name: str) -> None:
    caps = build(cap_add=[name])["process"]["capabilities"]["bounding"]
    assert caps == [*DEFAULT_CAPABILITIES, "CAP_NET_ADMIN"]


def test_cap_drop_and_add_together() -> None:
    caps = build(cap_add=["sys_ptrace", "CHOWN"], cap_drop=["chown", "MKNOD"])
    bounding = caps["process"]["capabilities"]["bounding"]
    assert "CAP_MKNOD" not in bounding
    assert bounding.count("CAP_CHOWN") == 1  # dropped, then added back
    assert "CAP_SYS_PTRACE" in bounding


def test_cap_drop_all() -> None:
    assert build(cap_drop=["ALL"])["process"]["capabilities"]["bounding"] == []
    only = build(cap_drop=["all"], cap_add=["NET_BIND_SERVICE"])
    assert only["process"]["capabilities"]["bounding"] == ["CAP_NET_BIND_SERVICE"]


def test_cap_add_all_minus_drops() -> None:
    caps = build(cap_add=["ALL"], cap_drop=["SYS_ADMIN"])["process"]["capabilities"]
    assert caps["bounding"] == [c for c in HOST_CAPS if c != "CAP_SYS_ADMIN"]


def test_unknown_capability_messages() -> None:
    assert invalid("", cap_add=["CAP_BOGUS"]) == 'invalid CapAdd: unknown capability: "CAP_BOGUS"'
    assert invalid("", cap_add=["bogus"]) == 'invalid CapAdd: unknown capability: "CAP_BOGUS"'
    assert invalid("", cap_drop=["nope"]) == 'invalid CapDrop: unknown capability: "CAP_NOPE"'


def test_capability_missing_from_the_environment() -> None:
    message = invalid("", cap_add=["SYS_RESOURCE"])
    assert message == (
        "invalid CapAdd: capability not supported by your kernel or not available in the "
        'current environment: "CAP_SYS_RESOURCE"'
    )


_CAP_NAMES = st.sampled_from([c.removeprefix("CAP_").lower() for c in HOST_CAPS])


@given(st.lists(_CAP_NAMES, max_size=6), st.lists(_CAP_NAMES, max_size=6))
def test_cap_add_and_drop_compose(adds: list[str], drops: list[str]) -> None:
    caps = tweak_capabilities(adds, drops, False, HOST_CAPS)
    added = {"CAP_" + a.upper() for a in adds}
    dropped = {"CAP_" + d.upper() for d in drops}
    assert len(caps) == len(set(caps))
    assert set(caps) == (set(DEFAULT_CAPABILITIES) - dropped) | added


def test_capability_errors_are_raised_even_when_privileged() -> None:
    invalid("unknown capability", privileged=True, cap_add=["CAP_BOGUS"])


# -- privileged ------------------------------------------------------------------------------


def test_privileged() -> None:
    spec = build(privileged=True)
    linux = spec["linux"]
    assert spec["process"]["capabilities"]["bounding"] == list(HOST_CAPS)
    assert "seccomp" not in linux
    assert linux["maskedPaths"] == [] and linux["readonlyPaths"] == []
    mounts = mounts_by_dest(spec)
    assert "ro" not in mounts["/sys"]["options"]
    assert "ro" not in mounts["/sys/fs/cgroup"]["options"]
    assert linux["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert [d["path"] for d in linux["devices"]] == ["/dev/null", "/dev/sda"]
    assert linux["devices"][1] == {"path": "/dev/sda", "type": "b", "major": 8, "minor": 0,
                                   "fileMode": 0o660, "uid": 0, "gid": 6}


def test_privileged_keeps_explicit_paths_and_custom_seccomp() -> None:
    profile = json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []})
    spec = build(privileged=True, masked_paths=["/proc/kcore"],
                 security_opt=[f"seccomp={profile}"])
    assert spec["linux"]["maskedPaths"] == ["/proc/kcore"]
    assert spec["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ALLOW"


def test_privileged_device_mapping_to_another_path_adds_a_node() -> None:
    extra = replace(HOST_NULL, path="/dev/mynull")
    spec = build(privileged=True, devices=[extra, HOST_SDA])
    assert [d["path"] for d in spec["linux"]["devices"]] == ["/dev/null", "/dev/sda",
                                                             "/dev/mynull"]


# -- masked and read-only paths --------------------------------------------------------------


def test_default_masked_and_readonly_paths() -> None:
    linux = build()["linux"]
    assert linux["maskedPaths"] == [
        "/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
        "/proc/latency_stats", "/proc/sched_debug", "/proc/scsi", "/proc/timer_list",
        "/proc/timer_stats", "/sys/devices/virtual/powercap", "/sys/firmware",
    ]
    assert linux["readonlyPaths"] == [
        "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
    ]


def test_thermal_throttle_dirs_are_masked_when_present() -> None:
    host = replace(HOST, thermal_throttle_paths=(
        "/sys/devices/system/cpu/cpu0/thermal_throttle",))
    masked = build(host=host)["linux"]["maskedPaths"]
    assert masked == [*DEFAULT_MASKED_PATHS, "/sys/devices/system/cpu/cpu0/thermal_throttle"]


def test_empty_lists_remove_the_paths_and_none_keeps_defaults() -> None:
    linux = build(masked_paths=[], readonly_paths=None)["linux"]
    assert linux["maskedPaths"] == []
    assert linux["readonlyPaths"] == list(DEFAULT_READONLY_PATHS)
    linux = build(masked_paths=["/x"], readonly_paths=[])["linux"]
    assert linux["maskedPaths"] == ["/x"] and linux["readonlyPaths"] == []


def test_systempaths_unconfined() -> None:
    linux = build(security_opt=["systempaths=unconfined"])["linux"]
    assert linux["maskedPaths"] == [] and linux["readonlyPaths"] == []


def test_stored_system_paths_are_what_the_spec_applies() -> None:
    """What create stores in HostConfig (dockerd's rule), then built into the spec."""
    host = replace(HOST, thermal_throttle_paths=(
        "/sys/devices/system/cpu/cpu0/thermal_throttle",))
    cases: list[tuple[dict[str, Any], tuple[Any, Any]]] = [
        ({}, (specmod.default_masked_paths(host), list(DEFAULT_READONLY_PATHS))),
        ({"Privileged": True}, (None, None)),
        ({"SecurityOpt": ["systempaths=unconfined"]}, ([], [])),
        ({"MaskedPaths": ["/x"], "ReadonlyPaths": []}, (["/x"], [])),
        ({"SecurityOpt": ["bogus"]}, (specmod.default_masked_paths(host),
                                      list(DEFAULT_READONLY_PATHS))),
    ]
    for host_config, expected in cases:
        stored = specmod.stored_system_paths(host_config, host)
        assert stored == expected, host_config
        if host_config.get("SecurityOpt") == ["bogus"]:
            continue  # refused by create's validation
        linux = build(host=host, privileged=bool(host_config.get("Privileged")),
                      security_opt=host_config.get("SecurityOpt") or [],
                      masked_paths=stored[0], readonly_paths=stored[1])["linux"]
        assert linux["maskedPaths"] == (stored[0] or [])
        assert linux["readonlyPaths"] == (stored[1] or [])


def test_thermal_throttle_detection(tmp_path: Path) -> None:
    cpu = tmp_path / "devices" / "system" / "cpu"
    (cpu / "cpu1" / "thermal_throttle").mkdir(parents=True)
    (cpu / "cpu0").mkdir()
    (cpu / "possible").write_text("0-1\n")
    assert specmod.thermal_throttle_paths(tmp_path) == (
        "/sys/devices/system/cpu/cpu1/thermal_throttle",)
    assert specmod.thermal_throttle_paths(tmp_path / "nope") == ()


# -- mounts ------------------------------------------------------------------------------------


def test_default_mounts() -> None:
    assert build()["mounts"] == [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["ro", "nosuid", "noexec", "nodev"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=67108864"]},
    ]


def test_shm_size() -> None:
    shm = mounts_by_dest(build(shm_size=1 << 20))["/dev/shm"]
    assert shm["options"][-1] == "size=1048576"
    invalid("SHM size", shm_size=0)


def test_readonly_rootfs() -> None:
    spec = build(readonly_rootfs=True)
    assert spec["root"] == {"path": REQ.rootfs, "readonly": True}
    mounts = mounts_by_dest(spec)
    for dest in ("/proc", "/dev", "/dev/pts", "/dev/mqueue", "/dev/shm"):
        assert "ro" not in mounts[dest]["options"], dest
    assert mounts["/sys"]["options"].count("ro") == 1


def test_caller_mounts_override_defaults_and_sort_by_depth() -> None:
    hosts = {"destination": "/etc/hosts", "type": "bind", "source": "/h",
             "options": ["rbind", "rprivate"]}
    nested = {"destination": "/data/sub", "type": "bind", "source": "/s", "options": ["rbind"]}
    data = {"destination": "/data", "type": "bind", "source": "/d", "options": ["rbind"]}
    shm = {"destination": "/dev/shm", "type": "bind", "source": "/ipc", "options": ["rbind"]}
    spec = build(mounts=[nested, hosts, shm, data], readonly_rootfs=True)
    dests = [m["destination"] for m in spec["mounts"]]
    assert dests.count("/dev/shm") == 1
    assert dests[-4:] == ["/data", "/data/sub", "/etc/hosts", "/dev/shm"]
    assert mounts_by_dest(spec)["/etc/hosts"]["options"] == ["rbind", "rprivate"]  # not ro


def test_a_caller_dev_mount_replaces_all_dev_defaults() -> None:
    dev = {"destination": "/dev", "type": "bind", "source": "/dev", "options": ["rbind"]}
    dests = [m["destination"] for m in build(mounts=[dev])["mounts"]]
    assert not [d for d in dests if d.startswith("/dev/")]
    assert dests.count("/dev") == 1


def test_relative_mount_destination_is_refused() -> None:
    invalid("mount path must be absolute",
            mounts=[{"destination": "relative", "type": "bind", "source": "/x"}])


def test_writable_cgroups_option() -> None:
    cgroup = mounts_by_dest(build(security_opt=["writable-cgroups=true"]))["/sys/fs/cgroup"]
    assert "ro" not in cgroup["options"]
    priv = build(privileged=True, security_opt=["writable-cgroups=false"])
    assert "ro" in mounts_by_dest(priv)["/sys/fs/cgroup"]["options"]


# -- namespaces and sysctls ------------------------------------------------------------------


def test_default_namespaces_on_cgroup_v1() -> None:
    assert build()["linux"]["namespaces"] == [
        {"type": "mount"}, {"type": "network"}, {"type": "uts"}, {"type": "pid"},
        {"type": "ipc"},
    ]


def test_cgroup_namespace_private_on_v2_even_when_privileged() -> None:
    host = replace(HOST, cgroup_version="2")
    for privileged in (False, True):
        kinds = [n["type"] for n in build(host=host, privileged=privileged)["linux"]["namespaces"]]
        assert kinds[-1] == "cgroup"
    assert [n["type"] for n in build(cgroupns="private")["linux"]["namespaces"]][-1] == "cgroup"
    kinds = [n["type"] for n in build(host=host, cgroupns="host")["linux"]["namespaces"]]
    assert "cgroup" not in kinds


def test_time_namespace_only_when_the_runtime_supports_it() -> None:
    kinds = [n["type"] for n in build(host=replace(HOST, time_namespace=True))["linux"]
             ["namespaces"]]
    assert kinds[:3] == ["mount", "network", "time"]


def test_default_net_sysctls_need_a_private_netns() -> None:
    expected = {"net.ipv4.ip_unprivileged_port_start": "0",
                "net.ipv4.ping_group_range": "0 2147483647"}
    assert build()["linux"]["sysctl"] == expected
    prepared = NamespaceChoice("private", "/run/wharfd/netns/x")
    spec = build(network=prepared)
    assert spec["linux"]["sysctl"] == expected
    assert {"type": "network", "path": "/run/wharfd/netns/x"} in spec["linux"]["namespaces"]
    shared = build(network=NamespaceChoice("shared", "/proc/42/ns/net"))
    assert shared["linux"]["sysctl"] == {}
    host = build(network=NamespaceChoice("host"))
    assert host["linux"]["sysctl"] == {}
    assert "network" not in [n["type"] for n in host["linux"]["namespaces"]]


def test_net_sysctls_skip_what_the_kernel_lacks_and_userns() -> None:
    host = replace(HOST, net_sysctls=frozenset({"net.ipv4.ping_group_range"}),
                   in_user_namespace=True)
    assert build(host=host)["linux"]["sysctl"] == {}


def test_host_namespaces() -> None:
    spec = build(pid=NamespaceChoice("host"), ipc=NamespaceChoice("host"),
                 uts=NamespaceChoice("host"), hostname="box")
    assert [n["type"] for n in spec["linux"]["namespaces"]] == ["mount", "network"]
    assert spec["hostname"] == ""
    invalid("needs its path", pid=NamespaceChoice("shared"))
    invalid('sysctl "kernel.domainname" is not in a separate kernel namespace',
            uts=NamespaceChoice("host"), domainname="example.org")


def test_bare_user_lists_its_primary_gid() -> None:
    user = build(user=ProcessUser(uid=5, gid=7))["process"]["user"]
    assert user == {"uid": 5, "gid": 7, "additionalGids": [7]}


def test_user_sysctls_validated_and_merged() -> None:
    spec = build(sysctls={"kernel.shmmax": "1", "net.ipv4.ip_unprivileged_port_start": "80"},
                 domainname="example.org")
    assert spec["linux"]["sysctl"] == {
        "net.ipv4.ip_unprivileged_port_start": "80",
        "net.ipv4.ping_group_range": "0 2147483647",
        "kernel.domainname": "example.org",
        "kernel.shmmax": "1",
    }
    assert invalid("", sysctls={"kernel.panic": "1"}) == (
        'sysctl "kernel.panic" is not in a separate kernel namespace')


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("vm.swappiness", {}, 'sysctl "vm.swappiness" is not in a separate kernel namespace'),
        ("net.ipv4.ip_forward", {"net_ns": False},
         'sysctl "net.ipv4.ip_forward" not allowed in host network namespace'),
        ("kernel.msgmax", {"ipc_ns": False},
         'sysctl "kernel.msgmax" is not allowed in the hosts ipc namespace'),
        ("fs.mqueue.msg_max", {"ipc_ns": False}, "hosts ipc namespace"),
        ("kernel.hostname", {}, 'conflicts with the OCI "hostname" field'),
        ("kernel.domainname", {"uts_ns": False}, "not in a separate kernel namespace"),
        ("user.max_user_namespaces", {}, "setting ucounts without a user namespace"),
    ],
)
def test_sysctl_refusals(name: str, kwargs: dict[str, bool], message: str) -> None:
    ns = {"ipc_ns": True, "net_ns": True, "uts_ns": True} | kwargs
    with pytest.raises(InvalidParameter) as info:
        validate_sysctls([name], **ns)
    assert message in info.value.message


def test_sysctl_slash_form_and_allowed_names() -> None:
    validate_sysctls(["net/ipv4/ip_forward", "kernel.sem", "fs.mqueue.queues_max",
                      "kernel.domainname"], ipc_ns=True, net_ns=True, uts_ns=True)
    validate_sysctls(["user.max_user_namespaces"], ipc_ns=True, net_ns=True, uts_ns=True,
                     user_ns=True)


# -- devices -------------------------------------------------------------------------------


def test_default_device_cgroup_rules() -> None:
    linux = build()["linux"]
    assert linux["resources"]["devices"] == DEFAULT_DEVICE_RULES
    assert linux["devices"] == []


def test_devices_and_cgroup_rules_are_appended() -> None:
    fuse = ResolvedDevice("/dev/fuse", "c", 10, 229, 0o666, 0, 0, permissions="rw")
    linux = build(devices=[fuse], device_cgroup_rules=["c 1:* rwm", "b *:* m", "a *:* r"])["linux"]
    assert linux["devices"] == [fuse.to_oci()]
    assert linux["resources"]["devices"] == [
        *DEFAULT_DEVICE_RULES,
        {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rw"},
        {"allow": True, "type": "c", "major": 1, "minor": -1, "access": "rwm"},
        {"allow": True, "type": "b", "major": -1, "minor": -1, "access": "m"},
        {"allow": True, "type": "a", "major": -1, "minor": -1, "access": "r"},
    ]


@pytest.mark.parametrize("rule", ["c 1:3", "x 1:3 rwm", "c 1:3 rwmx", "c a:3 r", ""])
def test_bad_device_cgroup_rule(rule: str) -> None:
    with pytest.raises(InvalidParameter) as info:
        parse_device_cgroup_rule(rule)
    assert info.value.message == f"invalid device cgroup rule format: '{rule}'"


def test_resolve_device_of_a_node() -> None:
    [null] = resolve_device("/dev/null", "/dev/mynull", "rw")
    assert (null.path, null.type, null.major, null.minor, null.permissions) == (
        "/dev/mynull", "c", 1, 3, "rw")
    [same] = resolve_device("/dev/zero", "", "")
    assert (same.path, same.minor, same.permissions) == ("/dev/zero", 5, "rwm")


def test_resolve_device_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameter) as info:
        resolve_device("/dev/nope-nope", "/dev/x")
    assert info.value.message == ('error gathering device information while adding custom '
                                  'device "/dev/nope-nope": no such file or directory')
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidParameter, match="not a device node"):
        resolve_device(str(tmp_path / "file"), "/dev/x")
    with pytest.raises(InvalidParameter, match="permissions"):
        resolve_device("/dev/null", "/dev/x", "rwx")


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_resolve_device_directory_and_host_scan(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    (dev / "sub").mkdir(parents=True)
    (dev / "pts").mkdir()
    os.mknod(dev / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(dev / "sub" / "zero", 0o600 | stat.S_IFCHR, os.makedev(1, 5))
    os.mknod(dev / "pts" / "0", 0o620 | stat.S_IFCHR, os.makedev(136, 0))
    os.mknod(dev / "console", 0o600 | stat.S_IFCHR, os.makedev(5, 1))
    (dev / "link").symlink_to("null")
    (dev / "plain").write_text("")
    scanned = specmod.scan_host_devices(dev)
    assert sorted(d.path for d in scanned) == ["/dev/null", "/dev/sub/zero"]
    zero = next(d for d in scanned if d.minor == 5)
    assert zero.file_mode == 0o600
    found = resolve_device(str(dev / "sub"), "/dev/in", "r")
    assert [(d.path, d.major, d.minor, d.permissions) for d in found] == [
        ("/dev/in/zero", 1, 5, "r")]
    [via_link] = resolve_device(str(dev / "link"), "/dev/l")
    assert (via_link.path, via_link.minor) == ("/dev/l", 3)


# -- ulimits and resources --------------------------------------------------------------------


def test_no_rlimits_unless_asked() -> None:
    assert "rlimits" not in build()["process"]


def test_ulimits() -> None:
    process = build(ulimits=[Ulimit("nofile", 1024, 2048), ("core", -1, -1)])["process"]
    assert process["rlimits"] == [
        {"type": "RLIMIT_NOFILE", "hard": 2048, "soft": 1024},
        {"type": "RLIMIT_CORE", "hard": 2**64 - 1, "soft": 2**64 - 1},
    ]
    assert invalid("", ulimits=[("nofile", 1024, 1)]) == (
        "ulimit soft limit must be less than or equal to hard limit: 1024 > 1")
    assert invalid("", ulimits=[("bogus", 1, 1)]) == "invalid ulimit type: bogus"


def test_resources_pass_through() -> None:
    res = Resources(memory=64 << 20, memory_swap=128 << 20, memory_reservation=32 << 20,
                    memory_swappiness=10, oom_kill_disable=True, cpu_shares=512,
                    cpu_period=50_000, cpu_quota=25_000, cpuset_cpus="0", cpuset_mems="0",
                    pids_limit=10, blkio_weight=300)
    resources = build(resources=res)["linux"]["resources"]
    assert resources["memory"] == {"limit": 64 << 20, "reservation": 32 << 20,
                                   "swap": 128 << 20, "swappiness": 10,
                                   "disableOOMKiller": True}
    assert resources["cpu"] == {"shares": 512, "period": 50_000, "quota": 25_000,
                                "cpus": "0", "mems": "0"}
    assert resources["pids"] == {"limit": 10}
    assert resources["blockIO"] == {"weight": 300}


def test_resources_unset_and_special_values() -> None:
    resources = build()["linux"]["resources"]
    assert set(resources) == {"devices"}
    res = build(resources=Resources(nano_cpus=1_500_000_000, pids_limit=0, memory_swap=-1))
    assert res["linux"]["resources"]["cpu"] == {"period": 100_000, "quota": 150_000}
    assert res["linux"]["resources"]["pids"] == {"limit": -1}
    assert "memory" not in res["linux"]["resources"]  # -1 swap = unset, as dockerd writes
    invalid("invalid CPU shares (-1)", resources=Resources(cpu_shares=-1))


# -- security options, seccomp and no-new-privileges -------------------------------------------


def test_default_seccomp_and_no_new_privileges_off() -> None:
    spec = build()
    assert "noNewPrivileges" not in spec["process"]
    seccomp = spec["linux"]["seccomp"]
    assert seccomp["defaultAction"] == "SCMP_ACT_ERRNO"
    assert {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38} in seccomp[
        "syscalls"]
    allowed = {n for r in seccomp["syscalls"] if r["action"] == "SCMP_ACT_ALLOW"
               for n in r["names"]}
    assert "mount" not in allowed and "unshare" not in allowed


def test_seccomp_follows_the_final_bounding_set() -> None:
    seccomp = build(cap_add=["SYS_ADMIN"])["linux"]["seccomp"]
    allowed = {n for r in seccomp["syscalls"] if r["action"] == "SCMP_ACT_ALLOW"
               for n in r["names"]}
    assert {"mount", "unshare", "setns", "clone3"} <= allowed


@pytest.mark.parametrize(
    ("opts", "expected"),
    [
        (["no-new-privileges"], True),
        (["no-new-privileges:true"], True),
        (["no-new-privileges=1"], True),
        (["no-new-privileges=false"], False),
        (["no-new-privileges", "no-new-privileges=False"], False),
    ],
)
def test_no_new_privileges_options(opts: list[str], expected: bool) -> None:
    process = build(security_opt=opts)["process"]
    assert process.get("noNewPrivileges", False) is expected


def test_daemon_no_new_privileges_default_can_be_overridden() -> None:
    assert build(daemon_no_new_privileges=True)["process"]["noNewPrivileges"] is True
    off = build(daemon_no_new_privileges=True, security_opt=["no-new-privileges=false"])
    assert "noNewPrivileges" not in off["process"]


@pytest.mark.parametrize(
    ("opt", "message"),
    [
        ("bogus=1", 'invalid --security-opt 2: "bogus=1"'),
        ("bogus", 'invalid --security-opt 1: "bogus"'),
        ("no-new-privileges=maybe", 'invalid --security-opt 2: "no-new-privileges=maybe"'),
        ("writable-cgroups=x", 'invalid --security-opt 2: "writable-cgroups=x"'),
        ("systempaths=other", 'invalid --security-opt 2: "systempaths=other"'),
    ],
)
def test_bad_security_opts(opt: str, message: str) -> None:
    assert invalid("", security_opt=[opt]) == message


def test_accepted_security_opts_without_effect_here() -> None:
    opts = parse_security_opts(["apparmor=unconfined", "label=disable", "label:type:x",
                                "disable"])
    assert opts.apparmor == "unconfined"
    assert opts.labels == ("disable", "type:x", "disable")
    assert "apparmorProfile" not in build(security_opt=["apparmor=foo"])["process"]
    with_aa = build(security_opt=["apparmor=foo"], host=replace(HOST, apparmor=True))
    assert with_aa["process"]["apparmorProfile"] == "foo"


def test_seccomp_unconfined_and_builtin() -> None:
    assert "seccomp" not in build(security_opt=["seccomp=unconfined"])["linux"]
    assert "seccomp" not in build(security_opt=["seccomp:unconfined"])["linux"]
    assert build(security_opt=["seccomp=builtin"])["linux"]["seccomp"] == build()["linux"][
        "seccomp"]


def test_custom_seccomp_json_as_the_cli_sends_it() -> None:
    profile = {"defaultAction": "SCMP_ACT_ERRNO",
               "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}]}
    seccomp = build(security_opt=["seccomp=" + json.dumps(profile)])["linux"]["seccomp"]
    assert seccomp == {"defaultAction": "SCMP_ACT_ERRNO",
                       "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}]}


def test_bad_seccomp_json() -> None:
    message = invalid("", security_opt=["seccomp={nope"])
    assert message.startswith("Decoding seccomp profile failed: ")


def test_daemon_seccomp_profile() -> None:
    assert "seccomp" not in build(daemon_seccomp_profile="unconfined")["linux"]
    custom = json.dumps({"defaultAction": "SCMP_ACT_LOG", "syscalls": []})
    assert build(daemon_seccomp_profile=custom)["linux"]["seccomp"]["defaultAction"] == (
        "SCMP_ACT_LOG")
    # the container's own choice wins over the daemon's
    spec = build(daemon_seccomp_profile="unconfined", security_opt=["seccomp=builtin"])
    assert spec["linux"]["seccomp"]["defaultErrnoRet"] == 1


def test_kernel_without_seccomp() -> None:
    host = replace(HOST, seccomp=False)
    assert "seccomp" not in build(host=host)["linux"]
    invalid("seccomp is not enabled in your kernel", host=host,
            security_opt=['seccomp={"defaultAction": "SCMP_ACT_ALLOW"}'])


# -- process basics ---------------------------------------------------------------------------


def test_environment_defaults() -> None:
    env = build(hostname="box")["process"]["env"]
    assert env == [f"PATH={specmod.DEFAULT_PATH_ENV}", "HOSTNAME=box", "HOME=/"]
    env = build(env=["PATH=/bin", "A=1", "HOME=/root"], terminal=True)["process"]["env"]
    assert env == ["PATH=/bin", "HOSTNAME=", "TERM=xterm", "A=1", "HOME=/root"]
    env = build(env=["HOSTNAME", "B=2"], user=ProcessUser(home="/home/u"))["process"]["env"]
    assert env == [f"PATH={specmod.DEFAULT_PATH_ENV}", "B=2", "HOME=/home/u"]
    assert invalid("", env=["=x"]) == "invalid environment variable: =x"


def test_process_basics() -> None:
    spec = build(args=["echo", "hi"], cwd="/srv//app/", hostname="h", terminal=True,
                 console_size=(24, 80), oom_score_adj=-500, annotations={"a": "b"})
    process = spec["process"]
    assert process["args"] == ["echo", "hi"]
    assert process["cwd"] == "/srv/app"
    assert process["terminal"] is True
    assert process["consoleSize"] == {"height": 24, "width": 80}
    assert process["oomScoreAdj"] == -500
    assert spec["hostname"] == "h"
    assert spec["ociVersion"] == "1.0.2-dev"
    assert spec["annotations"] == {"a": "b"}
    assert spec["linux"]["cgroupsPath"] == "/wharfd/x"
    assert build(cwd="")["process"]["cwd"] == "/"
    json.dumps(spec)  # serialisable as is


def test_basic_validation() -> None:
    invalid("no command specified", args=[])
    invalid("the working directory 'rel' is invalid", cwd="rel")
    invalid("longer than 64", hostname="h" * 70)
    invalid("rootfs path must be absolute", rootfs="rel")


def test_host_facts_from_status() -> None:
    status = "Name:\tx\nCapEff:\t00000000a80425fb\nSeccomp:\t0\n"
    assert set(specmod.capabilities_from_status(status)) == set(DEFAULT_CAPABILITIES)
    assert specmod.capabilities_from_status("") == KNOWN_CAPABILITIES


def test_host_facts_detect_on_this_host() -> None:
    if not Path("/proc/self/status").exists():
        pytest.skip("no /proc")
    facts = HostFacts.detect(cgroup_version="1")
    assert facts.kernel >= (3, 0)
    assert facts.arch
    build(host=facts)


# -- users ---------------------------------------------------------------------------------

PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
app:x:1000:1000:App:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
"""
GROUP = """# comment
root:x:0:
daemon:x:1:app
wheel:x:10:root,app
app:x:1000:
nogroup:x:65534:
"""


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    return root


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("", (0, 0, [0, 10])),
        ("root", (0, 0, [0, 10])),
        ("app", (1000, 1000, [1000, 1, 10])),
        ("1000", (1000, 1000, [1000, 1, 10])),
        ("app:nogroup", (1000, 65534, [65534])),
        ("app:0", (1000, 0, [0])),
        ("1234", (1234, 0, [0])),
        ("1234:5678", (1234, 5678, [5678])),
        ("nobody", (65534, 65534, [65534])),
    ],
)
def test_resolve_user_forms(rootfs: Path, user: str, expected: tuple[int, int, list[int]]) -> None:
    assert resolve_user(rootfs, user) == expected


def test_resolve_user_errors(rootfs: Path) -> None:
    with pytest.raises(InvalidParameter) as info:
        resolve_user(rootfs, "x")
    assert info.value.message == "unable to find user x: no matching entries in passwd file"
    with pytest.raises(InvalidParameter) as info:
        resolve_user(rootfs, "app:nope")
    assert info.value.message == "unable to find group nope: no matching entries in group file"
    with pytest.raises(InvalidParameter, match="uids and gids must be in range"):
        resolve_user(rootfs, "4294967296")
    with pytest.raises(InvalidParameter, match="uids and gids must be in range"):
        resolve_user(rootfs, "-1")


def test_group_add_and_home(rootfs: Path) -> None:
    assert resolve_user(rootfs, "app", ["wheel", "4242", "1"]) == (1000, 1000,
                                                                    [1000, 1, 10, 4242])
    with pytest.raises(InvalidParameter, match="unable to find group missing"):
        resolve_user(rootfs, "", ["missing"])
    assert lookup_user(rootfs, "app").home == "/home/app"
    assert lookup_user(rootfs, "1234").home == "/"


def test_resolve_user_without_etc_files(tmp_path: Path) -> None:
    assert resolve_user(tmp_path, "") == (0, 0, [0])
    assert resolve_user(tmp_path, "77:88") == (77, 88, [88])
    with pytest.raises(InvalidParameter, match="unable to find user app"):
        resolve_user(tmp_path, "app")


def test_passwd_symlink_out_of_the_rootfs_is_not_followed(rootfs: Path, tmp_path: Path) -> None:
    host_passwd = tmp_path / "host-passwd"
    host_passwd.write_text("hostonly:x:4242:4242::/host:/bin/sh\n")
    (rootfs / "etc" / "passwd").unlink()
    (rootfs / "etc" / "passwd").symlink_to(host_passwd)  # absolute: resolves in the rootfs
    with pytest.raises(InvalidParameter, match="unable to find user hostonly"):
        resolve_user(rootfs, "hostonly")
    (rootfs / "etc" / "passwd").unlink()
    (rootfs / "etc" / "passwd").symlink_to("../" * 20 + str(host_passwd).lstrip("/"))
    with pytest.raises(InvalidParameter, match="unable to find user hostonly"):
        resolve_user(rootfs, "hostonly")


def test_symlinked_etc_dir_resolves_inside_the_rootfs(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "usr" / "etc").mkdir(parents=True)
    (root / "usr" / "etc" / "passwd").write_text("svc:x:501:502::/srv:/bin/sh\n")
    (root / "etc").symlink_to("/usr/etc")  # absolute, as images often have
    assert resolve_user(root, "svc") == (501, 502, [502])
    # an /etc pointing at "/" must read <rootfs>/passwd, never the host's /passwd
    (root / "etc").unlink()
    (root / "etc").symlink_to("/")
    (root / "passwd").write_text("inroot:x:7:7::/:/bin/sh\n")
    assert resolve_user(root, "inroot") == (7, 7, [7])


def test_symlink_loops_and_non_files_count_as_missing(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").symlink_to("passwd")
    assert specmod.read_file_in_root(root, "/etc/passwd") is None
    (root / "etc" / "passwd").unlink()
    (root / "etc" / "passwd").mkdir()
    assert specmod.read_file_in_root(root, "/etc/passwd") is None
    os.mkfifo(root / "etc" / "group")
    assert specmod.read_file_in_root(root, "/etc/group") is None
    assert specmod.read_file_in_root(root, "/etc/passwd/x") is None
