"""The breaker where Kueue runs: the real Kueue controller manager (built from its module,
its webhooks served on loopback) admits the jobs, and the breaker works through it.

Two tenants fill a ClusterQueue's 16 GPUs with a third job queued. The tenant whose job
trips loses it to Kueue's eviction (its Workload deactivated), Kueue admits the queued
job into the freed quota, and the breaker records that admission. The tripped tenant's
LocalQueue is held, so a new job of theirs gets no GPUs even with quota free, and a
tenant re-activating the Workload is undone. A reset puts the Workload and the queue
back as they were, and Kueue admits the job again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from breaker.actions import kueue
from breaker.api import containment
from breaker.constants import PAUSED_BY, PAUSED_WAS
from tests.cluster.scenes import ATTACKS, Cluster, done, policy, trainingjob
from tests.helpers import wait_for
from tests.kube import as_body, as_dict, meta_of, spec_of, status_of

GPUS_PER_JOB = 8


@pytest.fixture
def queues(cluster: Cluster) -> Iterator[str]:
    """A ClusterQueue of 16 GPUs for the two test namespaces, a LocalQueue ``gpus`` in each."""
    name = f"{cluster.ns[:50]}-cq"
    custom = cluster.custom
    custom.create_cluster_custom_object(
        kueue.GROUP, kueue.VERSION, "resourceflavors", _object("ResourceFlavor", name, {})
    )
    custom.create_cluster_custom_object(
        kueue.GROUP,
        kueue.VERSION,
        "clusterqueues",
        _object(
            "ClusterQueue",
            name,
            {
                "namespaceSelector": {
                    "matchExpressions": [
                        {
                            "key": "kubernetes.io/metadata.name",
                            "operator": "In",
                            "values": [cluster.ns, cluster.other],
                        }
                    ]
                },
                "resourceGroups": [
                    {
                        "coveredResources": ["nvidia.com/gpu"],
                        "flavors": [
                            {
                                "name": name,
                                "resources": [{"name": "nvidia.com/gpu", "nominalQuota": "16"}],
                            }
                        ],
                    }
                ],
            },
        ),
    )
    for namespace in (cluster.ns, cluster.other):
        custom.create_namespaced_custom_object(
            kueue.GROUP,
            kueue.VERSION,
            namespace,
            kueue.LOCAL_QUEUES,
            _object("LocalQueue", "gpus", {"clusterQueue": name}),
        )
    yield name
    for namespace in (cluster.ns, cluster.other):
        for job in cluster.batch.list_namespaced_job(namespace).items:
            cluster.batch.delete_namespaced_job(
                str(meta_of(job).name), namespace, propagation_policy="Background"
            )
    for plural in ("clusterqueues", "resourceflavors"):
        custom.delete_cluster_custom_object(kueue.GROUP, kueue.VERSION, plural, name)


def _object(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{kueue.GROUP}/{kueue.VERSION}",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }


def job_suspended(c: Cluster, name: str) -> bool:
    return spec_of(c.batch.read_namespaced_job(name, c.ns)).suspend is True


def queued_job(name: str, gpus: int = GPUS_PER_JOB) -> dict[str, Any]:
    """A Job for Kueue's queue ``gpus``: created suspended by Kueue's webhook, started by
    Kueue when it admits it."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {kueue.QUEUE_LABEL: "gpus", "team": "agents"}},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "trainer",
                            "image": "trainer:1",
                            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                        }
                    ],
                }
            },
        },
    }


def workload_of(c: Cluster, job: str, namespace: str | None = None) -> dict[str, Any]:
    """The Kueue Workload Kueue made for a Job (waits for it)."""

    def found() -> dict[str, Any] | None:
        listed = as_dict(
            c.custom.list_namespaced_custom_object(
                kueue.GROUP, kueue.VERSION, namespace or c.ns, kueue.WORKLOADS
            )
        )
        for item in listed["items"]:
            owners = item["metadata"].get("ownerReferences") or []
            if any(o["kind"] == "Job" and o["name"] == job for o in owners):
                return dict(item)
        return None

    result: dict[str, Any] = wait_for(found, f"the Workload of {job}", timeout=30)
    return result


