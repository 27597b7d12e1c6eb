"""What the admission policy reads: a BreakerHold per namespace (actions/admission.py)."""

from __future__ import annotations

from breaker.actions.admission import Holding, Quarantined, changes, hold, params
from breaker.api.hold import BreakerHoldSpec, KinRule


def test_params_name_the_quarantined_pods_and_the_scaled_workloads_per_namespace() -> None:
    kin = KinRule(breaker="egress-only", labels={"app": "web"}, kept='{"dns":true}')
    holding = [
        Holding("team-a", "rl-guard", "TrainingJob", "rl", "trainingjobs/rl"),
        Holding("team-a", "helper-guard", "Deployment", "helper", "deployments/helper"),
        Holding("team-b", "set-guard", "StatefulSet", "set", "statefulsets/set"),
        Holding("team-c", "egress-only", workload="deployments/web", kin=kin),
    ]
    quarantined = [
        Quarantined("team-a", "rl-0", "rl-guard", {"app": "rl"}),
        Quarantined("team-a", "helper-1", "helper-guard", {"app": "helper"}),
        # Its breaker holds nothing: left out.
        Quarantined("team-a", "stale-0", "reset-long-ago", {"app": "old"}),
        Quarantined("team-c", "web-1", "egress-only", {"app": "web", "tier": "front"}),
        Quarantined("team-d", "x", "elsewhere", {}),
    ]
    services = [
        ("team-c", "web", {"app": "web"}),  # picks the quarantined pod: its proxy refused
        ("team-c", "web-back", {"app": "web", "tier": "back"}),
        ("team-c", "everything", {}),  # no selector: Endpoints by hand, not the pods'
        ("team-a", "old", {"app": "old"}),
    ]
    assert params(holding, quarantined, services) == {
        "team-a": BreakerHoldSpec(
            breakers=["helper-guard", "rl-guard"],
            pods={"rl-0": "rl-guard", "helper-1": "helper-guard"},
            scaled={"deployments/helper": "helper-guard"},
            pausing=["helper-guard", "rl-guard"],
            workloads={"trainingjobs/rl": "rl-guard", "deployments/helper": "helper-guard"},
        ),
        "team-b": BreakerHoldSpec(
            breakers=["set-guard"],
            scaled={"statefulsets/set": "set-guard"},
            pausing=["set-guard"],
            workloads={"statefulsets/set": "set-guard"},
        ),
        "team-c": BreakerHoldSpec(
            breakers=["egress-only"],
            pods={"web-1": "egress-only"},
            workloads={"deployments/web": "egress-only"},
            kin=[kin],
            services={"web": "egress-only"},
        ),
    }
    assert params([], quarantined) == {}


def test_only_what_differs_is_written_and_what_is_no_longer_held_is_deleted() -> None:
    x, y = BreakerHoldSpec(breakers=["x"]), BreakerHoldSpec(breakers=["y"])
    y_pod = BreakerHoldSpec(breakers=["y"], pods={"p": "y"})
    written = {"a": x, "b": y, "gone": x, "unreadable": None}
    wanted = {"a": x, "b": y_pod, "new": x, "unreadable": y}
    write, delete = changes(wanted, written)
    assert write == {"b": y_pod, "new": x, "unreadable": y}
    assert delete == ["gone"]


def test_the_hold_is_labelled_as_breakers_own_and_keeps_empty_maps() -> None:
    body = hold("team-a", BreakerHoldSpec(breakers=["x"]))
    assert (body["apiVersion"], body["kind"]) == ("breaker.dev/v1alpha1", "BreakerHold")
    assert body["metadata"] == {
        "name": "breaker-containment",
        "namespace": "team-a",
        "labels": {"app.kubernetes.io/managed-by": "breaker"},
    }
    # The policy looks names up in the maps: they are there even when empty.
    assert body["spec"] == {
        "breakers": ["x"],
        "pods": {},
        "scaled": {},
        "pausing": [],
        "workloads": {},
        "kin": [],
        "services": {},
    }
