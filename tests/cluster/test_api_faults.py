"""A busy API server, between the operator and the real one (``faulty_api``): a continue
token refused as too old, ERROR events in watch streams, objects deleted while the operator
was not watching. No ghost is left in the queue's view, and the operator never exits.

The proxy refuses streamed lists (WatchList) here, as an API server without them does, so
that the operator's lists are paged (2 objects a page) and a page can be refused; every
other test runs with the local API server's own, streamed, lists."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from breaker.constants import GROUP, VERSION
from breaker_tooling.localcluster.cluster import LocalCluster
from tests.cluster.faulty_api import FaultyApiServer, proxied_kubeconfig
from tests.cluster.scenes import Cluster, full_cluster, policy
from tests.conftest import Operator
from tests.helpers import wait_for


@pytest.fixture
def proxied(
    cluster: Cluster, operator_process: Operator, local_cluster: LocalCluster, tmp_path: Path
) -> Iterator[FaultyApiServer]:
    """The session's operator, restarted to talk to the API server through the proxy; a
    continue token of its first list of nodes (every cluster has two or more) is refused
    as too old."""
    proxy = FaultyApiServer(local_cluster.server, local_cluster.keys.ca_cert)
    proxy.page_limit, proxy.watchlist, proxy.expire = 2, False, {"nodes"}
    own = operator_process.kubeconfig
    operator_process.stop()
    operator_process.kubeconfig = proxied_kubeconfig(own, proxy, tmp_path / "kubeconfig")
    try:
        operator_process.start()
        yield proxy
    finally:
        operator_process.stop()
        operator_process.kubeconfig = own
        operator_process.start()
        proxy.stop()


def test_a_busy_api_server_leaves_no_ghost_and_never_stops_the_operator(
    cluster: Cluster, operator_process: Operator, proxied: FaultyApiServer
) -> None:
    c = cluster
    # At start, a page of the nodes' list was refused as too old: the list began again.
    wait_for(lambda: not proxied.expire, "a continued page of nodes asked for")
    wait_for(
        lambda: "from page 1 again" in operator_process.log.read_text(),
        "the list of nodes started again from its first page",
    )
    # rl and filler hold the 32 GPUs; another tenant's job waits.
    full_cluster(c)
    c.create("breakerpolicies", policy())
    wait_for(lambda: c.settled_state("rl-guard") == "Closed", "the breaker")

    # The operator stops hearing; meanwhile filler is deleted, its Job and pods with it.
    proxied.deaf = True
    c.custom.delete_namespaced_custom_object(GROUP, VERSION, c.ns, "trainingjobs", "filler")
    wait_for(lambda: not c.pods_of("filler"), "filler's pods gone", timeout=90)
    assert c.state("waiting", c.other) == "Queued"  # nobody told the operator
    # The API server compacted meanwhile: every watch is told its version is too old. The
    # lists find filler gone; kopf's own relist kept its pods, holding 16 GPUs, for ever.
    lists = proxied.asked("pods", watch=False)
    assert proxied.hear_again() > 0
    c.running("waiting", 2, c.other)
    assert proxied.asked("pods", watch=False) > lists
    assert "objects gone while not watched" in operator_process.log.read_text()

    # ERROR events other than 410 in watch streams: each a relist, never an exit.
    for code, message in (
        (500, "etcdserver: request timed out"),
        (504, "Too large resource version: 91234, current: 91200"),
    ):
        relisted_after(proxied, "trainingjobs", code, message)
        assert not operator_process.dead(), f"the operator exited on a {code} in a watch"
    assert "the API server sent an error (504" in operator_process.log.read_text()

    # And it still acts on what it is told.
    c.patch("breakers", "rl-guard", {"spec": {"override": "ForcedOpen"}})
    wait_for(lambda: c.settled_state("rl-guard") == "ForcedOpen", "containment", timeout=90)
    assert c.get("trainingjobs", "rl")["spec"]["suspend"] is True


def relisted_after(proxy: FaultyApiServer, resource: str, code: int, message: str) -> None:
    """An open watch of ``resource`` gets an ERROR of ``code``; the kind is listed again."""
    lists = proxy.asked(resource, watch=False)
    wait_for(lambda: proxy.fail_watches(resource, code, message) > 0, f"a watch of {resource}")
    wait_for(
        lambda: proxy.asked(resource, watch=False) > lists, f"{resource} listed again after {code}"
    )
