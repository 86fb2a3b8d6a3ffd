"""The engine's SQLite schema: the source of truth for every object.

    images          one row per image config (id = sha256 of the config blob);
                    top_layer names the image's topmost layer, whose parent chain is
                    the image's layer stack; removed=1 hides an image that was deleted
                    while a container row still names it (purged when none does)
    snapshots       overlay snapshots: committed layers and containers' rw layers;
                    removing=1 is rule 3's mark (files are being deleted)
    layers          one row per unpacked layer (chain id) → its committed snapshot
    tags            repository:tag → image (a name points at one image)
    digests         repository@digest → image (RepoDigests)
    containers      immutable config (JSON) + small mutable state columns
    meta            key/value: schema version, daemon id
    volumes         local volumes (name → driver, options, labels); removing=1 is rule 3's
                    mark (files are being deleted)
    container_mounts  a container's resolved mount plans (JSON), written at its create
    volume_refs     one row per volume mount point of a container: "in use" survives a
                    restart; active = mounted for a running container, populated = the
                    image's content was copied in (or did not need to be)
    layer_sources   diff id → compressed blob digests known to registry repositories
                    (push skips or mounts what a registry already holds)
    networks        bridge/host/none networks (config JSON: IPAM, options, labels, flags)
    endpoints       a container's membership of a network (asked config JSON); address,
                    mac, interface and endpoint id are set only while the container runs,
                    and (network_id, address) is unique: an address is never handed out twice;
                    address6 (migration 6) is the IPv6 one on EnableIPv6 networks, unique
                    the same way
    sandboxes       a running container's network namespace and the host ports it holds
    build_cache     (parent image, step key) → the image a build step produced; a hit
                    needs the image to still exist (``docker builder prune`` drops rows)

A file on disk (blob, snapshot, container directory) is referenced by a committed row
or is garbage: the start-up sweep removes what no row names (architecture §3).

Migrations are ordered; ``SCHEMA_VERSION`` is the number of them. Never edit a
released migration: add a new one.
"""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: images, layers, containers
    """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE snapshots (
        key      TEXT PRIMARY KEY,               -- chain id (committed) or container id / temp key
        dir      TEXT NOT NULL UNIQUE,           -- directory name under snapshots/
        parent   TEXT REFERENCES snapshots(key),
        kind     TEXT NOT NULL CHECK (kind IN ('active', 'committed')),
        removing INTEGER NOT NULL DEFAULT 0 CHECK (removing IN (0, 1)),
        created  REAL NOT NULL
    );
    CREATE TABLE layers (
        chain_id     TEXT PRIMARY KEY,           -- sha256:... (OCI chain id)
        diff_id      TEXT NOT NULL,              -- sha256 of the uncompressed tar
        parent       TEXT REFERENCES layers(chain_id),
        snapshot_key TEXT NOT NULL UNIQUE REFERENCES snapshots(key),
        size         INTEGER NOT NULL,           -- bytes unpacked
        blob_digest  TEXT,                       -- compressed blob in the content store, if kept
        created      REAL NOT NULL
    );
    CREATE TABLE images (
        id          TEXT PRIMARY KEY,            -- sha256:<hex of config blob>
        config      TEXT NOT NULL,               -- the image config JSON, verbatim
        top_layer   TEXT REFERENCES layers(chain_id),
        size        INTEGER NOT NULL,
        created     REAL NOT NULL,               -- image's own Created (unix seconds)
        loaded      REAL NOT NULL,               -- when it arrived here
        last_tag    REAL,
        removed     INTEGER NOT NULL DEFAULT 0 CHECK (removed IN (0, 1))
    );
    CREATE TABLE tags (
        ref       TEXT PRIMARY KEY,              -- normalised "docker.io/library/busybox:latest"
        image_id  TEXT NOT NULL REFERENCES images(id)
    );
    CREATE INDEX tags_image ON tags(image_id);
    CREATE TABLE digests (
        ref       TEXT PRIMARY KEY,              -- "docker.io/library/busybox@sha256:..."
        image_id  TEXT NOT NULL REFERENCES images(id)
    );
    CREATE TABLE containers (
        id           TEXT PRIMARY KEY,
        name         TEXT NOT NULL UNIQUE,       -- without the leading '/'
        image_id     TEXT NOT NULL REFERENCES images(id),
        config       TEXT NOT NULL,              -- immutable create config (JSON)
        state        TEXT NOT NULL,              -- mutable state (JSON)
        created      REAL NOT NULL
    );
    CREATE INDEX containers_image ON containers(image_id);
    """,
    # 2: volumes and the container mounts that reference them. No foreign key to
    # containers: volumes sit below containers, which release their rows on removal.
    """
    CREATE TABLE volumes (
        name     TEXT PRIMARY KEY,
        driver   TEXT NOT NULL,
        options  TEXT,                           -- JSON object, NULL when none were given
        labels   TEXT NOT NULL,                  -- JSON object
        created  REAL NOT NULL,
        removing INTEGER NOT NULL DEFAULT 0 CHECK (removing IN (0, 1))
    );
    CREATE TABLE container_mounts (
        container_id TEXT PRIMARY KEY,
        plans        TEXT NOT NULL               -- JSON list of engine.volumes.mounts plans
    );
    CREATE TABLE volume_refs (
        container_id TEXT NOT NULL,
        destination  TEXT NOT NULL,
        volume       TEXT NOT NULL REFERENCES volumes(name),
        active       INTEGER NOT NULL DEFAULT 0 CHECK (active IN (0, 1)),
        populated    INTEGER NOT NULL DEFAULT 0 CHECK (populated IN (0, 1)),
        PRIMARY KEY (container_id, destination)
    );
    CREATE INDEX volume_refs_volume ON volume_refs(volume);
    """,
    # 3: distribution. images.parent is the image a commit was made from (metadata, as
    # in dockerd: not part of the config); a layer keeps the size of its uncompressed
    # tar and the compression of the blob kept for it (a pulled layer keeps the blob the
    # registry served); layer_sources remembers which registry repositories hold a
    # compressed blob of a diff id, so a push can skip or mount instead of uploading.
    """
    ALTER TABLE images ADD COLUMN parent TEXT;
    ALTER TABLE layers ADD COLUMN tar_size INTEGER;
    ALTER TABLE layers ADD COLUMN blob_compression TEXT;
    CREATE INDEX images_parent ON images(parent);
    CREATE TABLE layer_sources (
        diff_id    TEXT NOT NULL,
        digest     TEXT NOT NULL,               -- the compressed blob's digest
        media_type TEXT NOT NULL,
        size       INTEGER NOT NULL,
        registry   TEXT NOT NULL,               -- "127.0.0.1:5000", "docker.io"
        repository TEXT NOT NULL,               -- path within the registry
        PRIMARY KEY (diff_id, registry, repository, digest)
    );
    """,
    # 4: networks. endpoints has no foreign key to containers (networks sit below
    # containers, which drop their rows on removal).
    """
    CREATE TABLE networks (
        id       TEXT PRIMARY KEY,
        name     TEXT NOT NULL UNIQUE,
        driver   TEXT NOT NULL,
        config   TEXT NOT NULL,                 -- JSON (engine.networks.manager)
        created  TEXT NOT NULL                  -- RFC 3339
    );
    CREATE TABLE endpoints (
        container_id   TEXT NOT NULL,
        network_id     TEXT NOT NULL REFERENCES networks(id),
        container_name TEXT NOT NULL,
        config         TEXT NOT NULL,           -- EndpointSettings asked for (JSON)
        seq            INTEGER NOT NULL,        -- order of connection (eth0, eth1, ...)
        endpoint_id    TEXT,                    -- the rest only while the container runs
        address        TEXT,
        mac            TEXT,
        host_if        TEXT,
        ifname         TEXT,
        PRIMARY KEY (container_id, network_id)
    );
    CREATE UNIQUE INDEX endpoints_address ON endpoints(network_id, address)
        WHERE address IS NOT NULL;
    CREATE TABLE sandboxes (
        container_id TEXT PRIMARY KEY,
        netns        TEXT NOT NULL,
        ports        TEXT NOT NULL              -- JSON list of held host ports
    );
    """,
    # 5: the classic builder's cache
    """
    CREATE TABLE build_cache (
        parent   TEXT NOT NULL,                 -- image id the step ran on ("" = scratch)
        key      TEXT NOT NULL,                 -- sha256 of the step's run config (JSON)
        image_id TEXT NOT NULL,                 -- what the step produced
        created  REAL NOT NULL,
        PRIMARY KEY (parent, key)
    );
    CREATE INDEX build_cache_image ON build_cache(image_id);
    """,
    # 6: IPv6 on user-defined bridge networks: a running endpoint's IPv6 address, never
    # handed out twice within a network (as address)
    """
    ALTER TABLE endpoints ADD COLUMN address6 TEXT;
    CREATE UNIQUE INDEX endpoints_address6 ON endpoints(network_id, address6)
        WHERE address6 IS NOT NULL;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)
