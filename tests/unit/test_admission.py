"""What the admission policy reads: a BreakerHold per namespace (actions/admission.py)."""

from __future__ import annotations

from breaker.actions.admission import Holding, changes, hold, params
from breaker.api.hold import BreakerHoldSpec


def test_params_name_the_quarantined_pods_and_the_scaled_workloads_per_namespace() -> None:
    holding = [
        Holding("team-a", "rl-guard", "TrainingJob", "rl"),
        Holding("team-a", "helper-guard", "Deployment", "helper"),
        Holding("team-b", "set-guard", "StatefulSet", "set"),
        Holding("team-c", "egress-only"),
    ]
    quarantined = [
        ("team-a", "rl-0", "rl-guard"),
        ("team-a", "helper-1", "helper-guard"),
        ("team-a", "stale-0", "reset-long-ago"),  # its breaker holds nothing: left out
        ("team-d", "x", "elsewhere"),
    ]
    assert params(holding, quarantined) == {
        "team-a": BreakerHoldSpec(
            breakers=["helper-guard", "rl-guard"],
            pods={"rl-0": "rl-guard", "helper-1": "helper-guard"},
            scaled={"deployments/helper": "helper-guard"},
        ),
        "team-b": BreakerHoldSpec(breakers=["set-guard"], scaled={"statefulsets/set": "set-guard"}),
        "team-c": BreakerHoldSpec(breakers=["egress-only"]),
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
    # The policy looks names up in both maps: they are there even when empty.
    assert body["spec"] == {"breakers": ["x"], "pods": {}, "scaled": {}}
