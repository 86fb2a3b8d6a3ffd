"""Issue 7 acceptance: the classic builder (``POST /build``) through the stock docker CLI 28.

``docker build`` runs with ``DOCKER_BUILDKIT=0`` (the CLI prints its deprecation notice on
stderr and uses ``POST /build?version=1``). Written against Docker's behaviour
(``pytest --against-dockerd`` runs the same tests on the real dockerd 20.10). Images are
only busybox (imported by the fixtures) and images built ``FROM scratch`` with the busybox
rootfs tar. Names carry a per-run prefix; every test removes the images and containers it
made.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.busybox import files_tar
from tests.harness.cli import DockerCLI, import_busybox
from tests.harness.daemon import BaseDaemon
from tests.harness.registry import LocalRegistry

pytestmark = pytest.mark.root

P = "wb" + secrets.token_hex(3)  # per-run prefix of every name made here
NOBUILDKIT = {"DOCKER_BUILDKIT": "0"}
HEX64 = re.compile(r"^[0-9a-f]{64}$")
SHORT_ID = re.compile(r"^Successfully built ([0-9a-f]{12})$", re.M)
STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$", re.M)


def describe(r: subprocess.CompletedProcess[Any]) -> str:
    return f"exit {r.returncode}\nstdout: {r.stdout!r}\nstderr: {r.stderr!r}"


def write_ctx(root: Path, files: dict[str, str | bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            p.write_bytes(data)
        else:
            p.write_text(data)
    return root


def build(cli: DockerCLI, ctx: Path | str, *args: str, input: str | bytes | None = None,
          timeout: float = 120) -> subprocess.CompletedProcess[Any]:
    return cli("build", *args, str(ctx), env=NOBUILDKIT, input=input, timeout=timeout)


def build_ok(cli: DockerCLI, ctx: Path | str, *args: str, input: str | None = None,
             timeout: float = 120) -> str:
    r = build(cli, ctx, *args, input=input, timeout=timeout)
    assert r.returncode == 0, describe(r)
    assert SHORT_ID.search(r.stdout), describe(r)
    return str(r.stdout)


def built_id(out: str) -> str:
    m = SHORT_ID.findall(out)
    assert m, out
    return str(m[-1])


def steps(out: str) -> list[tuple[str, str]]:
    """(instruction line, text up to the next step) for every ``Step N/M`` of a build."""
    found = list(STEP.finditer(out))
    res = []
    for i, m in enumerate(found):
        end = found[i + 1].start() if i + 1 < len(found) else len(out)
        res.append((m.group(3), out[m.end():end]))
    return res


def inspect_image(cli: DockerCLI, ref: str) -> dict[str, Any]:
    data = json.loads(cli.ok("image", "inspect", ref))
    assert isinstance(data, list) and len(data) == 1
    obj: dict[str, Any] = data[0]
    return obj


def run_out(cli: DockerCLI, image: str, *cmd: str, entrypoint: str | None = None) -> str:
    args = ["run", "--rm"]
    if entrypoint is not None:
        args += ["--entrypoint", entrypoint]
    return cli.ok(*args, image, *cmd)


def cat(cli: DockerCLI, image: str, path: str) -> str:
    return run_out(cli, image, path, entrypoint="cat")


def image_tags(cli: DockerCLI) -> set[str]:
    out = cli.ok("images", "--format", "{{.Repository}}:{{.Tag}}")
    return {line for line in out.split() if line.startswith(P)}


def container_ids(cli: DockerCLI) -> set[str]:
    return set(cli.ok("ps", "-aq", "--no-trunc").split())


@pytest.fixture
def images(docker_cli: DockerCLI) -> Iterator[list[str]]:
    """Image names/ids a test made; removed (forced) afterwards, last first."""
    made: list[str] = []
    yield made
    for ref in reversed(made):
        docker_cli("rmi", "-f", ref)


def tag(name: str) -> str:
    return f"{P}-{name}-{secrets.token_hex(2)}"


# ====================================================================== the seed
def test_base_image_from_scratch_rootfs_tar(docker_cli: DockerCLI, tmp_path: Path,
                                            busybox_tar: Path, images: list[str]) -> None:
    ctx = write_ctx(tmp_path, {"Dockerfile": 'FROM scratch\nADD rootfs.tar /\nCMD ["sh"]\n'})
    shutil.copyfile(busybox_tar, ctx / "rootfs.tar")
    name = tag("base")
    images.append(name)
    out = build_ok(docker_cli, ctx, "-t", name)
    assert [s for s, _ in steps(out)] == ["FROM scratch", "ADD rootfs.tar /", 'CMD ["sh"]']
    assert f"Successfully tagged {name}:latest" in out
    obj = inspect_image(docker_cli, name)
    assert len(obj["RootFS"]["Layers"]) == 1
    assert obj["Config"]["Cmd"] == ["sh"]
    assert obj["Id"].startswith("sha256:" + built_id(out))
    # the tar was extracted (not copied as a file) and the result runs
    assert run_out(docker_cli, name, "sh", "-c", "echo hi; test -x /bin/busybox; "
                   "test ! -e /rootfs.tar && echo extracted") == "hi\nextracted\n"


SEED = """\
FROM {base}
LABEL maintainer="zy@gmail.com" version="1.0" description="this is description"
RUN echo a > /a && echo b > /b
WORKDIR /test
WORKDIR demo
RUN pwd > /pwd.txt
ADD hello.php /
ADD test.tar.gz /
WORKDIR /root
ADD hello.php test/
COPY hello.php /
ENV MYSQL_VERSION 5.6
RUN echo "${{MYSQL_VERSION}}" > /v
VOLUME /var/lib/mysql
EXPOSE 27017
ENTRYPOINT ["/bin/echo"]
CMD ["hello docker"]
"""


def test_seed_dockerfile(docker_cli: DockerCLI, tmp_path: Path, busybox_tar: Path,
                         images: list[str]) -> None:
    # the base image itself is built FROM scratch, as the seed does it
    base_ctx = write_ctx(tmp_path / "base", {"Dockerfile": "FROM scratch\nADD rootfs.tar /\n"})
    shutil.copyfile(busybox_tar, base_ctx / "rootfs.tar")
    base = tag("seedbase")
    images.append(base)
    build_ok(docker_cli, base_ctx, "-t", base)

    ctx = write_ctx(tmp_path / "seed", {
        "Dockerfile": SEED.format(base=base),
        "hello.php": "<?php echo 'hello'; ?>\n",
        "test.tar.gz": files_tar({"inside/t.txt": b"from the tarball\n"}, gz=True),
    })
    name = tag("seed")
    images.append(name)
    out = build_ok(docker_cli, ctx, "-t", name)
    st = steps(out)
    assert len(st) == 17 and all(f"Step {i}/17 : " in out for i in range(1, 18)), out
    assert st[0][0] == f"FROM {base}"
    assert st[12][0] == 'RUN echo "${MYSQL_VERSION}" > /v'
    assert re.search(r"^ ---> Running in [0-9a-f]{12}$", st[2][1], re.M), st[2][1]
    assert re.search(r"^Removing intermediate container [0-9a-f]{12}$", st[2][1], re.M)
    assert f"Successfully tagged {name}:latest" in out

    assert cat(docker_cli, name, "/pwd.txt") == "/test/demo\n"
    assert cat(docker_cli, name, "/v") == "5.6\n"
    assert cat(docker_cli, name, "/a") + cat(docker_cli, name, "/b") == "a\nb\n"
    assert cat(docker_cli, name, "/inside/t.txt") == "from the tarball\n"
    files = run_out(docker_cli, name, "-c", "ls /hello.php /root/test/hello.php; "
                    "test -e /test.tar.gz || echo no-tarball; test -d /test/demo && echo dir",
                    entrypoint="sh")
    assert files.split() == ["/hello.php", "/root/test/hello.php", "no-tarball", "dir"]
    # ENTRYPOINT + CMD: the CMD is the default argument list
    assert run_out(docker_cli, name) == "hello docker\n"
    assert run_out(docker_cli, name, "x") == "x\n"

    cfg = inspect_image(docker_cli, name)["Config"]
    assert cfg["Labels"] == {"maintainer": "zy@gmail.com", "version": "1.0",
                             "description": "this is description"}
    assert cfg["ExposedPorts"] == {"27017/tcp": {}}
    assert cfg["Volumes"] == {"/var/lib/mysql": {}}
    assert cfg["WorkingDir"] == "/root"
    assert cfg["Entrypoint"] == ["/bin/echo"] and cfg["Cmd"] == ["hello docker"]
    assert "MYSQL_VERSION=5.6" in cfg["Env"]


# ====================================================================== request options
def test_several_tags(docker_cli: DockerCLI, tmp_path: Path, images: list[str]) -> None:
    ctx = write_ctx(tmp_path, {"Dockerfile": "FROM busybox\nENV T=1\n"})
    a, b = tag("a") + ":v1", tag("b")
    images += [a, b]
    out = build_ok(docker_cli, ctx, "-t", a, "-t", b)
    assert f"Successfully tagged {a}\n" in out and f"Successfully tagged {b}:latest\n" in out
    ida, idb = inspect_image(docker_cli, a)["Id"], inspect_image(docker_cli, b)["Id"]
    assert ida == idb and ida.startswith("sha256:" + built_id(out))


def test_build_args(docker_cli: DockerCLI, tmp_path: Path, images: list[str]) -> None:
    ctx = write_ctx(tmp_path, {"Dockerfile": """\
