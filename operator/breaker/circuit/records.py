"""The action-record protocol: what a Breaker's ``status.actions`` says about each action.

A record is written *before* its action (``pending``, the write-ahead that lets a restarted
operator finish or undo what it had decided), completed once the action is done, marked
with an ``error`` when the API refused it, and with ``undo failed`` when its undo did. These
functions read and build those records; they call nothing, so the controller's crash
points, holds and retries are decided here and tested without a cluster.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

from breaker.circuit import machine, plan
from breaker.circuit.views import WorkloadView
from breaker.detect import engine


def intend(
    records: list[dict[str, Any]],
    order: list[str],
    now: dt.datetime,
    freed: list[dict[str, Any]],
    nodes_changed: Callable[[set[str]], dict[str, Any]],
) -> list[dict[str, Any]]:
    """The records with every action about to be applied marked pending (write-ahead).

    ``freed`` is what a GPU hand-off would free; ``nodes_changed`` says what quarantining
    the named nodes would change. A record whose undo failed is applied again: its pending
    record replaces it, naming the nodes it held too."""
    done = {r["type"] for r in records if not r.get("pending") and not undo_failed(r)}
    stamp = plan.stamp(now)
    intended = [r for r in records if r["type"] in done]
    held = {r["type"]: (r.get("changed") or {}) for r in records if undo_failed(r)}
    for action in order:
        if action in done or action in ("captureEvidence", "notify"):
            continue
        record: dict[str, Any] = {"type": action, "appliedAt": stamp, "pending": True}
        if action == "reassignGPUs":
            record["changed"] = {"freed": freed}
        elif action == "quarantineNode":
            record["changed"] = nodes_changed(set(held.get(action, {}).get("nodes") or {}))
        intended.append(record)
    return intended


def handed(records: list[dict[str, Any]], index: int, got: list[str]) -> list[dict[str, Any]]:
    """The records with the awaited handoff at ``index`` done: handed to ``got``."""
    changed = {k: v for k, v in (records[index].get("changed") or {}).items() if k != "awaiting"}
    updated = [*records]
    updated[index] = {**records[index], "changed": {**changed, "to": got}}
    return updated


def undo_failed(record: Mapping[str, Any]) -> bool:
    return str(record.get("error") or "").startswith("undo failed")


def applied(record: Mapping[str, Any]) -> bool:
    """Carried out and still in place: not pending, not failed, not half undone."""
    return not unfinished(record) and not undo_failed(record)


def unfinished(record: Mapping[str, Any]) -> bool:
    """Decided and not carried out: written ahead of a restart, or failed (an API error).
    A DryRun record and a failed undo are finished as far as applying goes."""
    if record.get("dryRun"):
        return False
    error = str(record.get("error") or "")
    return bool(record.get("pending")) or (bool(error) and not error.startswith("undo failed"))


def failed_undos(records: list[dict[str, Any]], after: machine.Breaker) -> list[dict[str, Any]]:
    """The records whose undo failed and that the breaker's state still wants undone: all
    of them once it is no longer contained; the pause and the handoff in HalfOpen."""
    failed = [r for r in records if undo_failed(r)]
    if after.state == "HalfOpen":
        return [r for r in failed if r["type"] in ("pause", "reassignGPUs")]
    return [] if after.contained else failed


def debt(workload: WorkloadView | None, records: list[dict[str, Any]]) -> dict[str, str] | None:
    """On a reset: the job handed a TrainingJob's GPUs owes them back (read by the queue)."""
    handoff = next(
        (r for r in records if r["type"] == "reassignGPUs" and not r.get("dryRun")), None
    )
    changed = (handoff or {}).get("changed") or {}
    recipients = changed.get("to") or []
    if workload is None or workload.kind != "TrainingJob" or not recipients:
        return None
    if changed.get("by") == "Kueue":
        return None  # Kueue requeues the job by its own rules; the breaker owes nothing back
    return {"job": workload.name, "from": recipients[0]}


def quiet(status: Mapping[str, Any], body: Mapping[str, Any], tripped: bool) -> bool:
    """Nothing can change for this breaker: Closed with its signals read, nothing fired, no
    override, no new reset. (Stepping the machine would confirm it, a thousand times a pass.)"""
    if (
        tripped
        or not status
        or status.get("state") != "Closed"
        or status.get("signals") != "Available"
    ):
        return False
    if body["spec"].get("override") or status.get("actions"):
        return False  # records left on a Closed breaker: undos that failed, to retry
    token = plan.reset_token(body)
    return token is None or token == status.get("handledReset")


def ordered(done: Mapping[str, Any], order: list[str]) -> list[str]:
    return [a for a in order if a in done] + [a for a in done if a not in order]


def reason(decision: engine.Decision) -> str:
    """What tripped, for the machine's reason: the rule and up to six signals' values."""
    fired = ", ".join(f"{f.signal}={f.value:.3g}" for f in decision.signals[:6])
    return f"{decision.rule}: {fired}"


def event_message(after: machine.Breaker, records: list[dict[str, Any]], dry_run: bool) -> str:
    done = ", ".join(r["type"] for r in records if not r.get("error"))
    failed = ", ".join(r["type"] for r in records if r.get("error"))
    message = after.reason or after.state
    if done:
        message += f"; {'would have applied' if dry_run else 'applied'}: {done}"
    if failed:
        message += f"; FAILED: {failed} (see status.actions)"
    if dry_run:
        message += " (DryRun: nothing was changed)"
    return message
