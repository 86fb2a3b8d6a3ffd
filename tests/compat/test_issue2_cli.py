"""Issue 2 acceptance: the basic container lifecycle through the stock docker CLI 28.

Written against Docker's behaviour (checked with ``pytest --against-dockerd``, which runs
the same tests against the real dockerd 20.10). The tests of this module share one
daemon and run in file order: ``test1`` is created once and then inspected, stopped,
started, killed and removed, as in the issue's script; the image is removed last.
"""

from __future__ import annotations

import json
import queue
import re
import secrets
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.harness.cli import DockerCLI, docker_binary, legacy_docker_binary, run_docker
from tests.harness.daemon import BaseDaemon

pytestmark = pytest.mark.root

LOOP = "while true; do sleep 3600; done"
HEX64 = re.compile(r"^[0-9a-f]{64}$")
HEX12 = re.compile(r"^[0-9a-f]{12}$")


# -- helpers -----------------------------------------------------------------------------------

def all_ids(cli: DockerCLI) -> set[str]:
    return set(cli.ok("ps", "-a", "-q", "--no-trunc").split())


def inspect(cli: DockerCLI, name: str) -> dict[str, Any]:
    data = json.loads(cli.ok("inspect", name))
    assert isinstance(data, list) and len(data) == 1, data
    obj = data[0]
    assert isinstance(obj, dict)
    return obj