def reserved(workload: dict[str, Any]) -> bool:
    return any(
        c["type"] == "QuotaReserved" and c["status"] == "True"
        for c in (workload.get("status") or {}).get("conditions") or []
    )


def fresh(c: Cluster, workload: dict[str, Any]) -> dict[str, Any]:
    meta = workload["metadata"]
    return as_dict(
        c.custom.get_namespaced_custom_object(
            kueue.GROUP, kueue.VERSION, meta["namespace"], kueue.WORKLOADS, meta["name"]
        )
    )


def running_pods(c: Cluster, job: str, namespace: str | None = None) -> list[Any]:
    pods = c.core.list_namespaced_pod(namespace or c.ns, label_selector=f"job-name={job}").items
    return [
        p for p in pods if meta_of(p).deletion_timestamp is None and status_of(p).phase == "Running"
    ]


def local_queue(c: Cluster) -> dict[str, Any]:
    return as_dict(
        c.custom.get_namespaced_custom_object(
            kueue.GROUP, kueue.VERSION, c.ns, kueue.LOCAL_QUEUES, "gpus"
        )
    )


def test_kueue_hands_the_freed_quota_on_and_the_tenant_stays_out(
    cluster: Cluster, queues: str
) -> None:
    c = cluster
    c.batch.create_namespaced_job(c.ns, as_body(queued_job("rl")))
    c.batch.create_namespaced_job(c.other, as_body(queued_job("filler")))
    pods = wait_for(lambda: running_pods(c, "rl"), "rl admitted by Kueue and running", timeout=60)
    wait_for(lambda: running_pods(c, "filler", c.other), "filler running", timeout=60)
    c.batch.create_namespaced_job(c.other, as_body(queued_job("waiting")))
    waiting = workload_of(c, "waiting", c.other)
    time.sleep(2)
    assert not reserved(fresh(c, waiting)), "the ClusterQueue is full: waiting queues"
    rl = workload_of(c, "rl")

    c.create("breakerpolicies", policy(kinds=("Job",)))
    with c.sim(pods, ATTACKS["mining-mid-run"]):
        breaker = wait_for(
            lambda: (
                (b := c.breaker("rl-guard")).get("status", {}).get("state") == "Open"
                and done(b)
                and b
            ),
            "the breaker to trip",
            timeout=120,
        )
    found = containment.read(breaker["status"])
    assert (found.reason, found.contained) == (containment.CONTAINED, True), found.message
    records = {r["type"]: r for r in breaker["status"]["actions"]}
    # Paused through Kueue: the Workload deactivated, and Kueue suspends the Job.
    assert records["pause"]["changed"]["kueueWorkload"] == rl["metadata"]["name"]
    assert records["pause"]["changed"]["was"] is True
    assert fresh(c, rl)["spec"]["active"] is False
    wait_for(
        lambda: job_suspended(c, "rl"),
        "Kueue to suspend rl",
        timeout=30,
    )
    # Kueue, not the breaker, admits the queued job into the freed quota; the breaker
    # records whom to.
    wait_for(lambda: reserved(fresh(c, waiting)), "Kueue to admit waiting", timeout=30)
    wait_for(lambda: running_pods(c, "waiting", c.other), "waiting running", timeout=60)

    def handed() -> list[str] | None:
        status = c.breaker("rl-guard").get("status") or {}
        record = next(r for r in status["actions"] if r["type"] == "reassignGPUs")
        got: list[str] = record["changed"].get("to") or []
        return got or None

    to = wait_for(handed, "the admission recorded", timeout=30)
    assert to == [f"{c.other}/{waiting['metadata']['name']}"]
    reassign = records["reassignGPUs"]["changed"]
    assert reassign["by"] == "Kueue"
    assert reassign["clusterQueue"] == queues
    # The tenant's queue is held, its own stop policy (none) recorded to put back.
    assert reassign["localQueues"] == {"gpus": "None"}
    assert local_queue(c)["spec"]["stopPolicy"] == "Hold"

    # The tenant turns the Workload back on: deactivated again at once.
    c.custom.patch_namespaced_custom_object(
        kueue.GROUP, kueue.VERSION, c.ns, kueue.WORKLOADS, rl["metadata"]["name"],
        {"spec": {"active": True}},
    )  # fmt: skip
    began = time.monotonic()
    wait_for(lambda: fresh(c, rl)["spec"]["active"] is False, "deactivated again", timeout=10)
    undone_in = time.monotonic() - began
    # The tenant lets its queue admit again: held again.
    c.custom.patch_namespaced_custom_object(
        kueue.GROUP, kueue.VERSION, c.ns, kueue.LOCAL_QUEUES, "gpus",
        {"spec": {"stopPolicy": "None"}},
    )  # fmt: skip
    wait_for(lambda: local_queue(c)["spec"].get("stopPolicy") == "Hold", "held again", timeout=10)
    # With quota free (filler done), a new job of the tripped tenant gets none of it.
    c.batch.delete_namespaced_job("filler", c.other, propagation_policy="Background")
    c.batch.create_namespaced_job(c.ns, as_body(queued_job("again")))
    again = workload_of(c, "again")
    time.sleep(5)
    assert not reserved(fresh(c, again)), "a held LocalQueue admits nothing"
    assert not running_pods(c, "again")
    escapes = [
        e
        for e in c.core.list_namespaced_event(c.ns).items
        if e.involved_object.name == "rl-guard" and e.reason == "ContainmentRestored"
    ]
    assert escapes, "each escape is said in an Event"
    print(f"\nthe tenant's re-activation undone in {undone_in:.2f}s")
    assert undone_in < 10
    c.batch.delete_namespaced_job("again", c.ns, propagation_policy="Background")

    # The reset: the Workload active again as found, the queue's stop policy as found.
    c.patch("breakers", "rl-guard", {"metadata": {"annotations": {"breaker.dev/reset": "1"}}})
    wait_for(
        lambda: c.breaker("rl-guard").get("status", {}).get("state") == "Closed",
        "the reset",
        timeout=30,
    )
    restored = fresh(c, rl)
    assert restored["spec"]["active"] is True
    assert not {PAUSED_BY, PAUSED_WAS} & set(restored["metadata"].get("annotations") or {})
    queue = local_queue(c)
    assert "stopPolicy" not in queue["spec"] or queue["spec"]["stopPolicy"] == "None"
    assert not {kueue.HELD_BY, kueue.HELD_WAS} & set(queue["metadata"].get("annotations") or {})
    # Kueue requeues the job and admits it into the quota free again.
    wait_for(lambda: reserved(fresh(c, rl)), "Kueue to admit rl again", timeout=60)
    wait_for(lambda: running_pods(c, "rl"), "rl running again", timeout=60)


