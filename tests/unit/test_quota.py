"""The GPU quota clamp: lowered or created, never raised, and undone exactly."""

from __future__ import annotations

import json
from typing import Any

import pytest

from breaker.actions.quota import (
    GPU_QUOTA_KEY,
    MARK,
    Create,
    Delete,
    Operation,
    Patch,
    plan_clamp,
    plan_restore,
)
from breaker.constants import CLAMP_QUOTA_NAME


def quota(name: str, gpus: Any = None, version: str = "1", **spec: Any) -> dict[str, Any]:
    hard = {"requests.cpu": "64"} if gpus is None else {"requests.cpu": "64", GPU_QUOTA_KEY: gpus}
    return {
        "metadata": {"name": name, "namespace": "team", "resourceVersion": version},
        "spec": {"hard": hard, **spec},
        "status": {"hard": hard, "used": {GPU_QUOTA_KEY: "4"}},
    }


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


def apply(quotas: list[dict[str, Any]], operations: list[Operation]) -> list[dict[str, Any]]:
    """The namespace's quotas after the operations, as the API server would leave them."""
    by_name = {q["metadata"]["name"]: q for q in quotas}
    for operation in operations:
        if isinstance(operation, Create):
            by_name[operation.body["metadata"]["name"]] = operation.body
        elif isinstance(operation, Patch):
            by_name[operation.name] = merge(by_name[operation.name], operation.patch)
        else:
            del by_name[operation.name]
    return list(by_name.values())


def gpus(quotas: list[dict[str, Any]], name: str) -> Any:
    found = next(q for q in quotas if q["metadata"]["name"] == name)
    return found["spec"]["hard"].get(GPU_QUOTA_KEY)


