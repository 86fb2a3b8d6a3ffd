"""What readers see of the image store (frozen views, rebuilt after each commit) and the
SQL that reads and writes the image rows.

``Catalog`` is published whole by the manager after every transaction; list, inspect,
history and resolve read it without locks or database round trips (architecture §4).
The row helpers run on the database thread inside ``Database.transaction``.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.errors import InvalidParameter
from engine.images.reference import Reference, parse_normalized_named
from engine.images.timefmt import parse_rfc3339, rfc3339_nano

ZERO_TIME = "0001-01-01T00:00:00Z"


# =========================================================================== views
@dataclass(frozen=True)
class LayerRecord:
    """One unpacked layer (a committed snapshot named by its chain id) and the blob kept
    for it: the uncompressed tar (``compression == "none"``, digest = diff id) or the
    compressed blob as a registry served it."""

    chain_id: str
    diff_id: str
    parent: str | None
    snapshot_key: str
    size: int  # bytes unpacked (Docker's layer size)
    blob_digest: str | None
    tar_size: int | None = None  # bytes of the uncompressed tar, when known
    compression: str | None = None  # of the blob: "none", "gzip", "zstd", …

    @property
    def blob_compression(self) -> str:
        if self.compression:
            return self.compression
        return "none" if self.blob_digest == self.diff_id else "unknown"


@dataclass(frozen=True)
class ImageView:
    """One image as readers see it. ``config`` is the image config JSON object (keys
    ``architecture``, ``os``, ``config``, ``rootfs``, ``history``, …); do not mutate it."""

    id: str  # "sha256:<hex>"
    config: Mapping[str, Any]
    repo_tags: tuple[str, ...]  # familiar, sorted: ("busybox:latest",)
    repo_digests: tuple[str, ...]  # familiar: ("busybox@sha256:…",)
    top_layer: str | None  # chain id of the topmost layer: the snapshot parent to use
    layers: tuple[str, ...]  # chain ids, bottom to top
    layer_sizes: tuple[int, ...]  # bytes unpacked per layer, bottom to top
    size: int
    created: float  # the image's own creation time (unix seconds)
    loaded: float  # when it arrived here
    last_tag_time: float | None
    parent: str = ""  # the image this one was committed from ("" when none)

    @property
    def short_id(self) -> str:
        return self.id.removeprefix("sha256:")[:12]

    @property
    def created_text(self) -> str:
        """RFC 3339 with zone, as stored in the config (Go's RFC3339Nano)."""
        text = self.config.get("created")
        return text if isinstance(text, str) and text else rfc3339_nano(int(self.created * 1e9))

    @property
    def last_tag_text(self) -> str:
        if self.last_tag_time is None:
            return ZERO_TIME
        return rfc3339_nano(int(self.last_tag_time * 1e9))

    @property
    def container_config(self) -> Mapping[str, Any]:
        value = self.config.get("config")
        return value if isinstance(value, dict) else {}

    @property
    def labels(self) -> dict[str, str]:
        value = self.container_config.get("Labels")
        return dict(value) if isinstance(value, dict) else {}

    @property
    def diff_ids(self) -> tuple[str, ...]:
        rootfs = self.config.get("rootfs")
        ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        return tuple(ids) if isinstance(ids, list) else ()

    @property
    def dangling(self) -> bool:
        return not self.repo_tags and not self.repo_digests


@dataclass(frozen=True)
class Catalog:
    images: Mapping[str, ImageView] = field(default_factory=dict)  # visible ones
    hidden: Mapping[str, ImageView] = field(default_factory=dict)  # removed=1 rows
    tags: Mapping[str, str] = field(default_factory=dict)  # "docker.io/library/x:1" → id
    digests: Mapping[str, str] = field(default_factory=dict)  # "docker.io/…/x@sha256:…" → id
    layers: Mapping[str, LayerRecord] = field(default_factory=dict)
    children: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # parent → ids

    def refs_of(self, image_id: str) -> list[Reference]:
        """Every tag and digest reference of an image, in dockerd's (familiar) order."""
        names = [r for r, i in self.tags.items() if i == image_id]
        names += [r for r, i in self.digests.items() if i == image_id]
        refs = [parse_normalized_named(n) for n in names]
        return sorted(refs, key=lambda r: r.familiar())

    def used_layers(self) -> set[str]:
        used: set[str] = set()
        for view in [*self.images.values(), *self.hidden.values()]:
            used.update(view.layers)
        return used

    def has_tag(self, image_id: str) -> bool:
        return any(i == image_id for i in self.tags.values())


def build_catalog(
    images: Sequence[sqlite3.Row],
    layers: Sequence[sqlite3.Row],
    tags: Sequence[sqlite3.Row],
    digests: Sequence[sqlite3.Row],
    configs: dict[str, Mapping[str, Any]],
) -> Catalog:
    """Views from the rows. ``configs`` caches parsed configs across rebuilds (pruned
    here to the images that still exist)."""
    layer_map = {r["chain_id"]: layer_of(r) for r in layers}
    tag_map = {r["ref"]: r["image_id"] for r in tags}
    digest_map = {r["ref"]: r["image_id"] for r in digests}
    tags_by_image: dict[str, list[str]] = {}
    for ref, owner in tag_map.items():
        tags_by_image.setdefault(owner, []).append(ref)
    digests_by_image: dict[str, list[str]] = {}
    for ref, owner in digest_map.items():
        digests_by_image.setdefault(owner, []).append(ref)
    visible: dict[str, ImageView] = {}
    hidden: dict[str, ImageView] = {}
    children: dict[str, list[str]] = {}
    for row in images:
        image_id: str = row["id"]
        config = configs.get(image_id)
        if config is None:
            config = json.loads(row["config"])
            configs[image_id] = config
        view = _view_of(row, config, layer_map, tags_by_image.get(image_id, []),
                        digests_by_image.get(image_id, []))
        (hidden if row["removed"] else visible)[image_id] = view
        if view.parent:
            children.setdefault(view.parent, []).append(image_id)
    for stale in [k for k in configs if k not in visible and k not in hidden]:
        del configs[stale]
    return Catalog(visible, hidden, tag_map, digest_map, layer_map,
                   {k: tuple(v) for k, v in children.items()})


def layer_of(r: sqlite3.Row) -> LayerRecord:
    return LayerRecord(
        r["chain_id"], r["diff_id"], r["parent"], r["snapshot_key"], r["size"],
        r["blob_digest"], r["tar_size"], r["blob_compression"],
    )


def _view_of(
    row: sqlite3.Row,
    config: Mapping[str, Any],
    layers: Mapping[str, LayerRecord],
    tags: Sequence[str],
    digests: Sequence[str],
) -> ImageView:
    chain: list[str] = []
    current = row["top_layer"]
    while current is not None and current in layers and current not in chain:
        chain.append(current)
        current = layers[current].parent
    chain.reverse()
    return ImageView(
        id=row["id"],
        config=config,
        repo_tags=tuple(sorted(parse_normalized_named(r).familiar() for r in tags)),
        repo_digests=tuple(sorted(parse_normalized_named(r).familiar() for r in digests)),
        top_layer=row["top_layer"],
        layers=tuple(chain),
        layer_sizes=tuple(layers[c].size for c in chain),
        size=row["size"],
        created=row["created"],
        loaded=row["loaded"],
        last_tag_time=row["last_tag"],
        parent=row["parent"] or "",
    )


# =========================================================================== filters
def search_prefix(term: str, images: Mapping[str, ImageView]) -> ImageView | None:
    """A unique image id prefix (``613d``, ``sha256:613d``); ambiguous counts as none."""
    algorithm, sep, rest = term.partition(":")
    if sep:
        if algorithm != "sha256":
            return None
        term = rest
    if not term or not re.fullmatch(r"[0-9a-f]+", term):
        return None
    found = [v for i, v in images.items() if i.removeprefix("sha256:").startswith(term)]
    return found[0] if len(found) == 1 else None


def dangling_filter(values: Sequence[str]) -> bool | None:
    if not values:
        return None
    if all(v.lower() in ("true", "1") for v in values):
        return True
    if all(v.lower() in ("false", "0") for v in values):
        return False
    raise InvalidParameter(f"invalid filter 'dangling=[{' '.join(values)}]'")


def labels_match(labels: Mapping[str, str], wanted: Sequence[str]) -> bool:
    for item in wanted:
        key, sep, value = item.partition("=")
        if key not in labels:
            return False
        if sep and labels[key] != value:
            return False
    return True


def labels_exclude(labels: Mapping[str, str], unwanted: Sequence[str]) -> bool:
    """``label!=k`` / ``label!=k=v`` (prune): True when none of them matches."""
    return not any(labels_match(labels, [item]) for item in unwanted)


def top_down(chain_ids: Sequence[str], layers: Mapping[str, LayerRecord]) -> list[str]:
    """Order layers so that children come before their parents."""
    ordered: list[str] = []
    pending = set(chain_ids)
    while pending:
        leaves = [c for c in pending if not any(layers[o].parent == c for o in pending)]
        if not leaves:
            ordered.extend(sorted(pending))
            break
        for leaf in sorted(leaves):
            ordered.append(leaf)
            pending.discard(leaf)
    return ordered


# =========================================================================== SQL
@dataclass(frozen=True)
class NewImage:
    """An image to register: its config bytes (id = their sha256) and names."""

    image_id: str
    config: bytes
    top_layer: str | None
    size: int
    parent: str | None = None
    tags: Sequence[Reference] = ()
    digests: Sequence[Reference] = ()


@dataclass(frozen=True)
class LayerSource:
    """A compressed blob a registry repository is known to hold for a diff id."""

    diff_id: str
    digest: str
    media_type: str
    size: int
    registry: str
    repository: str


def read_all(
    conn: sqlite3.Connection,
) -> tuple[list[sqlite3.Row], list[sqlite3.Row], list[sqlite3.Row], list[sqlite3.Row]]:
    images = conn.execute(
        "SELECT id, config, top_layer, size, created, loaded, last_tag, removed, parent "
        "FROM images"
    ).fetchall()
    layers = conn.execute(
        "SELECT chain_id, diff_id, parent, snapshot_key, size, blob_digest, tar_size, "
        "blob_compression FROM layers"
    ).fetchall()
    tags = conn.execute("SELECT ref, image_id FROM tags").fetchall()
    digests = conn.execute("SELECT ref, image_id FROM digests").fetchall()
    return images, layers, tags, digests


def insert_layers(conn: sqlite3.Connection, layers: Sequence[LayerRecord], now: float) -> None:
    for layer in layers:
        conn.execute(
            "INSERT OR IGNORE INTO layers (chain_id, diff_id, parent, snapshot_key, size, "
            "blob_digest, created, tar_size, blob_compression) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (layer.chain_id, layer.diff_id, layer.parent, layer.snapshot_key, layer.size,
             layer.blob_digest, now, layer.tar_size, layer.compression),
        )


