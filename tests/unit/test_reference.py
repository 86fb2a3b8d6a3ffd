"""Image references: normalisation, familiar forms and dockerd's error texts (B9)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import InvalidParameter
from engine.images.reference import (
    Reference,
    ReferenceError,
    familiar,
    familiar_match,
    parse,
    parse_any,
    parse_docker_ref,
    parse_normalized_named,
    repo_tag_reference,
)

HEX64 = "a" * 64


@pytest.mark.parametrize(
    ("text", "domain", "path", "tag", "familiar_text"),
    [
        ("busybox", "docker.io", "library/busybox", None, "busybox"),
        ("busybox:1.36", "docker.io", "library/busybox", "1.36", "busybox:1.36"),
        ("library/busybox", "docker.io", "library/busybox", None, "busybox"),
        ("docker.io/busybox", "docker.io", "library/busybox", None, "busybox"),
        ("docker.io/library/busybox:latest", "docker.io", "library/busybox", "latest",
         "busybox:latest"),
        ("index.docker.io/foo/bar", "docker.io", "foo/bar", None, "foo/bar"),
        ("foo/bar:v1", "docker.io", "foo/bar", "v1", "foo/bar:v1"),
        ("docker.io/library/a/b", "docker.io", "library/a/b", None, "library/a/b"),
        ("localhost/x", "localhost", "x", None, "localhost/x"),
        ("localhost:5000/x:1", "localhost:5000", "x", "1", "localhost:5000/x:1"),
        ("example.com/team/app:2", "example.com", "team/app", "2", "example.com/team/app:2"),
        ("[::1]:5000/x", "[::1]:5000", "x", None, "[::1]:5000/x"),
        ("a__b/c--d.e_f", "docker.io", "a__b/c--d.e_f", None, "a__b/c--d.e_f"),
        # distribution/reference >= 0.5: an uppercase first component is a registry host
        ("UPPER/x", "UPPER", "x", None, "UPPER/x"),
    ],
)
def test_normalise_and_familiar(
    text: str, domain: str, path: str, tag: str | None, familiar_text: str
) -> None:
    ref = parse_normalized_named(text)
    assert (ref.domain, ref.path, ref.tag, ref.digest) == (domain, path, tag, None)
    assert ref.familiar() == familiar_text
    assert familiar(str(ref)) == familiar_text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("UPPER", "invalid reference format: repository name (library/UPPER) must be lowercase"),
        ("x/UPPER", "invalid reference format: repository name (x/UPPER) must be lowercase"),
        ("busybox@sha256:1234", "invalid reference format"),
        ("busybox@sha256:" + "a" * 40, "invalid checksum digest length"),
        ("busybox@md5:" + "a" * 32, "unsupported digest algorithm"),
        ("", "invalid reference format"),
        ("a:b:c", "invalid reference format"),
        ("bad tag", "invalid reference format"),
        ("-x", "invalid reference format"),
        ("x" * 256, "repository name must not be more than 255 characters"),
        (HEX64, f"invalid repository name ({HEX64}), cannot specify 64-byte hexadecimal strings"),
    ],
)
def test_errors_use_dockerd_wording(text: str, message: str) -> None:
    with pytest.raises(ReferenceError) as info:
        parse_normalized_named(text)
    assert str(info.value) == message
    assert isinstance(info.value, InvalidParameter)  # → 400


def test_digest_reference() -> None:
    digest = "sha256:" + "0123456789abcdef" * 4
    ref = parse_normalized_named("busybox@" + digest)
    assert ref.digest == digest and ref.tag is None and ref.is_canonical
    assert ref.familiar() == "busybox@" + digest
    both = parse_docker_ref("busybox:1@" + digest)
    assert both.tag is None and both.digest == digest  # ParseDockerRef keeps the digest only
    assert parse_docker_ref("busybox") == Reference("docker.io", "library/busybox", "latest")


def test_parse_any() -> None:
    assert parse_any(HEX64) == "sha256:" + HEX64
    assert parse_any("sha256:" + HEX64) == "sha256:" + HEX64
    named = parse_any("busybox")
    assert isinstance(named, Reference) and named.name == "docker.io/library/busybox"
    short = parse_any("613d")  # a short id parses as a name; lookup tries the id after
    assert isinstance(short, Reference) and short.path == "library/613d"


def test_repo_tag_reference() -> None:
    assert str(repo_tag_reference("busybox", None)) == "docker.io/library/busybox:latest"
    assert str(repo_tag_reference("docker.io/library/captag", "1")) == (
        "docker.io/library/captag:1"
    )
    assert repo_tag_reference("localhost:5000/x", "v2").familiar() == "localhost:5000/x:v2"
    with pytest.raises(ReferenceError, match=r"^invalid tag format$"):
        repo_tag_reference("busybox", "bad tag")
    with pytest.raises(ReferenceError, match=r"^invalid tag format$"):
        repo_tag_reference("busybox", "-x")
    with pytest.raises(ReferenceError, match="must be lowercase"):
        repo_tag_reference("UPPER", "1")
    with pytest.raises(ReferenceError, match="cannot import digest reference"):
        repo_tag_reference("busybox@sha256:" + "b" * 64, None)
    with pytest.raises(ReferenceError, match="at least one component"):
        repo_tag_reference("", "1")
    assert repo_tag_reference("busybox", "A_b.1-" + "x" * 100).tag is not None
    with pytest.raises(ReferenceError):
        repo_tag_reference("busybox", "x" * 129)


@pytest.mark.parametrize(
    ("pattern", "ref", "expected"),
    [
        ("busybox", "busybox:latest", True),  # name-only patterns match the familiar name
        ("busy*", "busybox:latest", True),
        ("busybox:lat*", "busybox:latest", True),
        ("busybox:1", "busybox:latest", False),
        ("*", "foo/bar:1", False),  # '*' never crosses '/' (Go path.Match)
        ("foo/*", "foo/bar:1", True),
        ("foo/ba?", "foo/bar:1", True),
        ("foo/b[a-c]r", "foo/bar:1", True),
        ("foo/b[^a]r", "foo/bar:1", False),
        ("localhost:5000/*", "localhost:5000/x:1", True),
    ],
)
def test_familiar_match(pattern: str, ref: str, expected: bool) -> None:
    assert familiar_match(pattern, parse_normalized_named(ref)) is expected


def test_familiar_match_bad_pattern() -> None:
    with pytest.raises(InvalidParameter, match="syntax error in pattern"):
        familiar_match("foo[", parse_normalized_named("foo"))


_component = st.from_regex(r"\A[a-z0-9]{1,6}(?:(?:[._]|__|-{1,2})[a-z0-9]{1,6}){0,2}\Z")
_tag = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}\Z")
_domain = st.sampled_from(["", "docker.io/", "localhost:5000/", "example.com/", "reg.io:443/"])


@given(_domain, st.lists(_component, min_size=1, max_size=3), st.none() | _tag)
def test_round_trip(domain: str, components: list[str], tag: str | None) -> None:
    text = domain + "/".join(components) + (f":{tag}" if tag else "")
    ref = parse_normalized_named(text)
    again = parse_normalized_named(str(ref))
    assert again == ref
    first, slash, _ = ref.familiar_name().partition("/")
    if ref.domain == "docker.io" and slash and ("." in first or first == "localhost"):
        return  # as in Docker, "docker.io/a.b/c" has no unambiguous familiar form
    assert parse_normalized_named(ref.familiar()) == ref
    assert parse(str(ref)) == ref


@given(st.text(max_size=80))
def test_parse_never_crashes(text: str) -> None:
    try:
        ref = parse_normalized_named(text)
    except InvalidParameter:
        return
    assert ref.domain and ref.path
