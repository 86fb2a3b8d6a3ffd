"""Seccomp profiles: Docker's default, Docker-format custom profiles, and their rendering.

A *profile* here is Docker's notion: a default action plus rules that may be conditional
on the container's capabilities, the CPU architecture and the kernel version. Rendering
resolves those conditions for one container and yields the OCI ``linux.seccomp`` object
that runc/crun load.

The default profile is assembled from named syscall groups rather than one long list so
that a reviewer can see *why* a syscall is allowed; ``DEFAULT_ALLOWED`` is their union.
Its effect matches moby's default profile (moby/profiles ``seccomp/default.json``,
v0.2.3 as vendored by moby master), including the AF_ALG/AF_VSOCK socket families being
refused, ``clone3`` answering ENOSYS so that libc falls back to ``clone`` (whose
namespace flags the filter can inspect), and ``personality`` limited to five values.

Custom profiles use Docker's JSON format (``archMap``, ``names``, ``includes``/
``excludes``), which is what ``--security-opt seccomp=<file>`` sends (the CLI sends the
file's content) and what ``dockerd --seccomp-profile`` reads.
"""

from __future__ import annotations

import json
import os
import platform
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.errors import InvalidParameter

# -- errno values the default profile returns ---------------------------------------------

EPERM = 1
ENOSYS = 38

# Address families the default profile refuses (linux/socket.h). The three socket rules
# below rely on the two being exactly two apart with one family (39, AF_NFC) in between.
AF_ALG = 38
AF_VSOCK = 40

# The namespace bits of clone(2) flags (linux/sched.h). Without CAP_SYS_ADMIN a clone
# carrying any of them must not pass the filter.
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NAMESPACE_FLAGS = (
    CLONE_NEWNS
    | CLONE_NEWCGROUP
    | CLONE_NEWUTS
    | CLONE_NEWIPC
    | CLONE_NEWUSER
    | CLONE_NEWPID
    | CLONE_NEWNET
)

# personality(2) values a normal program uses: PER_LINUX, PER_LINUX32, UNAME26 variants
# of both, and 0xffffffff (the "query" call).
PERSONALITY_ALLOWED = (0x0, 0x0008, 0x20000, 0x20008, 0xFFFFFFFF)

ACTIONS = frozenset(
    {
        "SCMP_ACT_KILL",
        "SCMP_ACT_KILL_PROCESS",
        "SCMP_ACT_KILL_THREAD",
        "SCMP_ACT_TRAP",
        "SCMP_ACT_ERRNO",
        "SCMP_ACT_TRACE",
        "SCMP_ACT_ALLOW",
        "SCMP_ACT_LOG",
        "SCMP_ACT_NOTIFY",
    }
)
OPERATORS = frozenset(
    {
        "SCMP_CMP_NE",
        "SCMP_CMP_LT",
        "SCMP_CMP_LE",
        "SCMP_CMP_EQ",
        "SCMP_CMP_GE",
        "SCMP_CMP_GT",
        "SCMP_CMP_MASKED_EQ",
    }
)

# -- the unconditionally allowed syscalls, by purpose --------------------------------------
# 32-bit variants (``*32``, ``*64`` suffixes, ``*_time64``) are listed next to their
# 64-bit forms because the profile also covers the x86 and x32 sub-architectures.

