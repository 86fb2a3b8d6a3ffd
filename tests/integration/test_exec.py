"""ExecManager on the real conmon and runc, without the daemon around it.

A container is created with ``ConmonMonitor`` from a ``runc spec`` bundle (host network,
a busybox rootfs) at the place the engine's layout gives; a small fake stands in for the
container manager. The pure parts (request parsing, the process object) are tested first
and need nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_asyncio

from engine.containers import spec
from engine.containers.exec import (
    START_FAILED_EXIT_CODE,
    ExecManager,
    console_size,
    detach_key_bytes,
    exec_process,
    parse_exec_config,
)
from engine.containers.model import ContainerConfig, ContainerState, ContainerView
from engine.containers.state import Status
from engine.containers.streams import StreamSet
from engine.errors import Conflict, InvalidParameter, NotFound
from engine.events import Event, EventBus
from engine.layout import Layout
from engine.runtime.base import MonitorLaunch
from engine.runtime.cli import RuncCLI
from engine.runtime.conmon import ConmonMonitor
from tests.harness.busybox import BusyboxUnavailable, build_rootfs

RUNC = shutil.which("runc")
CONMON = shutil.which("conmon")

F = TypeVar("F", bound=Callable[..., Any])


def runtime_test(fn: F) -> F:
    """An async test on the real runc and conmon (root only)."""
    marks = (
        pytest.mark.root,
        pytest.mark.asyncio,
        pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
        pytest.mark.skipif(RUNC is None, reason="runc is not installed"),
        pytest.mark.skipif(CONMON is None, reason="conmon is not installed"),
    )
    for mark in marks:
        fn = mark(fn)
    return fn


# --- pure parts -----------------------------------------------------------------------------
def test_parse_exec_config() -> None:
    cfg = parse_exec_config({
        "Cmd": ["sh", "-c", "x"], "Env": ["A=1"], "User": "nobody", "WorkingDir": "/tmp",
        "Tty": True, "AttachStdin": True, "Privileged": True, "DetachKeys": "ctrl-p,ctrl-q",
        "ConsoleSize": [30, 100],
    })
    assert (cfg.entrypoint, cfg.arguments, cfg.command_line) == ("sh", ["-c", "x"], "sh -c x")
    assert cfg.console_size == (30, 100) and cfg.tty and cfg.privileged
    assert parse_exec_config({"Cmd": ["true"]}).command_line == "true "  # as dockerd's events


@pytest.mark.parametrize("body, message", [
    ({}, "No exec command specified"),
    ({"Cmd": []}, "No exec command specified"),
    ({"Cmd": [1]}, "Cmd must be a list of strings"),
    ({"Cmd": ["x"], "Env": ["=x"]}, "invalid environment variable: =x"),
    ({"Cmd": ["x"], "DetachKeys": "ctrl-p,bogus"}, "Invalid escape keys (ctrl-p,bogus) provided"),
    ({"Cmd": ["x"], "Tty": "yes"}, "Tty must be a boolean"),
    ({"Cmd": ["x"], "ConsoleSize": [1]}, "ConsoleSize must be [height, width]"),
])
def test_parse_exec_config_errors(body: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidParameter) as err:
        parse_exec_config(body)
    assert err.value.message == message


def test_detach_keys_and_console_size() -> None:
    assert detach_key_bytes("ctrl-p,ctrl-q") == b"\x10\x11"
    assert detach_key_bytes("ctrl-@,a,ctrl-_") == b"\x00a\x1f"
    assert detach_key_bytes("") == b""
    assert console_size([0, 0]) is None and console_size(None) is None
    assert console_size([24, 80]) == (24, 80)


BASE_PROCESS: dict[str, Any] = {
    "terminal": False, "user": {"uid": 0, "gid": 0, "additionalGids": [0]},
    "args": ["sh"], "env": ["PATH=/bin", "HOME=/root"], "cwd": "/srv",
    "capabilities": {k: ["CAP_CHOWN"] for k in ("bounding", "effective", "permitted")},
    "noNewPrivileges": True, "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 10, "soft": 10}],
    "oomScoreAdj": 5, "apparmorProfile": "p",
}


def test_exec_process_keeps_the_containers_security() -> None:
    cfg = parse_exec_config({"Cmd": ["id"], "Env": ["A=2", "B=1"]})
    user = spec.ProcessUser(uid=65534, gid=65534, additional_gids=(65534,), home="/home")
    process = exec_process(BASE_PROCESS, cfg, hostname="h", container_env=["A=1", "C=3"],
                           user=user, all_capabilities=["CAP_X"], size=(10, 20))
    assert process["args"] == ["id"]
    assert process["env"] == [
        f"PATH={spec.DEFAULT_PATH_ENV}", "HOSTNAME=h", "A=2", "C=3", "B=1", "HOME=/home"
    ]
    assert process["cwd"] == "/srv"  # the container's
    assert process["user"] == {"uid": 65534, "gid": 65534, "additionalGids": [65534]}
    for key in ("capabilities", "noNewPrivileges", "rlimits", "oomScoreAdj", "apparmorProfile"):
        assert process[key] == BASE_PROCESS[key]
    assert "consoleSize" not in process and process["terminal"] is False
    assert BASE_PROCESS["args"] == ["sh"]  # not modified


def test_exec_process_privileged_tty_workdir() -> None:
    cfg = parse_exec_config({"Cmd": ["sh"], "Privileged": True, "Tty": True,
                             "WorkingDir": "/tmp/../var/"})
    process = exec_process(BASE_PROCESS, cfg, hostname="h", container_env=[],
                           user=spec.ProcessUser(home="/root"), all_capabilities=["CAP_X"],
                           size=(10, 20))
    assert process["capabilities"] == {k: ["CAP_X"] for k in ("bounding", "effective",
                                                              "permitted")}
    assert "apparmorProfile" not in process
    assert process["terminal"] is True and process["consoleSize"] == {"height": 10, "width": 20}
    assert "TERM=xterm" in process["env"]
    assert process["cwd"] == "/var"


# --- a container to exec into -----------------------------------------------------------------
@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        return build_rootfs(tmp_path_factory.mktemp("busybox") / "rootfs")
    except BusyboxUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def spec_template(tmp_path_factory: pytest.TempPathFactory, rootfs: Path) -> dict[str, Any]:
    """``runc spec`` with the host network (no netns to set up) and the shared rootfs."""
    if RUNC is None:
        pytest.skip("runc is not installed")
    d = tmp_path_factory.mktemp("spec")
    subprocess.run([RUNC, "spec"], cwd=d, check=True, capture_output=True, timeout=30)
    template: dict[str, Any] = json.loads((d / "config.json").read_text())
    template["root"] = {"path": str(rootfs), "readonly": True}
    template["linux"]["namespaces"] = [
        ns for ns in template["linux"]["namespaces"] if ns["type"] != "network"
    ]
    template["process"]["terminal"] = False
    return template


class FakeContainers:
    def __init__(self) -> None:
        self.views: dict[str, ContainerView] = {}

    def get(self, ref: str) -> ContainerView:
        if ref in self.views:
            return self.views[ref]
        for view in self.views.values():
            if view.name == ref:
                return view
        raise NotFound(f"No such container: {ref}")

    def runtime_name(self, view: ContainerView) -> str:
        return "runc"

    def set_status(self, cid: str, status: Status, started_at: str | None = None) -> None:
        view = self.views[cid]
        state = view.state.evolve(status=status, started_at=started_at or view.state.started_at)
        self.views[cid] = replace(view, state=state)


@dataclass
class Env:
    base: Path
    rootfs: Path
    template: dict[str, Any]
    layout: Layout = field(init=False)
    runtime: RuncCLI = field(init=False)
    monitor: ConmonMonitor = field(init=False)
    events: EventBus = field(default_factory=EventBus)
    containers: FakeContainers = field(default_factory=FakeContainers)
    execs: ExecManager = field(init=False)

    def __post_init__(self) -> None:
        self.layout = Layout(data_root=self.base / "data", exec_root=self.base / "exec")
        for path, mode in self.layout.volatile_dirs():
            path.mkdir(mode=mode, parents=True, exist_ok=True)
        assert RUNC is not None
        self.runtime = RuncCLI("runc", RUNC, self.layout.runtime_root / "runc")
        self.monitor = ConmonMonitor(self.layout)
        self.execs = ExecManager(
            self.containers, self.monitor, self.layout, self.events, {"runc": self.runtime}
        )

    def write_bundle(self, cid: str) -> Path:
        bundle = self.layout.container_dir(cid)
        bundle.mkdir(parents=True)
        (bundle / "rootfs").symlink_to(self.rootfs)  # where the engine looks users up
        process_spec = copy.deepcopy(self.template)
        process_spec["process"]["args"] = ["sleep", "600"]
        process_spec["hostname"] = cid[:12]
        (bundle / "config.json").write_text(json.dumps(process_spec))
        return bundle

    async def run_container(self) -> ContainerView:
        cid = secrets.token_hex(32)
        bundle = await asyncio.to_thread(self.write_bundle, cid)
        launch = MonitorLaunch(container_id=cid, name=f"c-{cid[:6]}", bundle=bundle,
                               log_path=bundle / "ctr.log")
        handle = await self.monitor.create(launch, self.runtime)
        await self.runtime.start(cid)
        record = ContainerConfig(
            id=cid, name=launch.name, image_ref="busybox", image_id="sha256:" + "0" * 64,
            created="2026-01-01T00:00:00Z",
            config={"Env": ["PATH=/usr/bin:/bin", "A=1"], "Hostname": cid[:12],
                    "Labels": {"l": "v"}},
            host_config={}, networking={}, path="sleep", args=("600",),
        )
        state = ContainerState(status=Status.RUNNING, pid=handle.init_pid,
                               started_at="2026-01-01T00:00:01Z")
        view = ContainerView(record, state)
        self.containers.views[cid] = view
        return view

    def teardown(self) -> list[str]:
        assert RUNC is not None
        for cid in self.containers.views:
            subprocess.run([RUNC, "--root", str(self.runtime.root), "delete", "--force", cid],
                           capture_output=True, timeout=30)
            self.monitor.cleanup(cid, self.layout.container_dir(cid))
        left = [str(p) for p in self.runtime.root.iterdir()] if self.runtime.root.exists() else []
        left += [str(p) for p in self.layout.sock_dir.iterdir()]
        left += [str(p) for p in self.layout.conmon_root.iterdir()]
        return left


@pytest_asyncio.fixture
async def env(tmp_path: Path, rootfs: Path, spec_template: dict[str, Any]) -> AsyncIterator[Env]:
    e = await asyncio.to_thread(Env, tmp_path, rootfs, spec_template)
    try:
        yield e
    finally:
        await e.execs.close()
        assert await asyncio.to_thread(e.teardown) == []


@dataclass
class Client:
    """A StreamSet's other end: records output, feeds stdin, can go away."""

    output: list[tuple[int, bytes]] = field(default_factory=list)
    stdin: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    got_output: asyncio.Event = field(default_factory=asyncio.Event)

    def streams(self) -> StreamSet:
        async def write_output(stream: int, data: bytes) -> None:
            if self.gone.is_set():
                raise ConnectionResetError("client gone")
            self.output.append((stream, data))
            self.got_output.set()

        async def wait_closed() -> None:
            await self.gone.wait()

        return StreamSet(write_output=write_output, read_stdin=self.stdin.get,
                         wait_closed=wait_closed)

    async def wait_for(self, text: bytes) -> None:
        async with asyncio.timeout(10):
            while text not in self.joined(1):
                self.got_output.clear()
                await self.got_output.wait()

    def joined(self, stream: int) -> bytes:
        return b"".join(data for s, data in self.output if s == stream)


