"""Disk usage for ``GET /system/df``: images, containers, volumes (no build cache yet).

Sizes are measured off the event loop; nothing is cached, as dockerd does not either.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from engine.containers.model import ContainerView
from engine.images.manager import ImageUsage
from engine.volumes.manager import VolumeUsage, VolumeView


class _Images(Protocol):
    def disk_usage(self) -> tuple[list[ImageUsage], int]: ...


class _Containers(Protocol):
    def views(self) -> list[ContainerView]: ...


class _Volumes(Protocol):
    async def usage_all(self) -> list[tuple[VolumeView, VolumeUsage]]: ...


class _Snapshots(Protocol):
    async def usage(self, key: str) -> int: ...


@dataclass(frozen=True)
class ContainerUsage:
    view: ContainerView
    size_rw: int
    size_root_fs: int


@dataclass(frozen=True)
class DiskUsageReport:
    layers_size: int
    images: list[ImageUsage]
    containers: list[ContainerUsage]
    volumes: list[tuple[VolumeView, VolumeUsage]]


class DiskUsage:
    def __init__(
        self, images: _Images, containers: _Containers, volumes: _Volumes, snapshots: _Snapshots
    ) -> None:
        self._images = images
        self._containers = containers
        self._volumes = volumes
        self._snapshots = snapshots

    async def report(self, kinds: frozenset[str]) -> DiskUsageReport:
        """``kinds`` ⊆ {"image", "container", "volume", "build-cache"}; empty means all."""
        want = kinds or frozenset({"image", "container", "volume", "build-cache"})
        images, layers_size = self._images.disk_usage() if "image" in want else ([], 0)
        sizes = {usage.view.id: usage.view.size for usage in images}
        containers: list[ContainerUsage] = []
        if "container" in want:
            containers = await self._container_usage(sizes)
        volumes = await self._volumes.usage_all() if "volume" in want else []
        return DiskUsageReport(layers_size, images, containers, volumes)

    async def _container_usage(self, image_sizes: dict[str, int]) -> list[ContainerUsage]:
        views = self._containers.views()
        rw = await asyncio.gather(*(self._rw_size(view.id) for view in views))
        return [
            ContainerUsage(view, size, size + image_sizes.get(view.config.image_id, 0))
            for view, size in zip(views, rw, strict=True)
        ]

    async def _rw_size(self, container_id: str) -> int:
        try:
            return await self._snapshots.usage(container_id)
        except Exception:
            return 0  # removed meanwhile
