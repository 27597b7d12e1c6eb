"""Deny rules that outrank NetworkPolicies, where the cluster has an API for them. Pure.

NetworkPolicies only allow, so revocation narrows the ones that let quarantined pods out;
a tenant who can edit NetworkPolicies can try to widen them again (the operator narrows
them back as soon as it sees the change). Where the cluster runs the network-policy API
(AdminNetworkPolicy, ``policy.networking.k8s.io/v1alpha1``) or Cilium
(``cilium.io/v2`` CiliumNetworkPolicy with ``egressDeny``), the quarantine also gets a
deny that no namespaced allow can override, so even that window is closed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from breaker.actions.egress import DNS_NAMESPACE, DNS_PODS, DNS_PORTS
from breaker.constants import QUARANTINE_LABEL

ANP_GROUP, ANP_VERSION, ANP_PLURAL = "policy.networking.k8s.io", "v1alpha1", "adminnetworkpolicies"
CILIUM_GROUP, CILIUM_VERSION, CILIUM_PLURAL = "cilium.io", "v2", "ciliumnetworkpolicies"
MANAGED = {"app.kubernetes.io/managed-by": "breaker"}
# AdminNetworkPolicy priorities run 0..1000, lower first. The quarantine must outrank any
# allow an admin wrote; two quarantines at the same priority never conflict (both deny).
ANP_PRIORITY = 0


def anp_name(namespace: str, breaker: str) -> str:
    """Cluster-scoped, so the namespace is in the name; hashed when too long."""
    name = f"breaker-{namespace}-{breaker}"
    if len(name) <= 253:
        return name
    return f"{name[:240]}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"


def admin_network_policy(
    namespace: str, breaker: str, allow_dns: bool, scrape_namespaces: Iterable[str] = ()
) -> dict[str, Any]:
    """Deny the breaker's quarantined pods all egress, DNS excepted when allowed, and all
    ingress from the cluster's pods, the scrape's namespaces excepted (an
    AdminNetworkPolicy names no addresses for ingress: a scrape from outside the cluster
    stays to the NetworkPolicies)."""
    rules: list[dict[str, Any]] = []
    if allow_dns:
        rules.append(
            {
                "name": "allow-dns",
                "action": "Allow",
                "to": [{"pods": {"namespaceSelector": DNS_NAMESPACE, "podSelector": DNS_PODS}}],
                "ports": [{"portNumber": dict(port)} for port in DNS_PORTS],
            }
        )
    rules.append(
        {
            "name": "deny-everything-else",
            "action": "Deny",
            "to": [{"namespaces": {}}, {"networks": ["0.0.0.0/0", "::/0"]}],
        }
    )
    return {
        "apiVersion": f"{ANP_GROUP}/{ANP_VERSION}",
        "kind": "AdminNetworkPolicy",
        "metadata": {"name": anp_name(namespace, breaker), "labels": dict(MANAGED)},
        "spec": {
            "priority": ANP_PRIORITY,
            "subject": {
                "pods": {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": namespace}
                    },
                    "podSelector": {"matchLabels": {QUARANTINE_LABEL: breaker}},
                }
            },
            "ingress": [
                *(
                    {
                        "name": f"allow-scrape-{index}",
                        "action": "Allow",
                        "from": [
                            {
                                "namespaces": {
                                    "matchLabels": {"kubernetes.io/metadata.name": scraper}
                                }
                            }
                        ],
                    }
                    for index, scraper in enumerate(sorted(set(scrape_namespaces)))
                ),
                {"name": "deny-everything-else", "action": "Deny", "from": [{"namespaces": {}}]},
            ],
            "egress": rules,
        },
    }


def cilium_policy(namespace: str, breaker: str) -> dict[str, Any]:
    """Deny the quarantined pods the world (outside the cluster), both ways.

    In-cluster peers stay to the NetworkPolicies: a Cilium deny outranks every allow, DNS
    and the scrape included, and the narrowed policies already close the rest.
    """
    return {
        "apiVersion": f"{CILIUM_GROUP}/{CILIUM_VERSION}",
        "kind": "CiliumNetworkPolicy",
        "metadata": {
            "name": f"{breaker[:232]}-deny-world",
            "namespace": namespace,
            "labels": dict(MANAGED),
        },
        "spec": {
            "endpointSelector": {"matchLabels": {QUARANTINE_LABEL: breaker}},
            "egressDeny": [{"toEntities": ["world"]}],
            "ingressDeny": [{"fromEntities": ["world"]}],
        },
    }
