"""Issue 4 item 1: ``docker exec`` through the stock docker CLI 28 and docker-py.

Written against Docker's behaviour and checked with ``pytest --against-dockerd`` (the
real dockerd 20.10). The tests share one daemon and one running container, ``ex1``
(``docker run -d --name ex1 -e A=1 busybox sh -c 'while true; do sleep 3600; done'``).
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import rawhttp
from tests.harness.cli import DockerCLI, docker_binary, run_docker
from tests.harness.daemon import BaseDaemon

pytestmark = pytest.mark.root

LOOP = "while true; do sleep 3600; done"
HEX64 = re.compile(r"^[0-9a-f]{64}$")
NOT_FOUND_TEXT = (
    'OCI runtime exec failed: exec failed: unable to start container process: exec: '
    '"nonexistentcmd": executable file not found in $PATH: unknown'
)


# -- helpers -----------------------------------------------------------------------------------

def describe(r: subprocess.CompletedProcess[Any]) -> str:
    return f"exit {r.returncode}\nstdout: {r.stdout!r}\nstderr: {r.stderr!r}"


def wait_for(pred: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


def api_json(daemon: BaseDaemon, method: str, url: str, body: Any = None,
             expect: int = 200) -> Any:
    r = rawhttp.request(daemon.socket, method, url, body, timeout=30)
    assert r.status == expect, f"{method} {url}: {r.status} {r.text}"
    return r.json() if r.body else None


def exec_create(daemon: BaseDaemon, container: str, body: dict[str, Any]) -> str:
    exec_id = api_json(daemon, "POST", f"/containers/{container}/exec", body, expect=201)["Id"]
    assert HEX64.match(exec_id), exec_id
    return str(exec_id)


def cap_eff(status: str) -> str:
    match = re.search(r"^CapEff:\s*([0-9a-f]+)$", status, re.M)
    assert match is not None, status
    return match.group(1)


# -- the container -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ex1(daemon: BaseDaemon) -> Iterator[str]:
    r = run_docker(daemon, "run", "-d", "--name", "ex1", "-e", "A=1", "busybox",
                   "sh", "-c", LOOP)
    assert r.returncode == 0, describe(r)
    yield "ex1"
    run_docker(daemon, "rm", "-f", "ex1")


# -- the CLI -------------------------------------------------------------------------------------

def test_exec_echo(docker_cli: DockerCLI, ex1: str) -> None:
    r = docker_cli("exec", ex1, "echo", "hi")
    assert (r.returncode, r.stdout, r.stderr) == (0, "hi\n", ""), describe(r)


@pytest.mark.parametrize("code", [0, 5, 255])
def test_exec_exit_code(docker_cli: DockerCLI, ex1: str, code: int) -> None:
    r = docker_cli("exec", ex1, "sh", "-c", f"exit {code}")
    assert r.returncode == code, describe(r)


def test_exec_stdout_and_stderr(docker_cli: DockerCLI, ex1: str) -> None:
    r = docker_cli("exec", ex1, "sh", "-c", "echo out; echo err >&2; echo more")
    assert (r.returncode, r.stdout, r.stderr) == (0, "out\nmore\n", "err\n"), describe(r)


def test_exec_user_workdir_env(docker_cli: DockerCLI, ex1: str) -> None:
    """The issue's ``docker exec -u nobody -w /tmp -e X=1 t1 sh -c 'id; pwd; echo $X'``."""
    r = docker_cli("exec", "-u", "nobody", "-w", "/tmp", "-e", "X=1", ex1,
                   "sh", "-c", "id; pwd; echo $X; echo $HOME")
    assert r.returncode == 0, describe(r)
    assert r.stdout == "uid=65534(nobody) gid=65534(nobody) groups=65534(nobody)\n/tmp\n1\n/home\n"


def test_exec_environment(docker_cli: DockerCLI, ex1: str) -> None:
    """The container's Env, PATH, HOSTNAME and the user's HOME; no TERM without -t."""
    cid = docker_cli.ok("inspect", "-f", "{{.Id}}", ex1).strip()
    r = docker_cli("exec", "-e", "A=2", "-e", "B=3", ex1, "sh", "-c", "pwd; env | sort")
    assert r.returncode == 0, describe(r)
    assert r.stdout.splitlines() == [
        "/", "A=2", "B=3", "HOME=/root", f"HOSTNAME={cid[:12]}",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "PWD=/", "SHLVL=1",
    ]


