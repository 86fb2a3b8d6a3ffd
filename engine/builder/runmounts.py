"""``RUN --mount=…`` (BuildKit's Dockerfile syntax 1.2): what the RUN's container gets.

- ``type=bind`` (the default): a directory or file of the context, or of a stage or
  image (``from=``), read-only; with ``rw`` a private copy whose changes are discarded.
- ``type=cache``: a directory kept across builds per ``id`` (default: the target) under
  ``<data-root>/build-cache-mounts``; not in the image; ``--no-cache`` starts it empty as
  BuildKit does; ``builder prune`` empties them all. ``sharing=locked`` serialises the
  RUNs using it (``shared``, the default, and ``private`` both share here).
- ``type=tmpfs``: a tmpfs (``size``).
- ``type=secret``: the secret the build client holds (BuildKit session), as a read-only
  file (default ``/run/secrets/<id>``) or an environment variable (``env=``); missing is
  an error only with ``required``.
- ``type=ssh``: refused (no agent forwarding yet), with a message naming it.

The cache key of the RUN includes every mount's spec and, for binds of the context, a
digest of the files bound, never a secret's value (BuildKit's rule too).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.builder import copy as files
from engine.errors import InvalidParameter, NotFound

_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
_BOOL_KEYS = {"ro": "readonly", "readonly": "readonly", "rw": "rw", "readwrite": "rw",
              "required": "required"}
_KEYS = frozenset({"type", "target", "dst", "destination", "source", "src", "from", "id",
                   "sharing", "mode", "uid", "gid", "env", "size", "readonly", "ro", "rw",
                   "readwrite", "required"})

SecretSource = Callable[[str], Awaitable[bytes | None]]
# from=<stage or image> → (its rootfs, its image id), mounted while the block runs
MountSource = Callable[[str], contextlib.AbstractAsyncContextManager[tuple[Path, str]]]


@dataclass(frozen=True)
class MountSpec:
    kind: str
    target: str
    source: str = ""
    source_from: str = ""
    id: str = ""
    readonly: bool = False
    rw: bool = False
    sharing: str = "shared"
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    required: bool = False
    env: str = ""
    size: int = 0

    def key_text(self) -> str:
        """The spec as it enters the RUN's cache key."""
        return ",".join(f"{k}={v}" for k, v in sorted(vars(self).items()) if v not in
                        ("", None, False, 0))


def parse_mount(text: str, expand: Callable[[str], str]) -> MountSpec:
    """One ``--mount`` value (CSV of ``key=value`` and bare flags), its values expanded
    with the build's variables."""
    try:
        fields = next(csv.reader([text]))
    except (csv.Error, StopIteration):
        raise InvalidParameter(f"failed to parse mount {text!r}") from None
    values: dict[str, str] = {}
    for item in fields:
        key, equals, value = item.partition("=")
        key = key.strip().lower()
        if key not in _KEYS:
            raise InvalidParameter(f"unexpected key '{key}' in '{item}'")
        if not equals:
            if key not in _BOOL_KEYS:
                raise InvalidParameter(f"invalid field '{item}' must be a key=value pair")
            value = "true"
        values[_BOOL_KEYS.get(key, key)] = expand(value)
    kind = values.get("type", "bind").lower()
    if kind not in _TYPES:
        raise InvalidParameter(f"unsupported mount type {kind!r}")
    target = values.get("target") or values.get("dst") or values.get("destination") or ""
    ident = values.get("id", "")
    if kind == "secret" and not target and not values.get("env"):
        if not ident:
            ident = os.path.basename(values.get("source") or values.get("src") or "")
        if not ident:
            raise InvalidParameter("invalid secret mount: no id or target")
        target = f"/run/secrets/{ident}"
    if not target and kind != "secret":
        raise InvalidParameter(f"mount type {kind} requires a target")
    if target and not target.startswith("/"):
        target = "/" + target  # relative targets are below / (BuildKit: the workdir)
    sharing = values.get("sharing", "shared").lower()
    if sharing not in ("shared", "private", "locked"):
        raise InvalidParameter(f"unrecognized sharing {sharing!r}")
    return MountSpec(
        kind=kind, target=target, source=values.get("source") or values.get("src") or "",
        source_from=values.get("from", ""), id=ident, readonly=_bool(values, "readonly"),
        rw=_bool(values, "rw"), sharing=sharing, mode=_octal(values.get("mode")),
        uid=_int(values.get("uid")), gid=_int(values.get("gid")),
        required=_bool(values, "required"), env=values.get("env", ""),
        size=_size(values.get("size")))


