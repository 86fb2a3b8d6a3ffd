"""ConmonMonitor: one conmon per container, driven the way docs/conmon-notes.md establishes.

conmon runs ``runc create`` for us, then outlives the daemon: it holds the container's
stdio, writes the k8s-file log, serves the attach socket and the ctl FIFO, and writes the
exit status to a file. Everything needed to pick a container up again after a daemon
restart is on disk.

Per container (CID)::

    <exec-root>/conmon/<CID>/conmon.pid     conmon's pid (written by conmon)
    <exec-root>/conmon/<CID>/exit/<CID>     exit status, decimal, no newline (--exit-dir)
    <exec-root>/conmon/<CID>/persist/exit   the same (--persist-dir; also "oom")
    <exec-root>/sock/<CID>                  conmon's symlink to the bundle; we unlink it
    <bundle>/pidfile                        container init pid (written by runc)
    <bundle>/attach, ctl, winsz             attach socket, resize/reopen FIFO, winsz FIFO

Waiting is event driven: a pidfd on conmon (not our child: it double-forks) becomes
readable when conmon exits, a moment after it wrote the exit file. A conmon that died
without writing one (SIGKILL) reports 255, like dockerd does for a lost shim.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import Conflict, EngineError, SystemError_, Unavailable
from engine.layout import Layout
from engine.runtime.base import (
    MonitorHandle,
    MonitorLaunch,
    OCIRuntime,
    RuntimeCreateError,
)
from engine.runtime.cli import runtime_env, runtime_error_message

log = logging.getLogger(__name__)

CREATE_TIMEOUT = 60.0
"""Seconds from spawning conmon to the sync pipe's answer (runc create under heavy load
takes seconds; a hung one must not hang the daemon)."""

LOST_EXIT_CODE = 255
"""Reported when conmon died without writing an exit file (it was killed)."""

# conmon sends at most 8192 bytes of output plus the stream byte per packet; a bigger
# buffer costs nothing and a SEQPACKET read never returns more than one packet.
_RECV_SIZE = 65536
# Packets of one stream already queued are merged into one chunk up to this size: one
# chunk costs the consumer one frame and one write instead of one per 8 KiB packet.
_COALESCE_MAX = 256 * 1024
# conmon reads stdin packets with a fixed buffer and a SEQPACKET read truncates silently,
# so input goes out in pieces that fit any conmon release (its stdio buffer is 8 KiB).
_SEND_CHUNK = 8192
# conmon's stream ids → Docker's (1 stdout, 2 stderr). 1 (stdin) is never sent to us.
_STREAMS = {2: 1, 3: 2}

_RESIZE_RETRY_FOR = 1.0
_RESIZE_RETRY_STEP = 0.01


def _find_conmon() -> str | None:
    for cand in (shutil.which("conmon"), "/usr/bin/conmon", "/usr/libexec/podman/conmon"):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def create_error_message(runtime_message: str) -> str:
    """dockerd's wording for a failed create, around the runtime's own message.

    The CLI maps "executable file not found" / "no such file or directory" to exit 127 and
    "permission denied" / "is a directory" to 126, so the runtime's text is kept verbatim.
    """
    text = runtime_error_message(runtime_message).strip().rstrip(".")
    return f"failed to create task: OCI runtime create failed: {text}: unknown"


@dataclass
class _Launched:
    process: subprocess.Popen[bytes]
    sync: socket.socket
    stderr_fd: int


class ConmonAttachConnection:
    """A connection to conmon's attach socket (SOCK_SEQPACKET, non-blocking).

    ``recv`` tries the socket directly and only waits on the loop when nothing is queued,
    so a busy stream costs one recv syscall per packet and no loop round trip; queued
    packets of the same stream are merged into one chunk. ``send`` raises
    ``BrokenPipeError``/``ConnectionResetError`` once conmon is gone.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._pending: bytes | None = None
        self._eof = False
        self._receiving = False
        self._closing = False

    async def recv(self) -> tuple[int, bytes] | None:
        self._receiving = True
        try:
            while True:
                first = self._pending
                self._pending = None
                if first is None:
                    first = await self._next_packet()
                if first is None:
                    return None
                stream = _STREAMS.get(first[0])
                if stream is not None:
                    return stream, self._coalesce(first)
        finally:
            self._receiving = False
            if self._closing:
                self._sock.close()

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        for off in range(0, len(view), _SEND_CHUNK):
            await self._loop.sock_sendall(self._sock, view[off : off + _SEND_CHUNK])

    async def close_stdin(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Close now, or, while a ``recv`` is waiting, wake it (it returns None) and let it
        close the socket: closing a descriptor the loop still watches is undefined."""
        if self._closing or self._sock.fileno() < 0:
            return
        self._closing = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        if not self._receiving:
            self._sock.close()

    def fileno(self) -> int:
        return self._sock.fileno()

    # --- internals ----------------------------------------------------------------------
    async def _next_packet(self) -> bytes | None:
        while not self._eof:
            try:
                pkt = self._sock.recv(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                await self._readable()
                continue
            except OSError as exc:
                if exc.errno in (errno.ECONNRESET, errno.EBADF):  # reset: a failed exec
                    self._eof = True
                    return None
                raise
            if not pkt:
                self._eof = True
                return None
            return pkt
        return None

    def _coalesce(self, first: bytes) -> bytes:
        stream_id = first[0]
        parts: list[bytes] = [first]
        size = len(first)
        while size < _COALESCE_MAX and not self._eof:
            try:
                pkt = self._sock.recv(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionResetError:
                self._eof = True
                break
            if not pkt:
                self._eof = True
                break
            if pkt[0] != stream_id:
                self._pending = pkt
                break
            parts.append(pkt)
            size += len(pkt)
        if len(parts) == 1:
            return first[1:]
        return b"".join([memoryview(p)[1:] for p in parts])

    async def _readable(self) -> None:
        fd = self._sock.fileno()
        fut: asyncio.Future[None] = self._loop.create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        self._loop.add_reader(fd, wake)
        try:
            await fut
        finally:
            self._loop.remove_reader(fd)


class ConmonMonitor:
    """The ``Monitor`` implementation on conmon (see module docstring for the files)."""

    def __init__(
        self, layout: Layout, conmon_path: str | None = None, *, log_level: str = "info"
    ) -> None:
        self.layout = layout
        # Looked up once here (it stats the PATH entries), not on every create.
        self._conmon_path = conmon_path or _find_conmon()
        self.log_level = log_level
        self.create_timeout = CREATE_TIMEOUT

    # --- paths (fixed by the engine's on-disk layout; see module docstring) ---------------
    def _dir(self, cid: str) -> Path:
        return self.layout.conmon_dir(cid)

    def _exit_dir(self, cid: str) -> Path:
        return self._dir(cid) / "exit"

    def _exit_file(self, cid: str) -> Path:
        return self._exit_dir(cid) / cid

    def _persist_dir(self, cid: str) -> Path:
        return self._dir(cid) / "persist"

    def _conmon_pidfile(self, cid: str) -> Path:
        return self._dir(cid) / "conmon.pid"

    def _sock_links(self, cid: str) -> list[Path]:
        link = self.layout.sock_dir / cid
        # conmon shortens a link name that would be exactly 107 bytes by one character.
        if len(os.fsencode(link)) == 107:
            return [link, Path(str(link)[:-1])]
        return [link]

    @property
    def conmon_path(self) -> str:
        if self._conmon_path is None:
            raise Unavailable("conmon is not installed (looked on PATH and in /usr/libexec)")
        return self._conmon_path

    # --- create -------------------------------------------------------------------------
    def argv(self, launch: MonitorLaunch, runtime: OCIRuntime) -> list[str]:
        cid = launch.container_id
        argv = [
            self.conmon_path,
            "--api-version", "1",
            "-c", cid,
            "-u", cid,
            "-n", launch.name,
            "-r", runtime.path,
            "-b", str(launch.bundle),
            "-p", str(launch.bundle / "pidfile"),
            "--exit-dir", str(self._exit_dir(cid)),
            "--persist-dir", str(self._persist_dir(cid)),
            "--socket-dir-path", str(self.layout.sock_dir),
            "-l", f"k8s-file:{launch.log_path}" if launch.log_path is not None else "none",
            "--log-level", self.log_level,
            "--conmon-pidfile", str(self._conmon_pidfile(cid)),
        ]  # fmt: skip
        for arg in [*runtime.global_args(), *launch.extra_runtime_args]:
            argv += ["--runtime-arg", arg]
        if launch.tty:
            argv.append("-t")  # stdin is always wired with a TTY; -i and -t exclude each other
        elif launch.stdin:
            argv.append("-i")
            if launch.leave_stdin_open:
                argv.append("--leave-stdin-open")
        if launch.log_size_max is not None and launch.log_size_max > 0:
            argv += ["--log-size-max", str(launch.log_size_max)]
        return argv

    async def create(self, launch: MonitorLaunch, runtime: OCIRuntime) -> MonitorHandle:
        """Spawn conmon, let it run ``runc create``, return once the init pid is known.

        Raises ``RuntimeCreateError`` with dockerd's wording when the runtime refused (no
        files are left behind then), ``SystemError_`` when conmon itself failed.
        """
        cid = launch.container_id
        argv = self.argv(launch, runtime)
        await asyncio.to_thread(self._prepare, cid, launch)
        try:
            launched = await self._spawn(argv, self._dir(cid))
        except OSError as exc:
            await asyncio.shield(asyncio.to_thread(self.cleanup, cid, launch.bundle))
            raise SystemError_(f"cannot run conmon ({argv[0]}): {exc}") from exc
        ok = False
        try:
            reply = await self._await_sync(launched, cid)
            init_pid = reply.get("data")
            if not isinstance(init_pid, int) or init_pid <= 0:
                message = str(reply.get("message") or f"conmon reported {init_pid!r}")
                raise RuntimeCreateError(create_error_message(message))
            conmon_pid = await asyncio.to_thread(_read_int, self._conmon_pidfile(cid))
            if conmon_pid is None:
                raise SystemError_(f"conmon for {cid} wrote no pid file")
            ok = True
            return MonitorHandle(cid, conmon_pid, init_pid, launch.bundle)
        finally:
            launched.sync.close()
            os.close(launched.stderr_fd)
            if not ok:
                await asyncio.shield(self._abort_create(cid, launch.bundle, runtime))
                if launched.process.returncode is None:  # no zombie launcher either
                    await asyncio.shield(_reap(launched.process))

    def _prepare(self, cid: str, launch: MonitorLaunch) -> None:
        """Fresh per-container directories: a restarted container reuses its id, and a
        stale exit file would make it look exited at once."""
        self.layout.sock_dir.mkdir(parents=True, exist_ok=True)
        self._remove_files(cid, launch.bundle)
        shutil.rmtree(self._dir(cid), ignore_errors=True)
        for d in (self._dir(cid), self._exit_dir(cid), self._persist_dir(cid)):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        if launch.log_path is not None:
            launch.log_path.parent.mkdir(parents=True, exist_ok=True)

    async def _spawn(self, argv: list[str], cwd: Path) -> _Launched:
        sync_ours, sync_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        start_theirs, start_ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        env = runtime_env()
        env["_OCI_SYNCPIPE"] = str(sync_theirs.fileno())
        env["_OCI_STARTPIPE"] = str(start_theirs.fileno())
        try:
            # subprocess.Popen in a thread, as for exec: it closes every fd but the ones
            # passed (uvloop's spawn leaves conmon holding some of the daemon's sockets
            # and pipes for the container's whole life) and spawns with vfork.
            proc = await asyncio.to_thread(
                subprocess.Popen,
                argv,
                cwd=cwd,  # conmon writes an "oom" file into its working directory
                env=env,
                pass_fds=(sync_theirs.fileno(), start_theirs.fileno()),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err_w,
                start_new_session=True,
            )
        except BaseException:
            for s in (sync_ours, start_ours):
                s.close()
            os.close(err_r)
            raise
        finally:
            # Our copies of the child's ends must go, or EOF never comes on errors.
            sync_theirs.close()
            start_theirs.close()
            os.close(err_w)
        try:
            start_ours.setblocking(False)  # one byte into an empty socket: never waits
            start_ours.send(b"\0")  # conmon blocks on this until we are ready
        except OSError:
            pass  # conmon already died on its argv; its stderr says why
        finally:
            start_ours.close()
        sync_ours.setblocking(False)
        os.set_blocking(err_r, False)
        return _Launched(proc, sync_ours, err_r)

    async def _await_sync(self, launched: _Launched, cid: str) -> dict[str, Any]:
        try:
            async with asyncio.timeout(self.create_timeout):
                rc = await _wait_child(launched.process)
                if rc != 0:
                    err = await _read_until_eof(launched.stderr_fd, 1.0)
                    raise SystemError_(f"conmon failed (exit status {rc}): {err or '(no output)'}")
                line = await _recv_line(launched.sync)
        except TimeoutError as exc:
            raise SystemError_(
                f"conmon for {cid}: no answer from the runtime after {self.create_timeout:g}s"
            ) from exc
        if not line:
            err = await _read_until_eof(launched.stderr_fd, 1.0)
            raise SystemError_(f"conmon exited before the container was created: {err}")
        try:
            reply = json.loads(line)
        except ValueError as exc:
            raise SystemError_(f"conmon sent a bad sync message: {line!r}") from exc
        if not isinstance(reply, dict):
            raise SystemError_(f"conmon sent a bad sync message: {line!r}")
        return reply

    async def _abort_create(self, cid: str, bundle: Path, runtime: OCIRuntime) -> None:
        """Undo a failed or abandoned create: conmon, the runtime's state, the files."""
        pid = await asyncio.to_thread(self._verified_conmon_pid, cid)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            await runtime.delete(cid, force=True)
        except Exception as exc:  # NotFound is the normal case: runc cleaned up itself
            log.debug("delete after failed create of %s: %s", cid, exc)
        await asyncio.to_thread(self.cleanup, cid, bundle)

    # --- attach, resize -----------------------------------------------------------------
    async def attach(self, handle: MonitorHandle) -> ConmonAttachConnection:
        """Connect to the attach socket through ``/proc/self/fd/<bundle dirfd>/attach``:
        no sun_path limit whatever the bundle's path length."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        try:
            dirfd = os.open(handle.bundle, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                await asyncio.get_running_loop().sock_connect(sock, f"/proc/self/fd/{dirfd}/attach")
            finally:
                os.close(dirfd)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            raise Conflict(f"container {handle.container_id} is not running") from exc
        except BaseException:
            sock.close()
            raise
        return ConmonAttachConnection(sock)

    async def resize(self, handle: MonitorHandle, height: int, width: int) -> None:
        """Write ``1 <rows> <cols>`` to the ctl FIFO; conmon applies it to the pty."""
        # conmon may still hold the FIFO open for a moment after the container exited:
        # the exit file is what says the container is gone.
        if await asyncio.to_thread(self.exit_code, handle.container_id) is not None:
            raise Conflict(f"container {handle.container_id} is not running")
        await self._control(handle, f"1 {int(height)} {int(width)}\n".encode(), "resize")

    async def reopen_log(self, handle: MonitorHandle) -> None:
        """``2 0 0``: conmon closes and reopens its log file (after a rotation)."""
        await self._control(handle, b"2 0 0\n", "reopen log of")

    async def _control(self, handle: MonitorHandle, msg: bytes, what: str) -> None:
        ctl = handle.bundle / "ctl"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _RESIZE_RETRY_FOR
        while True:
            try:
                _write_fifo(ctl, msg)
                return
            except OSError as exc:
                # ENXIO: no reader (conmon not there yet, or gone); EAGAIN: FIFO full.
                if exc.errno not in (errno.ENXIO, errno.EAGAIN, errno.EINTR):
                    if exc.errno == errno.ENOENT:
                        raise Conflict(f"container {handle.container_id} is not running") from exc
                    raise SystemError_(f"{what} {handle.container_id}: {exc}") from exc
                if loop.time() >= deadline:
                    raise Conflict(f"container {handle.container_id} is not running") from exc
            await asyncio.sleep(_RESIZE_RETRY_STEP)

    # --- exit -----------------------------------------------------------------------------
    async def wait_exit(self, handle: MonitorHandle) -> int:
        """The container's exit status: from the exit file when conmon has written it
        (conmon itself exits a moment later), else once conmon has exited (pidfd, no
        polling)."""
        cid = handle.container_id
        code = await asyncio.to_thread(self.exit_code, cid)
        if code is not None:
            return code
        try:
            pidfd = os.pidfd_open(handle.conmon_pid)
        except ProcessLookupError:
            return await asyncio.to_thread(self._final_code, cid)
        try:
            # The pidfd pins the process: if it is not our conmon now, the pid was reused
            # and ours is long gone.
            if await asyncio.to_thread(_is_conmon_of, handle.conmon_pid, cid):
                await _wait_readable(pidfd)
        finally:
            os.close(pidfd)
        return await asyncio.to_thread(self._final_code, cid)

    def _final_code(self, cid: str) -> int:
        code = self.exit_code(cid)
        if code is None:
            log.warning("conmon of %s exited without an exit file", cid)
            return LOST_EXIT_CODE
        return code

    # load, exit_code and cleanup are synchronous (the Monitor protocol): they read or
    # remove a few small files, so from the event loop call them via asyncio.to_thread.
    def exit_code(self, container_id: str) -> int | None:
        """The exit status conmon recorded, None while it has not (or no file exists)."""
        code = _read_int(self._exit_file(container_id))
        if code is None:
            code = _read_int(self._persist_dir(container_id) / "exit")
        return code

    def exit_time(self, container_id: str) -> float | None:
        """When conmon recorded the exit (the exit file's mtime), for FinishedAt."""
        for path in (self._exit_file(container_id), self._persist_dir(container_id) / "exit"):
            try:
                return path.stat().st_mtime
            except OSError:
                continue
        return None

    def _verified_conmon_pid(self, cid: str) -> int | None:
        pid = _read_int(self._conmon_pidfile(cid))
        return pid if pid is not None and _is_conmon_of(pid, cid) else None

    def load(self, container_id: str, bundle: Path) -> MonitorHandle | None:
        """Rebuild the handle of a container whose conmon is still running (after a daemon
        restart); None when conmon is gone or its pid now belongs to another process."""
        conmon_pid = self._verified_conmon_pid(container_id)
        if conmon_pid is None:
            return None
        init_pid = _read_int(bundle / "pidfile") or 0
        return MonitorHandle(container_id, conmon_pid, init_pid, bundle)

    def cleanup(self, container_id: str, bundle: Path) -> None:
        """Remove conmon's leftovers (socket link, FIFOs, pid files, exit files). Keeps the
        log and config.json. Call only after the exit code has been recorded."""
        self._remove_files(container_id, bundle)
        shutil.rmtree(self._dir(container_id), ignore_errors=True)

    def _remove_files(self, cid: str, bundle: Path) -> None:
        for link in self._sock_links(cid):
            _unlink(link)
        for name in ("attach", "ctl", "winsz", "pidfile"):
            _unlink(bundle / name)

    # --- exec (docs: conmon-notes.md §5) ----------------------------------------------------
    def exec_argv(self, launch: ExecLaunch, runtime: OCIRuntime) -> list[str]:
        session = launch.session_dir
        argv = [
            self.conmon_path,
            "--api-version", "1",
            "-c", launch.container_id,
            "-u", launch.exec_id,
            "-n", launch.name,
            "-r", runtime.path,
            "-b", str(session),
            "-p", str(session / "pid"),
            # conmon names the exit file after -c (the container), hence a directory per
            # session; --full-attach puts the socket in the session directory itself, so
            # there is no symlink in the socket dir to clean up.
            "--exit-dir", str(session / "exit"),
            "--persist-dir", str(session / "persist"),
            "--full-attach",
            "-l", "none",  # exec output is not part of the container's log (as dockerd)
            "--log-level", self.log_level,
            "--conmon-pidfile", str(session / "conmon.pid"),
        ]  # fmt: skip
        for arg in runtime.global_args():
            argv += ["--runtime-arg", arg]
        if launch.tty:
            argv.append("-t")
        elif launch.stdin:
            argv.append("-i")
        argv += ["-e", "--exec-process-spec", str(session / "process.json")]
        if launch.attach:
            argv.append("--exec-attach")
        return argv

    async def exec(self, launch: ExecLaunch, runtime: OCIRuntime) -> ConmonExecSession:
        """Run ``launch.process`` in the running container and return once it runs.

        With ``attach`` the attach socket is connected before the process starts, so the
        session sees all of its output. Raises ``ExecStartError`` with the runtime's text
        when the process could not be started, ``SystemError_`` when conmon failed. The
        caller removes the session directory (``cleanup_exec``) once it is done.
        """
        argv = self.exec_argv(launch, runtime)
        await asyncio.to_thread(_prepare_exec_dir, launch)
        try:
            launched = await self._spawn_exec(argv, launch.attach, launch.session_dir)
        except OSError as exc:
            raise SystemError_(f"cannot run conmon ({argv[0]}): {exc}") from exc
        provisional = MonitorHandle(launch.container_id, 0, 0, launch.session_dir)
        conn: ConmonAttachConnection | None = None
        ok = False
        try:
            async with asyncio.timeout(self.create_timeout):
                # The launcher's exit is only awaited at the end: the attach and sync
                # sockets already tell when conmon is ready or gone (EOF).
                if launch.attach:
                    conn = await self._exec_connect(launched, provisional)
                _send_start_byte(launched.start)  # the second one: `runc exec` runs now
                reply = await self._exec_sync(launched)
                await self._exec_launcher_done(launched)
            pid = reply.get("data")
            if not isinstance(pid, int) or pid <= 0:
                message = str(reply.get("message") or f"conmon reported {pid!r}")
                raise ExecStartError(runtime_error_message(message).strip())
            conmon_pid = await asyncio.to_thread(_read_int, launch.session_dir / "conmon.pid")
            handle = MonitorHandle(launch.container_id, conmon_pid or 0, pid, launch.session_dir)
            ok = True
            return ConmonExecSession(self, handle, launched.sync, conn)
        except TimeoutError as exc:
            raise SystemError_(
                f"exec in {launch.container_id}: no answer from conmon after "
                f"{self.create_timeout:g}s"
            ) from exc
        finally:
            launched.start.close()
            if launched.attach is not None:
                launched.attach.close()
            if not ok:
                launched.sync.close()
                if conn is not None:
                    conn.close()
                if launched.process.returncode is None:
                    await asyncio.shield(_reap(launched.process))
            os.close(launched.stderr_fd)

    def cleanup_exec(self, session_dir: Path) -> None:
        """Remove an exec session's directory (blocking: call through asyncio.to_thread)."""
        shutil.rmtree(session_dir, ignore_errors=True)

    async def _spawn_exec(self, argv: list[str], attach: bool, cwd: Path) -> _ExecLaunched:
        """conmon with the sync, start and (for an attached session) attach socketpairs.
        Unlike a create, the start socket stays open: an attached exec takes two bytes."""
        pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(3)]
        (sync_ours, sync_theirs), (start_ours, start_theirs), (att_ours, att_theirs) = pairs
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        env = runtime_env()
        env["_OCI_SYNCPIPE"] = str(sync_theirs.fileno())
        env["_OCI_STARTPIPE"] = str(start_theirs.fileno())
        fds = [sync_theirs.fileno(), start_theirs.fileno()]
        if attach:
            env["_OCI_ATTACHPIPE"] = str(att_theirs.fileno())
            fds.append(att_theirs.fileno())
        try:
            # subprocess.Popen in a thread rather than the loop's subprocess support: it
            # spawns with vfork, which costs a fraction of uvloop's fork of the whole
            # daemon, and exec latency is what this path is judged by.
            proc = await asyncio.to_thread(
                subprocess.Popen,
                argv,
                cwd=cwd,  # conmon writes an "oom" file into its working directory
                env=env,
                pass_fds=fds,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err_w,
                start_new_session=True,
            )
        except BaseException:
            for s in (sync_ours, start_ours, att_ours):
                s.close()
            os.close(err_r)
            raise
        finally:
            # Our copies of the child's ends must go, or EOF never comes on errors.
            for s in (sync_theirs, start_theirs, att_theirs):
                s.close()
            os.close(err_w)
        for s in (sync_ours, start_ours, att_ours):
            s.setblocking(False)
        os.set_blocking(err_r, False)
        if not attach:
            att_ours.close()
        _send_start_byte(start_ours)  # the first one: conmon sets up and forks
        return _ExecLaunched(proc, sync_ours, start_ours, att_ours if attach else None, err_r)

    async def _exec_launcher_done(self, launched: _ExecLaunched) -> None:
        """Reap conmon's launcher (it exits once the real conmon has forked off)."""
        rc = await _wait_child(launched.process)
        if rc != 0:
            err = await _read_until_eof(launched.stderr_fd, 1.0)
            raise SystemError_(f"conmon failed (exit status {rc}): {err or '(no output)'}")

    async def _exec_connect(
        self, launched: _ExecLaunched, handle: MonitorHandle
    ) -> ConmonAttachConnection:
        """Wait until conmon has bound the session's attach socket, then connect to it."""
        assert launched.attach is not None
        line = await _recv_line(launched.attach)
        if not line:
            await self._exec_launcher_done(launched)
            err = await _read_until_eof(launched.stderr_fd, 1.0)
            raise SystemError_(f"conmon exited before the exec session was ready: {err}")
        return await self.attach(handle)

    async def _exec_sync(self, launched: _ExecLaunched) -> dict[str, Any]:
        line = await _recv_line(launched.sync)
        if not line:
            await self._exec_launcher_done(launched)
            err = await _read_until_eof(launched.stderr_fd, 1.0)
            raise SystemError_(f"conmon exited before the exec process started: {err}")
        return _parse_sync(line)