FILE_SYSCALLS = (
    # open, read, write, seek, close
    "open", "openat", "openat2", "creat", "close", "close_range",
    "read", "readv", "pread64", "preadv", "preadv2",
    "write", "writev", "pwrite64", "pwritev", "pwritev2",
    "lseek", "_llseek", "readahead", "fadvise64", "fadvise64_64", "fallocate",
    "truncate", "truncate64", "ftruncate", "ftruncate64",
    "fsync", "fdatasync", "sync", "syncfs", "sync_file_range",
    "dup", "dup2", "dup3", "fcntl", "fcntl64", "flock", "ioctl",
    # metadata
    "stat", "stat64", "lstat", "lstat64", "fstat", "fstat64", "fstatat64", "newfstatat",
    "statx", "statfs", "statfs64", "fstatfs", "fstatfs64",
    "access", "faccessat", "faccessat2",
    "chmod", "fchmod", "fchmodat", "fchmodat2",
    "chown", "chown32", "fchown", "fchown32", "fchownat", "lchown", "lchown32",
    "utime", "utimes", "utimensat", "utimensat_time64", "futimesat", "umask",
    # directory tree
    "chdir", "fchdir", "getcwd", "getdents", "getdents64",
    "mkdir", "mkdirat", "rmdir", "mknod", "mknodat",
    "link", "linkat", "symlink", "symlinkat", "readlink", "readlinkat",
    "unlink", "unlinkat", "rename", "renameat", "renameat2",
    # file handles: encoding one is harmless; *opening* one needs CAP_DAC_READ_SEARCH
    "name_to_handle_at",
    # extended attributes
    "getxattr", "lgetxattr", "fgetxattr", "getxattrat",
    "setxattr", "lsetxattr", "fsetxattr", "setxattrat",
    "listxattr", "llistxattr", "flistxattr", "listxattrat",
    "removexattr", "lremovexattr", "fremovexattr", "removexattrat",
    # zero-copy transfers
    "sendfile", "sendfile64", "splice", "tee", "vmsplice", "copy_file_range",
    "pipe", "pipe2",
    # read-only views of the mount table (the container only sees its own namespace)
    "listmount", "statmount",
    # page-cache statistics of a file the caller can already read
    "cachestat",
)

EVENT_SYSCALLS = (
    "select", "_newselect", "pselect6", "pselect6_time64",
    "poll", "ppoll", "ppoll_time64",
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old",
    "epoll_wait", "epoll_wait_old", "epoll_pwait", "epoll_pwait2",
    "eventfd", "eventfd2", "signalfd", "signalfd4",
    "timerfd_create", "timerfd_gettime", "timerfd_gettime64",
    "timerfd_settime", "timerfd_settime64",
    "inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch",
    # marks only; fanotify_init itself needs CAP_SYS_ADMIN
    "fanotify_mark",
    # Linux AIO on file descriptors the caller owns
    "io_setup", "io_destroy", "io_submit", "io_cancel",
    "io_getevents", "io_pgetevents", "io_pgetevents_time64",
)

MEMORY_SYSCALLS = (
    "brk", "mmap", "mmap2", "munmap", "mremap", "mprotect", "madvise", "mincore",
    "msync", "remap_file_pages",
    "mlock", "mlock2", "mlockall", "munlock", "munlockall",
    "membarrier", "memfd_create", "memfd_secret",
    "pkey_alloc", "pkey_free", "pkey_mprotect",
    "mseal", "map_shadow_stack",
)

PROCESS_SYSCALLS = (
    "execve", "execveat", "exit", "exit_group", "fork", "vfork",
    "wait4", "waitid", "waitpid",
    "getpid", "getppid", "gettid", "getpgid", "getpgrp", "setpgid", "getsid", "setsid",
    "set_tid_address", "get_robust_list", "set_robust_list", "rseq", "restart_syscall",
    "get_thread_area", "set_thread_area",
    "prctl", "capget", "capset",
    # a process may always tighten its own confinement
    "seccomp", "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self",
    "pidfd_open", "pidfd_send_signal", "process_mrelease",
    "uretprobe", "riscv_hwprobe",
)

IDENTITY_SYSCALLS = (
    "getuid", "getuid32", "geteuid", "geteuid32", "getgid", "getgid32",
    "getegid", "getegid32", "getresuid", "getresuid32", "getresgid", "getresgid32",
    "getgroups", "getgroups32",
    # changing ids is still gated by CAP_SETUID/CAP_SETGID in the kernel
    "setuid", "setuid32", "setgid", "setgid32", "setreuid", "setreuid32",
    "setregid", "setregid32", "setresuid", "setresuid32", "setresgid", "setresgid32",
    "setfsuid", "setfsuid32", "setfsgid", "setfsgid32", "setgroups", "setgroups32",
)

