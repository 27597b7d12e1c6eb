"""What the operator does with API errors that are not the spec's fault: 429 and 409."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from kubernetes import client

from breaker import kube
from breaker.actions import executor
from breaker.api.policy import QuarantineNodeAction
from breaker.circuit.machine import Breaker
from breaker.circuit.records import applied, failed_undos, unfinished
from breaker.controllers.breakers import _intend


def throttled(retry_after: str | None = None) -> client.ApiException:
    error = client.ApiException(status=429, reason="Too Many Requests")
    error.headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return error


def test_retry_after_is_honoured_and_capped() -> None:
    assert kube.retry_after(throttled("1"), 0) == 1.0
    assert kube.retry_after(throttled("600"), 0) == kube.THROTTLE_WAIT_CAP_SECONDS
    assert kube.retry_after(throttled(), 2) == 4.0  # none given: 1, 2, 4 s


def test_a_throttled_call_is_retried_and_other_errors_are_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kube, "retry_after", lambda *_: 0.0)
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise throttled("1")
        return "done"

    assert asyncio.run(kube.call(flaky)) == "done"
    assert len(calls) == 3

    def conflict() -> Any:
        raise client.ApiException(status=409, reason="Conflict")

    with pytest.raises(client.ApiException):
        asyncio.run(kube.call(conflict))

    def always() -> Any:
        raise throttled()

    with pytest.raises(client.ApiException) as caught:
        asyncio.run(kube.call(always))
    assert caught.value.status == 429


def test_pending_and_failed_actions_are_unfinished_but_not_dry_runs_or_failed_undos() -> None:
    assert unfinished({"type": "pause", "pending": True})
    assert unfinished({"type": "pause", "error": "429 Too Many Requests: slow down"})
    assert not unfinished({"type": "pause", "changed": {}})
    assert not unfinished({"type": "pause", "error": "x", "dryRun": True})
    assert not unfinished({"type": "pause", "error": "undo failed: 500 boom"})


class HeartbeatingNodes:
    """A CoreV1Api stand-in whose nodes are written (a heartbeat) between the operator's
    read and its patch, ``beats`` times, as kubelets and kwok write them."""

    def __init__(self, beats: int) -> None:
        self.beats = beats
        self.node: dict[str, Any] = {
            "metadata": {"name": "gpu-0", "resourceVersion": "1", "annotations": {}},
            "spec": {},
        }
        self.patches = 0

    def read_node(self, name: str) -> dict[str, Any]:
        found = copy.deepcopy(self.node)
        if self.beats:
            self.beats -= 1
            self.node["metadata"]["resourceVersion"] = str(int(self.version()) + 1)
        return found

    def version(self) -> str:
        return str(self.node["metadata"]["resourceVersion"])

    def patch_node(self, name: str, patch: dict[str, Any], **_: Any) -> dict[str, Any]:
        self.patches += 1
        if patch["metadata"].get("resourceVersion") != self.version():
            raise client.ApiException(status=409, reason="Conflict")
        self.node["metadata"]["annotations"].update(patch["metadata"]["annotations"])
        self.node["spec"].update(patch.get("spec") or {})
        self.node["metadata"]["annotations"] = {
            k: v for k, v in self.node["metadata"]["annotations"].items() if v is not None
        }
        return self.node


def scene_with(core: HeartbeatingNodes, monkeypatch: pytest.MonkeyPatch) -> executor.Scene:
    monkeypatch.setattr(client, "CoreV1Api", lambda _: core)  # the module executor calls
    return executor.Scene(client.ApiClient(), "rl-guard", "team-a", None, [], [], [], [])


def test_a_node_written_meanwhile_is_read_and_patched_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    core = HeartbeatingNodes(beats=2)
    scene = scene_with(core, monkeypatch)
    done = asyncio.run(executor.quarantine_nodes(scene, ["gpu-0"], QuarantineNodeAction()))
    assert core.patches == 3
    assert core.node["spec"]["unschedulable"] is True
    assert done["nodes"]["gpu-0"]["cordoned"] is True
    core.beats = 1
    assert asyncio.run(executor.release_nodes(scene, done)) == {"released": ["gpu-0"]}
    assert core.node["spec"] == {"unschedulable": None, "taints": None}
    assert "breaker.dev/quarantine" not in core.node["metadata"]["annotations"]


def test_a_node_that_never_holds_still_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    core = HeartbeatingNodes(beats=executor.NODE_CONFLICT_ATTEMPTS)
    with pytest.raises(client.ApiException) as caught:
        asyncio.run(
            executor.quarantine_nodes(
                scene_with(core, monkeypatch), ["gpu-0"], QuarantineNodeAction()
            )
        )
    assert caught.value.status == 409
    assert core.patches == executor.NODE_CONFLICT_ATTEMPTS


def test_failed_undos_are_retried_where_the_state_still_wants_them_undone() -> None:
    records: list[dict[str, Any]] = [
        {"type": "revokeEgress", "changed": {}, "error": "undo failed: 409 Conflict"},
        {"type": "pause", "changed": {}, "error": "undo failed: 500 boom"},
        {"type": "quarantineNode", "changed": {}},
    ]
    assert failed_undos(records, Breaker(state="Closed")) == records[:2]
    assert failed_undos(records, Breaker(state="HalfOpen", contained=True)) == records[1:2]
    assert failed_undos(records, Breaker(state="Open", contained=True)) == []


def test_an_action_whose_undo_failed_is_applied_again_on_the_next_trip() -> None:
    held = {"nodes": {"gpu-0": {"breaker": "rl-guard"}}}
    records: list[dict[str, Any]] = [
        {"type": "revokeEgress", "changed": {"policy": "q"}},
        {"type": "quarantineNode", "changed": held, "error": "undo failed: 409 Conflict"},
    ]
    assert applied(records[0])
    assert not applied(records[1])
    assert not unfinished(records[1])  # nothing to finish: it is to be undone, or redone
    scene = executor.Scene(client.ApiClient(), "rl-guard", "team-a", None, [], [], [], [])
    order = ["revokeEgress", "pause", "quarantineNode"]
    intended = _intend(records, order, scene, {"gpu-1"})
    assert [r["type"] for r in intended] == order
    assert intended[0] == records[0]  # still in place: not applied twice
    redo = intended[2]
    assert redo["pending"]
    assert "error" not in redo
    assert sorted(redo["changed"]["nodes"]) == ["gpu-0", "gpu-1"]  # the nodes it held too
