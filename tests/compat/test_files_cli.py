"""Issue 4: ``docker cp`` both ways, ``docker diff``, ``export``, ``top`` and ``stats``
through the stock docker CLI 28 and docker-py, against one daemon.

Checked against dockerd 20.10 with ``pytest --against-dockerd``. The module's containers
make their own changes (no exec needed): ``files-t1`` touches, deletes and appends
before it sleeps. Tests run in file order: ``docker diff`` is looked at before anything
is copied in.
"""

from __future__ import annotations

import io
import re
import secrets
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.cli import DockerCLI, docker_binary, docker_py_client
from tests.harness.daemon import BaseDaemon

pytestmark = pytest.mark.root

SUFFIX = secrets.token_hex(3)
T1 = f"files-t1-{SUFFIX}"
CHANGES = ("touch /tmp/new; rm /etc/group; echo x >> /etc/passwd; mkdir -p /a/b; "
           "echo f > /a/b/f; ")
LOOP = "while true; do sleep 3600; done"
OS_RELEASE = Path("/etc/os-release")


def describe(r: subprocess.CompletedProcess[Any]) -> str:
    return f"exit {r.returncode}\nstdout: {r.stdout!r}\nstderr: {r.stderr!r}"


def wait_for(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def t1(daemon: BaseDaemon) -> Iterator[str]:
    cli = DockerCLI(daemon)
    cli.ok("run", "-d", "--name", T1, "busybox", "sh", "-c", CHANGES + LOOP)

    def changed() -> bool:
        out = cli.ok("diff", T1)
        return "A /a/b/f" in out and "D /etc/group" in out

    wait_for(changed, 10, "the container's own changes")
    yield T1
    cli("rm", "-f", T1)


@pytest.fixture(scope="module")
def dpy(daemon: BaseDaemon) -> Iterator[Any]:
    client = docker_py_client(daemon)
    try:
        yield client
    finally:
        client.close()


def tar_names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return tf.getnames()


# =========================================================================== diff
def test_diff_lists_the_containers_changes(docker_cli: DockerCLI, t1: str) -> None:
    lines = docker_cli.ok("diff", t1).splitlines()
    # dockerd's own order varies from call to call (its overlay diff walks a map): sets
    assert set(lines) == {"C /etc", "D /etc/group", "C /etc/passwd", "A /a", "A /a/b",
                          "A /a/b/f", "C /tmp", "A /tmp/new"}
    assert len(lines) == 8


def test_diff_of_an_unchanged_container_is_empty(docker_cli: DockerCLI,
                                                 daemon: BaseDaemon) -> None:
    name = f"files-quiet-{SUFFIX}"
    docker_cli.ok("create", "--name", name, "busybox", "true")
    try:
        assert docker_cli.ok("diff", name) == ""
        assert daemon.api("GET", f"/containers/{name}/changes").body.strip() == b"null"
    finally:
        docker_cli("rm", "-f", name)


# =========================================================================== cp in
def test_cp_host_file_into_container(docker_cli: DockerCLI, t1: str) -> None:
    """``docker cp /etc/os-release t1:/tmp/`` (the issue's line). Where the host's
    os-release is a relative symlink out of /etc (Debian), dockerd refuses it as an
    ``invalid symlink``; ``-L`` copies the file it points to."""
    r = docker_cli("cp", str(OS_RELEASE), f"{t1}:/tmp/")
    if OS_RELEASE.is_symlink() and OS_RELEASE.readlink().as_posix().startswith(".."):
        assert r.returncode == 1, describe(r)
        assert 'invalid symlink "/tmp/os-release" -> "../usr/lib/os-release"' in r.stderr
        docker_cli.ok("cp", "-L", str(OS_RELEASE), f"{t1}:/tmp/")
    else:
        assert r.returncode == 0, describe(r)
    out = subprocess.run([docker_binary(), "cp", f"{t1}:/tmp/os-release", "-"], capture_output=True,
                         env=docker_cli.daemon.env, timeout=60, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(out)) as tf:
        (member,) = tf.getmembers()
        assert member.name == "os-release" and member.isfile()
        extracted = tf.extractfile(member)
        assert extracted is not None
        assert extracted.read() == OS_RELEASE.read_bytes()


def test_cp_to_a_new_name_and_directories(docker_cli: DockerCLI, t1: str,
                                          tmp_path: Path) -> None:
    src = tmp_path / "srcdir"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("a\n")
    (tmp_path / "single.txt").write_text("single\n")
    docker_cli.ok("cp", str(tmp_path / "single.txt"), f"{t1}:/tmp/renamed.txt")
    docker_cli.ok("cp", str(src), f"{t1}:/tmp/")
    docker_cli.ok("cp", f"{src}/.", f"{t1}:/tmp/contents")  # CLI: HEAD 404, then mkdir
    out = tmp_path / "out"
    out.mkdir()
    docker_cli.ok("cp", f"{t1}:/tmp/renamed.txt", str(out / "back.txt"))
    assert (out / "back.txt").read_text() == "single\n"
    docker_cli.ok("cp", f"{t1}:/tmp/srcdir", str(out))
    assert (out / "srcdir" / "sub" / "a.txt").read_text() == "a\n"
    docker_cli.ok("cp", f"{t1}:/tmp/contents/.", str(out / "contents"))
    assert (out / "contents" / "sub" / "a.txt").read_text() == "a\n"


def test_cp_into_a_created_container(docker_cli: DockerCLI, tmp_path: Path) -> None:
    name = f"files-created-{SUFFIX}"
    (tmp_path / "greeting").write_text("copied before start\n")
    docker_cli.ok("create", "--name", name, "busybox", "cat", "/tmp/greeting")
    try:
        docker_cli.ok("cp", str(tmp_path / "greeting"), f"{name}:/tmp/")
        r = docker_cli("start", "-a", name)
        assert r.returncode == 0, describe(r)
        assert r.stdout == "copied before start\n"
        # and out of the now stopped container
        docker_cli.ok("cp", f"{name}:/tmp/greeting", str(tmp_path / "back"))
        assert (tmp_path / "back").read_text() == "copied before start\n"
    finally:
        docker_cli("rm", "-f", name)


def test_cp_errors(docker_cli: DockerCLI, t1: str, tmp_path: Path) -> None:
    r = docker_cli("cp", f"{t1}:/nonexist", str(tmp_path))
    assert r.returncode == 1
    assert f"Could not find the file /nonexist in container {t1}" in r.stderr
    (tmp_path / "f").write_text("f")
    r = docker_cli("cp", str(tmp_path / "f"), f"{t1}:/etc/passwd/x")
    assert r.returncode == 1, describe(r)


# =========================================================================== cp out
def test_cp_out_of_container(docker_cli: DockerCLI, t1: str, tmp_path: Path) -> None:
    docker_cli.ok("cp", f"{t1}:/etc", str(tmp_path))
    assert (tmp_path / "etc" / "passwd").read_text().endswith("x\n")
    assert not (tmp_path / "etc" / "group").exists()
    docker_cli.ok("cp", f"{t1}:/bin/sh", str(tmp_path))
    assert (tmp_path / "sh").is_symlink() and (tmp_path / "sh").readlink() == Path("busybox")


# =========================================================================== export
def test_export(daemon: BaseDaemon, t1: str) -> None:
    out = subprocess.run([docker_binary(), "export", t1], capture_output=True, env=daemon.env,
                         timeout=120, check=True).stdout
    names = tar_names(out)
    assert "bin/busybox" in names
    assert "a/b/f" in names and "etc/group" not in names
    assert not any(n.startswith(("/", "./")) for n in names)


# =========================================================================== top
def test_top(docker_cli: DockerCLI, t1: str) -> None:
    lines = docker_cli.ok("top", t1).splitlines()
    assert lines[0].split() == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    assert any(line.rstrip().endswith("sleep 3600") for line in lines[1:]), lines
    aux = docker_cli.ok("top", t1, "aux").splitlines()
    assert aux[0].split()[:3] == ["USER", "PID", "%CPU"]
    assert any("sleep 3600" in line for line in aux[1:])
    assert len(aux) == len(lines)  # the container's processes only



def test_top_errors(docker_cli: DockerCLI, t1: str) -> None:
    r = docker_cli("top", t1, "bogus-args")
    assert r.returncode == 1
    assert "ps: error" in r.stderr
    name = f"files-stopped-{SUFFIX}"
    docker_cli.ok("create", "--name", name, "busybox", "true")
    try:
        r = docker_cli("top", name)
        assert r.returncode == 1
        assert re.search(r"Container [0-9a-f]{64} is not running", r.stderr), describe(r)
    finally:
        docker_cli("rm", "-f", name)


# =========================================================================== stats
def _memory_bytes(text: str) -> float:
    """The CLI's binary units ("604KiB", "23.54GiB") in bytes."""
    match = re.fullmatch(r"([\d.]+)\s*([KMGT]?i?B)", text.strip())
    assert match, text
    scale = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}
    return float(match.group(1)) * scale[match.group(2)]


