"""Issue 7 acceptance: the classic builder through docker-py 7 (``images.build`` and the
low-level ``api.build``), which always uses ``POST /build`` (never BuildKit).

Checked against the real dockerd 20.10 with ``pytest --against-dockerd``.
"""

from __future__ import annotations

import io
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.busybox import files_tar

docker = pytest.importorskip("docker")

pytestmark = pytest.mark.root

P = "wbp" + secrets.token_hex(3)


def context_tar(files: dict[str, str]) -> io.BytesIO:
    return io.BytesIO(files_tar(files))


def log_text(logs: Any) -> str:
    return "".join(chunk.get("stream", "") for chunk in logs)


def tag(name: str) -> str:
    return f"{P}-{name}-{secrets.token_hex(2)}"


@pytest.fixture
def images(dclient: Any) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for ref in reversed(made):
        try:
            dclient.images.remove(ref, force=True)
        except docker.errors.APIError:
            pass


def run(dclient: Any, image: str, *cmd: str) -> str:
    out = dclient.containers.run(image, list(cmd), remove=True, entrypoint=[])
    return str(out.decode())


def test_images_build_fileobj(dclient: Any, images: list[str]) -> None:
    name = tag("fo")
    images.append(name)
    ctx = context_tar({
        "Dockerfile": """\
FROM busybox AS first
ARG X
ARG Y=ydef
RUN echo "x=$X y=$Y" > /args
FROM busybox AS second
COPY --from=first /args /args
COPY f.txt /
RUN echo second > /second
FROM busybox AS third
RUN exit 7
""",
        "f.txt": "file\n",
    })
    image, logs = dclient.images.build(
        fileobj=ctx, custom_context=True, tag=name, buildargs={"X": "1"}, target="second",
        nocache=True, rm=True, labels={"built.by": "docker-py"})
    logs = list(logs)
    text = log_text(logs)
    assert image.id.startswith("sha256:") and f"{name}:latest" in image.tags
    assert "Step 1/" in text and "Successfully built " + image.short_id[7:] in text
    assert "Using cache" not in text and "exit 7" not in text
    # the aux message carries the full ID
    assert {"aux": {"ID": image.id}} in logs
    assert image.labels == {"built.by": "docker-py"}
    assert run(dclient, name, "cat", "/args", "/f.txt", "/second") == (
        "x=1 y=ydef\nfile\nsecond\n")
    # the same again: every step from the cache, same image
    again, logs2 = dclient.images.build(fileobj=context_tar({
        "Dockerfile": "FROM busybox\nRUN echo cached > /c\n"}), custom_context=True, tag=name)
    images.append(again.id)
    again2, logs3 = dclient.images.build(fileobj=context_tar({
        "Dockerfile": "FROM busybox\nRUN echo cached > /c\n"}), custom_context=True, tag=name)
    assert again2.id == again.id
    assert "Using cache" in log_text(logs3) and "Using cache" not in log_text(logs2)


def test_images_build_path_with_dockerignore(dclient: Any, tmp_path: Path,
                                             images: list[str]) -> None:
    (tmp_path / "Dockerfile").write_text("FROM busybox\nCOPY . /ctx/\n")
    (tmp_path / ".dockerignore").write_text("*.log\n**/secret*\n!keep/secret-ok\n")
    for rel in ("a.txt", "b.log", "deep/secret1", "keep/secret-ok", "deep/x.txt"):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(rel)
    name = tag("path")
    images.append(name)
    image, _ = dclient.images.build(path=str(tmp_path), tag=name)
    out = run(dclient, image.id, "find", "/ctx", "-type", "f")
    assert sorted(out.split()) == ["/ctx/.dockerignore", "/ctx/Dockerfile", "/ctx/a.txt",
                                   "/ctx/deep/x.txt", "/ctx/keep/secret-ok"]


def test_build_error_on_failing_run(dclient: Any) -> None:
    name = tag("err")
    before = {t for i in dclient.images.list() for t in i.tags}
    with pytest.raises(docker.errors.BuildError) as err:
        dclient.images.build(fileobj=context_tar({
            "Dockerfile": "FROM busybox\nRUN echo building; exit 3\n"}), custom_context=True,
            tag=name)
    e = err.value
    assert "The command '/bin/sh -c echo building; exit 3' returned a non-zero code: 3" in (
        e.msg)
    log = list(e.build_log)
    assert any("building" in c.get("stream", "") for c in log)
    assert log[-1]["errorDetail"] == {
        "code": 3,
        "message": "The command '/bin/sh -c echo building; exit 3' returned a non-zero code: 3"}
    assert {t for i in dclient.images.list() for t in i.tags} == before
    # a parse error is an API error before any output
    with pytest.raises(docker.errors.APIError) as api_err:
        dclient.images.build(fileobj=context_tar({"Dockerfile": "FROMM busybox\n"}),
                             custom_context=True, tag=name)
    assert "dockerfile parse error line 1: unknown instruction: FROMM" in str(api_err.value)


def test_api_build_stream_shape(dclient: Any, images: list[str]) -> None:
    name = tag("stream")
    images.append(name)
    msgs = list(dclient.api.build(fileobj=context_tar({
        "Dockerfile": "FROM busybox\nENV A=1\nRUN echo out-of-run\n"}), custom_context=True,
        tag=name, decode=True, nocache=True))
    assert all(isinstance(m, dict) for m in msgs)
    text = log_text(msgs)
    assert re.search(r"^Step 1/3 : FROM busybox\n ---> [0-9a-f]{12}\n", text, re.M), text
    assert "Step 2/3 : ENV A=1\n" in text and "Step 3/3 : RUN echo out-of-run\n" in text
    assert re.search(r"^ ---> Running in [0-9a-f]{12}\nout-of-run\n", text, re.M), text
    aux = [m["aux"] for m in msgs if "aux" in m]
    assert len(aux) == 1 and re.fullmatch(r"sha256:[0-9a-f]{64}", aux[0]["ID"])
    streams = [m["stream"] for m in msgs if "stream" in m]
    assert streams[-2:] == [f"Successfully built {aux[0]['ID'][7:19]}\n",
                            f"Successfully tagged {name}:latest\n"]
    assert dclient.images.get(name).id == aux[0]["ID"]
    # quiet: one message, the ID
    q = list(dclient.api.build(fileobj=context_tar({
        "Dockerfile": "FROM busybox\nENV A=1\nRUN echo out-of-run\n"}), custom_context=True,
        quiet=True, decode=True))
    assert q == [{"stream": aux[0]["ID"] + "\n"}]


def test_prune_builds(dclient: Any) -> None:
    res = dclient.api.prune_builds()
    assert isinstance(res, dict) and isinstance(res["SpaceReclaimed"], int)
    assert res.get("CachesDeleted") in (None, []) or isinstance(res["CachesDeleted"], list)
