"""Node quarantine: cordon and taint, and a release that undoes only the breaker's part."""

from __future__ import annotations

import json
from typing import Any

from breaker.actions.node import MARK, TAINT_KEY, holder, quarantine, quarantine_taint, release

GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


def node(unschedulable: bool = False, taints: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"podCIDR": "10.0.1.0/24"}
    if unschedulable:
        spec["unschedulable"] = True
    if taints:
        spec["taints"] = taints
    return {"metadata": {"name": "gpu-1", "resourceVersion": "7"}, "spec": spec}


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies a merge patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


def quarantined(found: dict[str, Any], breaker: str = "b1", **options: Any) -> Any:
    settings = {"cordon": True, "taint": True, **options}
    patch, record = quarantine(found, breaker, **settings)
    return merge(found, patch), record


def test_a_clean_node_is_cordoned_and_tainted() -> None:
    patch, record = quarantine(node(taints=[GPU_TAINT]), "b1", cordon=True, taint=True)
    assert patch is not None
    ours = {"key": TAINT_KEY, "value": "b1", "effect": "NoSchedule"}
    assert patch["spec"] == {"unschedulable": True, "taints": [GPU_TAINT, ours]}
    assert patch["metadata"]["resourceVersion"] == "7"
    assert record == {
        "breaker": "b1",
        "wasUnschedulable": False,
        "cordoned": True,
        "hadTaint": False,
        "taint": ours,
    }


def test_evict_uses_no_execute() -> None:
    patch, _ = quarantine(node(), "b1", cordon=False, taint=True, evict=True)
    assert patch is not None
    assert patch["spec"] == {"taints": [quarantine_taint("b1", evict=True)]}
    assert patch["spec"]["taints"][0]["effect"] == "NoExecute"


def test_release_restores_the_node_exactly() -> None:
    original = node(taints=[GPU_TAINT])
    held, record = quarantined(original)
    after = merge(held, release(held, record))
    assert after["spec"] == original["spec"]
    assert MARK not in after["metadata"]["annotations"]
    assert release(after, record) is None  # releasing twice changes nothing


def test_a_node_cordoned_before_stays_cordoned() -> None:
    held, record = quarantined(node(unschedulable=True))
    assert record["wasUnschedulable"]
    assert not record["cordoned"]
    after = merge(held, release(held, record))
    assert after["spec"]["unschedulable"] is True
    assert after["spec"].get("taints") is None  # our taint went all the same


def test_taints_added_by_others_meanwhile_stay_and_ours_goes() -> None:
    held, record = quarantined(node(taints=[GPU_TAINT]))
    unreachable = {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}
    held["spec"]["taints"].append(unreachable)
    after = merge(held, release(held, record))
    assert after["spec"]["taints"] == [GPU_TAINT, unreachable]


def test_quarantining_twice_changes_nothing() -> None:
    held, _ = quarantined(node())
    patch, record = quarantine(held, "b1", cordon=True, taint=True)
    assert patch is None
    assert record["hadTaint"]
    assert record["taint"] is None
    after = merge(held, release(held, record))  # the second record releases all the same
    assert "unschedulable" not in after["spec"]
    assert "taints" not in after["spec"]


def test_a_quarantine_shared_by_two_breakers_lifts_with_the_last() -> None:
    held, first = quarantined(node())
    patch, second = quarantine(held, "b2", cordon=True, taint=True)
    assert patch is not None
    assert "spec" not in patch
    held = merge(held, patch)

    held = merge(held, release(held, first))
    assert held["spec"]["unschedulable"] is True
    assert [t["key"] for t in held["spec"]["taints"]] == [TAINT_KEY]

    after = merge(held, release(held, second))
    assert "unschedulable" not in after["spec"]
    assert "taints" not in after["spec"]


def test_breakers_of_one_name_in_two_namespaces_hold_a_node_apart() -> None:
    held, first = quarantined(node(), holder("team-a", "rl-guard"))
    patch, second = quarantine(held, holder("team-b", "rl-guard"), cordon=True, taint=True)
    held = merge(held, patch)

    held = merge(held, release(held, first))  # team-a's reset
    assert held["spec"]["unschedulable"] is True  # team-b's breaker still holds it
    assert json.loads(held["metadata"]["annotations"][MARK])["holders"] == ["team-b/rl-guard"]

    after = merge(held, release(held, second))
    assert "unschedulable" not in after["spec"]
    assert "taints" not in after["spec"]


def test_nothing_asked_nothing_done() -> None:
    patch, record = quarantine(node(), "b1", cordon=False, taint=False)
    assert patch is None
    assert release(node(), record) is None


def test_a_taint_value_is_a_valid_label_value() -> None:
    assert quarantine_taint("team-a/" + "x" * 80)["value"] == "team-a-" + "x" * 56
