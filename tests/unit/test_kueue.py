"""Working through Kueue: the Workload's switch and the tenant's queues, pure."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

from kubernetes import client

from breaker.actions import executor, kueue
from breaker.circuit.views import WorkloadView
from breaker.constants import PAUSED_BY, PAUSED_WAS

TRIP = dt.datetime(2026, 12, 3, 12, 0, 0, 400_000, tzinfo=dt.UTC)


def workload(
    name: str = "job-rl-1a2b3",
    namespace: str = "team-a",
    active: bool | None = None,
    admitted_in: str | None = None,
    at: str = "2026-12-03T12:00:00Z",
    annotations: dict[str, str] | None = None,
) -> kueue.QueuedWorkload:
    body: dict[str, Any] = {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": annotations or {},
            "ownerReferences": [
                {"kind": "Job", "name": name.split("-")[1], "uid": "u1", "controller": True}
            ],
        },
        "spec": {"queueName": "gpus", **({} if active is None else {"active": active})},
    }
    if admitted_in:
        body["status"] = {
            "admission": {"clusterQueue": admitted_in},
            "conditions": [{"type": "QuotaReserved", "status": "True", "lastTransitionTime": at}],
        }
    return kueue.workload_view(body)


def queue(name: str, stop: str | None = None, held: tuple[str, str] | None = None) -> Any:
    annotations = {kueue.HELD_BY: held[0], kueue.HELD_WAS: held[1]} if held else {}
    spec = {"clusterQueue": "cq", **({"stopPolicy": stop} if stop else {})}
    return kueue.local_queue_view(
        {
            "metadata": {"name": name, "namespace": "team-a", "annotations": annotations},
            "spec": spec,
        }
    )


def test_a_workload_is_read_with_its_owner_and_admission() -> None:
    found = workload(admitted_in="cq")
    assert found.active  # unset means active
    assert found.owner is not None
    assert (found.owner.kind, found.owner.name) == ("Job", "rl")
    assert found.cluster_queue == "cq"
    assert found.reserved_at == dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)
    pending = workload()
    assert pending.cluster_queue is None
    assert pending.reserved_at is None


def test_deactivating_records_what_it_found_and_a_second_time_keeps_it() -> None:
    patch, record = kueue.deactivate(workload(), "rl-guard")
    assert patch["spec"] == {"active": False}
    assert record == {"kueueWorkload": "job-rl-1a2b3", "field": "spec.active", "was": True}
    assert json.loads(patch["metadata"]["annotations"][PAUSED_WAS]) == record
    assert patch["metadata"]["annotations"][PAUSED_BY] == "rl-guard"
    # Already deactivated by this breaker (the tenant re-activated it): the first record.
    again = workload(
        active=True, annotations={PAUSED_BY: "rl-guard", PAUSED_WAS: json.dumps(record)}
    )
    assert kueue.deactivate(again, "rl-guard")[1] == record
    # Inactive before the trip: a reset leaves it inactive.
    _, found = kueue.deactivate(workload(active=False), "rl-guard")
    assert kueue.reactivate(found)["spec"] == {"active": False}


def test_reactivating_clears_the_marks() -> None:
    patch = kueue.reactivate({"kueueWorkload": "w", "was": True})
    assert patch == {
        "spec": {"active": True},
        "metadata": {"annotations": {PAUSED_BY: None, PAUSED_WAS: None}},
    }


def test_a_pending_pause_is_read_back_from_the_workload() -> None:
    record = {"kueueWorkload": "w", "field": "spec.active", "was": True}
    marked = workload(annotations={PAUSED_BY: "b", PAUSED_WAS: json.dumps(record)})
    assert kueue.recorded_pause(marked, "b") == record
    assert kueue.recorded_pause(marked, "another") is None
    assert kueue.recorded_pause(workload(), "b") is None


def test_holding_records_each_queue_s_policy_and_leaves_stopped_ones_alone() -> None:
    queues = [queue("gpus"), queue("batch", "None"), queue("frozen", "HoldAndDrain")]
    patches, found = kueue.plan_hold(queues, "b")
    assert found == {"batch": "None", "gpus": "None"}
    assert set(patches) == {"batch", "gpus"}
    assert patches["gpus"]["spec"] == {"stopPolicy": "Hold"}
    assert patches["gpus"]["metadata"]["annotations"] == {
        kueue.HELD_BY: "b",
        kueue.HELD_WAS: "None",
    }


def test_holding_again_keeps_the_first_policy_found() -> None:
    # The tenant set it admitting again; the breaker holds it, still owing "None" back.
    reopened = [queue("gpus", "None", held=("b", "None"))]
    patches, found = kueue.plan_hold(reopened, "b")
    assert found == {"gpus": "None"}
    assert patches["gpus"]["metadata"]["annotations"][kueue.HELD_WAS] == "None"
    # Still held: nothing to patch, the record stays.
    patches, found = kueue.plan_hold([queue("gpus", "Hold", held=("b", "None"))], "b")
    assert (patches, found) == ({}, {"gpus": "None"})


def test_releasing_puts_back_exactly_and_only_what_this_breaker_holds() -> None:
    queues = [
        queue("gpus", "Hold", held=("b", "None")),
        queue("batch", "Hold", held=("b", "HoldAndDrain")),
        queue("admins", "Hold"),  # an admin took it over (the mark removed)
        queue("other", "Hold", held=("another", "None")),
        queue("made-later", "Hold", held=("b", "None")),  # the tenant's, held after the trip
    ]
    held = {"gpus": "None", "batch": "HoldAndDrain", "admins": "None", "gone": "None"}
    patches = kueue.plan_release(held, queues, "b")
    assert set(patches) == {"gpus", "batch", "made-later"}
    assert patches["gpus"]["spec"] == {"stopPolicy": None}  # unset, as found
    assert patches["batch"]["spec"] == {"stopPolicy": "HoldAndDrain"}
    assert patches["made-later"]["spec"] == {"stopPolicy": None}


def test_a_released_queue_or_a_new_one_is_an_escape_an_admins_is_not() -> None:
    queues = [
        queue("gpus", "None", held=("b", "None")),  # the tenant let it admit
        queue("batch", "Hold", held=("b", "None")),
        queue("new", "None"),  # made after the trip
        queue("admins", "None"),  # recorded, its mark removed by an admin
    ]
    held = {"gpus": "None", "batch": "None", "admins": "None"}
    assert kueue.released(held, queues, "b") == ["gpus", "new"]
    patches, _ = kueue.plan_hold(queues, "b", only=["gpus", "new"])
    assert set(patches) == {"gpus", "new"}


def test_admitted_since_the_trip_into_the_freed_queue_from_other_namespaces() -> None:
    workloads = [
        workload("job-late-1", "team-b", admitted_in="cq", at="2026-12-03T12:00:05Z"),
        workload("job-same-2", "team-b", admitted_in="cq", at="2026-12-03T12:00:00Z"),
        workload("job-before-3", "team-b", admitted_in="cq", at="2026-12-03T11:59:59Z"),
        workload("job-own-4", "team-a", admitted_in="cq", at="2026-12-03T12:00:03Z"),
        workload("job-else-5", "team-b", admitted_in="other-cq", at="2026-12-03T12:00:03Z"),
        workload("job-waiting-6", "team-b"),
    ]
    assert kueue.admitted_since(workloads, "cq", TRIP, "team-a") == [
        "team-b/job-same-2",  # the trip's own second counts: conditions carry whole seconds
        "team-b/job-late-1",
    ]


def trainingjob_scene(queued: kueue.QueuedWorkload | None) -> executor.Scene:
    """A TrainingJob that hands its queueing to Kueue (spec.queueName), with or without
    the Workload Kueue makes for its Job."""
    body = {
        "apiVersion": "breaker.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "rl", "namespace": "team-a", "uid": "u0", "annotations": {}},
        "spec": {"queueName": "gpus", "replicas": 1},
    }
    view = WorkloadView(
        "breaker.dev/v1alpha1", "TrainingJob", "team-a", "rl", "u0", {}, False, None, None,
        False, body,
    )  # fmt: skip
    return executor.Scene(
        client.ApiClient(), "rl-guard", "team-a", view, [], [], [], [], queued=queued
    )


def test_a_trainingjob_kueue_runs_is_never_switched_through_its_own_suspend() -> None:
    """Its schema refuses spec.suspend with spec.queueName: before Kueue has made its
    Workload, it waits unadmitted (paused) and nothing is patched; once the Workload is
    there, the Workload is the switch."""
    waiting = trainingjob_scene(None)
    assert executor.is_paused(waiting)
    changed = asyncio.run(executor.pause_workload(waiting))  # an API call would fail here
    assert "Workload yet" in changed["skipped"]
    running = trainingjob_scene(workload(name="job-rl-1a2b3", admitted_in="cq"))
    assert executor.managed_by_kueue(running)
    assert not executor.is_paused(running)  # its Workload is active: a re-pause is due
