"""S1-S5 (reliability.md (c)): run busybox under runc with our spec and look from inside.

Each test builds a spec with ``engine.containers.spec.build_spec``, writes it to a bundle
and runs ``runc run`` directly (no daemon), then checks what the container sees:
capabilities, seccomp and no-new-privileges in /proc/self/status, masked and read-only
paths in /proc/mounts, the device cgroup and /dev, and that mount/unshare/AF_VSOCK are
refused. Container cgroups live under /wharfd-test and are removed afterwards.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from engine.containers.spec import (
    DEFAULT_MASKED_PATHS,
    DEFAULT_READONLY_PATHS,
    HostFacts,
    ProcessUser,
    SpecRequest,
    build_spec,
    capability_mask,
)
from engine.runtime import cgroups

RUNC = shutil.which("runc")
BUSYBOX = Path("/bin/busybox")
CGROUP_PARENT = "/wharfd-test"
DEFAULT_CAPS_HEX = "00000000a80425fb"
ZERO_CAPS_HEX = "0000000000000000"

# reliability.md S4: devices.list observed under dockerd 20.10 + runc 1.1.5
OBSERVED_DEVICES_LIST = [
    "b *:* m", "c *:* m", "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm",
    "c 5:0 rwm", "c 5:1 rwm", "c 5:2 rwm", "c 10:200 rwm", "c 136:* rwm",
]
# /dev without a terminal (with one, runc adds "console")
OBSERVED_DEV = {
    "null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "mqueue",
    "fd", "stdin", "stdout", "stderr",
}

SCRIPT = r"""
echo @@status; grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/self/status
echo @@mounts; cat /proc/mounts
echo @@devices; cat /sys/fs/cgroup/devices/devices.list 2>&1
echo @@dev; ls -A /dev
echo @@mount; mount -t tmpfs x /mnt 2>&1; echo "rc=$?"
echo @@unshare; unshare -U true 2>&1; echo "rc=$?"
echo @@nofile; ulimit -Hn
echo @@probe; if [ -x /probe ]; then /probe; fi
echo @@end
"""

PROBE_C = r"""
#include <errno.h>
#include <stdio.h>
#include <sys/personality.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static int err(long rc) { return rc < 0 ? errno : 0; }

