"""The GPU queue: which TrainingJobs to admit, given what the nodes have free. Pure.

A job is admitted only when every one of its replicas fits on some node at once (gang
admission): a replica needs ``gpus_per_replica`` GPUs on a single node. Jobs are
considered by priority (higher first), then age (older first); a job that does not fit
does not hold back a smaller one behind it that does (backfill), so GPUs never sit idle
while something in the queue could use them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

Key = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class Demand:
    """A TrainingJob as the queue sees it."""

    key: Key
    priority: int
    created: dt.datetime
    replicas: int
    gpus_per_replica: int
    admitted: bool  # its Job is unsuspended
    wants_gpus: bool  # not suspended, not finished, spec valid
    bound_replicas: int = 0  # replicas whose pods the scheduler has bound
    first: bool = False  # a breaker reset gives it back the GPUs it handed on: ahead of all

    @property
    def gpus(self) -> int:
        return self.replicas * self.gpus_per_replica

    def order(self) -> tuple[bool, int, dt.datetime, str, str]:
        return (not self.first, -self.priority, self.created, self.key[0], self.key[1])


@dataclass(frozen=True)
class Plan:
    admit: tuple[Key, ...] = ()
    release: tuple[Key, ...] = ()  # admitted jobs that no longer want GPUs: suspend their Job
    queued: tuple[Key, ...] = ()  # waiting, in order: position = index + 1
    free_after: Mapping[str, int] = field(default_factory=dict)


def place(replicas: int, per_replica: int, free: Mapping[str, int]) -> dict[str, int] | None:
    """Where ``replicas`` replicas of ``per_replica`` GPUs each would go, or None.

    Best fit: each replica takes the node with the least free GPUs that still holds it,
    keeping large free blocks for large replicas.
    """
    remaining = dict(free)
    placement: dict[str, int] = {}
    for _ in range(replicas):
        candidates = [(gpus, node) for node, gpus in remaining.items() if gpus >= per_replica]
        if not candidates:
            return None
        _, node = min(candidates)
        remaining[node] -= per_replica
        placement[node] = placement.get(node, 0) + per_replica
    return placement


def subtract(free: Mapping[str, int], placement: Mapping[str, int]) -> dict[str, int]:
    return {node: gpus - placement.get(node, 0) for node, gpus in free.items()}


def free_gpus(allocatable: Mapping[str, int], bound: Iterable[tuple[str, int]]) -> dict[str, int]:
    """Free GPUs per schedulable node: allocatable minus what pods bound there request."""
    free = dict(allocatable)
    for node, gpus in bound:
        if node in free:
            free[node] -= gpus
    return {node: max(0, gpus) for node, gpus in free.items()}


def plan(
    demands: Iterable[Demand],
    free: Mapping[str, int],
    quota_room: Mapping[str, int] | None = None,
) -> Plan:
    """Decide admissions. ``free`` already excludes the GPUs of every bound pod.

    ``quota_room`` is what each namespace's GPU ResourceQuota still allows (absent: no
    limit). A job its quota cannot hold waits: admitting it would leave its pods refused
    by the API server and the queue stalled behind them.

    One job is admitted at a time: while an admitted job's pods are not all bound, nothing
    else is. The next decision then reads the nodes as the scheduler left them, and since
    a job's replicas are all the same size, whichever nodes the scheduler picks for them,
    they fit wherever ``place`` found room (each replica uses up exactly one slot).
    """
    demands = sorted(demands, key=Demand.order)
    placing = any(d.admitted and d.wants_gpus and d.bound_replicas < d.replicas for d in demands)
    remaining = dict(free)
    room = dict(quota_room or {})
    admit: list[Key] = []
    queued: list[Key] = []
    for demand in demands:
        if demand.admitted or not demand.wants_gpus:
            continue
        namespace = demand.key[0]
        within_quota = namespace not in room or demand.gpus <= room[namespace]
        placement = (
            None
            if placing or not within_quota
            else place(demand.replicas, demand.gpus_per_replica, remaining)
        )
        if placement is None:
            queued.append(demand.key)
        else:
            admit.append(demand.key)
            remaining = subtract(remaining, placement)
            if namespace in room:
                room[namespace] -= demand.gpus
            placing = True
    release = [d.key for d in demands if d.admitted and not d.wants_gpus]
    return Plan(tuple(admit), tuple(release), tuple(queued), remaining)


def never_fits(demand: Demand, allocatable: Mapping[str, int]) -> str | None:
    """Why the job cannot run on this cluster even when it is empty, or None."""
    largest = max(allocatable.values(), default=0)
    if demand.gpus_per_replica > largest:
        return (
            f"each replica needs {demand.gpus_per_replica} nvidia.com/gpu on one node, but the "
            f"largest node has {largest}"
        )
    if place(demand.replicas, demand.gpus_per_replica, allocatable) is None:
        total = sum(allocatable.values())
        return (
            f"{demand.replicas} replicas of {demand.gpus_per_replica} nvidia.com/gpu do not fit "
            f"on this cluster's nodes even when empty ({total} GPUs in all)"
        )
    return None


def admitted_since(bodies: Iterable[Mapping[str, object]], moment: dt.datetime) -> list[Key]:
    """TrainingJobs whose status says they were admitted at or after ``moment``, to the
    second as ``admittedAt`` is written: how an operator that does not run the queue (or
    has just restarted) learns whom the queue handed GPUs to."""
    since = moment.replace(microsecond=0)
    found = []
    for body in bodies:
        meta = body.get("metadata")
        status = body.get("status")
        if not isinstance(meta, Mapping) or not isinstance(status, Mapping):
            continue
        at = status.get("admittedAt")
        if status.get("state") not in ("Admitted", "Running") or not isinstance(at, str):
            continue
        if dt.datetime.fromisoformat(at.replace("Z", "+00:00")) >= since:
            found.append((str(meta.get("namespace")), str(meta.get("name"))))
    return sorted(found)


def waiting(bodies: Iterable[Mapping[str, object]]) -> list[Key]:
    """TrainingJobs whose status says they wait in the queue for GPUs."""
    found = []
    for body in bodies:
        meta = body.get("metadata")
        status = body.get("status")
        if (
            isinstance(meta, Mapping)
            and isinstance(status, Mapping)
            and status.get("state") == "Queued"
        ):
            found.append((str(meta.get("namespace")), str(meta.get("name"))))
    return sorted(found)