def insert_image(conn: sqlite3.Connection, image: NewImage, now: float) -> dict[str, str]:
    """Insert (or revive) the image and point its names at it; returns the image id each
    tag and digest name pointed at before ("" when it was free)."""
    parsed = json.loads(image.config)
    created_text = parsed.get("created") if isinstance(parsed, dict) else None
    created = parse_rfc3339(created_text) if isinstance(created_text, str) else None
    conn.execute(
        "INSERT INTO images (id, config, top_layer, size, created, loaded, last_tag, removed, "
        "parent) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?) "
        "ON CONFLICT(id) DO UPDATE SET removed = 0, "
        "parent = COALESCE(images.parent, excluded.parent)",
        (image.image_id, image.config.decode(), image.top_layer, image.size,
         created if created is not None else now, now, now if image.tags else None,
         image.parent),
    )
    before: dict[str, str] = {}
    for ref in image.tags:
        row = conn.execute("SELECT image_id FROM tags WHERE ref = ?", (str(ref),)).fetchone()
        before[str(ref)] = row["image_id"] if row is not None else ""
        insert_tag(conn, str(ref), image.image_id, now)
    for ref in image.digests:
        row = conn.execute("SELECT image_id FROM digests WHERE ref = ?", (str(ref),)).fetchone()
        before[str(ref)] = row["image_id"] if row is not None else ""
        conn.execute(
            "INSERT INTO digests (ref, image_id) VALUES (?, ?) "
            "ON CONFLICT(ref) DO UPDATE SET image_id = excluded.image_id",
            (str(ref), image.image_id),
        )
    return before


