"""BreakerPolicy and ClusterBreakerPolicy: what to watch, when to trip, and what to do."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, field_validator
from pydantic.config import JsonDict

from breaker.api.common import (
    DNS_LABEL,
    ApiModel,
    Condition,
    Duration,
    KubeObject,
    LabelSelector,
    defaults_of,
    parse_duration,
)

SignalName = Annotated[str, Field(pattern=DNS_LABEL, max_length=63)]

WorkloadKind = Literal[
    "TrainingJob",
    "Job",
    "JobSet",
    "PyTorchJob",
    "TFJob",
    "MPIJob",
    "XGBoostJob",
    "PaddleJob",
    "JAXJob",
    "TrainJob",
    "RayJob",
    "RayCluster",
    "Deployment",
    "StatefulSet",
]

# The built-in signal library (DESIGN.md, "Signals the preset library must cover").
PresetName = Literal[
    "gpu-mining-profile",
    "gpu-mining-duty",
    "tensor-collapse",
    "gpu-busy-no-progress",
    "unallocated-gpu-activity",
    "mining-pool-egress",
    "outbound-ssh",
    "scan-fanout",
    "policy-drops",
    "dns-tunnel",
    "dns-tunnel-persistent",
    "egress-spike",
    "falco-rule-hits",
]

Operator = Literal[">", ">=", "<", "<=", "==", "!="]
Severity = Literal["info", "warning", "critical"]
ActionType = Literal[
    "captureEvidence", "revokeEgress", "pause", "reassignGPUs", "quarantineNode", "notify"
]


class Targets(ApiModel):
    """Which workloads the policy guards, in the policy's own namespace."""

    kinds: list[WorkloadKind] = Field(
        default_factory=lambda: list[WorkloadKind](["TrainingJob"]),
        min_length=1,
        max_length=16,
        description="Kinds of workload to guard (TrainingJob, Job, JobSet, Kubeflow jobs, ...).",
        json_schema_extra={"default": ["TrainingJob"], "x-kubernetes-list-type": "set"},
    )
    selector: LabelSelector | None = Field(
        default=None, description="Labels the workloads must carry; unset selects every workload."
    )


class ClusterTargets(Targets):
    """Which workloads the policy guards, across the namespaces it selects."""

    namespace_selector: LabelSelector | None = Field(
        default=None,
        description="Namespaces whose workloads are guarded; unset selects every namespace.",
    )


class SeriesLabels(ApiModel):
    """Which labels of a query's result name the pod (exporters differ)."""

    namespace: str = Field(
        default="namespace",
        max_length=63,
        description=(
            "The label holding the pod's namespace: namespace (DCGM, cAdvisor), "
            "source_namespace (Hubble), k8s_ns_name (falcosidekick)."
        ),
    )
    pod: str = Field(
        default="pod",
        max_length=63,
        description="The label holding the pod's name: pod, source_pod or k8s_pod_name.",
    )


class Condition_(ApiModel):
    """When a signal's value counts as firing."""

    operator: Operator = Field(description="How the value compares: >, >=, <, <=, == or !=.")
    threshold: float = Field(description="The value compared against.")


class Signal(ApiModel):
    """A named detection: a preset from the library, or a PromQL query of your own."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.preset) != has(self.query)",
                    "message": "set exactly one of preset and query",
                },
                {
                    "rule": "!has(self.params) || has(self.preset)",
                    "message": "params apply to presets only; write them into a custom query",
                    "fieldPath": ".params",
                },
            ]
        }
    )

    name: SignalName = Field(description="Unique name, used by trip rules and in evidence.")
    preset: PresetName | None = Field(
        default=None, description="A detection from the built-in signal library."
    )
    params: dict[str, str] | None = Field(
        default=None, description="Overrides of the preset's parameters, by name."
    )
    query: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description=(
            "A PromQL instant query returning one series per pod, labelled with its namespace "
            "and pod (see labels). It is evaluated once per tick for every guarded pod."
        ),
    )
    labels: SeriesLabels = Field(
        default_factory=SeriesLabels,
        description="Which labels of the result name the namespace and the pod.",
        json_schema_extra=defaults_of(SeriesLabels),
    )
    condition: Condition_ | None = Field(
        default=None,
        description="When the value fires; default: the preset's, or > 0 for a custom query.",
    )
    for_: Duration = Field(
        default="0s",
        alias="for",
        description="How long the condition must hold before the signal fires.",
    )
    severity: Severity = Field(
        default="warning",
        description=(
            "info, warning or critical; with trip.anyCritical, a critical signal trips alone."
        ),
    )


class TripRule(ApiModel):
    """Signals that trip the breaker together (allOf) or alone (anyOf)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.allOf) != has(self.anyOf)",
                    "message": "set exactly one of allOf and anyOf",
                }
            ]
        }
    )

    name: SignalName = Field(description="The rule's name, recorded as the trip reason.")
    all_of: list[SignalName] | None = Field(
        default=None,
        min_length=1,
        max_length=8,
        description="Trips when every one of these signals fires at once.",
    )
    any_of: list[SignalName] | None = Field(
        default=None,
        min_length=1,
        max_length=8,
        description="Trips when any one of these signals fires.",
    )


