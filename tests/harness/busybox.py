"""A busybox root filesystem built from the host's static busybox (Debian busybox-static).

``build_rootfs`` lays out a tiny image: /bin/busybox plus one relative symlink per applet
(``busybox --list``), a minimal /etc/passwd and /etc/group (root, nobody, user 1000),
empty /tmp, /proc, /sys, /dev. ``rootfs_tar`` packs it the way ``tar -C rootfs -c .``
does (entries ``./...``, owned by root, fixed mtime so the tar is byte-for-byte stable),
ready for ``docker import``. ``docker_archive`` wraps a layer into the ``docker save``
format (manifest.json, image config, <id>/layer.tar) for ``docker load`` tests.

:class:`BusyboxArtifacts` caches all of it in one temporary directory per test session.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import struct
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MTIME = 1_700_000_000  # fixed timestamp: identical tars across runs
DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/home:/bin/false\n"
    "user:x:1000:1000:user:/home/user:/bin/sh\n"
)
GROUP = "root:x:0:\nnobody:x:65534:\nuser:x:1000:\n"


class BusyboxUnavailable(RuntimeError):
    pass


def find_static_busybox() -> Path:
    """The host's statically linked busybox (a dynamic one would not run in the image)."""
    candidates = [os.environ.get("WHARFD_TEST_BUSYBOX"), "/bin/busybox", shutil.which("busybox")]
    for cand in candidates:
        if not cand:
            continue
        p = Path(cand)
        if p.is_file() and os.access(p, os.X_OK) and is_static_elf(p):
            return p
    raise BusyboxUnavailable(
        "no statically linked busybox found (apt-get install busybox-static, or set "
        "WHARFD_TEST_BUSYBOX)"
    )


def is_static_elf(path: Path) -> bool:
    """True when ``path`` is an ELF file without a PT_INTERP program header."""
    with open(path, "rb") as f:
        ident = f.read(16)
        if ident[:4] != b"\x7fELF":
            return False
        is64 = ident[4] == 2
        endian = "<" if ident[5] == 1 else ">"
        if is64:
            f.seek(0x20)
            (phoff,) = struct.unpack(endian + "Q", f.read(8))
            f.seek(0x36)
            phentsize, phnum = struct.unpack(endian + "HH", f.read(4))
        else:
            f.seek(0x1C)
            (phoff,) = struct.unpack(endian + "I", f.read(4))
            f.seek(0x2A)
            phentsize, phnum = struct.unpack(endian + "HH", f.read(4))
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            (p_type,) = struct.unpack(endian + "I", f.read(4))
            if p_type == 3:  # PT_INTERP
                return False
        return True


def applets(busybox: Path) -> list[str]:
    out = subprocess.run(
        [str(busybox), "--list"], check=True, capture_output=True, text=True, timeout=30
    ).stdout
    names = sorted({line.strip() for line in out.splitlines() if line.strip()})
    return [n for n in names if n != "busybox" and "/" not in n]


def build_rootfs(dest: Path, busybox: Path | None = None) -> Path:
    """Create the busybox root filesystem in ``dest`` (which must not exist or be empty)."""
    bb = busybox or find_static_busybox()
    dest.mkdir(parents=True, exist_ok=True)
    for d, mode in [
        ("bin", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("home", 0o755),
        ("home/user", 0o755),
        ("proc", 0o555),
        ("root", 0o700),
        ("sys", 0o555),
        ("tmp", 0o1777),
        ("usr", 0o755),
        ("usr/bin", 0o755),
        ("usr/sbin", 0o755),
        ("var", 0o755),
    ]:
        p = dest / d
        p.mkdir(exist_ok=True)
        os.chmod(p, mode)
    target = dest / "bin" / "busybox"
    shutil.copyfile(bb, target)
    os.chmod(target, 0o755)
    for name in applets(bb):
        link = dest / "bin" / name
        if not link.exists() and not link.is_symlink():
            os.symlink("busybox", link)
    (dest / "etc" / "passwd").write_text(PASSWD)
    (dest / "etc" / "group").write_text(GROUP)
    os.chmod(dest / "etc" / "passwd", 0o644)
    os.chmod(dest / "etc" / "group", 0o644)
    if os.geteuid() == 0:
        os.chown(dest / "home" / "user", 1000, 1000)
    return dest


def _walk_sorted(root: Path) -> Iterable[Path]:
    yield root
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        p = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            yield from _walk_sorted(p)
        else:
            yield p


def files_tar(files: Mapping[str, bytes | str], gz: bool = False) -> bytes:
    """A tar of regular files (name → content; text is UTF-8), mode 0644, fixed mtime;
    gzip-compressed (reproducibly) with ``gz``. Build contexts, layers, uploads."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = MTIME
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=0) if gz else raw


def rootfs_tar(rootfs: Path, out: Path | None = None) -> bytes:
    """Pack ``rootfs`` like ``tar -C rootfs -c .`` (uid/gid kept as on disk for root,
    else 0; fixed mtime). Returns the bytes and writes them to ``out`` when given."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in _walk_sorted(rootfs):
            rel = path.relative_to(rootfs).as_posix()
            arcname = "./" if rel == "." else f"./{rel}"
            st = os.lstat(path)
            info = tarfile.TarInfo(arcname)
            info.mode = stat.S_IMODE(st.st_mode)
            info.mtime = MTIME
            info.uid, info.gid = (st.st_uid, st.st_gid) if os.geteuid() == 0 else (0, 0)
            info.uname = info.gname = ""
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(path)
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                info.size = st.st_size
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            # sockets, fifos, devices: a test rootfs has none
    data = buf.getvalue()
    if out is not None:
        out.write_bytes(data)
    return data


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def image_config(
    diff_ids: list[str],
    *,
    cmd: list[str] | None = None,
    entrypoint: list[str] | None = None,
    env: list[str] | None = None,
    labels: dict[str, str] | None = None,
    workdir: str = "",
) -> dict[str, Any]:
    created = "2023-11-14T22:13:20Z"  # == MTIME
    config: dict[str, Any] = {
        "Env": env if env is not None else [DEFAULT_PATH_ENV],
        "Cmd": cmd if cmd is not None else ["sh"],
    }
    if entrypoint is not None:
        config["Entrypoint"] = entrypoint
    if labels:
        config["Labels"] = labels
    if workdir:
        config["WorkingDir"] = workdir
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": created, "created_by": "wharfd test harness"}],
    }