def exec_events(bus_events: list[Event]) -> list[str]:
    return [e.action for e in bus_events if e.action.startswith("exec_")]


@contextlib.asynccontextmanager
async def recording(bus: EventBus) -> AsyncIterator[list[Event]]:
    seen: list[Event] = []

    async def follow() -> None:
        async for event in bus.subscribe():
            seen.append(event)

    task = asyncio.create_task(follow())
    await asyncio.sleep(0)
    try:
        yield seen
    finally:
        await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def session_dirs(env: Env, cid: str) -> list[str]:
    root = env.layout.conmon_dir(cid) / "exec"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


async def wait_finished(env: Env, exec_id: str) -> dict[str, Any]:
    """The exec's inspect once it has an exit code (the record's own event, no polling)."""
    record = env.execs.get(exec_id)
    await asyncio.wait_for(record.done.wait(), 10)
    return env.execs.inspect(exec_id)


# --- the tests ---------------------------------------------------------------------------------
@runtime_test
async def test_attached_output_exit_code_and_events(env: Env) -> None:
    view = await env.run_container()
    client = Client()
    async with recording(env.events) as seen:
        exec_id = env.execs.create(view.name, {
            "Cmd": ["sh", "-c", "echo out; echo err >&2; echo $A $HOSTNAME; exit 3"],
            "AttachStdout": True, "AttachStderr": True,
        })
        assert env.execs.exec_ids(view.id) == [exec_id]
        await asyncio.wait_for(env.execs.start(exec_id, client.streams()), 10)
        # Recorded before start returned: the API closes the stream only after this.
        info = env.execs.inspect(exec_id)
        assert (info["Running"], info["ExitCode"]) == (False, 3)
    assert client.joined(1) == b"out\n" + f"1 {view.id[:12]}\n".encode()
    assert client.joined(2) == b"err\n"
    assert info["Pid"] > 0 and info["ContainerID"] == view.id
    assert exec_events(seen) == [
        "exec_create: sh -c echo out; echo err >&2; echo $A $HOSTNAME; exit 3",
        "exec_start: sh -c echo out; echo err >&2; echo $A $HOSTNAME; exit 3",
        "exec_die",
    ]
    die = next(e for e in seen if e.action == "exec_die")
    assert dict(die.attributes) == {"l": "v", "image": "busybox", "name": view.name,
                                    "execID": exec_id, "exitCode": "3"}
    assert env.execs.exec_ids(view.id) == []
    assert await asyncio.to_thread(session_dirs, env, view.id) == []
    with pytest.raises(Conflict, match="has already run"):
        await env.execs.start(exec_id, client.streams())


