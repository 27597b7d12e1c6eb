"""Between the cluster's objects and the state machine. Pure.

Which Breakers should exist, the machine's memory read from and written to a Breaker's
status, a policy's recovery settings, and the reset token an admin sets. The loop in
``controllers/breakers.py`` feeds these from its indexes and writes what they return.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from breaker.api.common import parse_duration
from breaker.api.policy import PolicySpecBase
from breaker.circuit import machine
from breaker.circuit.selection import Policy, Workload, breaker_name, desired_breaker, selects
from breaker.constants import RESET_ANNOTATION

CONTAINED_STATES = frozenset({"Open", "Locked", "ForcedOpen", "HalfOpen"})
PAUSED_STATES = frozenset({"Open", "Locked", "ForcedOpen"})  # HalfOpen runs on probation


def settings_of(spec: PolicySpecBase | None) -> machine.Settings:
    """The machine's settings from a validated policy. A policy the operator could not
    validate (None) acts as DryRun: it records, it never changes anything."""
    if spec is None:
        return machine.Settings(dry_run=True)
    recovery = spec.recovery
    return machine.Settings(
        cooldown=parse_duration(recovery.cooldown),
        cooldown_cap=parse_duration(recovery.cooldown_cap),
        backoff_factor=recovery.backoff_factor,
        probation=parse_duration(recovery.probation),
        max_trips=recovery.max_trips,
        half_open=recovery.mode == "HalfOpen",
        dry_run=spec.mode == "DryRun",
        trip_when_unreachable=spec.prometheus.on_unreachable == "Trip",
    )


def _duration(value: Any, default: dt.timedelta) -> dt.timedelta:
    return parse_duration(value) if value else default


def parse_stamp(value: Any) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def stamp(moment: dt.datetime | None) -> str | None:
    """RFC 3339 in UTC with milliseconds: containment happens within a second."""
    if moment is None:
        return None
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def memory(status: Mapping[str, Any]) -> machine.Breaker:
    """The machine's memory, as the Breaker's status keeps it."""
    return machine.Breaker(
        state=status.get("state") or "Closed",
        trips=int(status.get("trips") or 0),
        last_trip=parse_stamp(status.get("lastTrip")),
        cooldown_until=parse_stamp(status.get("cooldownUntil")),
        probation_until=parse_stamp(status.get("probationUntil")),
        handled_reset=status.get("handledReset"),
        last_reset=parse_stamp(status.get("lastReset")),
        reason=status.get("reason") or "",
        contained=bool(status.get("contained")),
        signals_known=status.get("signals") != "Unknown",
    )


def status_of(breaker: machine.Breaker) -> dict[str, Any]:
    """The status fields the machine owns (None clears a field in a merge patch)."""
    return {
        "state": breaker.state,
        "trips": breaker.trips,
        "lastTrip": stamp(breaker.last_trip),
        "cooldownUntil": stamp(breaker.cooldown_until),
        "probationUntil": stamp(breaker.probation_until),
        "handledReset": breaker.handled_reset,
        "lastReset": stamp(breaker.last_reset),
        "reason": breaker.reason[:1024] or None,
        "contained": breaker.contained,
        "signals": "Available" if breaker.signals_known else "Unknown",
    }


def reset_token(body: Mapping[str, Any]) -> str | None:
    """What the admin set to ask for a reset: spec.reset or the breaker.dev/reset annotation.

    Either one changing is a new request; an unchanged token is one already carried out.
    """
    spec_value = (body.get("spec") or {}).get("reset")
    annotation = ((body.get("metadata") or {}).get("annotations") or {}).get(RESET_ANNOTATION)
    if not spec_value and not annotation:
        return None
    return f"{spec_value or ''}|{annotation or ''}"[:64]


@dataclass(frozen=True)
class BreakerPlan:
    create: tuple[dict[str, Any], ...]
    delete: tuple[tuple[str, str], ...]


def plan_breakers(
    policies: Iterable[Policy],
    workloads: Iterable[Workload],
    namespace_labels: Mapping[str, Mapping[str, str]],
    existing: Mapping[tuple[str, str], Mapping[str, Any]],
    now: dt.datetime,
) -> BreakerPlan:
    """One Breaker per (policy, selected workload); remove those no longer wanted.

    A Breaker that holds a workload contained is never removed here: only an admin's reset
    releases it. One that tripped keeps its evidence until the policy's evidenceRetention
    has passed since its last trip, even when its workload is gone (the tenant must not
    erase the evidence by deleting its job).
    """
    workloads = list(workloads)
    wanted: dict[tuple[str, str], tuple[Policy, Workload]] = {}
    # Cluster policies first: on a clash of plain names the admin's keeps the plain one.
    for policy in sorted(policies, key=lambda p: (p.kind != "ClusterBreakerPolicy", p.name)):
        for workload in workloads:
            if selects(policy, workload, namespace_labels.get(workload.namespace, {})):
                key = (workload.namespace, breaker_name(policy, workload))
                if key in wanted:
                    key = (workload.namespace, breaker_name(policy, workload, unique=True))
                wanted[key] = (policy, workload)
    create = tuple(
        desired_breaker(p, w, key[1]) for key, (p, w) in wanted.items() if key not in existing
    )
    delete = []
    for key, body in existing.items():
        if key in wanted:
            continue
        status = body.get("status") or {}
        if status.get("contained") or status.get("actions"):
            continue  # still holds, or has an undo to finish: kept until it is done
        last_trip = parse_stamp(status.get("lastTrip"))
        if last_trip is not None:
            retention = dt.timedelta(days=30)
            for policy in policies:
                if _policy_ref(policy) == body.get("spec", {}).get("policyRef"):
                    retention = _duration(policy.spec.get("evidenceRetention"), retention)
            if now - last_trip < retention:
                continue  # tripped: the evidence stays, whether or not the workload does
        delete.append(key)
    return BreakerPlan(create, tuple(delete))


def disowned(body: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The ownerReferences a Breaker keeps once its workload's is dropped; None if it has
    none to drop.

    Breakers are never owned by their workload now (``desired_breaker``); earlier versions
    made them so, and the loop drops that reference from every Breaker it finds with one.
    Any other reference (an admin's) stays.
    """
    refs = (body.get("metadata") or {}).get("ownerReferences") or []
    guarded = ((body.get("spec") or {}).get("targetRef") or {}).get("uid")
    kept = [ref for ref in refs if not guarded or ref.get("uid") != guarded]
    return kept if len(kept) < len(refs) else None


def owner_of(body: Mapping[str, Any]) -> str:
    """ "Kind/name" of the workload that still owns a Breaker (see ``disowned``)."""
    guarded = ((body.get("spec") or {}).get("targetRef") or {}).get("uid")
    for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("uid") == guarded:
            return f"{ref.get('kind')}/{ref.get('name')}"
    return "its workload"


def _policy_ref(policy: Policy) -> dict[str, Any]:
    ref: dict[str, Any] = {"kind": policy.kind, "name": policy.name}
    if policy.namespace:
        ref["namespace"] = policy.namespace
    return ref
