"""A TrainingJob's status from what was observed: its Job, pods and place in the queue. Pure."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

from breaker.api.conditions import Cond, is_true, merge


@dataclass(frozen=True)
class PodView:
    name: str
    node: str | None
    phase: str
    gpus: int
    deleting: bool = False


@dataclass(frozen=True)
class JobView:
    name: str
    suspended: bool
    conditions: tuple[dict[str, Any], ...] = ()
    owner: str | None = None  # uid of its controller

    @property
    def succeeded(self) -> bool:
        return is_true(self.conditions, "Complete")

    @property
    def failed(self) -> bool:
        return is_true(self.conditions, "Failed")


@dataclass(frozen=True)
class Observed:
    """Everything the status is computed from."""

    replicas: int
    gpus_per_replica: int
    user_suspended: bool
    generation: int | None
    job: JobView | None
    pods: tuple[PodView, ...] = ()
    queue_position: int | None = None
    queue_length: int = 0
    problem: tuple[str, str] | None = None  # (reason, message): the spec cannot run as it is
    network_policy: str | None = None
    previous: dict[str, Any] = field(default_factory=dict)
    # Breakers whose GPU-quota clamp holds the namespace: its jobs wait for an admin's reset.
    held_by: tuple[str, ...] = ()
    kueue_queue: str | None = None  # spec.queueName: Kueue admits the job, from this LocalQueue


def state_of(o: Observed) -> str:
    if o.job is not None and o.job.succeeded:
        return "Succeeded"
    if o.job is not None and o.job.failed:
        return "Failed"
    if o.user_suspended:
        return "Suspended"
    if o.job is not None and not o.job.suspended:
        running = [p for p in o.pods if p.phase == "Running" and not p.deleting]
        return "Running" if len(running) >= o.replicas else "Admitted"
    if o.queue_position is not None or (o.kueue_queue and o.job is not None):
        return "Queued"
    return "Pending"


def compute(o: Observed, now: dt.datetime) -> dict[str, Any]:
    """The full status object to write."""
    state = state_of(o)
    gpus = o.replicas * o.gpus_per_replica
    live = [p for p in o.pods if p.node and p.phase in ("Pending", "Running") and not p.deleting]
    nodes = sorted({p.node for p in live if p.node})
    allocated = sum(p.gpus for p in live)
    need = f"{gpus} nvidia.com/gpu ({o.replicas} x {o.gpus_per_replica})"

    admitted = state in ("Admitted", "Running")
    conditions = [
        Cond(
            "Admitted",
            "True" if admitted else "False",
            "GPUsReserved" if admitted else state,
            f"the queue admitted the job: {need}" if admitted else f"not holding GPUs: {state}",
        ),
        Cond(
            "Queued",
            "True" if state == "Queued" else "False",
            _queued_reason(o) if state == "Queued" else "NotQueued",
            _queued_message(o, need) if state == "Queued" else "",
        ),
        Cond(
            "Running",
            "True" if state == "Running" else "False",
            "AllReplicasRunning" if state == "Running" else "NotRunning",
            f"{len([p for p in live if p.phase == 'Running'])} of {o.replicas} replicas running",
        ),
        Cond(
            "Suspended",
            "True" if state == "Suspended" else "False",
            "SuspendedByUser" if state == "Suspended" else "NotSuspended",
            "spec.suspend is true: the Job is suspended and its GPUs returned"
            if state == "Suspended"
            else "",
        ),
        Cond(
            "Succeeded",
            "True" if state == "Succeeded" else "False",
            "JobComplete" if state == "Succeeded" else "NotSucceeded",
        ),
        Cond(
            "Failed",
            "True" if state == "Failed" else "False",
            "JobFailed" if state == "Failed" else "NotFailed",
        ),
        _ready(o, state),
    ]
    status: dict[str, Any] = {
        "state": state,
        "gpus": gpus,
        "gpusAllocated": allocated,
        "queuePosition": o.queue_position if state == "Queued" else None,
        "nodes": nodes,
        "nodeList": ",".join(nodes) if nodes else None,
        "jobName": o.job.name if o.job else None,
        "networkPolicy": o.network_policy,
        "admittedAt": o.previous.get("admittedAt"),
        "observedGeneration": o.generation,
        "conditions": merge(o.previous.get("conditions"), conditions, now, o.generation),
    }
    if admitted and o.previous.get("state") not in ("Admitted", "Running"):
        status["admittedAt"] = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return status


def _queued_reason(o: Observed) -> str:
    if o.kueue_queue:
        return "WaitingForKueue"
    return "HeldByBreaker" if o.held_by else "WaitingForGPUs"


def _queued_message(o: Observed, need: str) -> str:
    if o.kueue_queue:
        return (
            f"queued in Kueue's LocalQueue {o.kueue_queue}: Kueue admits it by its "
            "ClusterQueue's quota (kubectl get workloads shows where it stands)"
        )
    if o.held_by:
        return (
            f"the namespace's GPU quota is clamped by tripped Breaker {', '.join(o.held_by)}; "
            "no job of this namespace gets GPUs until an admin resets it"
        )
    return f"position {o.queue_position} of {o.queue_length}; needs {need} free at once"


def _ready(o: Observed, state: str) -> Cond:
    if o.problem is not None:
        reason, message = o.problem
        return Cond("Ready", "False", reason, message)
    if state == "Queued" and (o.held_by or o.kueue_queue):
        return Cond("Ready", "False", _queued_reason(o), _queued_message(o, ""))
    if state == "Running":
        return Cond("Ready", "True", "Running", f"all {o.replicas} replicas are running")
    messages = {
        "Pending": "waiting for the controller",
        "Queued": f"waiting for GPUs: position {o.queue_position} of {o.queue_length}",
        "Admitted": "admitted; waiting for the pods to be scheduled and started",
        "Suspended": "suspended by spec.suspend",
        "Succeeded": "the job completed",
        "Failed": "the job failed",
    }
    return Cond("Ready", "False", state, messages[state])


EventType = Literal["Normal", "Warning"]


def transition_event(
    previous: str | None, state: str, held: bool = False
) -> tuple[EventType, str] | None:
    """(type, reason) of the Event for a change of state, or None when nothing changed.

    A job queued behind a tripped breaker's quota clamp is a Warning: in a contained
    namespace a new job is an attempt to get the GPUs back."""
    if previous == state:
        return None
    if state == "Queued" and held:
        return ("Warning", "HeldByBreaker")
    reasons: dict[str, tuple[EventType, str]] = {
        "Queued": ("Normal", "Queued"),
        "Admitted": ("Normal", "Admitted"),
        "Running": ("Normal", "Running"),
        "Suspended": ("Normal", "Suspended"),
        "Succeeded": ("Normal", "Succeeded"),
        "Failed": ("Warning", "Failed"),
    }
    return reasons.get(state)
