"""What a Breaker's status says of containment: one contract for the writer and every reader.

The operator records a trip in two status writes (``docs/status.md`` tells it for people):

1. **Write-ahead**, before any action runs: ``state`` (Open, Locked or ForcedOpen),
   ``trips``, ``lastTrip``, ``reason``, the evidence, and one record per action to take,
   marked ``pending``. A pending record holds only what was counted before acting
   (``reassignGPUs``: ``changed.freed``; ``quarantineNode``: ``changed.nodes``).
   The ``Contained`` condition is False with reason ``InProgress``.
2. **Outcome**, once every action has run: each record either done, with ``changed``
   holding the fields that ``REQUIRED`` names for its type, or failed, with ``error``;
   ``timeToContainSeconds``; the ``Contained`` condition True (``Contained``) or False
   (``ActionsFailed``).

So a reader that wants results waits for the ``Contained`` condition to leave
``InProgress``, never for ``state: Open``: at the first Open the records are intentions.
The operator builds the condition with ``condition()``; the demo, ``kubectl breaker``,
the webhook and the bench read a status with ``read()``. Pure: no API, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

CONDITION = "Contained"

# The Contained condition's reasons: (status, when).
NOT_TRIPPED = "NotTripped"
IN_PROGRESS = "InProgress"
CONTAINED = "Contained"
PROBATION = "Probation"
ACTIONS_FAILED = "ActionsFailed"
DRY_RUN = "DryRun"
UNDO_FAILED = "UndoFailed"
REASONS: Mapping[str, tuple[str, str]] = {
    NOT_TRIPPED: ("False", "Closed or Disabled, and nothing of a trip is still applied"),
    IN_PROGRESS: ("False", "tripped; the actions are written ahead as pending and running"),
    CONTAINED: ("True", "every action of the trip is done (Open, Locked or ForcedOpen)"),
    PROBATION: ("True", "HalfOpen: the workload runs again, its egress is still revoked"),
    ACTIONS_FAILED: ("False", "an action failed; the operator retries it with backoff"),
    DRY_RUN: (
        "False",
        "tripped under a DryRun policy: recorded what would change, changed nothing",
    ),
    UNDO_FAILED: ("False", "a reset or resume could not undo everything; the operator retries"),
}
CONTAINED_STATES = frozenset({"Open", "Locked", "ForcedOpen", "HalfOpen"})

# What a done record's ``changed`` holds, per action type (besides what the undo reads).
REQUIRED: Mapping[str, tuple[str, ...]] = {
    "revokeEgress": ("quarantinePolicy", "pods", "narrowed"),
    "pause": ("kind", "name"),
    "reassignGPUs": ("freed", "quota", "to"),
    "quarantineNode": ("nodes",),
}
# What a pending record's ``changed`` holds (counted before acting); others hold nothing.
PENDING: Mapping[str, tuple[str, ...]] = {
    "reassignGPUs": ("freed",),
    "quarantineNode": ("nodes",),
}
# A done action that found nothing to act on says why instead (the workload was gone).
SKIPPED = "skipped"

Stage = Literal["pending", "done", "failed", "undoFailed"]
Flag = Literal["True", "False"]


class ContractError(ValueError):
    """A status that breaks the contract: a done record without its fields."""


@dataclass(frozen=True)
class EgressRevoked:
    quarantine_policy: str
    pods: tuple[str, ...]
    narrowed: tuple[str, ...]  # the other NetworkPolicies the pods were taken out of
    denies: tuple[str, ...]  # AdminNetworkPolicy and Cilium policy, where served
    # Open connections: nodes whose node agent cuts them, and nodes with none (there they
    # may outlive the quarantine). None: not recorded (an operator before the node agent).
    cut_on: tuple[str, ...] | None = None
    uncut_on: tuple[str, ...] = ()


@dataclass(frozen=True)
class Paused:
    kind: str
    name: str


@dataclass(frozen=True)
class NodeGPUs:
    node: str
    gpus: int


@dataclass(frozen=True)
class GPUsReassigned:
    freed: tuple[NodeGPUs, ...]
    to: tuple[str, ...]  # namespace/name of the job that took them; empty: nobody did
    quotas: tuple[str, ...]  # the tenant's ResourceQuotas holding the clamp
    # Queued jobs waiting for the GPUs while the paused pods still terminate: `to` follows.
    awaiting: tuple[str, ...] = ()


@dataclass(frozen=True)
class NodesQuarantined:
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class Skipped:
    why: str


Detail = EgressRevoked | Paused | GPUsReassigned | NodesQuarantined | Skipped


@dataclass(frozen=True)
class Action:
    """One record of ``status.actions``, read by the contract."""

    type: str
    stage: Stage
    at: str  # appliedAt: when it was decided (pending) or done
    dry_run: bool = False
    detail: Detail | None = None  # done (or DryRun): what it changed
    error: str | None = None
    freed: tuple[NodeGPUs, ...] = ()  # reassignGPUs: counted before acting, pending or not


@dataclass(frozen=True)
class Containment:
    """Where a Breaker's containment stands, as its status records it."""

    reason: str  # one of REASONS
    contained: bool
    message: str
    actions: tuple[Action, ...] = ()
    seconds: float | None = None  # time to contain, once the outcome is written
    observed_generation: int | None = None

    @property
    def settled(self) -> bool:
        """The outcome is written: no action is only decided."""
        return self.reason != IN_PROGRESS

    def of(self, action_type: str) -> Action | None:
        return next((a for a in self.actions if a.type == action_type), None)


