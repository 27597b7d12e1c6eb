"""Between objects and the machine: which Breakers exist, status round trips, resets,
owner chains, and the deny rules for clusters with an API above NetworkPolicies."""

from __future__ import annotations

import datetime as dt
from typing import Any

from breaker.actions.admin_policy import admin_network_policy, anp_name, cilium_policy
from breaker.api.policy import BreakerPolicySpec
from breaker.circuit import machine, plan
from breaker.circuit.ownership import OwnerRef, workload_of
from breaker.circuit.selection import Policy, Workload

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
POLICY = Policy("BreakerPolicy", "guard", "team-a", {"targets": {"kinds": ["TrainingJob"]}})
RL = Workload("breaker.dev/v1alpha1", "TrainingJob", "team-a", "rl", "u1", {})


def test_each_selected_workload_gets_one_breaker() -> None:
    planned = plan.plan_breakers([POLICY], [RL], {}, {}, NOW)
    assert [b["metadata"]["name"] for b in planned.create] == ["rl-guard"]
    again = plan.plan_breakers([POLICY], [RL], {}, {("team-a", "rl-guard"): {}}, NOW)
    assert not again.create
    assert not again.delete


def test_a_breaker_holding_containment_is_never_removed() -> None:
    contained = {"spec": {}, "status": {"contained": True}}
    idle = {"spec": {}, "status": {"state": "Closed"}}
    existing: dict[tuple[str, str], dict[str, Any]] = {
        ("team-a", "held"): contained,
        ("team-a", "idle"): idle,
    }
    assert plan.plan_breakers([], [], {}, existing, NOW).delete == (("team-a", "idle"),)


def test_a_breaker_with_an_undo_to_finish_is_kept_until_it_is_done() -> None:
    failed = {"type": "quarantineNode", "changed": {}, "error": "undo failed: 409 Conflict"}
    existing = {("team-a", "rl-guard"): {"status": {"state": "Closed", "actions": [failed]}}}
    assert not plan.plan_breakers([], [], {}, existing, NOW).delete


def test_tripped_evidence_outlives_the_workload_for_the_retention() -> None:
    ref = {"kind": "BreakerPolicy", "name": "guard", "namespace": "team-a"}
    tripped = {
        "spec": {"policyRef": ref},
        "status": {"lastTrip": "2026-11-23T11:00:00.000Z", "trips": 1},
    }
    policy = Policy("BreakerPolicy", "guard", "team-a", {"evidenceRetention": "2h"})
    existing = {("team-a", "rl-guard"): tripped}
    assert not plan.plan_breakers([policy], [], {}, existing, NOW).delete
    later = NOW + dt.timedelta(hours=2)
    assert plan.plan_breakers([policy], [], {}, existing, later).delete == (("team-a", "rl-guard"),)


def test_a_breaker_whose_workload_is_gone_is_removed_by_the_plan_not_by_ownership() -> None:
    """Breakers are not owned by their workload; the plan removes an idle one whose workload
    is gone (and keeps a tripped one, above)."""
    (created,) = plan.plan_breakers([POLICY], [RL], {}, {}, NOW).create
    assert "ownerReferences" not in created["metadata"]
    idle = {**created, "status": {"state": "Closed"}}
    gone = plan.plan_breakers([POLICY], [], {}, {("team-a", "rl-guard"): idle}, NOW)
    assert gone.delete == (("team-a", "rl-guard"),)


def test_the_workloads_owner_reference_of_an_earlier_version_is_dropped() -> None:
    legacy = {"kind": "TrainingJob", "name": "rl", "uid": "u1", "apiVersion": "breaker.dev/v1"}
    admins = {"kind": "ConfigMap", "name": "keep", "uid": "u9", "apiVersion": "v1"}
    body = {"metadata": {"ownerReferences": [legacy, admins]}, "spec": {"targetRef": {"uid": "u1"}}}
    assert plan.disowned(body) == [admins]  # the admin's own reference stays
    assert plan.owner_of(body) == "TrainingJob/rl"
    only_legacy = {**body, "metadata": {"ownerReferences": [legacy]}}
    assert plan.disowned(only_legacy) == []
    assert plan.disowned({"metadata": {}, "spec": {"targetRef": {"uid": "u1"}}}) is None
    assert plan.disowned({"metadata": {"ownerReferences": [admins]}, "spec": {}}) is None


def test_the_machine_memory_round_trips_through_status() -> None:
    memory = machine.Breaker(
        state="Open",
        trips=2,
        last_trip=NOW,
        cooldown_until=NOW + dt.timedelta(minutes=20),
        contained=True,
        reason="critical:pool",
        signals_known=False,
    )
    assert plan.memory(plan.status_of(memory)) == memory


def test_a_reset_is_asked_by_spec_or_annotation() -> None:
    assert plan.reset_token({"spec": {}}) is None
    by_spec = plan.reset_token({"spec": {"reset": "1"}})
    by_annotation = plan.reset_token(
        {"spec": {"reset": "1"}, "metadata": {"annotations": {"breaker.dev/reset": "x"}}}
    )
    assert by_spec
    assert by_annotation
    assert by_spec != by_annotation


SIGNAL = {"name": "pool", "preset": "mining-pool-egress"}


