"""Breaker: one live circuit per (policy, guarded workload), written by the operator.

Admins act on it through its spec: an override (ForcedOpen, Disabled) or a reset request.
Everything the operator did is in its status, so a reset can undo exactly that.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import Field

from breaker.api.common import DNS_LABEL, ApiModel, Condition, KubeObject

BreakerState = Literal["Closed", "Open", "HalfOpen", "Locked", "ForcedOpen", "Disabled"]
MAX_EVIDENCE = 20
MAX_HISTORY = 50


class PolicyRef(ApiModel):
    """The policy this breaker enforces."""

    kind: Literal["BreakerPolicy", "ClusterBreakerPolicy"] = Field(description="The policy's kind.")
    name: str = Field(max_length=253, description="The policy's name.")
    namespace: str | None = Field(
        default=None, pattern=DNS_LABEL, max_length=63, description="Its namespace (BreakerPolicy)."
    )


class TargetRef(ApiModel):
    """The guarded workload, in the breaker's namespace."""

    api_version: str = Field(max_length=253, description="The workload's apiVersion.")
    kind: str = Field(max_length=63, description="The workload's kind.")
    name: str = Field(max_length=253, description="The workload's name.")
    uid: str | None = Field(default=None, max_length=64, description="The workload's uid.")


class BreakerSpec(ApiModel):
    """Which policy and workload; the admin's overrides."""

    policy_ref: PolicyRef = Field(description="The policy this breaker enforces.")
    target_ref: TargetRef = Field(description="The guarded workload.")
    override: Literal["ForcedOpen", "Disabled"] | None = Field(
        default=None,
        description=(
            "ForcedOpen: trip now and stay open. Disabled: never evaluate or act. "
            "Remove the field to hand control back to the signals."
        ),
    )
    override_reason: str | None = Field(
        default=None, max_length=1024, description="Why the override was set (shown as REASON)."
    )
    reset: str | None = Field(
        default=None,
        max_length=64,
        description=(
            "Set to a new value (e.g. the current time) to request a reset: the breaker "
            "closes and every action is undone. Same effect as the breaker.dev/reset annotation."
        ),
    )


class SignalEvidence(ApiModel):
    """One signal's reading at a trip."""

    name: str = Field(max_length=63, description="The signal.")
    query: str = Field(max_length=4096, description="The PromQL that was evaluated.")
    value: float = Field(description="The value for this workload's worst pod.")
    pod: str | None = Field(default=None, max_length=253, description="The pod it came from.")
    labels: dict[str, str] | None = Field(
        default=None, description="The series' labels (bounded and escaped)."
    )


class PodEvidence(ApiModel):
    """Where a pod of the workload ran."""

    name: str = Field(max_length=253, description="The pod.")
    node: str | None = Field(default=None, max_length=253, description="Its node.")
    gpus: list[str] | None = Field(default=None, max_length=16, description="GPU UUIDs it used.")


class Evidence(ApiModel):
    """What was seen when the breaker tripped."""

    time: dt.datetime = Field(description="When the evaluation ran.")
    rule: str = Field(max_length=63, description="The trip rule that held.")
    signals: list[SignalEvidence] = Field(
        default_factory=list, max_length=64, description="The signals that fired, with values."
    )
    pods: list[PodEvidence] | None = Field(
        default=None, max_length=256, description="The workload's pods, nodes and GPUs."
    )
    truncated: bool | None = Field(
        default=None, description="Some of it was cut to bound the size."
    )


class ActionRecord(ApiModel):
    """An action taken, with exactly what it changed, so a reset can undo it."""

    type: str = Field(max_length=32, description="The action.")
    applied_at: dt.datetime = Field(description="When it was applied.")
    changed: dict[str, Any] | None = Field(
        default=None, description="What it changed, in the form its undo reads."
    )
    reverted_at: dt.datetime | None = Field(default=None, description="When it was undone.")
    error: str | None = Field(
        default=None, max_length=4096, description="Why it failed, if it did."
    )
    dry_run: bool | None = Field(
        default=None,
        description="The policy is DryRun: this is what would have changed; nothing did.",
    )
    pending: bool | None = Field(
        default=None,
        description=(
            "Decided and recorded, not yet confirmed done: the operator writes this before "
            "acting, so one that restarts in between finishes the action rather than losing it. "
            "A pending record's changed holds only what was counted before acting."
        ),
    )


class Transition(ApiModel):
    """A change of state."""

    time: dt.datetime = Field(description="When.")
    from_: str = Field(alias="from", max_length=16, description="The state before.")
    to: str = Field(max_length=16, description="The state after.")
    reason: str = Field(max_length=1024, description="Why.")


class Reclaim(ApiModel):
    """GPUs owed back after a reset: the queue suspends the job that got them."""

    job: str = Field(max_length=253, description="The TrainingJob (this namespace) owed them.")
    from_: str = Field(
        alias="from", max_length=317, description="namespace/name of the job that got them."
    )


