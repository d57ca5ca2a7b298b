"""What the redis:// store promises across real nodes, on a Redis Cluster and on Sentinel.

The multi-node and presence tests of `test_multinode` and `test_presence_redis` run
here again, unchanged, with their store fixtures pointing at a three-master cluster
(``redis+cluster://``) and at a master Sentinel names (``redis+sentinel://``): order,
broadcast, status, disconnect, workers, ``kill -9`` of a node, presence.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import ServerFactory, ServerProcess
from tests.redis_cluster import SentinelSetup, cluster_url, forget_cluster_prefix
from tests.test_multinode import (
    test_a_broadcast_reaches_the_connected_users_of_every_node,
    test_a_disconnect_asked_of_one_node_closes_the_users_streams_on_every_node,
    test_a_message_published_on_one_node_reaches_the_users_streams_on_every_node,
    test_every_node_reports_the_same_status_of_a_user,
    test_when_a_node_is_killed_its_clients_resume_on_another_and_lose_nothing,
    test_workers_share_one_port_and_deliver_to_streams_held_by_any_of_them,
)
from tests.test_presence_redis import (
    test_a_new_tab_on_another_node_gets_nothing_another_tab_already_got,
    test_a_user_on_two_nodes_is_online_once_and_offline_once_both_closed,
    test_the_users_of_a_killed_node_go_offline_once_its_presence_expired,
)

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

__all__ = [
    "test_a_broadcast_reaches_the_connected_users_of_every_node",
    "test_a_disconnect_asked_of_one_node_closes_the_users_streams_on_every_node",
    "test_a_message_published_on_one_node_reaches_the_users_streams_on_every_node",
    "test_a_new_tab_on_another_node_gets_nothing_another_tab_already_got",
    "test_a_user_on_two_nodes_is_online_once_and_offline_once_both_closed",
    "test_every_node_reports_the_same_status_of_a_user",
    "test_the_users_of_a_killed_node_go_offline_once_its_presence_expired",
    "test_when_a_node_is_killed_its_clients_resume_on_another_and_lose_nothing",
    "test_workers_share_one_port_and_deliver_to_streams_held_by_any_of_them",
]


@pytest.fixture(scope="module", params=["cluster", "sentinel"])
def base_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The store URL (without options) of a cluster, or of a Sentinel set-up."""
    if request.param == "cluster":
        yield cluster_url()
        return
    sentinel = SentinelSetup(tmp_path_factory.mktemp("sentinel")).start()
    try:
        yield sentinel.url
    finally:
        sentinel.stop()


def _forget(base: str, prefix: str) -> None:
    if base.startswith("redis+cluster:"):
        forget_cluster_prefix(base, prefix)
    # A Sentinel set-up is this module's alone, and stopped with it.


@pytest.fixture
def store(base_url: str) -> Iterator[str]:
    """A store URL for the servers of one test, under a prefix of its own."""
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    try:
        yield f"{base_url}?prefix={prefix}"
    finally:
        _forget(base_url, prefix)


@pytest.fixture(scope="module")
def nodes(
    base_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two nodes on the cluster or Sentinel set-up, shared by tests that use distinct users."""
    factory = ServerFactory(tmp_path_factory.mktemp("nodes"))
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    url = f"{base_url}?prefix={prefix}"
    try:
        yield factory(store=url), factory(store=url)
    finally:
        factory.close()
        _forget(base_url, prefix)
