"""What makes a pod the held workload's own, whatever its name or uid: the quarantine holds
the tenant's workload, not one object. Pure.

A tenant can delete a held pod (its controller makes a fresh one), delete the workload
and create it again under the same name, or start the same pods some other way. Each new
pod has a new name and uid; what it keeps is what its template gave it. So a held
workload's *kin* are the pods that carry:

- every label that every pod of the workload carries, less those that name one
  incarnation (a ReplicaSet's pod-template-hash, a Job's controller-uid, a pod's index);
  or
- the workload's ServiceAccount, unless it is ``default`` (every pod of a namespace
  shares that one): an agent that holds the API through its ServiceAccount and starts a
  new workload under another name usually runs it as itself.

A fresh workload with other labels and another ServiceAccount is not kin: it is a new
workload, guarded by a Breaker of its own (a policy that selects it) that has not
tripped, and held back from GPUs by the tenant's clamped quota. Nothing tells it apart
from an honest one; a namespace-wide hold is an admin's decision (a policy selecting
every workload there), not the breaker's guess.

While a breaker holds a workload's egress revoked, its kin are quarantined with it: at
admission (the chart's MutatingAdmissionPolicy labels a new pod from the BreakerHold's
``kin``), else by the operator on its next pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from breaker.circuit.views import PodView
from breaker.constants import QUARANTINE_LABEL

# Labels that name one incarnation of a workload, never the workload.
INCARNATION = frozenset(
    {
        "pod-template-hash",
        "controller-revision-hash",
        "statefulset.kubernetes.io/pod-name",
        "apps.kubernetes.io/pod-index",
        "batch.kubernetes.io/job-completion-index",
        "batch.kubernetes.io/job-index",
        "job-completion-index",
        QUARANTINE_LABEL,
    }
)
DEFAULT_ACCOUNT = "default"


def _incarnation(key: str) -> bool:
    """A uid in the label (a Job's controller-uid, a JobSet's job-uid) or one of the known."""
    return key in INCARNATION or key.rsplit("/", 1)[-1].lower().endswith("uid")


@dataclass(frozen=True)
class Kin:
    """What the held workload's pods have in common, as recorded at the trip."""

    labels: Mapping[str, str] = field(default_factory=dict)
    service_account: str | None = None

    def __bool__(self) -> bool:
        return bool(self.labels) or self.service_account is not None

    def of(self, labels: Mapping[str, str], service_account: str | None) -> bool:
        """Whether a pod with these labels and ServiceAccount is kin. No labels in common
        match nothing, never everything."""
        if self.labels and all(labels.get(k) == v for k, v in self.labels.items()):
            return True
        return self.service_account is not None and service_account == self.service_account

    def record(self) -> dict[str, Any]:
        found: dict[str, Any] = {"labels": dict(sorted(self.labels.items()))}
        if self.service_account is not None:
            found["serviceAccount"] = self.service_account
        return found

    @classmethod
    def read(cls, recorded: Any) -> Kin:
        if not isinstance(recorded, Mapping):
            return cls()
        labels = recorded.get("labels")
        account = recorded.get("serviceAccount")
        return cls(
            {str(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else {},
            str(account) if account and account != DEFAULT_ACCOUNT else None,
        )


def kin_of(pods: Iterable[PodView], others: Iterable[PodView] = ()) -> Kin:
    """The labels every pod carries (less an incarnation's), and their ServiceAccount when
    they share one other than ``default`` that no other pod of the namespace (``others``)
    runs as: a ServiceAccount every workload of a namespace shares (Kubeflow's
    default-editor) tells nobody apart."""
    pods = list(pods)
    if not pods:
        return Kin()
    common = dict(pods[0].labels)
    for pod in pods[1:]:
        common = {k: v for k, v in common.items() if pod.labels.get(k) == v}
    labels = {k: v for k, v in common.items() if not _incarnation(k)}
    accounts = {pod.service_account for pod in pods}
    account = accounts.pop() if len(accounts) == 1 else None
    mine = {pod.name for pod in pods}
    if any(p.service_account == account for p in others if p.name not in mine):
        account = None
    return Kin(labels, account if account and account != DEFAULT_ACCOUNT else None)


def held_pods(
    kin: Kin,
    namespace_pods: Iterable[PodView],
    own: Iterable[PodView],
    breaker: str,
    quarantining: Iterable[str] = (),
) -> list[PodView]:
    """The pods a breaker that revokes egress holds: the workload's own (``own``, its
    terminating ones too), the namespace's pods that are its kin, and whatever else carries
    its label (a pod of the workload's earlier incarnation). A kin pod another breaker
    quarantines (``quarantining``: the namespace's breakers that do) stays that one's (a
    pod carries one label); one labelled with a name that quarantines nothing is claimed.
    Never a pod on the host's network: its address is the node's."""
    others = set(quarantining) - {breaker}
    mine = [pod for pod in own if not pod.host_network]
    names = {pod.name for pod in own}
    for pod in namespace_pods:
        if pod.name in names or pod.host_network:
            continue
        label = pod.labels.get(QUARANTINE_LABEL)
        if label == breaker or (kin.of(pod.labels, pod.service_account) and label not in others):
            mine.append(pod)
    return mine


def exposing(services: Iterable[Mapping[str, Any]], held: Iterable[Mapping[str, str]]) -> list[str]:
    """The Services that reach held pods from outside the cluster (type NodePort or
    LoadBalancer, or with externalIPs) and select one of them (``held``: their labels):
    ``name (NodePort)``, sorted."""
    pods = list(held)
    found = []
    for service in services:
        how = outside_reach(service)
        selector = (service.get("spec") or {}).get("selector") or {}
        if how and selector and any(_selects(selector, labels) for labels in pods):
            found.append(f"{(service.get('metadata') or {}).get('name')} ({how})")
    return sorted(found)


def selecting(
    services: Iterable[Mapping[str, Any]], held: Iterable[Mapping[str, str]]
) -> list[str]:
    """The names of the Services whose selector picks one of the held pods (their proxy
    reaches them)."""
    pods = list(held)
    return sorted(
        str((s.get("metadata") or {}).get("name"))
        for s in services
        if (selector := (s.get("spec") or {}).get("selector"))
        and any(_selects(selector, labels) for labels in pods)
    )


def outside_reach(service: Mapping[str, Any]) -> str:
    """How a Service is reached from outside the cluster ('' when it is not)."""
    spec = service.get("spec") or {}
    if spec.get("type") in ("NodePort", "LoadBalancer"):
        return str(spec["type"])
    if spec.get("externalIPs"):
        return "externalIPs"
    return ""


def _selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())