# --- exec sessions ---------------------------------------------------------------------------
class ExecStartError(EngineError):
    """The runtime could not start an exec'd process; ``message`` is the runtime's text."""


@dataclass(frozen=True)
class ExecLaunch:
    """One process to run in a running container, under a conmon of its own.

    ``session_dir`` is that conmon's ``-b``: process.json, pid files, the attach socket and
    the ctl FIFO live there, and the exit status lands in ``session_dir/exit/<container>``.
    """

    container_id: str
    exec_id: str
    name: str
    session_dir: Path
    process: Mapping[str, Any]  # the OCI process object (`runc exec --process`)
    tty: bool = False
    stdin: bool = False  # keep the process's stdin open (conmon -i)
    attach: bool = True  # False: detached, no attach socket at all


@dataclass
class _ExecLaunched:
    process: subprocess.Popen[bytes]
    sync: socket.socket
    start: socket.socket
    attach: socket.socket | None
    stderr_fd: int


class ConmonExecSession:
    """A running exec'd process.

    ``handle.bundle`` is the session directory, so the monitor's ``resize`` works on it;
    ``connection`` (attached sessions only) was connected before the process ran. conmon
    reports the exit status on the sync socket.
    """

    def __init__(
        self,
        monitor: ConmonMonitor,
        handle: MonitorHandle,
        sync: socket.socket,
        connection: ConmonAttachConnection | None,
    ) -> None:
        self._monitor = monitor
        self.handle = handle
        self.connection = connection
        self._sync = sync

    @property
    def pid(self) -> int:
        return self.handle.init_pid

    async def wait_exit(self) -> int:
        """The process's exit status. conmon sends it on the sync socket when the process
        ends; for a conmon that died without sending it, its exit file, else 255."""
        try:
            line = await _recv_line(self._sync)
        except OSError:
            line = b""
        if line:
            with contextlib.suppress(SystemError_):
                code = _parse_sync(line).get("data")
                if isinstance(code, int) and code >= 0:
                    return code
        await self.wait_monitor()
        code = await asyncio.to_thread(
            _read_int, self.handle.bundle / "exit" / self.handle.container_id
        )
        return LOST_EXIT_CODE if code is None else code

    async def wait_monitor(self) -> None:
        """Until the session's conmon has exited (pidfd; it exits just after reporting the
        status, and its files should not be removed under it)."""
        cid, pid = self.handle.container_id, self.handle.conmon_pid
        if pid <= 0:
            return
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        try:
            if await asyncio.to_thread(_is_conmon_of, pid, cid):
                await _wait_readable(pidfd)
        finally:
            os.close(pidfd)

    def close_sync(self) -> None:
        self._sync.close()

    def close(self) -> None:
        """Drop our ends (daemon shutdown or session over); the process is not touched."""
        if self.connection is not None:
            self.connection.close()
        self._sync.close()


