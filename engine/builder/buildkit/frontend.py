"""The ``dockerfile.v0`` frontend: the frontend attributes (buildkit-notes §7) become
classic ``BuildOptions``; the Dockerfile, the .dockerignore and the context come from the
client through the session's file sync (§6.1); the classic executor runs the build.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path

from engine import rootscope
from engine.builder import dockerfile as df
from engine.builder.buildkit.filesync import fetch_dir
from engine.builder.buildkit.grpcwire import Code, GrpcError
from engine.builder.buildkit.progress import VertexStream
from engine.builder.buildkit.sessions import Session
from engine.builder.context import MAX_DOCKERFILE, BuildContext
from engine.builder.ignore import IgnoreRules, read_patterns
from engine.builder.manager import BuildManager
from engine.builder.options import BuildOptions, RunLimits

DOCKERFILE = "dockerfile.v0"
# ``# syntax=`` values that mean the Dockerfile frontend we have: docker/dockerfile at
# any 1.x tag (with -labs), with or without registry and digest.
_BUILTIN_SYNTAX = re.compile(
    r"^(?:docker\.io/)?docker/dockerfile(?::1(?:\.\d+){0,2}(?:-labs)?)?(?:@sha256:[0-9a-f]{64})?$")
DEFAULT_FILENAME = "Dockerfile"

# Attributes we act on or may safely ignore; anything else is named in an error rather
# than silently dropped.
_NAMED_KINDS = ("local:", "docker-image://")
_IGNORED = frozenset({
    "image-resolve-mode", "frontend.caps", "multi-platform", "cache-imports", "cache-from",
    "contextkey", "dockerfilekey", "hostname", "attest:provenance", "attest:sbom",
    "build-arg:BUILDKIT_INLINE_CACHE", "build-arg:BUILDKIT_MULTI_PLATFORM",
    "build-arg:BUILDKIT_CONTEXT_KEEP_GIT_DIR", "build-arg:BUILDKIT_CACHE_MOUNT_NS",
})


def options_from_attrs(attrs: Mapping[str, str]) -> BuildOptions:
    """The classic build's options for these frontend attributes."""
    for key, value in attrs.items():
        if key.startswith("input:") or key in ("context", "contextsubdir"):
            raise GrpcError(Code.UNIMPLEMENTED,
                            f"build contexts other than the local directory ({key}) are not "
                            "supported by this daemon yet")
        if key.startswith("context:") and not value.startswith(_NAMED_KINDS):
            raise GrpcError(Code.UNIMPLEMENTED,
                            f"named context {key.removeprefix('context:')}={value} is not "
                            "supported by this daemon: only local directories and "
                            "docker-image:// references")
        if key == "requestid":
            raise GrpcError(Code.UNIMPLEMENTED,
                            f"frontend subrequest {attrs[key]!r} (--call/--check) is not "
                            "supported by this daemon")
        if key == "build-arg:BUILDKIT_SYNTAX":
            raise GrpcError(Code.UNIMPLEMENTED,
                            f"custom Dockerfile frontend {attrs[key]} is not supported by "
                            "this daemon")
    named_images = {key.removeprefix("context:"): value.removeprefix("docker-image://")
                    for key, value in attrs.items()
                    if key.startswith("context:") and value.startswith("docker-image://")}
    build_args: dict[str, str | None] = {
        key.removeprefix("build-arg:"): value for key, value in attrs.items()
        if key.startswith("build-arg:") and key not in _IGNORED}
    labels = {key.removeprefix("label:"): value for key, value in attrs.items()
              if key.startswith("label:")}
    network = attrs.get("force-network-mode", "")
    hosts = tuple(h.replace("=", ":", 1) for h in attrs.get("add-hosts", "").split(",") if h)
    try:
        shm_size = int(attrs.get("shm-size") or 0)
    except ValueError:
        raise GrpcError(Code.INVALID_ARGUMENT,
                        f"invalid shm-size {attrs['shm-size']!r}") from None
    return BuildOptions(
        dockerfile=attrs.get("filename") or DEFAULT_FILENAME,
        build_args=build_args,
        labels=labels,
        target=attrs.get("target", ""),
        # "" = every stage, "a,b" = those stages; the classic executor has only "all".
        no_cache="no-cache" in attrs,
        pull=attrs.get("image-resolve-mode") == "pull",
        remove=True,
        force_remove=True,  # BuildKit leaves no containers behind, even on failure
        platform=attrs.get("platform", "").split(",")[0],
        named_images=named_images,
        limits=RunLimits(network_mode="" if network in ("", "default") else network,
                         shm_size=shm_size, extra_hosts=hosts,
                         cgroup_parent=attrs.get("cgroup-parent", "")),
    )


