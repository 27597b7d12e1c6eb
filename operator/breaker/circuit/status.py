"""A Breaker's status as the controller writes it: the machine's memory, the action
records, the history of transitions and the conditions readers wait on. Pure: the
controller passes in what Prometheus said and the time, and writes what comes out."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from breaker.api import containment
from breaker.api.conditions import Cond, find, kept, merge
from breaker.circuit import machine, plan

HISTORY = 50  # transitions kept in status.history
OWNED = "Owned"  # set only while an earlier version's ownerReference could not be dropped


def signals_unknown(error: str | None) -> Cond:
    """The SignalsAvailable condition when Prometheus could not be read; ``error`` is the
    last evaluation's first failure, "Kind: message"."""
    kind, _, detail = (error or "Unreachable: ").partition(": ")
    message = "signals cannot be read: the state is held and nothing is acted on"
    return Cond(
        "SignalsAvailable",
        "Unknown",
        f"Prometheus{kind}",
        f"{message}. {detail}"[:1024] if detail else message,
    )


def wanted(
    body: Mapping[str, Any],
    status: Mapping[str, Any],
    after: machine.Breaker,
    records: list[dict[str, Any]],
    settings: machine.Settings,
    now: dt.datetime,
    unknown: Cond,
    extra: Mapping[str, Any] | None = None,
    transition: machine.Transition | None = None,
) -> dict[str, Any]:
    """The status fields to write (None: remove the field). ``unknown`` is the condition
    to show while signals cannot be read."""
    found: dict[str, Any] = {**plan.status_of(after), **(extra or {})}
    found["actions"] = records or None
    found["dryRun"] = settings.dry_run or None
    found["observedGeneration"] = body["metadata"].get("generation")
    if transition is not None and transition.changed:
        history = list(status.get("history") or [])
        history.append(
            {
                "time": plan.stamp(now),
                "from": transition.before.state,
                "to": after.state,
                "reason": after.reason[:1024] or after.state,
            }
        )
        found["history"] = history[-HISTORY:]
    tripped = after.state in plan.CONTAINED_STATES
    found["conditions"] = merge(
        status.get("conditions"),
        [
            Cond("Ready", "True", "Guarding", "the breaker evaluates its policy's signals")
            if after.state != "Disabled"
            else Cond("Ready", "False", "Disabled", "disabled by an admin"),
            Cond(
                "Tripped",
                "True" if tripped else "False",
                after.state if tripped else "Closed",
                after.reason or after.state,
            ),
            Cond("SignalsAvailable", "True", "QueriesAnswered", "every signal was read")
            if after.signals_known
            else unknown,
            # What readers wait on: never the first Open, whose records are intentions.
            Cond(
                containment.CONDITION,
                *containment.condition(after.state, records, settings.dry_run),
            ),
            *still_owned(body, status),
        ],
        now,
        body["metadata"].get("generation"),
    )
    return found


def owned(body: Mapping[str, Any], problem: str) -> Cond:
    """The Owned condition while dropping the workload's ownerReference fails."""
    meta = body.get("metadata") or {}
    unowned = '{"metadata":{"ownerReferences":null}}'
    return Cond(
        OWNED,
        "True",
        "ReleaseFailed",
        f"owned by {plan.owner_of(body)} (an earlier version made it so): deleting that "
        f"workload would delete this Breaker and its evidence. Dropping the reference "
        f"failed ({problem}); the operator retries. By hand: kubectl -n "
        f"{meta.get('namespace')} patch breaker {meta.get('name')} --type=merge "
        f"-p '{unowned}'"[:1024],
    )


def still_owned(body: Mapping[str, Any], status: Mapping[str, Any]) -> list[Cond]:
    """The Owned condition to keep writing: while the reference it is about is there."""
    found = find(status.get("conditions"), OWNED)
    return [kept(found)] if found is not None and plan.disowned(body) is not None else []


def merged(status: Mapping[str, Any], found: Mapping[str, Any]) -> dict[str, Any]:
    """The status as it stands once ``found`` is written (a merge patch: None removes)."""
    return {k: v for k, v in {**status, **found}.items() if v is not None}
