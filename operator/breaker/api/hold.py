"""BreakerHold: what the breakers of one namespace hold contained, for the admission policy.

The operator keeps one, named ``breaker-containment``, in each namespace where a breaker
holds containment, and deletes it when nothing is held there any more. The chart's
ValidatingAdmissionPolicy ``breaker-containment-params`` reads it as its params: what a
request does not carry (``actions/admission.py``). It is a custom resource rather than a
ConfigMap because the API server stops following a built-in params kind for good once no
binding names it (deleting the binding is enough; only an API server restart brings it
back), and then judges requests by what it last saw: a chart that turned the policy off and
on again would have refused nothing new. A custom params kind is not affected.
"""

from __future__ import annotations

from pydantic import Field

from breaker.api.common import ApiModel, KubeObject


class KinRule(ApiModel):
    """What makes a new pod of this namespace a held workload's own: born quarantined."""

    breaker: str = Field(max_length=253, description="The Breaker that holds the workload.")
    labels: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Labels every pod of the held workload carries: a new pod carrying all of "
            "them is its kin (none: no pod is kin by its labels)."
        ),
    )
    service_account: str | None = Field(
        default=None,
        max_length=253,
        description=(
            "The workload's ServiceAccount (never default): a new pod running as it is kin."
        ),
    )
    kept: str = Field(
        max_length=65536,
        description=(
            "The breaker.dev/egress-kept annotation a kin pod is born with: what the node "
            "agent leaves open of its connections."
        ),
    )


class BreakerHoldSpec(ApiModel):
    """What the breakers of this namespace hold contained."""

    breakers: list[str] = Field(
        min_length=1,
        description="The Breakers holding containment in this namespace, sorted by name.",
    )
    pods: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Each quarantined pod, and the Breaker whose quarantine it is in: exec, attach "
            "and port-forward to it are refused."
        ),
    )
    scaled: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Each Deployment or StatefulSet a breaker paused by scaling it to zero "
            "(deployments/NAME, statefulsets/NAME), and that Breaker: its scale subresource "
            "may not scale it up."
        ),
    )
    pausing: list[str] = Field(
        default_factory=list,
        description=(
            "The Breakers whose pause is applied: their held pods may be deleted (the "
            "workload's controller ends them as the pause takes effect)."
        ),
    )
    workloads: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Each held workload (its resource and name, e.g. deployments/NAME), and its "
            "Breaker: it may not be deleted."
        ),
    )
    kin: list[KinRule] = Field(
        default_factory=list,
        description="What makes a new pod a held workload's own: it is born quarantined.",
    )
    services: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Each Service whose selector picks a quarantined pod, and the Breaker: its "
            "proxy, which reaches the pods past every NetworkPolicy, is refused."
        ),
    )


class BreakerHold(KubeObject):
    """The admission policy's params for one namespace, kept by the operator: read only."""

    kind: str = Field(default="BreakerHold", description="BreakerHold")
    spec: BreakerHoldSpec = Field(description="Written by the operator.")
