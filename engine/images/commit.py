"""``docker commit``: a container's rw layer → a new image on top of the container's.

Everything that can be refused is checked first, before the container is touched
(reliability B27: a bad ``repo`` is a 400 and no image is created): the name, the
``changes``, the container. Then, with the container paused when asked (and running),
and its lock held through ``rootfs()`` (no start, stop or removal meanwhile), the
overlay upper directory is turned into a layer tar and ingested exactly like a pulled
layer: hashed, kept as a blob and unpacked into a new snapshot, three threads
overlapping (tar writer → blob → unpack). An empty diff makes no layer, only a history
entry with ``empty_layer``, as dockerd does. One transaction then names the image.

The diff (moby's overlay2 differ, in spirit): every entry of the upper directory in
lexical order; a 0/0 character device is a whiteout (``.wh.<name>``), a directory with
``trusted.overlay.opaque=y`` gets ``.wh..wh..opq``. The mount points the runtime creates
for the container itself (``/etc/hosts``, ``/etc/hostname``, ``/etc/resolv.conf``,
``/.dockerenv``, empty ``/proc``, ``/sys``, ``/dev``) are not part of the image: dockerd
keeps them in a separate init layer; here they are left out of the diff, with any
directory that held nothing else.

Crash points: ``commit_while_paused``, ``commit_after_layer``, ``commit_before_commit``,
``commit_after_commit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import stat
import tarfile
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from engine.errors import Conflict, NotFound
from engine.images import tarwriter
from engine.images.catalog import NewImage
from engine.images.changes import build_config_from_changes, container_config
from engine.images.layers import EMPTY_TAR_DIGEST, Ingested, chain_ids, ingest
from engine.images.pipes import ThreadJob, ThreadPipe
from engine.images.platforms import host_arch
from engine.images.reference import Reference, repo_tag_reference
from engine.images.timefmt import rfc3339_nano
from engine.instruments import LabeledTimer
from engine.store.content import ContentStore, ContentWriter
from engine.store.crashpoints import crash_point

if TYPE_CHECKING:
    from engine.images.manager import ImageManager

_COPY = 1 << 20
_OPAQUE = "trusted.overlay.opaque"
_CAPABILITY = "security.capability"  # the one xattr moby's archive carries
_INIT_FILES = frozenset({"etc/hosts", "etc/hostname", "etc/resolv.conf", ".dockerenv"})
_INIT_DIRS = frozenset({"proc", "sys", "dev"})


def _docker_version() -> str:
    try:
        return metadata.version("wharfd")
    except metadata.PackageNotFoundError:
        return "0.0.0-dev"


# =========================================================================== the source
class ContainerSettings(Protocol):
    @property
    def image_id(self) -> str: ...
    @property
    def config(self) -> dict[str, Any]: ...


class ContainerLike(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def running(self) -> bool: ...
    @property
    def config(self) -> ContainerSettings: ...
    @property
    def state(self) -> Any: ...


class CommitSource(Protocol):
    """What commit needs of the container manager (its public methods)."""

    @property
    def actions(self) -> LabeledTimer:
        """Where a successful commit's duration goes (dockerd's container action)."""

    def get(self, ref: str) -> Any: ...
    def rootfs(self, ref: str) -> AbstractAsyncContextManager[tuple[Any, Path]]: ...
    def upper_dir(self, container_id: str) -> Path: ...
    async def pause_for_commit(self, ref: str) -> None:
        """Pause, having recorded that commit paused it (restore thaws it after a crash)."""
    async def unpause_after_commit(self, ref: str) -> None: ...


@dataclass(frozen=True)
class _Diff:
    key: str
    writer: ContentWriter
    ingested: Ingested


# =========================================================================== commit
async def commit(
    m: ImageManager,
    source: CommitSource,
    *,
    container: str,
    repo: str | None = None,
    tag: str | None = None,
    comment: str = "",
    author: str = "",
    pause: bool = True,
    changes: Sequence[str] = (),
    config: Mapping[str, Any] | None = None,
) -> str:
    ref = repo_tag_reference(repo, tag) if repo else None
    view: ContainerLike = source.get(container)
    container_cfg = container_config(view.config.config)
    base = dict(config) if isinstance(config, Mapping) else dict(container_cfg)
    new_config = container_config(_merge(build_config_from_changes(changes, base),
                                         container_cfg))
    parent = m.view_by_id(view.config.image_id, include_removed=True)
    if parent is None:
        raise NotFound(f"No such image: {view.config.image_id}")
    return await m.run_owned(_commit(m, source, view, ref, parent.id, new_config,
                                     container_cfg, comment, author, pause))


async def _commit(
    m: ImageManager, source: CommitSource, view: ContainerLike, ref: Reference | None,
    parent_id: str, new_config: dict[str, Any], container_cfg: dict[str, Any],
    comment: str, author: str, pause: bool,
) -> str:
    paused_here = False
    if pause and view.running and str(getattr(view.state, "status", "")) != "paused":
        with contextlib.suppress(Conflict):  # it stopped meanwhile: nothing to pause
            await source.pause_for_commit(view.id)
            paused_here = True
            crash_point("commit_while_paused")
    try:
        async with source.rootfs(view.id) as (current, _mounted):
            diff = await _diff(m, source.upper_dir(current.id))
    finally:
        if paused_here:
            with contextlib.suppress(Conflict, NotFound):
                await source.unpause_after_commit(view.id)
    image_id = await _register_child(m, parent_id, diff, _Child(
        new_config, container_cfg, view.id, comment, author, ref))
    attributes = {"comment": comment, "imageID": image_id,
                  "imageRef": ref.familiar() if ref else "", "name": view.name}
    m.events.emit("container", "commit", view.id, attributes)
    return image_id


# =========================================================================== build steps
async def commit_step(
    m: ImageManager,
    source: CommitSource,
    *,
    container: str | None,
    parent_id: str | None,
    config: dict[str, Any],
    container_config: dict[str, Any],
    author: str = "",
) -> str:
    """One step of a build: the image ``config`` on top of ``parent_id`` (None: FROM
    scratch), with the stopped ``container``'s rw layer when there is one; without a
    container only the metadata changes (an ``empty_layer`` history entry).
    ``container_config`` is the step's run config, whose Cmd becomes the history's
    ``created_by`` and the build cache's key (as moby's classic builder)."""
    child = _Child(config, container_config, container or "", "", author, None)
    if container is None:
        return await m.run_owned(_register_child(m, parent_id, None, child))
    return await m.run_owned(_commit_step(m, source, container, parent_id, child))


async def _commit_step(
    m: ImageManager, source: CommitSource, container: str, parent_id: str | None,
    child: _Child,
) -> str:
    async with source.rootfs(container) as (current, _mounted):
        diff = await _diff(m, source.upper_dir(current.id))
    return await _register_child(m, parent_id, diff, child)


@dataclass(frozen=True)
class _Child:
    config: dict[str, Any]
    container_config: dict[str, Any]
    container_id: str
    comment: str
    author: str
    ref: Reference | None


async def _register_child(
    m: ImageManager, parent_id: str | None, diff: _Diff | None, child: _Child
) -> str:
    """The new image on top of ``parent_id`` (None: no parent) with ``diff`` as its
    top layer (None: no new layer), named ``child.ref``; one transaction."""
    parent = m.view_by_id(parent_id, include_removed=True) if parent_id else None
    if parent_id and parent is None:
        await _drop(m, diff)
        raise NotFound(f"No such image: {parent_id}")
    parent_diff_ids = list(parent.diff_ids) if parent is not None else []
    diff_ids = parent_diff_ids + ([] if diff is None else [diff.ingested.diff_id])
    chains = chain_ids(diff_ids)
    async with m.lease(chains):
        layers = []
        if diff is not None:
            try:
                layers.append(await m.commit_layer(
                    diff.key, diff.ingested, parent.top_layer if parent else None, diff.writer))
            except BaseException:
                await _drop(m, diff)
                raise
        crash_point("commit_after_layer")
        parent_config = parent.config if parent is not None else _scratch_config()
        data = _image_config(parent_config, child.config, child.container_config,
                             child.container_id, diff_ids, child.comment, child.author,
                             diff is None)
        image_id = await m.write_config(data)
        size = (sum(parent.layer_sizes) if parent else 0) + (
            diff.ingested.size if diff is not None else 0)
        image = NewImage(image_id, data, chains[-1] if chains else None, size,
                         parent=parent.id if parent else None,
                         tags=[child.ref] if child.ref is not None else [])
        await m.register(layers, [image], before_commit="commit_before_commit")
        crash_point("commit_after_commit")
    return image_id


def _scratch_config() -> dict[str, Any]:
    """What ``FROM scratch`` starts from: no layers, no history, this machine's platform."""
    arch, variant = host_arch()
    out: dict[str, Any] = {"architecture": arch, "os": "linux"}
    if variant:
        out["variant"] = variant
    return out