SCHEDULING_SYSCALLS = (
    "sched_yield", "sched_getaffinity", "sched_setaffinity",
    "sched_getattr", "sched_setattr", "sched_getparam", "sched_setparam",
    "sched_getscheduler", "sched_setscheduler",
    "sched_get_priority_max", "sched_get_priority_min",
    "sched_rr_get_interval", "sched_rr_get_interval_time64",
    "getpriority", "setpriority", "ioprio_get", "ioprio_set", "getcpu",
    # resource limits; raising a hard limit still needs CAP_SYS_RESOURCE
    "getrlimit", "ugetrlimit", "setrlimit", "prlimit64", "getrusage", "times",
    "sysinfo", "uname", "getrandom",
)

SIGNAL_SYSCALLS = (
    "kill", "tkill", "tgkill", "pause",
    "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn",
    "rt_sigsuspend", "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_tgsigqueueinfo",
    "sigaltstack", "sigprocmask", "sigreturn",
)

TIME_SYSCALLS = (
    "time", "gettimeofday", "clock_gettime", "clock_gettime64",
    "clock_getres", "clock_getres_time64",
    "clock_nanosleep", "clock_nanosleep_time64", "nanosleep",
    "alarm", "getitimer", "setitimer",
    "timer_create", "timer_delete", "timer_getoverrun",
    "timer_gettime", "timer_gettime64", "timer_settime", "timer_settime64",
    # read-mostly: setting the clock through these still needs CAP_SYS_TIME
    "adjtimex", "clock_adjtime", "clock_adjtime64",
)

SYNC_SYSCALLS = (
    "futex", "futex_time64", "futex_waitv", "futex_wait", "futex_wake", "futex_requeue",
)

IPC_SYSCALLS = (
    "ipc",
    "msgget", "msgctl", "msgsnd", "msgrcv",
    "semget", "semctl", "semop", "semtimedop", "semtimedop_time64",
    "shmget", "shmctl", "shmat", "shmdt",
    "mq_open", "mq_unlink", "mq_notify", "mq_getsetattr",
    "mq_timedsend", "mq_timedsend_time64", "mq_timedreceive", "mq_timedreceive_time64",
)

# socket(2) itself is not here: it is allowed per address family (see socket rules).
NETWORK_SYSCALLS = (
    "socketpair", "socketcall", "bind", "listen", "accept", "accept4", "connect",
    "getsockname", "getpeername", "getsockopt", "setsockopt", "shutdown",
    "send", "sendto", "sendmsg", "sendmmsg",
    "recv", "recvfrom", "recvmsg", "recvmmsg", "recvmmsg_time64",
)

SYSCALL_GROUPS: Mapping[str, tuple[str, ...]] = {
    "file": FILE_SYSCALLS,
    "event": EVENT_SYSCALLS,
    "memory": MEMORY_SYSCALLS,
    "process": PROCESS_SYSCALLS,
    "identity": IDENTITY_SYSCALLS,
    "scheduling": SCHEDULING_SYSCALLS,
    "signal": SIGNAL_SYSCALLS,
    "time": TIME_SYSCALLS,
    "sync": SYNC_SYSCALLS,
    "ipc": IPC_SYSCALLS,
    "network": NETWORK_SYSCALLS,
}

DEFAULT_ALLOWED: frozenset[str] = frozenset(
    name for group in SYSCALL_GROUPS.values() for name in group
)

# -- syscalls unlocked by a capability ---------------------------------------------------
# What the capability already lets a process do through the kernel's own checks; the
# filter would otherwise make the capability useless. Keyed by capability name.

