"""HostConfig options wharfd stores but cannot apply here, refused at create in dockerd's
words instead of being silently ignored (issue 10 item 6).

- ``StorageOpt``: the only option is ``size``, a per-container quota that dockerd's
  overlay2 sets with XFS project quotas (data root on xfs mounted with ``pquota``). The
  snapshotter has no quota support, so ``size`` is refused as dockerd refuses it on any
  other backing file system; other keys are unknown options (dockerd's overlay2).
- ``DeviceRequests`` (``--gpus``): no device driver is registered (dockerd ships an
  NVIDIA one that needs its container toolkit): refused as dockerd does without it.
- ``Isolation``: Linux has only ``default`` (dockerd's check).
- ``IOMaximumBandwidth``/``IOMaximumIOps`` are Windows' (dockerd's "Invalid QoS
  settings"); ``CpuPercent`` is dropped with dockerd's warning.

Per-device block IO limits the kernel's cgroups cannot take (``blkio.weight_device``
needs CFQ/BFQ) are dropped with dockerd's warning, as dockerd drops them; the others
are applied (``engine.containers.spec``).

dockerd answers these with 500 (plain errors from the graph driver and the device
driver lookup); the request is the client's mistake, so wharfd answers 400 with the
same text.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from engine.errors import InvalidParameter
from engine.runtime import cgroups

STORAGE_OPT_SIZE_UNSUPPORTED = (
    "--storage-opt is supported only for overlay over xfs with 'pquota' mount option"
)


def check_storage_opt(storage_opt: Any, *, quota_supported: bool = False) -> None:
    if not storage_opt:
        return
    if not isinstance(storage_opt, Mapping):
        raise InvalidParameter("invalid JSON: HostConfig.StorageOpt: expected an object")
    if "size" in storage_opt and not quota_supported:
        raise InvalidParameter(STORAGE_OPT_SIZE_UNSUPPORTED)
    for key in storage_opt:
        if str(key).lower() != "size":
            raise InvalidParameter(f"Unknown option {str(key).lower()}")


def _go_list(values: Any) -> str:
    """Go's ``%v`` of a []string or [][]string."""
    if isinstance(values, list):
        return "[" + " ".join(_go_list(v) for v in values) + "]"
    return str(values)


def check_device_requests(requests: Any) -> None:
    for request in requests or []:
        if not isinstance(request, Mapping):
            raise InvalidParameter("invalid JSON: HostConfig.DeviceRequests: expected objects")
        driver = str(request.get("Driver") or "")
        capabilities = request.get("Capabilities") or []
        raise InvalidParameter(
            f'could not select device driver "{driver}" with capabilities: '
            f"{_go_list(capabilities)}"
        )


def check_isolation(isolation: Any) -> None:
    if isolation not in (None, "", "default"):
        raise InvalidParameter(f'Invalid isolation: "{isolation}" - linux only supports '
                               "'default'")


def check_annotations(annotations: Any) -> None:
    for key in annotations or {}:
        if not str(key).strip():
            raise InvalidParameter("annotation key must not be an empty string")


def refuse_unapplied(host_config: Mapping[str, Any]) -> None:
    """Raise InvalidParameter for the first option that cannot be applied."""
    check_annotations(host_config.get("Annotations"))
    check_isolation(host_config.get("Isolation"))
    if host_config.get("IOMaximumBandwidth"):
        raise InvalidParameter(
            "Invalid QoS settings: linux does not support configuration of maximum bandwidth")
    if host_config.get("IOMaximumIOps"):
        raise InvalidParameter(
            "Invalid QoS settings: linux does not support configuration of maximum IOPs")
    check_storage_opt(host_config.get("StorageOpt"))
    check_device_requests(host_config.get("DeviceRequests"))


_BLKIO_OPTIONS = (
    ("BlkioWeight", "blkio_weight",
     "Your kernel does not support Block I/O weight or the cgroup is not mounted. "
     "Weight discarded."),
    ("BlkioWeightDevice", "blkio_weight_device",
     "Your kernel does not support Block I/O weight_device or the cgroup is not mounted. "
     "Weight-device discarded."),
    ("BlkioDeviceReadBps", "blkio_read_bps_device",
     "Your kernel does not support BPS Block I/O read limit or the cgroup is not mounted. "
     "Block I/O BPS read limit discarded."),
    ("BlkioDeviceWriteBps", "blkio_write_bps_device",
     "Your kernel does not support BPS Block I/O write limit or the cgroup is not mounted. "
     "Block I/O BPS write limit discarded."),
    ("BlkioDeviceReadIOps", "blkio_read_iops_device",
     "Your kernel does not support IOPS Block read limit or the cgroup is not mounted. "
     "Block I/O IOPS read limit discarded."),
    ("BlkioDeviceWriteIOps", "blkio_write_iops_device",
     "Your kernel does not support IOPS Block write limit or the cgroup is not mounted. "
     "Block I/O IOPS write limit discarded."),
)


@functools.cache
def _cgroup_info() -> cgroups.CgroupInfo:
    return cgroups.detect()  # what the kernel offers does not change while we run


def discard_unsupported(host_config: dict[str, Any],
                        info: cgroups.CgroupInfo | None = None) -> list[str]:
    """Drop (in place) what this host cannot apply but dockerd only warns about (block IO
    weights and per-device limits the cgroups cannot take, ``CpuPercent``); return
    dockerd's warnings. Blocking (reads /proc and /sys once)."""
    info = info or _cgroup_info()
    warnings = []
    if host_config.get("CpuPercent"):
        host_config["CpuPercent"] = 0
        warnings.append("linux does not support CPU percent. Percent discarded.")
    for key, supported, warning in _BLKIO_OPTIONS:
        if host_config.get(key) and not getattr(info, supported):
            host_config[key] = 0 if key == "BlkioWeight" else []
            warnings.append(warning)
    return warnings
