"""The TrainingJob queue's logic, and the GPU hand-off between it and the breaker loop, with
the API, kopf's indexes and time faked (``tests/fakes.py``).

One node with 8 GPUs; tenant-a's ``rl`` (priority 1) holds them, tenant-b's ``next`` waits.
The fake store has no kubelet or Job controller: a test makes the pods a Job would make
and removes them when a suspended Job's pods would go.
"""

from __future__ import annotations

import asyncio

import pytest

from breaker.api.policy import BreakerPolicySpec
from breaker.constants import GROUP, JOB_LABEL, VERSION
from breaker.controllers import actuator
from breaker.controllers.breakers import BreakerController
from breaker.controllers.evaluation import Trip
from breaker.controllers.trainingjobs import TrainingController
from breaker.detect import engine
from tests.fakes import TRAINING_INDEXES, Clock, FakeCluster, FakeIndexes, Json

pytestmark = pytest.mark.usefixtures("fresh_discovery")

NS, OTHER = "tenant-a", "tenant-b"
TRAININGJOBS = (GROUP, "trainingjobs")
JOBS = ("batch", "jobs")
PODS = ("", "pods")
NETPOLS = ("networking.k8s.io", "networkpolicies")
POLICY_SPEC: Json = {
    "targets": {"kinds": ["TrainingJob"]},
    "signals": [
        {"name": "pool", "preset": "mining-pool-egress", "for": "0s", "severity": "critical"}
    ],
    "mode": "Enforce",
    "actions": [{"type": t} for t in ("revokeEgress", "pause", "reassignGPUs")],
}


def trainingjob(namespace: str, name: str, priority: int) -> Json:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": namespace, "labels": {"team": "agents"}},
        "spec": {
            "replicas": 1,
            "gpusPerReplica": 8,
            "priority": priority,
            "template": {"spec": {"containers": [{"name": "trainer", "image": "trainer:1"}]}},
        },
    }