# --- helpers -------------------------------------------------------------------------------
def _is_conmon_of(pid: int, cid: str) -> bool:
    """True when ``pid`` is a conmon started for container ``cid`` (guards PID reuse)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return False
    if not args or b"conmon" not in os.path.basename(args[0]):
        return False
    want = cid.encode()
    return any(a == b"-c" and b == want for a, b in itertools.pairwise(args))


def _write_fifo(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


async def _wait_readable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await fut
    finally:
        loop.remove_reader(fd)


async def _recv_line(sock: socket.socket) -> bytes:
    """One newline-terminated message from the sync socket; b"" if conmon closed it."""
    loop = asyncio.get_running_loop()
    line = b""
    while not line.endswith(b"\n"):
        chunk = await loop.sock_recv(sock, 65536)
        if not chunk:
            return line
        line += chunk
    return line


async def _read_until_eof(fd: int, patience: float) -> str:
    """What is (or soon will be) in conmon's stderr pipe, for error messages only."""
    chunks: list[bytes] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await _wait_readable(fd)
            continue
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks).decode(errors="replace").strip()


def _prepare_exec_dir(launch: ExecLaunch) -> None:
    session = launch.session_dir
    for d in (session, session / "exit", session / "persist"):
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
    (session / "process.json").write_text(json.dumps(launch.process))