def test_policy_settings_default_to_dry_run_and_manual_recovery() -> None:
    settings = plan.settings_of(BreakerPolicySpec.model_validate({"signals": [SIGNAL]}))
    assert settings.dry_run
    assert not settings.half_open
    enforced = plan.settings_of(
        BreakerPolicySpec.model_validate(
            {
                "signals": [SIGNAL],
                "mode": "Enforce",
                "recovery": {"mode": "HalfOpen", "cooldown": "30s", "maxTrips": 2},
                "prometheus": {"onUnreachable": "Trip"},
            }
        )
    )
    assert not enforced.dry_run
    assert enforced.half_open
    assert enforced.max_trips == 2
    assert enforced.cooldown == dt.timedelta(seconds=30)
    assert enforced.trip_when_unreachable


def test_a_policy_the_operator_cannot_read_only_records() -> None:
    assert plan.settings_of(None).dry_run


def test_pods_map_to_the_topmost_guarded_owner() -> None:
    owners = {
        ("ns", "Job", "rl"): OwnerRef("TrainingJob", "rl", "u1"),
        ("ns", "ReplicaSet", "web-5f"): OwnerRef("Deployment", "web", "u2"),
        ("ns", "Job", "bare"): None,
    }

    def owner_of(namespace: str, kind: str, name: str) -> OwnerRef | None:
        return owners.get((namespace, kind, name))

    kinds = frozenset({"TrainingJob", "Job", "Deployment"})
    assert workload_of("ns", OwnerRef("Job", "rl", "j"), owner_of, kinds) == (
        "ns",
        "TrainingJob",
        "rl",
    )
    assert workload_of("ns", OwnerRef("Job", "bare", "j"), owner_of, kinds) == ("ns", "Job", "bare")
    assert workload_of("ns", OwnerRef("ReplicaSet", "web-5f", "r"), owner_of, kinds) == (
        "ns",
        "Deployment",
        "web",
    )
    assert workload_of("ns", None, owner_of, kinds) is None
    assert (
        workload_of("ns", OwnerRef("Job", "bare", "j"), owner_of, frozenset({"TrainingJob"}))
        is None
    )


def test_the_admin_network_policy_denies_after_allowing_dns() -> None:
    anp = admin_network_policy("team-a", "rl-guard", allow_dns=True)
    assert [r["action"] for r in anp["spec"]["egress"]] == ["Allow", "Deny"]
    assert anp["spec"]["subject"]["pods"]["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "team-a"}
    }
    assert [r["action"] for r in admin_network_policy("a", "b", False)["spec"]["egress"]] == [
        "Deny"
    ]
    assert len(anp_name("n" * 63, "b" * 63 * 4)) <= 253
    # Both ways: the cluster's pods may not come in, the scrape's namespace excepted.
    scraped = admin_network_policy("team-a", "rl-guard", True, ["monitoring"])
    assert [(r["action"], r["from"]) for r in scraped["spec"]["ingress"]] == [
        ("Allow", [{"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]),
        ("Deny", [{"namespaces": {}}]),
    ]


def test_cilium_denies_the_world_only_both_ways() -> None:
    policy = cilium_policy("team-a", "rl-guard")
    assert policy["spec"]["egressDeny"] == [{"toEntities": ["world"]}]
    assert policy["spec"]["ingressDeny"] == [{"fromEntities": ["world"]}]


def test_a_namespaced_policy_named_like_a_cluster_one_gets_its_own_breaker() -> None:
    cluster = Policy("ClusterBreakerPolicy", "guard", None, {"targets": {}})
    planned = plan.plan_breakers([POLICY, cluster], [RL], {}, {}, NOW)
    names = sorted(b["metadata"]["name"] for b in planned.create)
    assert len(names) == 2
    assert "rl-guard" in names
    plain = next(b for b in planned.create if b["metadata"]["name"] == "rl-guard")
    assert plain["spec"]["policyRef"]["kind"] == "ClusterBreakerPolicy"


def test_the_training_stacks_owner_chains_lead_to_the_guarded_kind() -> None:
    """pod → Job → JobSet → TrainJob (Kubeflow Trainer), pod → RayCluster → RayJob (KubeRay)."""
    owners = {
        ("ns", "Job", "tj-node-0"): OwnerRef("JobSet", "tj", "s"),
        ("ns", "JobSet", "tj"): OwnerRef("TrainJob", "tj", "t"),
        ("ns", "RayCluster", "rj-x7k2p"): OwnerRef("RayJob", "rj", "r"),
        ("ns", "RayCluster", "alone"): None,
    }

    def owner_of(namespace: str, kind: str, name: str) -> OwnerRef | None:
        return owners.get((namespace, kind, name))

    kinds = frozenset({"TrainJob", "RayJob", "RayCluster", "JobSet"})
    trainjob = workload_of("ns", OwnerRef("Job", "tj-node-0", "j"), owner_of, kinds)
    assert trainjob == ("ns", "TrainJob", "tj")
    rayjob = workload_of("ns", OwnerRef("RayCluster", "rj-x7k2p", "c"), owner_of, kinds)
    assert rayjob == ("ns", "RayJob", "rj")
    # A RayCluster run on its own, and a JobSet when only JobSets are guarded.
    assert workload_of("ns", OwnerRef("RayCluster", "alone", "c"), owner_of, kinds) == (
        "ns",
        "RayCluster",
        "alone",
    )
    only_jobsets = frozenset({"JobSet"})
    found = workload_of("ns", OwnerRef("Job", "tj-node-0", "j"), owner_of, only_jobsets)
    assert found == ("ns", "JobSet", "tj")
