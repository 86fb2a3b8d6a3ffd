"""The local volume driver: a directory ``volumes/<name>/_data`` under the data root.

A volume made with ``-o type=… -o device=… [-o o=…]`` has its device mounted on ``_data``
when its first container starts and unmounted when the last one stops (dockerd's
volume/local). Everything here blocks (file system, mount(2)): call it through
``asyncio.to_thread``.

Crash safety (architecture §3): a volume directory is built under ``tmp/`` and renamed
into ``volumes/``; removal renames it back into ``tmp/`` before deleting it, so a volume
directory is always whole, and ``tmp/`` is wiped at start.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import shutil
import stat
from collections.abc import Mapping
from pathlib import Path

from engine.errors import SystemError_
from engine.layout import Layout
from engine.snapshots import mount as mounting
from engine.snapshots.base import Mount
from engine.store.atomic import fsync_dir

log = logging.getLogger(__name__)

DRIVER = "local"
SCOPE = "local"
DATA_DIR = "_data"
ANONYMOUS_LABEL = "com.docker.volume.anonymous"
NAME_CHARS = "[a-zA-Z0-9][a-zA-Z0-9_.-]"
# The name becomes a directory name: this pattern never allows "/", "." or ".." alone.
_NAME_RE = re.compile(r"\A[a-zA-Z0-9][a-zA-Z0-9_.-]+\Z")
_VALID_OPTIONS = ("type", "o", "device", "size")
_REQUIRED_WITH = (("device", ("type",)), ("type", ("device",)), ("o", ("device", "type")))
_PASSWORD_RE = re.compile(r"password=([^,]*)")

_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}

VOLUME_DIR_MODE = 0o701
DATA_DIR_MODE = 0o755


def go_quote(text: str) -> str:
    """Go's %q, for names and options quoted in dockerd's messages."""
    out = ['"']
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def name_problem(name: str) -> str | None:
    """dockerd's local-driver name check, with its messages (None when the name is fine)."""
    if len(name) == 1:
        return "volume name is too short, names should be at least two alphanumeric characters"
    if not _NAME_RE.match(name):
        return (
            f"{go_quote(name)} includes invalid characters for a local volume name, only "
            f'"{NAME_CHARS}" are allowed. If you intended to pass a host directory, '
            "use absolute path"
        )
    return None


def options_problem(options: Mapping[str, str] | None) -> str | None:
    """dockerd's ``validateOpts`` (checked in a fixed order, so the message is stable)."""
    if not options:
        return None
    for key in sorted(options):
        if key not in _VALID_OPTIONS:
            return f"invalid option: {go_quote(key)}"
    if options.get("size"):
        # Sizes need project quotas on the data root, which we do not set up.
        return "quota size requested but no quota support"
    for key, required in _REQUIRED_WITH:
        if key in options:
            for other in required:
                if other not in options:
                    return f"missing required option: {go_quote(other)}"
    return None


def needs_mount(options: Mapping[str, str] | None) -> bool:
    if not options:
        return False
    return bool(options.get("device") or options.get("type"))


def volume_dir(layout: Layout, name: str) -> Path:
    return layout.volumes_dir / name


def data_dir(layout: Layout, name: str) -> Path:
    return layout.volumes_dir / name / DATA_DIR


# ------------------------------------------------------------------ directories
def _is_empty_dir(path: Path) -> bool:
    try:
        with os.scandir(path) as entries:
            return next(entries, None) is None
    except FileNotFoundError:
        return True


def holds_data(layout: Layout, name: str) -> bool:
    """True when ``volumes/<name>`` has anything a user may have put there."""
    root = volume_dir(layout, name)
    data = root / DATA_DIR
    if is_mounted(data) or not _is_empty_dir(data):
        return True
    with os.scandir(root) as entries:
        return any(e.name != DATA_DIR for e in entries)


def make_volume_dir(layout: Layout, name: str) -> bool:
    """Create ``volumes/<name>/_data`` whole (built in tmp/, renamed in).

    Returns False when a directory of that name already held data: it is kept as the
    volume's (data is never thrown away), and an empty leftover is replaced.
    """
    target = volume_dir(layout, name)
    if target.exists():
        if holds_data(layout, name):
            (target / DATA_DIR).mkdir(mode=DATA_DIR_MODE, exist_ok=True)
            return False
        shutil.rmtree(target)
    staging = layout.tmp_dir / f"volume-{secrets.token_hex(8)}"
    staging.mkdir()
    try:
        os.chmod(staging, VOLUME_DIR_MODE)
        (staging / DATA_DIR).mkdir()
        os.chmod(staging / DATA_DIR, DATA_DIR_MODE)
        fsync_dir(staging)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(layout.volumes_dir)
    return True


def ensure_data_dir(layout: Layout, name: str) -> None:
    """A volume row whose directory went missing gets an empty one back."""
    root = volume_dir(layout, name)
    if not root.exists():
        root.mkdir(mode=VOLUME_DIR_MODE)
        os.chmod(root, VOLUME_DIR_MODE)
    data = root / DATA_DIR
    if not data.exists():
        data.mkdir(mode=DATA_DIR_MODE)
        os.chmod(data, DATA_DIR_MODE)
        fsync_dir(root)