async def build_dockerfile(builder: BuildManager, session: Session, attrs: Mapping[str, str],
                           workdir: Path, progress: VertexStream) -> str:
    """Fetch, then build; returns the image id. ``workdir`` is an empty directory."""
    options = options_from_attrs(attrs)
    filename = options.dockerfile
    dockerfile_dir = workdir / "dockerfile"
    context_dir = workdir / "context"
    ignore_dir = workdir / "ignore"
    for path in (dockerfile_dir, context_dir, ignore_dir):
        await asyncio.to_thread(path.mkdir)

    progress.start(f"[internal] load build definition from {filename}")
    sync = await fetch_dir(session, attrs.get("dockerfilekey") or "dockerfile", dockerfile_dir,
                           followpaths=[filename, f"{filename}.dockerignore"])
    progress.status(f"transferring dockerfile: {_size(sync.bytes)}")
    text = await asyncio.to_thread(_read_optional, dockerfile_dir / filename, MAX_DOCKERFILE)
    if text is None:
        raise GrpcError(Code.UNKNOWN,
                        f"failed to solve: failed to read dockerfile: open {filename}: "
                        "no such file or directory")
    check_syntax(text)
    progress.complete()

    progress.start("[internal] load .dockerignore")
    context_key = attrs.get("contextkey") or "context"
    ignore = await asyncio.to_thread(
        _read_optional, dockerfile_dir / f"{filename}.dockerignore", 1 << 20)
    if ignore is None:
        await fetch_dir(session, context_key, ignore_dir, followpaths=[".dockerignore"])
        ignore = await asyncio.to_thread(_read_optional, ignore_dir / ".dockerignore", 1 << 20)
    patterns = read_patterns((ignore or b"").decode("utf-8", "replace"))
    progress.status(f"transferring context: {_size(len(ignore or b''))}")
    progress.complete()

    progress.start("[internal] load build context")
    sync = await fetch_dir(session, context_key, context_dir, exclude=patterns)
    progress.status(f"transferring context: {_size(sync.bytes)}")
    progress.complete()

    named_dirs: dict[str, Path] = {}
    for key, value in attrs.items():
        if key.startswith("context:") and value.startswith("local:"):
            name = key.removeprefix("context:")
            progress.start(f"[internal] load build context {name}")
            target = workdir / f"named-{len(named_dirs)}"
            await asyncio.to_thread(target.mkdir)
            sync = await fetch_dir(session, value.removeprefix("local:"), target)
            progress.status(f"transferring {name}: {_size(sync.bytes)}")
            progress.complete()
            named_dirs[name] = target
    if named_dirs:
        options = dataclasses.replace(options, named_dirs=named_dirs)

    context = BuildContext(root=context_dir, dockerfile=filename, dockerfile_text=text,
                           ignore=IgnoreRules.parse("\n".join(patterns)),
                           entries=sync.entries)
    return await builder.build_prepared(context, options, progress.sink,
                                        on_step=progress.on_step, secrets=session.secret,
                                        credentials=session.credentials,
                                        lanes=progress.lane)


def check_syntax(dockerfile: bytes) -> None:
    """Real BuildKit runs the ``# syntax=`` image as the frontend; the 1.x Dockerfile
    frontend is built in here, any other image is refused by name."""
    syntax = df.syntax_directive(dockerfile)
    if syntax is not None and not _BUILTIN_SYNTAX.match(syntax.strip()):
        raise GrpcError(Code.UNIMPLEMENTED,
                        f"custom Dockerfile frontend {syntax} is not supported by this "
                        "daemon: only the built-in docker/dockerfile:1 syntax")


def _read_optional(path: Path, limit: int) -> bytes | None:
    """A file the client sent, read with symlinks resolved inside its directory (a
    Dockerfile that is a link to /etc/shadow reads the context's etc/shadow, if any)."""
    root = rootscope.open_root(path.parent)
    try:
        data = rootscope.read_small_file(root, path.name, limit + 1)
    finally:
        os.close(root)
    if data is not None and len(data) > limit:
        raise GrpcError(Code.INVALID_ARGUMENT, f"{path.name} is larger than {limit} bytes")
    return data


def _size(n: int) -> str:
    """Byte counts as BuildKit's progress shows them: ``170B``, ``2.05kB``, ``1.20MB``."""
    if n < 1000:
        return f"{n}B"
    value = float(n)
    for unit in ("kB", "MB", "GB"):
        value /= 1000
        if value < 1000 or unit == "GB":
            break
    return f"{value:.2f}{unit}"
