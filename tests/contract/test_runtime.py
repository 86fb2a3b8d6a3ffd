"""The OCIRuntime contract, run against every runtime CLI installed here (runc, crun).

The parsing helpers are checked without root. The rest needs root: each runtime is
probed, and the lifecycle (state, start, pause, resume, kill, delete and the error
categories) runs against those whose probe passes. crun 1.8 refuses a hybrid cgroup
layout, so on such a host its probe must fail with crun's own message.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from engine.config import EngineConfig
from engine.errors import Conflict, NotFound, SystemError_
from engine.layout import Layout
from engine.runtime.base import OCIRuntime
from engine.runtime.cli import (
    RuncCLI,
    RuntimeVersion,
    classify_runtime_error,
    parse_version_output,
    runtime_error_message,
)
from tests.harness.busybox import BusyboxUnavailable, build_rootfs

INSTALLED = {name: path for name in ("runc", "crun") if (path := shutil.which(name))}
ROOT = os.geteuid() == 0


def is_cgroup_hybrid() -> bool:
    """cgroup v1 controllers plus a cgroup2 mount at /sys/fs/cgroup/unified."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return False
    targets = {line.split()[1]: line.split()[2] for line in mounts if len(line.split()) > 2}
    return targets.get("/sys/fs/cgroup/unified") == "cgroup2" and "cgroup" in targets.values()


HYBRID = is_cgroup_hybrid()


# --- parsing (no root) ----------------------------------------------------------------------
RUNC_VERSION = """runc version 1.1.5+ds1
commit: 1.1.5+ds1-1+deb12u1
spec: 1.0.2-dev
go: go1.19.8
libseccomp: 2.5.4
"""
CRUN_VERSION = """crun version 1.8.1
commit: f8a096be060b22ccd3d5f3ebe44108517fbf6c30
rundir: /run/crun
spec: 1.0.0
+SYSTEMD +SELINUX +APPARMOR +CAP +SECCOMP +EBPF +YAJL
"""


def test_parse_version_output() -> None:
    assert parse_version_output("runc", RUNC_VERSION) == RuntimeVersion(
        "runc", "1.1.5+ds1", "1.1.5+ds1-1+deb12u1", "1.0.2-dev"
    )
    assert parse_version_output("crun", CRUN_VERSION) == RuntimeVersion(
        "crun", "1.8.1", "f8a096be060b22ccd3d5f3ebe44108517fbf6c30", "1.0.0"
    )
    assert parse_version_output("x", "x version 0.1\n") == RuntimeVersion("x", "0.1")
    with pytest.raises(SystemError_):
        parse_version_output("x", "what?\n")


def test_runtime_error_message_formats() -> None:
    runc_json = (
        '{"level":"error","msg":"runc create failed: unable to start container process: '
        'exec: \\"nosuchcmd\\": executable file not found in $PATH",'
        '"time":"2026-11-27T22:18:49Z"}\n'
    )
    assert runtime_error_message(runc_json) == (
        'runc create failed: unable to start container process: exec: "nosuchcmd": '
        "executable file not found in $PATH"
    )
    logfmt = (
        'time="2026-11-27T22:18:49Z" level=warning msg="a warning"\n'
        'time="2026-11-27T22:18:49Z" level=error msg="exec: \\"/x\\": stat /x: no such '
        'file or directory"\n'
    )
    assert runtime_error_message(logfmt) == 'exec: "/x": stat /x: no such file or directory'
    crun = '{"msg":"cgroups in hybrid mode not supported","level":"error","time":"x"}'
    assert runtime_error_message(crun) == "cgroups in hybrid mode not supported"
    assert runtime_error_message("plain text\n") == "plain text"
    assert runtime_error_message("") == ""


def test_classify_runtime_error() -> None:
    root = Path("/run/wharfd/runtime/crun")
    assert isinstance(classify_runtime_error("container does not exist", root, "c"), NotFound)
    crun_missing = "error opening file `/run/wharfd/runtime/crun/c/status`: No such file"
    assert isinstance(classify_runtime_error(crun_missing + " or directory", root, "c"), NotFound)
    for msg in (
        "container not running",
        "container not paused",
        "cannot start a container that has stopped",
        "cannot delete container c that is not stopped: running",
        "cannot start a container in the paused state",
    ):
        assert isinstance(classify_runtime_error(msg, root, "c"), Conflict), msg
    assert type(classify_runtime_error("permission denied", root, "c")) is SystemError_