class Trip(ApiModel):
    """How signals combine into a trip."""

    any_critical: bool = Field(
        default=True, description="Any critical signal trips the breaker on its own."
    )
    rules: list[TripRule] | None = Field(
        default=None,
        max_length=16,
        description="Further combinations; weak signals can trip only together.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )


class ServiceRef(ApiModel):
    """An in-cluster Service."""

    namespace: str = Field(pattern=DNS_LABEL, max_length=63, description="Its namespace.")
    name: str = Field(pattern=DNS_LABEL, max_length=63, description="Its name.")


class ScrapeSource(ApiModel):
    """Who may still reach a quarantined pod: a namespace's pods (an in-cluster Prometheus)
    or an address range (one that runs off the cluster)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.namespace) != has(self.cidr)",
                    "message": "give either namespace or cidr, not both",
                }
            ]
        }
    )

    namespace: str | None = Field(
        default=None,
        pattern=DNS_LABEL,
        max_length=63,
        description="Pods of this namespace (e.g. monitoring) may reach the quarantined pods.",
    )
    cidr: str | None = Field(
        default=None,
        max_length=43,
        description="Addresses in CIDR notation (e.g. 10.250.0.0/16) that may reach them.",
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "isCIDR(self)", "message": "must be a CIDR such as 10.250.0.0/16"}
            ]
        },
    )
    ports: list[Annotated[int, Field(ge=1, le=65535)]] | None = Field(
        default=None,
        max_length=8,
        description="The pods' TCP ports they may reach (their metrics ports); none: any.",
    )

    @field_validator("cidr")
    @classmethod
    def _a_cidr(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"{value!r} is not a CIDR such as 10.250.0.0/16") from None
        return value


class RevokeEgressAction(ApiModel):
    """Settings of revokeEgress: the quarantine cuts the pods off both ways."""

    allow_dns: bool = Field(
        default=True, alias="allowDNS", description="Keep DNS reachable while revoked."
    )
    allow_services: list[ServiceRef] | None = Field(
        default=None,
        max_length=16,
        description="In-cluster Services the pods may still reach (e.g. a checkpoint store).",
    )
    allow_scrape_from: list[ScrapeSource] | None = Field(
        default=None,
        max_length=8,
        description=(
            "Who may still reach the quarantined pods, so that their metrics keep coming as "
            "evidence: every other connection to them is refused and, where the node agent "
            "runs, cut. The node's own probes always get in."
        ),
    )
    kill_sessions: bool = Field(
        default=False,
        description=(
            "End the exec sessions into the pods that began before the trip (the node agent "
            "kills their processes). Either way they are listed in the Breaker's status."
        ),
    )


class SecretKeyRef(ApiModel):
    """A key of a Secret in the operator's or the policy's namespace."""

    name: str = Field(pattern=DNS_LABEL, max_length=253, description="The Secret's name.")
    key: str = Field(min_length=1, max_length=253, description="The key within it.")


class NotifyAction(ApiModel):
    """Settings of notify."""

    url: str = Field(
        max_length=2048,
        pattern=r"^https?://",
        description="Webhook URL that receives a JSON description of each transition.",
    )
    secret_ref: SecretKeyRef | None = Field(
        default=None,
        description=(
            "A Secret key whose value is sent as `Authorization: Bearer <value>`; the Secret "
            "is read from the policy's namespace (a ClusterBreakerPolicy: the operator's)."
        ),
    )


class QuarantineNodeAction(ApiModel):
    """Settings of quarantineNode."""

    cordon: bool = Field(default=True, description="Mark the node unschedulable.")
    taint: bool = Field(
        default=True, description="Add the NoSchedule taint breaker.dev/quarantined."
    )


class Action(ApiModel):
    """One step of the escalation, applied in order."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.type == 'notify' ? has(self.notify) : !has(self.notify)",
                    "message": "notify settings go with type notify, and type notify needs them",
                },
                {
                    "rule": "!has(self.revokeEgress) || self.type == 'revokeEgress'",
                    "message": "revokeEgress settings go with type revokeEgress only",
                },
                {
                    "rule": "!has(self.quarantineNode) || self.type == 'quarantineNode'",
                    "message": "quarantineNode settings go with type quarantineNode only",
                },
            ]
        }
    )

    type: ActionType = Field(
        description=(
            "captureEvidence, revokeEgress, pause, reassignGPUs, quarantineNode or notify."
        )
    )
    revoke_egress: RevokeEgressAction | None = Field(
        default=None, description="Settings when type is revokeEgress."
    )
    notify: NotifyAction | None = Field(default=None, description="Settings when type is notify.")
    quarantine_node: QuarantineNodeAction | None = Field(
        default=None, description="Settings when type is quarantineNode."
    )