def test_a_namespace_without_a_gpu_quota_gets_the_clamp_quota() -> None:
    operations, record = plan_clamp([quota("compute")], "team", 4, "b1")
    assert len(operations) == 1
    assert isinstance(operations[0], Create)
    body = operations[0].body
    assert body["metadata"]["name"] == CLAMP_QUOTA_NAME
    assert body["metadata"]["namespace"] == "team"
    assert body["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "breaker"}
    assert body["spec"]["hard"] == {GPU_QUOTA_KEY: "4"}
    assert record["created"] == [CLAMP_QUOTA_NAME]
    assert json.loads(json.dumps(record)) == record  # fits in a status

    restored, skipped = plan_restore(record, apply([quota("compute")], operations))
    assert restored == [Delete(CLAMP_QUOTA_NAME)]
    assert skipped == {}


def test_a_scoped_quota_does_not_count_as_a_cap() -> None:
    scoped = quota("high-priority", "16", scopes=["PriorityClass"])
    operations, record = plan_clamp([scoped], "team", 4, "b1")
    assert [type(o) for o in operations] == [Create]
    assert record["lowered"] == {}


def test_an_existing_gpu_quota_is_lowered_and_its_value_kept() -> None:
    operations, record = plan_clamp([quota("gpus", "16")], "team", 4, "b1")
    assert len(operations) == 1
    assert isinstance(operations[0], Patch)
    assert operations[0].name == "gpus"
    assert operations[0].patch["spec"] == {"hard": {GPU_QUOTA_KEY: "4"}}
    assert operations[0].patch["metadata"]["resourceVersion"] == "1"
    assert record["lowered"] == {"gpus": {"was": "16", "clamped": "4"}}
    assert record["created"] == []


def test_an_integer_quantity_is_read_and_recorded_as_a_string() -> None:
    _, record = plan_clamp([quota("gpus", 16)], "team", 4, "b1")
    assert record["lowered"] == {"gpus": {"was": "16", "clamped": "4"}}


def test_a_quota_is_never_raised() -> None:
    quotas = [quota("tight", "2"), quota("loose", "16")]
    operations, record = plan_clamp(quotas, "team", 4, "b1")
    assert [o.name for o in operations if isinstance(o, Patch)] == ["loose"]
    assert "tight" not in record["lowered"]
    assert "tight" not in record["held"]


def test_clamping_twice_changes_nothing_the_second_time() -> None:
    first, _ = plan_clamp([quota("gpus", "16")], "team", 4, "b1")
    clamped = apply([quota("gpus", "16")], first)
    second, again = plan_clamp(clamped, "team", 4, "b1")
    assert second == []
    assert again["lowered"] == {}
    assert again["created"] == []
    assert again["held"] == ["gpus"]  # a restore from either record lets go of it

    created, _ = plan_clamp([], "team", 0, "b1")
    assert plan_clamp(apply([], created), "team", 0, "b1")[0] == []


def test_a_restore_puts_back_the_exact_value() -> None:
    operations, record = plan_clamp([quota("gpus", "16")], "team", 4, "b1")
    clamped = apply([quota("gpus", "16")], operations)
    restored, skipped = plan_restore(record, clamped)
    after = apply(clamped, restored)
    assert gpus(after, "gpus") == "16"
    assert skipped == {}
    assert MARK not in after[0]["metadata"]["annotations"]
    assert plan_restore(record, after) == ([], {})  # restoring twice changes nothing


@pytest.mark.parametrize("admin_set", ["8", "32", "1"])
def test_a_value_an_admin_changed_meanwhile_stays(admin_set: str) -> None:
    operations, record = plan_clamp([quota("gpus", "16")], "team", 4, "b1")
    clamped = apply([quota("gpus", "16")], operations)
    clamped[0]["spec"]["hard"][GPU_QUOTA_KEY] = admin_set
    restored, skipped = plan_restore(record, clamped)
    assert gpus(apply(clamped, restored), "gpus") == admin_set
    assert "gpus" in skipped
    assert admin_set in skipped["gpus"]


def test_the_clamp_quota_found_from_another_breaker_is_shared_not_duplicated() -> None:
    created, first = plan_clamp([], "team", 4, "b1")
    namespace = apply([], created)
    joined, second = plan_clamp(namespace, "team", 2, "b2")
    assert [type(o) for o in joined] == [Patch]  # lowered, no second quota
    assert second["lowered"] == {CLAMP_QUOTA_NAME: {"was": "4", "clamped": "2"}}
    namespace = apply(namespace, joined)

    # The first breaker resets: the clamp stays for the second.
    namespace = apply(namespace, plan_restore(first, namespace)[0])
    assert gpus(namespace, CLAMP_QUOTA_NAME) == "2"
    # The last breaker resets: the quota a breaker created goes.
    operations, _ = plan_restore(second, namespace)
    assert [type(o) for o in operations] == [Delete]


def test_a_tight_clamp_held_by_another_breaker_is_joined() -> None:
    lowered, first = plan_clamp([quota("gpus", "16")], "team", 4, "b1")
    namespace = apply([quota("gpus", "16")], lowered)
    joined, second = plan_clamp(namespace, "team", 6, "b2")
    assert second["held"] == ["gpus"]
    assert second["lowered"] == {}
    namespace = apply(namespace, joined)

    namespace = apply(namespace, plan_restore(first, namespace)[0])
    assert gpus(namespace, "gpus") == "4"  # still needed by b2
    namespace = apply(namespace, plan_restore(second, namespace)[0])
    assert gpus(namespace, "gpus") == "16"  # the value before either breaker


def test_stacked_clamps_restore_the_value_before_the_first() -> None:
    lowered, first = plan_clamp([quota("gpus", "16")], "team", 4, "b1")
    namespace = apply([quota("gpus", "16")], lowered)
    lowered, second = plan_clamp(namespace, "team", 2, "b2")
    namespace = apply(namespace, lowered)
    namespace = apply(namespace, plan_restore(second, namespace)[0])
    namespace = apply(namespace, plan_restore(first, namespace)[0])
    assert gpus(namespace, "gpus") == "16"


def test_a_quota_deleted_meanwhile_is_reported() -> None:
    _, record = plan_clamp([quota("gpus", "16")], "team", 4, "b1")
    operations, skipped = plan_restore(record, [])
    assert operations == []
    assert "gpus" in skipped