def test_from_config(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "data", tmp_path / "exec")
    config = EngineConfig.model_validate(
        {"runtimes": {"custom": {"path": "/opt/custom-runc", "runtimeArgs": ["--debug"]}}}
    )
    runtimes = RuncCLI.from_config(config, layout)
    assert "runc" in runtimes
    assert ("crun" in runtimes) == ("crun" in INSTALLED)
    custom = runtimes["custom"]
    assert (custom.name, custom.path, custom.root) == (
        "custom",
        "/opt/custom-runc",
        layout.runtime_root / "custom",
    )
    assert custom.global_args() == [
        "--root", str(layout.runtime_root / "custom"), "--log-format", "json", "--debug",
    ]  # fmt: skip
    assert runtimes["runc"].root == layout.runtime_root / "runc"
    assert runtimes["runc"].probe_dir == layout.exec_root
    _: dict[str, OCIRuntime] = dict(runtimes)  # mypy checks the protocol


# --- fixtures (root) ----------------------------------------------------------------------------
@pytest.fixture(params=sorted(INSTALLED) or ["runc"])
def runtime(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RuncCLI]:
    if not ROOT:
        pytest.skip("needs root")
    name = str(request.param)
    if name not in INSTALLED:
        pytest.skip(f"{name} is not installed")
    rt = RuncCLI(name, INSTALLED[name], tmp_path / "runtime" / name, probe_dir=tmp_path)
    yield rt
    if rt.root.exists():
        for entry in rt.root.iterdir():
            subprocess.run(
                [rt.path, "--root", str(rt.root), "delete", "--force", entry.name],
                capture_output=True,
                timeout=30,
            )


@pytest.fixture(scope="module")
def bundle_template(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not ROOT or "runc" not in INSTALLED:
        pytest.skip("needs root and runc")
    try:
        rootfs = build_rootfs(tmp_path_factory.mktemp("busybox") / "rootfs")
    except BusyboxUnavailable as exc:
        pytest.skip(str(exc))
    d = tmp_path_factory.mktemp("spec")
    subprocess.run([INSTALLED["runc"], "spec"], cwd=d, check=True, capture_output=True)
    spec: dict[str, Any] = json.loads((d / "config.json").read_text())
    spec["root"] = {"path": str(rootfs), "readonly": True}
    spec["linux"]["namespaces"] = [
        ns for ns in spec["linux"]["namespaces"] if ns["type"] != "network"
    ]
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["sleep", "60"]
    return spec


@pytest.fixture
def bundle(tmp_path: Path, bundle_template: dict[str, Any]) -> Path:
    path = tmp_path / "bundle"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(copy.deepcopy(bundle_template)))
    return path


@pytest_asyncio.fixture
async def usable(runtime: RuncCLI) -> AsyncIterator[RuncCLI]:
    try:
        await runtime.probe()
    except SystemError_ as exc:
        pytest.skip(f"{runtime.name} cannot run containers here: {exc}")
    yield runtime


