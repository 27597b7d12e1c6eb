"""What a TrainingJob should own: its Indexed batch/v1 Job and its baseline egress policy. Pure."""

from __future__ import annotations

import copy
from typing import Any

from breaker.api.trainingjob import Egress, PortRange, TrainingJob
from breaker.constants import GPU_RESOURCE, JOB_LABEL, KUEUE_QUEUE_LABEL, QUARANTINE_LABEL

MANAGED_BY = "breaker"
DNS_POD_SELECTOR = {"matchLabels": {"k8s-app": "kube-dns"}}


class InvalidTemplate(ValueError):
    """The pod template conflicts with what breaker sets; the message names the field."""


def owner_reference(tj: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": tj["apiVersion"],
        "kind": tj["kind"],
        "name": tj["metadata"]["name"],
        "uid": tj["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def labels_of(name: str) -> dict[str, str]:
    """The labels on everything a TrainingJob owns, its pods included."""
    return {JOB_LABEL: name, "app.kubernetes.io/managed-by": MANAGED_BY}


def network_policy_name(name: str) -> str:
    return f"{name}-egress"


def check_template(job: TrainingJob) -> None:
    """Refuse what would let a job hold GPUs the queue does not count."""
    spec = job.spec.template.spec
    groups = {
        "containers": [c.model_dump(by_alias=True) for c in spec.containers],
        "initContainers": (spec.model_extra or {}).get("initContainers") or [],
    }
    for group, containers in groups.items():
        for index, container in enumerate(containers):
            resources = container.get("resources") or {}
            for kind in ("limits", "requests"):
                if GPU_RESOURCE in (resources.get(kind) or {}):
                    raise InvalidTemplate(
                        f"spec.template.spec.{group}[{index}].resources.{kind}[{GPU_RESOURCE}] "
                        "is set by breaker from spec.gpusPerReplica; remove it"
                    )


def render_job(tj: dict[str, Any]) -> dict[str, Any]:
    """The Job for a TrainingJob. Created suspended: only the queue (breaker's, or Kueue's
    for a ``queueName``) unsuspends it."""
    job = TrainingJob.model_validate(tj)
    check_template(job)
    name = tj["metadata"]["name"]
    template = job.spec.template.model_dump(by_alias=True, exclude_none=True, mode="json")
    template = copy.deepcopy(template)
    metadata = template.setdefault("metadata", {})
    metadata["labels"] = {**metadata.get("labels", {}), **labels_of(name)}
    spec = template["spec"]
    spec["restartPolicy"] = "Never"
    first = spec["containers"][0]
    resources = first.setdefault("resources", {})
    resources.setdefault("limits", {})[GPU_RESOURCE] = str(job.spec.gpus_per_replica)
    labels = labels_of(name)
    if job.spec.queue_name:
        # Kueue admits it: its webhook keeps it suspended until then.
        labels[KUEUE_QUEUE_LABEL] = job.spec.queue_name
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": tj["metadata"]["namespace"],
            "labels": labels,
            "ownerReferences": [owner_reference(tj)],
        },
        "spec": {
            "suspend": True,
            "completionMode": "Indexed",
            "parallelism": job.spec.replicas,
            "completions": job.spec.replicas,
            "backoffLimit": 0,
            "template": template,
        },
    }


def _ports(ports: list[PortRange] | None) -> list[dict[str, Any]]:
    rendered = []
    for port in ports or []:
        item: dict[str, Any] = {"protocol": port.protocol, "port": port.port}
        if port.end_port is not None:
            item["endPort"] = port.end_port
        rendered.append(item)
    return rendered


def egress_rules(egress: Egress) -> list[dict[str, Any]]:
    """NetworkPolicy egress rules for an allow-list; an empty list denies everything."""
    rules: list[dict[str, Any]] = []
    if egress.dns:
        rules.append(
            {
                "to": [{"namespaceSelector": {}, "podSelector": DNS_POD_SELECTOR}],
                "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
            }
        )
    for peer in egress.cidrs or []:
        block: dict[str, Any] = {"cidr": peer.cidr}
        if peer.except_:
            block["except"] = list(peer.except_)
        rule: dict[str, Any] = {"to": [{"ipBlock": block}]}
        if peer.ports:
            rule["ports"] = _ports(peer.ports)
        rules.append(rule)
    for cluster_peer in egress.in_cluster or []:
        to: dict[str, Any] = {}
        if cluster_peer.namespace_selector is not None:
            to["namespaceSelector"] = cluster_peer.namespace_selector.wire()
        if cluster_peer.pod_selector is not None:
            to["podSelector"] = cluster_peer.pod_selector.wire()
        rule = {"to": [to]}
        if cluster_peer.ports:
            rule["ports"] = _ports(cluster_peer.ports)
        rules.append(rule)
    return rules


def render_network_policy(tj: dict[str, Any]) -> dict[str, Any]:
    """Deny all egress from the job's pods except its allow-list (DNS only by default).

    Pods a breaker has quarantined fall out of it (NetworkPolicies add up, so the
    quarantine policy alone would leave this allow-list open to them).
    """
    job = TrainingJob.model_validate(tj)
    name = tj["metadata"]["name"]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": network_policy_name(name),
            "namespace": tj["metadata"]["namespace"],
            "labels": labels_of(name),
            "ownerReferences": [owner_reference(tj)],
        },
        "spec": {
            "podSelector": {
                "matchLabels": {JOB_LABEL: name},
                "matchExpressions": [{"key": QUARANTINE_LABEL, "operator": "DoesNotExist"}],
            },
            "policyTypes": ["Egress"],
            "egress": egress_rules(job.spec.egress),
        },
    }