ARG BASE=nosuchimage
FROM ${BASE} AS first
ARG X
ARG Y=ydefault
ARG Z
ARG W=wdefault
RUN echo "x=$X y=$Y z=$Z w=$W base=$BASE" > /args
FROM busybox
ARG BASE
COPY --from=first /args /args
RUN echo "x=$X base=$BASE" >> /args
"""})
    name = tag("args")
    images.append(name)
    r = docker_cli("build", "-t", name, "--build-arg", "BASE=busybox", "--build-arg", "X=1",
                   "--build-arg", "Z", "--build-arg", "W", "--build-arg", "UNUSED=9", str(ctx),
                   env={**NOBUILDKIT, "Z": "fromenv"}, timeout=120)
    assert r.returncode == 0, describe(r)
    # ARG before FROM is usable in FROM only; inside a stage it must be declared again;
    # --build-arg Z takes the CLI's environment; --build-arg W (unset there) keeps the default
    assert cat(docker_cli, name, "/args") == (
        "x=1 y=ydefault z=fromenv w=wdefault base=\n"
        "x= base=busybox\n")
    assert "Step 2/11 : FROM ${BASE} AS first\n ---> " in r.stdout, describe(r)
    assert "[Warning] One or more build-args [UNUSED] were not consumed" in r.stdout, describe(r)


def test_label_flag(docker_cli: DockerCLI, tmp_path: Path, images: list[str]) -> None:
    ctx = write_ctx(tmp_path, {"Dockerfile": "FROM busybox\nLABEL in.file=1 over=file\n"})
    name = tag("label")
    images.append(name)
    out = build_ok(docker_cli, ctx, "-t", name, "--label", "from.cli=yes", "--label", "over=cli")
    labels = inspect_image(docker_cli, name)["Config"]["Labels"]
    assert labels == {"in.file": "1", "from.cli": "yes", "over": "cli"}
    # the classic builder applies them as LABEL steps after the Dockerfile's, one a label
    st = [s for s, _ in steps(out)]
    # (moby builder/dockerfile/builder.go buildLabelOptions: sorted by key)
    assert st[1:] == ["LABEL in.file=1 over=file", "LABEL from.cli=yes", "LABEL over=cli"], out


MULTISTAGE = """\
FROM busybox AS builder
RUN mkdir /out && echo built > /out/artifact && echo zero > /zero
FROM busybox AS base
RUN echo base > /base
FROM base AS final
COPY --from=builder /out /out
COPY --from=0 /zero /zero0
COPY --from=busybox /bin/busybox /copied-busybox
RUN echo final > /final
FROM busybox AS after
RUN exit 2
"""


def test_multistage_target_and_copy_from(docker_cli: DockerCLI, tmp_path: Path,
                                         images: list[str]) -> None:
    ctx = write_ctx(tmp_path, {"Dockerfile": MULTISTAGE})
    name = tag("final")
    images.append(name)
    out = build_ok(docker_cli, ctx, "-t", name, "--target", "final")
    # the stage after the target is never run
    assert "RUN exit 2" not in out
    assert run_out(docker_cli, name, "sh", "-c",
                   "cat /out/artifact /zero0 /base /final; cmp /copied-busybox /bin/busybox "
                   "&& echo same") == "built\nzero\nbase\nfinal\nsame\n"
    # without --target the last stage is the image, and its RUN fails the build
    r = build(docker_cli, ctx)
    assert r.returncode == 2, describe(r)
    assert "The command '/bin/sh -c exit 2' returned a non-zero code: 2" in r.stderr
    # an unknown target
    r = build(docker_cli, ctx, "--target", "nosuch")
    assert r.returncode == 1 and "failed to reach build target nosuch in Dockerfile" in (
        r.stderr), describe(r)


def test_target_skips_unneeded_stage(docker_cli: DockerCLI, tmp_path: Path,
                                     images: list[str], against_dockerd: bool) -> None:
    """Issue 7 item 4: a stage the target does not depend on is skipped, even before it."""
    if against_dockerd:
        pytest.skip("dockerd 20.10's classic builder runs every stage up to the target "
                    "(BuildKit skips); issue 7 asks wharfd to skip the ones not needed")
    ctx = write_ctx(tmp_path, {"Dockerfile": """\
