"""Which workloads a policy guards, and the Breaker each one gets. Pure.

A namespaced BreakerPolicy guards workloads of its own namespace only, whatever its
selectors say; a ClusterBreakerPolicy guards the namespaces its ``namespaceSelector``
picks. Each (policy, workload) pair gets one Breaker, named so the pair can be found
again, owned by the workload while it has never tripped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from breaker.constants import API_VERSION, POLICY_LABEL, WORKLOAD_LABEL
from breaker.selectors import matches


@dataclass(frozen=True)
class Workload:
    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str
    labels: Mapping[str, str]


@dataclass(frozen=True)
class Policy:
    kind: str  # BreakerPolicy or ClusterBreakerPolicy
    name: str
    namespace: str | None
    spec: Mapping[str, Any]


def selects(policy: Policy, workload: Workload, namespace_labels: Mapping[str, str]) -> bool:
    targets = policy.spec.get("targets") or {}
    if workload.kind not in (targets.get("kinds") or ["TrainingJob"]):
        return False
    if policy.kind == "BreakerPolicy":
        if workload.namespace != policy.namespace:
            return False  # tenancy: never outside its own namespace
    elif not matches(targets.get("namespaceSelector"), namespace_labels):
        return False
    return matches(targets.get("selector"), workload.labels)


def breaker_name(policy: Policy, workload: Workload, unique: bool = False) -> str:
    """``<workload>-<policy>``, shortened with a hash to stay a valid name.

    ``unique`` adds the hash of the whole pair always: for the rare pair whose plain name
    another pair already has (a BreakerPolicy named like a ClusterBreakerPolicy, or
    ``a-b`` + ``c`` against ``a`` + ``b-c``).
    """
    name = f"{workload.name}-{policy.name}".lower()
    if len(name) <= 63 and not unique:
        return name
    digest = hashlib.sha256(
        f"{policy.kind}/{policy.namespace}/{policy.name}/{workload.uid}".encode()
    ).hexdigest()
    return f"{name[:52].rstrip('-.')}-{digest[:10]}"


def desired_breaker(policy: Policy, workload: Workload, name: str | None = None) -> dict[str, Any]:
    policy_ref: dict[str, Any] = {"kind": policy.kind, "name": policy.name}
    if policy.namespace:
        policy_ref["namespace"] = policy.namespace
    return {
        "apiVersion": API_VERSION,
        "kind": "Breaker",
        "metadata": {
            "name": name or breaker_name(policy, workload),
            "namespace": workload.namespace,
            "labels": {POLICY_LABEL: policy.name[:63], WORKLOAD_LABEL: workload.name[:63]},
            # No ownerReference: a Breaker owned by its workload would go with it, and a
            # tenant deleting a tripped job would erase the evidence. The plan removes a
            # Breaker whose workload is gone once it holds nothing (plan_breakers).
        },
        "spec": {
            "policyRef": policy_ref,
            "targetRef": {
                "apiVersion": workload.api_version,
                "kind": workload.kind,
                "name": workload.name,
                "uid": workload.uid,
            },
        },
    }