def test_stats_no_stream(docker_cli: DockerCLI, t1: str) -> None:
    t0 = time.monotonic()
    table = docker_cli.ok("stats", "--no-stream").splitlines()
    assert time.monotonic() - t0 < 10
    assert table[0].split()[:4] == ["CONTAINER", "ID", "NAME", "CPU"]
    row = next(line for line in table[1:] if t1 in line)
    assert "--" not in row  # the CLI shows -- when the answer took more than 2 s
    formatted = docker_cli.ok("stats", "--no-stream", "--format",
                              "{{.Name}}|{{.CPUPerc}}|{{.MemUsage}}|{{.MemPerc}}|{{.PIDs}}", t1)
    name, cpu, mem_usage, mem_perc, pids = formatted.strip().split("|")
    assert name == t1
    assert re.fullmatch(r"\d+\.\d\d%", cpu), cpu
    used, limit = mem_usage.split(" / ")
    assert _memory_bytes(used) > 0 and _memory_bytes(limit) > _memory_bytes(used)
    assert re.fullmatch(r"\d+\.\d\d%", mem_perc), mem_perc
    assert int(pids) >= 1


def test_stats_stream_one_per_second(daemon: BaseDaemon, t1: str) -> None:
    proc = subprocess.Popen(
        [docker_binary(), "stats", "--format", "{{.Name}} {{.CPUPerc}}", t1],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=daemon.env,
    )
    try:
        time.sleep(3.5)
    finally:
        proc.kill()  # the CLI ignores SIGTERM while streaming stats (dockerd or not)
        out, _ = proc.communicate(timeout=10)
    frames = [line for line in out.decode(errors="replace").splitlines() if t1 in line]
    assert len(frames) >= 2, out