FROM busybox AS broken
RUN exit 1
FROM busybox AS wanted
RUN echo wanted > /w
"""})
    name = tag("skip")
    images.append(name)
    out = build_ok(docker_cli, ctx, "-t", name, "--target", "wanted")
    assert "RUN exit 1" not in out
    assert cat(docker_cli, name, "/w") == "wanted\n"


def test_copy_chown(docker_cli: DockerCLI, tmp_path: Path, images: list[str]) -> None:
    ctx = write_ctx(tmp_path, {"Dockerfile": """\
FROM busybox
COPY --chown=1000:1000 f /numeric
COPY --chown=user f /named
COPY --chown=nobody:user d /dir
ADD --chown=1000 f /added
COPY f /plain
""", "f": "f\n", "d/inner": "i\n"})
    name = tag("chown")
    images.append(name)
    build_ok(docker_cli, ctx, "-t", name)
    out = run_out(docker_cli, name, "stat", "-c", "%n %u:%g",
                  "/numeric", "/named", "/dir", "/dir/inner", "/added", "/plain",
                  entrypoint="busybox")
    assert out.splitlines() == ["/numeric 1000:1000", "/named 1000:1000", "/dir 65534:1000",
                                "/dir/inner 65534:1000", "/added 1000:1000", "/plain 0:0"]


def test_copy_globs_and_destination_rules(docker_cli: DockerCLI, tmp_path: Path,
                                          images: list[str]) -> None:
    ctx = write_ctx(tmp_path, {"Dockerfile": """\