def test_the_tenant_cannot_run_a_paused_job_in_or_out_of_kueue(
    cluster: Cluster, queues: str
) -> None:
    """Kueue suspends a Job whose Workload is not admitted; a tenant who takes the queue
    label off the suspended Job (Kueue allows that only while it is suspended) takes it
    out of Kueue's hands, and the breaker then holds the Job paused itself."""
    c = cluster
    c.batch.create_namespaced_job(c.ns, as_body(queued_job("rl")))
    pods = wait_for(lambda: running_pods(c, "rl"), "rl running", timeout=60)
    c.create("breakerpolicies", policy(kinds=("Job",), actions=("pause",)))
    with c.sim(pods, ATTACKS["mining-mid-run"]):
        wait_for(lambda: c.settled_state("rl-guard") == "Open", "the breaker to trip", timeout=120)
    wait_for(lambda: job_suspended(c, "rl"), "Kueue to suspend rl", timeout=30)
    # Unsuspended in Kueue's hands: Kueue suspends it again.
    c.batch.patch_namespaced_job("rl", c.ns, {"spec": {"suspend": False}})
    wait_for(lambda: job_suspended(c, "rl"), "Kueue to suspend rl again", timeout=15)
    # Out of Kueue's hands, then unsuspended: the breaker suspends it.
    left_kueue = unlabel(c, "rl")
    c.batch.patch_namespaced_job("rl", c.ns, {"spec": {"suspend": False}})
    wait_for(lambda: job_suspended(c, "rl"), "rl suspended again", timeout=15)
    time.sleep(3)
    assert job_suspended(c, "rl")
    assert not running_pods(c, "rl")
    c.patch("breakers", "rl-guard", {"metadata": {"annotations": {"breaker.dev/reset": "1"}}})
    wait_for(lambda: c.settled_state("rl-guard") == "Closed", "the reset", timeout=60)
    # Both switches back: the Workload active (Kueue may admit it), the Job's own as found.
    assert fresh(c, workload_of(c, "rl"))["spec"]["active"] is True or left_kueue
    annotations = meta_of(c.batch.read_namespaced_job("rl", c.ns)).annotations or {}
    assert PAUSED_BY not in annotations


