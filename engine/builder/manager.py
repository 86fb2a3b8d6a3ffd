"""``POST /build``: dockerd's classic builder.

A build receives the context (engine/builder/context.py), parses the Dockerfile
(engine/builder/dockerfile.py), works out which stages the target needs, and runs
them in order (engine/builder/steps.py), printing the classic builder's lines as
``stream`` messages. Only a build that succeeds tags anything: the tags are the last
thing it does. The context lives in the daemon's tmp directory (wiped at start-up) and
goes when the build ends, however it ends.

What a build leaves behind on failure is what dockerd leaves: the intermediate images
of the steps that succeeded (untagged, removable, and the cache of the next try) and,
unless ``forcerm``, the container of the RUN that failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from engine.builder import dockerfile as df
from engine.builder import remote
from engine.builder.cache import BuildCache
from engine.builder.context import BuildContext, receive_context
from engine.builder.options import PROXY_ARGS, BuildOptions
from engine.builder.runmounts import SecretSource
from engine.builder.shellwords import expand_word
from engine.builder.steps import (
    BuildRun,
    StageBuilder,
    StageState,
    StepObserver,
    StepPosition,
    step_error_text,
)
from engine.containers.manager import ContainerManager
from engine.errors import EngineError, InvalidParameter, NotFound
from engine.ids import new_id
from engine.images.auth import AuthConfig
from engine.images.changes import container_config
from engine.images.manager import ImageManager
from engine.images.progress import Progress, ProgressSink, discard
from engine.images.reference import Reference, parse_normalized_named
from engine.layout import Layout
from engine.store.db import Database

log = logging.getLogger(__name__)


class StageLane(Protocol):
    """The progress of one concurrently built stage (BuildKit's vertices)."""

    def sink(self, message: Progress) -> None: ...
    def on_step(self, where: StepPosition) -> None: ...
    def fail(self, message: str) -> None: ...
    def complete(self, cached: bool = False) -> None: ...


LaneFactory = Callable[[], StageLane]
# Stages built at once at most (BuildKit-style concurrent stages).
STAGE_WORKERS = 4
# How long a failed or cancelled build waits for its containers' removal (seconds).
CLEANUP_WAIT = 30.0

# registry host → the build client's credentials for it (BuildKit session), or None
CredentialSource = Callable[[str], Awaitable[AuthConfig | None]]


@dataclass(frozen=True)
class CacheRecord:
    """One build cache entry as BuildKit's DiskUsage reports it: the image a step made."""

    image_id: str
    parent: str
    size: int  # the bytes of its own layer (not its parent's)
    created: float
    description: str  # the step's created_by
    in_use: bool


@dataclass(frozen=True)
class BuildPruneReport:
    deleted: list[str]
    space_reclaimed: int


_FILESYSTEM_STEPS = (df.RunCommand, df.CopyCommand, df.WorkdirCommand)


class BuildManager:
    def __init__(
        self, db: Database, layout: Layout, images: ImageManager, containers: ContainerManager,
        go_arch: str = "amd64",
    ) -> None:
        self._go_arch = go_arch
        self._layout = layout
        self._images = images
        self._containers = containers
        self._cache = BuildCache(db, lambda i: images.view_by_id(i) is not None)
        self._cleanups: set[asyncio.Future[None]] = set()

    # ------------------------------------------------------------------ build
    async def build(
        self, body: AsyncIterator[bytes], options: BuildOptions, sink: ProgressSink
    ) -> str:
        """Run one build; returns the image id. Errors raised before the first message
        (bad tags, context, Dockerfile) reach the client as plain HTTP errors."""
        tags = [_parse_tag(t) for t in options.tags]
        workdir = self._layout.tmp_dir / f"build-{new_id()[:16]}"
        await asyncio.to_thread((workdir / "context").mkdir, parents=True)
        try:
            if options.remote:
                context = await asyncio.to_thread(
                    remote.fetch_context, options.remote, workdir / "context",
                    options.dockerfile)
            else:
                context = await receive_context(body, workdir / "context", options.dockerfile)
            return await self.build_prepared(context, options, sink, tags)
        finally:
            await asyncio.to_thread(shutil.rmtree, workdir, True)

    async def build_prepared(
        self, context: BuildContext, options: BuildOptions, sink: ProgressSink,
        tags: Sequence[Reference] = (), on_step: StepObserver | None = None,
        secrets: SecretSource | None = None, credentials: CredentialSource | None = None,
        lanes: LaneFactory | None = None,
    ) -> str:
        """Run a build whose context is already on disk (``/build`` after receiving the
        tar; the BuildKit front after fetching it through the session). ``on_step`` hears
        of every instruction as it starts. With ``lanes`` (BuildKit's progress), stages
        that do not depend on each other run concurrently, each stage reporting through
        a lane of its own. Returns the image id."""
        dockerfile = df.parse(context.dockerfile_text)
        stages = _stages_to_build(dockerfile, options)
        shown = discard if options.quiet else sink
        run = BuildRun(
            options=options, images=self._images, containers=self._containers,
            cache=self._cache, sink=shown, context_root=context.root,
            escape=dockerfile.escape, meta_args={},
            resolve_image=lambda ref, platform: self._base_image(
                ref, options, shown, platform, credentials),
            cache_sources=self._cache_sources(options.cache_from),
            on_step=on_step, secrets=secrets, cache_mounts=self.cache_mounts_dir,
            scratch_root=context.root.parent,
        )
        try:
            image_id = await self._run_stages(run, dockerfile, stages, lanes)
        finally:
            if options.force_remove and run.failed_containers:
                # Shielded: a cancelled build (its client went) is often cancelled more
                # than once while it unwinds, which must not leave the container behind.
                cleanup = asyncio.ensure_future(
                    self._remove_containers(list(run.failed_containers)))
                self._cleanups.add(cleanup)
                cleanup.add_done_callback(self._cleanups.discard)
                # bounded: the build answers even if a removal hangs (it goes on alone)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(cleanup), CLEANUP_WAIT)
        unused = sorted(set(k for k in options.build_args
                            if k not in PROXY_ARGS) - run.consumed_args)
        if unused:
            shown(Progress(stream="[Warning] One or more build-args "
                                  f"[{' '.join(unused)}] were not consumed\n"))
        if options.quiet:
            sink(Progress(stream=f"{image_id}\n"))
            for ref in tags:
                await self._images.tag(image_id, ref.name, ref.tag)
            return image_id
        shown(Progress(stream=f"Successfully built {image_id.partition(':')[2][:12]}\n"))
        for ref in tags:
            name = await self._images.tag(image_id, ref.name, ref.tag)
            shown(Progress(stream=f"Successfully tagged {name}\n"))
        return image_id

    @property
    def cache_mounts_dir(self) -> Path:
        """Where ``RUN --mount=type=cache`` directories live (one per id)."""
        return self._layout.data_root / "build-cache-mounts"

    async def _remove_containers(self, ids: Sequence[str]) -> None:
        for cid in ids:
            with contextlib.suppress(EngineError):
                await self._containers.remove(cid, force=True)

    def scratch_dir(self) -> Path:
        """A fresh directory name under the daemon's tmp (wiped at start-up) for one
        build's files; the caller creates and removes it."""
        return self._layout.tmp_dir / f"build-{new_id()[:16]}"

    async def tag_image(self, image_id: str, names: Sequence[str]) -> list[str]:
        """Tag a built image with each name (``docker tag`` normalisation); all names
        are checked before the first tag is written. Returns the familiar names."""
        refs = [_parse_tag(n) for n in names]
        return [await self._images.tag(image_id, r.name, r.tag) for r in refs]

    def image_config(self, image_id: str) -> dict[str, object]:
        view = self._images.view_by_id(image_id)
        if view is None:
            raise NotFound(f"No such image: {image_id}")
        return dict(view.config)

    async def _run_stages(
        self, run: BuildRun, dockerfile: df.Dockerfile, stages: Sequence[int],
        lanes: LaneFactory | None = None,
    ) -> str:
        options = run.options
        total = len(dockerfile.meta_args) + sum(
            1 + len(dockerfile.stages[i].commands) for i in stages) + len(options.labels)
        step = 0
        named = len(stages) > 1

        def announce(stage_run: BuildRun, original: str,
                     where: StepPosition | None = None) -> None:
            nonlocal step
            step += 1
            if stage_run.on_step is not None and where is not None:
                stage_run.on_step(where)
            stage_run.say(f"Step {step}/{total} : {original}")
            stage_run.say("\n")

        # BuildKit's automatic platform args: global, so a stage (or FROM) that declares
        # ``ARG TARGETPLATFORM`` sees the value; never reported as unused.
        platform_args = _platform_args(options.platform, self._go_arch)
        run.meta_args.update(platform_args)
        run.consumed_args.update(platform_args)
        for arg in dockerfile.meta_args:
            announce(run, arg.original)
            for name, default in arg.args:
                given = options.build_args.get(name)
                if given is not None:
                    run.meta_args[name] = given
                elif default is not None:
                    env = {k: v for k, v in run.meta_args.items() if v is not None}
                    run.meta_args[name] = expand_word(default, env, dockerfile.escape)
                else:
                    run.meta_args[name] = None
                run.consumed_args.add(name)

        async def build_stage(stage_run: BuildRun, index: int) -> str:
            stage = dockerfile.stages[index]
            label = (stage.name or f"stage-{index}") if named else ""
            # BuildKit numbers only the instructions that make a filesystem step
            # (metadata ones change the config and have no vertex)
            count = 1 + sum(1 for c in stage.commands if isinstance(c, _FILESYSTEM_STEPS))
            announce(stage_run, stage.original,
                     StepPosition(label, 1, count, _from_vertex_text(stage_run, stage)))
            builder = await self._from(stage_run, stage)
            await builder.run_onbuild_triggers()
            number = 1
            for command in stage.commands:
                visible = isinstance(command, _FILESYSTEM_STEPS)
                number += visible
                announce(stage_run, command.original, StepPosition(
                    label, number if visible else 0, count, command.original))
                await builder.dispatch(command)
            if index == stages[-1]:
                # The request's labels: one LABEL step each, sorted (moby's
                # buildLabelOptions appends them to the Dockerfile).
                for key, value in sorted(options.labels.items()):
                    announce(stage_run, f"LABEL {key}={value}")
                    await builder.add_label(key, value)
            image_id = builder.state.image_id
            if image_id is None:
                raise InvalidParameter("No image was generated. Is your Dockerfile empty?")
            run.stage_images[str(index)] = image_id
            if stage.name:
                run.stage_images[stage.name] = image_id
            stage_run.sink(Progress(aux={"ID": image_id}))
            return image_id

        if lanes is None:
            image_id: str | None = None
            for index in stages:
                image_id = await build_stage(run, index)
            assert image_id is not None
            return image_id
        return await self._run_stages_concurrently(run, dockerfile, stages, build_stage, lanes)

    async def _run_stages_concurrently(
        self, run: BuildRun, dockerfile: df.Dockerfile, stages: Sequence[int],
        build_stage: Callable[[BuildRun, int], Awaitable[str]], lanes: LaneFactory,
    ) -> str:
        """BuildKit's order: a stage starts once the stages it uses are built, so
        independent stages run side by side (at most STAGE_WORKERS at once), each
        reporting through its own progress lane. The first failure cancels the rest."""
        deps = _stage_dependencies(dockerfile, stages)
        limit = asyncio.Semaphore(STAGE_WORKERS)
        tasks: dict[int, asyncio.Task[str]] = {}

        async def one(index: int) -> str:
            if deps[index]:
                await asyncio.gather(*(tasks[d] for d in deps[index]))
            log.debug("build stage %d: starting (after %s)", index, sorted(deps[index]))
            async with limit:
                lane = lanes()
                stage_run = dataclasses.replace(run, sink=lane.sink, on_step=lane.on_step)
                try:
                    image_id = await build_stage(stage_run, index)
                except Exception as exc:
                    lane.fail(step_error_text(exc, buildkit=True))
                    raise
                lane.complete()
                return image_id

        for index in stages:
            tasks[index] = asyncio.create_task(one(index))
        try:
            await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks.values():
                task.cancel()
            results = await asyncio.gather(*tasks.values(), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(
                    result, asyncio.CancelledError):
                raise result
        return tasks[stages[-1]].result()

    async def _from(self, run: BuildRun, stage: df.Stage) -> StageBuilder:
        env = {k: v for k, v in run.meta_args.items() if v is not None}
        base = expand_word(stage.base, env, run.escape)
        if not base:
            raise InvalidParameter(f"base name ({stage.base}) should not be blank")
        image_id: str | None
        named = run.options.named_images.get(base)
        if base in run.options.named_dirs:
            raise InvalidParameter(f"FROM {base}: a named context that is a directory can "
                                   "only be used by COPY --from and RUN --mount from=")
        if named is not None:
            assert run.resolve_image is not None
            image_id = await run.resolve_image(named, "")
        elif base.lower() in run.stage_images:
            image_id = run.stage_images[base.lower()]
        elif base == "scratch":
            image_id = None
        else:
            assert run.resolve_image is not None
            platform = expand_word(stage.platform, env, run.escape) if stage.platform else ""
            image_id = await run.resolve_image(base, platform)
        if image_id is None:
            state = StageState(image_id=None, config=container_config({}))
        else:
            view = self._images.view_by_id(image_id)
            if view is None:
                raise NotFound(f"No such image: {image_id}")
            config = dict(view.config.get("config") or {})
            state = StageState(image_id=image_id, config=container_config(config))
            run.say(f" ---> {view.short_id}\n")
        return StageBuilder(run, state)

    def _cache_sources(self, refs: Sequence[str]) -> list[str]:
        """``cachefrom`` images that exist here (dockerd ignores the others)."""
        out = []
        for ref in refs:
            with contextlib.suppress(EngineError):
                out.append(self._images.resolve(ref).id)
        return out

    async def _base_image(
        self, ref: str, options: BuildOptions, sink: ProgressSink, platform: str = "",
        credentials: CredentialSource | None = None,
    ) -> str:
        """A FROM or COPY --from image: local unless ``pull`` (or missing), then pulled
        for ``FROM --platform`` (else the request's platform) with the X-Registry-Config
        credentials of its registry."""
        if not options.pull:
            with contextlib.suppress(NotFound):
                return self._images.resolve(ref).id
        named = parse_normalized_named(ref)
        auth = _auth_for(named, options.registry_auth)
        if auth == AuthConfig() and credentials is not None:
            # BuildKit asks the client, naming Docker Hub by its registry host
            host = "registry-1.docker.io" if named.domain == "docker.io" else named.domain
            auth = await credentials(host) or auth
        await self._images.pull(str(named.tag_name_only()), None,
                                platform or options.platform or None, auth, sink)
        return self._images.resolve(ref).id

    # ------------------------------------------------------------------ cache usage
    async def cache_usage(self) -> list[CacheRecord]:
        """The build cache's entries whose images still exist."""
        out = []
        for image_id, parent, created in await self._cache.entries():
            view = self._images.view_by_id(image_id)
            if view is None:
                continue
            history = view.config.get("history") or []
            description = str(history[-1].get("created_by", "")) if history else ""
            out.append(CacheRecord(
                image_id=image_id, parent=parent,
                size=view.layer_sizes[-1] if view.layer_sizes and not
                (history and history[-1].get("empty_layer")) else 0,
                created=created, description=description,
                in_use=bool(self._containers.containers_using_image(image_id))))
        return out

    # ------------------------------------------------------------------ prune
    async def prune(self) -> BuildPruneReport:
        """``POST /build/prune``: forget every cache entry, and remove the images only
        the cache kept (untagged, unused, no children); returns what went."""
        image_ids = await self._cache.prune()
        deleted: list[str] = []
        reclaimed = await asyncio.to_thread(_empty_dir, self.cache_mounts_dir)
        for image_id in reversed(image_ids):
            view = self._images.view_by_id(image_id)
            if view is None or not view.dangling:
                continue
            if self._images.catalog.children.get(image_id):
                continue
            if self._containers.containers_using_image(image_id):
                continue
            size = view.size
            with contextlib.suppress(EngineError):
                records = await self._images.remove(image_id)
                reclaimed += size if any("Deleted" in r for r in records) else 0
                deleted.extend(r["Deleted"] for r in records if "Deleted" in r)
        return BuildPruneReport(deleted, reclaimed)


def _from_vertex_text(run: BuildRun, stage: df.Stage) -> str:
    """BuildKit's name for a FROM step: the image's full name (``FROM
    docker.io/library/busybox``); a stage, scratch or a named context as written."""
    env = {k: v for k, v in run.meta_args.items() if v is not None}
    base = expand_word(stage.base, env, run.escape)
    if (base.lower() in run.stage_images or base == "scratch"
            or base in run.options.named_images or base in run.options.named_dirs):
        return f"FROM {base}"
    try:
        return f"FROM {parse_normalized_named(base)}"
    except EngineError:
        return stage.original


def _platform_args(target: str, go_arch: str) -> dict[str, str | None]:
    """TARGETPLATFORM, TARGETOS, TARGETARCH, TARGETVARIANT and the BUILD* family."""
    build = ("linux", go_arch, "")
    parts = target.split("/") if target else list(build)
    os_name, arch, variant = [*parts, "", "", ""][:3]
    out: dict[str, str | None] = {}
    for prefix, (o, a, v) in (("BUILD", build), ("TARGET", (os_name, arch, variant))):
        out[f"{prefix}PLATFORM"] = "/".join(p for p in (o, a, v) if p)
        out[f"{prefix}OS"] = o
        out[f"{prefix}ARCH"] = a
        out[f"{prefix}VARIANT"] = v
    return out


def _stage_dependencies(dockerfile: df.Dockerfile, stages: Sequence[int]
                        ) -> dict[int, set[int]]:
    """For each stage to build, the earlier stages it uses (FROM, COPY --from,
    RUN --mount from=)."""
    by_name = {s.name: i for i, s in enumerate(dockerfile.stages) if s.name}
    wanted = set(stages)
    out: dict[int, set[int]] = {}
    for index in stages:
        out[index] = {dep for ref in _stage_refs(dockerfile.stages[index])
                      if (dep := _stage_index(ref, by_name, index)) is not None
                      and dep in wanted}
    return out


def _stage_refs(stage: df.Stage) -> list[str]:
    refs = [stage.base.lower()]
    for c in stage.commands:
        if isinstance(c, df.CopyCommand) and c.flags.get("from"):
            refs.append(c.flags["from"].lower())
        elif isinstance(c, df.RunCommand):
            for mount in c.mounts:
                refs += [f.partition("=")[2].lower() for f in mount.split(",")
                         if f.startswith("from=")]
    return refs


def _stage_index(ref: str, by_name: Mapping[str, int], before: int) -> int | None:
    dep = by_name.get(ref)
    if dep is None and ref.isdigit():
        dep = int(ref)
    return dep if dep is not None and dep < before else None


def _stages_to_build(dockerfile: df.Dockerfile, options: BuildOptions) -> list[int]:
    """The target stage and the stages it needs (by FROM or COPY --from), in order."""
    stages = dockerfile.stages
    if options.target:
        names = [s.name for s in stages]
        if options.target.lower() not in names:
            raise InvalidParameter(
                f"failed to reach build target {options.target} in Dockerfile")
        target = names.index(options.target.lower())
    else:
        target = len(stages) - 1
    by_name = {s.name: i for i, s in enumerate(stages) if s.name}
    needed = {target}
    pending = [target]
    while pending:
        index = pending.pop()
        for ref in _stage_refs(stages[index]):
            dep = _stage_index(ref, by_name, index)
            if dep is not None and dep not in needed:
                needed.add(dep)
                pending.append(dep)
    return sorted(needed)


def _parse_tag(text: str) -> Reference:
    named = parse_normalized_named(text)
    if named.digest is not None:
        raise InvalidParameter(f"invalid reference format: {text} is a digest reference")
    return named.tag_name_only()


def _auth_for(named: Reference, configs: Mapping[str, AuthConfig]) -> AuthConfig:
    candidates = [named.domain]
    if named.domain == "docker.io":
        candidates += ["https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io"]
    for key in candidates:
        if key in configs:
            return configs[key]
    for key, auth in configs.items():
        host = key.removeprefix("https://").removeprefix("http://").split("/")[0]
        if host == named.domain:
            return auth
    return AuthConfig()


def _empty_dir(directory: Path) -> int:
    """Remove everything below ``directory`` (cache mounts); returns the bytes freed."""
    freed = 0
    if not directory.is_dir():
        return 0
    for entry in directory.iterdir():
        for root, _dirs, names in os.walk(entry):
            for name in names:
                with contextlib.suppress(OSError):
                    freed += os.lstat(os.path.join(root, name)).st_size
        shutil.rmtree(entry, ignore_errors=True)
    return freed