FROM busybox
COPY *.txt /globbed/
COPY a.txt /renamed
COPY a.txt /newdir/
COPY dir /dircontents
COPY dir/ /dircontents2/
COPY ?.md /q/
COPY [ab].txt /cls/
WORKDIR /wd
COPY a.txt rel/
""", "a.txt": "A\n", "b.txt": "B\n", "c.md": "C\n", "dir/x": "X\n", "dir/sub/y": "Y\n"})
    name = tag("globs")
    images.append(name)
    build_ok(docker_cli, ctx, "-t", name)
    out = run_out(docker_cli, name, "-c",
                  "for d in /globbed /newdir /dircontents /dircontents2 /q /cls /wd; do "
                  "find $d -type f | sort; done; test -f /renamed && cat /renamed",
                  entrypoint="sh")
    assert out.split() == [
        "/globbed/a.txt", "/globbed/b.txt", "/newdir/a.txt",
        "/dircontents/sub/y", "/dircontents/x", "/dircontents2/sub/y", "/dircontents2/x",
        "/q/c.md", "/cls/a.txt", "/cls/b.txt", "/wd/rel/a.txt", "A"]

    # several sources need a directory destination ending with /
    write_ctx(tmp_path, {"Dockerfile": "FROM busybox\nCOPY *.txt /notadir\n"})
    r = build(docker_cli, tmp_path)
    assert r.returncode == 1, describe(r)
    assert ("When using COPY with more than one source file, the destination must be a "
            "directory and end with a /") in r.stderr
    # a glob matching nothing
    write_ctx(tmp_path, {"Dockerfile": "FROM busybox\nCOPY nomatch* /x/\n"})
    r = build(docker_cli, tmp_path)
    assert r.returncode == 1 and "no source files were specified" in r.stderr, describe(r)
    # a missing file
    write_ctx(tmp_path, {"Dockerfile": "FROM busybox\nCOPY missing.txt /x/\n"})
    r = build(docker_cli, tmp_path)
    assert r.returncode == 1, describe(r)
    assert ("COPY failed: file not found in build context or excluded by .dockerignore: "
            "stat missing.txt: file does not exist") in r.stderr, describe(r)


def test_dockerignore(docker_cli: DockerCLI, tmp_path: Path, images: list[str]) -> None:
    ctx = write_ctx(tmp_path, {
        "Dockerfile": "FROM busybox\nCOPY . /ctx/\n",
        ".dockerignore": "# comment\n**/*.log\nsecret*\n!secret-ok.txt\ntmp/\n"
                         "Dockerfile\n.dockerignore\n",
        "a.log": "x", "sub/deep/b.log": "x", "sub/deep/keep.txt": "k",
        "keep.txt": "k", "secret1": "s", "secret-ok.txt": "ok", "tmp/x": "t", "tmpfile": "t",
    })
    name = tag("ignore")
    images.append(name)
    build_ok(docker_cli, ctx, "-t", name)
    out = run_out(docker_cli, name, "/ctx", "-type", "f", entrypoint="find")
    assert sorted(out.split()) == ["/ctx/keep.txt", "/ctx/secret-ok.txt",
                                   "/ctx/sub/deep/keep.txt", "/ctx/tmpfile"]


def test_dockerfile_in_subdirectory(docker_cli: DockerCLI, tmp_path: Path,
                                    images: list[str]) -> None:
    ctx = write_ctx(tmp_path, {
        "build/Dockerfile.dev": "FROM busybox\nCOPY top.txt /\nCOPY build/inner.txt /\n",
        "top.txt": "top\n", "build/inner.txt": "inner\n",
    })
    name = tag("subdir")
    images.append(name)
    build_ok(docker_cli, ctx, "-t", name, "-f", str(ctx / "build" / "Dockerfile.dev"))
    assert run_out(docker_cli, name, "/top.txt", "/inner.txt", entrypoint="cat") == (
        "top\ninner\n")


def test_dockerfile_on_stdin(docker_cli: DockerCLI, tmp_path: Path, images: list[str]) -> None:
    ctx = write_ctx(tmp_path, {"data.txt": "data\n"})
    name = tag("stdin")
    images.append(name)
    build_ok(docker_cli, ctx, "-t", name, "-f", "-",
             input="FROM busybox\nCOPY data.txt /\nRUN ls -a / > /listing\n")
    assert cat(docker_cli, name, "/data.txt") == "data\n"
    # the CLI's .dockerfile.<hex> is not left in the image
    assert ".dockerfile" not in cat(docker_cli, name, "/listing")


# ====================================================================== cache
CACHED = """\
FROM busybox
ENV A=1
RUN echo one > /one
COPY data.txt /
RUN cat /data.txt > /copy-of-data
LABEL done=yes
"""


def test_cache_hits_and_invalidation(docker_cli: DockerCLI, tmp_path: Path,
                                     images: list[str]) -> None:
    ctx = write_ctx(tmp_path, {"Dockerfile": CACHED, "data.txt": "v1\n"})
    name = tag("cache")
    images.append(name)
    out1 = build_ok(docker_cli, ctx, "-t", name)
    out2 = build_ok(docker_cli, ctx, "-t", name)
    st = steps(out2)
    assert len(st) == 6
    assert " ---> Using cache" not in st[0][1]
    for line, text in st[1:]:
        assert " ---> Using cache\n" in text, (line, out2)
        assert "Running in" not in text
    assert built_id(out1) == built_id(out2)

    # the changed file invalidates its COPY and every later step, not the earlier ones
    (ctx / "data.txt").write_text("v2\n")
    out3 = build_ok(docker_cli, ctx, "-t", name)
    hits = [" ---> Using cache\n" in text for _, text in steps(out3)[1:]]
    assert hits == [True, True, False, False, False], out3
    assert built_id(out3) != built_id(out1)
    assert cat(docker_cli, name, "/copy-of-data") == "v2\n"

    # --no-cache: nothing from the cache
    out4 = build_ok(docker_cli, ctx, "-t", name, "--no-cache")
    assert "Using cache" not in out4
    assert all(" ---> Running in " in text for line, text in steps(out4)
               if line.startswith("RUN ")), out4


def test_cache_survives_restart_and_prune(fresh_daemon: BaseDaemon, busybox_tar: Path,
                                          tmp_path: Path) -> None:
    cli = DockerCLI(fresh_daemon)
    import_busybox(fresh_daemon, busybox_tar)
    ctx = write_ctx(tmp_path, {"Dockerfile": CACHED, "data.txt": "v1\n"})
    out1 = build_ok(cli, ctx, "-t", "cached")
    fresh_daemon.restart()
    out2 = build_ok(cli, ctx, "-t", "cached")
    assert out2.count(" ---> Using cache\n") == 5, out2
    assert built_id(out1) == built_id(out2)

    r = cli("builder", "prune", "-f")
    assert r.returncode == 0 and "Total reclaimed space:" in r.stdout, describe(r)


def test_cache_after_rmi_and_prune(docker_cli: DockerCLI, tmp_path: Path,
                                   images: list[str]) -> None:
    """Removing the image (and its untagged parents) drops the classic cache."""
    ctx = write_ctx(tmp_path, {"Dockerfile": f"FROM busybox\nRUN echo {P} > /p\n"})
    name = tag("prune")
    images.append(name)
    build_ok(docker_cli, ctx, "-t", name)
    docker_cli.ok("rmi", name)
    r = docker_cli("builder", "prune", "-f")
    assert r.returncode == 0 and "Total reclaimed space:" in r.stdout, describe(r)
    out = build_ok(docker_cli, ctx, "-t", name)
    assert "Using cache" not in out and " ---> Running in " in out


def test_builder_prune_drops_cache(docker_cli: DockerCLI, tmp_path: Path,
                                   images: list[str], against_dockerd: bool) -> None:
    """Issue 7 item 6: ``docker builder prune`` empties the classic cache."""
    if against_dockerd:
        pytest.skip("dockerd 20.10's classic cache is the parent chain of the images it "
                    "keeps; builder prune only empties BuildKit's cache, the next build "
                    "still hits. Issue 7 asks wharfd's prune to drop the classic cache")
    ctx = write_ctx(tmp_path, {"Dockerfile": f"FROM busybox\nRUN echo {P}-prune > /p\n"})
    name = tag("prune2")
    images.append(name)
    build_ok(docker_cli, ctx, "-t", name)
    assert "Using cache" in build_ok(docker_cli, ctx, "-t", name)
    r = docker_cli("builder", "prune", "-f")
    assert r.returncode == 0 and "Total reclaimed space:" in r.stdout, describe(r)
    out = build_ok(docker_cli, ctx, "-t", name)
    assert "Using cache" not in out and " ---> Running in " in out


# ====================================================================== containers of RUN
def test_rm_and_force_rm(docker_cli: DockerCLI, tmp_path: Path, images: list[str]) -> None:
    ctx = write_ctx(tmp_path / "ok", {"Dockerfile": f"FROM busybox\nRUN echo {P}\n"})
    bad = write_ctx(tmp_path / "bad", {"Dockerfile": "FROM busybox\nRUN exit 4\n"})
    made: set[str] = set()
    try:
        before = container_ids(docker_cli)
        # default: the RUN container is removed
        out = build_ok(docker_cli, ctx, "--no-cache")
        images.append(built_id(out))
        assert container_ids(docker_cli) == before
        # --rm=false: it stays, exited
        out = build_ok(docker_cli, ctx, "--no-cache", "--rm=false")
        images.append(built_id(out))
        left = container_ids(docker_cli) - before
        made |= left
        assert len(left) == 1, out
        assert "Removing intermediate container" not in out
        state = json.loads(docker_cli.ok("inspect", left.pop()))[0]["State"]
        assert state["Status"] == "exited" and state["ExitCode"] == 0
        # a failing RUN: its container stays by default, --force-rm removes it
        before = container_ids(docker_cli)
        r = build(docker_cli, bad)
        assert r.returncode == 4, describe(r)
        left = container_ids(docker_cli) - before
        made |= left
        assert len(left) == 1
        before = container_ids(docker_cli)
        r = build(docker_cli, bad, "--force-rm")
        assert r.returncode == 4, describe(r)
        assert container_ids(docker_cli) == before
    finally:
        for c in made:
            docker_cli("rm", "-f", c)


def test_quiet_and_iidfile(docker_cli: DockerCLI, tmp_path: Path, images: list[str]) -> None:
    ctx = write_ctx(tmp_path / "ctx", {"Dockerfile": "FROM busybox\nRUN echo quiet\n"})
    r = build(docker_cli, ctx, "-q", "--no-cache")
    assert r.returncode == 0, describe(r)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}\n", r.stdout), describe(r)
    images.append(r.stdout.strip())
    assert inspect_image(docker_cli, r.stdout.strip())["Id"] == r.stdout.strip()

    iid = tmp_path / "iid"
    out = build_ok(docker_cli, ctx, "--iidfile", str(iid))
    text = iid.read_text()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", text)
    assert text.startswith("sha256:" + built_id(out))


def test_run_options(docker_cli: DockerCLI, tmp_path: Path, images: list[str]) -> None:
    """--network none, --add-host, --shm-size and --memory apply to RUN containers."""
    ctx = write_ctx(tmp_path, {"Dockerfile": """\