# =========================================================================== docker-py
def test_docker_py_stats_not_streamed(dpy: Any, t1: str) -> None:
    t0 = time.monotonic()
    stats = dpy.containers.get(t1).stats(stream=False)
    assert time.monotonic() - t0 < 2.5
    assert stats["name"] == "/" + t1
    pre = stats["precpu_stats"]
    assert pre["cpu_usage"]["total_usage"] > 0
    assert pre["system_cpu_usage"] > 0 and pre["online_cpus"] >= 1
    assert stats["cpu_stats"]["system_cpu_usage"] > pre["system_cpu_usage"]
    assert stats["preread"] != "0001-01-01T00:00:00Z"
    assert stats["memory_stats"]["usage"] > 0 and stats["memory_stats"]["limit"] > 0


def test_docker_py_stats_one_shot_and_stream(dpy: Any, daemon: BaseDaemon, t1: str) -> None:
    container = dpy.containers.get(t1)
    t0 = time.monotonic()
    shot = container.stats(stream=False, one_shot=True)
    assert time.monotonic() - t0 < 1.5 or daemon.kind == "dockerd"  # dockerd waits a tick
    assert shot["precpu_stats"]["cpu_usage"]["total_usage"] == 0
    assert shot["preread"] == "0001-01-01T00:00:00Z"
    frames = container.stats(stream=True, decode=True)
    first, second = next(frames), next(frames)
    frames.close()
    assert second["preread"] == first["read"]
    assert second["precpu_stats"] == first["cpu_stats"]


def test_docker_py_stats_of_a_stopped_container(dpy: Any, docker_cli: DockerCLI) -> None:
    name = f"files-idle-{SUFFIX}"
    docker_cli.ok("create", "--name", name, "busybox", "true")
    try:
        stats = dpy.containers.get(name).stats(stream=False)
        assert stats["read"] == "0001-01-01T00:00:00Z"
        assert stats["memory_stats"] == {} and stats["pids_stats"] == {}
        assert stats["blkio_stats"]["io_service_bytes_recursive"] is None
    finally:
        docker_cli("rm", "-f", name)


