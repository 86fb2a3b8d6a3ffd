"""System facts: parsing, the one-time probe, the daemon ID, and the /info and /version
bodies built from them."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from api.routers.system import Counts, info_body, registry_config, rfc3339_nano, version_body
from engine.config import EngineConfig
from engine.layout import Layout
from engine.runtime.cgroups import CgroupInfo, MountEntry
from engine.system.info import (
    SystemInfo,
    backing_filesystem,
    cgroup_warnings,
    load_daemon_id,
    mask_credentials,
    parse_mem_total,
    parse_os_release,
    parse_version_output,
    proxy_settings,
    security_options,
)
from tests.unit.api_fakes import sample_facts

RUNC = "runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1\nspec: 1.0.2-dev\ngo: go1.19.8\n"
CRUN = "crun version 1.8.1\ncommit: f8a096be060b22ccd3d5f3ebe44108517fbf6c30\nrundir: /run/crun\n"
CONMON = "conmon version 2.1.6\ncommit: unknown\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (RUNC, ("1.1.5+ds1", "1.1.5+ds1-1+deb12u1")),
        (CRUN, ("1.8.1", "f8a096be060b22ccd3d5f3ebe44108517fbf6c30")),
        (CONMON, ("2.1.6", "unknown")),
        ("garbage", ("", "")),
    ],
)
def test_parse_version_output(text: str, expected: tuple[str, str]) -> None:
    assert parse_version_output(text) == expected


def test_parse_os_release() -> None:
    text = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nVERSION_ID="12"\nID=debian\n# c\n'
    values = parse_os_release(text)
    assert values["PRETTY_NAME"] == "Debian GNU/Linux 12 (bookworm)"
    assert values["VERSION_ID"] == "12" and values["ID"] == "debian"


def test_parse_mem_total() -> None:
    assert parse_mem_total("MemTotal:       24684092 kB\nMemFree: 1 kB\n") == 24684092 * 1024
    assert parse_mem_total("") == 0


def _mount(point: str, fstype: str) -> MountEntry:
    return MountEntry(root="/", mount_point=point, fs_type=fstype, source="x", super_options=())


def test_backing_filesystem_longest_prefix(tmp_path: Path) -> None:
    mounts = [_mount("/", "ext4"), _mount(str(tmp_path), "xfs"), _mount("/tm", "tmpfs")]
    assert backing_filesystem(mounts, tmp_path / "data") == "xfs"
    assert backing_filesystem(mounts, Path("/var/lib/wharfd")) == "extfs"
    assert backing_filesystem([*mounts, _mount(str(tmp_path), "btrfs")], tmp_path) == "btrfs"


def test_daemon_id_is_created_once_and_kept(tmp_path: Path) -> None:
    layout = Layout(data_root=tmp_path, exec_root=tmp_path / "exec")
    first = load_daemon_id(layout)
    assert len(first) == 36
    assert load_daemon_id(layout) == first
    assert stat.S_IMODE(layout.engine_id_file.stat().st_mode) == 0o600
    other = Layout(data_root=tmp_path / "other", exec_root=tmp_path / "exec")
    other.data_root.mkdir()
    assert load_daemon_id(other) != first


def test_security_options() -> None:
    assert security_options(EngineConfig(), "1") == ["name=seccomp,profile=builtin"]
    config = EngineConfig.model_validate(
        {"no-new-privileges": True, "seccomp-profile": "/etc/w/seccomp.json"}
    )
    assert security_options(config, "2") == [
        "name=seccomp,profile=/etc/w/seccomp.json",
        "name=no-new-privileges",
        "name=cgroupns",
    ]


def test_cgroup_warnings() -> None:
    assert (
        cgroup_warnings(
            CgroupInfo(
                version="1",
                memory_limit=True,
                swap_limit=True,
                oom_kill_disable=True,
                cpu_cfs=True,
                cpu_shares=True,
                cpuset=True,
            )
        )
        == []
    )
    warnings = cgroup_warnings(
        CgroupInfo(
            version="1",
            memory_limit=True,
            cpu_cfs=True,
            cpu_shares=True,
            cpuset=True,
            oom_kill_disable=True,
        )
    )
    assert warnings == ["WARNING: No swap limit support"]


def test_proxies_are_masked() -> None:
    env = {"HTTP_PROXY": "http://u:secret@proxy:3128", "https_proxy": "http://p", "NO_PROXY": "x"}
    assert proxy_settings(env) == ("http://u:xxxxx@proxy:3128", "http://p", "x")
    assert mask_credentials("http://proxy") == "http://proxy"


# --- the probe --------------------------------------------------------------------------------


@dataclass
class FakeRuntime:
    path: str


def _script(tmp_path: Path, name: str, output: str) -> str:
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}EOF\n")
    path.chmod(0o755)
    return str(path)


@pytest.mark.asyncio
async def test_probe_caches_everything_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    await asyncio.to_thread(data.mkdir)
    config = EngineConfig.model_validate(
        {"data-root": data, "exec-root": tmp_path / "exec", "labels": ["a=b"]}
    )
    layout = Layout(data_root=data, exec_root=tmp_path / "exec")
    runc = FakeRuntime(await asyncio.to_thread(_script, tmp_path, "runc", RUNC))
    configured = {"runc": runc, "crun": FakeRuntime("/nonexistent/crun")}
    info = SystemInfo(config, layout, configured)
    with pytest.raises(RuntimeError):
        info.facts()
    # the engine removes runtimes that failed their probe before asking for facts
    facts = await info.probe({"runc": runc})
    assert info.facts() is facts
    assert [(r.name, r.version, r.commit) for r in facts.runtimes] == [
        ("runc", "1.1.5+ds1", "1.1.5+ds1-1+deb12u1")
    ]
    assert any("runtime crun is not usable" in w for w in facts.warnings)
    assert facts.data_root == str(data)
    assert facts.labels == ("a=b",)
    assert facts.host.kernel == os.uname().release
    assert facts.host.ncpu >= 1 and facts.host.mem_total > 0
    assert facts.host.cgroups.version in ("1", "2")
    assert facts.python_version == "python" + ".".join(map(str, sys.version_info[:3]))
    assert facts.daemon_id == (await asyncio.to_thread(layout.engine_id_file.read_text)).strip()


@pytest.mark.asyncio
async def test_probe_survives_a_broken_runtime(tmp_path: Path) -> None:
    await asyncio.to_thread((tmp_path / "data").mkdir)
    config = EngineConfig.model_validate({"data-root": tmp_path / "data"})
    layout = Layout(data_root=tmp_path / "data", exec_root=tmp_path / "exec")
    broken = FakeRuntime(await asyncio.to_thread(_script, tmp_path, "bad", ""))
    facts = await SystemInfo(config, layout, {"runc": broken}).probe({"runc": broken})
    assert facts.runtimes[0].version == ""


# --- bodies ------------------------------------------------------------------------------------


def test_version_body_matches_what_the_cli_renders() -> None:
    body = version_body(sample_facts())
    assert body["Platform"] == {"Name": "wharfd"}
    assert [c["Name"] for c in body["Components"]] == ["Engine", "runc", "conmon"]
    details = body["Components"][0]["Details"]
    assert set(details) == {
        "ApiVersion",
        "Arch",
        "BuildTime",
        "Experimental",
        "GitCommit",
        "GoVersion",
        "KernelVersion",
        "MinAPIVersion",
        "Os",
    }
    assert details["Experimental"] == "false"


def test_info_body_counts_and_security() -> None:
    facts = replace(
        sample_facts(EngineConfig.model_validate({"no-new-privileges": True})),
        security_options=("name=seccomp,profile=builtin", "name=no-new-privileges"),
    )
    body = info_body(facts, Counts(5, 2, 1, 2, 7, 3, 40, 9), 1_700_000_000_123_456_789)
    assert (
        body["Containers"],
        body["ContainersRunning"],
        body["ContainersPaused"],
        body["ContainersStopped"],
        body["Images"],
    ) == (5, 2, 1, 2, 7)
    assert (body["NEventsListener"], body["NFd"], body["NGoroutines"]) == (3, 40, 9)
    assert body["SystemTime"] == "2023-11-14T22:13:20.123456789Z"
    assert body["SecurityOptions"][-1] == "name=no-new-privileges"
    for option in body["SecurityOptions"]:
        # docker info decodes each as name=x[,k=v] with non-empty keys and values
        for pair in option.split(","):
            key, _, value = pair.partition("=")
            assert key and value


def test_registry_config() -> None:
    facts = replace(
        sample_facts(),
        insecure_registries=("10.1.0.0/16", "myreg:5000"),
        registry_mirrors=("https://mirror.example/",),
    )
    config = registry_config(facts)
    assert config["InsecureRegistryCIDRs"] == ["::1/128", "127.0.0.0/8", "10.1.0.0/16"]
    assert config["IndexConfigs"]["myreg:5000"]["Secure"] is False
    assert config["IndexConfigs"]["docker.io"]["Mirrors"] == ["https://mirror.example/"]
    assert config["Mirrors"] == ["https://mirror.example/"]


def test_rfc3339_nano_trims_zeros() -> None:
    assert rfc3339_nano(1_700_000_000_000_000_000) == "2023-11-14T22:13:20Z"
    assert rfc3339_nano(1_700_000_000_500_000_000) == "2023-11-14T22:13:20.5Z"
