"""What the breaker loop knows about the cluster, kept by kopf indexes from watches.

Policies, Breakers, the admission policy's params (BreakerHolds), namespaces' labels, every
kind of workload a policy can guard, the owners between pods and workloads (Jobs,
ReplicaSets, JobSets, RayClusters), pods with an owner, every NetworkPolicy and
ResourceQuota, and Kueue's Workloads and LocalQueues. The
loop reads these in memory, so an evaluation of thousands of workloads lists nothing.
Each index keeps only the fields the loop reads.

Every index function (and every event handler that wakes a loop) is a coroutine that does
not await: kopf runs a plain function in its thread pool, one hop per object per handler,
which at 10,000 pods made a restarted operator's first listing take minutes and hold every
pending event in memory meanwhile.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from typing import Any

import kopf
import pydantic

from breaker.actions import kueue
from breaker.actions.pause import KINDS, field_value, is_paused, with_field
from breaker.api.hold import BreakerHoldSpec
from breaker.api.quantity import pod_gpus
from breaker.circuit.ownership import OwnerRef
from breaker.circuit.views import PodView, WorkloadView
from breaker.constants import (
    ADMISSION_PARAMS,
    BREAKERHOLDS,
    GROUP,
    KEPT_ANNOTATION,
    PAUSED_BY,
    QUARANTINE_LABEL,
    VERSION,
)
from breaker.controllers import compact, config


def _controller(meta: kopf.Meta) -> OwnerRef | None:
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller"):
            return OwnerRef(ref["kind"], ref["name"], ref["uid"])
    return None


def _workload(kind: str, body: kopf.Body) -> dict[tuple[str, str, str], WorkloadView]:
    meta = body["metadata"]
    value = field_value(kind, body)
    labels = compact.labels(meta.get("labels"))  # one copy, in the view and in its body
    slim = {
        "apiVersion": body.get("apiVersion"),
        "kind": kind,
        "metadata": {
            "name": meta["name"],
            "namespace": meta.get("namespace"),
            "uid": meta["uid"],
            "labels": labels,
            "annotations": {
                k: v for k, v in (meta.get("annotations") or {}).items() if k.startswith(GROUP)
            },
        },
        "spec": compact.shared(body.get("spec") or {}) if kind == "TrainingJob" else {},
    }
    if kind != "TrainingJob":
        slim.update(with_field(kind, value))
    view = WorkloadView(
        api_version=str(body.get("apiVersion")),
        kind=kind,
        namespace=str(meta.get("namespace")),
        name=meta["name"],
        uid=meta["uid"],
        labels=labels,
        paused=is_paused(kind, slim),
        paused_by=(meta.get("annotations") or {}).get(PAUSED_BY),
        pause_field=value,
        deleting=meta.get("deletionTimestamp") is not None,
        body=slim,
    )
    return {(view.namespace, kind, view.name): view}


# One index per guardable kind. kopf serves only the resources the cluster has, so the
# JobSet, Kubeflow, Trainer and Ray indexes stay empty where those CRDs are not installed.
WORKLOAD_INDEXES: list[str] = []


def _register(kind: str) -> None:
    adapter = KINDS[kind]
    index_name = f"workloads_{kind.lower()}"

    async def index(body: kopf.Body, **_: Any) -> dict[tuple[str, str, str], WorkloadView]:
        return _workload(kind, body)

    index.__name__ = index_name
    kopf.index(
        adapter.group, adapter.version, adapter.plural, id=index_name, when=config.serves_breakers
    )(index)
    WORKLOAD_INDEXES.append(index_name)


for _kind in KINDS:
    _register(_kind)


async def _owner(
    namespace: str | None, name: str, meta: kopf.Meta, **_: Any
) -> dict[tuple[str | None, str], OwnerRef | None]:
    return {(namespace, name): _controller(meta)}


# The owners between a pod and the workload an admin names, each with the controller above
# it, for the pod → workload walk (circuit/ownership.py): a Job (under a TrainingJob or a
# JobSet), a ReplicaSet (under a Deployment), a JobSet (under a TrainJob), a RayCluster
# (under a RayJob).
OWNER_INDEXES = {
    "Job": ("batch", "v1", "jobs"),
    "ReplicaSet": ("apps", "v1", "replicasets"),
    "JobSet": ("jobset.x-k8s.io", "v1alpha2", "jobsets"),
    "RayCluster": ("ray.io", "v1", "rayclusters"),
}


def owner_index(kind: str) -> str:
    return f"breaker_{kind.lower()}_owners"


for _owner_kind, _resource in OWNER_INDEXES.items():
    kopf.index(*_resource, id=owner_index(_owner_kind), when=config.serves_breakers)(_owner)


@kopf.index(kueue.GROUP, kueue.VERSION, kueue.WORKLOADS, when=config.serves_breakers)
async def breaker_kueue_workloads(
    namespace: str | None, body: kopf.Body, **_: Any
) -> dict[tuple[str | None, str, str], kueue.QueuedWorkload]:
    """Kueue's Workloads, by the job each stands for (empty where Kueue is not installed)."""
    view = kueue.workload_view(body)
    if view.owner is None:
        return {}
    return {(namespace, view.owner.kind, view.owner.name): view}