def docker_archive(
    layers: list[bytes],
    repo_tags: list[str] | None = None,
    out: Path | None = None,
    **config_kwargs: Any,
) -> bytes:
    """A ``docker save``-format archive (uncompressed layers) for ``docker load``."""
    tags = ["busybox:latest"] if repo_tags is None else repo_tags
    diff_ids = [f"sha256:{_sha256(layer)}" for layer in layers]
    config = image_config(diff_ids, **config_kwargs)
    config_bytes = json.dumps(config, separators=(",", ":"), sort_keys=True).encode()
    config_hex = _sha256(config_bytes)
    layer_paths = [f"{d.removeprefix('sha256:')}/layer.tar" for d in diff_ids]
    manifest = [{"Config": f"{config_hex}.json", "RepoTags": tags, "Layers": layer_paths}]
    repositories: dict[str, dict[str, str]] = {}
    for t in tags:
        name, _, tag = t.rpartition(":")
        repositories.setdefault(name, {})[tag] = diff_ids[-1].removeprefix("sha256:")

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            info.mtime = MTIME
            tar.addfile(info, io.BytesIO(data))

        def add_dir(name: str) -> None:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            info.mtime = MTIME
            tar.addfile(info)

        seen: set[str] = set()
        for layer, path in zip(layers, layer_paths, strict=True):
            d = path.split("/", 1)[0]
            if d in seen:
                continue
            seen.add(d)
            add_dir(d)
            add(f"{d}/VERSION", b"1.0")
            add(f"{d}/layer.tar", layer)
        add(f"{config_hex}.json", config_bytes)
        add("manifest.json", json.dumps(manifest).encode())
        if repositories:
            add("repositories", json.dumps(repositories).encode())
    data = buf.getvalue()
    if out is not None:
        out.write_bytes(data)
    return data


@dataclass
class BusyboxArtifacts:
    """Session cache: the rootfs directory, its tar, and a docker-archive of it."""

    workdir: Path
    busybox: Path = field(default_factory=find_static_busybox)

    def __post_init__(self) -> None:
        self._tar: bytes | None = None
        self._archive: bytes | None = None

    @classmethod
    def create(cls, base: Path | None = None) -> BusyboxArtifacts:
        workdir = Path(tempfile.mkdtemp(prefix="wharfd-busybox-", dir=base))
        return cls(workdir)

    @property
    def rootfs(self) -> Path:
        p = self.workdir / "rootfs"
        if not (p / "bin" / "busybox").exists():
            build_rootfs(p, self.busybox)
        return p

    @property
    def tar_path(self) -> Path:
        p = self.workdir / "busybox.tar"
        if not p.exists():
            self._tar = rootfs_tar(self.rootfs, p)
        return p

    def tar_bytes(self) -> bytes:
        if self._tar is None:
            self._tar = self.tar_path.read_bytes()
        return self._tar

    @property
    def archive_path(self) -> Path:
        """docker-archive with ``busybox:latest`` (CMD ["sh"])."""
        p = self.workdir / "busybox-archive.tar"
        if not p.exists():
            self._archive = docker_archive([self.tar_bytes()], ["busybox:latest"], p)
        return p

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