@runtime_test
async def test_stdin_then_eof(env: Env) -> None:
    view = await env.run_container()
    client = Client()
    exec_id = env.execs.create(view.id, {"Cmd": ["sh", "-c", "cat; echo eof"],
                                         "AttachStdin": True, "AttachStdout": True})
    big = bytes(range(256)) * 400  # 100 KiB: many conmon packets
    for chunk in (b"one\n", big, b""):
        client.stdin.put_nowait(chunk)
    await asyncio.wait_for(env.execs.start(exec_id, client.streams()), 10)
    assert client.joined(1) == b"one\n" + big + b"eof\n"
    assert env.execs.inspect(exec_id)["ExitCode"] == 0


@runtime_test
async def test_start_failure_goes_to_the_client(env: Env) -> None:
    view = await env.run_container()
    client = Client()
    async with recording(env.events) as seen:
        exec_id = env.execs.create(view.id, {"Cmd": ["nonexistentcmd"], "AttachStdout": True})
        await asyncio.wait_for(env.execs.start(exec_id, client.streams()), 10)
    assert client.output == [(1, (
        b'OCI runtime exec failed: exec failed: unable to start container process: exec: '
        b'"nonexistentcmd": executable file not found in $PATH: unknown\r\n'))]
    info = env.execs.inspect(exec_id)
    assert (info["Running"], info["ExitCode"], info["Pid"]) == (False, START_FAILED_EXIT_CODE, 0)
    assert exec_events(seen) == ["exec_create: nonexistentcmd ", "exec_start: nonexistentcmd "]
    assert await asyncio.to_thread(session_dirs, env, view.id) == []

    detached = env.execs.create(view.id, {"Cmd": ["/nope"]})
    with pytest.raises(InvalidParameter, match=r'^OCI runtime exec failed: .*"/nope".*: unknown$'):
        await env.execs.start(detached, None, detach=True)
    assert env.execs.inspect(detached)["ExitCode"] == START_FAILED_EXIT_CODE


