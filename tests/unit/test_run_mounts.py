"""``RUN --mount`` specs (engine/builder/runmounts.py): BuildKit's CSV syntax and defaults."""

from __future__ import annotations

import pytest

from engine.builder.runmounts import MountSpec, parse_mount
from engine.errors import InvalidParameter


def plain(text: str) -> str:
    return text


def test_defaults_per_type() -> None:
    assert parse_mount("target=/src", plain) == MountSpec(kind="bind", target="/src")
    cache = parse_mount("type=cache,target=/root/.cache,sharing=locked,mode=0700,uid=10",
                        plain)
    assert (cache.kind, cache.sharing, cache.mode, cache.uid) == ("cache", "locked", 0o700, 10)
    secret = parse_mount("type=secret,id=tok", plain)
    assert secret.target == "/run/secrets/tok" and not secret.required
    env_only = parse_mount("type=secret,id=tok,env=TOKEN,required", plain)
    assert (env_only.target, env_only.env, env_only.required) == ("", "TOKEN", True)
    tmpfs = parse_mount("type=tmpfs,dst=/t,size=64m", plain)
    assert (tmpfs.target, tmpfs.size) == ("/t", 64 << 20)
    assert parse_mount("type=bind,source=a,target=rel,ro", plain).target == "/rel"
    assert parse_mount("type=bind,src=a,target=/x,rw", plain).rw


def test_values_are_expanded_and_quoted_fields_kept() -> None:
    spec = parse_mount('type=cache,"id=a,b",target=$T', lambda w: w.replace("$T", "/t"))
    assert (spec.id, spec.target) == ("a,b", "/t")


@pytest.mark.parametrize(("text", "message"), [
    ("type=volume,target=/x", "unsupported mount type 'volume'"),
    ("type=cache", "mount type cache requires a target"),
    ("type=cache,target=/x,color=red", "unexpected key 'color' in 'color=red'"),
    ("type=cache,target=/x,sharing=sometimes", "unrecognized sharing 'sometimes'"),
    ("type=cache,target=/x,mode=rwx", "invalid mode 'rwx': expected octal"),
    ("type=secret", "invalid secret mount: no id or target"),
    ("type=bind,target", "invalid field 'target' must be a key=value pair"),
])
def test_errors_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(InvalidParameter) as exc:
        parse_mount(text, plain)
    assert str(exc.value) == message


def test_cache_key_text_leaves_defaults_out() -> None:
    a = parse_mount("type=cache,target=/c", plain).key_text()
    b = parse_mount("type=cache,target=/c,id=other", plain).key_text()
    assert a == "kind=cache,sharing=shared,target=/c" and a != b
