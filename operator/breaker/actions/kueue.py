"""Where Kueue runs, the breaker works through it. Pure.

Kueue owns a job's run while it manages it: a Job (or TrainJob, RayJob) with Kueue's
queue label has a Kueue ``Workload``, and Kueue starts and suspends the job by its
admission. Suspending such a job directly is a fight with Kueue, so the breaker pauses
it by deactivating its Workload (``spec.active: false``): Kueue evicts it, suspends the
job, releases its quota and admits the next workload by its own rules. A reset puts
``spec.active`` back and Kueue requeues it.

The tripped tenant is kept from taking GPUs back through a new job by holding the
namespace's LocalQueues (``spec.stopPolicy: Hold``: nothing new is admitted from them,
what runs keeps running), and a reset puts back each queue's own stop policy.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from breaker.circuit.ownership import OwnerRef
from breaker.constants import GROUP as BREAKER_GROUP
from breaker.constants import KUEUE_QUEUE_LABEL, PAUSED_BY, PAUSED_WAS

GROUP = "kueue.x-k8s.io"
VERSION = "v1beta2"
WORKLOADS = "workloads"
LOCAL_QUEUES = "localqueues"
QUEUE_LABEL = KUEUE_QUEUE_LABEL
HELD_BY = f"{BREAKER_GROUP}/held-by"
HELD_WAS = f"{BREAKER_GROUP}/held-stop-policy"
HOLDING = ("Hold", "HoldAndDrain")  # stop policies that admit nothing new


@dataclass(frozen=True)
class QueuedWorkload:
    """A Kueue Workload, with what the breaker reads of it."""

    namespace: str
    name: str
    owner: OwnerRef | None  # the job it stands for (its controller)
    active: bool
    queue: str
    cluster_queue: str | None  # where it is admitted (holds quota); None while it is not
    reserved_at: dt.datetime | None  # when it last got quota
    paused_by: str | None
    paused_was: str | None


@dataclass(frozen=True)
class LocalQueueView:
    namespace: str
    name: str
    stop_policy: str  # "None" when unset, as Kueue reads it
    cluster_queue: str
    held_by: str | None
    held_was: str | None


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for condition in status.get("conditions") or []:
        if condition.get("type") == kind:
            return condition  # type: ignore[no-any-return]
    return None


def _time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def workload_view(body: Mapping[str, Any]) -> QueuedWorkload:
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    owner = next(
        (
            OwnerRef(ref["kind"], ref["name"], ref["uid"])
            for ref in meta.get("ownerReferences") or []
            if ref.get("controller")
        ),
        None,
    )
    reserved = _condition(status, "QuotaReserved")
    holds_quota = reserved is not None and reserved.get("status") == "True"
    admission = status.get("admission") or {}
    annotations = meta.get("annotations") or {}
    return QueuedWorkload(
        namespace=str(meta.get("namespace")),
        name=str(meta.get("name")),
        owner=owner,
        active=spec.get("active", True) is not False,
        queue=str(spec.get("queueName") or ""),
        cluster_queue=admission.get("clusterQueue") if holds_quota else None,
        reserved_at=_time(reserved.get("lastTransitionTime")) if holds_quota and reserved else None,
        paused_by=annotations.get(PAUSED_BY),
        paused_was=annotations.get(PAUSED_WAS),
    )


def local_queue_view(body: Mapping[str, Any]) -> LocalQueueView:
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    annotations = meta.get("annotations") or {}
    return LocalQueueView(
        namespace=str(meta.get("namespace")),
        name=str(meta.get("name")),
        stop_policy=str(spec.get("stopPolicy") or "None"),
        cluster_queue=str(spec.get("clusterQueue") or ""),
        held_by=annotations.get(HELD_BY),
        held_was=annotations.get(HELD_WAS),
    )


# -- pause: deactivate the Workload ------------------------------------------------------


def deactivate(workload: QueuedWorkload, breaker: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the merge patch that deactivates it, the record a reset reads). A Workload this
    breaker deactivated before keeps its first record: a reset restores what it found."""
    record: dict[str, Any] = {
        "kueueWorkload": workload.name,
        "field": "spec.active",
        "was": workload.active,
    }
    if workload.paused_by == breaker and workload.paused_was:
        record = json.loads(workload.paused_was)
    patch = {
        "spec": {"active": False},
        "metadata": {"annotations": {PAUSED_BY: breaker, PAUSED_WAS: json.dumps(record)}},
    }
    return patch, record