FROM busybox
RUN ls /sys/class/net | sort > /net
RUN grep -w myhost /etc/hosts > /hosts
RUN df -k /dev/shm | tail -n 1 | awk '{print $2}' > /shm
RUN (cat /sys/fs/cgroup/memory/memory.limit_in_bytes || cat /sys/fs/cgroup/memory.max) > /mem
"""})
    name = tag("runopts")
    images.append(name)
    build_ok(docker_cli, ctx, "-t", name, "--network", "none", "--add-host", "myhost:10.1.2.3",
             "--shm-size", "70m", "--memory", "64m", "--no-cache")
    assert cat(docker_cli, name, "/net") == "lo\n"
    assert cat(docker_cli, name, "/hosts").split() == ["10.1.2.3", "myhost"]
    assert cat(docker_cli, name, "/shm") == f"{70 * 1024}\n"
    assert cat(docker_cli, name, "/mem") == f"{64 << 20}\n"


# ====================================================================== failures
def test_failing_run_exit_code_and_no_tag(docker_cli: DockerCLI, tmp_path: Path) -> None:
    ctx = write_ctx(tmp_path, {"Dockerfile": "FROM busybox\nRUN echo before\n"
                                             "RUN echo to-stderr >&2; exit 3\nRUN echo after\n"})
    name = tag("fail")
    before = image_tags(docker_cli)
    r = build(docker_cli, ctx, "-t", name)
    assert r.returncode == 3, describe(r)
    assert ("The command '/bin/sh -c echo to-stderr >&2; exit 3' returned a non-zero code: 3"
            in r.stderr), describe(r)
    assert "to-stderr" in r.stdout and "Step 3/4" in r.stdout and "Step 4/4" not in r.stdout
    assert "Successfully" not in r.stdout
    assert image_tags(docker_cli) == before


@pytest.mark.parametrize(("dockerfile", "message"), [
    ("FROMM busybox\n", "dockerfile parse error line 1: unknown instruction: FROMM"),
    ("FROM busybox\n\nRUNN x\n", "dockerfile parse error line 3: unknown instruction: RUNN"),
    ("", "the Dockerfile (Dockerfile) cannot be empty"),
    ("RUN true\n", "no build stage in current context"),
    # not a stage: an image name, whose pull fails here (no internet)
    ("FROM busybox\nCOPY --from=nosuchstage /x /y\n", "invalid from flag value nosuchstage: "),
    ("FROM busybox\nEXPOSE notaport\n", "Invalid containerPort: notaport"),
])
def test_dockerfile_errors(docker_cli: DockerCLI, tmp_path: Path, dockerfile: str,
                           message: str) -> None:
    ctx = write_ctx(tmp_path, {"Dockerfile": dockerfile})
    name = tag("bad")
    before = image_tags(docker_cli)
    r = build(docker_cli, ctx, "-t", name)
    assert r.returncode == 1 and message in r.stderr, describe(r)
    assert image_tags(docker_cli) == before


def test_missing_dockerfile(docker_cli: DockerCLI, tmp_path: Path) -> None:
    # a context without a Dockerfile, as a tar on stdin (the CLI cannot check it)
    r = docker_cli("build", "-", env=NOBUILDKIT, input=files_tar({"x.txt": b"x"}))
    err = r.stderr.decode()
    assert r.returncode == 1 and "Cannot locate specified Dockerfile: Dockerfile" in err, err
    r = docker_cli("build", "-f", "other.df", "-", env=NOBUILDKIT,
                   input=files_tar({"Dockerfile": b"FROM busybox\n"}))
    err = r.stderr.decode()
    assert r.returncode == 1 and "Cannot locate specified Dockerfile: other.df" in err, err


def test_context_tar_on_stdin(docker_cli: DockerCLI, images: list[str]) -> None:
    name = tag("tarctx")
    images.append(name)
    ctx = files_tar({"Dockerfile": b"FROM busybox\nCOPY f /\n", "f": b"in the tar\n"}, gz=True)
    r = docker_cli("build", "-t", name, "-", env=NOBUILDKIT, input=ctx)
    assert r.returncode == 0, r.stderr
    assert cat(docker_cli, name, "/f") == "in the tar\n"


# ====================================================================== history, language
def test_history_created_by(docker_cli: DockerCLI, tmp_path: Path, images: list[str]) -> None:
    ctx = write_ctx(tmp_path, {"Dockerfile": """\