@runtime_test
async def test_detached_exit_is_recorded(env: Env) -> None:
    view = await env.run_container()
    async with recording(env.events) as seen:
        exec_id = env.execs.create(view.id, {"Cmd": ["sh", "-c", "sleep 0.3; exit 7"]})
        await asyncio.wait_for(env.execs.start(exec_id, None, detach=True), 10)
        running = env.execs.inspect(exec_id)
        assert running["Running"] is True and running["ExitCode"] is None
        cmdline = await asyncio.to_thread(Path(f"/proc/{running['Pid']}/cmdline").read_bytes)
        assert cmdline.split(b"\0")[0] == b"sh"  # a host pid
        assert env.execs.exec_ids(view.id) == [exec_id]
        done = await wait_finished(env, exec_id)
    assert done["ExitCode"] == 7 and done["Pid"] == running["Pid"]
    assert exec_events(seen)[-1] == "exec_die"
    assert await asyncio.to_thread(session_dirs, env, view.id) == []


@runtime_test
async def test_client_gone_leaves_the_process(env: Env) -> None:
    """As dockerd: a client that goes away ends the session, not the process (checked
    with a closed hijacked connection); its exit is still recorded."""
    view = await env.run_container()
    client = Client()
    exec_id = env.execs.create(view.id, {"Cmd": ["sh", "-c", "echo started; sleep 0.5; exit 4"],
                                         "AttachStdout": True})
    start = asyncio.create_task(env.execs.start(exec_id, client.streams()))
    await asyncio.wait_for(client.got_output.wait(), 10)
    client.gone.set()
    await asyncio.wait_for(start, 10)
    assert env.execs.inspect(exec_id)["Running"] is True
    assert (await wait_finished(env, exec_id))["ExitCode"] == 4