def unlabel(c: Cluster, job: str) -> bool:
    """Take Kueue's label off a Job: True if Kueue's webhook let it (only while the Job is
    suspended), False if it refused (403)."""
    try:
        c.batch.patch_namespaced_job(job, c.ns, {"metadata": {"labels": {kueue.QUEUE_LABEL: None}}})
    except client.ApiException as error:
        if error.status != 403:
            raise
        return False
    return True


def test_a_trainingjob_hands_its_queueing_to_kueue(cluster: Cluster, queues: str) -> None:
    """``spec.queueName``: the TrainingJob's Job carries Kueue's label and Kueue admits it;
    breaker's own queue leaves it alone, and a trip pauses it through its Workload."""
    c = cluster
    refused_spec = trainingjob("bad", 1, GPUS_PER_JOB)
    refused_spec["spec"].update(queueName="gpus", suspend=True)
    with pytest.raises(client.ApiException) as refused:
        c.create("trainingjobs", refused_spec)
    assert refused.value.status == 422
    assert "spec.queueName" in str(refused.value.body)

    first = trainingjob("rl", 2, GPUS_PER_JOB)  # the ClusterQueue's 16 GPUs
    first["spec"]["queueName"] = "gpus"
    c.create("trainingjobs", first)
    pods = c.running("rl", 2)
    labels = meta_of(c.batch.read_namespaced_job("rl", c.ns)).labels or {}
    assert labels[kueue.QUEUE_LABEL] == "gpus"
    rl = workload_of(c, "rl")
    assert reserved(fresh(c, rl))
    second = trainingjob("second", 1, GPUS_PER_JOB)
    second["spec"]["queueName"] = "gpus"
    c.create("trainingjobs", second)
    wait_for(lambda: c.state("second") == "Queued", "second queued", timeout=30)
    queued = next(
        cond for cond in c.get("trainingjobs", "second")["status"]["conditions"]
        if cond["type"] == "Queued"
    )  # fmt: skip
    assert queued["reason"] == "WaitingForKueue"

    c.create("breakerpolicies", policy(kinds=("TrainingJob",), actions=("pause",)))
    with c.sim(pods, ATTACKS["mining-mid-run"]):
        wait_for(lambda: c.settled_state("rl-guard") == "Open", "the breaker to trip", timeout=120)
    paused = next(r for r in c.breaker("rl-guard")["status"]["actions"] if r["type"] == "pause")
    assert paused["changed"]["kueueWorkload"] == rl["metadata"]["name"]
    assert c.get("trainingjobs", "rl")["spec"]["suspend"] is False  # Kueue's switch, not this
    wait_for(lambda: job_suspended(c, "rl"), "Kueue to suspend rl's Job", timeout=30)
    wait_for(lambda: c.state("second") == "Running", "Kueue to admit second", timeout=60)