FROM busybox
ENV A=1
ARG X
RUN echo $X > /x
WORKDIR /test/demo
COPY file /
CMD ["sh", "-c", "echo hi"]
""", "file": "content\n"})
    name = tag("hist")
    images.append(name)
    build_ok(docker_cli, ctx, "-t", name, "--build-arg", "X=2")
    lines = docker_cli.ok("history", "--no-trunc", "--format", "{{.CreatedBy}}",
                          name).splitlines()
    assert len(lines) == 7, lines  # 6 steps + the entry of the imported busybox
    assert lines[0] == '/bin/sh -c #(nop)  CMD ["sh" "-c" "echo hi"]'
    assert re.fullmatch(r"/bin/sh -c #\(nop\) COPY file:[0-9a-f]{64} in / ", lines[1]), lines[1]
    assert lines[2] == "/bin/sh -c #(nop) WORKDIR /test/demo"
    assert lines[3] == "|1 X=2 /bin/sh -c echo $X > /x"
    assert lines[4] == "/bin/sh -c #(nop)  ARG X"
    assert lines[5] == "/bin/sh -c #(nop)  ENV A=1"
    hist = json.loads(docker_cli.ok("image", "inspect", "--format", "{{json .RootFS}}", name))
    assert len(hist["Layers"]) == 4  # busybox + RUN + WORKDIR + COPY


def test_onbuild_triggers(docker_cli: DockerCLI, tmp_path: Path, images: list[str]) -> None:
    parent_ctx = write_ctx(tmp_path / "parent", {"Dockerfile": """\
