"""One build stage, instruction by instruction, as dockerd's classic builder runs it.

Each instruction turns the stage's image into a child image:

- metadata instructions (ENV, LABEL, CMD, EXPOSE, ...) change only the image config;
  no container is needed, so none is made (dockerd creates and removes one, printing
  ``Running in``/``Removing intermediate container`` lines we do not print);
- WORKDIR, COPY and ADD write files into a container made from the image, never
  started, whose rw layer becomes the new layer;
- RUN starts a container with the command and commits its rw layer when it exits 0.

Before any of that the step's run config (its ``container_config``) is looked up in the
build cache; a hit reuses the recorded image (`` ---> Using cache``).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy as copying
import hashlib
import logging
import os
import posixpath
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.builder import cachefrom, history, remote, runmounts
from engine.builder import copy as files
from engine.builder import dockerfile as df
from engine.builder.cache import BuildCache, step_key
from engine.builder.options import PROXY_ARGS, BuildOptions
from engine.builder.shellwords import expand_word, expand_words
from engine.containers.manager import ContainerManager
from engine.containers.signals import parse_signal
from engine.containers.streams import STDERR
from engine.errors import EngineError, InvalidParameter, NotFound
from engine.images.changes import container_config
from engine.images.commit import commit_step
from engine.images.manager import ImageManager
from engine.images.progress import Progress, ProgressSink, short

DEFAULT_SHELL = ("/bin/sh", "-c")
log = logging.getLogger(__name__)


class BuildStepFailed(EngineError):
    """A RUN exited non-zero; ``exit_code`` goes into the stream's ``errorDetail``."""

    def __init__(self, message: str, exit_code: int, command: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.command = tuple(command)

    @property
    def buildkit_message(self) -> str:
        """The same failure in BuildKit's words (what its clients print)."""
        return (f'process "{" ".join(self.command)}" did not complete successfully: '
                f"exit code: {self.exit_code}")


def step_error_text(exc: BaseException, buildkit: bool) -> str:
    """How a failed step is reported: BuildKit's text for a RUN on its path."""
    if buildkit and isinstance(exc, BuildStepFailed):
        return exc.buildkit_message
    return str(exc)


@dataclass
class StageState:
    """What the stage has built so far: the image, its config and the ARGs in scope."""

    image_id: str | None  # None: FROM scratch, nothing committed yet
    config: dict[str, Any]
    author: str = ""
    cmd_set: bool = False
    args: dict[str, str | None] = field(default_factory=dict)  # declared in this stage

    def env_map(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in self.config.get("Env") or []:
            key, _, value = str(item).partition("=")
            out[key] = value
        return out

    def shell(self) -> list[str]:
        return list(self.config.get("Shell") or DEFAULT_SHELL)


@dataclass(frozen=True)
class StepPosition:
    """Where an instruction sits, as BuildKit names its vertices: ``[label n/count]``
    (``label`` is the stage's name or ``stage-N`` in multi-stage builds, else empty).
    ``number`` 0: a metadata instruction, which BuildKit shows no vertex for."""

    stage_label: str
    number: int
    count: int
    instruction: str

    @property
    def vertex_name(self) -> str:
        prefix = f"{self.stage_label} " if self.stage_label else ""
        return f"[{prefix}{self.number}/{self.count}] {self.instruction}"


StepObserver = Callable[[StepPosition], None]


@dataclass
class BuildRun:
    """Shared by every stage of one build."""

    options: BuildOptions
    images: ImageManager
    containers: ContainerManager
    cache: BuildCache
    sink: ProgressSink
    context_root: Path
    escape: str
    meta_args: dict[str, str | None]
    consumed_args: set[str] = field(default_factory=set)
    stage_images: dict[str, str | None] = field(default_factory=dict)  # name or index → id
    failed_containers: list[str] = field(default_factory=list)
    # (reference, platform) → image id, pulled when needed
    resolve_image: Callable[[str, str], Awaitable[str | None]] | None = None
    cache_sources: list[str] = field(default_factory=list)  # --cache-from image ids
    on_step: StepObserver | None = None  # told as each instruction starts (BuildKit front)
    # RUN --mount: the client's secrets (BuildKit session; None: there are none), where
    # cache mounts live, where a RUN's private files go
    secrets: runmounts.SecretSource | None = None
    cache_mounts: Path | None = None
    scratch_root: Path | None = None
    emptied_caches: set[str] = field(default_factory=set)

    def say(self, text: str) -> None:
        self.sink(Progress(stream=text))


class StageBuilder:
    def __init__(self, run: BuildRun, state: StageState) -> None:
        self._run = run
        self._state = state

    @property
    def state(self) -> StageState:
        return self._state

    # ------------------------------------------------------------------ expansion
    def _args_in_effect(self) -> dict[str, str]:
        """Declared ARGs with a value, as RUN sees them (ENV of the same name wins)."""
        env = self._state.env_map()
        out: dict[str, str] = {}
        for name, value in self._state.args.items():
            if value is not None and name not in env:
                out[name] = value
        for name in PROXY_ARGS:
            given = self._run.options.build_args.get(name)
            if given is not None and name not in env and name not in out:
                out[name] = given
        return out

    def _expansion_env(self) -> dict[str, str]:
        return {**self._args_in_effect(), **self._state.env_map()}

    def _word(self, text: str) -> str:
        return expand_word(text, self._expansion_env(), self._run.escape)

    def _words(self, text: str) -> list[str]:
        return expand_words(text, self._expansion_env(), self._run.escape)

    # ------------------------------------------------------------------ dispatch
    async def dispatch(self, command: df.Command) -> None:
        handler = _HANDLERS.get(type(command))
        if handler is None:
            raise InvalidParameter(f"unsupported instruction {command.keyword}")
        await handler(self, command)

    async def run_onbuild_triggers(self) -> None:
        triggers = [str(t) for t in self._state.config.get("OnBuild") or []]
        self._state.config["OnBuild"] = None
        if not triggers:
            return
        plural = "s" if len(triggers) != 1 else ""
        self._run.say(f"# Executing {len(triggers)} build trigger{plural}\n")
        for text in triggers:
            command = df.parse_instruction(text, escape=self._run.escape)
            if isinstance(command, df.OnbuildCommand):
                raise InvalidParameter("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
            await self.dispatch(command)

    # ------------------------------------------------------------------ metadata steps
    async def _metadata(self, comment: str) -> None:
        """Commit a config-only change (no container, no layer)."""
        run_config = self._run_config(history.metadata_cmd(self._state.shell(), comment))
        await self._commit_or_reuse(run_config, None)

    def _run_config(self, cmd: Sequence[str]) -> dict[str, Any]:
        cfg = copying.deepcopy(self._state.config)
        cfg["Cmd"] = list(cmd)
        cfg["Image"] = self._state.image_id or ""
        return container_config(cfg)

    async def _commit_or_reuse(
        self, run_config: dict[str, Any],
        make_container: Callable[[], Awaitable[str]] | None,
        announce_container: bool = False, key_extra: Sequence[str] = (),
    ) -> None:
        parent = self._state.image_id
        key = step_key(run_config)
        if key_extra:  # what the run config does not show (RUN --mount, --network)
            key = hashlib.sha256("\n".join([key, *key_extra]).encode()).hexdigest()
        if not self._run.options.no_cache:
            # With --cache-from only the given images count, as with dockerd (whose
            # local hits must then be ancestors of those images).
            with_sources = bool(self._run.options.cache_from)
            hit = None if with_sources else await self._run.cache.lookup(parent, key)
            if self._run.cache_sources:
                hit = await cachefrom.probe(
                    self._run.images, self._run.cache_sources, parent,
                    " ".join(run_config.get("Cmd") or []), container_config(self._state.config))
                if hit is not None:
                    await self._run.cache.record(parent, key, hit)
            if hit is not None:
                self._run.say(" ---> Using cache\n")
                self._set_image(hit)
                return
        container = await make_container() if make_container is not None else None
        try:
            image_id = await commit_step(
                self._run.images, self._run.containers, container=container,
                parent_id=parent, config=container_config(self._state.config),
                container_config=run_config, author=self._state.author,
            )
        finally:
            if container is not None and not announce_container:
                await self._remove_container(container)
        if container is not None and announce_container:
            if self._run.options.remove or self._run.options.force_remove:
                self._run.say(f"Removing intermediate container {container[:12]}\n")
                await self._remove_container(container)
        await self._run.cache.record(parent, key, image_id)
        self._set_image(image_id)

    def _set_image(self, image_id: str) -> None:
        self._state.image_id = image_id
        self._run.say(f" ---> {short(image_id)}\n")

    async def _remove_container(self, container: str) -> None:
        with contextlib.suppress(NotFound):
            await self._run.containers.remove(container, force=True)

    async def _new_container(self, cmd: Sequence[str], env: Sequence[str] | None = None,
                             entrypoint: Sequence[str] | None = None,
                             allow_scratch: bool = False,
                             host_extra: Mapping[str, Any] | None = None) -> str:
        """A container of the stage's image. On ``FROM scratch`` with nothing committed
        yet (``allow_scratch``: COPY/ADD), of an empty image made for the purpose and
        removed at once: it stays hidden while the container names it and goes with it;
        the step's commit then has no parent."""
        image = self._state.image_id
        if image is None:
            if not allow_scratch:
                raise InvalidParameter(
                    "Please provide a source image with `from` prior to commit"
                )
            empty = container_config({})
            image = await commit_step(
                self._run.images, self._run.containers, container=None, parent_id=None,
                config=empty, container_config=empty,
            )
        try:
            return await self._create_container(image, cmd, env, entrypoint, host_extra)
        finally:
            if image != self._state.image_id:
                with contextlib.suppress(EngineError):
                    await self._run.images.remove(image, force=True)

    async def _create_container(self, image: str, cmd: Sequence[str],
                                env: Sequence[str] | None,
                                entrypoint: Sequence[str] | None,
                                host_extra: Mapping[str, Any] | None = None) -> str:
        cfg = self._state.config
        host_config = {**self._run.options.limits.host_config(), **(host_extra or {})}
        body: dict[str, Any] = {
            "Image": image,
            "Cmd": list(cmd),
            "Entrypoint": list(entrypoint) if entrypoint is not None else None,
            "Env": list(env if env is not None else cfg.get("Env") or []),
            "WorkingDir": cfg.get("WorkingDir") or "",
            "User": cfg.get("User") or "",
            "Labels": {},
            "AttachStdout": True,
            "AttachStderr": True,
            "HostConfig": host_config,
        }
        cid, _warnings = await self._run.containers.create(body, None)
        return cid

    # ------------------------------------------------------------------ handlers
    async def env(self, c: df.EnvCommand) -> None:
        env = list(self._state.config.get("Env") or [])
        parts = []
        for raw_key, raw_value in c.pairs:
            key, value = self._word(raw_key), self._word(raw_value)
            if not key:
                raise InvalidParameter("ENV names can not be blank")
            env = [e for e in env if e.partition("=")[0] != key] + [f"{key}={value}"]
            self._state.config["Env"] = env  # later pairs see earlier ones
            parts.append(f"{key}={value}")
        await self._metadata("ENV " + " ".join(parts))

    async def label(self, c: df.LabelCommand) -> None:
        labels = dict(self._state.config.get("Labels") or {})
        parts = []
        for raw_key, raw_value in c.pairs:
            key, value = self._word(raw_key), self._word(raw_value)
            if not key:
                raise InvalidParameter("LABEL names can not be blank")
            labels[key] = value
            parts.append(f"{key}={value}")
        self._state.config["Labels"] = labels
        await self._metadata("LABEL " + " ".join(parts))

    async def add_label(self, key: str, value: str) -> None:
        """One of the request's ``labels`` (taken as written: no expansion)."""
        self._state.config["Labels"] = {**(self._state.config.get("Labels") or {}), key: value}
        await self._metadata(f"LABEL {key}={value}")

    async def maintainer(self, c: df.MaintainerCommand) -> None:
        self._state.author = c.maintainer
        await self._metadata("MAINTAINER " + c.maintainer)

    async def arg(self, c: df.ArgCommand) -> None:
        texts = []
        for name, default in c.args:
            given = self._run.options.build_args.get(name)
            value: str | None
            if name in self._run.options.build_args and given is not None:
                value = given
            elif default is not None:
                value = self._word(default)
            else:
                value = self._run.meta_args.get(name)
            self._state.args[name] = value
            self._run.consumed_args.add(name)
            texts.append(name if default is None else f"{name}={default}")
        await self._metadata("ARG " + " ".join(texts))

    async def expose(self, c: df.ExposeCommand) -> None:
        words = [w for raw in c.ports for w in self._words(raw)]
        ports = dict(self._state.config.get("ExposedPorts") or {})
        for word in words:
            for port in _port_keys(word):
                ports[port] = {}
        self._state.config["ExposedPorts"] = ports
        await self._metadata("EXPOSE " + " ".join(words))

    async def volume(self, c: df.VolumeCommand) -> None:
        paths = [w for raw in c.paths for w in self._words(raw)]
        volumes = dict(self._state.config.get("Volumes") or {})
        for path in paths:
            if not path.strip():
                raise InvalidParameter("VOLUME specified can not be an empty string")
            volumes[path] = {}
        self._state.config["Volumes"] = volumes
        await self._metadata("VOLUME " + history.go_list(paths))

    async def user(self, c: df.UserCommand) -> None:
        self._state.config["User"] = self._word(c.user)
        await self._metadata("USER " + self._state.config["User"])

    async def stopsignal(self, c: df.StopSignalCommand) -> None:
        value = self._word(c.signal)
        parse_signal(value)
        self._state.config["StopSignal"] = value
        await self._metadata("STOPSIGNAL " + value)

    async def shell(self, c: df.ShellCommand) -> None:
        self._state.config["Shell"] = list(c.shell)
        await self._metadata("SHELL " + history.go_list(list(c.shell)))

    async def onbuild(self, c: df.OnbuildCommand) -> None:
        expression = c.expression.strip()
        keyword, _, rest = expression.partition(" ")
        trigger = keyword.upper() + (" " + rest if rest else "")
        if keyword.upper() in {"ONBUILD", "FROM", "MAINTAINER"}:
            raise InvalidParameter(f"{keyword.upper()} isn't allowed as an ONBUILD trigger")
        self._state.config["OnBuild"] = [*(self._state.config.get("OnBuild") or []), trigger]
        await self._metadata("ONBUILD " + trigger)

    async def healthcheck(self, c: df.HealthcheckCommand) -> None:
        test = list(c.test or [])
        health: dict[str, Any] = {"Test": test}
        if test != ["NONE"]:
            for key, value in (("Interval", c.interval), ("Timeout", c.timeout),
                               ("StartPeriod", c.start_period),
                               ("StartInterval", c.start_interval)):
                if value:
                    health[key] = round(value * 1_000_000_000)
            if c.retries:
                health["Retries"] = c.retries
        self._state.config["Healthcheck"] = health
        await self._metadata("HEALTHCHECK " + history.healthcheck_text(health))

    async def cmd(self, c: df.CmdCommand) -> None:
        argv = self._command_line(c.cmd, c.prepend_shell)
        self._state.config["Cmd"] = argv
        self._state.cmd_set = True
        await self._metadata("CMD " + history.go_quoted_list(argv))

    async def entrypoint(self, c: df.EntrypointCommand) -> None:
        argv = self._command_line(c.cmd, c.prepend_shell)
        self._state.config["Entrypoint"] = argv
        if not self._state.cmd_set:
            self._state.config["Cmd"] = None  # the base image's CMD no longer applies
        await self._metadata("ENTRYPOINT " + history.go_quoted_list(argv))

    def _command_line(self, cmd: Sequence[str], prepend_shell: bool) -> list[str]:
        if prepend_shell and cmd:  # a bare CMD/ENTRYPOINT/RUN is an empty command
            return [*self._state.shell(), *cmd]
        return list(cmd)

    async def workdir(self, c: df.WorkdirCommand) -> None:
        path = self._word(c.path)
        current = self._state.config.get("WorkingDir") or "/"
        resolved = posixpath.normpath(posixpath.join(current, path))
        if resolved.startswith("//"):
            resolved = resolved[1:]
        self._state.config["WorkingDir"] = resolved
        run_config = self._run_config(
            history.file_step_cmd(self._state.shell(), "WORKDIR " + resolved))
        if self._state.image_id is None:
            await self._commit_or_reuse(run_config, None)
            return

        async def make() -> str:
            cid = await self._new_container(run_config["Cmd"])
            async with self._run.containers.rootfs(cid) as (_view, rootfs):
                await asyncio.to_thread(files.make_workdir, rootfs, resolved)
            return cid

        await self._commit_or_reuse(run_config, make)

    async def run(self, c: df.RunCommand) -> None:
        argv = self._command_line(c.cmd, c.prepend_shell)
        args = self._args_in_effect()
        recorded = {k: v for k, v in args.items()
                    if k not in PROXY_ARGS or k in self._state.args}
        run_config = self._run_config([*history.build_args_prefix(recorded), *argv])
        env = [*(self._state.config.get("Env") or []),
               *(f"{k}={v}" for k, v in sorted(args.items()))]
        specs = [runmounts.parse_mount(m, self._word) for m in c.mounts]
        host_extra, key_extra = self._run_flags(c)
        log.debug("RUN %s: preparing %d mounts", argv[-1][:40], len(specs))
        async with runmounts.prepared(specs, self._mount_context()) as mounts:
            log.debug("RUN %s: mounts ready", argv[-1][:40])
            if mounts.mounts:
                host_extra["Mounts"] = mounts.mounts
            key_extra += mounts.key

            async def make() -> str:
                cid = await self._new_container(argv, env=[*env, *mounts.env], entrypoint=[],
                                                host_extra=host_extra)
                self._run.say(f" ---> Running in {cid[:12]}\n")
                # Kept for forcerm until the step succeeds (dockerd leaves a failed step's
                # container behind unless forcerm).
                self._run.failed_containers.append(cid)
                code = await self._run.containers.run_attached(cid, self._output)
                if code != 0:
                    raise BuildStepFailed(
                        f"The command '{' '.join(argv)}' returned a non-zero code: {code}",
                        code, argv)
                self._run.failed_containers.remove(cid)
                return cid

            await self._commit_or_reuse(run_config, make, announce_container=True,
                                        key_extra=key_extra)

    def _run_flags(self, c: df.RunCommand) -> tuple[dict[str, Any], list[str]]:
        """``RUN --network`` and ``--security``: HostConfig additions, cache-key text."""
        host: dict[str, Any] = {}
        key: list[str] = []
        network = self._word(c.flags.get("network", "")).lower()
        if network == "none":
            host["NetworkMode"] = "none"
            key.append("network=none")
        elif network == "host":
            raise InvalidParameter("RUN --network=host is not allowed: it needs the "
                                   "network.host entitlement, which this daemon does not grant")
        elif network not in ("", "default"):
            raise InvalidParameter(f"unsupported RUN --network value {network!r}")
        security = self._word(c.flags.get("security", "")).lower()
        if security == "insecure":
            raise InvalidParameter("RUN --security=insecure is not allowed: it needs the "
                                   "security.insecure entitlement, which this daemon does "
                                   "not grant")
        if security not in ("", "sandbox"):
            raise InvalidParameter(f"unsupported RUN --security value {security!r}")
        return host, key

    def _mount_context(self) -> runmounts.MountContext:
        run = self._run
        return runmounts.MountContext(
            context_root=run.context_root,
            scratch_root=run.scratch_root or run.context_root.parent,
            cache_root=run.cache_mounts, no_cache=run.options.no_cache,
            secrets=run.secrets, stage_root=self._stage_rootfs,
            emptied=run.emptied_caches)

    @contextlib.asynccontextmanager
    async def _stage_rootfs(self, source_from: str) -> AsyncIterator[tuple[Path, str]]:
        """A stage's or image's rootfs (``RUN --mount=from=``), with its image id; a
        named context's directory, with "" (its files then enter the cache key)."""
        named_dir = self._run.options.named_dirs.get(source_from)
        if named_dir is not None:
            yield named_dir, ""
            return
        image_id = await self._image_for(source_from, "RUN --mount from")
        cid, _ = await self._run.containers.create(
            {"Image": image_id, "Cmd": ["true"], "Labels": {},
             "HostConfig": {"NetworkMode": "none", "LogConfig": {"Type": "none"}}}, None)
        try:
            async with self._run.containers.rootfs(cid) as (_view, rootfs):
                yield rootfs, image_id
        finally:
            await self._remove_container(cid)

    async def _output(self, stream: int, data: bytes) -> None:
        text = data.decode("utf-8", "replace")
        # dockerd colours a RUN's stderr red in the stream (docker-py tests for it).
        self._run.say(f"\x1b[91m{text}\x1b[0m" if stream == STDERR else text)

    async def copy(self, c: df.CopyCommand) -> None:
        instruction = "ADD" if c.is_add else "COPY"
        sources = [w for raw in c.sources for w in self._words(raw)] if c.sources else []
        dest = self._word(c.dest)
        urls = [source for source in sources if c.is_add and remote.is_url(source)]
        if urls and len(urls) != len(sources):
            raise InvalidParameter("ADD of URLs and local files in one instruction is not "
                                   "supported: use one ADD for each")
        chown = self._word(c.flags["chown"]) if c.flags.get("chown") else ""
        chmod = self._parse_chmod(c.flags.get("chmod") or "")
        source_from = self._word(c.flags["from"]) if c.flags.get("from") else ""
        heredocs = {f"<<{h.name}": h for h in c.heredocs}
        inline = [h for raw in c.sources if (h := heredocs.get(raw)) is not None]
        if inline and (len(inline) != len(c.sources) or source_from or urls):
            raise InvalidParameter(f"{instruction} of heredocs and other sources in one "
                                   "instruction is not supported: use one for each")
        async with self._source_root(source_from, sources, urls, dest, inline) as (
                src_root, sources):
            resolved = await asyncio.to_thread(
                files.resolve_sources, src_root, sources, cmd=instruction,
                in_context=not source_from and not urls)
            digest = await asyncio.to_thread(files.content_digest, src_root, resolved)
            chown_text = f"--chown={chown}" if chown else ""
            comment = f"{instruction} {chown_text}{digest} in {dest} "
            run_config = self._run_config(history.file_step_cmd(self._state.shell(), comment))
            workdir = self._state.config.get("WorkingDir") or "/"

            async def make() -> str:
                cid = await self._new_container(run_config["Cmd"], allow_scratch=True)
                async with self._run.containers.rootfs(cid) as (_view, rootfs):
                    owner = None
                    if chown:
                        owner = await asyncio.to_thread(files.chown_ids, rootfs, chown)
                    await asyncio.to_thread(
                        files.copy_into, src_root, resolved, rootfs, dest, workdir,
                        chown=owner, chmod=chmod, extract_archives=c.is_add and not urls,
                        cmd=instruction,
                    )
                return cid

            await self._commit_or_reuse(run_config, make)

    @contextlib.asynccontextmanager
    async def _downloads(
        self, urls: Sequence[str], dest: str
    ) -> AsyncIterator[tuple[Path, list[str]]]:
        """ADD's URLs fetched into a directory of the build's own (gone afterwards)."""
        # a name of its own: concurrently built stages share the build's directory
        directory = self._run.context_root.parent / f"add-{os.urandom(6).hex()}"
        await asyncio.to_thread(directory.mkdir)
        try:
            names = []
            for url in urls:
                # A destination not ending in / names the file; else the URL does.
                name = remote.file_name(url) if dest.endswith("/") or len(urls) > 1 \
                    else posixpath.basename(dest) or remote.file_name(url)
                await asyncio.to_thread(remote.download, url, directory, name)
                names.append(name)
            yield directory, names
        finally:
            await asyncio.to_thread(shutil.rmtree, directory, True)

    def _parse_chmod(self, text: str) -> int | None:
        if not text:
            return None
        try:
            value = int(text, 8)
        except ValueError:
            raise InvalidParameter(f"invalid chmod parameter: {text}") from None
        if value < 0 or value > 0o7777:
            raise InvalidParameter(f"invalid chmod parameter: {text}")
        return value

    async def _image_for(self, source_from: str, what: str) -> str:
        """The image a ``--from``/``from=`` names: a stage of this build, else an image."""
        key = source_from.lower()
        image_id: str | None
        named = self._run.options.named_images.get(source_from)
        if named is not None:
            assert self._run.resolve_image is not None
            image_id = await self._run.resolve_image(named, "")
        elif key in self._run.stage_images:
            image_id = self._run.stage_images[key]
        else:
            assert self._run.resolve_image is not None
            try:
                image_id = await self._run.resolve_image(source_from, "")
            except EngineError as exc:
                raise type(exc)(f"invalid from flag value {source_from}: {exc}") from None
        if image_id is None:
            raise InvalidParameter(f"{what}={source_from}: the stage has no files "
                                   "(FROM scratch with nothing added)")
        return image_id

    @contextlib.asynccontextmanager
    async def _heredoc_files(
        self, heredocs: Sequence[df.Heredoc]
    ) -> AsyncIterator[tuple[Path, list[str]]]:
        """``COPY <<EOF /dst``: each heredoc as a file named after it, in a directory of
        the build's own (gone afterwards); unquoted ones have ``$VAR`` expanded."""
        directory = self._run.context_root.parent / f"heredoc-{os.urandom(6).hex()}"
        env = {**self._state.env_map(), **self._args_in_effect()}
        contents = {h.name: _expand_heredoc(h.content, env) if h.expand else h.content
                    for h in heredocs}
        await asyncio.to_thread(_write_files, directory, contents)
        try:
            yield directory, [h.name for h in heredocs]
        finally:
            await asyncio.to_thread(shutil.rmtree, directory, True)

    @contextlib.asynccontextmanager
    async def _source_root(
        self, source_from: str, sources: Sequence[str], urls: Sequence[str], dest: str,
        heredocs: Sequence[df.Heredoc] = (),
    ) -> AsyncIterator[tuple[Path, list[str]]]:
        """The directory COPY reads from and the source names in it: the context, the
        files ADD downloaded, the heredocs, or the rootfs of a previous stage or another
        image (``--from``), mounted through a container never started."""
        if heredocs:
            async with self._heredoc_files(heredocs) as found:
                yield found
            return
        if urls:
            async with self._downloads(urls, dest) as found:
                yield found
            return
        if not source_from:
            yield self._run.context_root, list(sources)
            return
        named_dir = self._run.options.named_dirs.get(source_from)
        if named_dir is not None:
            yield named_dir, list(sources)
            return
        image_id = await self._image_for(source_from, "COPY --from")
        cid, _ = await self._run.containers.create(
            {"Image": image_id, "Cmd": ["true"], "Labels": {},
             "HostConfig": {"NetworkMode": "none", "LogConfig": {"Type": "none"}}}, None)
        try:
            async with self._run.containers.rootfs(cid) as (_view, rootfs):
                yield rootfs, list(sources)
        finally:
            await self._remove_container(cid)


def _port_keys(word: str) -> list[str]:
    """``80`` → ``80/tcp``; ``8000-8002/udp`` → each port of the range."""
    port, _, proto = word.partition("/")
    proto = (proto or "tcp").lower()
    if proto not in {"tcp", "udp", "sctp"}:
        raise InvalidParameter(f"invalid proto: {proto}")
    first, _, last = port.partition("-")
    try:
        start = int(first)
        end = int(last) if last else start
    except ValueError:
        raise InvalidParameter(f"Invalid containerPort: {port}") from None
    if not 0 < start <= end <= 65535:
        raise InvalidParameter(f"Invalid containerPort: {port}")
    return [f"{p}/{proto}" for p in range(start, end + 1)]


Handler = Callable[[StageBuilder, Any], Awaitable[None]]
_HANDLERS: dict[type, Handler] = {
    df.EnvCommand: StageBuilder.env,
    df.LabelCommand: StageBuilder.label,
    df.MaintainerCommand: StageBuilder.maintainer,
    df.ArgCommand: StageBuilder.arg,
    df.ExposeCommand: StageBuilder.expose,
    df.VolumeCommand: StageBuilder.volume,
    df.UserCommand: StageBuilder.user,
    df.StopSignalCommand: StageBuilder.stopsignal,
    df.ShellCommand: StageBuilder.shell,
    df.OnbuildCommand: StageBuilder.onbuild,
    df.HealthcheckCommand: StageBuilder.healthcheck,
    df.CmdCommand: StageBuilder.cmd,
    df.EntrypointCommand: StageBuilder.entrypoint,
    df.WorkdirCommand: StageBuilder.workdir,
    df.RunCommand: StageBuilder.run,
    df.CopyCommand: StageBuilder.copy,
}


_HEREDOC_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def _expand_heredoc(text: str, env: Mapping[str, str]) -> str:
    """``$NAME`` and ``${NAME}`` in an unquoted heredoc; quotes stay as written."""
    return _HEREDOC_VARIABLE.sub(lambda m: env.get(m.group(1) or m.group(2), ""), text)


def _write_files(directory: Path, contents: Mapping[str, str]) -> None:
    directory.mkdir(mode=0o700)
    for name, text in contents.items():
        path = directory / name
        path.write_text(text)
        os.chmod(path, 0o644)