async def runtime_create(rt: RuncCLI, bundle: Path, cid: str) -> None:
    """`<runtime> create` with stdio on /dev/null and errors in a file (the container's
    init keeps its stdio: a pipe would never reach EOF)."""
    errors = bundle.parent / f"{cid}.stderr"
    err_fd = os.open(errors, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        proc = await asyncio.create_subprocess_exec(
            rt.path, *rt.global_args(), "create", "--bundle", str(bundle), cid,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=err_fd,
        )  # fmt: skip
    finally:
        os.close(err_fd)
    rc = await asyncio.wait_for(proc.wait(), 30)
    assert rc == 0, await asyncio.to_thread(errors.read_text)


async def wait_status(rt: RuncCLI, cid: str, status: str) -> None:
    for _ in range(200):
        state = await rt.state(cid)
        if state is not None and state.status == status:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{cid} never became {status}: {await rt.state(cid)}")


# --- version and probe ------------------------------------------------------------------------
@pytest.mark.asyncio
@pytest.mark.root
async def test_version(runtime: RuncCLI) -> None:
    first_line = await asyncio.to_thread(
        lambda: subprocess.run(
            [runtime.path, "--version"], capture_output=True, text=True, check=True
        ).stdout.splitlines()[0]
    )
    version = await runtime.version()
    assert first_line.endswith(" " + version)
    info = await runtime.version_info()
    assert info.name == runtime.name and info.version == version
    assert info.commit and await runtime.commit() == info.commit


@pytest.mark.asyncio
@pytest.mark.root
async def test_probe(runtime: RuncCLI, tmp_path: Path) -> None:
    if runtime.name == "crun" and HYBRID:
        with pytest.raises(SystemError_) as info:
            await runtime.probe()
        assert "hybrid" in info.value.message
        assert info.value.message.startswith("runtime crun cannot run containers")
    else:
        best = 10.0
        for _ in range(3):
            t0 = time.perf_counter()
            await runtime.probe()
            best = min(best, time.perf_counter() - t0)
        assert best < 0.2, f"probe took {best * 1000:.0f} ms"

    def leftovers() -> list[str]:
        names = [p.name for p in tmp_path.iterdir() if p.name != "runtime"]
        if runtime.root.exists():
            names += [p.name for p in runtime.root.iterdir()]
        return names

    assert await asyncio.to_thread(leftovers) == []


@pytest.mark.asyncio
@pytest.mark.root
@pytest.mark.skipif(not ROOT, reason="needs root")
async def test_probe_of_a_missing_binary(tmp_path: Path) -> None:
    rt = RuncCLI("ghost", str(tmp_path / "no-such-runc"), tmp_path / "runtime", probe_dir=tmp_path)
    with pytest.raises(SystemError_) as info:
        await rt.probe()
    assert "ghost" in info.value.message
    assert await asyncio.to_thread(lambda: [p.name for p in tmp_path.iterdir()]) == []


@pytest.mark.asyncio
async def test_a_hung_runtime_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "hung-runtime"
    await asyncio.to_thread(script.write_text, '#!/bin/sh\necho $$ > "$0.pid"\nexec sleep 30\n')
    await asyncio.to_thread(os.chmod, script, 0o755)
    rt = RuncCLI("hung", str(script), tmp_path / "runtime", timeout=0.3)
    t0 = time.perf_counter()
    with pytest.raises(SystemError_) as info:
        await rt.state("x")
    assert time.perf_counter() - t0 < 5
    assert "no answer" in info.value.message
    pid = int(await asyncio.to_thread((tmp_path / "hung-runtime.pid").read_text))
    assert (
        not await asyncio.to_thread(os.path.exists, f"/proc/{pid}/cmdline")
        or (await asyncio.to_thread(Path(f"/proc/{pid}/stat").read_text)).split()[2] == "Z"
    )


# --- lifecycle ------------------------------------------------------------------------------------
@pytest.mark.asyncio
@pytest.mark.root
async def test_lifecycle(usable: RuncCLI, bundle: Path) -> None:
    rt = usable
    cid = f"c-{secrets.token_hex(6)}"
    assert await rt.state(cid) is None
    await runtime_create(rt, bundle, cid)
    state = await rt.state(cid)
    assert state is not None and (state.id, state.status) == (cid, "created")
    assert state.pid > 0
    with pytest.raises(Conflict):
        await rt.resume(cid)
    await rt.start(cid)
    await wait_status(rt, cid, "running")
    with pytest.raises(Conflict):
        await rt.start(cid)
    await rt.pause(cid)
    await wait_status(rt, cid, "paused")
    await rt.resume(cid)
    await wait_status(rt, cid, "running")
    with pytest.raises(Conflict):
        await rt.delete(cid)  # running, no force
    await rt.kill(cid, signal.SIGKILL, all_processes=True)
    await wait_status(rt, cid, "stopped")
    with pytest.raises(Conflict):
        await rt.kill(cid, signal.SIGTERM)
    with pytest.raises(Conflict):
        await rt.start(cid)
    await rt.delete(cid)
    assert await rt.state(cid) is None


@pytest.mark.asyncio
@pytest.mark.root
async def test_force_delete_of_a_running_container(usable: RuncCLI, bundle: Path) -> None:
    cid = f"c-{secrets.token_hex(6)}"
    await runtime_create(usable, bundle, cid)
    await usable.start(cid)
    await usable.delete(cid, force=True)
    assert await usable.state(cid) is None


@pytest.mark.asyncio
@pytest.mark.root
async def test_unknown_container_is_not_found(usable: RuncCLI) -> None:
    cid = f"missing-{secrets.token_hex(4)}"
    assert await usable.state(cid) is None
    for call in (
        usable.start(cid),
        usable.kill(cid, signal.SIGTERM),
        usable.pause(cid),
        usable.resume(cid),
        usable.delete(cid),
    ):
        with pytest.raises(NotFound):
            await call
    await usable.delete(cid, force=True)  # forced: gone is as good as deleted
