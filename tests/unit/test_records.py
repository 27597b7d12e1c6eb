"""The action-record protocol, without a cluster: what a restarted operator reads in a
Breaker's status.actions and decides from it."""

from __future__ import annotations

import datetime as dt
from typing import Any

from breaker.circuit import machine
from breaker.circuit.records import (
    applied,
    debt,
    event_message,
    failed_undos,
    handed,
    intend,
    quiet,
    unfinished,
)
from breaker.circuit.views import WorkloadView

NOW = dt.datetime(2026, 12, 3, 8, 0, tzinfo=dt.UTC)
ORDER = ["captureEvidence", "revokeEgress", "pause", "reassignGPUs", "quarantineNode", "notify"]
FREED = [{"node": "gpu-node-0", "gpus": 8}]


def nodes_changed(held: set[str]) -> dict[str, Any]:
    return {"nodes": sorted({"gpu-node-0"} | held)}


def test_every_action_is_written_pending_before_it_is_applied() -> None:
    records = intend([], ORDER, NOW, FREED, nodes_changed)
    assert [r["type"] for r in records] == [
        "revokeEgress",
        "pause",
        "reassignGPUs",
        "quarantineNode",
    ]
    assert all(r["pending"] for r in records)
    assert records[2]["changed"] == {"freed": FREED}  # the hand-off names what it frees ahead
    assert records[3]["changed"] == {"nodes": ["gpu-node-0"]}


def test_a_restart_keeps_what_was_done_and_intends_only_the_rest() -> None:
    done = {"type": "revokeEgress", "appliedAt": "t", "changed": {"policy": "q"}}
    records = intend([done], ORDER, NOW, FREED, nodes_changed)
    assert records[0] is done
    assert [r["type"] for r in records[1:]] == ["pause", "reassignGPUs", "quarantineNode"]


def test_a_failed_undo_is_applied_again_and_keeps_the_nodes_it_held() -> None:
    failed = {
        "type": "quarantineNode",
        "changed": {"nodes": ["gpu-node-3"]},
        "error": "undo failed",
    }
    (again,) = [
        r for r in intend([failed], ORDER, NOW, FREED, nodes_changed) if r["type"] == failed["type"]
    ]
    assert again["pending"]
    assert again["changed"] == {"nodes": ["gpu-node-0", "gpu-node-3"]}


def test_records_are_classified_for_retry_and_undo() -> None:
    pending = {"type": "pause", "pending": True}
    refused = {"type": "pause", "error": "403 Forbidden"}
    undo_failed = {"type": "pause", "error": "undo failed: 409"}
    dry_run = {"type": "pause", "dryRun": True, "pending": True}
    done = {"type": "pause"}
    assert [unfinished(r) for r in (pending, refused, undo_failed, dry_run, done)] == [
        True,
        True,
        False,
        False,
        False,
    ]
    assert [applied(r) for r in (pending, refused, undo_failed, dry_run, done)] == [
        False,
        False,
        False,
        True,
        True,
    ]


def test_failed_undos_are_retried_as_far_as_the_state_wants_them_undone() -> None:
    records = [
        {"type": t, "error": "undo failed: 500"} for t in ("revokeEgress", "pause", "reassignGPUs")
    ]
    assert failed_undos(records, machine.Breaker(state="Open", contained=True)) == []
    half_open = failed_undos(records, machine.Breaker(state="HalfOpen", contained=True))
    assert [r["type"] for r in half_open] == ["pause", "reassignGPUs"]
    assert failed_undos(records, machine.Breaker(state="Closed")) == records


def test_the_awaited_handoff_records_its_recipient() -> None:
    records: list[dict[str, Any]] = [
        {"type": "reassignGPUs", "changed": {"freed": FREED, "awaiting": True}}
    ]
    assert handed(records, 0, ["team-c/finetune"])[0]["changed"] == {
        "freed": FREED,
        "to": ["team-c/finetune"],
    }
    assert records[0]["changed"]["awaiting"]  # the input is not changed


def test_a_reset_trainingjob_is_owed_its_gpus_back() -> None:
    job = WorkloadView(
        "breaker.dev/v1alpha1", "TrainingJob", "a", "rl", "u", {}, False, None, None, False, {}
    )
    records = [{"type": "reassignGPUs", "changed": {"to": ["team-c/finetune"]}}]
    assert debt(job, records) == {"job": "rl", "from": "team-c/finetune"}
    assert debt(job, [{**records[0], "dryRun": True}]) is None
    assert debt(None, records) is None


def test_a_closed_breaker_with_nothing_new_is_quiet() -> None:
    body: dict[str, Any] = {"metadata": {}, "spec": {}}
    closed = {"state": "Closed", "signals": "Available"}
    assert quiet(closed, body, tripped=False)
    assert not quiet(closed, body, tripped=True)
    assert not quiet({**closed, "actions": [{"type": "pause"}]}, body, tripped=False)
    assert not quiet(closed, {**body, "spec": {"override": "ForcedOpen"}}, tripped=False)


def test_the_event_says_what_was_applied_and_what_failed() -> None:
    records = [{"type": "revokeEgress"}, {"type": "pause", "error": "403"}]
    after = machine.Breaker(state="Open", reason="critical:ssh-tunnel")
    assert event_message(after, records, dry_run=False) == (
        "critical:ssh-tunnel; applied: revokeEgress; FAILED: pause (see status.actions)"
    )
    assert event_message(after, records[:1], dry_run=True).endswith(
        "would have applied: revokeEgress (DryRun: nothing was changed)"
    )