def _default_actions() -> list[Action]:
    return [
        Action(type="captureEvidence"),
        Action(type="revokeEgress"),
        Action(type="pause"),
        Action(type="reassignGPUs"),
    ]


class Recovery(ApiModel):
    """What happens after a trip."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "duration(self.cooldownCap) >= duration(self.cooldown)",
                    "message": "cooldownCap must not be below cooldown",
                    "fieldPath": ".cooldownCap",
                }
            ]
        }
    )

    mode: Literal["Manual", "HalfOpen"] = Field(
        default="Manual",
        description="Manual: only an admin resets. HalfOpen: probation after the cooldown.",
    )
    cooldown: Duration = Field(default="10m", description="Time open before the first probation.")
    cooldown_cap: Duration = Field(
        default="6h", description="The longest cooldown, however many trips."
    )
    backoff_factor: float = Field(
        default=2.0, ge=1.0, le=10.0, description="Each trip multiplies the cooldown by this."
    )
    probation: Duration = Field(
        default="10m", description="How long a half-open workload must stay clean to close."
    )
    max_trips: int = Field(
        default=3,
        ge=1,
        le=100,
        description="Trips after which the breaker locks until an admin resets it.",
    )


HEADER_NAME = re.compile(r"[A-Za-z0-9-]{1,64}")
RESERVED_HEADERS = ("authorization", "host")
HEADERS_RULE = (
    "self.all(k, k.matches('^[A-Za-z0-9-]{1,64}$') && "
    "!(k.lowerAscii() in ['authorization', 'host']) && !k.lowerAscii().startsWith('content-'))"
)


class PrometheusTLS(ApiModel):
    """The server certificate check of an https Prometheus."""

    ca_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description=(
            "A Secret key holding the PEM CA bundle that signs the server's certificate "
            "(the system's CAs otherwise); read from the policy's namespace (a "
            "ClusterBreakerPolicy: the operator's)."
        ),
    )
    server_name: str | None = Field(
        default=None,
        max_length=253,
        description="The name the certificate must carry, when it is not the URL's host.",
    )
    insecure_skip_verify: bool = Field(
        default=False,
        description="Accept any certificate. Only for a trial: a query's answer decides trips.",
    )


class PrometheusSettings(ApiModel):
    """Where the signals come from and what an outage means."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.interval) || duration(self.interval) >= duration('1s')",
                    "message": "interval must be at least 1s",
                    "fieldPath": ".interval",
                },
                {
                    "rule": "!has(self.timeout) || duration(self.timeout) > duration('0s')",
                    "message": "timeout must be more than 0s",
                    "fieldPath": ".timeout",
                },
            ]
        }
    )

    url: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https?://",
        description="Prometheus (or Thanos/Mimir query) URL; default: the operator's.",
    )
    timeout: Duration = Field(default="5s", description="Per-query timeout.")
    interval: Duration = Field(default="15s", description="How often the signals are evaluated.")
    on_unreachable: Literal["Hold", "Trip"] = Field(
        default="Hold",
        description=(
            "Hold keeps each breaker's state and reports Unknown; Trip treats silence as a trip."
        ),
    )
    partial_response: bool = Field(
        default=False,
        description=(
            "Thanos: ask for answers from the stores that answered (a warning names the "
            "others). Off (the default) asks for an error instead, which holds every breaker "
            "of the policy. An answer that comes back partial anyway (Thanos does, when a "
            "replica or every store is down) is never read as whole: the pods missing from it "
            "are read as Unknown, their `for` clocks kept, and the policy's status says so."
        ),
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        max_length=16,
        description=(
            "HTTP headers sent with every query, e.g. `X-Scope-OrgID` for a Mimir or Cortex "
            "tenant. Not Authorization (`bearerTokenSecretRef`), Host or Content-*."
        ),
        json_schema_extra={
            "maxProperties": 16,
            "additionalProperties": {"type": "string", "maxLength": 1024},
            "x-kubernetes-validations": [
                {
                    "rule": HEADERS_RULE,
                    "message": "a header's name is letters, digits and '-' (at most 64), and "
                    "not Authorization (use bearerTokenSecretRef), Host or Content-*",
                },
                {
                    "rule": "self.all(k, !self[k].contains('\\n') && !self[k].contains('\\r'))",
                    "message": "a header's value is one line",
                },
            ],
        },
    )
    bearer_token_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description=(
            "A Secret key sent as `Authorization: Bearer <value>`; read from the policy's "
            "namespace (a ClusterBreakerPolicy: the operator's), again every few minutes."
        ),
    )
    tls: PrometheusTLS = Field(
        default_factory=lambda: PrometheusTLS(),
        description="How an https URL's certificate is checked: verified by default.",
        json_schema_extra={"default": {}},
    )

    @field_validator("interval")
    @classmethod
    def _interval(cls, value: str) -> str:
        if parse_duration(value).total_seconds() < 1:
            raise ValueError(f"interval {value!r}: must be at least 1s")
        return value

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: str) -> str:
        if parse_duration(value).total_seconds() <= 0:
            raise ValueError(f"timeout {value!r}: must be more than 0s")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if (
                not HEADER_NAME.fullmatch(name)
                or name.lower() in RESERVED_HEADERS
                or (name.lower().startswith("content-"))
            ):
                raise ValueError(
                    f"header {name!r}: a name is letters, digits and '-' (at most 64), and not "
                    "Authorization (use bearerTokenSecretRef), Host or Content-*"
                )
            if "\n" in text or "\r" in text or len(text) > 1024:
                raise ValueError(f"header {name!r}: the value must be one line of at most 1024")
        return value