CAPABILITY_SYSCALLS: Mapping[str, tuple[str, ...]] = {
    "CAP_DAC_READ_SEARCH": ("open_by_handle_at",),
    "CAP_SYS_ADMIN": (
        # mounts, old and new API
        "mount", "umount", "umount2", "mount_setattr", "move_mount", "open_tree",
        "fsopen", "fsconfig", "fsmount", "fspick",
        # namespaces, and clone/clone3 without the namespace-flag restriction below
        "unshare", "setns", "clone", "clone3",
        "sethostname", "setdomainname",
        "bpf", "perf_event_open", "fanotify_init", "lookup_dcookie", "syslog",
        "quotactl", "quotactl_fd",
        "lsm_get_self_attr", "lsm_set_self_attr", "lsm_list_modules",
    ),
    "CAP_SYS_BOOT": ("reboot",),
    "CAP_SYS_CHROOT": ("chroot",),
    "CAP_SYS_MODULE": ("init_module", "finit_module", "delete_module"),
    "CAP_SYS_PACCT": ("acct",),
    "CAP_SYS_PTRACE": (
        "ptrace", "process_vm_readv", "process_vm_writev",
        "kcmp", "pidfd_getfd", "process_madvise",
    ),
    "CAP_SYS_RAWIO": ("iopl", "ioperm"),
    "CAP_SYS_TIME": ("settimeofday", "stime", "clock_settime", "clock_settime64"),
    "CAP_SYS_TTY_CONFIG": ("vhangup",),
    "CAP_SYS_NICE": ("get_mempolicy", "set_mempolicy", "set_mempolicy_home_node", "mbind"),
    "CAP_SYSLOG": ("syslog",),
    "CAP_BPF": ("bpf",),
    "CAP_PERFMON": ("perf_event_open",),
}

# Architecture-specific syscalls, keyed by the architecture names Docker profiles use
# (Go/libseccomp spelling: amd64, x86, x32, arm64 ...).
ARCH_SYSCALLS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("amd64", "x32"), ("arch_prctl",)),
    (("amd64", "x32", "x86"), ("modify_ldt",)),
    (("arm", "arm64"), (
        "arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2",
        "breakpoint", "cacheflush", "set_tls",
    )),
    (("ppc64le",), ("sync_file_range2", "swapcontext")),
    (("s390", "s390x"), ("s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr")),
    (("riscv64",), ("riscv_flush_icache",)),
)

# The seccomp architectures each native architecture's filter covers (its own plus the
# compat ABIs a process on it can switch to).
ARCH_MAP: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("SCMP_ARCH_X86_64", ("SCMP_ARCH_X86", "SCMP_ARCH_X32")),
    ("SCMP_ARCH_AARCH64", ("SCMP_ARCH_ARM",)),
    ("SCMP_ARCH_MIPS64", ("SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64N32")),
    ("SCMP_ARCH_MIPS64N32", ("SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64")),
    ("SCMP_ARCH_MIPSEL64", ("SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64N32")),
    ("SCMP_ARCH_MIPSEL64N32", ("SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64")),
    ("SCMP_ARCH_S390X", ("SCMP_ARCH_S390",)),
    ("SCMP_ARCH_RISCV64", ()),
    ("SCMP_ARCH_LOONGARCH64", ()),
)

# Docker-profile arch name -> seccomp arch, for picking the archMap entry.
_NATIVE_TO_SECCOMP = {
    "x86": "SCMP_ARCH_X86",
    "amd64": "SCMP_ARCH_X86_64",
    "arm": "SCMP_ARCH_ARM",
    "arm64": "SCMP_ARCH_AARCH64",
    "loong64": "SCMP_ARCH_LOONGARCH64",
    "mips64": "SCMP_ARCH_MIPS64",
    "mips64n32": "SCMP_ARCH_MIPS64N32",
    "mipsel64": "SCMP_ARCH_MIPSEL64",
    "mipsel64n32": "SCMP_ARCH_MIPSEL64N32",
    "mipsel": "SCMP_ARCH_MIPSEL",
    "ppc": "SCMP_ARCH_PPC",
    "ppc64": "SCMP_ARCH_PPC64",
    "ppc64le": "SCMP_ARCH_PPC64LE",
    "riscv64": "SCMP_ARCH_RISCV64",
    "s390": "SCMP_ARCH_S390",
    "s390x": "SCMP_ARCH_S390X",
}

# uname -m -> Docker-profile arch name.
_MACHINE_TO_NATIVE = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "i386": "x86",
    "i686": "x86",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "ppc64le": "ppc64le",
    "ppc64": "ppc64",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "loongarch64": "loong64",
    "mips64": "mips64",
}


# -- the profile model --------------------------------------------------------------------


