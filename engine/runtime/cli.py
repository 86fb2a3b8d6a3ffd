"""RuncCLI: an OCI runtime driven through its command line (runc, crun, or a configured one).

Every call passes our own ``--root`` so the engine's containers never mix with other users
of the same runtime, and ``--log-format json`` so the runtime's errors can be parsed into
one clean message whatever runtime it is (runc and crun both print JSON log lines on
stderr when no ``--log`` file is given). The runtime's own message always ends up in the
raised error: that text is what `docker` prints.

Errors map onto the engine's categories: "container does not exist" (runc) or a missing
state file under our root (crun) → ``NotFound``; a container in the wrong state ("not
running", "cannot start a container that has stopped", …) → ``Conflict``; anything else
→ ``SystemError_``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast, get_args

from engine.config import EngineConfig
from engine.errors import Conflict, EngineError, NotFound, SystemError_
from engine.layout import Layout
from engine.runtime.base import RuntimeState, RuntimeStatus

log = logging.getLogger(__name__)

# The environment handed to the runtime: PATH only. In particular NOTIFY_SOCKET must not
# leak (runc would proxy sd_notify of the container to the daemon's supervisor).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

DEFAULT_TIMEOUT = 60.0
"""Seconds any runtime command may take before it is killed (a hung runtime must not hang
the daemon; a healthy one answers in milliseconds)."""

_PROBE_BINARY = "/.wharfd-probe-missing"

_STATUSES: frozenset[str] = frozenset(get_args(RuntimeStatus))

# What the runtimes print for an unknown container: runc "container does not exist",
# crun "error opening file `<root>/<id>/status`: No such file or directory".
_NOT_FOUND_MARKERS = ("does not exist", "container not found", "no such container")
_CONFLICT_MARKERS = (
    "not running",
    "not paused",
    "not stopped",
    "cannot start",
    "already running",
    "already paused",
    "paused state",
    "created state",
    "is running",
    "is paused",
)
_LOGFMT_MSG = re.compile(r'msg="((?:[^"\\]|\\.)*)"')


def runtime_env() -> dict[str, str]:
    """The minimal environment for a runtime (or conmon) process."""
    return {"PATH": os.environ.get("PATH") or DEFAULT_PATH}


def runtime_error_message(stderr: str) -> str:
    """One readable message from what a runtime printed on stderr.

    Understands JSON log lines (``--log-format json``) and logfmt lines (runc's default,
    ``time="…" level=error msg="…"``); error-level messages win over the rest. Text that
    is neither is returned stripped, so no diagnostic is ever dropped.
    """
    errors: list[str] = []
    others: list[str] = []
    for raw in stderr.splitlines():
        line = raw.strip()
        if not line:
            continue
        level, msg = _parse_log_line(line)
        (errors if level in ("error", "fatal", "panic") else others).append(msg)
    picked = errors or others
    return "; ".join(dict.fromkeys(picked)) if picked else stderr.strip()


def _parse_log_line(line: str) -> tuple[str, str]:
    if line.startswith("{"):
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("msg"), str):
            return str(obj.get("level", "")), cast(str, obj["msg"])
    match = _LOGFMT_MSG.search(line)
    if match is not None:
        level = "error" if "level=error" in line or "level=fatal" in line else ""
        return level, _unescape_logfmt(match.group(1))
    return "", line


def _unescape_logfmt(text: str) -> str:
    # logrus quotes with Go's strconv.Quote: \" \\ \n \t and \xNN / \uNNNN for the rest.
    try:
        return cast(str, json.loads(f'"{text}"'))
    except ValueError:
        return text.replace('\\"', '"').replace("\\\\", "\\")


def classify_runtime_error(message: str, root: Path, container_id: str) -> EngineError:
    """The engine error category for a runtime's failure message about one container."""
    lower = message.lower()
    missing_state = "no such file or directory" in lower and str(root / container_id) in message
    if missing_state or any(marker in lower for marker in _NOT_FOUND_MARKERS):
        return NotFound(message)
    if any(marker in lower for marker in _CONFLICT_MARKERS):
        return Conflict(message)
    return SystemError_(message)


@dataclass(frozen=True)
class RuntimeVersion:
    """What ``<runtime> --version`` says.

    ``version`` is the first line's version ("1.1.5+ds1"), ``commit`` the ``commit:``
    line ("1.1.5+ds1-1+deb12u1" for Debian's runc, a git sha for crun) and ``spec`` the
    OCI runtime-spec version; either of the last two is None when the runtime omits it.
    """

    name: str
    version: str
    commit: str | None = None
    spec: str | None = None


