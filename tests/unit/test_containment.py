"""The Breaker status contract (docs/status.md): what the operator writes ahead of a trip and
once it is done, and its readers (the demo, `kubectl breaker`, the webhook) held to it.

The records are made by the operator's own code: the write-ahead by ``_intend``, the
outcome by the executor's actions in DryRun (which compute the same records without
sending anything), so a renamed field in either breaks these tests.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from breaker.actions import connections, executor
from breaker.actions.notify import payload
from breaker.api import containment
from breaker.api.policy import RevokeEgressAction
from breaker.circuit.ownership import OwnerRef
from breaker.circuit.views import PodView, WorkloadView
from breaker.controllers.breakers import _intend
from breaker.plugin import explain, reset_done, tripped
from breaker_tooling.demo import DemoError, timeline_lines

DOCS = Path(__file__).parents[2] / "docs" / "status.md"
ORDER = ["captureEvidence", "revokeEgress", "pause", "reassignGPUs"]
DECIDED, DONE = "2026-12-02T10:00:38.100Z", "2026-12-02T10:00:38.400Z"
ORIGIN = dt.datetime(2026, 12, 2, 10, 0, 0, tzinfo=dt.UTC)


def scene() -> executor.Scene:
    """The demo's tenant: two pods of 8 GPUs, and a policy that lets every pod out."""
    pods = [
        PodView(
            "rome-lab",
            f"rl-agent-{i}",
            f"uid-{i}",
            OwnerRef("Job", "rl-agent", "job-uid"),
            {"breaker.dev/trainingjob": "rl-agent"},
            f"gpu-node-{i}",
            8,
            "Running",
            False,
        )
        for i in range(2)
    ]
    body = {"metadata": {"name": "rl-agent", "annotations": {}}, "spec": {"suspend": False}}
    workload = WorkloadView(
        "breaker.dev/v1alpha1",
        "TrainingJob",
        "rome-lab",
        "rl-agent",
        "tj-uid",
        {},
        False,
        None,
        False,
        False,
        body,
    )
    allow_all = {
        "metadata": {"name": "allow-all-egress", "namespace": "rome-lab"},
        "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]},
    }
    return executor.Scene(
        api=client.ApiClient(),  # unconfigured: a dry run does not call the API
        breaker="rl-agent-demo",
        namespace="rome-lab",
        workload=workload,
        pods=pods,
        netpols=[allow_all],
        quotas=[],
        namespace_pods=pods,
        dry_run=True,
    )


def written_ahead() -> list[dict[str, Any]]:
    return _intend([], ORDER, scene(), set())


def done_records() -> list[dict[str, Any]]:
    """The trip's records as the operator writes them once the actions ran."""

    async def run() -> list[dict[str, Any]]:
        where = scene()
        egress = await executor.revoke_egress(where, RevokeEgressAction())
        egress["connections"] = connections.coverage(["gpu-node-0", "gpu-node-1"], ["gpu-node-0"])
        paused = await executor.pause_workload(where)
        clamp = await executor.clamp_quota(where)
        handed = {
            "freed": executor.freed_gpus(where.pods),
            "quota": clamp,
            "to": ["team-c/finetune"],
        }
        return [
            {"type": kind, "changed": changed, "appliedAt": DONE}
            for kind, changed in (
                ("revokeEgress", egress),
                ("pause", paused),
                ("reassignGPUs", handed),
            )
        ]

    return asyncio.run(run())


def status(state: str, records: list[dict[str, Any]], **more: Any) -> dict[str, Any]:
    """A Breaker's status with the Contained condition the operator writes for it."""
    flag, reason, message = containment.condition(state, records, bool(more.get("dryRun")))
    condition = {
        "type": "Contained",
        "status": flag,
        "reason": reason,
        "message": message,
        "observedGeneration": more.pop("generation", 1),
    }
    return {
        "state": state,
        "trips": 1,
        "lastTrip": "2026-12-02T10:00:38.000Z",
        "reason": "anyCritical: pool=3",
        "evidence": [
            {
                "time": "2026-12-02T10:00:38.050Z",
                "rule": "anyCritical",
                "signals": [{"name": "pool", "query": "q", "value": 3.0, "pod": "rl-agent-0"}],
                "pods": [{"name": "rl-agent-0", "node": "gpu-node-0"}],
            }
        ],
        "actions": records,
        "conditions": [condition],
        **more,
    }


def breaker(state: str, records: list[dict[str, Any]], **more: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "rl-agent-demo", "namespace": "rome-lab", "generation": 1},
        "spec": {
            "policyRef": {"kind": "ClusterBreakerPolicy", "name": "demo"},
            "targetRef": {"kind": "TrainingJob", "name": "rl-agent"},
        },
        "status": status(state, records, **more),
    }


