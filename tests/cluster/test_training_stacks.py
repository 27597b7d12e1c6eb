"""A Kubeflow TrainJob and a KubeRay RayJob guarded and paused, against their real CRDs
(installed on the local cluster from the Trainer v2.0.0, JobSet v0.8.2 and KubeRay v1.5.0
modules).

KubeRay's operator runs (built from its module): it makes the RayJob's RayCluster and
pods (pod → RayCluster → RayJob), and deletes them when the breaker suspends the RayJob.
Trainer's controller does not (docs/integrations/trainer.md says why), so that test
writes what Trainer and JobSet would: the TrainJob's JobSet and the JobSet's Job, whose
pods the real Job controller makes (pod → Job → JobSet → TrainJob).

The policy selects the workload by its labels; a trip quarantines the pods found through
the owner chain and pauses the workload through its own ``spec.suspend``, suspends it again
when the tenant unsuspends it, and a reset puts it back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from breaker.constants import QUARANTINE_LABEL
from tests.cluster.scenes import ATTACKS, Cluster, policy
from tests.helpers import wait_for
from tests.kube import as_body, as_dict, meta_of, status_of

TRAINER = ("trainer.kubeflow.org", "v1alpha1", "trainjobs")
JOBSET = ("jobset.x-k8s.io", "v1alpha2", "jobsets")
RAYJOB = ("ray.io", "v1", "rayjobs")
GPU_CONTAINER = {
    "name": "node",
    "image": "trainer:1",
    "resources": {"limits": {"nvidia.com/gpu": "8"}},
}


def create(c: Cluster, resource: tuple[str, str, str], body: dict[str, Any]) -> dict[str, Any]:
    group, version, plural = resource
    body = {"apiVersion": f"{group}/{version}", **body}
    created = c.custom.create_namespaced_custom_object(group, version, c.ns, plural, body)
    return as_dict(created)


def get(c: Cluster, resource: tuple[str, str, str], name: str) -> dict[str, Any]:
    group, version, plural = resource
    return as_dict(c.custom.get_namespaced_custom_object(group, version, c.ns, plural, name))


def owned_by(owner: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": owner["apiVersion"],
            "kind": owner["kind"],
            "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def tripped_and_paused(
    c: Cluster,
    resource: tuple[str, str, str],
    name: str,
    pods: list[Any],
    suspended: Callable[[], bool] | None = None,
) -> None:
    """Trip the breaker of ``name`` through its pods; its spec.suspend is set, its pods
    quarantined (or, where the controller runs, gone once it ``suspended`` the workload);
    a reset puts spec.suspend back as it was (false)."""
    breaker = f"{name}-guard"
    with c.sim(pods, ATTACKS["mining-mid-run"]):
        wait_for(lambda: c.settled_state(breaker) == "Open", "the breaker to trip", timeout=120)
    assert get(c, resource, name)["spec"]["suspend"] is True
    revoked = next(
        r for r in c.breaker(breaker)["status"]["actions"] if r["type"] == "revokeEgress"
    )
    names = sorted(str(meta_of(p).name) for p in pods)
    assert revoked["changed"]["pods"] == names, "every pod found through the owner chain"
    if suspended is not None:
        wait_for(suspended, f"the {resource[2]} controller to suspend {name}", timeout=60)
        wait_for(lambda: not _alive(c, names), "its pods gone", timeout=60)
    else:
        for found in names:
            labels = meta_of(c.core.read_namespaced_pod(found, c.ns)).labels or {}
            assert labels.get(QUARANTINE_LABEL) == breaker
    # The tenant unsuspends it while the breaker is open: suspended again at once.
    group, version, plural = resource
    c.custom.patch_namespaced_custom_object(
        group, version, c.ns, plural, name, {"spec": {"suspend": False}}
    )
    began = time.monotonic()
    wait_for(lambda: get(c, resource, name)["spec"]["suspend"] is True, "re-paused", timeout=10)
    undone_in = time.monotonic() - began
    print(f"\nthe tenant's unsuspend of the {plural} undone in {undone_in:.2f}s")
    status = c.breaker(breaker)["status"]
    paused = next(r for r in status["actions"] if r["type"] == "pause")
    assert paused["changed"]["field"] == "spec.suspend"
    assert paused["changed"]["was"] is False
    c.patch("breakers", breaker, {"metadata": {"annotations": {"breaker.dev/reset": "1"}}})
    try:
        wait_for(lambda: c.settled_state(breaker) == "Closed", "the reset", timeout=60)
    except AssertionError as error:
        seen = c.breaker(breaker)
        raise AssertionError(
            f"{error}\nannotations: {seen['metadata'].get('annotations')}\n"
            f"status: {json.dumps(seen.get('status'), indent=1)[:6000]}"
        ) from None
    assert get(c, resource, name)["spec"]["suspend"] is False


def test_a_trainjob_is_found_through_its_jobset_and_paused(cluster: Cluster) -> None:
    c = cluster
    trainjob = create(
        c,
        TRAINER,
        {
            "kind": "TrainJob",
            "metadata": {"name": "tj", "labels": {"team": "agents"}},
            "spec": {
                "runtimeRef": {
                    "name": "torch-distributed",
                    "apiGroup": "trainer.kubeflow.org",
                    "kind": "ClusterTrainingRuntime",
                },
                "suspend": False,
                "trainer": {"numNodes": 2},
            },
        },
    )
    # What Trainer's controller writes: a JobSet of the TrainJob's name, owned by it.
    jobset = create(
        c,
        JOBSET,
        {
            "kind": "JobSet",
            "metadata": {"name": "tj", "ownerReferences": owned_by(trainjob)},
            "spec": {
                "replicatedJobs": [
                    {
                        "name": "node",
                        "replicas": 1,
                        "template": {
                            "spec": {
                                "template": {
                                    "spec": {
                                        "restartPolicy": "Never",
                                        "containers": [GPU_CONTAINER],
                                    }
                                }
                            }
                        },
                    }
                ]
            },
        },
    )
    # What JobSet's controller writes: the replicated Job, owned by the JobSet; the Job
    # controller makes its pods.
    job_labels = {"jobset.sigs.k8s.io/jobset-name": "tj"}
    job = c.batch.create_namespaced_job(
        c.ns,
        as_body(
            {
                "metadata": {
                    "name": "tj-node-0",
                    "labels": job_labels,
                    "ownerReferences": owned_by(jobset),
                },
                "spec": {
                    "parallelism": 2,
                    "completions": 2,
                    "backoffLimit": 0,
                    "template": {
                        "metadata": {"labels": job_labels},
                        "spec": {"restartPolicy": "Never", "containers": [GPU_CONTAINER]},
                    },
                },
            }
        ),
    )
    assert job is not None
    c.create(
        "breakerpolicies",
        _selecting(policy(kinds=("TrainJob",), actions=("revokeEgress", "pause")), "agents"),
    )

    def pods() -> list[Any] | None:
        listed = c.core.list_namespaced_pod(c.ns, label_selector="job-name=tj-node-0").items
        ready = [p for p in listed if status_of(p).phase == "Running"]
        return ready if len(ready) == 2 else None

    tripped_and_paused(c, TRAINER, "tj", wait_for(pods, "the JobSet's pods", timeout=60))


def test_a_rayjob_is_found_through_its_raycluster_and_paused(cluster: Cluster) -> None:
    """KubeRay's real operator runs the RayJob: it makes the RayCluster and its pods, and
    deletes them when the breaker suspends the RayJob; a reset brings a new cluster."""
    c = cluster
    worker = {
        "name": "ray-worker",
        "image": "rayproject/ray:2.46.0-gpu",
        "resources": {"limits": {"nvidia.com/gpu": "8"}},
    }
    create(
        c,
        RAYJOB,
        {
            "kind": "RayJob",
            "metadata": {"name": "rj", "labels": {"team": "agents"}},
            "spec": {
                "entrypoint": "python train.py",
                # Submitted through the (stand-in) dashboard: no submitter Job.
                "submissionMode": "HTTPMode",
                "shutdownAfterJobFinishes": True,  # KubeRay suspends only such a RayJob
                "rayClusterSpec": {
                    "headGroupSpec": {
                        "rayStartParams": {},
                        "template": {
                            "spec": {
                                "containers": [{"name": "ray-head", "image": "rayproject/ray"}]
                            }
                        },
                    },
                    "workerGroupSpecs": [
                        {
                            "groupName": "gpu",
                            "replicas": 2,
                            "minReplicas": 2,
                            "maxReplicas": 2,
                            "rayStartParams": {},
                            "template": {"spec": {"containers": [worker]}},
                        }
                    ],
                },
            },
        },
    )
    c.create(
        "breakerpolicies",
        _selecting(policy(kinds=("RayJob",), actions=("revokeEgress", "pause")), "agents"),
    )
    pods = wait_for(lambda: ray_pods(c, "Running"), "KubeRay's cluster running", timeout=90)
    first_cluster = get(c, RAYJOB, "rj")["status"]["rayClusterName"]
    tripped_and_paused(c, RAYJOB, "rj", pods, suspended=lambda: deployment(c) == "Suspended")
    # Reset: KubeRay makes a new cluster for the RayJob.
    wait_for(lambda: deployment(c) == "Running", "the RayJob running again", timeout=90)
    assert get(c, RAYJOB, "rj")["status"]["rayClusterName"] != first_cluster


def ray_pods(c: Cluster, phase: str) -> list[Any] | None:
    """The RayJob's head and two workers, once all are in ``phase``."""
    listed = c.core.list_namespaced_pod(c.ns, label_selector="ray.io/cluster").items
    live = [p for p in listed if meta_of(p).deletion_timestamp is None]
    return live if len(live) == 3 and all(status_of(p).phase == phase for p in live) else None


def deployment(c: Cluster) -> str | None:
    status = get(c, RAYJOB, "rj").get("status") or {}
    found: str | None = status.get("jobDeploymentStatus")
    return found


def _alive(c: Cluster, names: list[str]) -> list[str]:
    listed = c.core.list_namespaced_pod(c.ns).items
    return [str(meta_of(p).name) for p in listed if meta_of(p).name in names]


def _selecting(body: dict[str, Any], team: str) -> dict[str, Any]:
    body["spec"]["targets"]["selector"] = {"matchLabels": {"team": team}}
    return body