@dataclass(frozen=True)
class ArgMatch:
    """A comparison on one syscall argument (OCI ``LinuxSeccompArg``).

    For ``SCMP_CMP_MASKED_EQ``, ``value`` is the mask and ``value_two`` the expected
    result of ``arg & mask``.
    """

    index: int
    value: int
    op: str
    value_two: int = 0

    def to_oci(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "value": self.value}
        # The OCI field is optional; Go omits it when zero, so do we (byte-for-byte
        # comparable with dockerd's config.json).
        if self.value_two:
            out["valueTwo"] = self.value_two
        out["op"] = self.op
        return out


@dataclass(frozen=True)
class Condition:
    """When a rule applies: all listed caps are in the bounding set, the native arch is
    one of ``arches``, and the kernel is at least ``min_kernel`` (major, minor).

    Used as ``includes`` (all set parts must hold) and as ``excludes`` (any set part
    holding drops the rule), exactly as in Docker profiles.
    """

    caps: tuple[str, ...] = ()
    arches: tuple[str, ...] = ()
    min_kernel: tuple[int, int] | None = None

    def is_empty(self) -> bool:
        return not self.caps and not self.arches and self.min_kernel is None


@dataclass(frozen=True)
class Rule:
    """One group of syscalls with one action (OCI ``LinuxSyscall`` plus conditions)."""

    names: tuple[str, ...]
    action: str = "SCMP_ACT_ALLOW"
    args: tuple[ArgMatch, ...] = ()
    errno_ret: int | None = None
    includes: Condition = field(default_factory=Condition)
    excludes: Condition = field(default_factory=Condition)
    comment: str = ""

    def to_oci(self) -> dict[str, Any]:
        out: dict[str, Any] = {"names": list(self.names), "action": self.action}
        if self.errno_ret is not None:
            out["errnoRet"] = self.errno_ret
        if self.args:
            out["args"] = [a.to_oci() for a in self.args]
        return out


@dataclass(frozen=True)
class Profile:
    """A Docker seccomp profile before its conditions are resolved.

    ``architectures`` (explicit list) and ``arch_map`` (per native arch) are mutually
    exclusive, as in Docker's format. ``extra`` carries OCI fields we pass through
    untouched (``flags``, ``listenerPath``, ``listenerMetadata``).
    """

    default_action: str
    rules: tuple[Rule, ...]
    default_errno_ret: int | None = None
    architectures: tuple[str, ...] = ()
    arch_map: tuple[tuple[str, tuple[str, ...]], ...] = ()
    extra: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Target:
    """What a profile is resolved against: the container's bounding capabilities, the
    host's native architecture (Docker-profile spelling) and kernel (major, minor)."""

    capabilities: frozenset[str]
    arch: str
    kernel: tuple[int, int]


# -- the default profile -----------------------------------------------------------------


def _socket_rules() -> tuple[Rule, ...]:
    # Three ranges around the refused families: [0, AF_ALG), the one family between
    # them, and (AF_VSOCK, ...). AF_VSOCK reaches the hypervisor; AF_ALG exposes the
    # kernel crypto API, a recurring source of kernel bugs.
    return (
        Rule(("socket",), args=(ArgMatch(0, AF_ALG, "SCMP_CMP_LT"),)),
        Rule(("socket",), args=(ArgMatch(0, AF_ALG + 1, "SCMP_CMP_EQ"),)),
        Rule(("socket",), args=(ArgMatch(0, AF_VSOCK, "SCMP_CMP_GT"),)),
    )


def _personality_rules() -> tuple[Rule, ...]:
    # One rule per value: a rule's arg comparisons are ANDed, so alternatives must be
    # separate rules.
    return tuple(
        Rule(("personality",), args=(ArgMatch(0, value, "SCMP_CMP_EQ"),))
        for value in PERSONALITY_ALLOWED
    )