FROM busybox
ONBUILD COPY trigger.txt /from-child-context.txt
ONBUILD RUN echo triggered > /trig
"""})
    parent = tag("onbuild")
    images.append(parent)
    out = build_ok(docker_cli, parent_ctx, "-t", parent)
    assert "\ntriggered\n" not in out  # the triggers do not run in the parent
    assert inspect_image(docker_cli, parent)["Config"]["OnBuild"] == [
        "COPY trigger.txt /from-child-context.txt", "RUN echo triggered > /trig"]
    child_ctx = write_ctx(tmp_path / "child", {
        "Dockerfile": f"FROM {parent}\nRUN cat /trig\n", "trigger.txt": "child ctx\n"})
    child = tag("child")
    images.append(child)
    out = build_ok(docker_cli, child_ctx, "-t", child)
    assert "# Executing 2 build triggers" in out, out
    assert run_out(docker_cli, child, "/trig", "/from-child-context.txt",
                   entrypoint="cat") == "triggered\nchild ctx\n"
    assert inspect_image(docker_cli, child)["Config"].get("OnBuild") in (None, [])


def test_language_directives(docker_cli: DockerCLI, tmp_path: Path, images: list[str]) -> None:
    """escape directive, line continuations, comments, SHELL, USER, HEALTHCHECK,
    STOPSIGNAL, MAINTAINER, ENV forms and variable substitution."""
    ctx = write_ctx(tmp_path, {"Dockerfile": """\
