"""The quarantine NetworkPolicy, and what a pod can still reach, or be reached by, across
every NetworkPolicy in its namespace. Pure.

NetworkPolicies are additive allow-lists: a pod is egress-isolated as soon as one policy
with ``Egress`` in its policyTypes selects it, and then it may reach whatever ANY
selecting policy allows; ingress likewise. A deny-all policy alone therefore revokes
nothing that another policy still allows: revocation takes the quarantined pods out of
every other policy that lets them out or in. This module answers "what can this pod
still reach?" so the operator, its tests and ``kubectl breaker egress POD`` can check
that revocation really revokes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from breaker.api.policy import ScrapeSource
from breaker.constants import QUARANTINE_LABEL
from breaker.selectors import matches


@dataclass(frozen=True)
class Destination:
    """Where a connection goes: an address outside, or a pod inside the cluster."""

    port: int
    protocol: str = "TCP"
    ip: str | None = None
    namespace: str | None = None
    namespace_labels: Mapping[str, str] = field(default_factory=dict)
    pod_labels: Mapping[str, str] | None = None


@dataclass(frozen=True)
class Allowance:
    """One egress rule of one policy that selects the pod."""

    policy: str
    rule: Mapping[str, Any]


@dataclass(frozen=True)
class EffectiveEgress:
    isolated: bool  # some policy with Egress selects the pod: only allowances get out
    allowances: tuple[Allowance, ...] = ()
    selecting: tuple[str, ...] = ()  # names of every policy that selects the pod for egress

    def allows(self, destination: Destination, pod_namespace: str) -> bool:
        if not self.isolated:
            return True
        return any(_rule_allows(a.rule, destination, pod_namespace) for a in self.allowances)

    @property
    def open_to_everything(self) -> bool:
        """Some rule allows every destination on every port."""
        return not self.isolated or any(
            not a.rule.get("to") and not a.rule.get("ports") for a in self.allowances
        )


def _types(spec: Mapping[str, Any]) -> list[str]:
    """policyTypes as the API server defaults them."""
    declared = spec.get("policyTypes")
    if declared:
        return list(declared)
    return ["Ingress", "Egress"] if spec.get("egress") else ["Ingress"]


def effective_egress(
    pod_labels: Mapping[str, str], policies: Iterable[Mapping[str, Any]]
) -> EffectiveEgress:
    """``policies`` are the NetworkPolicy objects (dicts) of the pod's namespace."""
    selecting: list[str] = []
    allowances: list[Allowance] = []
    for policy in policies:
        spec = policy.get("spec") or {}
        if "Egress" not in _types(spec) or not matches(spec.get("podSelector") or {}, pod_labels):
            continue
        name = policy.get("metadata", {}).get("name", "")
        selecting.append(name)
        allowances.extend(Allowance(name, rule) for rule in spec.get("egress") or [])
    return EffectiveEgress(bool(selecting), tuple(allowances), tuple(selecting))


def _port_allows(ports: list[Mapping[str, Any]] | None, destination: Destination) -> bool:
    if not ports:
        return True
    for port in ports:
        if port.get("protocol", "TCP") != destination.protocol:
            continue
        number = port.get("port")
        if number is None:
            return True
        if isinstance(number, str):
            continue  # a named port: only the destination pod knows its number
        end = port.get("endPort", number)
        if number <= destination.port <= end:
            return True
    return False


def _peer_allows(peer: Mapping[str, Any], destination: Destination, pod_namespace: str) -> bool:
    block = peer.get("ipBlock")
    if block is not None:
        if destination.ip is None:
            return False
        address = ipaddress.ip_address(destination.ip)
        if address not in ipaddress.ip_network(block["cidr"], strict=False):
            return False
        return not any(
            address in ipaddress.ip_network(e, strict=False) for e in block.get("except") or []
        )
    if destination.pod_labels is None:
        return False  # a pod or namespace selector never matches an outside address
    if "namespaceSelector" in peer:
        if not matches(peer["namespaceSelector"], destination.namespace_labels):
            return False
    elif destination.namespace != pod_namespace:
        return False
    return "podSelector" not in peer or matches(peer["podSelector"], destination.pod_labels)


def _rule_allows(rule: Mapping[str, Any], destination: Destination, pod_namespace: str) -> bool:
    if not _port_allows(rule.get("ports"), destination):
        return False
    peers = rule.get("to")
    if not peers:
        return True  # no `to`: every destination
    return any(_peer_allows(peer, destination, pod_namespace) for peer in peers)


