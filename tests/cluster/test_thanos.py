"""The operator against a distributed Prometheus: a real Thanos querier over two Prometheus
replicas scraping the same targets, each with its sidecar (``localcluster/thanos.py``).

The querier deduplicates the replicas' series; a policy reads through it; one store is
stopped mid-test. Thanos 0.41 then answers from the store still up, with a warning, even
to ``partial_response=false``: the operator never reads such an answer as whole (the pods
missing from it keep their clocks), says so in the policy's status, and a trip still
happens through what did answer. The store back, the note goes.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from typing import Any

from tests.cluster.scenes import Cluster, policy, trainingjob
from tests.cluster.test_faults import FAULTS, signals
from tests.helpers import wait_for


def thanos(c: Cluster, query: str, dedup: bool) -> list[dict[str, Any]]:
    form = urllib.parse.urlencode({"query": query, "dedup": str(dedup).lower()}).encode()
    request = urllib.request.Request(f"{c.local.thanos_url}/api/v1/query", data=form)
    with urllib.request.urlopen(request, timeout=10) as response:
        result: list[dict[str, Any]] = json.load(response)["data"]["result"]
    return result


def both_stores_answer(c: Cluster) -> bool:
    """Each replica's series are in an answer without deduplication (strict endpoints stay
    listed while down: the answer, not the list, says a store is back)."""
    return {s["metric"].get("replica") for s in thanos(c, "up", dedup=False)} == {"a", "b"}


def incomplete(c: Cluster) -> str | None:
    found: str | None = c.get("breakerpolicies", "guard").get("status", {}).get("incomplete")
    return found


def test_through_thanos_a_store_down_is_read_as_partial_and_said(cluster: Cluster) -> None:
    c = cluster
    query = c.local.thanos_query
    # Both replicas scrape the same targets: the querier's answer has each series once.
    assert query.stores() == 2
    wait_for(lambda: both_stores_answer(c), "both stores answering")
    assert all("replica" not in s["metric"] for s in thanos(c, "up", dedup=True))

    c.create("trainingjobs", trainingjob("rl", 1, 8))
    pods = c.running("rl", 1)
    c.create("breakerpolicies", policy(url=c.local.thanos_url, actions=("revokeEgress",)))
    sidecar = c.local.sidecars[1]
    # Mining starts once a store is down: the trip is decided on the partial answers.
    timeline = [{"at": "0s", "do": "train-mixed"}, {"at": "30s", "do": "miner-pool-egress"}]
    try:
        with c.sim(pods, timeline):
            wait_for(lambda: signals(c)[0] == "Available", "signals read through Thanos", 60)
            assert incomplete(c) is None
            c.local.process(sidecar.name).stop()
            said = wait_for(lambda: incomplete(c), "the policy to say its answers are partial")
            assert "partial answers for" in said
            assert "127.0.0.1:" in said  # Thanos's warning names the store
            assert signals(c)[0] == "Available"  # what the store up answered was read
            FAULTS.append(("a Thanos store down", said[:100]))
            wait_for(
                lambda: c.settled_state("rl-guard") == "Open",
                "a trip on the partial answers",
                timeout=90,
            )
            c.local.start_sidecar(sidecar)
            wait_for(lambda: both_stores_answer(c), "the store back in the querier", 60)
            wait_for(lambda: incomplete(c) is None, "the note gone with whole answers", 60)
    finally:
        if not c.local.process(sidecar.name).running():
            c.local.start_sidecar(sidecar)
            wait_for(lambda: both_stores_answer(c), "the store back in the querier", 60)
