"""The GPU queue: priority then age, gang admission, backfill, reservations."""

from __future__ import annotations

import datetime as dt

from breaker.training.queue import Demand, free_gpus, never_fits, place, plan

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
FOUR_NODES = {f"n{i}": 8 for i in range(4)}


def demand(
    name: str, replicas: int, per: int, priority: int = 0, age: int = 0, **kw: object
) -> Demand:
    fields: dict[str, object] = {
        "key": ("ns", name),
        "priority": priority,
        "created": T0 + dt.timedelta(seconds=age),
        "replicas": replicas,
        "gpus_per_replica": per,
        "admitted": False,
        "wants_gpus": True,
    }
    fields.update(kw)
    return Demand(**fields)  # type: ignore[arg-type]


def test_higher_priority_first_then_older_first() -> None:
    jobs = [
        demand("old-low", 4, 8, priority=0, age=0),
        demand("new-high", 2, 8, priority=10, age=5),
        demand("old-high", 2, 8, priority=10, age=1),
    ]
    result = plan(jobs, FOUR_NODES)
    assert result.admit == (("ns", "old-high"),)
    assert result.queued == (("ns", "new-high"), ("ns", "old-low"))


def test_a_gang_is_admitted_whole_or_not_at_all() -> None:
    # 12 GPUs are free in all, but no node has 8 free: a 2 x 8 job must wait.
    free = {"n0": 6, "n1": 6}
    result = plan([demand("gang", 2, 8)], free)
    assert result.admit == ()
    assert result.queued == (("ns", "gang"),)
    assert place(2, 8, free) is None


def test_best_fit_keeps_big_blocks_for_big_replicas() -> None:
    assert place(1, 2, {"small": 2, "big": 8}) == {"small": 2}
    assert place(3, 4, {"a": 8, "b": 4}) == {"b": 4, "a": 8}


def test_a_blocked_job_does_not_hold_back_a_smaller_one() -> None:
    jobs = [demand("big", 2, 8, priority=5), demand("small", 1, 8, priority=0)]
    result = plan(jobs, {"n0": 8})
    assert result.admit == (("ns", "small"),)
    assert result.queued == (("ns", "big"),)


def test_nothing_is_admitted_while_an_admitted_job_is_being_placed() -> None:
    starting = demand("starting", 2, 8, admitted=True, bound_replicas=1)
    waiting = demand("waiting", 1, 8, age=1)
    result = plan([starting, waiting], {"n0": 8, "n1": 8, "n2": 8})
    assert result.admit == ()
    assert result.queued == (("ns", "waiting"),)
    placed = demand("starting", 2, 8, admitted=True, bound_replicas=2)
    assert plan([placed, waiting], {"n2": 8}).admit == (("ns", "waiting"),)


def test_one_admission_per_pass() -> None:
    result = plan([demand("a", 1, 8), demand("b", 1, 8, age=1)], FOUR_NODES)
    assert result.admit == (("ns", "a"),)
    assert result.queued == (("ns", "b"),)


def test_a_job_that_no_longer_wants_gpus_is_released() -> None:
    suspended = demand("paused", 1, 8, admitted=True, wants_gpus=False)
    result = plan([suspended], FOUR_NODES)
    assert result.release == (("ns", "paused"),)
    assert result.admit == ()


def test_free_gpus_subtracts_bound_pods_and_ignores_other_nodes() -> None:
    free = free_gpus({"n0": 8, "n1": 8}, [("n0", 3), ("n0", 5), ("elsewhere", 4)])
    assert free == {"n0": 0, "n1": 8}


def test_never_fits_says_why() -> None:
    assert never_fits(demand("x", 1, 16), FOUR_NODES) == (
        "each replica needs 16 nvidia.com/gpu on one node, but the largest node has 8"
    )
    assert "do not fit" in (never_fits(demand("x", 5, 8), FOUR_NODES) or "")
    assert never_fits(demand("x", 4, 8), FOUR_NODES) is None


def test_a_namespace_quota_holds_its_jobs_back_without_stalling_others() -> None:
    clamped = demand("a", 1, 8, priority=9, key=("tripped", "a"))
    other = demand("b", 1, 8, priority=1)
    result = plan([clamped, other], {"n1": 8}, quota_room={"tripped": 0})
    assert result.admit == (other.key,)
    assert result.queued == (clamped.key,)


def test_a_job_owed_its_gpus_goes_ahead_of_higher_priority() -> None:
    owed = demand("owed", 1, 8, priority=0, first=True)
    urgent = demand("urgent", 1, 8, priority=100)
    assert plan([urgent, owed], {"n1": 8}).admit == (owed.key,)