def test_docker_py_top(dpy: Any, t1: str) -> None:
    top = dpy.containers.get(t1).top()
    assert top["Titles"][1] == "PID"
    assert any(row[-1] == "sleep 3600" for row in top["Processes"])
    assert all(isinstance(v, str) for row in top["Processes"] for v in row)
    aux = dpy.containers.get(t1).top(ps_args="aux")
    assert aux["Titles"][0] == "USER"


def test_docker_py_archive_round_trip(dpy: Any, t1: str) -> None:
    container = dpy.containers.get(t1)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("from-docker-py.txt")
        payload = b"docker-py put_archive\n"
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    assert container.put_archive("/tmp", buf.getvalue()) is True
    chunks, stat = container.get_archive("/tmp/from-docker-py.txt")
    assert stat["name"] == "from-docker-py.txt" and stat["size"] == len(payload)
    assert stat["mode"] == 0o644 and stat["linkTarget"] == ""
    data = b"".join(chunks)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        member = tf.getmember("from-docker-py.txt")
        extracted = tf.extractfile(member)
        assert extracted is not None and extracted.read() == payload
    _, dir_stat = container.get_archive("/tmp")
    assert dir_stat["mode"] & (1 << 31)  # Go's ModeDir: the CLI reads IsDir() from it
    import docker.errors

    with pytest.raises(docker.errors.NotFound):
        container.get_archive("/nonexistent")


def test_cp_sees_volumes_of_created_running_and_exited_containers(
    docker_cli: DockerCLI, tmp_path: Path
) -> None:
    """docker cp reaches into the volumes of a created and an exited container (docker-py's
    put_archive/get_archive tests); running ones: test_cp_running_container_sees_its_mounts."""
    src = tmp_path / "data.txt"
    src.write_text("in-volume\n")
    cid = docker_cli.ok("create", "-v", "/vol1", "busybox", "sh", "-c",
                        "cat /vol1/data.txt; echo more > /vol1/more.txt; sleep 2").strip()
    try:
        docker_cli.ok("cp", str(src), f"{cid}:/vol1/data.txt")
        run = docker_cli.popen("start", "-a", cid)
        stdout, _ = run.communicate(timeout=20)
        assert "in-volume" in str(stdout)
        tar_bytes = docker_cli("cp", f"{cid}:/vol1/more.txt", "-", input=b"").stdout
        with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
            member = tar.extractfile("more.txt")
            assert member is not None and member.read() == b"more\n"
        docker_cli.ok("cp", f"{cid}:/vol1/more.txt", str(tmp_path / "back.txt"))
        assert (tmp_path / "back.txt").read_text() == "more\n"
        # The daemon unmounts after the last byte went out; under load the client can be
        # done first. A mount that stays (stacked or leaked) stays for good.
        deadline = time.monotonic() + 10
        while _rootfs_mounts(docker_cli) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _rootfs_mounts(docker_cli)
    finally:
        docker_cli("rm", "-f", "-v", cid)


def _rootfs_mounts(cli: DockerCLI) -> list[str]:
    containers = str(cli.daemon.data_root / "containers")
    return [p for p in Path("/proc/self/mountinfo").read_text().split()
            if p.startswith(containers) and "/rootfs/" in p]


# =========================================================================== cp and mounts
def cp_out_file(cli: DockerCLI, source: str) -> bytes:
    """The content of one file copied out with ``docker cp <source> -``."""
    r = subprocess.run([docker_binary(), "cp", source, "-"], capture_output=True,
                       env=cli.daemon.env, timeout=60)
    assert r.returncode == 0, describe(r)
    with tarfile.open(fileobj=io.BytesIO(r.stdout)) as tf:
        (member,) = [m for m in tf.getmembers() if m.isfile()]
        extracted = tf.extractfile(member)
        assert extracted is not None
        return extracted.read()