def scene() -> FakeCluster:
    c = FakeCluster()
    for ns in (NS, OTHER):
        c.put(("", "namespaces"), {"metadata": {"name": ns}})
    c.put(
        ("", "nodes"),
        {
            "metadata": {"name": "gpu-1"},
            "spec": {},
            "status": {
                "allocatable": {"nvidia.com/gpu": "8"},
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        },
    )
    c.put(TRAININGJOBS, trainingjob(NS, "rl", 1))
    c.put(TRAININGJOBS, trainingjob(OTHER, "next", 0))
    c.put(
        (GROUP, "breakerpolicies"),
        {"metadata": {"name": "guard", "namespace": NS}, "spec": POLICY_SPEC},
    )
    return c


class Queue:
    """The real TrainingController over the fake store."""

    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster
        self.indexes = FakeIndexes(cluster, TRAINING_INDEXES)
        self.controller = TrainingController(cluster.api, self.indexes)

    async def reconcile(self) -> bool:
        await self.indexes.refresh()
        failed = await self.controller.reconcile()
        await self.indexes.refresh()
        return failed

    def state(self, namespace: str, name: str) -> str | None:
        found = self.cluster.get(TRAININGJOBS, namespace, name)
        assert found is not None
        state: str | None = (found.get("status") or {}).get("state")
        return state

    def job_suspended(self, namespace: str, name: str) -> bool:
        job = self.cluster.get(JOBS, namespace, name)
        assert job is not None, f"no Job {namespace}/{name}"
        return bool(job["spec"].get("suspend"))

    def run_pods(self, namespace: str, name: str) -> None:
        """What the Job controller and the scheduler do for an unsuspended Job."""
        job = self.cluster.get(JOBS, namespace, name)
        assert job is not None
        owner = {"apiVersion": "batch/v1", "kind": "Job", "controller": True}
        self.cluster.put(
            PODS,
            {
                "metadata": {
                    "name": f"{name}-0",
                    "namespace": namespace,
                    "labels": {JOB_LABEL: name},
                    "ownerReferences": [{**owner, "name": name, "uid": job["metadata"]["uid"]}],
                },
                "spec": {
                    "nodeName": "gpu-1",
                    "containers": [{"name": "t", "resources": {"limits": {"nvidia.com/gpu": "8"}}}],
                },
                "status": {"phase": "Running"},
            },
        )

    def pods_gone(self, namespace: str, name: str) -> None:
        """A suspended Job's pods are deleted."""
        del self.cluster.objects[PODS][(namespace, f"{name}-0")]


@pytest.fixture
async def running(clock: Clock) -> Queue:
    """rl admitted and running on gpu-1; next queued behind it."""
    q = Queue(scene())
    await q.reconcile()  # the Jobs made, suspended
    await q.reconcile()  # then admitted by priority
    assert not q.job_suspended(NS, "rl")
    assert q.job_suspended(OTHER, "next")
    q.run_pods(NS, "rl")
    await q.reconcile()
    return q


async def test_the_queue_admits_by_priority_and_queues_what_does_not_fit(running: Queue) -> None:
    assert not running.job_suspended(NS, "rl")
    assert running.job_suspended(OTHER, "next")
    assert running.state(OTHER, "next") == "Queued"
    assert await running.controller.waiting() == [(OTHER, "next")]
    # Each job has its baseline egress policy, labelled with its job.
    labelled = [p for p in running.cluster.all(NETPOLS) if JOB_LABEL in p["metadata"]["labels"]]
    assert sorted(p["metadata"]["namespace"] for p in labelled) == [NS, OTHER]


async def test_a_restarted_queue_knows_who_waits_from_their_status_before_its_first_pass(
    running: Queue,
) -> None:
    restarted = Queue(running.cluster)
    await restarted.indexes.refresh()
    assert await restarted.controller.waiting() == [(OTHER, "next")]


async def test_a_user_suspend_releases_the_gpus_to_the_next_job(running: Queue) -> None:
    running.cluster.edit(TRAININGJOBS, NS, "rl", {"spec": {"suspend": True}})
    await running.reconcile()
    assert running.job_suspended(NS, "rl")
    assert running.job_suspended(OTHER, "next")  # rl's pod still holds the GPUs
    running.pods_gone(NS, "rl")
    await running.reconcile()
    assert not running.job_suspended(OTHER, "next")
    assert running.state(OTHER, "next") == "Admitted"


async def test_a_trip_hands_the_gpus_to_the_job_the_queue_admits_once_the_pods_go(
    running: Queue, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The trip does not wait for the pods (a real node's take their grace period).
    monkeypatch.setattr(actuator, "HANDOFF_WAIT_SECONDS", 0.0)
    cluster = running.cluster
    indexes = FakeIndexes(cluster)
    loop = BreakerController(
        cluster.api, indexes, running.controller, "http://prometheus.invalid", "breaker-system"
    )

    async def converge(trip: Trip | None = None) -> None:
        await indexes.refresh()
        await loop.converge({(NS, "rl-guard"): trip} if trip else {}, {})
        while loop.busy:
            await asyncio.gather(*loop.busy.values(), return_exceptions=True)

    await converge()
    await converge()
    detector = engine.compile_policy(BreakerPolicySpec.model_validate(POLICY_SPEC))
    firing = engine.Firing("pool", 4.0, {"namespace": NS, "pod": "rl-0"}, 0.0, (NS, "rl-0"))
    await converge(Trip(engine.Decision("anyCritical", (firing,)), detector, clock.monotonic()))

    breaker = cluster.get((GROUP, "breakers"), NS, "rl-guard")
    assert breaker is not None
    handoff = next(r for r in breaker["status"]["actions"] if r["type"] == "reassignGPUs")
    assert handoff["changed"].get("awaiting") == [f"{OTHER}/next"], handoff

    clock.advance(1)
    await running.reconcile()  # the paused TrainingJob's Job is suspended
    assert running.job_suspended(NS, "rl")
    running.pods_gone(NS, "rl")
    await running.reconcile()  # the GPUs are free: next is admitted
    assert running.state(OTHER, "next") == "Admitted"

    clock.advance(1)  # the loop looks at an awaited handoff once a second at most
    await converge()
    breaker = cluster.get((GROUP, "breakers"), NS, "rl-guard")
    assert breaker is not None
    handoff = next(r for r in breaker["status"]["actions"] if r["type"] == "reassignGPUs")
    assert handoff["changed"]["to"] == [f"{OTHER}/next"]
    assert "awaiting" not in handoff["changed"]
    assert "GPUsReassigned" in [e["reason"] for e in cluster.all(("", "events"), NS)]