# -- the writer's side -------------------------------------------------------------------


def stage(record: Mapping[str, Any]) -> Stage:
    error = str(record.get("error") or "")
    if error.startswith("undo failed"):
        return "undoFailed"
    if error:
        return "failed"
    if record.get("pending"):
        return "pending"
    return "done"


def condition(
    state: str, records: Iterable[Mapping[str, Any]], dry_run: bool
) -> tuple[Flag, str, str]:
    """(status, reason, message) of the Contained condition for what is being written."""
    records = list(records)
    stages = [(str(r.get("type")), stage(r)) for r in records if not r.get("dryRun")]

    def named(wanted: str) -> str:
        return ", ".join(t for t, s in stages if s == wanted)

    if state in CONTAINED_STATES and dry_run:
        return "False", DRY_RUN, "DryRun policy: what would change is recorded, nothing changed"
    if named("undoFailed"):
        return "False", UNDO_FAILED, f"not yet undone: {named('undoFailed')}; retried"
    if state not in CONTAINED_STATES:
        return "False", NOT_TRIPPED, "nothing held"
    if named("pending"):
        return "False", IN_PROGRESS, f"applying: {named('pending')}"
    if named("failed"):
        return "False", ACTIONS_FAILED, f"failed: {named('failed')} (see status.actions); retried"
    done = ", ".join(t for t, _ in stages) or "nothing to apply"
    if state == "HalfOpen":
        return "True", PROBATION, f"on probation; still held: {done}"
    return "True", CONTAINED, f"done: {done}"


# -- the readers' side -------------------------------------------------------------------


def action(record: Mapping[str, Any], index: int = 0) -> Action:
    """One record read by the contract; a done record without its fields is refused."""
    kind, at = str(record.get("type") or "?"), str(record.get("appliedAt") or "")
    changed = record.get("changed") or {}
    if not isinstance(changed, Mapping):
        raise ContractError(f"status.actions[{index}] ({kind}): changed is not an object")
    where = stage(record)
    dry_run = bool(record.get("dryRun"))
    freed = _freed(changed.get("freed"))
    if where != "done":
        return Action(kind, where, at, dry_run, None, record.get("error"), freed)
    if SKIPPED in changed and len(changed) == 1:
        detail: Detail | None = Skipped(str(changed[SKIPPED]))
    else:
        missing = [f for f in REQUIRED.get(kind, ()) if f not in changed]
        if missing:
            raise ContractError(
                f"status.actions[{index}] ({kind}) is done but has no "
                + ", ".join(f"changed.{f}" for f in missing)
            )
        detail = _detail(kind, changed, freed)
    return Action(kind, "done", at, dry_run, detail, None, freed)


def read(status: Mapping[str, Any] | None) -> Containment:
    """A Breaker's status as the contract reads it; the recorded condition is the word
    (an operator older than the condition: derived from the same fields)."""
    status = status or {}
    records = list(status.get("actions") or [])
    actions = tuple(action(r, i) for i, r in enumerate(records))
    recorded = next((c for c in status.get("conditions") or [] if c.get("type") == CONDITION), None)
    if recorded is not None and recorded.get("reason") in REASONS:
        reason, message = str(recorded["reason"]), str(recorded.get("message") or "")
        contained = recorded.get("status") == "True"
        generation = recorded.get("observedGeneration")
    else:
        flag, reason, message = condition(
            str(status.get("state") or "Closed"), records, bool(status.get("dryRun"))
        )
        contained, generation = flag == "True", None
    seconds = status.get("timeToContainSeconds") if reason in (CONTAINED, PROBATION) else None
    return Containment(
        reason,
        contained,
        message,
        actions,
        float(seconds) if isinstance(seconds, int | float) else None,
        int(generation) if isinstance(generation, int) else None,
    )


