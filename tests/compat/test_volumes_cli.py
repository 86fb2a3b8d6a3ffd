"""Issue 6 acceptance: volumes and mounts through the stock docker CLI 28 and docker-py 7.

Written against Docker's behaviour (``pytest --against-dockerd`` runs the same tests on the
real dockerd). Names carry a per-run prefix; every test removes what it made.

The ``docker volume`` scenarios and the containers-with-mounts scenarios (the container
manager calls the volume manager as docs/volumes.md describes).
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.cli import DockerCLI, run_docker
from tests.harness.daemon import BaseDaemon, mounts_under

pytestmark = pytest.mark.root

P = "wv" + secrets.token_hex(3)  # per-run prefix of every name made here
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def describe(r: subprocess.CompletedProcess[Any]) -> str:
    return f"exit {r.returncode}\nstdout: {r.stdout!r}\nstderr: {r.stderr!r}"


def inspect_volume(cli: DockerCLI, name: str) -> dict[str, Any]:
    data = json.loads(cli.ok("volume", "inspect", name))
    assert isinstance(data, list) and len(data) == 1
    obj: dict[str, Any] = data[0]
    return obj


def volume_names(cli: DockerCLI, *filters: str) -> set[str]:
    args = [arg for f in filters for arg in ("--filter", f)]
    return set(cli.ok("volume", "ls", "-q", *args).split())


def mine(names: set[str]) -> set[str]:
    return {n for n in names if n.startswith(P)}


@pytest.fixture
def cleanup(docker_cli: DockerCLI) -> Iterator[list[str]]:
    """Containers and volumes a test made (names or ids); removed afterwards, in order."""
    made: list[str] = []
    yield made
    for ref in made:
        docker_cli("rm", "-f", "-v", ref)
    for ref in made:
        docker_cli("volume", "rm", "-f", ref)


# ====================================================================== docker volume
def test_create_inspect_ls_rm(docker_cli: DockerCLI, daemon: BaseDaemon,
                              cleanup: list[str]) -> None:
    name = f"{P}-mysql"
    cleanup.append(name)
    assert docker_cli.ok("volume", "create", "--label", "v=1", name).strip() == name
    obj = inspect_volume(docker_cli, name)
    assert obj["Name"] == name and obj["Driver"] == "local" and obj["Scope"] == "local"
    assert obj["Labels"] == {"v": "1"} and obj["Options"] in (None, {})
    assert obj["Mountpoint"] == str(daemon.data_root / "volumes" / name / "_data")
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)$", obj["CreatedAt"])
    assert Path(obj["Mountpoint"]).is_dir()
    assert name in volume_names(docker_cli)
    out = docker_cli.ok("volume", "ls", "--format", "{{.Driver}} {{.Name}}")
    assert f"local {name}" in out.splitlines()
    # same name again: the same volume (idempotent)
    assert docker_cli.ok("volume", "create", name).strip() == name
    assert inspect_volume(docker_cli, name)["CreatedAt"] == obj["CreatedAt"]

    assert docker_cli.ok("volume", "rm", name).strip() == name
    assert name not in volume_names(docker_cli)
    assert not Path(obj["Mountpoint"]).parent.exists()
    r = docker_cli("volume", "inspect", name)
    assert r.returncode == 1 and "no such volume" in r.stderr.lower(), describe(r)
    r = docker_cli("volume", "rm", name)
    assert r.returncode == 1 and f"get {name}: no such volume" in r.stderr, describe(r)
    assert docker_cli("volume", "rm", "-f", name).returncode == 0


def test_anonymous_and_driver_options(docker_cli: DockerCLI, cleanup: list[str]) -> None:
    anon = docker_cli.ok("volume", "create").strip()
    cleanup.append(anon)
    assert HEX64.match(anon)
    name = f"{P}-ram"
    cleanup.append(name)
    docker_cli.ok("volume", "create", "-o", "type=tmpfs", "-o", "device=tmpfs",
                  "-o", "o=size=1m", name)
    assert inspect_volume(docker_cli, name)["Options"] == {
        "type": "tmpfs", "device": "tmpfs", "o": "size=1m"}


@pytest.mark.parametrize(("args", "message"), [
    (["a/b"], '"a/b" includes invalid characters for a local volume name, only '
              '"[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed. If you intended to pass a host '
              "directory, use absolute path"),
    (["../escape"], "includes invalid characters for a local volume name"),
    (["-o", "bogus=1", f"{P}-bad"], 'invalid option: "bogus"'),
    (["-o", "type=tmpfs", f"{P}-bad"], 'missing required option: "device"'),
    (["-d", "nosuchdriver", f"{P}-bad"], 'plugin "nosuchdriver" not found'),
])
def test_create_bad_input(docker_cli: DockerCLI, daemon: BaseDaemon, args: list[str],
                          message: str) -> None:
    before = sorted((daemon.data_root / "volumes").iterdir())
    r = docker_cli("volume", "create", *args)
    assert r.returncode == 1 and message in r.stderr, describe(r)
    assert sorted((daemon.data_root / "volumes").iterdir()) == before
    assert not (daemon.data_root / "escape").exists()


def test_ls_filters(docker_cli: DockerCLI, cleanup: list[str]) -> None:
    web, db = f"{P}-web", f"{P}-db"
    cleanup += [web, db]
    docker_cli.ok("volume", "create", "--label", "app=web", web)
    docker_cli.ok("volume", "create", "--label", "app=db", "--label", "tier=back", db)
    assert mine(volume_names(docker_cli, f"name={P}-")) == {web, db}
    assert mine(volume_names(docker_cli, "label=app=web")) == {web}
    assert mine(volume_names(docker_cli, "label=tier")) == {db}
    assert mine(volume_names(docker_cli, "label=app", "label=tier=back")) == {db}
    assert mine(volume_names(docker_cli, "driver=local")) >= {web, db}
    assert mine(volume_names(docker_cli, "dangling=true")) >= {web, db}
    assert not mine(volume_names(docker_cli, "dangling=false")) & {web, db}
    r = docker_cli("volume", "ls", "--filter", "bogus=1")
    # 20.10 says "Invalid filter"; current dockerd "invalid filter"
    assert r.returncode == 1 and "invalid filter 'bogus'" in r.stderr.lower(), describe(r)


def test_prune(docker_cli: DockerCLI, daemon: BaseDaemon, cleanup: list[str],
               against_dockerd: bool) -> None:
    if against_dockerd:
        pytest.skip("dockerd 20.10 speaks API 1.41: its prune removes named volumes too")
    named = f"{P}-named"
    cleanup.append(named)
    docker_cli.ok("volume", "create", "--label", f"{P}=1", named)
    anon = docker_cli.ok("volume", "create", "--label", f"{P}=1").strip()
    cleanup.append(anon)
    (daemon.data_root / "volumes" / anon / "_data" / "blob").write_bytes(b"x" * 4096)
    out = docker_cli.ok("volume", "prune", "-f", "--filter", f"label={P}")
    assert anon in out and named not in out, out  # API >= 1.42: anonymous only
    assert "Total reclaimed space: 4.096kB" in out
    assert named in volume_names(docker_cli)
    out = docker_cli.ok("volume", "prune", "-f", "--all", "--filter", f"label={P}")
    assert named in out
    assert named not in volume_names(docker_cli)


def test_l4_concurrent_creates_same_name(daemon: BaseDaemon, docker_cli: DockerCLI,
                                         cleanup: list[str]) -> None:
    name = f"{P}-l4"
    cleanup.append(name)
    results: list[tuple[int, Any]] = []
    lock = threading.Lock()

    def create() -> None:
        r = daemon.api("POST", "/volumes/create", {"Name": name})
        with lock:
            results.append((r.status, r.json()))

    threads = [threading.Thread(target=create) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [s for s, _ in results] == [201] * 20
    assert len({json.dumps(body, sort_keys=True) for _, body in results}) == 1


def test_volume_events(docker_cli: DockerCLI, cleanup: list[str]) -> None:
    name = f"{P}-ev"
    cleanup.append(name)
    since = str(int(time.time()) - 1)
    docker_cli.ok("volume", "create", name)
    docker_cli.ok("volume", "rm", name)
    until = str(int(time.time()) + 1)
    out = docker_cli.ok("events", "--since", since, "--until", until, "--filter",
                        "type=volume", "--filter", f"volume={name}",
                        "--format", "{{.Action}} {{.Actor.ID}} {{.Actor.Attributes.driver}}")
    assert out.splitlines() == [f"create {name} local", f"destroy {name} local"]


def test_persistence_across_restart_and_kill9(fresh_daemon: BaseDaemon,
                                             against_dockerd: bool) -> None:
    cli = DockerCLI(fresh_daemon)
    name = f"{P}-keep"
    cli.ok("volume", "create", "--label", "k=v", name)
    data = Path(inspect_volume(cli, name)["Mountpoint"])
    (data / "row").write_text("row1")
    fresh_daemon.restart()
    assert inspect_volume(cli, name)["Labels"] == {"k": "v"}
    if not against_dockerd:  # 20.10 refuses to start right after a kill -9 (F9)
        fresh_daemon.kill9()
        fresh_daemon.start()
    assert (data / "row").read_text() == "row1"
    assert name in volume_names(cli)
    cli.ok("volume", "rm", name)


# ====================================================================== docker-py
def test_dockerpy_volumes(dclient: Any, daemon: BaseDaemon, against_dockerd: bool) -> None:
    import docker

    name = f"{P}-py"
    vol = dclient.volumes.create(name, driver="local", labels={"a": "b"})
    try:
        assert vol.name == name and vol.attrs["Labels"] == {"a": "b"}
        assert vol.attrs["Mountpoint"] == str(daemon.data_root / "volumes" / name / "_data")
        assert dclient.volumes.get(name).id == name
        assert name in [v.name for v in dclient.volumes.list(filters={"label": "a=b"})]
        assert name not in [v.name for v in dclient.volumes.list(filters={"label": "a=c"})]
        with pytest.raises(docker.errors.NotFound):
            dclient.volumes.get(f"{P}-nope")
        anon = dclient.volumes.create()
        assert HEX64.match(anon.name)
        if against_dockerd:  # the anonymous label came with dockerd 23
            anon.remove()
            return
        pruned = dclient.volumes.prune(filters={"label": "com.docker.volume.anonymous"})
        assert anon.name in (pruned["VolumesDeleted"] or [])
        assert name not in (pruned["VolumesDeleted"] or [])
    finally:
        vol.remove(force=True)
    with pytest.raises(docker.errors.NotFound):
        dclient.volumes.get(name)


# ====================================================================== in containers
LOOP = "sleep 3600"


def test_seed_named_volume_survives_container(docker_cli: DockerCLI, daemon: BaseDaemon,
                                              cleanup: list[str]) -> None:
    vol, ctr = f"{P}-mysql2", f"{P}-db1"
    cleanup += [ctr, vol]
    docker_cli.ok("run", "-d", "-v", f"{vol}:/var/lib/mysql", "--name", ctr, "busybox",
                  "sh", "-c", f"echo row1 > /var/lib/mysql/t; {LOOP}")
    assert vol in volume_names(docker_cli)
    mountpoint = Path(inspect_volume(docker_cli, vol)["Mountpoint"])
    assert mountpoint == daemon.data_root / "volumes" / vol / "_data"
    deadline = time.monotonic() + 10
    while not (mountpoint / "t").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    mounts = json.loads(docker_cli.ok("inspect", "-f", "{{json .Mounts}}", ctr))
    assert mounts == [{"Type": "volume", "Name": vol, "Source": str(mountpoint),
                       "Destination": "/var/lib/mysql", "Driver": "local", "Mode": "z",
                       "RW": True, "Propagation": ""}]
    r = docker_cli("volume", "rm", vol)  # B17: in use, even with force
    assert r.returncode == 1 and "volume is in use" in r.stderr, describe(r)
    r = docker_cli("volume", "rm", "-f", vol)
    assert r.returncode == 1 and "volume is in use" in r.stderr, describe(r)
    docker_cli.ok("rm", "-f", ctr)
    out = docker_cli.ok("run", "--rm", "-v", f"{vol}:/var/lib/mysql", "busybox",
                        "cat", "/var/lib/mysql/t")
    assert out == "row1\n"
    docker_cli.ok("volume", "rm", vol)


def test_created_container_holds_its_volume(docker_cli: DockerCLI, cleanup: list[str]) -> None:
    vol, ctr = f"{P}-held", f"{P}-holder"
    cleanup += [ctr, vol]
    cid = docker_cli.ok("create", "--name", ctr, "-v", f"{vol}:/x", "busybox").strip()
    r = docker_cli("volume", "rm", vol)
    assert r.returncode == 1, describe(r)
    assert f"remove {vol}: volume is in use - [{cid}]" in r.stderr, describe(r)
    docker_cli.ok("rm", ctr)
    docker_cli.ok("volume", "rm", vol)


@pytest.fixture(scope="module")
def volume_image(daemon: BaseDaemon, busybox_tar: Path) -> Iterator[str]:
    """busybox with ``VOLUME /var/lib/mysql`` and ``VOLUME /etc`` (which has content)."""
    ref = f"{P}-vimg:latest"
    r = run_docker(daemon, "import", "-c", 'CMD ["sh"]', "-c", "VOLUME /var/lib/mysql /etc",
                   "-", ref, input=busybox_tar.read_bytes(), timeout=120)
    assert r.returncode == 0, r.stderr
    yield ref
    run_docker(daemon, "rmi", "-f", ref)


def test_image_volume_is_anonymous_and_outlives_container(
    docker_cli: DockerCLI, volume_image: str, cleanup: list[str], against_dockerd: bool
) -> None:
    ctr = f"{P}-imgvol"
    cleanup.append(ctr)
    docker_cli.ok("run", "--name", ctr, volume_image, "sh", "-c", "echo hi > /var/lib/mysql/x")
    mounts = json.loads(docker_cli.ok("inspect", "-f", "{{json .Mounts}}", ctr))
    by_dest = {m["Destination"]: m for m in mounts}
    anon = by_dest["/var/lib/mysql"]["Name"]
    cleanup.append(anon)
    assert HEX64.match(anon) and by_dest["/var/lib/mysql"]["Type"] == "volume"
    if not against_dockerd:  # the anonymous label came with dockerd 23
        assert inspect_volume(docker_cli, anon)["Labels"] == {
            "com.docker.volume.anonymous": ""}
    cleanup.append(by_dest["/etc"]["Name"])
    docker_cli.ok("rm", ctr)  # without -v the anonymous volumes stay
    assert anon in volume_names(docker_cli)
    out = docker_cli.ok("run", "--rm", "-v", f"{anon}:/data", "busybox", "cat", "/data/x")
    assert out == "hi\n"
    # the image's /etc was copied into its volume at first use
    etc = by_dest["/etc"]["Name"]
    assert "root:x:0:0" in docker_cli.ok("run", "--rm", "-v", f"{etc}:/e", "busybox",
                                         "cat", "/e/passwd")


def test_populate_and_nocopy(docker_cli: DockerCLI, cleanup: list[str]) -> None:
    full, empty = f"{P}-etc", f"{P}-noc"
    cleanup += [full, empty]
    docker_cli.ok("run", "--rm", "-v", f"{full}:/etc", "busybox", "true")
    assert "root:x:0:0" in docker_cli.ok("run", "--rm", "-v", f"{full}:/d", "busybox",
                                         "cat", "/d/passwd")
    docker_cli.ok("run", "--rm", "-v", f"{empty}:/etc:nocopy", "busybox", "true")
    listing = docker_cli.ok("run", "--rm", "-v", f"{empty}:/d", "busybox", "ls", "/d").split()
    assert "passwd" not in listing


def test_rm_v_and_run_rm_remove_anonymous_volumes(docker_cli: DockerCLI,
                                                  cleanup: list[str]) -> None:
    ctr, named = f"{P}-rmv", f"{P}-rmv-named"
    cleanup += [ctr, named]
    before = volume_names(docker_cli)
    docker_cli.ok("create", "--name", ctr, "-v", "/anon", "-v", f"{named}:/named", "busybox")
    created = volume_names(docker_cli) - before
    assert named in created and len(created) == 2
    docker_cli.ok("rm", "-v", ctr)
    assert volume_names(docker_cli) - before == {named}
    docker_cli.ok("run", "--rm", "-v", "/anon2", "busybox", "true")
    assert volume_names(docker_cli) - before == {named}


def test_bind_mounts(docker_cli: DockerCLI, cleanup: list[str]) -> None:
    with tempfile.TemporaryDirectory() as w:
        out = docker_cli.ok("run", "--rm", "-v", f"{w}:/www", "busybox", "sh", "-c",
                            "ls -A /www; echo hello world > /www/index.html")
        assert out == ""  # the empty host dir hides the image's content
        assert (Path(w) / "index.html").read_text() == "hello world\n"
        r = docker_cli("run", "--rm", "-v", f"{w}:/www:ro", "busybox", "sh", "-c",
                       "echo x > /www/y")
        assert r.returncode != 0 and "Read-only file system" in r.stderr, describe(r)
        missing = Path(w) / "not" / "yet"
        docker_cli.ok("run", "--rm", "-v", f"{missing}:/m", "busybox", "true")
        assert missing.is_dir()  # -v creates a missing host directory
        mounts = json.loads(docker_cli.ok("inspect", "-f", "{{json .Mounts}}", docker_cli.ok(
            "create", "--name", f"{P}-bind", "-v", f"{w}:/www:ro", "busybox").strip()))
        cleanup.append(f"{P}-bind")
        assert mounts == [{"Type": "bind", "Source": w, "Destination": "/www", "Mode": "ro",
                           "RW": False, "Propagation": "rprivate"}]


def test_mount_flag_and_tmpfs(docker_cli: DockerCLI, cleanup: list[str]) -> None:
    vol = f"{P}-mnt"
    cleanup.append(vol)
    out = docker_cli.ok(
        "run", "--rm", "--mount", "type=tmpfs,dst=/scratch,tmpfs-size=1m,tmpfs-mode=1770",
        "--tmpfs", "/run:size=2m", "--mount", f"type=volume,src={vol},dst=/d,volume-nocopy",
        "--mount", f"type=volume,src={vol},dst=/ro,readonly",
        "busybox", "sh", "-c", "grep -E ' /(scratch|run|ro) ' /proc/mounts; touch /ro/x || "
        "echo ro-refused",
    )
    assert re.search(r"tmpfs /scratch tmpfs rw,nosuid,nodev,noexec,.*size=1024k,mode=1770", out)
    assert re.search(r"tmpfs /run tmpfs rw,nosuid,nodev,noexec,.*size=2048k", out)
    assert re.search(r" /ro \S+ ro[, ]", out) and "ro-refused" in out


def test_volumes_from(docker_cli: DockerCLI, cleanup: list[str]) -> None:
    src, vol = f"{P}-src", f"{P}-shared"
    cleanup += [src, vol]
    docker_cli.ok("create", "--name", src, "-v", f"{vol}:/shared", "busybox")
    docker_cli.ok("run", "--rm", "--volumes-from", src, "busybox", "sh", "-c",
                  "echo via > /shared/f")
    out = docker_cli.ok("run", "--rm", "--volumes-from", f"{src}:ro", "busybox", "sh", "-c",
                        "cat /shared/f; touch /shared/g || echo ro-refused")
    assert out == "via\nro-refused\n"


@pytest.mark.parametrize(("body_host", "message"), [
    ({"Mounts": [{"Type": "bind", "Source": "/nonexistent-wharfd", "Target": "/x"}]},
     'invalid mount config for type "bind": bind source path does not exist: '
     "/nonexistent-wharfd"),
    ({"Binds": ["relative/path:/x"]}, "includes invalid characters for a local volume name, "
                                      'only "[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed. If you '
                                      "intended to pass a host directory, use absolute path"),
    ({"Mounts": [{"Type": "volume", "Target": "relative"}]},
     "invalid mount path: 'relative' mount path must be absolute"),
    ({"Mounts": [{"Type": "weird", "Target": "/x"}]}, "mount type unknown"),
    ({"Binds": [f"{P}-a1:/x", f"{P}-a2:/x"]}, "Duplicate mount point: /x"),
    ({"Binds": ["a/b:/x"]}, '"a/b" includes invalid characters for a local volume name'),
])
def test_b12_bad_mounts_change_nothing(daemon: BaseDaemon, docker_cli: DockerCLI,
                                       body_host: dict[str, Any], message: str,
                                       against_dockerd: bool) -> None:
    before_ctrs = set(docker_cli.ok("ps", "-aq", "--no-trunc").split())
    before_vols = volume_names(docker_cli)
    r = daemon.api("POST", "/containers/create",
                   {"Image": "busybox", "Cmd": ["true"], "HostConfig": body_host})
    # 20.10 answers a relative --mount target with 500 (reliability.md B12)
    assert r.status == 400 or (against_dockerd and "relative" in message), r.text
    assert r.header("Content-Type") == "application/json"
    assert message in r.json()["message"]
    assert set(docker_cli.ok("ps", "-aq", "--no-trunc").split()) == before_ctrs
    leaked = volume_names(docker_cli) - before_vols
    if against_dockerd:  # dockerd creates the volumes it saw before the bad entry
        for name in leaked:
            docker_cli("volume", "rm", "-f", name)
        return
    assert leaked == set()


def test_dockerpy_run_with_volume(dclient: Any, cleanup: list[str]) -> None:
    vol = f"{P}-pyrun"
    cleanup.append(vol)
    dclient.containers.run("busybox", ["sh", "-c", "echo py > /data/t"],
                           volumes={vol: {"bind": "/data", "mode": "rw"}}, remove=True)
    out = dclient.containers.run("busybox", ["cat", "/data/t"],
                                 volumes=[f"{vol}:/data:ro"], remove=True)
    assert out == b"py\n"
    assert dclient.volumes.get(vol).name == vol


def test_volume_mount_events(docker_cli: DockerCLI, cleanup: list[str]) -> None:
    vol = f"{P}-evm"
    cleanup.append(vol)
    since = str(int(time.time()) - 1)
    docker_cli.ok("run", "--rm", "-v", f"{vol}:/x", "busybox", "true")
    until = str(int(time.time()) + 1)
    out = docker_cli.ok("events", "--since", since, "--until", until, "--filter",
                        "type=volume", "--filter", f"volume={vol}", "--format", "{{.Action}}")
    assert out.splitlines() == ["create", "mount", "unmount"]


def test_ps_filters_by_volume_and_network(docker_cli: DockerCLI) -> None:
    name = f"{P}-flt"
    docker_cli.ok("run", "-d", "--name", name, "-v", f"{P}fltvol:/data", "busybox",
                  "sleep", "60")
    try:
        fmt = ("--format", "{{.Names}}")
        by_name = docker_cli.ok("ps", "--filter", f"volume={P}fltvol", *fmt).split()
        by_path = docker_cli.ok("ps", "--filter", "volume=/data", *fmt).split()
        assert name in by_name and name in by_path
        assert name not in docker_cli.ok("ps", "--filter", "volume=nosuchvol",
                                  "--format", "{{.Names}}").split()
        assert name in docker_cli.ok("ps", "--filter", "network=bridge",
                              "--format", "{{.Names}}").split()
    finally:
        docker_cli("rm", "-f", name)
        docker_cli("volume", "rm", f"{P}fltvol")


def test_bind_mount_served_over_a_published_port(docker_cli: DockerCLI, daemon: BaseDaemon,
                                                 tmp_path: Path) -> None:
    """The seed's web scenario: an empty host dir hides the image's content; a file put
    there from the host is served at once."""
    www = tmp_path / "www"
    www.mkdir()
    name = f"{P}-web"
    docker_cli.ok("run", "-d", "--name", name, "-v", f"{www}:/www", "-p", "8081:80",
                  "busybox", "httpd", "-f", "-p", "80", "-h", "/www")

    def fetch() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["nsenter", f"--net={daemon.netns.path}", "curl", "-s", "-o", "/dev/stdout",
             "-w", "%{http_code}", "--max-time", "5", "http://127.0.0.1:8081/"],
            capture_output=True, text=True, timeout=20,
        )

    try:
        deadline = time.time() + 10
        first = fetch()
        while not first.stdout.endswith("404") and time.time() < deadline:
            time.sleep(0.2)
            first = fetch()
        assert first.stdout.endswith("404"), first
        (www / "index.html").write_text("hello world\n")
        second = fetch()
        assert second.stdout == "hello world\n200", second
    finally:
        docker_cli("rm", "-f", name)


# ------------------------------------------------------------------ volume subpath (API 1.45)
SUBPATH_SETUP = ("mkdir -p /v/sub/dir && echo in-subpath > /v/sub/dir/f && "
                 "ln -s ../.. /v/escape && ln -s /etc /v/absolute && ln -s sub /v/inner && "
                 "echo a-file > /v/file")


@pytest.fixture
def subpath_volume(docker_cli: DockerCLI, against_dockerd: bool) -> Iterator[str]:
    if against_dockerd:
        pytest.skip("dockerd 20.10 (API 1.41) has no volume subpath mounts (API 1.45)")
    name = f"{P}-subpath"
    docker_cli.ok("volume", "create", name)
    try:
        docker_cli.ok("run", "--rm", "-v", f"{name}:/v", "busybox", "sh", "-c", SUBPATH_SETUP)
        yield name
    finally:
        docker_cli("volume", "rm", "-f", name)


def _subpath_run(cli: DockerCLI, volume: str, subpath: str, *cmd: str,
                 ro: bool = False) -> subprocess.CompletedProcess[Any]:
    spec = f"type=volume,src={volume},dst=/d,volume-subpath={subpath}"
    return cli("run", "--rm", "--mount", spec + (",readonly" if ro else ""), "busybox", *cmd)


def test_volume_subpath_mounts_only_that_directory(
    docker_cli: DockerCLI, subpath_volume: str, daemon: BaseDaemon
) -> None:
    r = _subpath_run(docker_cli, subpath_volume, "sub/dir", "sh", "-c",
                     "cat /d/f; ls /d; echo more > /d/g")
    assert r.returncode == 0, describe(r)
    assert r.stdout == "in-subpath\nf\n"
    out = docker_cli.ok("run", "--rm", "-v", f"{subpath_volume}:/v", "busybox", "cat",
                        "/v/sub/dir/g")
    assert out == "more\n"
    # a symlink that stays inside the volume is followed; a single file can be mounted
    r = _subpath_run(docker_cli, subpath_volume, "inner/dir", "cat", "/d/f")
    assert r.returncode == 0 and r.stdout == "in-subpath\n", describe(r)
    r = _subpath_run(docker_cli, subpath_volume, "file", "cat", "/d")
    assert r.returncode == 0 and r.stdout == "a-file\n", describe(r)
    r = _subpath_run(docker_cli, subpath_volume, "sub", "touch", "/d/x", ro=True)
    assert r.returncode != 0 and "Read-only file system" in r.stderr, describe(r)
    # nothing of the subpath binds is left behind (released as the container goes)
    deadline = time.time() + 10
    while [p for p in mounts_of(daemon) if "/subpaths/" in p] and time.time() < deadline:
        time.sleep(0.1)
    assert not [p for p in mounts_of(daemon) if "/subpaths/" in p]


def _create_with_subpath(daemon: BaseDaemon, version: str, volume: str,
                         subpath: str) -> Any:
    body = {"Image": "busybox", "Cmd": ["cat", "/d/f"], "HostConfig": {"Mounts": [
        {"Type": "volume", "Source": volume, "Target": "/d",
         "VolumeOptions": {"Subpath": subpath}}]}}
    return daemon.api("POST", f"/{version}/containers/create", json.dumps(body).encode(),
                      headers={"Content-Type": "application/json"})


def test_volume_subpath_needs_api_1_45(daemon: BaseDaemon, subpath_volume: str) -> None:
    """Below API 1.45 dockerd refuses a Subpath (400) rather than mount the whole volume;
    an empty one is no subpath. (wharfd-only: dockerd 20.10 serves at most API 1.41.)"""
    before = daemon.api_json("GET", "/containers/json?all=1")
    old = _create_with_subpath(daemon, "v1.44", subpath_volume, "sub/dir")
    assert old.status == 400, old.text
    assert old.json()["message"] == "VolumeOptions.Subpath needs API v1.45 or newer"
    assert daemon.api_json("GET", "/containers/json?all=1") == before
    for version, subpath in (("v1.44", ""), ("v1.45", "sub/dir")):
        resp = _create_with_subpath(daemon, version, subpath_volume, subpath)
        assert resp.status == 201, (version, resp.text)
        daemon.api("DELETE", f"/containers/{resp.json()['Id']}?force=1")


def mounts_of(daemon: BaseDaemon) -> list[str]:
    return mounts_under(daemon.exec_root)


def test_volume_subpath_errors(docker_cli: DockerCLI, subpath_volume: str) -> None:
    r = _subpath_run(docker_cli, subpath_volume, "missing", "true")
    assert r.returncode != 0 and "cannot access path missing" in r.stderr, describe(r)
    for escaping in ("escape", "absolute", "escape/etc", "sub/../../x"):
        r = _subpath_run(docker_cli, subpath_volume, escaping, "true")
        assert r.returncode != 0, describe(r)
        if escaping == "sub/../../x":  # refused lexically at create
            assert "subpath must be a relative path within the volume" in r.stderr
        else:
            assert "path concatenation escapes the base directory" in r.stderr, describe(r)


def test_volume_subpath_through_docker_py(dclient: Any, subpath_volume: str,
                                          daemon: BaseDaemon) -> None:
    """docker-py 7.2 has no subpath argument: the Mount is the API's own JSON."""
    import docker

    client = docker.DockerClient(base_url=daemon.docker_host, version="1.45")
    try:
        mount = {"Type": "volume", "Source": subpath_volume, "Target": "/d",
                 "VolumeOptions": {"Subpath": "sub/dir"}}
        out = client.containers.run("busybox", ["cat", "/d/f"], remove=True, mounts=[mount])
        assert out == b"in-subpath\n"
        container = client.containers.create("busybox", ["true"], mounts=[
            {**mount, "VolumeOptions": {"Subpath": "escape"}}])
        try:
            with pytest.raises(docker.errors.APIError) as caught:
                container.start()
            assert caught.value.status_code == 400
            assert "escapes the base directory" in str(caught.value.explanation)
        finally:
            container.remove(force=True)
    finally:
        client.close()


def test_docker_cp_sees_only_the_subpath(docker_cli: DockerCLI, subpath_volume: str,
                                         tmp_path: Path) -> None:
    """`docker cp` of a created container shows the subpath at the mount point, not the
    whole volume, and a copy in lands in the subpath."""
    name = f"{P}-subpath-cp"
    docker_cli.ok("create", "--name", name, "--mount",
                  f"type=volume,src={subpath_volume},dst=/d,volume-subpath=sub/dir",
                  "busybox", "cat", "/d/copied")
    try:
        out = tmp_path / "out"
        docker_cli.ok("cp", f"{name}:/d", str(out))
        assert sorted(p.name for p in out.iterdir()) == ["f"]
        (tmp_path / "copied").write_text("copied in\n")
        docker_cli.ok("cp", str(tmp_path / "copied"), f"{name}:/d/")
        assert docker_cli.ok("start", "-a", name) == "copied in\n"
    finally:
        docker_cli("rm", "-f", name)
    assert docker_cli.ok("run", "--rm", "-v", f"{subpath_volume}:/v", "busybox", "cat",
                         "/v/sub/dir/copied") == "copied in\n"