def _clone_rules() -> tuple[Rule, ...]:
    without_admin = Condition(caps=("CAP_SYS_ADMIN",))
    return (
        # clone is fine as long as no CLONE_NEW* bit is set (flags are arg 0, except on
        # s390 where the first two arguments are swapped).
        Rule(
            ("clone",),
            args=(ArgMatch(0, CLONE_NAMESPACE_FLAGS, "SCMP_CMP_MASKED_EQ", 0),),
            excludes=Condition(caps=("CAP_SYS_ADMIN",), arches=("s390", "s390x")),
        ),
        Rule(
            ("clone",),
            args=(ArgMatch(1, CLONE_NAMESPACE_FLAGS, "SCMP_CMP_MASKED_EQ", 0),),
            includes=Condition(arches=("s390", "s390x")),
            excludes=without_admin,
            comment="s390 parameter ordering for clone is different",
        ),
        # clone3 passes its flags in a struct the filter cannot read; ENOSYS (rather
        # than EPERM) makes glibc and musl fall back to clone, which is checked above.
        Rule(("clone3",), action="SCMP_ACT_ERRNO", errno_ret=ENOSYS, excludes=without_admin),
    )


def default_rules() -> tuple[Rule, ...]:
    """The rules of Docker's default profile, in a stable order."""
    rules: list[Rule] = [
        Rule(tuple(sorted(DEFAULT_ALLOWED))),
        # Since 4.8 ptrace can no longer be used to bypass seccomp, so a process may
        # trace its own children without CAP_SYS_PTRACE.
        Rule(
            ("process_vm_readv", "process_vm_writev", "ptrace"),
            includes=Condition(min_kernel=(4, 8)),
        ),
        *_socket_rules(),
        *_personality_rules(),
    ]
    for arches, names in ARCH_SYSCALLS:
        rules.append(Rule(names, includes=Condition(arches=arches)))
    cap_rules = [
        Rule(names, includes=Condition(caps=(cap,))) for cap, names in CAPABILITY_SYSCALLS.items()
    ]
    # Same order as Docker's profile (open_by_handle_at, the CAP_SYS_ADMIN list, the
    # clone rules, then the other capabilities) so rendered specs diff cleanly.
    rules.extend(cap_rules[:2])
    rules.extend(_clone_rules())
    rules.extend(cap_rules[2:])
    return tuple(rules)


def default_profile() -> Profile:
    """Docker's default profile: deny with EPERM unless a rule allows."""
    return Profile(
        default_action="SCMP_ACT_ERRNO",
        default_errno_ret=EPERM,
        rules=default_rules(),
        arch_map=ARCH_MAP,
    )


# -- resolution ------------------------------------------------------------------------


def native_arch(machine: str | None = None) -> str:
    """The Docker-profile name of this host's architecture (``amd64`` on x86_64)."""
    m = machine if machine is not None else platform.machine()
    return _MACHINE_TO_NATIVE.get(m, m)


def parse_kernel_release(release: str) -> tuple[int, int]:
    """``"6.18.44-fc"`` -> ``(6, 18)``; only major and minor matter for ``minKernel``."""
    m = re.match(r"(\d+)\.(\d+)", release)
    if not m:
        raise ValueError(f"failed to parse kernel version {release!r}")
    return int(m.group(1)), int(m.group(2))


def host_kernel() -> tuple[int, int]:
    return parse_kernel_release(os.uname().release)


def _included(cond: Condition, target: Target) -> bool:
    if cond.arches and target.arch not in cond.arches:
        return False
    if cond.caps and not all(c in target.capabilities for c in cond.caps):
        return False
    return cond.min_kernel is None or target.kernel >= cond.min_kernel


def _excluded(cond: Condition, target: Target) -> bool:
    if cond.arches and target.arch in cond.arches:
        return True
    if any(c in target.capabilities for c in cond.caps):
        return True
    return cond.min_kernel is not None and target.kernel >= cond.min_kernel


def _architectures(profile: Profile, arch: str) -> list[str]:
    if profile.architectures:
        return list(profile.architectures)
    wanted = _NATIVE_TO_SECCOMP.get(arch)
    for main, subs in profile.arch_map:
        if main == wanted:
            return [main, *subs]
    return []


