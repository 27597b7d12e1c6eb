"""What the chart's admission policy reads to refuse a tenant's escapes. Pure.

The ValidatingAdmissionPolicies (``helm/breaker/templates/admission-policy.yaml``) refuse,
at the API server, what the operator would otherwise undo a moment after it was admitted.
Most of those requests carry what the policy needs:

- the quarantine label on a pod;
- the ``paused-by`` annotation on a workload;
- the quarantine NetworkPolicy's selector.

Three do not, and the policy reads them from a BreakerHold (``api/hold.py``) the operator
keeps in each namespace where a breaker holds containment (the policy's params):

- ``breakers``: the Breakers holding containment there, for the messages. The BreakerHold
  existing is what makes a new NetworkPolicy there need to leave quarantined pods out;
- ``pods``: each quarantined pod, and its Breaker. exec, attach and port-forward to it are
  refused (the request names only the pod);
- ``scaled``: each Deployment or StatefulSet the breaker scaled to zero, as
  ``<resource>/<name>`` (its ``scale`` subresource carries no annotation).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from breaker.api.hold import BreakerHold, BreakerHoldSpec
from breaker.constants import ADMISSION_PARAMS

# The kinds paused by scaling to zero, and their plural (the scale subresource's parent).
SCALED = {"Deployment": "deployments", "StatefulSet": "statefulsets"}
MANAGED = {"app.kubernetes.io/managed-by": "breaker"}


@dataclass(frozen=True)
class Holding:
    """A Breaker that holds containment: where, and the workload it paused (if it did)."""

    namespace: str
    breaker: str
    paused_kind: str | None = None  # the workload's kind, when its pause is applied
    paused_name: str | None = None


def params(
    holding: Iterable[Holding], quarantined: Iterable[tuple[str, str, str]]
) -> dict[str, BreakerHoldSpec]:
    """Per namespace where a breaker holds containment, its BreakerHold's spec.
    ``quarantined`` is (namespace, pod, the breaker its label names); a pod whose breaker
    holds nothing any more is left out."""
    holders: dict[str, set[str]] = {}
    pods: dict[str, dict[str, str]] = {}
    scaled: dict[str, dict[str, str]] = {}
    for held in holding:
        holders.setdefault(held.namespace, set()).add(held.breaker)
        plural = SCALED.get(held.paused_kind or "")
        if plural is not None and held.paused_name:
            scaled.setdefault(held.namespace, {})[f"{plural}/{held.paused_name}"] = held.breaker
    for namespace, pod, breaker in quarantined:
        if breaker in holders.get(namespace, ()):
            pods.setdefault(namespace, {})[pod] = breaker
    return {
        namespace: BreakerHoldSpec(
            breakers=sorted(names), pods=pods.get(namespace, {}), scaled=scaled.get(namespace, {})
        )
        for namespace, names in holders.items()
    }


def hold(namespace: str, spec: BreakerHoldSpec) -> dict[str, Any]:
    """The BreakerHold of a namespace, as the operator writes it."""
    metadata = {"name": ADMISSION_PARAMS, "namespace": namespace, "labels": dict(MANAGED)}
    return BreakerHold(metadata=metadata, spec=spec).wire()


def changes(
    wanted: Mapping[str, BreakerHoldSpec], written: Mapping[str, BreakerHoldSpec | None]
) -> tuple[dict[str, BreakerHoldSpec], list[str]]:
    """(the namespaces whose BreakerHold to write, with its spec; those whose to delete).
    A BreakerHold read as None (not a valid spec) is written again or deleted."""
    write = {ns: spec for ns, spec in wanted.items() if written.get(ns) != spec}
    delete = sorted(ns for ns in written if ns not in wanted)
    return write, delete
