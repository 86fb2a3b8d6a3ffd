"""Image manifests and indexes: Docker schema 2 and OCI (parse, select, build).

Parsing is strict about what matters for safety (digests are canonical sha256, sizes are
non-negative integers, the config and layer lists are present) and lenient about the
rest, as registries in the wild are. Schema 1 manifests are refused with dockerd's text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.errors import InvalidParameter, NotFound
from engine.images.platforms import Platform, match_rank

# -- media types ---------------------------------------------------------------------
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"

MANIFEST_TYPES = (DOCKER_MANIFEST, OCI_MANIFEST)
INDEX_TYPES = (DOCKER_MANIFEST_LIST, OCI_INDEX)
CONFIG_TYPES = (DOCKER_CONFIG, OCI_CONFIG, "application/octet-stream")
ACCEPT = ", ".join((*MANIFEST_TYPES, *INDEX_TYPES))

# Layer media type → compression ("none", "gzip", "zstd").
LAYER_COMPRESSION = {
    DOCKER_LAYER_GZIP: "gzip",
    DOCKER_LAYER_FOREIGN: "gzip",
    "application/vnd.docker.image.rootfs.diff.tar": "none",
    OCI_LAYER: "none",
    OCI_LAYER_GZIP: "gzip",
    OCI_LAYER_ZSTD: "zstd",
    OCI_LAYER_NONDIST: "none",
    OCI_LAYER_NONDIST_GZIP: "gzip",
    "application/octet-stream": "unknown",
}

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"

_MAX_MANIFEST = 4 << 20  # distribution refuses bigger manifests too


class ManifestError(InvalidParameter):
    """A manifest or index that cannot be used."""


def schema1_error(ref: str) -> ManifestError:
    return ManifestError(
        "Docker Image Format v1 and Docker Image manifest version 2, schema 1 support has "
        f"been removed. Suggest the author of {ref} to upgrade the image to the OCI Format "
        "or Docker Image manifest v2, schema 2. More information at "
        "https://docs.docker.com/go/deprecated-image-specs/"
    )


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    urls: tuple[str, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)

    def to_object(self) -> dict[str, Any]:
        """The descriptor as JSON (Go's field order: mediaType, digest, size, …)."""
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest,
                               "size": self.size}
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            plat: dict[str, str] = {"architecture": self.platform.architecture,
                                    "os": self.platform.os}
            if self.platform.variant:
                plat["variant"] = self.platform.variant
            out["platform"] = plat
        return out

    @property
    def compression(self) -> str:
        return LAYER_COMPRESSION.get(self.media_type, "unknown")


@dataclass(frozen=True)
class ImageManifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True)
class ManifestIndex:
    media_type: str
    manifests: tuple[Descriptor, ...]


# -------------------------------------------------------------------- parsing
def _digest(value: Any, what: str) -> str:
    if (
        not isinstance(value, str)
        or not value.startswith("sha256:")
        or len(value) != 71
        or any(c not in "0123456789abcdef" for c in value[7:])
    ):
        raise ManifestError(f"invalid {what} digest {value!r}")
    return value


def parse_descriptor(data: Any, what: str) -> Descriptor:
    if not isinstance(data, Mapping):
        raise ManifestError(f"invalid {what}: not an object")
    media_type = data.get("mediaType")
    size = data.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"invalid {what} size {size!r}")
    urls = data.get("urls")
    annotations = data.get("annotations")
    return Descriptor(
        media_type=media_type if isinstance(media_type, str) else "",
        digest=_digest(data.get("digest"), what),
        size=size,
        platform=Platform.from_object(data.get("platform")),
        urls=tuple(u for u in urls if isinstance(u, str)) if isinstance(urls, list) else (),
        annotations=(
            {k: v for k, v in annotations.items() if isinstance(k, str) and isinstance(v, str)}
            if isinstance(annotations, Mapping) else {}
        ),
    )


def parse_manifest(
    data: bytes, content_type: str | None, ref: str = ""
) -> ImageManifest | ManifestIndex:
    """A manifest or index from its bytes and the registry's ``Content-Type`` (the
    document's own ``mediaType`` wins when present)."""
    if len(data) > _MAX_MANIFEST:
        raise ManifestError("manifest too large")
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise ManifestError(f"invalid manifest: {exc}") from None
    if not isinstance(doc, Mapping):
        raise ManifestError("invalid manifest: not a JSON object")
    declared = doc.get("mediaType")
    header = (content_type or "").split(";", 1)[0].strip()
    media_type = declared if isinstance(declared, str) and declared else header
    if doc.get("schemaVersion") == 1 or media_type in (DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED):
        raise schema1_error(ref)
    if media_type in INDEX_TYPES or (not media_type and "manifests" in doc):
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise ManifestError("invalid index: no manifests")
        return ManifestIndex(
            media_type or OCI_INDEX,
            tuple(parse_descriptor(m, "manifest") for m in entries),
        )
    if media_type in MANIFEST_TYPES or (not media_type and "config" in doc):
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise ManifestError("invalid manifest: no layers")
        return ImageManifest(
            media_type or OCI_MANIFEST,
            parse_descriptor(doc.get("config"), "config"),
            tuple(parse_descriptor(layer, "layer") for layer in layers),
        )
    raise ManifestError(f"unsupported manifest media type {media_type or '(none)'}")


def select_platform(index: ManifestIndex, wanted: Platform) -> Descriptor:
    """The best entry of ``index`` for ``wanted`` (first among equals, as listed)."""
    best: tuple[int, int, Descriptor] | None = None
    for position, entry in enumerate(index.manifests):
        if entry.platform is None or entry.media_type not in (*MANIFEST_TYPES, ""):
            continue  # attestations and nested indexes are not images to run
        rank = match_rank(wanted, entry.platform)
        if rank is None:
            continue
        if best is None or (rank, position) < best[:2]:
            best = (rank, position, entry)
    if best is None:
        raise NotFound(f"no matching manifest for {wanted} in the manifest list entries")
    return best[2]


# -------------------------------------------------------------------- building
def build_manifest(
    config: Descriptor, layers: Sequence[Descriptor], media_type: str, indent: bool = False
) -> bytes:
    """The JSON of an image manifest (the digest is taken over these bytes). Pushed
    manifests are indented by three spaces, as distribution's schema2 package writes
    them; the OCI manifests of a saved archive are compact, as moby writes those."""
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": media_type,
                           "config": config.to_object(),
                           "layers": [layer.to_object() for layer in layers]}
    if indent:
        return json.dumps(doc, indent=3).encode()
    return json.dumps(doc, separators=(",", ":")).encode()


def build_index(manifests: Sequence[Descriptor]) -> bytes:
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX,
                           "manifests": [m.to_object() for m in manifests]}
    return json.dumps(doc, separators=(",", ":")).encode()