def delete_volume_dir(layout: Layout, name: str) -> None:
    """Remove ``volumes/<name>`` so that it is whole or gone, never half.

    The directory is renamed into tmp/ (one atomic step), then deleted; what a crash
    leaves in tmp/ is wiped at the next start.
    """
    target = volume_dir(layout, name)
    if not os.path.lexists(target):
        return
    if target.parent != layout.volumes_dir or target.is_symlink():
        raise SystemError_(
            f"unable to remove a directory outside of the local volume root: {target}"
        )
    unmount_device(target / DATA_DIR)
    grave = layout.tmp_dir / f"volume-rm-{secrets.token_hex(8)}"
    os.rename(target, grave)
    fsync_dir(layout.volumes_dir)
    # Never delete through a mount point that is still there (a device or bind on _data).
    for point in sorted(mount_points_under(grave), reverse=True):
        with contextlib.suppress(mounting.MountError):
            mounting.unmount(Path(point), detach=True)
    shutil.rmtree(grave, ignore_errors=True)


def volume_dir_names(layout: Layout) -> list[str]:
    """Directory names under volumes/ (what the start-up sweep compares with the rows)."""
    try:
        with os.scandir(layout.volumes_dir) as entries:
            return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []


def created_time(layout: Layout, name: str) -> float:
    try:
        return volume_dir(layout, name).stat().st_mtime
    except OSError:
        return 0.0


# ------------------------------------------------------------------ mounts
def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_points() -> set[str]:
    """Every mount point of this mount namespace (from /proc/self/mountinfo)."""
    points: set[str] = set()
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4:
                    points.add(_unescape(fields[4]))
    except OSError:
        pass
    return points


def mount_points_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    return [p for p in mount_points() if p == str(path) or p.startswith(prefix)]


def is_mounted(path: Path) -> bool:
    return str(path) in mount_points()


def _propagation_of_mount_under(path: str) -> tuple[str, tuple[str, ...]]:
    """The mount point ``path`` lives on (the deepest prefix; the topmost mount when
    several are stacked there) and that mount's optional fields (``shared:N``,
    ``master:N``...), from /proc/self/mountinfo."""
    best: str = "/"
    fields_of_best: tuple[str, ...] = ()
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            try:
                sep = fields.index("-", 6)
            except ValueError:
                continue
            point = _unescape(fields[4])
            inside = path == point or path.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, fields_of_best = point, tuple(fields[6:sep])
    return best, fields_of_best


def propagation_problem(source: str, propagation: str) -> str | None:
    """dockerd's check before a bind with shared or slave propagation: the source's own
    mount must be shared (for ``[r]shared``) or shared or a slave (for ``[r]slave``),
    else the propagation asked for cannot happen. None when fine."""
    wanted = {"shared": ("shared:",), "rshared": ("shared:",),
              "slave": ("shared:", "master:"), "rslave": ("shared:", "master:")}.get(propagation)
    if wanted is None:
        return None
    point, optional = _propagation_of_mount_under(os.path.realpath(source))
    if any(field.startswith(wanted) for field in optional):
        return None
    kind = "shared" if len(wanted) == 1 else "shared or slave"
    return f"path {source} is mounted on {point} but it is not a {kind} mount"


def _mask_password(message: str, options: str) -> str:
    match = _PASSWORD_RE.search(options)
    if match and match.group(1):
        return message.replace("password=" + match.group(1), "password=********")
    return message


def mount_device(options: Mapping[str, str], target: Path) -> None:
    """Mount the volume's device on its ``_data`` (``-o type= -o device= -o o=``)."""
    device = options.get("device") or ""
    if not device:
        raise SystemError_("missing device in volume options")
    mount_options = options.get("o") or ""
    spec = Mount(
        type=options.get("type") or "",
        source=device,
        options=tuple(o for o in mount_options.split(",") if o),
    )
    try:
        mounting.mount([spec], target)
    except mounting.MountError as exc:
        message = _mask_password(str(exc), mount_options)
        raise SystemError_(f"failed to mount local volume: {message}") from None


def unmount_device(target: Path) -> None:
    """Unmount what is mounted on ``target`` (nothing mounted is fine)."""
    if not is_mounted(target):
        return
    try:
        mounting.unmount_all(target)
    except mounting.MountError as exc:
        raise SystemError_(f"error unmounting volume: {exc}") from None


def ensure_bind_source(path: str) -> None:
    """``-v /host/dir:/dst``: a missing host directory is created (0755), as dockerd does.
    An existing file is left alone (it may be meant for a file bind)."""
    if os.path.lexists(path):
        return
    try:
        os.makedirs(path, mode=DATA_DIR_MODE, exist_ok=True)
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:
            return
        raise SystemError_(
            f"error while creating mount source path '{path}': {exc.strerror}"
        ) from None


# ------------------------------------------------------------------ usage
def dir_size(path: Path) -> int:
    """Bytes in ``path`` as dockerd counts them: sizes of non-directories, each inode once,
    without following symlinks or descending into other file systems."""
    try:
        root_dev = os.lstat(path).st_dev
    except FileNotFoundError:
        return 0
    seen: set[int] = set()
    total = 0
    pending = [str(path)]
    while pending:
        current = pending.pop()
        try:
            entries = list(os.scandir(current))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                if st.st_dev == root_dev:
                    pending.append(entry.path)
                continue
            if st.st_size == 0 or st.st_ino in seen:
                continue
            seen.add(st.st_ino)
            total += st.st_size
    return total