def wait_for(pred: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


def describe(r: subprocess.CompletedProcess[Any]) -> str:
    return f"exit {r.returncode}\nstdout: {r.stdout!r}\nstderr: {r.stderr!r}"


# -- module state: the containers of the script ------------------------------------------

@pytest.fixture(scope="module")
def test1(daemon: BaseDaemon) -> str:
    """``docker run -d --name test1 busybox /bin/sh -c "while true; do sleep 3600; done"``"""
    r = run_docker(daemon, "run", "-d", "--name", "test1", "busybox", "/bin/sh", "-c", LOOP)
    assert r.returncode == 0, describe(r)
    return str(r.stdout.strip())


@pytest.fixture(scope="module")
def exited1(daemon: BaseDaemon) -> str:
    """A container that ran to completion and was not removed."""
    r = run_docker(daemon, "run", "--name", "exited1", "busybox", "true")
    assert r.returncode == 0, describe(r)
    cid = DockerCLI(daemon).ok("inspect", "-f", "{{.Id}}", "exited1").strip()
    return cid


# -- the scenario ----------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["version", "info"])
def test_version_and_info(docker_cli: DockerCLI, command: str) -> None:
    r = docker_cli(command)
    assert r.returncode == 0, describe(r)
    assert "Server:" in r.stdout
    for bad in ("ERROR", "errors pretty printing"):
        assert bad not in r.stdout + r.stderr, describe(r)


def test_import_rootfs_tar(fresh_daemon: BaseDaemon, busybox_tar: Path) -> None:
    """``tar -C rootfs -c . | docker import -c 'CMD ["sh"]' - busybox:latest``"""
    r = run_docker(
        fresh_daemon, "import", "-c", 'CMD ["sh"]', "-", "busybox:latest",
        input=busybox_tar.read_bytes(), timeout=120,
    )
    assert r.returncode == 0, describe(r)
    image_id = r.stdout.decode().strip()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", image_id), image_id
    cli = DockerCLI(fresh_daemon)
    img = json.loads(cli.ok("image", "inspect", "busybox:latest"))[0]
    assert img["Id"] == image_id
    assert "busybox:latest" in img["RepoTags"]
    assert img["Config"]["Cmd"] == ["sh"]
    assert img["Os"] == "linux"
    # the imported root filesystem is usable
    r2 = cli("run", "--rm", "busybox", "sh", "-c", "echo imported; ls /bin/busybox")
    assert r2.returncode == 0, describe(r2)
    assert r2.stdout == "imported\n/bin/busybox\n"


def test_run_rm_echo_hello(docker_cli: DockerCLI) -> None:
    before = all_ids(docker_cli)
    r = docker_cli("run", "--rm", "busybox", "echo", "hello")
    assert r.returncode == 0, describe(r)
    assert r.stdout == "hello\n"
    assert all_ids(docker_cli) == before, "the --rm container is still listed by ps -a"


def test_run_rm_exit_code(docker_cli: DockerCLI) -> None:
    before = all_ids(docker_cli)
    r = docker_cli("run", "--rm", "busybox", "sh", "-c", "exit 3")
    assert r.returncode == 3, describe(r)
    assert all_ids(docker_cli) == before


def test_run_rm_command_not_found(docker_cli: DockerCLI) -> None:
    before = all_ids(docker_cli)
    t0 = time.monotonic()
    try:
        r = docker_cli("run", "--rm", "busybox", "nosuchcmd", timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("docker run --rm busybox nosuchcmd did not return within 10 s")
    assert time.monotonic() - t0 < 10
    assert r.returncode == 127, describe(r)
    assert "nosuchcmd" in r.stderr, describe(r)
    assert re.search(r"not found|no such file", r.stderr, re.I), describe(r)
    assert r.stdout == ""
    assert all_ids(docker_cli) == before, "the failed --rm container was left behind"


def test_run_detached(docker_cli: DockerCLI, test1: str) -> None:
    assert HEX64.match(test1), test1
    listed = docker_cli.ok("ps", "--no-trunc", "--format", "{{.ID}} {{.Names}} {{.Status}}")
    line = next((ln for ln in listed.splitlines() if ln.startswith(test1)), None)
    assert line is not None, listed
    assert line.split()[1] == "test1" and line.split()[2] == "Up", line
    st = inspect(docker_cli, "test1")["State"]
    assert st["Running"] is True and st["Status"] == "running"
    assert st["Pid"] > 0


def test_run_interactive_tty(daemon: BaseDaemon, docker_cli: DockerCLI, tmp_path: Path) -> None:
    """``docker run -it busybox sh`` in a real terminal (tmux), typed into and exited."""
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
        return subprocess.run(
            [tmux, "-L", server, "-f", str(conf), *args],
            env=env, capture_output=True, text=True, timeout=15,
        )

    def screen() -> str:
        return tm("capture-pane", "-p", "-t", "w", "-S", "-200").stdout

    before = all_ids(docker_cli)
    cmd = f"{shlex.quote(docker_binary())} run -it busybox sh"
    try:
        r = tm("new-session", "-d", "-s", "w", "-x", "120", "-y", "30",
               "-e", f"DOCKER_HOST={daemon.docker_host}",
               "-e", f"DOCKER_CONFIG={daemon.docker_config}", cmd)
        assert r.returncode == 0, r.stderr
        wait_for(lambda: "/ #" in screen(), 20, "the shell prompt")
        tm("send-keys", "-t", "w", "echo hi-$((1+1))", "Enter")
        wait_for(lambda: re.search(r"^hi-2\s*$", screen(), re.M) is not None, 10,
                 "the output hi-2")
        tm("send-keys", "-t", "w", "exit", "Enter")
        wait_for(lambda: tm("display-message", "-p", "-t", "w", "#{pane_dead}").stdout.strip()
                 == "1", 15, "docker run -it to end after exit")
    except BaseException:
        print("---- terminal ----\n" + screen())
        raise
    finally:
        tm("kill-server")
    new = all_ids(docker_cli) - before
    assert len(new) == 1, new
    c = inspect(docker_cli, new.pop())
    assert c["Config"]["Tty"] is True and c["Config"]["OpenStdin"] is True
    assert c["State"]["Status"] == "exited" and c["State"]["ExitCode"] == 0


def test_run_interactive_pipe(docker_cli: DockerCLI) -> None:
    """``echo hi | docker run -i --rm busybox cat``"""
    before = all_ids(docker_cli)
    r = docker_cli("run", "-i", "--rm", "busybox", "cat", input="hi\n", timeout=30)
    assert r.returncode == 0, describe(r)
    assert r.stdout == "hi\n"
    assert all_ids(docker_cli) == before


def test_container_ls(docker_cli: DockerCLI, test1: str, exited1: str) -> None:
    running = docker_cli.ok("container", "ls")
    assert running.splitlines()[0].startswith("CONTAINER ID")
    assert "test1" in running and "exited1" not in running
    everything = docker_cli.ok("container", "ls", "-a")
    assert "test1" in everything and "exited1" in everything
    exited = docker_cli.ok("ps", "-f", "status=exited", "-q").split()
    assert all(HEX12.match(x) for x in exited), exited
    assert exited1[:12] in exited
    assert test1[:12] not in exited


def test_inspect(docker_cli: DockerCLI, test1: str) -> None:
    c = inspect(docker_cli, "test1")
    assert c["Id"] == test1
    assert c["Name"] == "/test1"
    assert c["Config"]["Image"] == "busybox"
    assert c["Config"]["Cmd"] == ["/bin/sh", "-c", LOOP]
    assert c["State"]["Running"] is True
    for key in ("HostConfig", "NetworkSettings", "Mounts", "Created", "Image"):
        assert c.get(key) is not None, key
    assert c["Image"].startswith("sha256:")


def test_logs(docker_cli: DockerCLI, test1: str) -> None:
    r = docker_cli("logs", "test1")
    assert r.returncode == 0, describe(r)
    assert r.stdout == "" and r.stderr == ""


def test_logs_follow_tail(docker_cli: DockerCLI) -> None:
    """``docker logs -f --tail 5`` of a container printing a counter: the tail comes first,
    new lines follow, and the command returns when the container is killed."""
    docker_cli.ok(
        "run", "-d", "--name", "counter", "busybox", "sh", "-c",
        "i=0; while true; do echo $i; i=$((i+1)); usleep 50000; done",
    )
    wait_for(lambda: len(docker_cli.ok("logs", "counter").splitlines()) >= 20, 30,
             "20 lines of output")
    printed = len(docker_cli.ok("logs", "counter").splitlines())
    proc = docker_cli.popen("logs", "-f", "--tail", "5", "counter", text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def reader() -> None:
        assert proc.stdout is not None
        for ln in proc.stdout:
            lines.put(ln)
        lines.put(None)

    threading.Thread(target=reader, daemon=True).start()
    got: list[int] = []
    try:
        deadline = time.monotonic() + 20
        while len(got) < 10:
            item = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert item is not None, f"logs -f ended early after {got}"
            got.append(int(item))
        assert got[0] >= printed - 5, (printed, got)
        assert got == list(range(got[0], got[0] + len(got))), got
        docker_cli.ok("kill", "counter")
        try:
            rc = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail("docker logs -f did not return after the container was killed")
        assert rc == 0, proc.stderr.read() if proc.stderr else rc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_stop(docker_cli: DockerCLI, test1: str) -> None:
    # sh as PID 1 ignores SIGTERM: docker stop waits its 10 s, then SIGKILLs
    r = docker_cli("stop", "test1", timeout=40)
    assert r.returncode == 0, describe(r)
    assert r.stdout.strip() == "test1"
    st = inspect(docker_cli, "test1")["State"]
    assert st["Running"] is False and st["Status"] == "exited"
    assert st["ExitCode"] == 137


def test_start(docker_cli: DockerCLI, test1: str) -> None:
    r = docker_cli("start", "test1")
    assert r.returncode == 0, describe(r)
    assert r.stdout.strip() == "test1"
    st = inspect(docker_cli, "test1")["State"]
    assert st["Running"] is True and st["Status"] == "running"


def test_kill(docker_cli: DockerCLI, test1: str) -> None:
    if not inspect(docker_cli, "test1")["State"]["Running"]:
        docker_cli.ok("start", "test1")
    r = docker_cli("kill", "test1")
    assert r.returncode == 0, describe(r)
    assert r.stdout.strip() == "test1"
    st = inspect(docker_cli, "test1")["State"]
    assert st["Running"] is False and st["Status"] == "exited"
    assert st["ExitCode"] == 137


def test_rm_force(docker_cli: DockerCLI, test1: str) -> None:
    r = docker_cli("rm", "-f", "test1")
    assert r.returncode == 0, describe(r)
    assert r.stdout.strip() == "test1"
    gone = docker_cli("inspect", "test1")
    assert gone.returncode == 1
    assert "No such object: test1" in gone.stderr, describe(gone)
    assert test1 not in all_ids(docker_cli)


def test_rm_force_running(docker_cli: DockerCLI) -> None:
    cid = docker_cli.ok("run", "-d", "busybox", "sh", "-c", LOOP).strip()
    r = docker_cli("rm", "-f", cid)
    assert r.returncode == 0, describe(r)
    assert r.stdout.strip() == cid
    assert cid not in all_ids(docker_cli)


def test_rm_exited(docker_cli: DockerCLI, exited1: str) -> None:
    """``docker rm $(docker container ls -f "status=exited" -q)``"""
    ids = docker_cli.ok("container", "ls", "-f", "status=exited", "-q").split()
    assert exited1[:12] in ids
    r = docker_cli("rm", *ids)
    assert r.returncode == 0, describe(r)
    assert r.stdout.split() == ids
    assert docker_cli.ok("container", "ls", "-a", "-f", "status=exited", "-q").strip() == ""


def test_events_for_run_rm(docker_cli: DockerCLI) -> None:
    """``docker events --since/--until --filter type=container`` after ``run --rm``:
    create, start, die (with exitCode), destroy, each carrying the container's labels."""
    name = f"evt-{secrets.token_hex(4)}"
    since = time.time() - 1
    r = docker_cli("run", "--rm", "--label", "a=b", "--name", name, "busybox",
                   "sh", "-c", "exit 3")
    assert r.returncode == 3, describe(r)
    until = time.time() + 1
    ev = docker_cli("events", "--since", f"{since:.3f}", "--until", f"{until:.3f}",
                    "--filter", "type=container", "--format", "{{json .}}", timeout=30)
    assert ev.returncode == 0, describe(ev)
    events = [json.loads(ln) for ln in ev.stdout.splitlines() if ln.strip()]
    mine = [e for e in events if e["Actor"]["Attributes"].get("name") == name]
    actions = [e["Action"] for e in mine]
    it = iter(actions)
    assert all(a in it for a in ("create", "start", "die", "destroy")), actions
    for e in mine:
        assert e["Type"] == "container"
        attrs = e["Actor"]["Attributes"]
        assert attrs.get("a") == "b", e
        assert attrs.get("image") == "busybox", e
        assert HEX64.match(e["Actor"]["ID"]), e
        assert isinstance(e["time"], int) and isinstance(e["timeNano"], int), e
    die = next(e for e in mine if e["Action"] == "die")
    assert die["Actor"]["Attributes"].get("exitCode") == "3", die
    assert len({e["Actor"]["ID"] for e in mine}) == 1


def test_legacy_client_run(daemon: BaseDaemon) -> None:
    """The 20.10 client (Debian's docker.io) negotiates down and works too."""
    legacy = legacy_docker_binary()
    if legacy is None:
        pytest.skip("no 20.10 client at /usr/bin/docker")
    r = run_docker(daemon, "run", "--rm", "busybox", "echo", "hello", binary=legacy)
    assert r.returncode == 0, describe(r)
    assert r.stdout == "hello\n"


def test_image_ls(docker_cli: DockerCLI) -> None:
    out = docker_cli.ok("image", "ls")
    assert out.splitlines()[0].split()[:2] == ["REPOSITORY", "TAG"]
    rows = [ln.split() for ln in out.splitlines()[1:]]
    assert any(r[:2] == ["busybox", "latest"] for r in rows), out
    fmt = docker_cli.ok("image", "ls", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}")
    assert any(ln.startswith("busybox:latest ") for ln in fmt.splitlines()), fmt


def test_image_rm(docker_cli: DockerCLI) -> None:
    """Last in the module: ``docker image rm busybox`` once nothing uses it."""
    leftover = docker_cli.ok("ps", "-a", "-q").split()
    if leftover:
        docker_cli.ok("rm", "-f", *leftover)
    image_id = docker_cli.ok("image", "inspect", "-f", "{{.Id}}", "busybox").strip()
    r = docker_cli("image", "rm", "busybox")
    assert r.returncode == 0, describe(r)
    lines = r.stdout.splitlines()
    assert "Untagged: busybox:latest" in lines, r.stdout
    assert f"Deleted: {image_id}" in lines, r.stdout
    assert docker_cli.ok("image", "ls", "-q").strip() == ""
    gone = docker_cli("image", "inspect", "busybox")
    assert gone.returncode == 1 and "No such image" in gone.stderr, describe(gone)
