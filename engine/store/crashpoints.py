"""Deterministic crash points for crash tests (architecture §3 rule 9).

``crash_point("name")`` kills the process on the spot (``os._exit(137)``, the exit status
of SIGKILL) when the environment variable ``WHARFD_CRASH_AT`` equals ``name``. Nothing is
flushed and no ``finally`` runs, which is what a power cut or ``kill -9`` looks like to the
data root. A test starts the daemon (or a small driver) with the variable set, lets it die,
restarts it without the variable and asserts that the start-up sweep converged.

The variable is read at every call, so a test may set it in a child process only.

Names in use (keep this list in step with the code):

  image import (engine/images/manager.py), in order:
    import_after_unpack         layer extracted into its "extract-…" snapshot, blob not
                                committed, nothing named
    import_after_blob           uncompressed layer blob committed to the content store
    import_after_layer_commit   snapshot committed under the chain id (no layers row yet)
    import_after_config_write   image config blob written
    import_before_commit        just before the one transaction (layer + image + tag rows)
    import_after_commit         rows committed, events not yet emitted

  pull (engine/images/pull.py), in order:
    pull_mid_download           first bytes of a layer received (blob and unpack in flight)
    pull_after_layer_commit     a layer's blob and snapshot committed, other layers in
                                flight, no row yet
    pull_before_commit          every layer and the config written, rows not yet
    pull_after_commit           rows committed

  load (engine/images/archive.py):
    load_mid_stream             first bytes of a layer member (blob and unpack in flight)
    load_before_commit          layers committed, rows not yet
    load_after_commit           rows committed

  commit (engine/images/commit.py):
    commit_while_paused         the container paused for the diff, nothing read yet
    commit_after_layer          the diff's blob and snapshot committed, no row yet
    commit_before_commit        config written, rows not yet
    commit_after_commit         rows committed

  image removal (engine/images/removal.py):
    remove_after_rows           image/tag rows deleted, layers and blobs not yet released
    remove_after_layer_row      one layer row deleted, its snapshot not yet marked

  snapshots (engine/snapshots/overlay.py):
    snapshot_after_rename       prepare: directory renamed into snapshots/, no row yet
    snapshot_remove_marked      remove: row marked removing, files still there
    snapshot_reap_before_files  finish_removals (the background half of a removal, e.g.
                                after rmi has answered): rows marked, files still there

  container start (engine/containers/runs.py):
    start_before_commit         the process runs (runc start done), its row still says
                                created/exited

  volumes (engine/volumes/manager.py):
    volume_create_after_dir     volume directory made, no row yet
    volume_remove_marked        row marked removing, data still there
    volume_remove_after_files   data deleted, row still there
"""

from __future__ import annotations

import os

ENV_VAR = "WHARFD_CRASH_AT"
EXIT_STATUS = 137


def crash_point(name: str) -> None:
    """Die like SIGKILL here when ``WHARFD_CRASH_AT`` names this point."""
    if os.environ.get(ENV_VAR) == name:
        os._exit(EXIT_STATUS)