def _send_start_byte(sock: socket.socket) -> None:
    try:
        sock.send(b"\0")  # one byte into an empty socket: never waits
    except OSError:
        pass  # conmon already died on its argv; its stderr says why


def _parse_sync(line: bytes) -> dict[str, Any]:
    try:
        reply = json.loads(line)
    except ValueError as exc:
        raise SystemError_(f"conmon sent a bad sync message: {line!r}") from exc
    if not isinstance(reply, dict):
        raise SystemError_(f"conmon sent a bad sync message: {line!r}")
    return reply


async def _wait_child(proc: subprocess.Popen[bytes]) -> int:
    """Exit status of a child we spawned ourselves, waiting on a pidfd (no thread, no
    SIGCHLD handler: the loop's own child watcher does not know this child)."""
    rc = proc.poll()
    if rc is not None:
        return rc
    try:
        pidfd = os.pidfd_open(proc.pid)
    except ProcessLookupError:
        return proc.wait()
    try:
        await _wait_readable(pidfd)
    finally:
        os.close(pidfd)
    return proc.wait()  # it has exited: this only reaps


async def _reap(proc: subprocess.Popen[bytes]) -> None:
    """No zombie launcher after a failed or abandoned exec: give it a moment, then kill."""
    try:
        async with asyncio.timeout(1.0):
            await _wait_child(proc)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await _wait_child(proc)