def test_exec_stdin_pipe(docker_cli: DockerCLI, ex1: str) -> None:
    """``echo hi | docker exec -i t1 cat``: the input arrives and its EOF ends cat."""
    r = docker_cli("exec", "-i", ex1, "cat", input="hi\n", timeout=30)
    assert (r.returncode, r.stdout) == (0, "hi\n"), describe(r)


def test_exec_stdin_large(docker_cli: DockerCLI, ex1: str) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    r = docker_cli("exec", "-i", ex1, "sh", "-c", "wc -c; echo done", input=data, timeout=60)
    assert r.returncode == 0, describe(r)
    assert r.stdout.split() == [b"1048576", b"done"]


def test_exec_nonexistent_command(docker_cli: DockerCLI, ex1: str) -> None:
    """dockerd writes the runtime's error into the stream (CRLF) and reports 126."""
    r = docker_cli("exec", ex1, "nonexistentcmd", input=b"")
    assert r.returncode == 126, describe(r)
    assert r.stdout == NOT_FOUND_TEXT.encode() + b"\r\n"


def test_exec_unknown_user(docker_cli: DockerCLI, ex1: str) -> None:
    r = docker_cli("exec", "-u", "nosuchuser", ex1, "true")
    assert r.returncode == 126, describe(r)
    assert r.stdout == "unable to find user nosuchuser: no matching entries in passwd file\n"


def test_exec_detached_nonexistent_command(docker_cli: DockerCLI, ex1: str) -> None:
    r = docker_cli("exec", "-d", ex1, "nonexistentcmd")
    assert r.returncode == 1, describe(r)
    assert r.stderr == f"Error response from daemon: {NOT_FOUND_TEXT}\n"


def test_exec_detached(docker_cli: DockerCLI, ex1: str) -> None:
    """``docker exec -d`` returns at once; the process runs on by itself."""
    marker = f"/tmp/done-{secrets.token_hex(4)}"
    t0 = time.monotonic()
    r = docker_cli("exec", "-d", ex1, "sh", "-c", f"sleep 1; touch {marker}")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), describe(r)
    assert time.monotonic() - t0 < 1.0
    assert docker_cli("exec", ex1, "test", "-e", marker).returncode == 1
    wait_for(lambda: docker_cli("exec", ex1, "test", "-e", marker).returncode == 0, 10,
             "the detached exec to finish")


def test_exec_privileged(docker_cli: DockerCLI, ex1: str, against_dockerd: bool) -> None:
    """--privileged gives every capability the daemon has (the container has Docker's 14)."""
    plain = docker_cli("exec", ex1, "grep", "Cap", "/proc/self/status")
    assert plain.returncode == 0, describe(plain)
    assert cap_eff(plain.stdout) == "00000000a80425fb"
    r = docker_cli("exec", "--privileged", ex1, "grep", "Cap", "/proc/self/status")
    if against_dockerd and r.returncode == 126 and "unable to apply caps" in r.stdout:
        pytest.xfail("dockerd asks for every capability it knows, more than this host allows")
    assert r.returncode == 0, describe(r)
    ours = cap_eff(Path("/proc/self/status").read_text())
    assert cap_eff(r.stdout) == ours
    assert re.search(r"^CapBnd:\s*" + ours + "$", r.stdout, re.M), r.stdout


def test_exec_into_created_container(docker_cli: DockerCLI) -> None:
    name = f"exc-{secrets.token_hex(4)}"
    cid = docker_cli.ok("create", "--name", name, "busybox", "true").strip()
    try:
        r = docker_cli("exec", name, "true")
        assert r.returncode == 1, describe(r)
        assert r.stderr == f"Error response from daemon: Container {cid} is not running\n"
    finally:
        docker_cli("rm", "-f", name)


def test_exec_into_stopped_container(docker_cli: DockerCLI) -> None:
    name = f"exs-{secrets.token_hex(4)}"
    r = docker_cli("run", "--name", name, "busybox", "true")
    assert r.returncode == 0, describe(r)
    try:
        cid = docker_cli.ok("inspect", "-f", "{{.Id}}", name).strip()
        r = docker_cli("exec", name, "true")
        assert r.returncode == 1, describe(r)
        assert r.stderr == f"Error response from daemon: Container {cid} is not running\n"
    finally:
        docker_cli("rm", "-f", name)


