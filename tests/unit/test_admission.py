"""What the admission policy reads: the params per namespace (actions/admission.py)."""

from __future__ import annotations

from breaker.actions.admission import Holding, changes, configmap, params


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
        "team-a": {
            "breakers": "helper-guard rl-guard",
            "pod.rl-0": "rl-guard",
            "pod.helper-1": "helper-guard",
            "scale.deployments.helper": "helper-guard",
        },
        "team-b": {"breakers": "set-guard", "scale.statefulsets.set": "set-guard"},
        "team-c": {"breakers": "egress-only"},
    }
    assert params([], quarantined) == {}


def test_only_what_differs_is_written_and_what_is_no_longer_held_is_deleted() -> None:
    written = {"a": {"breakers": "x"}, "b": {"breakers": "y"}, "gone": {"breakers": "z"}}
    wanted = {"a": {"breakers": "x"}, "b": {"breakers": "y", "pod.p": "y"}, "new": {"k": "v"}}
    write, delete = changes(wanted, written)
    assert write == {"b": {"breakers": "y", "pod.p": "y"}, "new": {"k": "v"}}
    assert delete == ["gone"]


def test_the_configmap_is_labelled_as_breakers_own() -> None:
    body = configmap("team-a", {"breakers": "x"})
    assert body["metadata"]["name"] == "breaker-containment"
    assert body["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "breaker"}