@runtime_test
async def test_tty_size_before_start_and_resize(env: Env) -> None:
    view = await env.run_container()
    client = Client()
    script = 'stty size; while read x; do [ "$x" = q ] && exit 0; stty size; done'
    exec_id = env.execs.create(view.id, {"Cmd": ["sh", "-c", script], "Tty": True,
                                         "AttachStdin": True, "AttachStdout": True})
    await env.execs.resize(exec_id, 25, 90)  # before the process exists: kept
    start = asyncio.create_task(env.execs.start(exec_id, client.streams()))
    await client.wait_for(b"25 90")
    await env.execs.resize(exec_id, 40, 132)
    # conmon reads the ctl FIFO and the attach socket in no fixed order: ask until the
    # new size shows.
    async with asyncio.timeout(10):
        while b"40 132" not in client.joined(1):
            client.got_output.clear()
            client.stdin.put_nowait(b"size\r")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    await client.got_output.wait()
    client.stdin.put_nowait(b"q\r")
    await asyncio.wait_for(start, 10)
    assert env.execs.inspect(exec_id)["ExitCode"] == 0
    assert {s for s, _ in client.output} == {1}


@runtime_test
async def test_user_and_privileged(env: Env) -> None:
    view = await env.run_container()
    client = Client()
    exec_id = env.execs.create(view.id, {
        "Cmd": ["sh", "-c", "id; grep CapEff /proc/self/status"], "User": "nobody",
        "Privileged": True, "AttachStdout": True,
    })
    await asyncio.wait_for(env.execs.start(exec_id, client.streams()), 10)
    out = client.joined(1).decode()
    assert out.startswith("uid=65534(nobody) gid=65534(nobody)")
    # A non-root user keeps no effective capabilities, privileged or not (no ambient set).
    assert "CapEff:\t0000000000000000" in out

    missing = env.execs.create(view.id, {"Cmd": ["true"], "User": "nosuchuser",
                                         "AttachStdout": True})
    client = Client()
    await asyncio.wait_for(env.execs.start(missing, client.streams()), 10)
    assert client.output == [
        (1, b"unable to find user nosuchuser: no matching entries in passwd file\r\n")]
    assert env.execs.inspect(missing)["ExitCode"] == START_FAILED_EXIT_CODE


@runtime_test
async def test_close_ends_sessions_and_leaves_processes(env: Env) -> None:
    view = await env.run_container()
    client = Client()
    exec_id = env.execs.create(view.id, {"Cmd": ["sh", "-c", "echo up; exec sleep 600"],
                                         "AttachStdout": True})
    start = asyncio.create_task(env.execs.start(exec_id, client.streams()))
    await asyncio.wait_for(client.got_output.wait(), 10)
    pid = env.execs.inspect(exec_id)["Pid"]
    await asyncio.wait_for(env.execs.close(), 5)
    await asyncio.wait_for(start, 5)
    # live-restore: the process runs on (the container's teardown ends it)
    assert await asyncio.to_thread(os.path.exists, f"/proc/{pid}")
    with pytest.raises(Conflict):
        await env.execs.start(env.execs.create(view.id, {"Cmd": ["true"]}), None, detach=True)


@runtime_test
async def test_container_state_rules(env: Env) -> None:
    view = await env.run_container()
    cid = view.id
    finished = env.execs.create(cid, {"Cmd": ["true"]})
    await env.execs.start(finished, None, detach=True)
    await wait_finished(env, finished)
    pending = env.execs.create(cid, {"Cmd": ["true"]})

    env.containers.set_status(cid, Status.PAUSED)
    with pytest.raises(Conflict) as err:
        env.execs.create(view.name, {"Cmd": ["true"]})
    assert err.value.message == (
        f"Container {view.name} is paused, unpause the container before exec")
    with pytest.raises(Conflict):
        env.execs.check_start(pending)

    env.containers.set_status(cid, Status.EXITED)
    with pytest.raises(Conflict) as err:
        env.execs.create(cid, {"Cmd": ["true"]})
    assert err.value.message == f"Container {cid} is not running"
    # As dockerd: an exec never started is gone with the run; a finished one stays.
    with pytest.raises(NotFound, match=f"No such exec instance: {pending}"):
        env.execs.inspect(pending)
    assert env.execs.inspect(finished)["ExitCode"] == 0

    env.containers.set_status(cid, Status.RUNNING, started_at="2026-01-01T00:00:09Z")
    assert env.execs.exec_ids(cid) == []
    del env.containers.views[cid]  # removed
    with pytest.raises(NotFound):
        env.execs.inspect(finished)
    env.containers.views[cid] = view  # for the teardown
