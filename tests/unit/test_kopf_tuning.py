"""kopf's index readiness set, waking its waiters only when its state changes."""

from __future__ import annotations

import asyncio

from kopf._cogs.aiokits import aiotoggles

from breaker.kopf_tuning import QuietToggleSet


def test_it_is_what_kopf_expects() -> None:
    assert issubclass(QuietToggleSet, aiotoggles.ToggleSet)
    # The two methods replaced, and the state they keep, are still kopf's.
    assert {"make_toggle", "drop_toggle", "wait_for", "is_on"} <= set(dir(aiotoggles.ToggleSet))
    assert {"_condition", "_toggles"} <= set(vars(aiotoggles.ToggleSet(all)))


def test_waiters_wake_once_when_the_last_toggle_goes() -> None:
    async def scene() -> tuple[int, int]:
        ready = QuietToggleSet(all)
        toggles = [await ready.make_toggle(name=f"object {i}") for i in range(200)]
        woken = 0

        async def waiter() -> None:
            nonlocal woken
            await ready.wait_for(True)
            woken += 1

        waiters = [asyncio.create_task(waiter()) for _ in range(200)]
        await asyncio.sleep(0)
        notified = 0
        notify_all = ready._condition.notify_all

        def counted() -> None:
            nonlocal notified
            notified += 1
            notify_all()

        ready._condition.notify_all = counted  # type: ignore[method-assign]
        for toggle in toggles[:-1]:
            await ready.drop_toggle(toggle)
        await asyncio.sleep(0)
        assert woken == 0
        assert not ready.is_on()
        await ready.drop_toggle(toggles[-1])
        await asyncio.wait_for(asyncio.gather(*waiters), 5)
        return woken, notified

    woken, notified = asyncio.run(scene())
    assert woken == 200
    assert notified == 1  # kopf's own set: 200


def test_a_new_off_toggle_turns_the_set_off_and_wakes_those_waiting_for_that() -> None:
    async def scene() -> bool:
        ready = QuietToggleSet(all)
        assert ready.is_on()
        waiting_off = asyncio.create_task(ready.wait_for(False))
        await asyncio.sleep(0)
        toggle = await ready.make_toggle(name="late")
        await asyncio.wait_for(waiting_off, 5)
        await toggle.turn_to(True)  # a toggle turned by itself still wakes everyone
        await asyncio.wait_for(ready.wait_for(True), 5)
        return ready.is_on()

    assert asyncio.run(scene())
