"""A TrainingJob's state and conditions from what was observed."""

from __future__ import annotations

import datetime as dt

from breaker.training.status import JobView, Observed, PodView, compute, transition_event

NOW = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)


def observed(**kw: object) -> Observed:
    fields: dict[str, object] = {
        "replicas": 2,
        "gpus_per_replica": 8,
        "user_suspended": False,
        "generation": 1,
        "job": JobView("tj", suspended=True),
    }
    fields.update(kw)
    return Observed(**fields)  # type: ignore[arg-type]


def condition(status: dict[str, object], type_: str) -> dict[str, object]:
    conditions = status["conditions"]
    assert isinstance(conditions, list)
    return next(c for c in conditions if c["type"] == type_)


def test_queued_says_where_and_what_it_needs() -> None:
    status = compute(observed(queue_position=2, queue_length=3), NOW)
    assert status["state"] == "Queued"
    assert status["queuePosition"] == 2
    queued = condition(status, "Queued")
    assert queued["status"] == "True"
    assert queued["message"] == ("position 2 of 3; needs 16 nvidia.com/gpu (2 x 8) free at once")
    assert condition(status, "Ready")["status"] == "False"


def test_running_when_every_replica_runs() -> None:
    pods = (PodView("p0", "n0", "Running", 8), PodView("p1", "n1", "Running", 8))
    status = compute(observed(job=JobView("tj", suspended=False), pods=pods), NOW)
    assert status["state"] == "Running"
    assert status["nodes"] == ["n0", "n1"]
    assert status["nodeList"] == "n0,n1"
    assert status["gpusAllocated"] == 16
    assert condition(status, "Ready") | {"lastTransitionTime": None} == {
        "type": "Ready",
        "status": "True",
        "reason": "Running",
        "message": "all 2 replicas are running",
        "lastTransitionTime": None,
        "observedGeneration": 1,
    }
    assert status["admittedAt"] == "2026-05-01T12:00:00Z"


def test_transition_times_only_move_when_the_status_does() -> None:
    first = compute(observed(queue_position=1, queue_length=1), NOW)
    later = NOW + dt.timedelta(minutes=5)
    again = compute(observed(queue_position=1, queue_length=1, previous=first), later)
    assert condition(again, "Queued")["lastTransitionTime"] == "2026-05-01T12:00:00Z"
    suspended = compute(observed(user_suspended=True, previous=again), later)
    assert condition(suspended, "Queued")["lastTransitionTime"] == "2026-05-01T12:05:00Z"
    assert condition(suspended, "Suspended")["reason"] == "SuspendedByUser"


def test_a_problem_shows_on_ready() -> None:
    status = compute(observed(problem=("InvalidSpec", "spec.template: bad")), NOW)
    assert condition(status, "Ready") | {"lastTransitionTime": None} == {
        "type": "Ready",
        "status": "False",
        "reason": "InvalidSpec",
        "message": "spec.template: bad",
        "lastTransitionTime": None,
        "observedGeneration": 1,
    }


def test_finished_jobs_report_success_or_failure() -> None:
    done = JobView("tj", False, ({"type": "Complete", "status": "True"},))
    assert compute(observed(job=done), NOW)["state"] == "Succeeded"
    failed = JobView("tj", False, ({"type": "Failed", "status": "True"},))
    assert compute(observed(job=failed), NOW)["state"] == "Failed"


def test_events_only_on_transitions() -> None:
    assert transition_event("Queued", "Queued") is None
    assert transition_event("Queued", "Admitted") == ("Normal", "Admitted")
    assert transition_event("Running", "Failed") == ("Warning", "Failed")


def test_a_job_queued_behind_a_tripped_breakers_clamp_says_so_with_a_warning() -> None:
    status = compute(observed(queue_position=1, queue_length=1, held_by=("rl-guard",)), NOW)
    queued = condition(status, "Queued")
    assert queued["reason"] == "HeldByBreaker"
    assert "clamped by tripped Breaker rl-guard" in str(queued["message"])
    assert condition(status, "Ready")["reason"] == "HeldByBreaker"
    assert transition_event(None, "Queued", held=True) == ("Warning", "HeldByBreaker")
    assert transition_event(None, "Queued") == ("Normal", "Queued")


def test_a_job_kueue_admits_is_queued_in_kueue_then_runs() -> None:
    waiting = compute(observed(kueue_queue="gpus"), NOW)
    assert waiting["state"] == "Queued"
    assert waiting["queuePosition"] is None
    queued = condition(waiting, "Queued")
    assert queued["reason"] == "WaitingForKueue"
    assert "LocalQueue gpus" in str(queued["message"])
    assert condition(waiting, "Ready")["reason"] == "WaitingForKueue"
    started = compute(
        observed(
            kueue_queue="gpus",
            job=JobView("tj", suspended=False),
            pods=(PodView("a", "n1", "Running", 8), PodView("b", "n2", "Running", 8)),
        ),
        NOW,
    )
    assert started["state"] == "Running"
