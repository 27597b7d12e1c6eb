"""A policy's actions compiled into typed settings, and read from nowhere else.

The regression this guards: ``allowDNS: false`` was ignored because the executor read
``allowDns`` from the spec dict, leaving DNS (a tunnel) open under revocation.
"""

from __future__ import annotations

import asyncio
from typing import Any

from kubernetes import client

from breaker.actions import executor
from breaker.actions.connections import Kept
from breaker.actions.egress import DNS_NAMESPACE, DNS_PODS
from breaker.actions.settings import ActionSettings
from breaker.api.policy import BreakerPolicySpec

SIGNAL = {"name": "pool", "preset": "mining-pool-egress"}


def compiled(actions: list[dict[str, Any]]) -> ActionSettings:
    spec = BreakerPolicySpec.model_validate({"signals": [SIGNAL], "actions": actions})
    return ActionSettings.compile(spec)


def quarantine(settings: ActionSettings) -> dict[str, Any]:
    scene = executor.Scene(
        api=client.ApiClient(),  # unconfigured: a dry run does not call the API
        breaker="rl-guard",
        namespace="team-a",
        workload=None,
        pods=[],
        netpols=[],
        quotas=[],
        namespace_pods=[],
        dry_run=True,
    )
    changed: dict[str, Any] = asyncio.run(executor.revoke_egress(scene, settings.revoke_egress))
    return changed


def test_allow_dns_false_leaves_no_dns_in_the_quarantine_and_keeps_none_open() -> None:
    settings = compiled([{"type": "revokeEgress", "revokeEgress": {"allowDNS": False}}])
    assert settings.revoke_egress.allow_dns is False
    changed = quarantine(settings)
    assert changed["quarantineSpec"]["egress"] == []
    assert {k: changed["kept"][k] for k in ("dns", "services")} == {"dns": False, "services": []}


def test_dns_by_default_is_the_cluster_dns_on_port_53_and_nothing_else() -> None:
    changed = quarantine(compiled([{"type": "revokeEgress"}]))
    (rule,) = changed["quarantineSpec"]["egress"]
    assert rule["to"] == [{"namespaceSelector": DNS_NAMESPACE, "podSelector": DNS_PODS}]
    assert {(p["protocol"], p["port"]) for p in rule["ports"]} == {("UDP", 53), ("TCP", 53)}
    assert {k: changed["kept"][k] for k in ("dns", "services")} == {"dns": True, "services": []}


NAME = "kubernetes.io/metadata.name"


NAME = "kubernetes.io/metadata.name"


def test_the_quarantine_refuses_what_comes_in_but_the_scrape() -> None:
    scrape = [{"namespace": "monitoring", "ports": [9100]}, {"cidr": "10.250.0.0/16"}]
    action = {"allowScrapeFrom": scrape, "killSessions": True}
    settings = compiled([{"type": "revokeEgress", "revokeEgress": action}])
    changed = quarantine(settings)
    spec = changed["quarantineSpec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"] == [
        {
            "from": [{"namespaceSelector": {"matchLabels": {NAME: "monitoring"}}}],
            "ports": [{"protocol": "TCP", "port": 9100}],
        },
        {"from": [{"ipBlock": {"cidr": "10.250.0.0/16"}}]},
    ]
    kept = changed["kept"]
    assert kept["inbound"] == [{"from": "10.250.0.0/16", "ports": []}]
    assert kept["inboundNamespaces"] == [{"namespace": "monitoring", "ports": [9100]}]
    assert kept["killSessions"] is True
    # The node agent is told the scrape's pods by address, as they are when labelled.
    text = executor.kept_text(kept, lambda ns: ("10.244.3.9",) if ns == "monitoring" else ())
    found = Kept.parse(text)
    assert found.lets_in("10.244.3.9", 9100)
    assert not found.lets_in("10.244.3.9", 22)
    assert found.lets_in("10.250.7.7", 22)
    assert not found.lets_in("198.51.100.4", 9100)


def test_the_order_and_each_actions_settings_come_from_the_policy() -> None:
    settings = compiled(
        [
            {"type": "revokeEgress", "revokeEgress": {"allowDNS": False}},
            {"type": "quarantineNode", "quarantineNode": {"cordon": False}},
            {"type": "notify", "notify": {"url": "https://hooks.example/x"}},
        ]
    )
    assert settings.order == ("revokeEgress", "quarantineNode", "notify")
    assert settings.quarantine_node.cordon is False
    assert settings.quarantine_node.taint
    assert [n.url for n in settings.notify] == ["https://hooks.example/x"]


def test_without_a_validated_policy_its_actions_still_validate_on_their_own() -> None:
    raw = [{"type": "revokeEgress", "revokeEgress": {"allowDNS": False}}]
    assert ActionSettings.compile(None, raw).revoke_egress.allow_dns is False
    assert ActionSettings.compile(None, [{"type": "nonsense"}]) == ActionSettings()