def describe(item: Action, tenant: str) -> str:
    """One line for people: what an action did, or that it is under way or failed."""
    if item.stage == "pending":
        return f"{item.type}: in progress"
    if item.stage == "failed":
        return f"{item.type} FAILED: {item.error}"
    if item.stage == "undoFailed":
        return f"{item.type}: {item.error}"
    detail = item.detail

    def did(verb: str) -> str:
        return f"would be {verb}" if item.dry_run else verb

    if isinstance(detail, Skipped):
        return f"{item.type}: skipped ({detail.why})"
    if isinstance(detail, EgressRevoked):
        narrowed = ", ".join(detail.narrowed) or "none"
        denies = f"; denied above them by {', '.join(detail.denies)}" if detail.denies else ""
        return (
            f"egress {did('revoked')}: quarantine NetworkPolicy {detail.quarantine_policy} "
            f"({_count(len(detail.pods), 'pod')}); other policies narrowed: {narrowed}{denies}; "
            f"{open_connections(detail)}"
        )
    if isinstance(detail, Paused):
        return f"{detail.kind} {detail.name} {did('suspended')}"
    if isinstance(detail, GPUsReassigned):
        freed = ", ".join(f"{f.node}:{f.gpus}" for f in detail.freed) or "none"
        taken = ", ".join(detail.to) or "nobody (no queued job of another tenant fits)"
        if detail.awaiting and not detail.to:
            taken = (
                f"the queue once the paused pods have gone ({', '.join(detail.awaiting)} waiting)"
            )
        clamp = f"; {tenant}'s GPU quota clamped ({', '.join(detail.quotas)})"
        return f"GPUs ({freed}) {did('handed')} to {taken}{clamp if detail.quotas else ''}"
    if isinstance(detail, NodesQuarantined):
        return f"nodes {did('cordoned and tainted')}: {', '.join(detail.nodes) or 'none'}"
    return f"{item.type} {did('done')}"


def open_connections(detail: EgressRevoked) -> str:
    """Whether the connections the pods had open when they were quarantined were cut."""
    if detail.cut_on is None:
        return "open connections: not recorded"
    said = []
    if detail.cut_on:
        said.append(f"open connections cut by the node agent on {', '.join(detail.cut_on)}")
    if detail.uncut_on:
        said.append(
            f"open connections MAY SURVIVE on {', '.join(detail.uncut_on)} (no node agent "
            "there: a NetworkPolicy stops new connections, not those already open)"
        )
    return "; ".join(said) or "no pods on any node"


def summary(found: Containment, tenant: str) -> list[str]:
    """The outcome in lines: one per action, then the time it took (when done)."""
    lines = [describe(a, tenant) for a in found.actions]
    if found.seconds is not None:
        lines.append(f"contained in {found.seconds:.2f} s (from the evaluation that saw it)")
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _freed(value: Any) -> tuple[NodeGPUs, ...]:
    if not isinstance(value, Sequence):
        return ()
    return tuple(
        NodeGPUs(str(f.get("node")), int(f.get("gpus") or 0))
        for f in value
        if isinstance(f, Mapping)
    )


def _names(value: Any) -> tuple[str, ...]:
    if isinstance(value, Mapping):
        return tuple(str(k) for k in value)
    if isinstance(value, Sequence) and not isinstance(value, str):
        return tuple(str(v) for v in value)
    return ()


def _detail(kind: str, changed: Mapping[str, Any], freed: tuple[NodeGPUs, ...]) -> Detail | None:
    if kind == "revokeEgress":
        denies = tuple(
            str(changed[k]) for k in ("adminNetworkPolicy", "ciliumPolicy") if changed.get(k)
        )
        cover = changed.get("connections")
        cut = _names(cover.get("cut")) if isinstance(cover, Mapping) else None
        uncut = _names(cover.get("uncut")) if isinstance(cover, Mapping) else ()
        return EgressRevoked(
            str(changed["quarantinePolicy"]),
            _names(changed["pods"]),
            _names(changed["narrowed"]),
            denies,
            cut,
            uncut,
        )
    if kind == "pause":
        return Paused(str(changed["kind"]), str(changed["name"]))
    if kind == "reassignGPUs":
        quota = changed.get("quota") or {}
        held = _names(quota.get("held")) if isinstance(quota, Mapping) else ()
        return GPUsReassigned(freed, _names(changed["to"]), held, _names(changed.get("awaiting")))
    if kind == "quarantineNode":
        return NodesQuarantined(_names(changed["nodes"]))
    return None