TRIP_RULES_NAME_SIGNALS: JsonDict = {
    "rule": "!has(self.trip) || !has(self.trip.rules) || self.trip.rules.all(r, "
    "(has(r.allOf) ? r.allOf : r.anyOf).all(n, "
    "self.signals.exists(s, s.name == n)))",
    "message": "every signal a trip rule names in allOf or anyOf must be defined in spec.signals",
    "fieldPath": ".trip.rules",
    "reason": "FieldValueInvalid",
}


class PolicySpecBase(ApiModel):
    """The parts common to both policy kinds."""

    model_config = ConfigDict(
        json_schema_extra={"x-kubernetes-validations": [TRIP_RULES_NAME_SIGNALS]}
    )

    signals: list[Signal] = Field(
        min_length=1,
        max_length=32,
        description="The named detections; at least one, at most 32.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    trip: Trip = Field(
        default_factory=Trip,
        description="How the signals combine into a trip.",
        json_schema_extra=defaults_of(Trip),
    )
    actions: list[Action] = Field(
        default_factory=_default_actions,
        max_length=6,
        description=(
            "The escalation, in order. Default: captureEvidence, revokeEgress, pause, reassignGPUs."
        ),
        json_schema_extra={
            "default": [
                {"type": t} for t in ("captureEvidence", "revokeEgress", "pause", "reassignGPUs")
            ],
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    recovery: Recovery = Field(
        default_factory=Recovery,
        description="Cooldown, probation and the trip limit.",
        json_schema_extra=defaults_of(Recovery),
    )
    mode: Literal["Enforce", "DryRun"] = Field(
        default="DryRun",
        description="Enforce acts; DryRun (the default) evaluates and records what it would do.",
    )
    prometheus: PrometheusSettings = Field(
        default_factory=PrometheusSettings,
        description="Where the signals come from.",
        json_schema_extra=defaults_of(PrometheusSettings),
    )
    evidence_retention: Duration = Field(
        default="720h",
        description="How long a tripped Breaker, with its evidence, outlives its workload.",
    )


class BreakerPolicySpec(PolicySpecBase):
    """A policy for workloads in its own namespace."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                TRIP_RULES_NAME_SIGNALS,
                {
                    # Nodes are shared by every namespace: a namespaced policy must not
                    # cordon them.
                    "rule": "!has(self.actions) || !self.actions.exists(a, "
                    "a.type == 'quarantineNode')",
                    "message": "quarantineNode acts on shared nodes: use it in a "
                    "ClusterBreakerPolicy",
                    "fieldPath": ".actions",
                    "reason": "FieldValueForbidden",
                },
            ]
        }
    )

    targets: Targets = Field(
        default_factory=Targets,
        description="The workloads guarded, in this namespace only.",
        json_schema_extra=defaults_of(Targets),
    )


class ClusterBreakerPolicySpec(PolicySpecBase):
    """A policy for workloads across namespaces."""

    targets: ClusterTargets = Field(
        default_factory=ClusterTargets,
        description="The workloads guarded, in the namespaces selected.",
        json_schema_extra=defaults_of(ClusterTargets),
    )


class Tally(ApiModel):
    """A policy's Breakers as one operator shard counts them."""

    breakers: int = Field(ge=0, description="Breakers of the policy in the shard's namespaces.")
    open: int = Field(ge=0, description="Of them, how many are not Closed.")
    unknown: int = Field(ge=0, description="Of them, how many cannot read their signals now.")
    incomplete: str | None = Field(
        default=None,
        max_length=1024,
        description="Set while this shard's last evaluation's answers were partial.",
    )


class PolicyStatus(ApiModel):
    """What the operator made of the policy."""

    breakers: int | None = Field(default=None, ge=0, description="Breakers the policy has made.")
    open: int | None = Field(default=None, ge=0, description="Of them, how many are not Closed.")
    unknown: int | None = Field(
        default=None, ge=0, description="Of them, how many cannot read their signals now."
    )
    shards: dict[str, Tally] | None = Field(
        default=None,
        description=(
            "With the operator sharded by namespace: each shard's count, by shard name; "
            "the totals above are their sum."
        ),
    )
    incomplete: str | None = Field(
        default=None,
        max_length=1024,
        description=(
            "Set while the last evaluation's answers were partial (partialResponse: a store "
            "behind the query did not answer): the signals, and the server's warning. The "
            "pods missing from them are read as Unknown, their clocks kept. Sharded: each "
            "shard's note, by shard name."
        ),
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation this status reflects."
    )
    conditions: list[Condition] | None = Field(
        default=None,
        description="Ready: the policy is valid and in use; False with the reason when not.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


class BreakerPolicy(KubeObject):
    """A breaker policy for the workloads of one namespace."""

    kind: str = Field(default="BreakerPolicy", description="BreakerPolicy")
    spec: BreakerPolicySpec = Field(description="What to watch and what to do.")
    status: PolicyStatus | None = Field(default=None, description="Written by the operator.")


class ClusterBreakerPolicy(KubeObject):
    """A breaker policy for workloads across the namespaces it selects."""

    kind: str = Field(default="ClusterBreakerPolicy", description="ClusterBreakerPolicy")
    spec: ClusterBreakerPolicySpec = Field(description="What to watch and what to do.")
    status: PolicyStatus | None = Field(default=None, description="Written by the operator.")