@pytest.fixture
def mounted(docker_cli: DockerCLI, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A named volume, a read-only one and a bind directory holding a file only it has."""
    names = {"vol": f"files-vol-{SUFFIX}", "ro": f"files-ro-{SUFFIX}"}
    for volume in names.values():
        docker_cli.ok("volume", "create", volume)
    bind = tmp_path / "bind"
    bind.mkdir()
    (bind / "bind-only.txt").write_text("only in the bind\n")
    (tmp_path / "host.txt").write_text("from the host\n")
    names["bind"] = str(bind)
    names["host"] = str(tmp_path / "host.txt")
    try:
        yield names
    finally:
        docker_cli("volume", "rm", "-f", names["vol"], names["ro"])


def _mount_args(m: dict[str, str]) -> list[str]:
    return ["-v", f"{m['vol']}:/vol", "-v", f"{m['ro']}:/ro:ro", "-v", f"{m['bind']}:/bind"]


def test_cp_running_container_sees_its_mounts(docker_cli: DockerCLI,
                                              mounted: dict[str, str]) -> None:
    """A running container's volumes and binds, both ways: a file the container wrote
    in its volume and one only the bind has are found (404 before), a file copied into
    the volume is one the container sees (it landed underneath the mount before)."""
    name = f"files-mnt-run-{SUFFIX}"
    docker_cli.ok("run", "-d", "--name", name, *_mount_args(mounted), "busybox", "sh", "-c",
                  "echo written-inside > /vol/inside.txt; " + LOOP)
    try:
        wait_for(lambda: docker_cli("exec", name, "test", "-f", "/vol/inside.txt").returncode
                 == 0, 10, "the container's own file")
        assert cp_out_file(docker_cli, f"{name}:/vol/inside.txt") == b"written-inside\n"
        assert cp_out_file(docker_cli, f"{name}:/bind/bind-only.txt") == b"only in the bind\n"
        docker_cli.ok("cp", mounted["host"], f"{name}:/vol/copied.txt")
        assert docker_cli.ok("exec", name, "cat", "/vol/copied.txt") == "from the host\n"
        docker_cli.ok("cp", mounted["host"], f"{name}:/bind/")
        assert (Path(mounted["bind"]) / "host.txt").read_text() == "from the host\n"
        r = docker_cli("cp", mounted["host"], f"{name}:/ro/")
        assert r.returncode == 1, describe(r)
        assert "mounted volume is marked read-only" in r.stderr
        # A whole directory holding a mount point carries the mount's content.
        out = subprocess.run([docker_binary(), "cp", f"{name}:/vol", "-"], capture_output=True,
                             env=docker_cli.daemon.env, timeout=60, check=True).stdout
        assert {"vol/inside.txt", "vol/copied.txt"} <= set(tar_names(out))
    finally:
        docker_cli("rm", "-f", name)


def test_cp_through_volumes_from(docker_cli: DockerCLI, mounted: dict[str, str]) -> None:
    """A running container's ``--volumes-from`` mounts, read-only ones included."""
    source, user = f"files-vf-src-{SUFFIX}", f"files-vf-user-{SUFFIX}"
    docker_cli.ok("create", "--name", source, *_mount_args(mounted), "busybox", "true")
    try:
        docker_cli.ok("run", "-d", "--name", user, "--volumes-from", source, "busybox",
                      "sh", "-c", LOOP)
        docker_cli.ok("cp", mounted["host"], f"{user}:/vol/via-volumes-from.txt")
        out = docker_cli.ok("run", "--rm", "-v", f"{mounted['vol']}:/v", "busybox", "cat",
                            "/v/via-volumes-from.txt")
        assert out == "from the host\n"
        r = docker_cli("cp", mounted["host"], f"{user}:/ro/")
        assert "mounted volume is marked read-only" in r.stderr, describe(r)
    finally:
        docker_cli("rm", "-f", user, source)


@pytest.mark.parametrize("state", ["created", "exited"])
def test_cp_created_and_exited_containers_see_their_mounts(
    docker_cli: DockerCLI, mounted: dict[str, str], state: str
) -> None:
    name = f"files-mnt-{state}-{SUFFIX}"
    docker_cli.ok("create", "--name", name, *_mount_args(mounted), "busybox", "true")
    try:
        if state == "exited":
            docker_cli.ok("start", "-a", name)
        assert cp_out_file(docker_cli, f"{name}:/bind/bind-only.txt") == b"only in the bind\n"
        docker_cli.ok("cp", mounted["host"], f"{name}:/vol/copied.txt")
        r = docker_cli("cp", mounted["host"], f"{name}:/ro/")
        assert r.returncode == 1, describe(r)
        assert "mounted volume is marked read-only" in r.stderr
    finally:
        docker_cli("rm", "-f", name)
    check = f"check-{state}-{SUFFIX}"
    out = docker_cli.ok("run", "--rm", "--name", check, "-v", f"{mounted['vol']}:/v",
                        "busybox", "cat", "/v/copied.txt")
    assert out == "from the host\n"


@pytest.mark.parametrize("running", [True, False])
def test_cp_into_a_read_only_root(docker_cli: DockerCLI, mounted: dict[str, str],
                                  running: bool) -> None:
    """``--read-only``: the root refuses copies in dockerd's words, its volumes take them."""
    name = f"files-rofs-{running}-{SUFFIX}"
    cmd = ["sh", "-c", LOOP] if running else ["true"]
    docker_cli.ok("run" if running else "create", *(["-d"] if running else []), "--name", name,
                  "--read-only", "-v", f"{mounted['vol']}:/vol", "busybox", *cmd)
    try:
        r = docker_cli("cp", mounted["host"], f"{name}:/tmp/")
        assert r.returncode == 1, describe(r)
        assert "container rootfs is marked read-only" in r.stderr
        docker_cli.ok("cp", mounted["host"], f"{name}:/vol/")
        assert cp_out_file(docker_cli, f"{name}:/vol/host.txt") == b"from the host\n"
        # reading the root is fine
        assert cp_out_file(docker_cli, f"{name}:/etc/passwd").startswith(b"root:")
    finally:
        docker_cli("rm", "-f", name)


def test_docker_py_archive_through_a_running_containers_volume(
    dpy: Any, mounted: dict[str, str], against_dockerd: bool
) -> None:
    """put_archive/get_archive through a running container's volume; a read-only one is
    a 400 (current dockerd: InvalidParameter; 20.10 answered 500 with the same text)."""
    import docker.errors

    container = dpy.containers.run("busybox", ["sh", "-c", LOOP], detach=True,
                                   volumes={mounted["vol"]: {"bind": "/vol", "mode": "rw"},
                                            mounted["ro"]: {"bind": "/ro", "mode": "ro"}})
    try:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            info = tarfile.TarInfo("put.txt")
            info.size = 4
            tf.addfile(info, io.BytesIO(b"put\n"))
        assert container.put_archive("/vol", buf.getvalue()) is True
        assert container.exec_run(["cat", "/vol/put.txt"]).output == b"put\n"
        chunks, stat = container.get_archive("/vol/put.txt")
        assert stat["size"] == 4
        assert "put.txt" in tar_names(b"".join(chunks))
        with pytest.raises(docker.errors.APIError) as caught:
            container.put_archive("/ro", buf.getvalue())
        assert caught.value.status_code == (500 if against_dockerd else 400)
        assert "mounted volume is marked read-only" in str(caught.value.explanation)
    finally:
        container.remove(force=True)


def test_cp_running_container_sees_its_tmpfs(docker_cli: DockerCLI, against_dockerd: bool,
                                             tmp_path: Path) -> None:
    """wharfd-only: a running container's tmpfs is reached through its own mount
    namespace (dockerd 20.10 and current dockerd copy underneath it, where the
    container never sees the file)."""
    if against_dockerd:
        pytest.skip("dockerd copies below a tmpfs mount point (documented difference)")
    name = f"files-tmpfs-{SUFFIX}"
    (tmp_path / "t.txt").write_text("into tmpfs\n")
    docker_cli.ok("run", "-d", "--name", name, "--read-only", "--tmpfs", "/scratch",
                  "busybox", "sh", "-c", LOOP)
    try:
        docker_cli.ok("cp", str(tmp_path / "t.txt"), f"{name}:/scratch/")
        assert docker_cli.ok("exec", name, "cat", "/scratch/t.txt") == "into tmpfs\n"
        # the kernel's file systems are not walked: /proc comes out empty
        out = subprocess.run([docker_binary(), "cp", f"{name}:/proc", "-"], capture_output=True,
                             env=docker_cli.daemon.env, timeout=60, check=True).stdout
        assert tar_names(out) == ["proc"]
    finally:
        docker_cli("rm", "-f", name)