def test_exec_into_paused_container(docker_cli: DockerCLI) -> None:
    name = f"exp-{secrets.token_hex(4)}"
    docker_cli.ok("run", "-d", "--name", name, "busybox", "sleep", "600")
    try:
        paused = docker_cli("pause", name)
        if paused.returncode != 0:
            pytest.skip(f"pause is not available: {paused.stderr.strip()}")
        r = docker_cli("exec", name, "true")
        assert r.returncode == 1, describe(r)
        assert r.stderr == (
            f"Error response from daemon: Container {name} is paused, unpause the container "
            "before exec\n"
        )
        docker_cli.ok("unpause", name)
        assert docker_cli("exec", name, "true").returncode == 0
    finally:
        docker_cli("rm", "-f", name)


def test_exec_unknown_container(docker_cli: DockerCLI) -> None:
    r = docker_cli("exec", "nosuchcontainer-x", "true")
    assert r.returncode == 1, describe(r)
    assert r.stderr == "Error response from daemon: No such container: nosuchcontainer-x\n"


def test_exec_interactive_tty(daemon: BaseDaemon, ex1: str, tmp_path: Path) -> None:
    """``docker exec -it t1 /bin/sh`` in a real terminal (tmux): typed into, sized, exited."""
    tmux = shutil.which("tmux")
    if tmux is None:
        pytest.skip("tmux is not installed")
    conf = tmp_path / "tmux.conf"
    conf.write_text("set -g remain-on-exit on\nset -g history-limit 2000\n")
    server = f"wharfd-{secrets.token_hex(4)}"
    env = daemon.env
    env.pop("TMUX", None)
    env["TERM"] = "xterm"

    def tm(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([tmux, "-L", server, "-f", str(conf), *args],
                              env=env, capture_output=True, text=True, timeout=15)

    def screen() -> str:
        return tm("capture-pane", "-p", "-t", "w", "-S", "-200").stdout

    status = tmp_path / "status"
    cmd = f"{shlex.quote(docker_binary())} exec -it {ex1} /bin/sh; echo $? > {status}"
    try:
        r = tm("new-session", "-d", "-s", "w", "-x", "120", "-y", "30",
               "-e", f"DOCKER_HOST={daemon.docker_host}",
               "-e", f"DOCKER_CONFIG={daemon.docker_config}", cmd)
        assert r.returncode == 0, r.stderr
        wait_for(lambda: "/ #" in screen(), 20, "the shell prompt")
        tm("send-keys", "-t", "w", "echo hi-$((1+1)); stty size; echo $TERM", "Enter")
        wait_for(lambda: re.search(r"^hi-2\s*$", screen(), re.M) is not None, 10, "hi-2")
        wait_for(lambda: re.search(r"^30 120\s*$", screen(), re.M) is not None, 10,
                 "the terminal size 30 120")
        assert re.search(r"^xterm\s*$", screen(), re.M), screen()
        tm("send-keys", "-t", "w", "exit 3", "Enter")
        wait_for(lambda: status.exists() and status.read_text().strip() != "", 15,
                 "docker exec -it to end after exit")
        assert status.read_text().strip() == "3"
    except BaseException:
        print("---- terminal ----\n" + screen())
        raise
    finally:
        tm("kill-server")


def test_exec_events(docker_cli: DockerCLI, ex1: str) -> None:
    # No slack before: the previous test's exec_die must not fall into the window.
    since = time.time()
    r = docker_cli("exec", ex1, "sh", "-c", "exit 4")
    assert r.returncode == 4, describe(r)
    r = docker_cli("exec", ex1, "true")
    assert r.returncode == 0, describe(r)
    until = time.time() + 1
    ev = docker_cli("events", "--since", f"{since:.3f}", "--until", f"{until:.3f}",
                    "--filter", f"container={ex1}", "--format", "{{json .}}", timeout=30)
    assert ev.returncode == 0, describe(ev)
    events = [json.loads(line) for line in ev.stdout.splitlines() if line.strip()]
    actions = [e["Action"] for e in events]
    assert actions == [
        "exec_create: sh -c exit 4", "exec_start: sh -c exit 4", "exec_die",
        "exec_create: true ", "exec_start: true ", "exec_die",
    ], actions
    first, second = events[:3], events[3:]
    for group, code in ((first, "4"), (second, "0")):
        ids = {e["Actor"]["Attributes"]["execID"] for e in group}
        assert len(ids) == 1 and HEX64.match(ids.pop()), group
        for e in group:
            assert e["Type"] == "container"
            assert e["Actor"]["Attributes"]["name"] == ex1
            assert e["Actor"]["Attributes"]["image"] == "busybox"
        assert group[2]["Actor"]["Attributes"]["exitCode"] == code


# -- the API ---------------------------------------------------------------------------------------

def test_api_exec_inspect_lifecycle(daemon: BaseDaemon, ex1: str) -> None:
    """Created, detached start, running (ExitCode null, Pid set), finished; the
    container lists the exec while it has not finished."""
    cid = api_json(daemon, "GET", f"/containers/{ex1}/json")["Id"]
    exec_id = exec_create(daemon, ex1, {"Cmd": ["sh", "-c", "sleep 1; exit 4"],
                                        "AttachStdout": True})
    created = api_json(daemon, "GET", f"/exec/{exec_id}/json")
    assert created == {
        "ID": exec_id, "Running": False, "ExitCode": None,
        "ProcessConfig": {"tty": False, "entrypoint": "sh", "arguments": ["-c", "sleep 1; exit 4"],
                          "privileged": False},
        "OpenStdin": False, "OpenStderr": False, "OpenStdout": True, "CanRemove": False,
        "ContainerID": cid, "DetachKeys": "", "Pid": 0,
    }
    r = rawhttp.request(daemon.socket, "POST", f"/exec/{exec_id}/start", {"Detach": True})
    assert (r.status, r.body) == (200, b"")
    running = api_json(daemon, "GET", f"/exec/{exec_id}/json")
    assert running["Running"] is True and running["ExitCode"] is None and running["Pid"] > 0
    again = rawhttp.request(daemon.socket, "POST", f"/exec/{exec_id}/start", {"Detach": True})
    assert again.status == 409
    assert again.json() == {"message": f"Error: Exec command {exec_id} is already running"}

    def finished() -> bool:
        return bool(api_json(daemon, "GET", f"/exec/{exec_id}/json")["Running"] is False)

    wait_for(finished, 10, "the exec to finish")
    done = api_json(daemon, "GET", f"/exec/{exec_id}/json")
    assert done["ExitCode"] == 4 and done["Pid"] == running["Pid"]
    after = rawhttp.request(daemon.socket, "POST", f"/exec/{exec_id}/start", {"Detach": True})
    assert after.status == 409
    assert after.json() == {"message": f"Error: Exec command {exec_id} has already run"}


def test_api_exec_inspect_options(daemon: BaseDaemon, ex1: str) -> None:
    exec_id = exec_create(daemon, ex1, {
        "Cmd": ["true"], "User": "nobody", "Privileged": True, "Tty": True,
        "AttachStdin": True, "AttachStderr": True, "DetachKeys": "ctrl-a,x",
    })
    body = api_json(daemon, "GET", f"/exec/{exec_id}/json")
    assert body["ProcessConfig"] == {"tty": True, "entrypoint": "true", "arguments": [],
                                     "privileged": True, "user": "nobody"}
    assert (body["OpenStdin"], body["OpenStdout"], body["OpenStderr"]) == (True, False, True)
    assert body["DetachKeys"] == "AXg="  # base64 of b"\x01x", as Go marshals []byte


@pytest.mark.parametrize("body", [{"Cmd": []}, {}, {"Cmd": None}])
def test_api_exec_without_command(daemon: BaseDaemon, ex1: str, body: dict[str, Any]) -> None:
    r = rawhttp.request(daemon.socket, "POST", f"/containers/{ex1}/exec", body)
    assert r.status == 400
    assert r.json() == {"message": "No exec command specified"}


def test_api_exec_unknown(daemon: BaseDaemon) -> None:
    for method, url in (("GET", "/exec/nope/json"), ("POST", "/exec/nope/start"),
                        ("POST", "/exec/nope/resize?h=1&w=1")):
        r = rawhttp.request(daemon.socket, method, url, {} if method == "POST" else None)
        assert r.status == 404, (url, r.status)
        assert r.json() == {"message": "No such exec instance: nope"}


def test_api_exec_hijack_frames(daemon: BaseDaemon, ex1: str) -> None:
    """101 on its own, then stdcopy frames; the exit code is visible once the stream
    ends (the CLI inspects right then)."""
    exec_id = exec_create(daemon, ex1, {"Cmd": ["sh", "-c", "echo out; echo err >&2; exit 6"],
                                        "AttachStdout": True, "AttachStderr": True})
    with rawhttp.Connection(daemon.socket, timeout=30) as conn:
        conn.send_request("POST", f"/exec/{exec_id}/start", {"Detach": False, "Tty": False},
                          headers={"Connection": "Upgrade", "Upgrade": "tcp"})
        head = conn.read_head()
        assert head.status == 101
        assert head.header("Upgrade") == "tcp"
        assert head.header("Content-Type") in (
            "application/vnd.docker.multiplexed-stream", "application/vnd.docker.raw-stream")
        conn.shutdown_write()
        data = conn.recv_to_eof()
    assert rawhttp.demux(data) == (b"out\n", b"err\n")
    assert api_json(daemon, "GET", f"/exec/{exec_id}/json")["ExitCode"] == 6


def test_api_exec_resize_before_start(daemon: BaseDaemon, ex1: str) -> None:
    """The CLI resizes right after start: a size given before the process runs is kept."""
    exec_id = exec_create(daemon, ex1, {"Cmd": ["stty", "size"], "Tty": True,
                                        "AttachStdout": True})
    r = rawhttp.request(daemon.socket, "POST", f"/exec/{exec_id}/resize?h=33&w=77")
    if r.status == 500:  # dockerd refuses before start; the CLI then retries
        pytest.xfail("dockerd does not accept a resize before the exec started")
    assert r.status == 200, r.text
    with rawhttp.Connection(daemon.socket, timeout=30) as conn:
        conn.send_request("POST", f"/exec/{exec_id}/start", {"Detach": False, "Tty": True},
                          headers={"Connection": "Upgrade", "Upgrade": "tcp"})
        assert conn.read_head().status == 101
        data = conn.recv_to_eof()
    assert data == b"33 77\r\n"


# -- docker-py -------------------------------------------------------------------------------------

def test_dockerpy_exec_run(dclient: Any, ex1: str) -> None:
    container = dclient.containers.get(ex1)
    assert tuple(container.exec_run("echo hi")) == (0, b"hi\n")
    assert tuple(container.exec_run(["sh", "-c", "exit 9"])) == (9, b"")
    code, out = container.exec_run("nonexistentcmd")
    assert code == 126 and out == NOT_FOUND_TEXT.encode() + b"\r\n"


def test_dockerpy_exec_run_demux(dclient: Any, ex1: str) -> None:
    container = dclient.containers.get(ex1)
    result = container.exec_run(["sh", "-c", "echo out; echo err >&2"], demux=True)
    assert tuple(result) == (0, (b"out\n", b"err\n"))


def test_dockerpy_exec_run_stream(dclient: Any, ex1: str) -> None:
    container = dclient.containers.get(ex1)
    code, chunks = container.exec_run(["sh", "-c", "echo a; sleep 0.2; echo b"], stream=True)
    assert code is None
    assert b"".join(chunks) == b"a\nb\n"


def test_dockerpy_exec_api(dclient: Any, ex1: str) -> None:
    api = dclient.api
    exec_id = api.exec_create(ex1, ["sh", "-c", "echo x; exit 2"], workdir="/tmp",
                              environment={"K": "v"}, user="nobody")["Id"]
    assert api.exec_start(exec_id) == b"x\n"
    info = api.exec_inspect(exec_id)
    assert (info["ExitCode"], info["Running"]) == (2, False)


def test_api_exec_client_disconnect(daemon: BaseDaemon, ex1: str) -> None:
    """A client that closes the hijacked connection ends the session, not the process."""
    exec_id = exec_create(daemon, ex1, {"Cmd": ["sh", "-c", "echo up; sleep 1; exit 3"],
                                        "Tty": True, "AttachStdin": True,
                                        "AttachStdout": True})
    with rawhttp.Connection(daemon.socket, timeout=30) as conn:
        conn.send_request("POST", f"/exec/{exec_id}/start", {"Detach": False, "Tty": True},
                          headers={"Connection": "Upgrade", "Upgrade": "tcp"})
        assert conn.read_head().status == 101
        assert conn.recv_some().startswith(b"up")
    time.sleep(0.3)
    assert api_json(daemon, "GET", f"/exec/{exec_id}/json")["Running"] is True

    def finished() -> bool:
        return bool(api_json(daemon, "GET", f"/exec/{exec_id}/json")["Running"] is False)

    wait_for(finished, 10, "the exec to finish")
    assert api_json(daemon, "GET", f"/exec/{exec_id}/json")["ExitCode"] == 3
