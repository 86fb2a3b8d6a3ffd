"""The seccomp profile builder: Docker's default, conditions, custom profiles."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.containers import seccomp
from engine.containers.seccomp import (
    AF_VSOCK,
    DEFAULT_ALLOWED,
    SYSCALL_GROUPS,
    Target,
    allowed_syscalls,
    default_profile,
    parse_profile,
    profile_to_json,
    render,
)
from engine.containers.spec import DEFAULT_CAPABILITIES, KNOWN_CAPABILITIES
from engine.errors import InvalidParameter

DEFAULT_CAPS = frozenset(DEFAULT_CAPABILITIES)
AMD64 = Target(DEFAULT_CAPS, "amd64", (6, 1))

# reliability.md (b): syscalls the default profile must refuse without extra capabilities
DENIED_BY_DEFAULT = (
    "mount", "umount2", "unshare", "setns", "pivot_root", "keyctl", "add_key", "request_key",
    "bpf", "perf_event_open", "userfaultfd", "kexec_load", "open_by_handle_at",
    "init_module", "finit_module", "delete_module", "reboot", "swapon", "acct", "syslog",
    "settimeofday", "iopl", "ioperm", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "fsopen", "fsmount", "move_mount", "open_tree", "quotactl",
    "lookup_dcookie", "_sysctl", "uselib", "vm86", "nfsservctl",
)

EPERM, ENOSYS = 1, 38


def _arg_matches(arg: Mapping[str, Any], args: Sequence[int]) -> bool:
    value = int(args[arg["index"]])
    op, datum = str(arg["op"]), int(arg["value"])
    if op == "SCMP_CMP_MASKED_EQ":
        return value & datum == int(arg.get("valueTwo", 0))
    return {
        "SCMP_CMP_EQ": value == datum,
        "SCMP_CMP_NE": value != datum,
        "SCMP_CMP_LT": value < datum,
        "SCMP_CMP_LE": value <= datum,
        "SCMP_CMP_GT": value > datum,
        "SCMP_CMP_GE": value >= datum,
    }[op]


def decide(rendered: Mapping[str, Any], name: str, args: Sequence[int] = (0, 0, 0)) -> int:
    """0 if the call passes the filter, else the errno it gets (a small model of what
    libseccomp builds from these rules)."""
    rules = [r for r in rendered["syscalls"] if name in r["names"]]
    for rule in rules:
        if all(_arg_matches(a, args) for a in rule.get("args", [])):
            if rule["action"] == "SCMP_ACT_ALLOW":
                return 0
            if rule["action"] == "SCMP_ACT_ERRNO":
                return int(rule.get("errnoRet", EPERM))
    return int(rendered.get("defaultErrnoRet", EPERM))


def test_default_allow_list_is_the_union_of_disjoint_groups() -> None:
    names = [n for group in SYSCALL_GROUPS.values() for n in group]
    assert len(names) == len(set(names)), "a syscall sits in two groups"
    assert frozenset(names) == DEFAULT_ALLOWED
    # moby's default profile (v0.2.3) allows 361 syscalls unconditionally
    assert len(DEFAULT_ALLOWED) == 361


@pytest.mark.parametrize("name", DENIED_BY_DEFAULT)
def test_dangerous_syscalls_are_denied_with_eperm(name: str) -> None:
    rendered = render(default_profile(), AMD64)
    assert decide(rendered, name) == EPERM


def test_default_action_and_architectures_on_amd64() -> None:
    rendered = render(default_profile(), AMD64)
    assert rendered["defaultAction"] == "SCMP_ACT_ERRNO"
    assert rendered["defaultErrnoRet"] == EPERM
    assert rendered["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert decide(rendered, "read") == 0
    assert decide(rendered, "arch_prctl") == 0
    assert decide(rendered, "modify_ldt") == 0
    assert decide(rendered, "set_tls") == EPERM  # arm only


def test_clone3_gets_enosys_so_libc_falls_back_to_clone() -> None:
    rendered = render(default_profile(), AMD64)
    assert decide(rendered, "clone3") == ENOSYS
    [rule] = [r for r in rendered["syscalls"] if r["names"] == ["clone3"]]
    assert rule == {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}


def test_clone_only_without_namespace_flags() -> None:
    rendered = render(default_profile(), AMD64)
    sigchld = 17
    assert decide(rendered, "clone", (sigchld, 0)) == 0
    for flag in (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000,
                 0x20000000, 0x40000000):
        assert decide(rendered, "clone", (sigchld | flag, 0)) == EPERM, hex(flag)
    [rule] = [r for r in rendered["syscalls"] if r["names"] == ["clone"]]
    assert rule["args"] == [{"index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}]


def test_clone_flags_are_the_second_argument_on_s390() -> None:
    rendered = render(default_profile(), Target(DEFAULT_CAPS, "s390x", (6, 1)))
    [rule] = [r for r in rendered["syscalls"] if r["names"] == ["clone"]]
    assert rule["args"][0]["index"] == 1


def test_sys_admin_unlocks_mount_unshare_and_any_clone() -> None:
    rendered = render(default_profile(), Target(DEFAULT_CAPS | {"CAP_SYS_ADMIN"}, "amd64",
                                                (6, 1)))
    for name in ("mount", "umount2", "unshare", "setns", "fsopen", "sethostname", "bpf"):
        assert decide(rendered, name) == 0, name
    assert decide(rendered, "clone", (0x10000000 | 17, 0)) == 0
    assert decide(rendered, "clone3") == 0
    assert not [r for r in rendered["syscalls"] if r.get("errnoRet") == ENOSYS]


@pytest.mark.parametrize(
    ("cap", "names"),
    [
        ("CAP_SYS_PTRACE", ("kcmp", "pidfd_getfd", "process_madvise")),
        ("CAP_SYS_MODULE", ("init_module", "finit_module", "delete_module")),
        ("CAP_SYS_BOOT", ("reboot",)),
        ("CAP_SYSLOG", ("syslog",)),
        ("CAP_BPF", ("bpf",)),
        ("CAP_PERFMON", ("perf_event_open",)),
        ("CAP_SYS_TIME", ("settimeofday", "clock_settime")),
        ("CAP_SYS_NICE", ("mbind", "set_mempolicy")),
        ("CAP_SYS_RAWIO", ("iopl", "ioperm")),
        ("CAP_SYS_PACCT", ("acct",)),
        ("CAP_SYS_TTY_CONFIG", ("vhangup",)),
        ("CAP_DAC_READ_SEARCH", ("open_by_handle_at",)),
    ],
)
def test_capability_conditional_syscalls(cap: str, names: tuple[str, ...]) -> None:
    without = render(default_profile(), AMD64)
    with_cap = render(default_profile(), Target(DEFAULT_CAPS | {cap}, "amd64", (6, 1)))
    for name in names:
        assert decide(without, name) == EPERM, name
        assert decide(with_cap, name) == 0, name


def test_chroot_follows_cap_sys_chroot() -> None:
    assert decide(render(default_profile(), AMD64), "chroot") == 0
    no_chroot = Target(DEFAULT_CAPS - {"CAP_SYS_CHROOT"}, "amd64", (6, 1))
    assert decide(render(default_profile(), no_chroot), "chroot") == EPERM


def test_socket_families_vsock_and_alg_are_refused() -> None:
    rendered = render(default_profile(), AMD64)
    assert decide(rendered, "socket", (AF_VSOCK, 1, 0)) == EPERM
    assert decide(rendered, "socket", (38, 5, 0)) == EPERM  # AF_ALG
    for family in (1, 2, 10, 16, 17, 39, 41, 44):  # unix, inet, inet6, netlink, packet ...
        assert decide(rendered, "socket", (family, 1, 0)) == 0, family


def test_personality_limited_to_five_values() -> None:
    rendered = render(default_profile(), AMD64)
    for value in (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF):
        assert decide(rendered, "personality", (value,)) == 0
    assert decide(rendered, "personality", (0x0040000,)) == EPERM  # ADDR_NO_RANDOMIZE


def test_ptrace_needs_kernel_4_8() -> None:
    new = render(default_profile(), Target(DEFAULT_CAPS, "amd64", (4, 8)))
    old = render(default_profile(), Target(DEFAULT_CAPS, "amd64", (4, 4)))
    assert decide(new, "ptrace") == 0
    assert decide(new, "process_vm_readv") == 0
    assert decide(old, "ptrace") == EPERM


def test_allowed_syscalls_helper_ignores_argument_rules() -> None:
    allowed = allowed_syscalls(render(default_profile(), AMD64))
    assert DEFAULT_ALLOWED <= allowed
    assert "socket" not in allowed and "clone" not in allowed


@given(st.sets(st.sampled_from(KNOWN_CAPABILITIES)))
def test_mount_family_follows_sys_admin_for_any_capability_set(caps: set[str]) -> None:
    rendered = render(default_profile(), Target(frozenset(caps), "amd64", (6, 1)))
    expected = 0 if "CAP_SYS_ADMIN" in caps else EPERM
    for name in ("mount", "unshare", "setns", "umount2"):
        assert decide(rendered, name) == expected
    assert decide(rendered, "clone3") == (0 if "CAP_SYS_ADMIN" in caps else ENOSYS)
    assert decide(rendered, "socket", (AF_VSOCK, 1, 0)) == EPERM


# -- custom profiles -------------------------------------------------------------------------


def test_default_profile_round_trips_through_docker_json() -> None:
    parsed = parse_profile(profile_to_json(default_profile()))
    assert parsed is not None
    for caps in (DEFAULT_CAPS, DEFAULT_CAPS | {"CAP_SYS_ADMIN"}, frozenset[str]()):
        target = Target(caps, "amd64", (6, 1))
        assert render(parsed, target) == render(default_profile(), target)


def test_custom_profile_with_conditions_and_legacy_name() -> None:
    text = json.dumps(
        {
            "defaultAction": "SCMP_ACT_ALLOW",
            "archMap": [{"architecture": "SCMP_ARCH_X86_64",
                         "subArchitectures": ["SCMP_ARCH_X86"]}],
            "syscalls": [
                {"name": "mkdir", "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                {"names": ["chmod"], "action": "SCMP_ACT_ERRNO",
                 "excludes": {"caps": ["CAP_FOWNER"]}},
                {"names": ["uname"], "action": "SCMP_ACT_ERRNO",
                 "includes": {"minKernel": "99.0"}},
                {"names": ["getpid"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 0, "value": 5, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]},
            ],
            "flags": ["SECCOMP_FILTER_FLAG_LOG"],
        }
    )
    profile = parse_profile(text)
    assert profile is not None
    rendered = render(profile, Target(frozenset({"CAP_FOWNER"}), "amd64", (6, 1)))
    assert rendered["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
    assert rendered["flags"] == ["SECCOMP_FILTER_FLAG_LOG"]
    assert [r["names"] for r in rendered["syscalls"]] == [["mkdir"], ["getpid"]]
    assert rendered["syscalls"][0]["errnoRet"] == 13


def test_explicit_architectures_pass_through() -> None:
    profile = parse_profile(json.dumps({"defaultAction": "SCMP_ACT_ERRNO",
                                        "architectures": ["SCMP_ARCH_X86_64"],
                                        "syscalls": []}))
    assert profile is not None
    assert render(profile, AMD64)["architectures"] == ["SCMP_ARCH_X86_64"]


def test_empty_profile_means_no_filter() -> None:
    assert parse_profile("{}") is None


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{not json", "Decoding seccomp profile failed: "),
        ("[]", "expected object"),
        ('{"defaultAction": "SCMP_ACT_NOPE", "syscalls": []}', "unknown defaultAction"),
        ('{"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["a"], '
         '"archMap": [{"architecture": "a"}]}', "both 'architectures' and 'archMap'"),
        ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": '
         '[{"name": "a", "names": ["b"], "action": "SCMP_ACT_ALLOW"}]}', "both 'name' and 'names'"),
        ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": '
         '[{"names": ["a"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4"}}]}',
         "invalid kernel version"),
        ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": '
         '[{"names": ["a"], "action": "SCMP_ACT_ALLOW", "args": [{"op": "LT"}]}]}',
         "unknown operator"),
        ('{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": -1}', "unsigned"),
        ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": "read"}]}',
         "expected array"),
    ],
)
def test_bad_profiles_are_invalid_parameter(text: str, fragment: str) -> None:
    with pytest.raises(InvalidParameter) as info:
        parse_profile(text)
    assert info.value.message.startswith("Decoding seccomp profile failed: ")
    assert fragment in info.value.message


def test_kernel_release_parsing() -> None:
    assert seccomp.parse_kernel_release("6.18.44-fc-v657") == (6, 18)
    assert seccomp.parse_kernel_release("3.12-1-amd64") == (3, 12)
    with pytest.raises(ValueError):
        seccomp.parse_kernel_release("garbage")


def test_native_arch_names() -> None:
    assert seccomp.native_arch("x86_64") == "amd64"
    assert seccomp.native_arch("aarch64") == "arm64"
    assert seccomp.native_arch("riscv64") == "riscv64"
