"""Every on-disk path the engine uses is computed here, and only here.

Persistent state lives under ``data_root``; state that must not survive a reboot
(runtime state, conmon sockets, pid file) lives under ``exec_root``.

    <data-root>
      engine.db                     SQLite (WAL), the source of truth
      content/blobs/sha256/<hex>    content-addressed blobs, read-only
      content/ingest/<ref>/         blobs being written
      snapshots/<id>/{fs,work}      overlay layers and container rw layers
      containers/<id>/              bundle: config.json, hostname, hosts, resolv.conf, ctr.log
      volumes/<name>/_data
      swarm/                        this node's swarm membership (docs/swarm.md)
        state.json                  its presence = "this node is in a swarm"
        certificates/               root CA bundle (and key on managers), node cert + key
        etcd/, etcd.log             the local etcd member of a swarm manager
      tmp/                          same filesystem, temp + rename; wiped at start
    <exec-root>
      wharfd.pid, boot_id
      runtime/                      runc --root
      conmon/<id>/                  conmon pid files, exit dir, persist dir
      sock/                         short symlinks to attach sockets
      netns/<id>                    bind-mounted network namespaces
      swarm/etcd.pid                the local etcd member's pid
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    data_root: Path
    exec_root: Path

    # --- persistent -------------------------------------------------------------
    @property
    def db_path(self) -> Path:
        return self.data_root / "engine.db"

    @property
    def content_dir(self) -> Path:
        return self.data_root / "content"

    @property
    def blobs_dir(self) -> Path:
        return self.content_dir / "blobs" / "sha256"

    def blob_path(self, digest: str) -> Path:
        algo, _, hexpart = digest.partition(":")
        if algo != "sha256" or len(hexpart) != 64:
            raise ValueError(f"unsupported digest {digest!r}")
        return self.blobs_dir / hexpart

    @property
    def ingest_dir(self) -> Path:
        return self.content_dir / "ingest"

    @property
    def snapshots_dir(self) -> Path:
        return self.data_root / "snapshots"

    def snapshot_dir(self, snapshot_id: str) -> Path:
        return self.snapshots_dir / snapshot_id

    @property
    def containers_dir(self) -> Path:
        return self.data_root / "containers"

    def container_dir(self, container_id: str) -> Path:
        return self.containers_dir / container_id

    def container_rootfs(self, container_id: str) -> Path:
        return self.container_dir(container_id) / "rootfs"

    def container_log(self, container_id: str) -> Path:
        return self.container_dir(container_id) / "ctr.log"

    @property
    def volumes_dir(self) -> Path:
        return self.data_root / "volumes"

    @property
    def engine_id_file(self) -> Path:
        """The daemon's stable ID (``docker info``'s ID), made on first start."""
        return self.data_root / "engine-id"

    @property
    def tmp_dir(self) -> Path:
        return self.data_root / "tmp"

    # swarm (made when the node joins a swarm, not at every start)
    @property
    def swarm_dir(self) -> Path:
        return self.data_root / "swarm"

    @property
    def swarm_state_file(self) -> Path:
        return self.swarm_dir / "state.json"

    @property
    def swarm_certificates_dir(self) -> Path:
        return self.swarm_dir / "certificates"

    @property
    def swarm_etcd_data_dir(self) -> Path:
        """The local etcd member's --data-dir (managers only)."""
        return self.swarm_dir / "etcd"

    @property
    def swarm_etcd_log(self) -> Path:
        return self.swarm_dir / "etcd.log"

    # --- volatile ---------------------------------------------------------------
    @property
    def pidfile(self) -> Path:
        return self.exec_root / "wharfd.pid"

    @property
    def boot_id_file(self) -> Path:
        return self.exec_root / "boot_id"

    @property
    def runtime_root(self) -> Path:
        return self.exec_root / "runtime"

    @property
    def conmon_root(self) -> Path:
        return self.exec_root / "conmon"

    def conmon_dir(self, container_id: str) -> Path:
        return self.conmon_root / container_id

    @property
    def sock_dir(self) -> Path:
        return self.exec_root / "sock"

    @property
    def netns_dir(self) -> Path:
        return self.exec_root / "netns"

    def netns_path(self, container_id: str) -> Path:
        return self.netns_dir / container_id

    @property
    def swarm_exec_dir(self) -> Path:
        return self.exec_root / "swarm"

    @property
    def swarm_etcd_pidfile(self) -> Path:
        return self.swarm_exec_dir / "etcd.pid"

    def subpath_mounts_dir(self, container_id: str) -> Path:
        """Where a container's volume subpaths are bound before the runtime binds them."""
        return self.exec_root / "subpaths" / container_id

    def persistent_dirs(self) -> list[tuple[Path, int]]:
        """Directories created at start, with the modes dockerd uses (CVE-2021-41091)."""
        return [
            (self.data_root, 0o710),
            (self.content_dir, 0o700),
            (self.blobs_dir, 0o700),
            (self.ingest_dir, 0o700),
            (self.snapshots_dir, 0o710),
            (self.containers_dir, 0o710),
            (self.volumes_dir, 0o701),
            (self.tmp_dir, 0o700),
        ]

    def volatile_dirs(self) -> list[tuple[Path, int]]:
        return [
            (self.exec_root, 0o700),
            (self.runtime_root, 0o700),
            (self.conmon_root, 0o700),
            (self.sock_dir, 0o700),
            (self.netns_dir, 0o700),
        ]