@kopf.index(kueue.GROUP, kueue.VERSION, kueue.LOCAL_QUEUES, when=config.serves_breakers)
async def breaker_local_queues(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[tuple[str | None, str], kueue.LocalQueueView]:
    return {(namespace, name): kueue.local_queue_view(body)}


@kopf.index("pods", when=config.serves_breakers)
async def breaker_pods(
    namespace: str | None,
    name: str,
    meta: kopf.Meta,
    spec: kopf.Spec,
    status: kopf.Status,
    labels: kopf.Labels,
    **_: Any,
) -> dict[tuple[str | None, str], PodView]:
    assert namespace is not None
    return {
        (namespace, name): PodView(
            namespace=sys.intern(namespace),
            name=name,
            uid=str(meta.get("uid")),
            owner=_controller(meta),
            labels=compact.labels(labels),
            node=compact.shared(spec.get("nodeName")),
            gpus=pod_gpus(dict(spec)),
            phase=status.get("phase", "Pending"),
            deleting=meta.get("deletionTimestamp") is not None,
            ip=status.get("podIP"),
            service_account=compact.shared(spec.get("serviceAccountName")),
            host_network=bool(spec.get("hostNetwork")),
            kept=(meta.get("annotations") or {}).get(KEPT_ANNOTATION),
        )
    }


@kopf.index("pods", when=config.serves_breakers)
async def breaker_quarantined(
    namespace: str | None, name: str, labels: kopf.Labels, **_: Any
) -> dict[tuple[str | None, str], str]:
    """The pods carrying the quarantine label, by (namespace, the Breaker it names): what
    the admission policy's params list, and what a breaker that let go frees."""
    breaker = labels.get(QUARANTINE_LABEL)
    return {(namespace, breaker): name} if breaker else {}


@kopf.index("services", when=config.serves_breakers)
async def breaker_services(
    namespace: str | None, name: str, spec: kopf.Spec, **_: Any
) -> dict[tuple[str | None, str], dict[str, Any]]:
    """What a Service is to a held pod: its selector (whose proxy reaches the pod), and
    whether it is reached from outside the cluster."""
    kept = {
        key: compact.shared(spec[key])
        for key in ("selector", "type", "externalIPs")
        if spec.get(key)
    }
    return {(namespace, name): {"metadata": {"name": name}, "spec": kept}}


@kopf.index("networking.k8s.io", "v1", "networkpolicies", when=config.serves_breakers)
async def breaker_netpols(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[tuple[str | None, str], dict[str, Any]]:
    return {(namespace, name): _slim(body)}


@kopf.index("resourcequotas", when=config.here)
async def breaker_quotas(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[tuple[str | None, str], dict[str, Any]]:
    return {(namespace, name): _slim(body, status=True)}


@kopf.index("namespaces", when=config.serves_breakers)
async def breaker_namespaces(name: str, labels: kopf.Labels, **_: Any) -> dict[str, dict[str, str]]:
    return {name: compact.labels(labels)}


@kopf.index(GROUP, VERSION, "breakerpolicies", when=config.serves_breakers)
async def breaker_policies(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[tuple[str | None, str], dict[str, Any]]:
    return {(namespace, name): _slim(body, status=True)}


@kopf.index(GROUP, VERSION, "clusterbreakerpolicies", when=config.serves_breakers)
async def breaker_cluster_policies(
    name: str, body: kopf.Body, **_: Any
) -> dict[str, dict[str, Any]]:
    return {name: _slim(body, status=True)}


@kopf.index(GROUP, VERSION, "breakers", when=config.here)
async def breaker_breakers(
    namespace: str | None,
    name: str,
    body: kopf.Body,
    status: kopf.Status,
    memo: kopf.Memo,
    **_: Any,
) -> dict[tuple[str | None, str], dict[str, Any]]:
    if not config.of(memo).serving.breakers() and not status.get("reclaim"):
        return {}  # the queue alone reads only the GPUs a reset owes back
    return {(namespace, name): _slim(body, status=True)}


@kopf.index(GROUP, VERSION, BREAKERHOLDS, when=config.serves_breakers)
async def breaker_holds(
    namespace: str | None, name: str, spec: kopf.Spec, **_: Any
) -> dict[str | None, BreakerHoldSpec | None]:
    """The admission policy's params as the API server holds them, by namespace; None for
    one whose spec does not read (written again, or deleted)."""
    if name != ADMISSION_PARAMS:
        return {}
    try:
        return {namespace: BreakerHoldSpec.model_validate(dict(spec))}
    except pydantic.ValidationError:
        return {namespace: None}


def holds(index: Mapping[Any, Any]) -> Mapping[str, BreakerHoldSpec | None]:
    """``breaker_holds`` as namespace -> spec (``items`` would leave out the unreadable)."""
    return {key: values[0] for key, store in list(index.items()) if (values := list(store))}


def _slim(body: kopf.Body, status: bool = False) -> dict[str, Any]:
    meta = body["metadata"]
    kept: dict[str, Any] = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {
            key: compact.shared(meta[key])
            for key in (
                "name",
                "namespace",
                "uid",
                "labels",
                "annotations",
                "ownerReferences",
                "generation",
                "resourceVersion",
                "creationTimestamp",
                "deletionTimestamp",
            )
            if key in meta
        },
        "spec": compact.shared(body.get("spec") or {}),
    }
    annotations = kept["metadata"].get("annotations")
    if annotations:
        # kubectl's last-applied copy doubles the size of every object; the loop never reads it.
        annotations.pop("kubectl.kubernetes.io/last-applied-configuration", None)
    if status:
        kept["status"] = compact.shared(body.get("status") or {})
    return kept


INDEX_NAMES = (
    *WORKLOAD_INDEXES,
    *(owner_index(kind) for kind in OWNER_INDEXES),
    "breaker_kueue_workloads",
    "breaker_local_queues",
    "breaker_pods",
    "breaker_quarantined",
    "breaker_services",
    "breaker_netpols",
    "breaker_quotas",
    "breaker_namespaces",
    "breaker_policies",
    "breaker_cluster_policies",
    "breaker_breakers",
    "breaker_holds",
)


def only(index: kopf.Index[Any, Any], key: Any) -> Any:
    values = list(index.get(key, []))
    return values[0] if values else None


def items(index: kopf.Index[Any, Any]) -> Iterator[tuple[Any, Any]]:
    """Each key's value; the keys as they are now, as callers await between items and an
    index changes on the event loop meanwhile."""
    for key in list(index):
        value = only(index, key)
        if value is not None:
            yield key, value
