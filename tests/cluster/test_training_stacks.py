"""A Kubeflow TrainJob and a KubeRay RayJob guarded and paused, against their real CRDs
(installed on the local cluster from the Trainer v2.0.0, JobSet v0.8.2 and KubeRay v1.5.0
modules).

Their controllers do not run here (docs/integrations/trainer.md and kuberay.md say why),
so each test writes what the controller would: a TrainJob's JobSet, the JobSet's Job and
the Job's pods (pod → Job → JobSet → TrainJob), and a RayJob's RayCluster and its pods
(pod → RayCluster → RayJob), with the owner references and labels the controllers set.
The policy selects the workload by its labels; a trip quarantines the pods found through
the owner chain and pauses the workload through its own ``spec.suspend``, which the real
schema accepts; a reset puts it back.
"""

from __future__ import annotations

from typing import Any

from breaker.constants import QUARANTINE_LABEL
from tests.cluster.scenes import ATTACKS, Cluster, policy
from tests.helpers import wait_for
from tests.kube import as_body, as_dict, meta_of, status_of

TRAINER = ("trainer.kubeflow.org", "v1alpha1", "trainjobs")
JOBSET = ("jobset.x-k8s.io", "v1alpha2", "jobsets")
RAYJOB = ("ray.io", "v1", "rayjobs")
RAYCLUSTER = ("ray.io", "v1", "rayclusters")
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


def pod(name: str, labels: dict[str, str], owner: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels, "ownerReferences": owner},
        "spec": {"restartPolicy": "Never", "containers": [GPU_CONTAINER]},
    }


def running(c: Cluster, names: list[str]) -> list[Any]:
    def found() -> list[Any] | None:
        pods = [c.core.read_namespaced_pod(n, c.ns) for n in names]
        return pods if all(status_of(p).phase == "Running" for p in pods) else None

    result: list[Any] = wait_for(found, "the pods running", timeout=60)
    return result


def tripped_and_paused(
    c: Cluster, resource: tuple[str, str, str], name: str, pods: list[Any]
) -> None:
    """Trip the breaker of ``name`` through its pods; its spec.suspend is set, its pods
    quarantined; a reset puts spec.suspend back as it was (false)."""
    breaker = f"{name}-guard"
    with c.sim(pods, ATTACKS["mining-mid-run"]):
        wait_for(lambda: c.settled_state(breaker) == "Open", "the breaker to trip", timeout=120)
    assert get(c, resource, name)["spec"]["suspend"] is True
    for found in pods:
        labels = meta_of(c.core.read_namespaced_pod(str(meta_of(found).name), c.ns)).labels or {}
        assert labels.get(QUARANTINE_LABEL) == breaker, "found through the owner chain"
    status = c.breaker(breaker)["status"]
    paused = next(r for r in status["actions"] if r["type"] == "pause")
    assert paused["changed"]["field"] == "spec.suspend"
    assert paused["changed"]["was"] is False
    c.patch("breakers", breaker, {"metadata": {"annotations": {"breaker.dev/reset": "1"}}})
    wait_for(lambda: c.settled_state(breaker) == "Closed", "the reset", timeout=60)
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
    c = cluster
    head = {"rayStartParams": {}, "template": {"spec": {"containers": [GPU_CONTAINER]}}}
    rayjob = create(
        c,
        RAYJOB,
        {
            "kind": "RayJob",
            "metadata": {"name": "rj", "labels": {"team": "agents"}},
            "spec": {
                "entrypoint": "python train.py",
                "shutdownAfterJobFinishes": True,  # KubeRay suspends only such a RayJob
                "suspend": False,
                "rayClusterSpec": {"headGroupSpec": head},
            },
        },
    )
    # What KubeRay's RayJob controller writes: a RayCluster carrying the RayJob's labels,
    # owned by it; the RayCluster controller's pods, owned by the RayCluster.
    cluster_name = "rj-x7k2p"
    raycluster = create(
        c,
        RAYCLUSTER,
        {
            "kind": "RayCluster",
            "metadata": {
                "name": cluster_name,
                "labels": {
                    "team": "agents",
                    "ray.io/originated-from-cr-name": "rj",
                    "ray.io/originated-from-crd": "RayJob",
                },
                "ownerReferences": owned_by(rayjob),
            },
            "spec": {"headGroupSpec": head},
        },
    )
    names = [f"{cluster_name}-head-abcde", f"{cluster_name}-gpu-worker-fghij"]
    for name, node_type in zip(names, ("head", "worker"), strict=True):
        labels = {"ray.io/cluster": cluster_name, "ray.io/node-type": node_type}
        c.core.create_namespaced_pod(c.ns, as_body(pod(name, labels, owned_by(raycluster))))
    c.create(
        "breakerpolicies",
        _selecting(policy(kinds=("RayJob",), actions=("revokeEgress", "pause")), "agents"),
    )
    tripped_and_paused(c, RAYJOB, "rj", running(c, names))


def _selecting(body: dict[str, Any], team: str) -> dict[str, Any]:
    body["spec"]["targets"]["selector"] = {"matchLabels": {"team": team}}
    return body
