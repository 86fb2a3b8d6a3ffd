"""``--cache-from``: steps reused from given images, matched by their history.

As dockerd's classic builder (moby ``image/cache``): an image named in ``cachefrom``
can stand for a step when its history and layers start with exactly those of the
step's parent image, and its next history entry was made by the same command
(``created_by`` equal to the step's joined run-config Cmd). When that entry is the
image's last, the image itself is the result; otherwise a new image is made from the
image's layers up to that point (no layer is copied: they are already here), with the
config the build has at that step. Such images usually come from a registry, with no
parent chain of their own: the history is all there is to compare.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from engine.images.catalog import ImageView, NewImage
from engine.images.layers import chain_ids
from engine.images.manager import ImageManager
from engine.images.timefmt import rfc3339_nano


async def probe(
    images: ImageManager, sources: Sequence[str], parent_id: str | None,
    created_by: str, config: Mapping[str, Any],
) -> str | None:
    """The image standing for this step, made if needed; None when no source has it."""
    parent = images.view_by_id(parent_id) if parent_id else None
    parent_history = _history(parent)
    parent_diffs = list(parent.diff_ids) if parent is not None else []
    for source_id in sources:
        source = images.view_by_id(source_id)
        if source is None:
            continue
        history = _history(source)
        if not _starts_with(history, source.diff_ids, parent_history, parent_diffs):
            continue
        entry = history[len(parent_history)]
        if str(entry.get("created_by", "")) != created_by:
            continue
        if len(history) == len(parent_history) + 1:
            return source.id
        return await _restore(images, source, parent, entry, config)
    return None


def _history(view: ImageView | None) -> list[dict[str, Any]]:
    if view is None:
        return []
    entries = view.config.get("history")
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def _starts_with(history: Sequence[Mapping[str, Any]], diffs: Sequence[str],
                 prefix_history: Sequence[Mapping[str, Any]],
                 prefix_diffs: Sequence[str]) -> bool:
    if len(history) <= len(prefix_history) or len(diffs) < len(prefix_diffs):
        return False
    if any(dict(a) != dict(b) for a, b in zip(history, prefix_history, strict=False)):
        return False
    return list(diffs[:len(prefix_diffs)]) == list(prefix_diffs)


async def _restore(images: ImageManager, source: ImageView, parent: ImageView | None,
                   entry: Mapping[str, Any], config: Mapping[str, Any]) -> str | None:
    parent_diffs = list(parent.diff_ids) if parent is not None else []
    diff_ids = list(parent_diffs)
    if not entry.get("empty_layer"):
        if len(source.diff_ids) <= len(parent_diffs):
            return None
        diff_ids.append(source.diff_ids[len(parent_diffs)])
    base = parent.config if parent is not None else source.config
    image: dict[str, Any] = {
        "created": entry.get("created") or rfc3339_nano(time.time_ns()),
        "docker_version": source.config.get("docker_version", ""),
        "config": dict(config),
        "architecture": base.get("architecture", ""),
        "os": base.get("os") or "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [*_history(parent), dict(entry)],
    }
    data = json.dumps(image, separators=(",", ":"), ensure_ascii=False).encode()
    chains = chain_ids(diff_ids)
    layers = source.layers[:len(diff_ids)]
    if list(layers) != chains:
        return None  # the source's layers are not stored under these chain ids
    image_id = await images.write_config(data)
    size = sum(source.layer_sizes[:len(diff_ids)])
    await images.register([], [NewImage(image_id, data, chains[-1] if chains else None, size,
                                        parent=parent.id if parent is not None else None)])
    return image_id
