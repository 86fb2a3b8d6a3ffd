"""Fixtures the request-body modules share (test_typed_bodies, test_body_limits,
test_body_text): a running container to aim bodies at, and a check that a refused
create left no container behind. A module may define its own ``running`` instead."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness.bodies import running_container, unchanged_containers
from tests.harness.daemon import BaseDaemon


@pytest.fixture(scope="module")
def running(request: pytest.FixtureRequest, daemon: BaseDaemon) -> Iterator[str]:
    """A started ``sleep 600`` container named ``<module>-running``, for the module."""
    module = request.module.__name__.rsplit(".", 1)[-1]
    yield from running_container(daemon, f"{module}-running")


@pytest.fixture
def no_new_containers(daemon: BaseDaemon) -> Iterator[None]:
    yield from unchanged_containers(daemon)
