"""ConmonMonitor + RuncCLI on the real conmon and runc, with a busybox bundle.

Each test gets its own exec root (runc --root, conmon dirs, socket dir) under a temp dir
and unique container ids; teardown force-deletes every container it created and checks
that nothing is left in the runtime root.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from engine.containers.logs import read_logs
from engine.errors import Conflict, SystemError_
from engine.layout import Layout
from engine.runtime.base import MonitorHandle, MonitorLaunch, RuntimeCreateError
from engine.runtime.cli import RuncCLI
from engine.runtime.conmon import ConmonAttachConnection, ConmonMonitor
from tests.harness.busybox import BusyboxUnavailable, build_rootfs

RUNC = shutil.which("runc")
CONMON = shutil.which("conmon")

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(RUNC is None, reason="runc is not installed"),
    pytest.mark.skipif(CONMON is None, reason="conmon is not installed"),
]


# --- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        return build_rootfs(tmp_path_factory.mktemp("busybox") / "rootfs")
    except BusyboxUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def spec_template(tmp_path_factory: pytest.TempPathFactory, rootfs: Path) -> dict[str, Any]:
    """``runc spec`` with the host network (no netns to set up) and the shared rootfs."""
    d = tmp_path_factory.mktemp("spec")
    assert RUNC is not None
    subprocess.run([RUNC, "spec"], cwd=d, check=True, capture_output=True, timeout=30)
    spec: dict[str, Any] = json.loads((d / "config.json").read_text())
    spec["root"] = {"path": str(rootfs), "readonly": True}
    spec["linux"]["namespaces"] = [
        ns for ns in spec["linux"]["namespaces"] if ns["type"] != "network"
    ]
    spec["process"]["terminal"] = False
    return spec


@dataclass
class Env:
    """A private exec root, the runtime and monitor on it, and the containers made."""

    base: Path
    spec: dict[str, Any]
    layout: Layout = field(init=False)
    runtime: RuncCLI = field(init=False)
    monitor: ConmonMonitor = field(init=False)
    made: list[tuple[str, Path]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.layout = Layout(data_root=self.base / "data", exec_root=self.base / "exec")
        for path, mode in self.layout.volatile_dirs():
            path.mkdir(mode=mode, parents=True, exist_ok=True)
        assert RUNC is not None
        self.runtime = RuncCLI("runc", RUNC, self.layout.runtime_root / "runc")
        self.monitor = ConmonMonitor(self.layout)

    def bundle(self, args: list[str], *, tty: bool = False, bundle: Path | None = None) -> Path:
        cid = f"t-{secrets.token_hex(8)}"
        path = bundle or self.layout.container_dir(cid)
        path.mkdir(parents=True, exist_ok=True)
        spec = copy.deepcopy(self.spec)
        spec["process"]["args"] = args
        spec["process"]["terminal"] = tty
        (path / "config.json").write_text(json.dumps(spec))
        self.made.append((cid, path))
        return path

    def launch(self, bundle: Path, **kw: Any) -> MonitorLaunch:
        cid = next(c for c, b in self.made if b == bundle)
        return MonitorLaunch(
            container_id=cid, name=cid, bundle=bundle, log_path=bundle / "ctr.log", **kw
        )

    def teardown(self) -> list[str]:
        """Force-delete everything; returns what was still left behind."""
        assert RUNC is not None
        for cid, bundle in self.made:
            subprocess.run(
                [RUNC, "--root", str(self.runtime.root), "delete", "--force", cid],
                capture_output=True,
                timeout=30,
            )
            self.monitor.cleanup(cid, bundle)
        left = []
        if self.runtime.root.exists():
            left += [str(p) for p in self.runtime.root.iterdir()]
        left += [str(p) for p in self.layout.sock_dir.iterdir()]
        left += [str(p) for p in self.layout.conmon_root.iterdir()]
        return left


@pytest.fixture
def env(tmp_path: Path, spec_template: dict[str, Any]) -> Iterator[Env]:
    e = Env(tmp_path, spec_template)
    yield e
    assert e.teardown() == []


@dataclass
class Run:
    handle: MonitorHandle
    conn: ConmonAttachConnection


@pytest_asyncio.fixture
async def runs() -> AsyncIterator[list[Run]]:
    """Collects attach connections so they are closed even when a test fails."""
    made: list[Run] = []
    yield made
    for r in made:
        r.conn.close()


async def create_attach_start(
    env: Env, args: list[str], runs: list[Run], *, tty: bool = False, **kw: Any
) -> Run:
    bundle = await asyncio.to_thread(env.bundle, args, tty=tty)
    launch = env.launch(bundle, tty=tty, **kw)
    handle = await env.monitor.create(launch, env.runtime)
    conn = await env.monitor.attach(handle)
    run = Run(handle, conn)
    runs.append(run)
    await env.runtime.start(handle.container_id)
    return run


async def read_all(conn: ConmonAttachConnection) -> list[tuple[int, bytes]]:
    """All output until conmon closes the connection, merged per consecutive stream."""
    out: list[tuple[int, bytes]] = []
    while (item := await asyncio.wait_for(conn.recv(), 10)) is not None:
        if out and out[-1][0] == item[0]:
            out[-1] = (item[0], out[-1][1] + item[1])
        else:
            out.append(item)
    return out


def joined(out: list[tuple[int, bytes]], stream: int) -> bytes:
    return b"".join(data for s, data in out if s == stream)


async def read_until(conn: ConmonAttachConnection, marker: bytes) -> bytes:
    buf = b""
    while marker not in buf:
        item = await asyncio.wait_for(conn.recv(), 10)
        assert item is not None, f"EOF before {marker!r}; got {buf!r}"
        buf += item[1]
    return buf


# --- lifecycle -------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_output_streams_and_exit_code(env: Env, runs: list[Run]) -> None:
    t0 = time.perf_counter()
    run = await create_attach_start(
        env, ["sh", "-c", "echo out; echo err >&2; echo more; exit 3"], runs
    )
    out = await read_all(run.conn)
    code = await env.monitor.wait_exit(run.handle)
    elapsed = time.perf_counter() - t0
    assert code == 3
    assert joined(out, 1) == b"out\nmore\n"
    assert joined(out, 2) == b"err\n"
    assert run.handle.init_pid > 0 and run.handle.conmon_pid > 0
    assert await asyncio.to_thread(env.monitor.exit_code, run.handle.container_id) == 3
    await env.runtime.delete(run.handle.container_id)
    assert elapsed < 2.0, f"create → exit took {elapsed * 1000:.0f} ms"


@pytest.mark.asyncio
async def test_exit_zero(env: Env, runs: list[Run]) -> None:
    run = await create_attach_start(env, ["true"], runs)
    assert await read_all(run.conn) == []
    assert await env.monitor.wait_exit(run.handle) == 0


@pytest.mark.asyncio
async def test_sigkill_gives_137(env: Env, runs: list[Run]) -> None:
    run = await create_attach_start(env, ["sleep", "60"], runs)
    state = await env.runtime.state(run.handle.container_id)
    assert state is not None and state.status == "running"
    await env.runtime.kill(run.handle.container_id, signal.SIGKILL)
    assert await asyncio.wait_for(env.monitor.wait_exit(run.handle), 10) == 137


@pytest.mark.asyncio
async def test_stdin_through_attach_then_eof(env: Env, runs: list[Run]) -> None:
    run = await create_attach_start(env, ["sh", "-c", "cat; echo cat saw eof"], runs, stdin=True)
    big = bytes(range(256)) * 200  # 51 KiB: several packets
    await run.conn.send(b"hello\n" + big)
    await run.conn.close_stdin()
    out = await read_all(run.conn)
    assert joined(out, 1) == b"hello\n" + big + b"cat saw eof\n"
    assert await env.monitor.wait_exit(run.handle) == 0


@pytest.mark.asyncio
async def test_tty_and_resize(env: Env, runs: list[Run]) -> None:
    bundle = await asyncio.to_thread(
        env.bundle, ["sh", "-c", "stty size; read x; stty size; exit 4"], tty=True
    )
    handle = await env.monitor.create(env.launch(bundle, tty=True), env.runtime)
    conn = await env.monitor.attach(handle)
    runs.append(Run(handle, conn))
    await env.monitor.resize(handle, 40, 120)  # before start: the first size it sees
    await env.runtime.start(handle.container_id)
    first = await read_until(conn, b"40 120")
    assert b"40 120\r\n" in first
    await env.monitor.resize(handle, 50, 132)
    await conn.send(b"go\r")
    rest = await read_all(conn)
    text = b"".join(data for _, data in rest)
    assert {s for s, _ in rest} <= {1}  # a TTY merges everything into stdout
    assert b"50 132\r\n" in text
    assert await env.monitor.wait_exit(handle) == 4


@pytest.mark.asyncio
async def test_resize_after_exit_is_a_conflict(env: Env, runs: list[Run]) -> None:
    run = await create_attach_start(env, ["true"], runs, tty=True)
    await env.monitor.wait_exit(run.handle)
    with pytest.raises(Conflict):
        await env.monitor.resize(run.handle, 10, 10)


# --- create failures ----------------------------------------------------------------------------
@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("cmd", "expected"),
    [
        ("nosuchcmd", 'exec: "nosuchcmd": executable file not found in $PATH'),
        ("/bin/nosuch", "no such file or directory"),
    ],
)
async def test_missing_executable(env: Env, cmd: str, expected: str) -> None:
    bundle = await asyncio.to_thread(env.bundle, [cmd])
    launch = env.launch(bundle)
    with pytest.raises(RuntimeCreateError) as info:
        await env.monitor.create(launch, env.runtime)
    message = info.value.message
    assert message.startswith("failed to create task: OCI runtime create failed: runc create")
    assert expected in message
    assert message.endswith(": unknown")
    assert "time=" not in message and '\\"' not in message

    def leftovers() -> list[str]:
        names = [p.name for p in env.layout.sock_dir.iterdir()]
        names += [p.name for p in env.layout.conmon_root.iterdir()]
        names += [n for n in ("attach", "ctl", "winsz", "pidfile") if (bundle / n).exists()]
        return names

    assert await asyncio.to_thread(leftovers) == []
    assert await env.runtime.state(launch.container_id) is None


@pytest.mark.asyncio
async def test_runtime_flag_rejected_is_a_create_error(env: Env) -> None:
    bundle = await asyncio.to_thread(env.bundle, ["true"])
    launch = env.launch(bundle, extra_runtime_args=("--no-such-flag",))
    with pytest.raises(RuntimeCreateError) as info:
        await env.monitor.create(launch, env.runtime)
    assert "no-such-flag" in info.value.message


@pytest.mark.asyncio
async def test_conmon_argv_error_is_reported(env: Env) -> None:
    bundle = await asyncio.to_thread(env.bundle, ["true"])
    monitor = ConmonMonitor(env.layout, CONMON, log_level="bogus")
    with pytest.raises(SystemError_) as info:
        await monitor.create(env.launch(bundle), env.runtime)
    assert "No such log level bogus" in info.value.message


# --- restart of the daemon ---------------------------------------------------------------------
def _exits_within(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` is gone within ``timeout`` seconds (blocking; pidfd)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([pidfd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(pidfd)


@pytest.mark.asyncio
async def test_load_after_restart_then_exit_code(env: Env, runs: list[Run]) -> None:
    script = "echo ready; read x; echo got $x; exit 5"
    run = await create_attach_start(
        env, ["sh", "-c", script], runs, stdin=True, leave_stdin_open=True
    )
    await read_until(run.conn, b"ready")
    run.conn.close()
    cid, bundle = run.handle.container_id, run.handle.bundle

    fresh = ConmonMonitor(env.layout, CONMON)  # a restarted daemon: only what is on disk
    handle = await asyncio.to_thread(fresh.load, cid, bundle)
    assert handle == MonitorHandle(cid, run.handle.conmon_pid, run.handle.init_pid, bundle)
    assert await asyncio.to_thread(fresh.exit_code, cid) is None
    conn = await fresh.attach(handle)
    runs.append(Run(handle, conn))
    await conn.send(b"hi\n")
    out = await read_all(conn)
    assert joined(out, 1) == b"got hi\n"
    assert await fresh.wait_exit(handle) == 5
    # conmon writes the exit file a moment before it exits (conmon-notes.md): give it that
    # moment, then it must be gone for good.
    assert await asyncio.to_thread(_exits_within, handle.conmon_pid, 5.0)
    assert await asyncio.to_thread(fresh.load, cid, bundle) is None  # conmon gone
    assert await asyncio.to_thread(fresh.exit_code, cid) == 5
    # the log has everything, including what was printed while nobody was attached
    lines = [
        r.data
        async for r in read_logs(
            bundle / "ctr.log", stdout=True, stderr=True, since_nano=None, until_nano=None,
            tail=None, follow=False, is_running=lambda: False,
        )
    ]  # fmt: skip
    assert lines == [b"ready\n", b"got hi\n"]


@pytest.mark.asyncio
async def test_load_refuses_a_reused_pid(env: Env) -> None:
    bundle = await asyncio.to_thread(env.bundle, ["true"])
    cid = env.made[-1][0]

    def fake_pidfile(pid: int) -> None:
        d = env.layout.conmon_dir(cid)
        d.mkdir(parents=True, exist_ok=True)
        (d / "conmon.pid").write_text(str(pid))

    await asyncio.to_thread(fake_pidfile, os.getpid())  # alive, but not a conmon
    assert await asyncio.to_thread(env.monitor.load, cid, bundle) is None
    await asyncio.to_thread(fake_pidfile, 2**22 + 12345)  # no such process
    assert await asyncio.to_thread(env.monitor.load, cid, bundle) is None
    assert await asyncio.to_thread(env.monitor.exit_code, cid) is None


@pytest.mark.asyncio
async def test_conmon_killed_gives_255(env: Env, runs: list[Run]) -> None:
    run = await create_attach_start(env, ["sleep", "60"], runs)
    waiter = asyncio.create_task(env.monitor.wait_exit(run.handle))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    os.kill(run.handle.conmon_pid, signal.SIGKILL)
    assert await asyncio.wait_for(waiter, 10) == 255
    # and again once conmon is gone for good (the pid may be reaped or not by now)
    assert await env.monitor.wait_exit(run.handle) == 255
    await env.runtime.delete(run.handle.container_id, force=True)


@pytest.mark.asyncio
async def test_wait_exit_after_conmon_is_gone(env: Env, runs: list[Run]) -> None:
    run = await create_attach_start(env, ["sh", "-c", "exit 9"], runs)
    await read_all(run.conn)
    assert await env.monitor.wait_exit(run.handle) == 9
    fresh = ConmonMonitor(env.layout, CONMON)
    assert await fresh.wait_exit(run.handle) == 9


# --- files ---------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_cleanup_keeps_log_and_config(env: Env, runs: list[Run]) -> None:
    run = await create_attach_start(env, ["sh", "-c", "echo logged"], runs)
    await read_all(run.conn)
    await env.monitor.wait_exit(run.handle)
    cid, bundle = run.handle.container_id, run.handle.bundle
    await env.runtime.delete(cid)
    await asyncio.to_thread(env.monitor.cleanup, cid, bundle)

    def listing() -> tuple[list[str], bool, list[str]]:
        return (
            sorted(p.name for p in bundle.iterdir()),
            env.layout.conmon_dir(cid).exists(),
            [p.name for p in env.layout.sock_dir.iterdir()],
        )

    assert await asyncio.to_thread(listing) == (["config.json", "ctr.log"], False, [])


@pytest.mark.asyncio
async def test_partial_lines_in_the_log(env: Env, runs: list[Run]) -> None:
    run = await create_attach_start(
        env, ["sh", "-c", "printf part; sleep 0.2; echo ial; printf tail >&2"], runs
    )
    out = await read_all(run.conn)
    assert joined(out, 1) == b"partial\n"
    await env.monitor.wait_exit(run.handle)
    records = [
        (r.stream, r.data)
        async for r in read_logs(
            run.handle.bundle / "ctr.log", stdout=True, stderr=True, since_nano=None,
            until_nano=None, tail=None, follow=False, is_running=lambda: False,
        )
    ]  # fmt: skip
    assert records == [(1, b"partial\n"), (2, b"tail")]


@pytest.mark.asyncio
async def test_attach_with_a_bundle_path_beyond_sun_path(env: Env, runs: list[Run]) -> None:
    deep = env.base / ("d" * 60) / ("e" * 60)
    bundle = await asyncio.to_thread(env.bundle, ["echo", "deep"], bundle=deep)
    assert len(str(bundle / "attach")) > 108
    handle = await env.monitor.create(env.launch(bundle), env.runtime)
    conn = await env.monitor.attach(handle)
    runs.append(Run(handle, conn))
    await env.runtime.start(handle.container_id)
    assert joined(await read_all(conn), 1) == b"deep\n"
    assert await env.monitor.wait_exit(handle) == 0


@pytest.mark.asyncio
async def test_restart_of_the_same_container_id(env: Env, runs: list[Run]) -> None:
    """A stopped container started again reuses its id: no stale exit file may answer."""
    run = await create_attach_start(env, ["sh", "-c", "exit 1"], runs)
    assert await env.monitor.wait_exit(run.handle) == 1
    cid, bundle = run.handle.container_id, run.handle.bundle
    await env.runtime.delete(cid)
    launch = env.launch(bundle)
    handle = await env.monitor.create(launch, env.runtime)
    assert await asyncio.to_thread(env.monitor.exit_code, cid) is None
    conn = await env.monitor.attach(handle)
    runs.append(Run(handle, conn))
    await env.runtime.start(cid)
    await read_all(conn)
    assert await env.monitor.wait_exit(handle) == 1


# --- speed ---------------------------------------------------------------------------------------
@pytest.mark.asyncio
@pytest.mark.slow
async def test_attach_throughput(env: Env, runs: list[Run]) -> None:
    size = 256 * 1024 * 1024
    run = await create_attach_start(env, ["head", "-c", str(size), "/dev/zero"], runs)
    t0 = time.perf_counter()
    total = 0
    while (item := await run.conn.recv()) is not None:
        total += len(item[1])
    elapsed = time.perf_counter() - t0
    assert total == size
    assert await env.monitor.wait_exit(run.handle) == 0
    rate = total / elapsed / 2**20
    print(f"attach: {rate:.0f} MiB/s ({elapsed:.2f} s for 256 MiB)")
    # conmon writing the same bytes to its k8s-file log bounds this near 190 MiB/s here
    assert rate > 50