def insert_sources(conn: sqlite3.Connection, sources: Sequence[LayerSource]) -> None:
    for s in sources:
        conn.execute(
            "INSERT OR IGNORE INTO layer_sources (diff_id, digest, media_type, size, registry, "
            "repository) VALUES (?, ?, ?, ?, ?, ?)",
            (s.diff_id, s.digest, s.media_type, s.size, s.registry, s.repository),
        )


def sources_of(conn: sqlite3.Connection, diff_id: str, registry: str) -> list[LayerSource]:
    rows = conn.execute(
        "SELECT diff_id, digest, media_type, size, registry, repository FROM layer_sources "
        "WHERE diff_id = ? AND registry = ?",
        (diff_id, registry),
    ).fetchall()
    return [LayerSource(r["diff_id"], r["digest"], r["media_type"], r["size"], r["registry"],
                        r["repository"]) for r in rows]


def insert_tag(conn: sqlite3.Connection, ref: str, image_id: str, now: float) -> None:
    conn.execute(
        "INSERT INTO tags (ref, image_id) VALUES (?, ?) "
        "ON CONFLICT(ref) DO UPDATE SET image_id = excluded.image_id",
        (ref, image_id),
    )
    conn.execute("UPDATE images SET last_tag = ? WHERE id = ?", (now, image_id))


