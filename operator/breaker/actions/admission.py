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
  ``<resource>/<name>`` (its ``scale`` subresource carries no annotation);
- ``workloads``: each held workload, as ``<resource>/<name>``: the tenant may not delete
  it (a DELETE carries the object, but a revoke-only workload bears no mark of ours);
- ``kin``: what makes a new pod a held workload's own (``actions/kin.py``), and the
  annotation it is born with: the chart's MutatingAdmissionPolicy labels it quarantined;
- ``services``: each Service whose selector picks a quarantined pod: its proxy is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from breaker.api.hold import BreakerHold, BreakerHoldSpec, KinRule
from breaker.constants import ADMISSION_PARAMS

# The kinds paused by scaling to zero, and their plural (the scale subresource's parent).
SCALED = {"Deployment": "deployments", "StatefulSet": "statefulsets"}
MANAGED = {"app.kubernetes.io/managed-by": "breaker"}


@dataclass(frozen=True)
class Holding:
    """A Breaker that holds containment: where, the workload it holds (by resource and
    name), the one it paused (if it did), and its kin (if it quarantines)."""

    namespace: str
    breaker: str
    paused_kind: str | None = None  # the workload's kind, when its pause is applied
    paused_name: str | None = None
    workload: str | None = None  # <plural>/<name>: its DELETE is refused
    kin: KinRule | None = None


@dataclass(frozen=True)
class Quarantined:
    """A pod carrying the quarantine label: which Breaker's, and its labels."""

    namespace: str
    pod: str
    breaker: str
    labels: Mapping[str, str]


def params(
    holding: Iterable[Holding],
    quarantined: Iterable[Quarantined],
    services: Iterable[tuple[str, str, Mapping[str, str]]] = (),
) -> dict[str, BreakerHoldSpec]:
    """Per namespace where a breaker holds containment, its BreakerHold's spec. A pod
    whose breaker holds nothing any more is left out; ``services`` are (namespace, name,
    selector): those that pick a quarantined pod are named."""
    holders: dict[str, set[str]] = {}
    pausing: dict[str, set[str]] = {}
    pods: dict[str, dict[str, str]] = {}
    scaled: dict[str, dict[str, str]] = {}
    workloads: dict[str, dict[str, str]] = {}
    kin: dict[str, list[KinRule]] = {}
    for held in holding:
        holders.setdefault(held.namespace, set()).add(held.breaker)
        if held.paused_kind:
            pausing.setdefault(held.namespace, set()).add(held.breaker)
        plural = SCALED.get(held.paused_kind or "")
        if plural is not None and held.paused_name:
            scaled.setdefault(held.namespace, {})[f"{plural}/{held.paused_name}"] = held.breaker
        if held.workload:
            workloads.setdefault(held.namespace, {})[held.workload] = held.breaker
        if held.kin is not None:
            kin.setdefault(held.namespace, []).append(held.kin)
    labelled: dict[str, list[tuple[str, Mapping[str, str]]]] = {}
    for pod in quarantined:
        if pod.breaker in holders.get(pod.namespace, ()):
            pods.setdefault(pod.namespace, {})[pod.pod] = pod.breaker
            labelled.setdefault(pod.namespace, []).append((pod.breaker, pod.labels))
    selecting: dict[str, dict[str, str]] = {}
    for namespace, name, selector in services:
        breaker = next(
            (b for b, labels in labelled.get(namespace, ()) if _selects(selector, labels)), None
        )
        if breaker is not None:
            selecting.setdefault(namespace, {})[name] = breaker
    return {
        namespace: BreakerHoldSpec(
            breakers=sorted(names),
            pods=pods.get(namespace, {}),
            scaled=scaled.get(namespace, {}),
            pausing=sorted(pausing.get(namespace, ())),
            workloads=workloads.get(namespace, {}),
            kin=sorted(kin.get(namespace, []), key=lambda k: k.breaker),
            services=selecting.get(namespace, {}),
        )
        for namespace, names in holders.items()
    }


def _selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


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