def _bool(values: Mapping[str, str], key: str) -> bool:
    text = values.get(key, "false").lower()
    if text not in ("true", "false", "1", "0"):
        raise InvalidParameter(f"invalid value for {key}: {text}")
    return text in ("true", "1")


def _octal(text: str | None) -> int | None:
    if not text:
        return None
    try:
        return int(text, 8)
    except ValueError:
        raise InvalidParameter(f"invalid mode {text!r}: expected octal") from None


def _int(text: str | None) -> int | None:
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise InvalidParameter(f"invalid number {text!r}") from None


def _size(text: str | None) -> int:
    if not text:
        return 0
    units = {"b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
             "g": 1 << 30, "gb": 1 << 30}
    number = text.rstrip("bBkKmMgG")
    unit = text[len(number):].lower() or "b"
    try:
        return int(float(number) * units[unit])
    except (ValueError, KeyError):
        raise InvalidParameter(f"invalid size {text!r}") from None


# ------------------------------------------------------------------ preparing
@dataclass
class MountContext:
    """What a build provides for mounts."""

    context_root: Path
    scratch_root: Path  # per-RUN private files (secrets, rw copies) go below it
    cache_root: Path | None  # cache mounts, None: refused
    no_cache: bool
    secrets: SecretSource | None
    stage_root: MountSource  # from=<stage or image> → its rootfs, while in use
    emptied: set[str] = field(default_factory=set)  # cache ids started empty this build


@dataclass
class PreparedMounts:
    mounts: list[dict[str, Any]] = field(default_factory=list)  # HostConfig.Mounts
    env: list[str] = field(default_factory=list)
    key: list[str] = field(default_factory=list)


_CACHE_LOCKS: dict[str, asyncio.Lock] = {}  # sharing=locked: held while the RUN runs
_CACHE_CREATION: dict[str, asyncio.Lock] = {}  # held while a cache directory is made


@contextlib.asynccontextmanager
async def prepared(specs: list[MountSpec], ctx: MountContext) -> AsyncIterator[PreparedMounts]:
    """Everything the RUN's container needs for ``specs``, alive until the block ends."""
    out = PreparedMounts()
    scratch = ctx.scratch_root / f"run-{os.urandom(8).hex()}"
    async with contextlib.AsyncExitStack() as stack:
        await asyncio.to_thread(scratch.mkdir, parents=True, mode=0o700)
        stack.push_async_callback(asyncio.to_thread, shutil.rmtree, scratch, True)
        for number, spec in enumerate(specs):
            out.key.append(spec.key_text())
            if spec.kind == "ssh":
                raise InvalidParameter("RUN --mount=type=ssh is not supported by this daemon")
            if spec.kind == "tmpfs":
                tmpfs: dict[str, Any] = {"Type": "tmpfs", "Target": spec.target}
                if spec.size:
                    tmpfs["TmpfsOptions"] = {"SizeBytes": spec.size}
                out.mounts.append(tmpfs)
            elif spec.kind == "cache":
                await _cache_mount(spec, ctx, stack, out)
            elif spec.kind == "secret":
                await _secret_mount(spec, ctx, scratch / f"secret-{number}", out)
            else:
                await _bind_mount(spec, ctx, stack, scratch / f"bind-{number}", out)
        yield out