def render(profile: Profile, target: Target) -> dict[str, Any]:
    """Resolve ``profile`` for one container into an OCI ``linux.seccomp`` object."""
    out: dict[str, Any] = {"defaultAction": profile.default_action}
    if profile.default_errno_ret is not None:
        out["defaultErrnoRet"] = profile.default_errno_ret
    archs = _architectures(profile, target.arch)
    if archs:
        out["architectures"] = archs
    for key, value in profile.extra:
        out[key] = value
    out["syscalls"] = [
        rule.to_oci()
        for rule in profile.rules
        if not _excluded(rule.excludes, target) and _included(rule.includes, target)
    ]
    return out


def allowed_syscalls(rendered: Mapping[str, Any]) -> frozenset[str]:
    """Names a rendered profile allows without argument conditions (for tests/inspection)."""
    return frozenset(
        name
        for rule in rendered.get("syscalls", [])
        if rule.get("action") == "SCMP_ACT_ALLOW" and not rule.get("args")
        for name in rule.get("names", [])
    )


# -- Docker-format custom profiles -------------------------------------------------------


def _fail(reason: str) -> InvalidParameter:
    # dockerd's wording (moby/profiles seccomp.LoadProfile). dockerd reports it at start
    # (500); we report it when the spec is built, which the create path can do early.
    return InvalidParameter(f"Decoding seccomp profile failed: {reason}")