async def _drop(m: ImageManager, diff: _Diff | None) -> None:
    if diff is None:
        return
    with contextlib.suppress(Exception):
        await asyncio.to_thread(diff.writer.abort)
    await m.discard_snapshot(diff.key)


async def _diff(m: ImageManager, upper: Path) -> _Diff | None:
    """The rw layer as a new layer (None when nothing changed)."""
    key, root = await m.new_extract_snapshot()
    writer: ContentWriter | None = None
    try:
        writer = await asyncio.to_thread(m.content.open_writer, ContentStore.new_ref("commit"))
        pipe = ThreadPipe()
        producer = ThreadJob(_produce, upper, pipe, name="wharfd-diff")
        consumer = ThreadJob(ingest, pipe, writer, root, name="wharfd-commit")
        try:
            ingested = await consumer.result()
            await producer.result()
        except BaseException:
            pipe.fail(OSError(errno.ECANCELED, "commit aborted"))
            pipe.close_reader()
            await producer.settle()
            await consumer.settle()
            raise
    except BaseException:
        with contextlib.suppress(Exception):
            if writer is not None:
                await asyncio.to_thread(writer.abort)
        await m.discard_snapshot(key)
        raise
    if ingested.diff_id == EMPTY_TAR_DIGEST:
        await asyncio.to_thread(writer.abort)
        await m.discard_snapshot(key)
        return None
    return _Diff(key, writer, ingested)