async def _cache_mount(spec: MountSpec, ctx: MountContext, stack: contextlib.AsyncExitStack,
                       out: PreparedMounts) -> None:
    if ctx.cache_root is None:
        raise InvalidParameter("RUN --mount=type=cache is not available here")
    if spec.source_from or spec.source:
        raise InvalidParameter("RUN --mount=type=cache with from= or source= is not "
                               "supported by this daemon")
    ident = spec.id or spec.target
    directory = ctx.cache_root / hashlib.sha256(ident.encode()).hexdigest()[:32]
    if spec.sharing == "locked":
        lock = _CACHE_LOCKS.setdefault(ident, asyncio.Lock())
        await lock.acquire()
        stack.callback(lock.release)
    fresh = ctx.no_cache and ident not in ctx.emptied
    ctx.emptied.add(ident)
    # RUNs of concurrently built stages may share an id: one of them makes the directory
    async with _CACHE_CREATION.setdefault(ident, asyncio.Lock()):
        await asyncio.to_thread(_make_cache_dir, directory, spec, fresh)
    out.mounts.append({"Type": "bind", "Source": str(directory), "Target": spec.target,
                       "ReadOnly": spec.readonly})


def _make_cache_dir(directory: Path, spec: MountSpec, fresh: bool) -> None:
    if fresh and directory.exists():
        shutil.rmtree(directory)
    if not directory.exists():
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = directory.with_name(f"{directory.name}.new-{os.urandom(4).hex()}")
        staging.mkdir()
        os.chmod(staging, spec.mode if spec.mode is not None else 0o755)
        os.chown(staging, spec.uid or 0, spec.gid or 0)
        staging.rename(directory)


async def _secret_mount(spec: MountSpec, ctx: MountContext, path: Path,
                        out: PreparedMounts) -> None:
    ident = spec.id or os.path.basename(spec.target)
    value = await ctx.secrets(ident) if ctx.secrets is not None else None
    if value is None:
        if spec.required:
            raise InvalidParameter(f"secret {ident} not found")
        return
    if spec.env:
        out.env.append(f"{spec.env}={value.decode('utf-8', 'replace')}")
    if not spec.target:
        return
    await asyncio.to_thread(_write_secret, path, value, spec)
    out.mounts.append({"Type": "bind", "Source": str(path), "Target": spec.target,
                       "ReadOnly": True})


def _write_secret(path: Path, value: bytes, spec: MountSpec) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, value)
        os.fchown(fd, spec.uid or 0, spec.gid or 0)
        os.fchmod(fd, spec.mode if spec.mode is not None else 0o400)
    finally:
        os.close(fd)


async def _bind_mount(spec: MountSpec, ctx: MountContext, stack: contextlib.AsyncExitStack,
                      copy_path: Path, out: PreparedMounts) -> None:
    image_id = ""
    if spec.source_from:
        root, image_id = await stack.enter_async_context(ctx.stage_root(spec.source_from))
        out.key.append(image_id)
    else:
        root = ctx.context_root
    source = spec.source or "."
    try:
        found = await asyncio.to_thread(files.resolve_sources, root, [source],
                                        cmd="RUN --mount", in_context=not image_id)
    except NotFound:
        raise InvalidParameter(f"failed to compute cache key: {source}: not found") from None
    host = root.joinpath(*found[0].real) if found[0].real else root
    if not image_id:  # files of the context or of a named context: their content counts
        out.key.append(await asyncio.to_thread(files.content_digest, root, found))
    if spec.rw:
        # writes are discarded: the RUN works on a copy
        await asyncio.to_thread(_copy_tree, host, copy_path)
        host = copy_path
    out.mounts.append({"Type": "bind", "Source": str(host), "Target": spec.target,
                       "ReadOnly": not spec.rw})


def _copy_tree(source: Path, dest: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, dest, symlinks=True)
    else:
        shutil.copy2(source, dest, follow_symlinks=False)