# escape=`
# a comment before FROM
FROM busybox
MAINTAINER someone <someone@example.com>
ENV A=hello B="two words" `
    C=c
ENV OLD legacy form
ENV LIT=`$A
RUN echo "$A|$B|$C|$OLD|$LIT" > /env && `
# a comment inside a continuation
    echo "${UNSET:-dflt}|${A:-x}|${A:+alt}|${UNSET:+alt}|" > /subst
WORKDIR /w/${A}
COPY ${A}.txt ./
LABEL sub=${A}_x
SHELL ["/bin/sh", "-c", "echo shell-used > /shell; eval \\"$0\\""]
RUN echo run
HEALTHCHECK --interval=5s --timeout=3s --retries=2 CMD echo ok
STOPSIGNAL SIGUSR1
USER 1000:1000
RUN id -u > /tmp/uid
""", "hello.txt": "hello file\n"})
    name = tag("lang")
    images.append(name)
    build_ok(docker_cli, ctx, "-t", name)
    assert cat(docker_cli, name, "/env") == "hello|two words|c|legacy form|$A\n"
    assert cat(docker_cli, name, "/subst") == "dflt|hello|alt||\n"
    assert cat(docker_cli, name, "/w/hello/hello.txt") == "hello file\n"
    assert cat(docker_cli, name, "/shell") == "shell-used\n"
    assert cat(docker_cli, name, "/tmp/uid") == "1000\n"
    obj = inspect_image(docker_cli, name)
    cfg = obj["Config"]
    assert obj["Author"] == "someone <someone@example.com>"
    assert cfg["Labels"] == {"sub": "hello_x"}
    assert cfg["WorkingDir"] == "/w/hello"
    assert cfg["User"] == "1000:1000" and cfg["StopSignal"] == "SIGUSR1"
    assert cfg["Healthcheck"] == {"Test": ["CMD-SHELL", "echo ok"], "Interval": 5_000_000_000,
                                  "Timeout": 3_000_000_000, "Retries": 2}
    assert cfg["Shell"] == ["/bin/sh", "-c", 'echo shell-used > /shell; eval "$0"']


# ====================================================================== --pull

def test_pull_flag(docker_cli: DockerCLI, registry: LocalRegistry, tmp_path: Path,
                   images: list[str]) -> None:
    remote = f"localhost:5000/{P}-pullbase:latest"
    docker_cli.ok("tag", "busybox", remote)
    docker_cli.ok("push", remote, timeout=120)
    # the registry's copy changes: a new image under the same name
    v2 = write_ctx(tmp_path / "v2", {"Dockerfile": "FROM busybox\nRUN echo v2 > /version\n"})
    build_ok(docker_cli, v2, "-t", remote)
    docker_cli.ok("push", remote, timeout=120)
    v2_id = inspect_image(docker_cli, remote)["Id"]
    # locally the name goes back to busybox
    docker_cli.ok("tag", "busybox", remote)
    images.append(remote)
    ctx = write_ctx(tmp_path / "ctx", {"Dockerfile": f"FROM {remote}\nRUN cat /version\n"})
    # without --pull the local image is used (no /version there)
    r = build(docker_cli, ctx)
    assert r.returncode == 1, describe(r)
    # with --pull the registry's one
    t0 = time.monotonic()
    out = build_ok(docker_cli, ctx, "--pull", timeout=120)
    assert time.monotonic() - t0 < 120
    assert "Pulling from" in out and "v2\n" in out, out
    assert inspect_image(docker_cli, remote)["Id"] == v2_id
    images.append(built_id(out))