def _produce(upper: Path, pipe: ThreadPipe) -> None:
    try:
        for chunk in diff_tar(upper):
            if not pipe.write(chunk):
                return  # the consumer failed; its error is the one reported
    except BaseException as exc:
        pipe.fail(exc)
        raise
    pipe.close()


# =========================================================================== the diff
@dataclass(frozen=True)
class _Entry:
    rel: str
    st: os.stat_result
    opaque: bool = False


def _entries(upper: Path) -> list[_Entry]:
    """Every entry below ``upper`` in lexical order (parents first), without the
    runtime's mount points and the directories that held only those."""
    found: list[_Entry] = []
    excluded_below: set[str] = set()

    def walk(directory: str, rel: str) -> None:
        with os.scandir(directory) as it:
            names = sorted(e.name for e in it)
        for name in names:
            child_rel = f"{rel}/{name}" if rel else name
            path = os.path.join(directory, name)
            st = os.lstat(path)
            if _is_init_entry(child_rel, st, path):
                excluded_below.update(_ancestors(child_rel))
                continue
            if stat.S_ISDIR(st.st_mode):
                found.append(_Entry(child_rel, st, _is_opaque(path)))
                walk(path, child_rel)
            else:
                found.append(_Entry(child_rel, st))

    walk(str(upper), "")
    if not excluded_below:
        return found
    has_content = set()
    for entry in found:
        if not stat.S_ISDIR(entry.st.st_mode) or entry.opaque:
            has_content.update(_ancestors(entry.rel) | {entry.rel})
    keep = []
    for entry in found:
        if (stat.S_ISDIR(entry.st.st_mode) and entry.rel in excluded_below
                and entry.rel not in has_content):
            continue
        keep.append(entry)
    return keep


def _ancestors(rel: str) -> set[str]:
    parts = rel.split("/")
    return {"/".join(parts[:i]) for i in range(1, len(parts))}


def _is_init_entry(rel: str, st: os.stat_result, path: str) -> bool:
    if rel in _INIT_FILES:
        return stat.S_ISREG(st.st_mode) and st.st_size == 0
    if rel in _INIT_DIRS and stat.S_ISDIR(st.st_mode):
        return not os.listdir(path)
    return False


def _is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, _OPAQUE, follow_symlinks=False) == b"y"
    except OSError:
        return False


def diff_tar(upper: Path) -> Any:
    """Yield the layer tar of an overlay upper directory (a generator of bytes)."""
    links: dict[tuple[int, int], str] = {}
    for entry in _entries(upper):
        path = os.path.join(upper, entry.rel)
        st = entry.st
        mode = stat.S_IMODE(st.st_mode)
        common: dict[str, Any] = {"mode": mode, "mtime": int(st.st_mtime), "uid": st.st_uid,
                                  "gid": st.st_gid}
        pax = _pax_xattrs(path)
        name = entry.rel
        if stat.S_ISDIR(st.st_mode):
            yield tarwriter.header(name + "/", kind=tarfile.DIRTYPE, pax=pax, **common)
            if entry.opaque:
                yield tarwriter.header(f"{name}/.wh..wh..opq", mode=mode, uid=st.st_uid,
                                       gid=st.st_gid, mtime=int(st.st_mtime))
        elif stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            directory, _, base = name.rpartition("/")
            whiteout = f"{directory}/.wh.{base}" if directory else f".wh.{base}"
            yield tarwriter.header(whiteout, mode=0, mtime=int(st.st_mtime))
        elif stat.S_ISLNK(st.st_mode):
            yield tarwriter.header(name, kind=tarfile.SYMTYPE, linkname=os.readlink(path),
                                   pax=pax, **common)
        elif stat.S_ISREG(st.st_mode):
            inode = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and inode in links:
                yield tarwriter.header(name, kind=tarfile.LNKTYPE, linkname=links[inode],
                                       pax=pax, **common)
                continue
            links[inode] = name
            yield tarwriter.header(name, st.st_size, pax=pax, **common)
            yield from _file_data(path, st.st_size)
            yield tarwriter.padding(st.st_size)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) or stat.S_ISFIFO(st.st_mode):
            kind = (tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else
                    tarfile.BLKTYPE if stat.S_ISBLK(st.st_mode) else tarfile.FIFOTYPE)
            yield tarwriter.header(name, kind=kind, devmajor=os.major(st.st_rdev),
                                   devminor=os.minor(st.st_rdev), pax=pax, **common)
        # sockets are not archived (as in Go's tar)
    yield tarwriter.END


