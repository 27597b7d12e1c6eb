"""What the chart's admission policy reads to refuse a tenant's escapes. Pure.

The ValidatingAdmissionPolicies (``helm/breaker/templates/admission-policy.yaml``) refuse,
at the API server, what the operator would otherwise undo a moment after it was admitted.
Most of those requests carry what the policy needs:

- the quarantine label on a pod;
- the ``paused-by`` annotation on a workload;
- the quarantine NetworkPolicy's selector.

Three do not, and the policy reads them from a ConfigMap the operator keeps in each
namespace where a breaker holds containment (the policy's params):

- ``breakers``: the Breakers holding containment there, for the messages. The ConfigMap
  existing is what makes a new NetworkPolicy there need to leave quarantined pods out;
- ``pod.<name>``: a quarantined pod. exec, attach and port-forward to it are refused (the
  request names only the pod);
- ``scale.<resource>.<name>``: a Deployment or StatefulSet the breaker scaled to zero (its
  ``scale`` subresource carries no annotation).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

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
) -> dict[str, dict[str, str]]:
    """Per namespace where a breaker holds containment, the params' data. ``quarantined``
    is (namespace, pod, the breaker its label names); a pod whose breaker holds nothing
    any more is left out."""
    found: dict[str, dict[str, str]] = {}
    holders: dict[str, set[str]] = {}
    for held in holding:
        holders.setdefault(held.namespace, set()).add(held.breaker)
        data = found.setdefault(held.namespace, {})
        plural = SCALED.get(held.paused_kind or "")
        if plural is not None and held.paused_name:
            data[f"scale.{plural}.{held.paused_name}"] = held.breaker
    for namespace, pod, breaker in quarantined:
        if breaker in holders.get(namespace, ()):
            found[namespace][f"pod.{pod}"] = breaker
    for namespace, names in holders.items():
        found[namespace]["breakers"] = " ".join(sorted(names))
    return found


def configmap(namespace: str, data: Mapping[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": ADMISSION_PARAMS, "namespace": namespace, "labels": dict(MANAGED)},
        "data": dict(data),
    }


def changes(
    wanted: Mapping[str, Mapping[str, str]], written: Mapping[str, Mapping[str, str]]
) -> tuple[dict[str, Mapping[str, str]], list[str]]:
    """(the namespaces whose params to write, with their data; those whose to delete)."""
    write = {ns: data for ns, data in wanted.items() if written.get(ns) != data}
    delete = sorted(ns for ns in written if ns not in wanted)
    return write, delete