int main(void) {
    errno = 0; printf("vsock=%d\n", err(socket(40, SOCK_STREAM, 0)));
    errno = 0; printf("alg=%d\n", err(socket(38, SOCK_SEQPACKET, 0)));
    errno = 0; printf("inet=%d\n", err(socket(AF_INET, SOCK_STREAM, 0)));
    errno = 0; printf("clone3=%d\n", err(syscall(435, NULL, 0)));
    errno = 0; printf("personality=%d\n", err(personality(0x0040000)));
    errno = 0; printf("io_uring_setup=%d\n", err(syscall(425, 1, NULL)));
    return 0;
}
"""


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if RUNC is None:
        return "runc not installed"
    if not BUSYBOX.exists():
        return "/bin/busybox (busybox-static) not installed"
    return None


_REASON = _unavailable()
pytestmark = [pytest.mark.root, pytest.mark.skipif(_REASON is not None, reason=str(_REASON))]


@dataclass(frozen=True)
class Observed:
    sections: dict[str, list[str]]
    stderr: str

    def status(self) -> dict[str, str]:
        out = {}
        for line in self.sections["status"]:
            key, _, value = line.partition(":")
            out[key] = value.strip()
        return out

    def mounts(self) -> dict[str, list[str]]:
        """mount point -> options of the last mount there."""
        out = {}
        for line in self.sections["mounts"]:
            fields = line.split()
            if len(fields) >= 4:
                out[fields[1]] = fields[3].split(",")
        return out


def _parse(stdout: str, stderr: str) -> Observed:
    sections: dict[str, list[str]] = {}
    current = None
    for line in stdout.splitlines():
        if line.startswith("@@"):
            current = line[2:]
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
    assert "end" in sections, f"container did not finish the script:\n{stdout}\n{stderr}"
    return Observed(sections, stderr)


def _cgroup_mounts() -> list[Path]:
    return [
        Path(m.mount_point)
        for m in cgroups.read_mountinfo()
        if m.fs_type in ("cgroup", "cgroup2") and m.mount_point.startswith("/sys/fs/cgroup")
    ]


def _remove_cgroup(rel: str) -> None:
    for mount in _cgroup_mounts():
        path = mount / rel.lstrip("/")
        if path.is_dir():
            path.rmdir()  # empty once runc is done; rmdir of a cgroup needs no recursion


@pytest.fixture(scope="module")
def host() -> HostFacts:
    return HostFacts.detect(cgroup_version=cgroups.detect().version)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("posture")
    rootfs = base / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "mnt").mkdir()
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (rootfs / "bin" / applet).symlink_to("busybox")
    _build_probe(rootfs)
    yield base
    _remove_cgroup(CGROUP_PARENT)


def _build_probe(rootfs: Path) -> None:
    """A static helper for what busybox cannot test (AF_VSOCK, clone3); optional."""
    gcc = shutil.which("gcc")
    if gcc is None:
        return
    src = rootfs.parent / "probe.c"
    src.write_text(PROBE_C)
    subprocess.run([gcc, "-static", "-O1", "-o", str(rootfs / "probe"), str(src)],
                   capture_output=True, check=False, timeout=120)


def run(workdir: Path, host: HostFacts, **changes: Any) -> Observed:
    cid = "wharfd-sec-" + secrets.token_hex(6)
    bundle = workdir / cid
    bundle.mkdir()
    request = SpecRequest(
        args=["/bin/sh", "-c", SCRIPT],
        rootfs=str(workdir / "rootfs"),
        cgroups_path=f"{CGROUP_PARENT}/{cid}",
        hostname="posture",
    )
    spec = build_spec(replace(request, **changes), host)
    (bundle / "config.json").write_text(json.dumps(spec))
    state = workdir / "runc"
    assert RUNC is not None
    try:
        proc = subprocess.run(
            [RUNC, "--root", str(state), "run", "--bundle", str(bundle), cid],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        )
    finally:
        subprocess.run([RUNC, "--root", str(state), "delete", "--force", cid],
                       capture_output=True, check=False, timeout=60)
        _remove_cgroup(f"{CGROUP_PARENT}/{cid}")
    assert proc.returncode == 0, f"runc run failed: {proc.stderr}\n{proc.stdout}"
    return _parse(proc.stdout, proc.stderr)


def test_default_posture(workdir: Path, host: HostFacts) -> None:
    seen = run(workdir, host)
    status = seen.status()
    # S1
    assert status["CapEff"] == status["CapBnd"] == status["CapPrm"] == DEFAULT_CAPS_HEX
    assert status["CapInh"] == status["CapAmb"] == ZERO_CAPS_HEX
    # S2
    assert status["Seccomp"] == "2"
    assert status["NoNewPrivs"] == "0"
    # S3: every listed path that exists on this kernel is covered, read-only ones ro
    mounts = seen.mounts()
    for path in (*DEFAULT_MASKED_PATHS, *host.thermal_throttle_paths):
        if os.path.exists(path):
            assert path in mounts, f"{path} not masked"
    for path in DEFAULT_READONLY_PATHS:
        if os.path.exists(path):
            assert "ro" in mounts[path], f"{path} not read-only"
    assert "ro" in mounts["/sys"]
    assert "nosuid" in mounts["/dev/shm"] and "noexec" in mounts["/dev/shm"]
    # S4
    if host.cgroup_version == "1":
        assert seen.sections["devices"] == OBSERVED_DEVICES_LIST
    assert set(seen.sections["dev"]) == OBSERVED_DEV
    # S5
    assert "permission denied" in "\n".join(seen.sections["mount"])
    assert seen.sections["mount"][-1] != "rc=0"
    assert "Operation not permitted" in "\n".join(seen.sections["unshare"])
    assert seen.sections["unshare"][-1] != "rc=0"
    # no rlimits in the spec: the daemon's hard nofile is inherited
    hard_nofile = subprocess.run(["sh", "-c", "ulimit -Hn"], capture_output=True,
                                 text=True, check=True).stdout.strip()
    assert seen.sections["nofile"] == [hard_nofile]


def test_syscalls_busybox_cannot_reach(workdir: Path, host: HostFacts) -> None:
    if not (workdir / "rootfs" / "probe").exists():
        pytest.skip("no gcc with static libc to build the probe (rules unit-tested)")
    probe = dict(line.split("=", 1) for line in run(workdir, host).sections["probe"])
    assert probe["vsock"] == "1"  # EPERM from the filter, not EAFNOSUPPORT
    assert probe["alg"] == "1"
    assert probe["inet"] == "0"
    assert probe["clone3"] == "38"  # ENOSYS (the kernel would say EINVAL)
    assert probe["personality"] == "1"
    # Docker 25+ (and wharfd, docs/containers.md): io_uring is refused with EPERM
    assert probe["io_uring_setup"] == "1"
    unconfined = run(workdir, host, security_opt=["seccomp=unconfined"]).sections["probe"]
    assert "clone3=38" not in unconfined
    assert "io_uring_setup=1" not in unconfined  # the kernel itself allows it (EFAULT)


def test_no_new_privileges_option(workdir: Path, host: HostFacts) -> None:
    status = run(workdir, host, security_opt=["no-new-privileges:true"]).status()
    assert status["NoNewPrivs"] == "1"


def test_non_root_user_has_no_effective_capabilities(workdir: Path, host: HostFacts) -> None:
    user = ProcessUser(uid=1000, gid=1000, additional_gids=(1000,))
    status = run(workdir, host, user=user).status()
    assert status["CapEff"] == status["CapPrm"] == ZERO_CAPS_HEX
    assert status["CapBnd"] == DEFAULT_CAPS_HEX


def test_cap_drop_all(workdir: Path, host: HostFacts) -> None:
    status = run(workdir, host, cap_drop=["ALL"]).status()
    assert status["CapEff"] == status["CapBnd"] == ZERO_CAPS_HEX


def test_seccomp_unconfined(workdir: Path, host: HostFacts) -> None:
    assert run(workdir, host, security_opt=["seccomp=unconfined"]).status()["Seccomp"] == "0"


def test_privileged(workdir: Path, host: HostFacts) -> None:
    seen = run(workdir, host, privileged=True)
    status = seen.status()
    everything = f"{capability_mask(host.capabilities):016x}"
    assert status["CapEff"] == status["CapBnd"] == everything
    assert status["Seccomp"] == "0"
    mounts = seen.mounts()
    assert "rw" in mounts["/sys"]
    for path in (*DEFAULT_MASKED_PATHS, *DEFAULT_READONLY_PATHS):
        assert path not in mounts
    if host.cgroup_version == "1":
        assert seen.sections["devices"] == ["a *:* rwm"]
    assert "permission denied" not in "\n".join(seen.sections["mount"])
