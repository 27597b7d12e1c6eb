"""The breakers sharded by namespace, as the chart runs them with `shards`: the queue in an
operator of its own, shard a serving the tenant's namespace and shard b every other one,
each its own peering group.

The session's operator steps aside (it serves everything) and comes back at the end. An
attack in shard a's namespace is contained by shard a alone, the GPUs it frees go to a job
of shard b's namespace that the queue operator admits, and shard a records that handoff
from the TrainingJobs' status. A ClusterBreakerPolicy over both namespaces is counted by
each shard under its own name, and its totals are their sum.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from breaker.constants import GROUP, VERSION
from tests.cluster.scenes import (
    ATTACKS,
    Cluster,
    contained,
    full_cluster,
    policy,
)
from tests.conftest import PEERING, Operator
from tests.helpers import wait_for
from tests.kube import as_dict

SHARD_LABEL = "breaker.dev/shard-test"


@pytest.fixture
def shards(
    cluster: Cluster, operator_process: Operator, operator_kubeconfig: Path, tmp_path: Path
) -> Iterator[dict[str, Operator]]:
    """The queue and shards a and b, in place of the session's operator."""
    names = {"queue": ["--serve", "queue"]}
    names["a"] = ["--serve", "breakers", "--shard", "a", "--shard-namespaces", cluster.ns]
    names["b"] = ["--serve", "breakers", "--shard", "b", "--shard-namespaces", f"*,!{cluster.ns}"]
    peerings = {
        name: f"{PEERING}-{'queue' if name == 'queue' else f'shard-{name}'}" for name in names
    }
    for peering in peerings.values():
        body = {
            "apiVersion": "kopf.dev/v1",
            "kind": "ClusterKopfPeering",
            "metadata": {"name": peering},
        }
        try:
            cluster.custom.create_cluster_custom_object(
                "kopf.dev", "v1", "clusterkopfpeerings", body
            )
        except client.ApiException as error:
            if error.status != 409:
                raise
    operator_process.stop()
    started = {
        name: Operator(
            operator_process.cluster,
            operator_kubeconfig,
            tmp_path / f"{name}.log",
            peering=peerings[name],
            args=args,
        )
        for name, args in names.items()
    }
    try:
        for operator in started.values():
            operator.start()
        yield started
    finally:
        for operator in started.values():
            operator.stop()
        operator_process.start()


def cluster_policy(cluster: Cluster) -> dict[str, Any]:
    spec = policy(mode="DryRun")["spec"]
    spec["targets"] = {
        "kinds": ["TrainingJob"],
        "namespaceSelector": {"matchLabels": {SHARD_LABEL: cluster.ns}},
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ClusterBreakerPolicy",
        "metadata": {"name": f"shards-{cluster.ns}"[:63]},
        "spec": spec,
    }


def test_each_shard_guards_its_namespaces_and_the_queue_hands_on_across_them(
    cluster: Cluster, shards: dict[str, Operator]
) -> None:
    c = cluster
    pods = full_cluster(c)  # the queue operator admits rl and filler, and queues waiting
    for namespace in (c.ns, c.other):
        c.core.patch_namespace(namespace, {"metadata": {"labels": {SHARD_LABEL: c.ns}}})
    counted = cluster_policy(c)
    name = counted["metadata"]["name"]
    c.custom.create_cluster_custom_object(GROUP, VERSION, "clusterbreakerpolicies", counted)
    try:

        def tallied() -> dict[str, Any] | None:
            status = (
                as_dict(
                    c.custom.get_cluster_custom_object(
                        GROUP, VERSION, "clusterbreakerpolicies", name
                    )
                ).get("status")
                or {}
            )
            shards_seen = status.get("shards") or {}
            a, b = shards_seen.get("a") or {}, shards_seen.get("b") or {}
            ok = a.get("breakers") == 2 and b.get("breakers") == 1 and status.get("breakers") == 3
            return status if ok else None

        status = wait_for(tallied, "each shard's count of the cluster policy, and their sum")
        ready = next(x for x in status["conditions"] if x["type"] == "Ready")
        assert ready["status"] == "True"  # checked by the queue operator, the cluster-wide one

        c.create("breakerpolicies", policy())
        with c.sim(pods, ATTACKS["mining-mid-run"]):
            contained(c, pods)  # egress, pause, and the handoff to the other namespace's job
    finally:
        c.custom.delete_cluster_custom_object(GROUP, VERSION, "clusterbreakerpolicies", name)
    logs = {n: operator.log.read_text() for n, operator in shards.items()}
    assert f"serving breakers in shard a ({c.ns})" in logs["a"]
    assert "serving queue in every namespace" in logs["queue"]
    assert f"{c.ns}/" not in logs["b"], "shard b acted in shard a's namespace"
