"""Shared test harness: busybox images, network namespaces, daemons under test, clients.

Nothing here imports ``engine`` or ``api``: the harness drives daemons from the outside,
the way the stock docker CLI and docker-py do, so the same code can drive the real
dockerd for differential runs (``pytest --against-dockerd``) and for ``bench/run.py``.
"""