def reactivate(record: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch that puts ``spec.active`` back as the breaker found it."""
    return {
        "spec": {"active": bool(record.get("was", True))},
        "metadata": {"annotations": {PAUSED_BY: None, PAUSED_WAS: None}},
    }


def recorded_pause(workload: QueuedWorkload, breaker: str) -> dict[str, Any] | None:
    """What this breaker's deactivation found, from the Workload's own annotation (a pause
    recorded only as intended: the operator stopped between the patch and the status)."""
    if workload.paused_by != breaker or not workload.paused_was:
        return None
    found: dict[str, Any] = json.loads(workload.paused_was)
    return found


# -- the tenant's queues: hold them -------------------------------------------------------


def plan_hold(
    queues: Iterable[LocalQueueView], breaker: str, only: Iterable[str] | None = None
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """(a merge patch per LocalQueue to hold, and each one's stop policy as found);
    ``only``: these queues and no others.

    A queue already holding (by an admin, or this breaker before) is left as it is, and a
    queue this breaker held keeps the policy it first found."""
    wanted = None if only is None else set(only)
    patches: dict[str, dict[str, Any]] = {}
    found: dict[str, str] = {}
    for queue in sorted(queues, key=lambda q: q.name):
        if wanted is not None and queue.name not in wanted:
            continue
        if queue.held_by == breaker and queue.held_was is not None:
            found[queue.name] = queue.held_was
            if queue.stop_policy in HOLDING:
                continue
        elif queue.stop_policy in HOLDING:
            continue
        else:
            found[queue.name] = queue.stop_policy
        patches[queue.name] = {
            "spec": {"stopPolicy": "Hold"},
            "metadata": {"annotations": {HELD_BY: breaker, HELD_WAS: found[queue.name]}},
        }
    return patches, found


def plan_release(
    held: Mapping[str, str], queues: Iterable[LocalQueueView], breaker: str
) -> dict[str, dict[str, Any]]:
    """A merge patch per queue this breaker holds (recorded at the trip, or held later: a
    queue the tenant made meanwhile), putting back its stop policy as found."""
    patches: dict[str, dict[str, Any]] = {}
    for queue in queues:
        if queue.held_by != breaker:
            continue  # never held, gone, or an admin took it over since: theirs now
        was = held.get(queue.name, queue.held_was or "None")
        patches[queue.name] = {
            "spec": {"stopPolicy": None if was == "None" else was},
            "metadata": {"annotations": {HELD_BY: None, HELD_WAS: None}},
        }
    return patches


def released(held: Mapping[str, str], queues: Iterable[LocalQueueView], breaker: str) -> list[str]:
    """The tenant's queues that admit again while the breaker holds the namespace: one it
    held that the tenant set to admit, or one made since. A held queue whose mark an
    admin removed is the admin's."""
    return sorted(
        q.name
        for q in queues
        if q.stop_policy not in HOLDING and not (q.name in held and q.held_by != breaker)
    )


# -- the hand-off: whom Kueue admitted into the freed quota -------------------------------


def admitted_since(
    workloads: Iterable[QueuedWorkload],
    cluster_queue: str,
    since: dt.datetime,
    other_than: str,
) -> list[str]:
    """Workloads of other namespaces that got quota in ``cluster_queue`` at or after
    ``since`` (the trip), first admitted first, as ``namespace/name``."""
    got = [
        w
        for w in workloads
        if w.cluster_queue == cluster_queue
        and w.namespace != other_than
        and w.reserved_at is not None
        # Conditions carry whole seconds: one admitted in the trip's second counts.
        and w.reserved_at >= since.replace(microsecond=0)
    ]
    got.sort(key=lambda w: (w.reserved_at, w.namespace, w.name))
    return [f"{w.namespace}/{w.name}" for w in got]
