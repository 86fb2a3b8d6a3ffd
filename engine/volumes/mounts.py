"""A container's mounts, from Docker's create config to plans, OCI mounts and inspect entries.

Pure: nothing here touches a volume, and the only file-system question (does a ``--mount
type=bind`` source exist?) is asked through a callable, so the manager can ask it off the
event loop and tests can answer it.

Sources, in the order dockerd applies them (daemon/volumes.go ``registerMountPoints`` and
daemon/create_unix.go), later ones winning a destination:

  1. ``HostConfig.VolumesFrom``  ``<container>[:ro|rw]``: the other container's mounts
  2. ``HostConfig.Binds``        ``-v name:/dst[:mode]``, ``-v /host:/dst[:mode]``, ``-v /dst``
  3. ``HostConfig.Mounts``       ``--mount type=bind|volume|tmpfs,...``
  4. ``HostConfig.Tmpfs``        ``--tmpfs /dst[:options]`` (wins over 1 and 3, conflicts with 2)
  5. ``Config.Volumes`` and the image's ``Volumes``: anonymous volumes where nothing else
     is mounted

Binds and Mounts may not name one destination twice (``Duplicate mount point``). A ``-v``
host directory that is missing is created at start (dockerd does so); a ``--mount`` bind
source must exist at create.

The messages are dockerd's (volume/mounts/linux_parser.go, validate.go), because the CLI
prints them as they are and scripts match them (reliability.md B12).
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from engine.errors import InvalidParameter, NotSupported
from engine.volumes import local

MountType = Literal["bind", "volume", "tmpfs"]
Origin = Literal["volumes-from", "binds", "mounts", "tmpfs", "config"]

RW_MODES = frozenset({"rw", "ro"})
LABEL_MODES = frozenset({"z", "Z"})
PROPAGATION_MODES = frozenset({"private", "rprivate", "slave", "rslave", "shared", "rshared"})
COPY_MODES = frozenset({"nocopy"})
CONSISTENCY_MODES = frozenset({"consistent", "cached", "delegated", "default"})
DEFAULT_PROPAGATION = "rprivate"

# Options every tmpfs gets before the user's, merged the way moby/sys/mount does it.
_TMPFS_DEFAULTS = ("noexec", "nosuid", "nodev", DEFAULT_PROPAGATION)
_TMPFS_FLAG_GROUPS: dict[str, str] = {
    # option -> the flag it sets or clears; options of one group collide
    "ro": "rdonly", "rw": "rdonly", "suid": "nosuid", "nosuid": "nosuid", "dev": "nodev",
    "nodev": "nodev", "exec": "noexec", "noexec": "noexec", "sync": "sync", "async": "sync",
    "dirsync": "dirsync", "remount": "remount", "mand": "mand", "nomand": "mand",
    "atime": "noatime", "noatime": "noatime", "diratime": "nodiratime",
    "nodiratime": "nodiratime", "relatime": "relatime", "norelatime": "relatime",
    "strictatime": "strictatime", "nostrictatime": "strictatime",
    # there is only one propagation
    "bind": "propagation", "rbind": "propagation", "unbindable": "propagation",
    "runbindable": "propagation", "private": "propagation", "rprivate": "propagation",
    "shared": "propagation", "rshared": "propagation", "slave": "propagation",
    "rslave": "propagation",
}
_TMPFS_DATA_KEYS = frozenset({"", "size", "mode", "uid", "gid", "nr_inodes", "nr_blocks", "mpol"})
_TMPFS_EXTRA_OPTIONS = frozenset({"exec", "noexec"})  # TmpfsOptions.Options (API 1.46)

_MOUNT_OPTION_KEYS = {
    "bind": "BindOptions", "volume": "VolumeOptions", "tmpfs": "TmpfsOptions",
    "image": "ImageOptions", "cluster": "ClusterOptions",
}


@dataclass(frozen=True)
class MountPlan:
    """One mount of a container, as decided at create.

    For a volume, ``source`` is the volume's name; it is empty for an anonymous volume
    until the manager has created one (then it holds the generated name).
    """

    type: MountType
    destination: str
    origin: Origin
    source: str = ""
    read_only: bool = False
    mode: str = ""  # what inspect shows as Mode (the raw -v mode; "z" for local volumes)
    propagation: str = ""
    anonymous: bool = False  # the spec named no volume: `docker rm -v` removes it
    copy_data: bool = False  # populate an empty volume from the image at first start
    create_source: bool = False  # -v: create a missing host directory at start
    non_recursive: bool = False  # BindOptions.NonRecursive: "bind" instead of "rbind"
    driver: str = ""  # volume driver asked for ("" = the default, local)
    driver_opts: Mapping[str, str] | None = field(default=None, compare=False)
    labels: Mapping[str, str] | None = field(default=None, compare=False)
    tmpfs_data: str = ""  # tmpfs: the data options ("size=1m,mode=1777")
    subpath: str = ""  # volume: VolumeOptions.Subpath, the directory inside it to mount

    @property
    def listed(self) -> bool:
        """Shown in inspect ``Mounts`` and inherited by ``--volumes-from`` (``--tmpfs`` is
        neither, in dockerd: it is not one of the container's mount points)."""
        return self.origin != "tmpfs"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["driver_opts"] = dict(self.driver_opts) if self.driver_opts is not None else None
        data["labels"] = dict(self.labels) if self.labels is not None else None
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MountPlan:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


VolumesFromLookup = Callable[[str], Sequence[MountPlan]]
SourceExists = Callable[[str], bool]


# ------------------------------------------------------------------ small parsers
def valid_mode(mode: str) -> bool:
    """dockerd's ``linuxValidMountMode``: comma-separated, at most one of each kind."""
    if mode == "":
        return True
    counts = {"rw": 0, "label": 0, "propagation": 0, "copy": 0, "consistency": 0}
    for option in mode.split(","):
        if option in RW_MODES:
            counts["rw"] += 1
        elif option in LABEL_MODES:
            counts["label"] += 1
        elif option in PROPAGATION_MODES:
            counts["propagation"] += 1
        elif option in COPY_MODES:
            counts["copy"] += 1
        elif option in CONSISTENCY_MODES:
            counts["consistency"] += 1
        else:
            return False
    return all(n <= 1 for n in counts.values())


def read_write(mode: str) -> bool:
    return valid_mode(mode) and "ro" not in mode.split(",")


def _propagation_of(mode: str) -> str | None:
    for option in mode.split(","):
        if option in PROPAGATION_MODES:
            return option
    return None


def _invalid_spec(raw: str) -> str:
    return f"invalid volume specification: '{raw}'"


def _invalid_mode(mode: str) -> InvalidParameter:
    return InvalidParameter(f"invalid mode: {mode}")


def clean_path(path: str) -> str:
    """Go's path.Clean (what dockerd stores as a destination)."""
    if path == "":
        return "."
    cleaned = posixpath.normpath(path)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    return cleaned


def _absolute_problem(path: str) -> str | None:
    if path.replace("\\", "/").startswith("/"):
        return None
    return f"invalid mount path: '{path.replace(chr(92), '/')}' mount path must be absolute"


def _root_problem(path: str) -> str | None:
    if clean_path(path.replace("\\", "/")) == "/":
        return "invalid specification: destination can't be '/'"
    return None


def validate_tmpfs_destination(dest: str) -> None:
    """``HostConfig.Tmpfs`` keys (dockerd's ValidateTmpfsMountDestination)."""
    problem = _root_problem(dest) or _absolute_problem(dest)
    if problem:
        raise InvalidParameter(problem)


def merge_tmpfs_options(options: Iterable[str]) -> list[str]:
    """moby/sys/mount ``MergeTmpfsOptions``: the last of colliding options wins, order kept."""
    seen_flags: set[str] = set()
    seen_data: set[str] = set()
    merged: list[str] = []
    for option in reversed(list(options)):
        if option == "defaults":
            continue
        group = _TMPFS_FLAG_GROUPS.get(option)
        if group is not None:
            if group not in seen_flags:
                merged.insert(0, option)
                seen_flags.add(group)
            continue
        key, sep, _ = option.partition("=")
        if not sep or key not in _TMPFS_DATA_KEYS:
            raise InvalidParameter(f"invalid tmpfs option {local.go_quote(key)}")
        if key not in seen_data:
            merged.insert(0, option)
            seen_data.add(key)
    return merged


def tmpfs_options(data: str) -> list[str]:
    """The OCI options of a tmpfs mount, as dockerd sets them (daemon/oci_linux.go)."""
    extra = data.split(",") if data else []
    return merge_tmpfs_options([*_TMPFS_DEFAULTS, *extra])


def _tmpfs_data_from_options(options: Mapping[str, Any] | None, read_only: bool) -> str:
    """dockerd's ConvertTmpfsOptions: ro, mode (octal), size with the largest exact suffix."""
    parts: list[str] = []
    if read_only:
        parts.append("ro")
    if options:
        mode = options.get("Mode")
        if mode:
            parts.append(f"mode={_int(mode, 'TmpfsOptions.Mode'):o}")
        size = options.get("SizeBytes")
        if size:
            parts.append(f"size={_size_text(_int(size, 'TmpfsOptions.SizeBytes'))}")
        for entry in options.get("Options") or []:
            parts.append(_tmpfs_extra_option(entry))
    return ",".join(parts)


def _size_text(size: int) -> str:
    for suffix, divisor in (("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
        if size % divisor == 0:
            return f"{size // divisor}{suffix}"
    return str(size)


def _tmpfs_extra_option(entry: Any) -> str:
    if not isinstance(entry, list) or not 1 <= len(entry) <= 2:
        raise InvalidParameter("invalid option array length")
    if entry[0] not in _TMPFS_EXTRA_OPTIONS:
        raise InvalidParameter(f"invalid option: {entry[0]}")
    return str(entry[0]) if len(entry) == 1 else f"{entry[0]}={entry[1]}"


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParameter(f"invalid JSON: {what}: expected an integer")
    return value


def _string_map(value: Any, what: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidParameter(f"invalid JSON: {what}: expected an object of strings")
    return dict(value)


def volume_name_problem(name: str) -> str | None:
    """The error ``create <name>`` gives for a bad local volume name (None when fine)."""
    problem = local.name_problem(name)
    return f"create {name}: {problem}" if problem else None


# ------------------------------------------------------------------ --mount (HostConfig.Mounts)
class _MountConfigError(InvalidParameter):
    def __init__(self, mount_type: str, problem: str) -> None:
        super().__init__(f"invalid mount config for type {local.go_quote(mount_type)}: {problem}")


def _present(cfg: Mapping[str, Any], key: str) -> bool:
    return cfg.get(key) is not None


def validate_mount_config(
    cfg: Mapping[str, Any], source_exists: SourceExists | None = None
) -> None:
    """dockerd's ``validateMountConfigImpl``; ``source_exists`` None skips the bind check."""
    mount_type = cfg.get("Type") or ""
    if not isinstance(mount_type, str):
        raise InvalidParameter("invalid JSON: Mounts.Type: expected a string")

    def fail(problem: str) -> _MountConfigError:
        return _MountConfigError(mount_type, problem)

    for kind, key in _MOUNT_OPTION_KEYS.items():
        if mount_type != kind and _present(cfg, key):
            raise fail(f"field {key} must not be specified")
    target = cfg.get("Target") or ""
    source = cfg.get("Source") or ""
    if not isinstance(target, str) or not isinstance(source, str):
        raise InvalidParameter("invalid JSON: Mounts: Source and Target must be strings")
    if target == "":
        raise fail("field Target must not be empty")
    problem = _root_problem(target) or _absolute_problem(target)
    if problem:
        raise fail(problem)
    if mount_type == "bind":
        if source == "":
            raise fail("field Source must not be empty")
        bind_options = cfg.get("BindOptions") or {}
        propagation = bind_options.get("Propagation") or ""
        if propagation and propagation not in PROPAGATION_MODES:
            raise fail(f"invalid propagation mode: {propagation}")
        problem = _absolute_problem(source)
        if problem:
            raise fail(problem)
        create = bool(bind_options.get("CreateMountpoint"))
        if source_exists is not None and not create and not source_exists(source):
            raise fail(f"bind source path does not exist: {source}")
    elif mount_type == "volume":
        subpath = (cfg.get("VolumeOptions") or {}).get("Subpath") or ""
        if subpath:
            if source == "":
                raise fail("must not set Subpath when using anonymous volumes")
            if not _is_local_path(subpath):
                raise fail("subpath must be a relative path within the volume")
    elif mount_type == "tmpfs":
        if source != "":
            raise fail("field Source must not be specified")
        try:
            _tmpfs_data_from_options(cfg.get("TmpfsOptions"), bool(cfg.get("ReadOnly")))
        except InvalidParameter as exc:
            raise fail(exc.message) from None
    elif mount_type == "image":
        if source == "":
            raise fail("field Source must not be empty")
    else:
        raise fail("mount type unknown")


def _is_local_path(path: str) -> bool:
    """Go's filepath.IsLocal: relative, not empty, never climbing out."""
    if path == "" or path.startswith("/"):
        return False
    depth = 0
    for part in path.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return False
        elif part not in ("", "."):
            depth += 1
    return True


def _plan_from_mount(cfg: Mapping[str, Any], volume_driver: str) -> MountPlan:
    """A validated ``HostConfig.Mounts`` entry as a plan (dockerd's parseMountSpec)."""
    mount_type = cfg["Type"]
    destination = clean_path(cfg["Target"])
    read_only = bool(cfg.get("ReadOnly"))
    source = cfg.get("Source") or ""
    if mount_type == "bind":
        options = cfg.get("BindOptions") or {}
        return MountPlan(
            type="bind", destination=destination, origin="mounts",
            source=clean_path(source), read_only=read_only,
            propagation=options.get("Propagation") or DEFAULT_PROPAGATION,
            create_source=bool(options.get("CreateMountpoint")),
            non_recursive=bool(options.get("NonRecursive")),
        )
    if mount_type == "volume":
        options = cfg.get("VolumeOptions") or {}
        subpath = str(options.get("Subpath") or "")
        driver_config = options.get("DriverConfig") or {}
        if source:
            problem = volume_name_problem(source)
            if problem:
                raise InvalidParameter(problem)
        return MountPlan(
            type="volume", destination=destination, origin="mounts", source=source,
            read_only=read_only, anonymous=not source,
            # A subpath is a part of a volume that already has content: nothing is
            # copied into it from the image.
            copy_data=not options.get("NoCopy") and not subpath, subpath=subpath,
            driver=driver_config.get("Name") or volume_driver,
            driver_opts=_string_map(driver_config.get("Options"), "DriverConfig.Options"),
            labels=_string_map(options.get("Labels"), "VolumeOptions.Labels"),
        )
    if mount_type == "tmpfs":
        data = _tmpfs_data_from_options(cfg.get("TmpfsOptions"), read_only)
        merge_tmpfs_options(data.split(",") if data else [])
        return MountPlan(
            type="tmpfs", destination=destination, origin="mounts", read_only=read_only,
            tmpfs_data=data,
        )
    raise NotSupported(f"mount type {mount_type} is not supported")


# ------------------------------------------------------------------ -v (HostConfig.Binds)
def parse_bind(raw: str, volume_driver: str = "") -> MountPlan:
    """One ``-v`` entry (dockerd's ParseMountRaw with its error wording)."""
    parts = raw.split(":", 3)
    if parts[0] == "":
        raise InvalidParameter(_invalid_spec(raw))
    mode = ""
    if len(parts) == 1:
        source, target = "", parts[0]
    elif len(parts) == 2:
        if valid_mode(parts[1]):
            # "/foo:rw" is a destination and a mode: a volume needs a source for that
            raise InvalidParameter(_invalid_spec(raw))
        source, target = parts
    elif len(parts) == 3:
        source, target, mode = parts
    else:
        raise InvalidParameter(_invalid_spec(raw))
    if not valid_mode(mode):
        raise _invalid_mode(mode)
    is_bind = source.startswith("/")
    propagation = _propagation_of(mode)
    cfg: dict[str, Any] = {"Type": "bind" if is_bind else "volume", "Source": source,
                           "Target": target}
    if propagation is not None:
        cfg["BindOptions"] = {"Propagation": propagation}
    if (volume_driver and not is_bind) or "nocopy" in mode.split(","):
        cfg["VolumeOptions"] = {}
    try:
        validate_mount_config(cfg, source_exists=None)
    except InvalidParameter as exc:
        raise InvalidParameter(f"{_invalid_spec(raw)}: {exc.message}") from None
    read_only = not read_write(mode)
    destination = clean_path(target)
    if is_bind:
        return MountPlan(
            type="bind", destination=destination, origin="binds", source=clean_path(source),
            read_only=read_only, mode=mode, propagation=propagation or DEFAULT_PROPAGATION,
            create_source=True,
        )
    if source:
        problem = volume_name_problem(source)
        if problem:
            raise InvalidParameter(problem)
    return MountPlan(
        type="volume", destination=destination, origin="binds", source=source,
        read_only=read_only, mode=mode, anonymous=not source,
        copy_data="nocopy" not in mode.split(","), driver=volume_driver,
    )


def parse_volumes_from(spec: str) -> tuple[str, str]:
    """``<container>[:mode]`` → (container, mode); dockerd's ParseVolumesFrom."""
    if spec == "":
        raise InvalidParameter("volumes-from specification cannot be an empty string")
    ref, _, mode = spec.partition(":")
    if mode == "":
        return ref, "rw"
    if not valid_mode(mode) or _propagation_of(mode) is not None or "nocopy" in mode.split(","):
        raise _invalid_mode(mode)
    return ref, mode


# ------------------------------------------------------------------ the plan
def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidParameter(f"invalid JSON: {what}: expected an array")
    return value


def _keys(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, dict):
        raise InvalidParameter(f"invalid JSON: {what}: expected an object")
    return [str(k) for k in value]


def plan_mounts(
    config: Mapping[str, Any],
    host_config: Mapping[str, Any],
    image_config: Mapping[str, Any] | None = None,
    volumes_from: VolumesFromLookup | None = None,
    source_exists: SourceExists | None = None,
) -> list[MountPlan]:
    """Every mount of a new container, validated, in dockerd's order of precedence.

    ``volumes_from(ref)`` returns the plans of the container ``ref`` names (raise
    ``NotFound`` for none). ``source_exists`` answers the ``--mount`` bind-source check;
    None skips it. Volumes are not created here: anonymous ones have an empty source.
    """
    volume_driver = host_config.get("VolumeDriver") or ""
    mounts_cfg = _list(host_config.get("Mounts"), "HostConfig.Mounts")
    for cfg in mounts_cfg:
        if not isinstance(cfg, dict):
            raise InvalidParameter("invalid JSON: HostConfig.Mounts: expected objects")
        validate_mount_config(cfg, source_exists)
    tmpfs = host_config.get("Tmpfs") or {}
    if not isinstance(tmpfs, dict):
        raise InvalidParameter("invalid JSON: HostConfig.Tmpfs: expected an object")
    for dest in tmpfs:
        validate_tmpfs_destination(dest)

    points: dict[str, MountPlan] = {}
    for spec in _list(host_config.get("VolumesFrom"), "HostConfig.VolumesFrom"):
        ref, mode = parse_volumes_from(str(spec))
        if volumes_from is None:
            raise InvalidParameter(f"No such container: {ref}")
        rw = read_write(mode)
        for other in volumes_from(ref):
            if not other.listed:
                continue
            points[other.destination] = replace(
                other, origin="volumes-from", read_only=other.read_only or not rw, mode="",
                copy_data=False,
            )

    taken: set[str] = set()
    for raw in _list(host_config.get("Binds"), "HostConfig.Binds"):
        plan = parse_bind(str(raw), volume_driver)
        if plan.destination in taken or plan.destination in tmpfs:
            raise InvalidParameter(f"Duplicate mount point: {plan.destination}")
        taken.add(plan.destination)
        points[plan.destination] = plan
    for cfg in mounts_cfg:
        plan = _plan_from_mount(cfg, volume_driver)
        if plan.destination in taken:
            raise InvalidParameter(f"Duplicate mount point: {cfg['Target']}")
        taken.add(plan.destination)
        points[plan.destination] = plan

    # --tmpfs wins over what --volumes-from and --mount put at its destination (dockerd
    # skips those mount points at start).
    for dest, data in tmpfs.items():
        text = str(data or "")
        merge_tmpfs_options(text.split(",") if text else [])
        points[clean_path(dest)] = MountPlan(
            type="tmpfs", destination=clean_path(dest), origin="tmpfs", tmpfs_data=text
        )

    wanted = [*_keys(config.get("Volumes"), "Config.Volumes"),
              *_keys((image_config or {}).get("Volumes"), "image Volumes")]
    for raw_dest in wanted:
        problem = _absolute_problem(raw_dest) or _root_problem(raw_dest)
        if problem:
            raise InvalidParameter(problem)
        dest = clean_path(raw_dest)
        if dest in points:
            continue
        points[dest] = MountPlan(
            type="volume", destination=dest, origin="config", anonymous=True, copy_data=True,
            driver=volume_driver,
        )
    return list(points.values())


# ------------------------------------------------------------------ outputs
def oci_mount(plan: MountPlan, source: str) -> dict[str, Any]:
    """The OCI ``mounts`` entry dockerd writes for this plan (daemon/oci_linux.go)."""
    if plan.type == "tmpfs":
        return {"destination": plan.destination, "type": "tmpfs", "source": "tmpfs",
                "options": tmpfs_options(plan.tmpfs_data)}
    options = ["bind" if plan.non_recursive else "rbind"]
    if plan.read_only:
        options.append("ro")
    if plan.propagation:
        options.append(plan.propagation)
    return {"destination": plan.destination, "type": "bind", "source": source,
            "options": options}


def inspect_mount(plan: MountPlan, source: str) -> dict[str, Any]:
    """One entry of inspect's ``Mounts`` (moby's MountPoint: Name/Driver only for volumes)."""
    entry: dict[str, Any] = {"Type": plan.type}
    if plan.type == "volume":
        entry["Name"] = plan.source
    entry["Source"] = source if plan.type != "tmpfs" else ""
    entry["Destination"] = plan.destination
    if plan.type == "volume":
        entry["Driver"] = plan.driver or local.DRIVER
    entry["Mode"] = plan.mode
    entry["RW"] = not plan.read_only
    entry["Propagation"] = plan.propagation
    return entry


def plans_from_json(data: Sequence[Mapping[str, Any]]) -> tuple[MountPlan, ...]:
    return tuple(MountPlan.from_json(item) for item in data)
