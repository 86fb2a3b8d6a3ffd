"""Fixtures modules share. The request-body modules (test_typed_bodies, test_body_limits,
test_body_text): a running container to aim bodies at, and a check that a refused
create left no container behind (a module may define its own ``running`` instead). The
etcd modules (test_etcd_client, test_swarm_store): a plain etcd member per module in a
namespace of its own, and the test's thread moved inside it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness.bodies import running_container, unchanged_containers
from tests.harness.daemon import BaseDaemon
from tests.harness.etcd import EtcdMember, thread_in_netns
from tests.harness.netns import NetNS


@pytest.fixture(scope="module")
def running(request: pytest.FixtureRequest, daemon: BaseDaemon) -> Iterator[str]:
    """A started ``sleep 600`` container named ``<module>-running``, for the module."""
    module = request.module.__name__.rsplit(".", 1)[-1]
    yield from running_container(daemon, f"{module}-running")


@pytest.fixture
def no_new_containers(daemon: BaseDaemon) -> Iterator[None]:
    yield from unchanged_containers(daemon)


@pytest.fixture(scope="module")
def etcd_member() -> Iterator[EtcdMember]:
    with NetNS() as netns, EtcdMember(netns) as etcd:
        yield etcd


@pytest.fixture
def inside_etcd(etcd_member: EtcdMember) -> Iterator[EtcdMember]:
    """Run the test (its event loop's sockets) inside the member's namespace."""
    with thread_in_netns(etcd_member.netns):
        yield etcd_member