def parse_version_output(name: str, text: str) -> RuntimeVersion:
    version = ""
    fields: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not version and " version " in f" {line} ":
            version = line.rsplit(" ", 1)[-1]
            continue
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("commit", "spec"):
            fields[key.strip()] = value.strip()
    if not version:
        raise SystemError_(f"cannot parse the version of runtime {name}: {text.strip()!r}")
    return RuntimeVersion(name, version, fields.get("commit"), fields.get("spec"))


@dataclass(frozen=True)
class _Result:
    returncode: int
    stdout: bytes
    stderr: str


class RuncCLI:
    """An OCI runtime CLI bound to its own state directory (``root``).

    ``probe_dir`` is where :meth:`probe` builds its throwaway bundle (the daemon's exec
    root); by default the parent of ``root``, never ``root`` itself, where the runtime
    would take the bundle for a container's state.
    """

    def __init__(
        self,
        name: str,
        path: str,
        root: Path,
        runtime_args: Sequence[str] = (),
        *,
        probe_dir: Path | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.name = name
        self.path = path
        self.root = root
        self.runtime_args = list(runtime_args)
        self.probe_dir = probe_dir if probe_dir is not None else root.parent
        self.timeout = timeout
        self._version: RuntimeVersion | None = None

    def __repr__(self) -> str:
        return f"RuncCLI(name={self.name!r}, path={self.path!r}, root={str(self.root)!r})"

    @classmethod
    def from_config(cls, config: EngineConfig, layout: Layout) -> dict[str, RuncCLI]:
        """runc (always offered, even when missing: its probe then says why), crun when
        installed, then the configured ``runtimes`` (which win over a built-in name)."""
        found: dict[str, tuple[str, list[str]]] = {
            "runc": (shutil.which("runc") or "runc", []),
        }
        crun = shutil.which("crun")
        if crun is not None:
            found["crun"] = (crun, [])
        for name, rc in config.runtimes.items():
            found[name] = (rc.path, list(rc.runtime_args))
        return {
            name: cls(name, path, layout.runtime_root / name, args, probe_dir=layout.exec_root)
            for name, (path, args) in found.items()
        }

    # --- protocol ---------------------------------------------------------------------
    def global_args(self) -> list[str]:
        return ["--root", str(self.root), "--log-format", "json", *self.runtime_args]

    async def version(self) -> str:
        return (await self.version_info()).version

    async def commit(self) -> str | None:
        """The ``commit:`` line of ``--version`` (for /info's RuncCommit), None if absent."""
        return (await self.version_info()).commit

    async def version_info(self) -> RuntimeVersion:
        """Parsed ``--version`` output, asked once and cached (it cannot change under us
        without a daemon restart worth noticing)."""
        if self._version is None:
            res = await self._exec("--version", [self.path, "--version"])
            if res.returncode != 0:
                raise SystemError_(
                    f"{self.name} --version failed: {runtime_error_message(res.stderr)}"
                )
            self._version = parse_version_output(self.name, res.stdout.decode(errors="replace"))
        return self._version

    async def probe(self) -> None:
        """Prove the runtime can set up a container here: `create` one whose process is a
        missing binary. Reaching "exec: …: no such file" means cgroups, namespaces, mounts
        and pivot_root all worked (runc looks the binary up last, in the new root); any
        other failure (crun 1.8 on a hybrid cgroup layout, a missing binary, no privileges)
        is raised with the runtime's own message. Nothing is left behind."""
        bundle = Path(await asyncio.to_thread(_make_probe_bundle, self.probe_dir))
        probe_id = f"wharfd-probe-{secrets.token_hex(6)}"
        try:
            # stdio to files: if the create did succeed, the container's init would hold
            # pipes open and the call would only end at the timeout.
            res = await self._exec(
                "create",
                [self.path, *self.global_args(), "create", "--bundle", str(bundle), probe_id],
                output_dir=bundle,
            )
            if res.returncode != 0:
                message = runtime_error_message(res.stderr)
                if not _is_probe_exec_failure(message):
                    raise SystemError_(f"runtime {self.name} cannot run containers: {message}")
        finally:
            await self._forget_probe(probe_id)
            await asyncio.to_thread(shutil.rmtree, bundle, True)

    async def state(self, container_id: str) -> RuntimeState | None:
        try:
            out = await self._verb("state", container_id)
        except NotFound:
            return None
        try:
            obj = json.loads(out)
            status = str(obj["status"])
            pid = int(obj.get("pid") or 0)
        except (ValueError, KeyError, TypeError) as exc:
            raise SystemError_(f"{self.name} state {container_id}: bad output: {exc}") from exc
        if status not in _STATUSES:
            raise SystemError_(f"{self.name} state {container_id}: unknown status {status!r}")
        return RuntimeState(id=container_id, status=cast(RuntimeStatus, status), pid=pid)

    async def start(self, container_id: str) -> None:
        await self._verb("start", container_id)

    async def kill(self, container_id: str, signal: int, all_processes: bool = False) -> None:
        flags = ("--all",) if all_processes else ()
        await self._verb("kill", container_id, flags=flags, operands=(str(int(signal)),))

    async def pause(self, container_id: str) -> None:
        await self._verb("pause", container_id)

    async def resume(self, container_id: str) -> None:
        await self._verb("resume", container_id)

    async def update(self, container_id: str, resources_file: Path) -> None:
        """Apply new cgroup limits (an OCI ``linux.resources`` JSON file) to a live
        container."""
        await self._verb("update", container_id, flags=("--resources", str(resources_file)))

    async def delete(self, container_id: str, force: bool = False) -> None:
        """Forget the container. NotFound when unknown, unless ``force`` (which also kills
        a running one): then an unknown container is already what was asked for."""
        if not force:
            await self._verb("delete", container_id)
            return
        with contextlib.suppress(NotFound):
            await self._verb("delete", container_id, flags=("--force",))

    # --- plumbing ---------------------------------------------------------------------
    async def _verb(
        self,
        verb: str,
        container_id: str,
        *,
        flags: Sequence[str] = (),
        operands: Sequence[str] = (),
    ) -> bytes:
        """``<runtime> <global args> <verb> <flags> <id> <operands>``; errors classified."""
        argv = [self.path, *self.global_args(), verb, *flags, container_id, *operands]
        res = await self._exec(verb, argv)
        if res.returncode != 0:
            message = runtime_error_message(res.stderr) or f"exit status {res.returncode}"
            raise classify_runtime_error(message, self.root, container_id)
        return res.stdout

    async def _exec(self, what: str, argv: list[str], output_dir: Path | None = None) -> _Result:
        """Run one runtime command. Output is piped, or with ``output_dir`` written to files
        there (for commands that leave a process behind holding its stdio)."""
        if output_dir is None:
            out_spec: int = asyncio.subprocess.PIPE
            err_spec: int = asyncio.subprocess.PIPE
        else:
            out_spec = os.open(
                output_dir / "stdout", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
            err_spec = os.open(
                output_dir / "stderr", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out_spec,
                stderr=err_spec,
                env=runtime_env(),
            )
        except OSError as exc:
            raise SystemError_(f"runtime {self.name} ({self.path}) cannot be run: {exc}") from exc
        finally:
            if output_dir is not None:
                os.close(out_spec)
                os.close(err_spec)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.timeout)
        except BaseException as exc:
            # Timed out or cancelled: never leave a runtime process running on its own.
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.shield(proc.wait())
            if isinstance(exc, TimeoutError):
                raise SystemError_(
                    f"{self.name} {what}: no answer after {self.timeout:g}s, killed"
                ) from exc
            raise
        if output_dir is not None:
            out, err = await asyncio.to_thread(_read_outputs, output_dir)
        assert proc.returncode is not None
        return _Result(proc.returncode, out, err.decode(errors="replace"))

    async def _forget_probe(self, probe_id: str) -> None:
        # runc removes the state of a failed create itself; a runtime that succeeded (or
        # left debris) gets a forced delete. Checked first so a clean probe costs no exec.
        if not await asyncio.to_thread(os.path.lexists, self.root / probe_id):
            return
        with contextlib.suppress(EngineError, OSError):
            await self.delete(probe_id, force=True)


def _read_outputs(output_dir: Path) -> tuple[bytes, bytes]:
    return (output_dir / "stdout").read_bytes(), (output_dir / "stderr").read_bytes()


def _is_probe_exec_failure(message: str) -> bool:
    lower = message.lower()
    return _PROBE_BINARY in message and ("no such file" in lower or "not found" in lower)


def _make_probe_bundle(parent: Path) -> str:
    """A bundle with an empty root filesystem and the smallest useful spec: the same
    namespaces and a /proc mount as a real container, so cgroup and mount setup is
    exercised, but nothing to copy."""
    parent.mkdir(parents=True, exist_ok=True)
    bundle = tempfile.mkdtemp(prefix=".probe-", dir=parent)
    os.mkdir(os.path.join(bundle, "rootfs"), 0o755)
    spec: dict[str, Any] = {
        "ociVersion": "1.0.2",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": [_PROBE_BINARY],
            "env": ["PATH=/"],
            "cwd": "/",
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "probe",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")],
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        },
    }
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(spec, f)
    return bundle