def delete_refs(conn: sqlite3.Connection, refs: Sequence[str]) -> None:
    for ref in refs:
        conn.execute("DELETE FROM tags WHERE ref = ?", (ref,))
        conn.execute("DELETE FROM digests WHERE ref = ?", (ref,))


def delete_image_rows(conn: sqlite3.Connection, image_id: str) -> bool:
    """Delete the image (or hide it while a container row names it); True when hidden.
    Children that named it as parent forget it (dockerd's images keep no dangling
    parent links either)."""
    conn.execute("DELETE FROM tags WHERE image_id = ?", (image_id,))
    conn.execute("DELETE FROM digests WHERE image_id = ?", (image_id,))
    if named_by_container(conn, image_id):
        conn.execute("UPDATE images SET removed = 1 WHERE id = ?", (image_id,))
        return True
    conn.execute("UPDATE images SET parent = NULL WHERE parent = ?", (image_id,))
    conn.execute("DELETE FROM images WHERE id = ?", (image_id,))
    return False


def purge_hidden(conn: sqlite3.Connection, image_id: str) -> bool:
    if named_by_container(conn, image_id):
        return False
    conn.execute("UPDATE images SET parent = NULL WHERE parent = ?", (image_id,))
    conn.execute("DELETE FROM images WHERE id = ? AND removed = 1", (image_id,))
    return True


def named_by_container(conn: sqlite3.Connection, image_id: str) -> bool:
    row = conn.execute("SELECT 1 FROM containers WHERE image_id = ? LIMIT 1", (image_id,))
    return row.fetchone() is not None


def delete_layer_row(conn: sqlite3.Connection, chain_id: str) -> None:
    conn.execute("DELETE FROM layers WHERE chain_id = ?", (chain_id,))


def orphan_layer_snapshots(conn: sqlite3.Connection) -> list[str]:
    """Committed layer snapshots (keys ``sha256:…``) that no layer row names and no
    snapshot builds on: what a crash between a snapshot commit and the transaction that
    names it leaves."""
    rows = conn.execute(
        "SELECT key FROM snapshots s WHERE kind = 'committed' AND removing = 0 "
        "AND key LIKE 'sha256:%' "
        "AND NOT EXISTS (SELECT 1 FROM layers l WHERE l.snapshot_key = s.key) "
        "AND NOT EXISTS (SELECT 1 FROM snapshots c WHERE c.parent = s.key)"
    ).fetchall()
    return [r["key"] for r in rows]


def forget_sources(conn: sqlite3.Connection, diff_ids: Sequence[str]) -> None:
    """Drop registry knowledge of layers that are gone (keeps the table small)."""
    for diff_id in diff_ids:
        if conn.execute("SELECT 1 FROM layers WHERE diff_id = ? LIMIT 1", (diff_id,)).fetchone():
            continue
        conn.execute("DELETE FROM layer_sources WHERE diff_id = ?", (diff_id,))
