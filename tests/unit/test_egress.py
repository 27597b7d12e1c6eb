"""The effective egress of a pod: NetworkPolicies add up, so deny-all alone revokes nothing."""

from __future__ import annotations

from typing import Any

from breaker.actions.egress import Destination, effective_egress
from breaker.api.trainingjob import Egress
from breaker.training.render import egress_rules

POD = {"app": "train", "breaker.dev/trainingjob": "tj"}
OUTSIDE = Destination(port=443, ip="203.0.113.9")
POOL = Destination(port=3333, ip="198.51.100.7")
DNS = Destination(
    port=53,
    protocol="UDP",
    namespace="kube-system",
    namespace_labels={"kubernetes.io/metadata.name": "kube-system"},
    pod_labels={"k8s-app": "kube-dns"},
)


def policy(
    name: str,
    selector: dict[str, Any],
    egress: list[dict[str, Any]] | None,
    types: list[str] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"podSelector": selector}
    if egress is not None:
        spec["egress"] = egress
    if types is not None:
        spec["policyTypes"] = types
    return {"metadata": {"name": name}, "spec": spec}


DENY_ALL = policy("quarantine", {"matchLabels": {"app": "train"}}, [], ["Egress"])
ALLOW_ALL = policy("team-open", {}, [{}], ["Egress"])


def test_no_policy_means_everything_is_reachable() -> None:
    effective = effective_egress(POD, [])
    assert not effective.isolated
    assert effective.allows(POOL, "team")


def test_deny_all_alone_revokes_everything() -> None:
    effective = effective_egress(POD, [DENY_ALL])
    assert effective.isolated
    assert not effective.allows(OUTSIDE, "team")
    assert not effective.open_to_everything


def test_policies_add_up_so_deny_all_does_not_revoke_what_another_allows() -> None:
    effective = effective_egress(POD, [DENY_ALL, ALLOW_ALL])
    assert effective.selecting == ("quarantine", "team-open")
    assert effective.allows(POOL, "team"), "the trap: the other policy still lets it out"
    assert effective.open_to_everything
    # Taking the pod out of the other policy's selector is what really revokes.
    narrowed = policy(
        "team-open",
        {"matchExpressions": [{"key": "breaker.dev/quarantined", "operator": "DoesNotExist"}]},
        [{}],
        ["Egress"],
    )
    quarantined = {**POD, "breaker.dev/quarantined": "true"}
    assert not effective_egress(quarantined, [DENY_ALL, narrowed]).allows(POOL, "team")


def test_ingress_only_policies_do_not_isolate_egress() -> None:
    ingress = policy("ingress-only", {}, None)
    assert not effective_egress(POD, [ingress]).isolated


def test_the_baseline_policy_allows_exactly_its_allow_list() -> None:
    rules = egress_rules(
        Egress.model_validate(
            {
                "cidrs": [
                    {
                        "cidr": "203.0.113.0/24",
                        "except": ["203.0.113.128/25"],
                        "ports": [{"port": 443}],
                    }
                ]
            }
        )
    )
    baseline = policy(
        "tj-egress", {"matchLabels": {"breaker.dev/trainingjob": "tj"}}, rules, ["Egress"]
    )
    effective = effective_egress(POD, [baseline])
    assert effective.allows(OUTSIDE, "team")
    assert effective.allows(DNS, "team")
    assert not effective.allows(Destination(port=443, ip="203.0.113.200"), "team"), "except"
    assert not effective.allows(Destination(port=22, ip="203.0.113.9"), "team"), "other port"
    assert not effective.allows(POOL, "team")


def test_in_cluster_peers_need_the_right_namespace_and_pod() -> None:
    same_namespace_store = policy(
        "store",
        {},
        [{"to": [{"podSelector": {"matchLabels": {"app": "store"}}}], "ports": [{"port": 9000}]}],
        ["Egress"],
    )
    effective = effective_egress(POD, [same_namespace_store])
    store = Destination(port=9000, namespace="team", pod_labels={"app": "store"})
    assert effective.allows(store, "team")
    assert not effective.allows(
        Destination(port=9000, namespace="other", pod_labels={"app": "store"}), "team"
    )
    assert not effective.allows(Destination(port=9000, ip="10.1.2.3"), "team")


def test_port_ranges() -> None:
    ranged = policy(
        "range", {}, [{"ports": [{"port": 8000, "endPort": 8100, "protocol": "TCP"}]}], ["Egress"]
    )
    effective = effective_egress(POD, [ranged])
    assert effective.allows(Destination(port=8050, ip="192.0.2.1"), "team")
    assert not effective.allows(Destination(port=8101, ip="192.0.2.1"), "team")
    assert not effective.allows(Destination(port=8050, protocol="UDP", ip="192.0.2.1"), "team")


def test_revocation_really_revokes_and_restores_exactly() -> None:
    from breaker.actions.egress import plan_revocation, restore_patch
    from breaker.constants import QUARANTINE_LABEL

    team_open = policy("team-open", {"matchLabels": {"app": "train"}}, [{}], ["Egress"])
    unrelated = policy("other-app", {"matchLabels": {"app": "serve"}}, [{}], ["Egress"])
    plan = plan_revocation("brk-rl", "team", [POD], [team_open, unrelated, DENY_ALL])
    assert set(plan.patches) == {"team-open"}, "every policy that lets the pods out, only those"
    assert "other-app" not in plan.narrowed

    def applied(obj: dict[str, Any]) -> dict[str, Any]:
        name = obj["metadata"]["name"]
        if name not in plan.patches:
            return obj
        return {**obj, "spec": {**obj["spec"], **plan.patches[name]["spec"]}}

    quarantined = {**POD, QUARANTINE_LABEL: "brk-rl"}
    after = [applied(team_open), applied(unrelated), applied(DENY_ALL), plan.quarantine]
    effective = effective_egress(quarantined, after)
    assert not effective.allows(POOL, "team")
    assert not effective.allows(OUTSIDE, "team")
    assert effective.allows(DNS, "team"), "DNS stays, as asked"
    assert set(effective.selecting) == {"quarantine", "brk-rl"}

    restored = restore_patch(plan.narrowed["team-open"])
    assert restored == {
        "spec": {"podSelector": {"matchLabels": {"app": "train"}, "matchExpressions": None}}
    }


def test_the_plugin_describes_what_a_pod_may_reach() -> None:
    from breaker.plugin import describe

    policies = [
        {
            "metadata": {"name": "dns-only"},
            "spec": {
                "podSelector": {},
                "policyTypes": ["Egress"],
                "egress": [{"ports": [{"protocol": "UDP", "port": 53}]}],
            },
        }
    ]
    text = describe("ns/p", effective_egress({}, policies), policies)
    assert "isolated by dns-only" in text
    assert '"port": 53' in text
    assert "may reach anything" in describe("ns/p", effective_egress({}, []), [])