# -- the page and the code say the same -----------------------------------------------------


def table(marker: str) -> list[list[str]]:
    text = DOCS.read_text()
    block = text.split(f"<!-- contract:{marker} -->")[1].split(f"<!-- /contract:{marker} -->")[0]
    rows = [line for line in block.strip().splitlines()[2:] if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def names(cell: str) -> tuple[str, ...]:
    return tuple(re.findall(r"`([A-Za-z]+)`", cell))


def test_the_documented_reasons_are_the_codes() -> None:
    documented = {names(r[0])[0]: (r[1], r[2]) for r in table("reasons")}
    assert documented == dict(containment.REASONS)


def test_the_documented_fields_are_the_codes() -> None:
    rows = {names(r[0])[0]: (names(r[1]), names(r[2])) for r in table("fields")}
    assert {k: done for k, (_, done) in rows.items()} == dict(containment.REQUIRED)
    assert {k: ahead for k, (ahead, _) in rows.items() if ahead} == dict(containment.PENDING)


# -- the writer: the condition, and the records it writes -------------------------------------


def test_a_trip_written_ahead_is_in_progress_and_holds_only_what_was_counted() -> None:
    records = written_ahead()
    assert [r["type"] for r in records] == ["revokeEgress", "pause", "reassignGPUs"]
    for record in records:
        assert record["pending"] is True
        assert set(record.get("changed") or {}) == set(containment.PENDING.get(record["type"], ()))
    assert containment.condition("Open", records, False) == (
        "False",
        "InProgress",
        "applying: revokeEgress, pause, reassignGPUs",
    )


def test_the_outcome_is_contained_once_every_action_is_done() -> None:
    flag, reason, message = containment.condition("Open", done_records(), False)
    assert (flag, reason) == ("True", "Contained")
    assert message == "done: revokeEgress, pause, reassignGPUs"


@pytest.mark.parametrize(
    ("state", "records", "dry_run", "reason"),
    [
        ("Closed", [], False, "NotTripped"),
        ("Disabled", [], False, "NotTripped"),
        (
            "Open",
            [{"type": "pause", "appliedAt": DONE, "error": "403 Forbidden: no"}],
            False,
            "ActionsFailed",
        ),
        ("ForcedOpen", [{"type": "pause", "appliedAt": DONE, "dryRun": True}], True, "DryRun"),
        (
            "HalfOpen",
            [{"type": "revokeEgress", "appliedAt": DONE, "changed": {}}],
            False,
            "Probation",
        ),
        (
            "Closed",
            [{"type": "pause", "appliedAt": DONE, "error": "undo failed: 409 Conflict"}],
            False,
            "UndoFailed",
        ),
    ],
)
def test_every_other_moment_has_its_reason(
    state: str, records: list[dict[str, Any]], dry_run: bool, reason: str
) -> None:
    flag, found, _ = containment.condition(state, records, dry_run)
    assert found == reason
    assert flag == containment.REASONS[reason][0]


def test_the_executors_done_records_read_as_the_contract_says() -> None:
    found = containment.read(status("Open", done_records(), timeToContainSeconds=0.31))
    assert (found.reason, found.contained, found.seconds) == ("Contained", True, 0.31)
    egress, paused, gpus = (a.detail for a in found.actions)
    assert egress == containment.EgressRevoked(
        "rl-agent-demo-quarantine",
        ("rl-agent-0", "rl-agent-1"),
        ("allow-all-egress",),
        (),
        cut_on=("gpu-node-0",),
        uncut_on=("gpu-node-1",),
    )
    assert paused == containment.Paused("TrainingJob", "rl-agent")
    assert isinstance(gpus, containment.GPUsReassigned)
    assert gpus.freed == (
        containment.NodeGPUs("gpu-node-0", 8),
        containment.NodeGPUs("gpu-node-1", 8),
    )
    assert gpus.to == ("team-c/finetune",)


def test_a_done_record_without_its_fields_breaks_the_contract_by_name() -> None:
    broken = {"type": "revokeEgress", "appliedAt": DONE, "changed": {"quarantine": "q"}}
    with pytest.raises(containment.ContractError, match=r"actions\[0\].*changed.quarantinePolicy"):
        containment.read({"state": "Open", "actions": [broken]})


def test_a_status_without_the_condition_is_judged_from_its_records() -> None:
    """Written by an operator older than the condition."""
    old = {"state": "Open", "actions": written_ahead()}
    assert containment.read(old).reason == "InProgress"


# -- the readers ------------------------------------------------------------------------------


def test_the_demo_prints_only_recorded_facts_once_contained() -> None:
    lines = timeline_lines(status("Open", done_records(), timeToContainSeconds=0.31), ORIGIN)
    text = "\n".join(lines)
    assert "+ 38.0s  breaker rl-agent-demo Open" in text
    assert (
        "+ 38.4s  egress revoked: quarantine NetworkPolicy rl-agent-demo-quarantine (2 pods); "
        "other policies narrowed: allow-all-egress; open connections cut by the node agent on "
        "gpu-node-0; open connections MAY SURVIVE on gpu-node-1 (no node agent there: a "
        "NetworkPolicy stops new connections, not those already open)"
    ) in text
    assert "+ 38.4s  TrainingJob rl-agent suspended" in text
    assert (
        "+ 38.4s  GPUs (gpu-node-0:8, gpu-node-1:8) handed to team-c/finetune; "
        "rome-lab's GPU quota clamped (breaker-gpu-clamp)"
    ) in text
    assert lines[-1] == "  time to contain (evaluation to last action): 0.310 s"
    assert "None" not in text
    assert "nobody" not in text


def test_the_demo_refuses_a_status_still_written_ahead() -> None:
    with pytest.raises(DemoError, match="InProgress"):
        timeline_lines(status("Open", written_ahead()), ORIGIN)


def test_explain_mid_containment_says_in_progress_and_never_none() -> None:
    text = explain(breaker("Open", written_ahead()))
    assert "contained in progress: applying: revokeEgress, pause, reassignGPUs" in text
    assert "revokeEgress in progress (decided, not yet confirmed done)" in text
    assert "None" not in text
    assert "applied" not in text


def test_explain_once_contained_says_what_each_action_changed() -> None:
    text = explain(breaker("Open", done_records(), timeToContainSeconds=0.31))
    assert "contained yes in 0.31 s (done: revokeEgress, pause, reassignGPUs)" in text
    assert "quarantine NetworkPolicy rl-agent-demo-quarantine" in text
    assert "TrainingJob rl-agent suspended" in text
    assert "handed to team-c/finetune" in text
    assert "None" not in text


def test_explain_shows_a_record_that_breaks_the_contract_without_failing() -> None:
    broken = [{"type": "pause", "appliedAt": DONE, "changed": {"kind": "Job"}}]
    text = explain(breaker("Open", broken))
    assert "pause (unreadable record)" in text
    assert "changed.name" in text


def test_trip_waits_past_the_write_ahead_and_past_an_older_generation() -> None:
    ahead = breaker("ForcedOpen", written_ahead(), generation=2)
    assert tripped(ahead, 2) is None
    stale = breaker("ForcedOpen", done_records(), generation=1, timeToContainSeconds=0.2)
    assert tripped(stale, 2) is None
    done = breaker("ForcedOpen", done_records(), generation=2, timeToContainSeconds=0.2)
    verdict = tripped(done, 2)
    assert verdict is not None
    assert verdict[0]
    assert verdict[1].startswith("ForcedOpen, contained in 0.20 s")
    assert "handed to team-c/finetune" in verdict[1]


def test_trip_reports_a_failing_action_while_the_operator_retries() -> None:
    failed = [{"type": "pause", "appliedAt": DONE, "error": "403 Forbidden: cannot patch"}]
    verdict = tripped(breaker("ForcedOpen", failed), 1)
    assert verdict == (False, "ActionsFailed: failed: pause (see status.actions); retried")


def test_reset_is_done_only_when_its_token_is_handled_and_nothing_is_held() -> None:
    assert reset_done(breaker("Open", done_records()), "t1") is None
    assert reset_done(breaker("Closed", [], handledReset="t1"), "t1") == (
        True,
        "reset (closed, every action undone)",
    )
    left = [{"type": "pause", "appliedAt": DONE, "error": "undo failed: 409 Conflict"}]
    verdict = reset_done(breaker("Closed", left, handledReset="t1"), "t1")
    assert verdict is not None
    assert verdict[0] is False
    assert "UndoFailed" in verdict[1]


def test_the_webhook_body_carries_the_outcome() -> None:
    now = dt.datetime(2026, 12, 2, 10, 0, 39, tzinfo=dt.UTC)
    body = payload(
        "BreakerTripped", breaker("Open", done_records(), timeToContainSeconds=0.31), now
    )
    outcome = body["containment"]
    assert (outcome["contained"], outcome["reason"], outcome["timeToContainSeconds"]) == (
        True,
        "Contained",
        0.31,
    )
    assert [(a["type"], a["stage"]) for a in outcome["actions"]] == [
        ("revokeEgress", "done"),
        ("pause", "done"),
        ("reassignGPUs", "done"),
    ]
    assert "team-c/finetune" in outcome["actions"][2]["summary"]