def _expect(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    # bool is an int in Python; JSON numbers must not accept true/false.
    if isinstance(value, bool) and bool not in _as_tuple(kind):
        raise _fail(f"{where}: expected {_kind_name(kind)}, got {json.dumps(value)}")
    if not isinstance(value, kind):
        raise _fail(f"{where}: expected {_kind_name(kind)}, got {json.dumps(value)[:40]}")
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {dict: "object", list: "array", str: "string", int: "number", bool: "boolean"}
    return " or ".join(names.get(k, k.__name__) for k in _as_tuple(kind))


def _uint(value: Any, where: str) -> int:
    v = _expect(value, int, where)
    if v < 0:
        raise _fail(f"{where}: expected an unsigned integer, got {v}")
    return int(v)


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    items = _expect(value, list, where)
    return tuple(_expect(item, str, where) for item in items)


def _parse_min_kernel(value: Any, where: str) -> tuple[int, int] | None:
    text = _expect(value, str, where)
    if text == "":
        return None
    parts = text.split(".")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise _fail(f'invalid kernel version: "{text}", expected "<kernel>.<major>"')
    version = (int(parts[0]), int(parts[1]))
    if version == (0, 0):
        raise _fail(f'invalid kernel version: "{text}", expected "<kernel>.<major>": '
                    "version cannot be 0.0")
    return version


def _parse_condition(value: Any, where: str) -> Condition:
    if value is None:
        return Condition()
    obj = _expect(value, dict, where)
    min_kernel = obj.get("minKernel")
    return Condition(
        caps=_str_list(obj.get("caps"), f"{where}.caps"),
        arches=_str_list(obj.get("arches"), f"{where}.arches"),
        min_kernel=None if min_kernel is None else _parse_min_kernel(min_kernel, where),
    )


def _parse_arg(value: Any, where: str) -> ArgMatch:
    obj = _expect(value, dict, where)
    op = _expect(obj.get("op", ""), str, f"{where}.op")
    if op not in OPERATORS:
        raise _fail(f"{where}: unknown operator {op!r}")
    return ArgMatch(
        index=_uint(obj.get("index", 0), f"{where}.index"),
        value=_uint(obj.get("value", 0), f"{where}.value"),
        op=op,
        value_two=_uint(obj.get("valueTwo", 0), f"{where}.valueTwo"),
    )


def _parse_rule(value: Any, where: str) -> Rule:
    obj = _expect(value, dict, where)
    name = obj.get("name")
    names = _str_list(obj.get("names"), f"{where}.names")
    if name:
        if names:
            raise _fail("both 'name' and 'names' are specified in the seccomp profile, "
                        "use either 'name' or 'names'")
        names = (_expect(name, str, f"{where}.name"),)
    action = _expect(obj.get("action", ""), str, f"{where}.action")
    if action not in ACTIONS:
        raise _fail(f"{where}: unknown action {action!r}")
    errno = obj.get("errnoRet")
    args = _expect(obj.get("args") or [], list, f"{where}.args")
    return Rule(
        names=names,
        action=action,
        args=tuple(_parse_arg(a, f"{where}.args[{i}]") for i, a in enumerate(args)),
        errno_ret=None if errno is None else _uint(errno, f"{where}.errnoRet"),
        includes=_parse_condition(obj.get("includes"), f"{where}.includes"),
        excludes=_parse_condition(obj.get("excludes"), f"{where}.excludes"),
        comment=str(obj.get("comment") or ""),
    )


def _parse_arch_map(value: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    out = []
    for i, entry in enumerate(_expect(value or [], list, "archMap")):
        obj = _expect(entry, dict, f"archMap[{i}]")
        arch = _expect(obj.get("architecture", ""), str, f"archMap[{i}].architecture")
        subs = _str_list(obj.get("subArchitectures"), f"archMap[{i}].subArchitectures")
        out.append((arch, subs))
    return tuple(out)


_PASSTHROUGH_KEYS = ("flags", "listenerPath", "listenerMetadata")


def parse_profile(text: str) -> Profile | None:
    """Parse a Docker-format profile. ``None`` means "no filter" (Docker's rule: a
    profile with neither ``defaultAction`` nor ``syscalls`` disables seccomp)."""
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise _fail(str(exc)) from None
    obj = _expect(doc, dict, "profile")
    default_action = _expect(obj.get("defaultAction", ""), str, "defaultAction")
    raw_rules = _expect(obj.get("syscalls") or [], list, "syscalls")
    if default_action == "" and not raw_rules:
        return None
    if default_action not in ACTIONS:
        raise _fail(f"unknown defaultAction {default_action!r}")
    architectures = _str_list(obj.get("architectures"), "architectures")
    arch_map = _parse_arch_map(obj.get("archMap"))
    if architectures and arch_map:
        raise _fail("both 'architectures' and 'archMap' are specified in the seccomp "
                    "profile, use either 'architectures' or 'archMap'")
    errno = obj.get("defaultErrnoRet")
    return Profile(
        default_action=default_action,
        default_errno_ret=None if errno is None else _uint(errno, "defaultErrnoRet"),
        rules=tuple(_parse_rule(r, f"syscalls[{i}]") for i, r in enumerate(raw_rules)),
        architectures=architectures,
        arch_map=arch_map,
        extra=tuple((k, obj[k]) for k in _PASSTHROUGH_KEYS if obj.get(k) is not None),
    )


def profile_to_json(profile: Profile) -> str:
    """Serialise a profile in Docker's format (e.g. to show or save the default)."""
    doc: dict[str, Any] = {"defaultAction": profile.default_action}
    if profile.default_errno_ret is not None:
        doc["defaultErrnoRet"] = profile.default_errno_ret
    if profile.architectures:
        doc["architectures"] = list(profile.architectures)
    if profile.arch_map:
        doc["archMap"] = [
            {"architecture": a, "subArchitectures": list(s)} for a, s in profile.arch_map
        ]
    doc["syscalls"] = [_rule_to_doc(r) for r in profile.rules]
    return json.dumps(doc, indent=2)


def _condition_to_doc(cond: Condition) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if cond.caps:
        out["caps"] = list(cond.caps)
    if cond.arches:
        out["arches"] = list(cond.arches)
    if cond.min_kernel is not None:
        out["minKernel"] = f"{cond.min_kernel[0]}.{cond.min_kernel[1]}"
    return out


def _rule_to_doc(rule: Rule) -> dict[str, Any]:
    doc = rule.to_oci()
    if rule.comment:
        doc["comment"] = rule.comment
    if not rule.includes.is_empty():
        doc["includes"] = _condition_to_doc(rule.includes)
    if not rule.excludes.is_empty():
        doc["excludes"] = _condition_to_doc(rule.excludes)
    return doc


def names_in(rules: Iterable[Rule]) -> frozenset[str]:
    """Every syscall name a set of rules mentions."""
    return frozenset(n for r in rules for n in r.names)
