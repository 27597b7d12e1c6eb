"""Policies select workloads within their reach; each pair gets one Breaker."""

from __future__ import annotations

from breaker.api.breaker import Breaker
from breaker.circuit.selection import Policy, Workload, breaker_name, desired_breaker, selects

TJ = Workload("breaker.dev/v1alpha1", "TrainingJob", "team-a", "rl", "uid-1", {"team": "agents"})


def test_a_namespaced_policy_never_reaches_outside_its_namespace() -> None:
    everything = {"targets": {"kinds": ["TrainingJob"]}}
    assert selects(Policy("BreakerPolicy", "p", "team-a", everything), TJ, {})
    assert not selects(Policy("BreakerPolicy", "p", "team-b", everything), TJ, {})


def test_kinds_and_labels_narrow_the_targets() -> None:
    only_jobs = Policy("BreakerPolicy", "p", "team-a", {"targets": {"kinds": ["Job"]}})
    assert not selects(only_jobs, TJ, {})
    labelled = Policy(
        "BreakerPolicy",
        "p",
        "team-a",
        {"targets": {"selector": {"matchLabels": {"team": "other"}}}},
    )
    assert not selects(labelled, TJ, {})


def test_a_cluster_policy_picks_namespaces_by_label() -> None:
    spec = {"targets": {"namespaceSelector": {"matchLabels": {"breaker.dev/guard": "enabled"}}}}
    policy = Policy("ClusterBreakerPolicy", "c", None, spec)
    assert selects(policy, TJ, {"breaker.dev/guard": "enabled"})
    assert not selects(policy, TJ, {})


def test_breaker_names_are_valid_and_stable() -> None:
    policy = Policy("BreakerPolicy", "p" * 60, "team-a", {})
    name = breaker_name(policy, TJ)
    assert len(name) <= 63
    assert name == breaker_name(policy, TJ)
    assert breaker_name(Policy("BreakerPolicy", "guard", "team-a", {}), TJ) == "rl-guard"


def test_the_desired_breaker_validates_against_the_model() -> None:
    body = desired_breaker(Policy("ClusterBreakerPolicy", "default", None, {}), TJ)
    Breaker.model_validate(body)
    # Never owned: deleting the workload must not take a tripped Breaker with it.
    assert "ownerReferences" not in body["metadata"]
    assert body["spec"]["policyRef"] == {"kind": "ClusterBreakerPolicy", "name": "default"}