def _file_data(path: str, size: int) -> Any:
    remaining = size
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        while remaining > 0:
            data = os.read(fd, min(_COPY, remaining))
            if not data:
                # Shrunk while reading (a running, unpaused container): keep the size
                # promised in the header.
                yield b"\0" * remaining
                return
            remaining -= len(data)
            yield data
    finally:
        os.close(fd)


def _pax_xattrs(path: str) -> dict[str, str] | None:
    try:
        value = os.getxattr(path, _CAPABILITY, follow_symlinks=False)
    except OSError:
        return None
    return {"SCHILY.xattr." + _CAPABILITY: value.decode("utf-8", "surrogateescape")}


# =========================================================================== config
def _merge(user: dict[str, Any], image: Mapping[str, Any]) -> dict[str, Any]:
    """moby's commit merge(): fields the changes left empty come from the container."""
    out = dict(user)
    if not out.get("User"):
        out["User"] = image.get("User", "")
    ports = dict(out.get("ExposedPorts") or {})
    for port in image.get("ExposedPorts") or {}:
        ports.setdefault(port, {})
    out["ExposedPorts"] = ports or None
    env = list(out.get("Env") or [])
    keys = {e.partition("=")[0] for e in env}
    for item in image.get("Env") or []:
        if item.partition("=")[0] not in keys:
            env.append(item)
    out["Env"] = env or None
    labels = dict(out.get("Labels") or {})
    for key, value in (image.get("Labels") or {}).items():
        labels.setdefault(key, value)
    out["Labels"] = labels
    if not out.get("Entrypoint"):
        if not out.get("Cmd"):
            out["Cmd"] = image.get("Cmd")
        if out.get("Entrypoint") is None:
            out["Entrypoint"] = image.get("Entrypoint")
    if image.get("Healthcheck") and not out.get("Healthcheck"):
        out["Healthcheck"] = image["Healthcheck"]
    if not out.get("WorkingDir"):
        out["WorkingDir"] = image.get("WorkingDir", "")
    volumes = dict(out.get("Volumes") or {})
    volumes.update(image.get("Volumes") or {})
    out["Volumes"] = volumes or None
    if not out.get("StopSignal"):
        out["StopSignal"] = image.get("StopSignal", "")
    return out


def _image_config(
    parent: Mapping[str, Any], new_config: dict[str, Any], container_cfg: dict[str, Any],
    container_id: str, diff_ids: list[str], comment: str, author: str, empty: bool,
) -> bytes:
    """The child image's config, fields in moby's order (image.NewChildImage)."""
    created = rfc3339_nano(time.time_ns())
    history_entry: dict[str, Any] = {"created": created}
    if author:
        history_entry["author"] = author
    created_by = " ".join(container_cfg.get("Cmd") or [])
    if created_by:
        history_entry["created_by"] = created_by
    if comment:
        history_entry["comment"] = comment
    if empty:
        history_entry["empty_layer"] = True
    history = parent.get("history")
    out: dict[str, Any] = {}
    if comment:
        out["comment"] = comment
    out["created"] = created
    out["container"] = container_id
    out["container_config"] = container_cfg
    out["docker_version"] = _docker_version()
    if author:
        out["author"] = author
    out["config"] = new_config
    out["architecture"] = parent.get("architecture", "")
    if parent.get("variant"):
        out["variant"] = parent["variant"]
    out["os"] = parent.get("os") or "linux"
    out["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    out["history"] = [*(history if isinstance(history, list) else []), history_entry]
    if parent.get("os.version"):
        out["os.version"] = parent["os.version"]
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False).encode()