_EXCLUDED = {"key": QUARANTINE_LABEL, "operator": "DoesNotExist"}
# The cluster's DNS: CoreDNS (or kube-dns) in kube-system, as every distribution labels it.
# Any namespace would let a tenant label a pod of its own k8s-app=kube-dns and tunnel
# through it; kube-system is the admins'.
DNS_NAMESPACE = {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}
DNS_PODS = {"matchLabels": {"k8s-app": "kube-dns"}}
DNS_PORTS = ({"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53})


@dataclass(frozen=True)
class Revocation:
    """What revoking a workload's egress changes, and what undoing it restores."""

    quarantine: dict[str, Any]  # the NetworkPolicy to create
    narrowed: dict[str, dict[str, Any]]  # policy name -> its podSelector as it was
    patches: dict[str, dict[str, Any]]  # policy name -> merge patch that narrows it


def scrape_rules(sources: Iterable[ScrapeSource]) -> list[dict[str, Any]]:
    """The quarantine's ingress rules: who may still reach the pods (the metrics scrape)."""
    rules: list[dict[str, Any]] = []
    for source in sources:
        if source.namespace is not None:
            peer: dict[str, Any] = {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": source.namespace}
                }
            }
        else:
            peer = {"ipBlock": {"cidr": str(source.cidr)}}
        rule: dict[str, Any] = {"from": [peer]}
        if source.ports:
            rule["ports"] = [{"protocol": "TCP", "port": port} for port in source.ports]
        rules.append(rule)
    return rules


def quarantine_policy(
    name: str,
    namespace: str,
    allow_dns: bool,
    allow_services: Iterable[Mapping[str, Any]] = (),
    scrape_from: Iterable[ScrapeSource] = (),
) -> dict[str, Any]:
    """Deny the quarantined pods everything both ways: every egress, except the cluster's
    DNS on port 53 (when ``allow_dns``) and named in-cluster services; every ingress, except
    the scrape sources (the node's own probes get in whatever a NetworkPolicy says)."""
    rules: list[dict[str, Any]] = []
    if allow_dns:
        rules.append(
            {
                "to": [{"namespaceSelector": DNS_NAMESPACE, "podSelector": DNS_PODS}],
                "ports": [dict(port) for port in DNS_PORTS],
            }
        )
    # Services are reached through their pods; the caller resolves each Service's selector.
    for service in allow_services:
        rules.append(
            {
                "to": [
                    {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": service["namespace"]}
                        },
                        "podSelector": {"matchLabels": dict(service["selector"])},
                    }
                ]
            }
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "breaker"},
        },
        "spec": {
            "podSelector": {"matchLabels": {QUARANTINE_LABEL: name}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": scrape_rules(scrape_from),
            "egress": rules,
        },
    }


def lets_through(spec: Mapping[str, Any]) -> bool:
    """The policy allows something, one way or the other, to the pods it selects."""
    types = _types(spec)
    return bool(
        ("Egress" in types and spec.get("egress")) or ("Ingress" in types and spec.get("ingress"))
    )


def plan_revocation(
    name: str,
    namespace: str,
    pod_labels: Iterable[Mapping[str, str]],
    policies: Iterable[Mapping[str, Any]],
    allow_dns: bool = True,
    scrape_from: Iterable[ScrapeSource] = (),
) -> Revocation:
    """Quarantine the pods (labelled ``breaker.dev/quarantined: <name>``) and take them out of
    every other policy that lets them out or in, since policies add up."""
    quarantine = quarantine_policy(name, namespace, allow_dns, (), scrape_from)
    pods = list(pod_labels)
    narrowed: dict[str, dict[str, Any]] = {}
    patches: dict[str, dict[str, Any]] = {}
    for policy in policies:
        spec = policy.get("spec") or {}
        policy_name = policy.get("metadata", {}).get("name", "")
        if policy_name == name or not lets_through(spec):
            continue  # the quarantine itself, or a policy that allows nothing anyway
        selector = dict(spec.get("podSelector") or {})
        if _EXCLUDED in (selector.get("matchExpressions") or []):
            continue  # already excludes quarantined pods
        if not any(matches(selector, labels) for labels in pods):
            continue
        narrowed[policy_name] = selector
        expressions = [*(selector.get("matchExpressions") or []), _EXCLUDED]
        patches[policy_name] = {
            "spec": {"podSelector": {**selector, "matchExpressions": expressions}}
        }
    return Revocation(quarantine, narrowed, patches)


def restore_patch(original_selector: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch that puts a narrowed policy's podSelector back exactly."""
    restored: dict[str, Any] = {
        "matchLabels": original_selector.get("matchLabels"),
        "matchExpressions": original_selector.get("matchExpressions"),
    }  # None deletes a key the original did not have
    return {"spec": {"podSelector": restored}}
