"""The loop both controllers run, and the per-key backoff, with a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from breaker.controllers.reconciler import Backoff, Reconciler


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_backoff_doubles_per_failure_up_to_its_cap_and_forgets_on_success() -> None:
    clock = Clock()
    backoff: Backoff[str] = Backoff(5.0, 30.0, clock)
    assert backoff.ready("a")
    assert [backoff.failed("a") for _ in range(5)] == [5.0, 10.0, 20.0, 30.0, 30.0]
    assert not backoff.ready("a")
    assert backoff.waiting()
    clock.now += 30.0
    assert backoff.ready("a")
    assert not backoff.waiting()
    backoff.failed("a")
    backoff.succeeded("a")
    assert backoff.failed("a") == 5.0  # counted afresh


def test_backoff_forgets_keys_that_are_gone() -> None:
    backoff: Backoff[str] = Backoff(5.0, 30.0, Clock())
    backoff.failed("gone")
    backoff.failed("kept")
    backoff.keep_only(["kept"])
    assert backoff.ready("gone")
    assert not backoff.ready("kept")


def test_the_loop_sleeps_until_the_controller_is_due_within_its_resync() -> None:
    due: list[float | None] = [None]
    loop = Reconciler(
        "t", lambda: asyncio.sleep(0, False), debounce=0, retry=5, resync=300, due=lambda: due[0]
    )
    assert loop.timeout(now=0.0) == 300
    due[0] = 12.0
    assert loop.timeout(now=2.0) == 10.0
    due[0] = 1.0
    assert loop.timeout(now=2.0) == 0.0  # overdue: at once
    loop.retry = True
    due[0] = None
    assert loop.timeout(now=0.0) == 5


async def test_a_burst_of_nudges_makes_one_pass_and_a_failed_pass_is_retried() -> None:
    passes: list[int] = []
    retried = asyncio.Event()

    async def one_pass() -> bool:
        passes.append(1)
        if len(passes) == 1:
            raise RuntimeError("the API server said 500")
        retried.set()
        return False

    loop = Reconciler("t", one_pass, debounce=0.02, retry=0.05, resync=300)
    task = asyncio.create_task(loop.run())
    try:
        await asyncio.sleep(0.05)
        assert passes == []  # not ready: kopf has not filled the indexes yet
        for _ in range(10):
            loop.nudge()
        # The burst's one pass failed; the retry runs 0.05 s on.
        await asyncio.wait_for(retried.wait(), timeout=5)
        await asyncio.sleep(0.1)
        assert len(passes) == 2  # and no more: nothing changed, nothing failed
        assert loop.retry is False
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