class ExecSession(ApiModel):
    """An exec into a held pod, as the node agent on its node found it."""

    pod: str = Field(max_length=253, description="The pod.")
    node: str = Field(max_length=253, description="Its node.")
    pid: int = Field(ge=0, description="The session's process, on the node.")
    command: str = Field(max_length=128, description="What it runs.")
    started: str = Field(max_length=32, description="When it began.")
    ended: bool = Field(
        default=False,
        description=(
            "Gone: the node agent ended it (revokeEgress.killSessions, begun before the "
            "trip) or it ended by itself."
        ),
    )


class Exposure(ApiModel):
    """What still reaches the held pods past the quarantine, as last seen."""

    services: list[str] | None = Field(
        default=None,
        max_length=32,
        description=(
            "Services of type NodePort or LoadBalancer, or with externalIPs, that select "
            "held pods: `name (type)`. The admission policy refuses new ones."
        ),
    )
    sessions: list[ExecSession] | None = Field(
        default=None,
        max_length=20,
        description=(
            "Exec sessions into held pods (begun before the trip: the admission policy "
            "refuses new ones to tenants). Attach sessions have no process: none lists them."
        ),
    )


class FollowedTarget(ApiModel):
    """A guarded workload deleted and created again under its name."""

    uid: str = Field(max_length=64, description="The uid it had.")
    until: dt.datetime = Field(description="When the breaker saw the new one.")


class BreakerStatus(ApiModel):
    """The circuit's state, its trips and evidence, and what the operator did."""

    state: BreakerState | None = Field(default=None, description="The circuit's state.")
    trips: int | None = Field(default=None, ge=0, description="Trips so far.")
    contained: bool | None = Field(
        default=None, description="Actions are applied and not yet undone (a reset undoes them)."
    )
    signals: Literal["Available", "Unknown"] | None = Field(
        default=None,
        description="Unknown while Prometheus cannot be queried: the state is held, not acted on.",
    )
    dry_run: bool | None = Field(
        default=None, description="The policy is DryRun: transitions are recorded, nothing acted."
    )
    time_to_contain_seconds: float | None = Field(
        default=None,
        ge=0,
        description=(
            "From the evaluation that saw the trip (or the operator seeing a ForcedOpen) to the "
            "last containment action done. Written with the trip's outcome, never before; "
            "cleared when the next trip is written ahead."
        ),
    )
    last_trip: dt.datetime | None = Field(default=None, description="When it last tripped.")
    reason: str | None = Field(default=None, max_length=1024, description="Why it is in its state.")
    cooldown_until: dt.datetime | None = Field(
        default=None, description="When probation may start."
    )
    probation_until: dt.datetime | None = Field(default=None, description="When probation ends.")
    last_evaluation: dt.datetime | None = Field(default=None, description="The latest evaluation.")
    handled_reset: str | None = Field(
        default=None, max_length=64, description="The last reset request carried out."
    )
    last_reset: dt.datetime | None = Field(
        default=None,
        description=(
            "When an admin last reset it. A signal that already held then trips it again "
            "only once its lookback window holds no data from before the reset, or after it "
            "has cleared and holds anew: the evidence of the incident reset is spent."
        ),
    )
    evidence: list[Evidence] | None = Field(
        default=None,
        max_length=MAX_EVIDENCE,
        description="The latest trips' evidence, newest last.",
    )
    actions: list[ActionRecord] | None = Field(
        default=None, max_length=64, description="Actions applied and not yet undone."
    )
    history: list[Transition] | None = Field(
        default=None, max_length=MAX_HISTORY, description="Recent transitions, newest last."
    )
    reclaim: Reclaim | None = Field(
        default=None, description="After a reset, until the job has its GPUs back."
    )
    exposure: Exposure | None = Field(
        default=None,
        description="While it holds: what still reaches the held pods past the quarantine.",
    )
    followed: list[FollowedTarget] | None = Field(
        default=None,
        max_length=10,
        description=(
            "Earlier uids of the guarded workload: the tenant deleted it and created it "
            "again under its name, and the breaker followed (newest last)."
        ),
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation this status reflects."
    )
    conditions: list[Condition] | None = Field(
        default=None,
        description=(
            "Ready, Tripped, SignalsAvailable (Unknown while Prometheus is unreachable) and "
            "Contained: False/InProgress while a trip's actions run, True/Contained once every "
            "one is done, False/ActionsFailed, DryRun, UndoFailed or NotTripped otherwise. "
            "Wait on Contained, not on state Open: see docs/status.md."
        ),
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


class Breaker(KubeObject):
    """A circuit breaker around one workload, made by a policy."""

    kind: str = Field(default="Breaker", description="Breaker")
    spec: BreakerSpec = Field(description="Which policy and workload; the admin's overrides.")
    status: BreakerStatus | None = Field(default=None, description="Written by the operator.")
