"""kopf's index readiness set, waking its waiters only when its state changes."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
from kopf._cogs.aiokits import aiotoggles
from kopf._cogs.structs import references
from kopf._core.engines import indexing
from kopf._core.reactor import inventory

from breaker import kopf_tuning, kopf_watch
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


def _pods_scene(registry: kopf.OperatorRegistry) -> dict[str, Any]:
    indexers = indexing.OperatorIndexers()
    indexers.ensure(registry._indexing.get_all_handlers())
    return {
        "lifecycle": kopf.lifecycles.all_at_once,
        "indexers": indexers,
        "registry": registry,
        "settings": kopf.OperatorSettings(),
        "memories": inventory.ResourceMemories(),
        "memobase": kopf.Memo(who="operator"),
        "resource": references.Resource("", "v1", "pods", kind="Pod", namespaced=True),
        "event_queue": asyncio.Queue(),
    }


def _pod(name: str, kind: str | None = None) -> dict[str, Any]:
    return {"type": kind, "object": {"metadata": {"name": name, "namespace": "ns", "uid": name}}}


def _wake_only_pods(woken: list[str]) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.index("pods", registry=registry)
    async def names(name: str, **_: Any) -> dict[str, bool]:
        return {name: True}

    @kopf.on.event("pods", registry=registry)
    @kopf_tuning.wake_only
    async def wake(name: str, **_: Any) -> None:
        woken.append(f"on.event {name}")

    return registry


def test_an_event_while_the_indexes_fill_is_indexed_and_let_go_and_a_wake_is_owed() -> None:
    """While the set is off, an event of a kind whose only handlers are wake-ups is indexed
    and its handlers are not run (nothing held); when the set is on, the READY wakes run
    once; later events go kopf's way, handlers and all."""
    woken: list[str] = []
    common = _pods_scene(_wake_only_pods(woken))

    async def scene() -> None:
        ready = kopf_tuning.QuietToggleSet(all)
        toggle = await ready.make_toggle(name="pod a")
        common["operator_indexed"] = ready
        done = kopf_tuning.process_resource_event(
            raw_event=_pod("a"), resource_indexed=toggle, **common
        )
        await asyncio.wait_for(done, 5)  # did not wait for the set
        (index,) = common["indexers"].indices.values()
        assert list(index) == ["a"]
        await asyncio.sleep(0)
        assert woken == ["ready operator"]  # the set turned on: the loops woken, once
        await kopf_tuning.process_resource_event(raw_event=_pod("a", "MODIFIED"), **common)
        assert woken == ["ready operator", "on.event a"]

    kopf_tuning.READY.append(lambda memo: woken.append(f"ready {memo['who']}"))
    try:
        asyncio.run(scene())
    finally:
        kopf_tuning.READY.pop()


def test_each_time_the_set_goes_off_and_on_again_the_events_let_go_are_followed_by_a_wake() -> None:
    """kopf turns the set off again whenever it starts a watch (a CRD, a namespace): events
    let go then are owed a wake too, and one that comes while a wake is pending is covered
    by it."""
    woken: list[str] = []
    common = _pods_scene(_wake_only_pods(woken))

    async def scene() -> None:
        ready = kopf_tuning.QuietToggleSet(all)
        common["operator_indexed"] = ready
        for round_ in ("start", "new watch"):
            blocker = await ready.make_toggle(name=round_)
            await kopf_tuning.process_resource_event(raw_event=_pod(f"{round_} 1"), **common)
            await asyncio.sleep(0)
            await kopf_tuning.process_resource_event(raw_event=_pod(f"{round_} 2"), **common)
            assert woken.count("ready") == (0 if round_ == "start" else 1)  # not while off
            await ready.drop_toggle(blocker)
            for _ in range(3):
                await asyncio.sleep(0)
        assert woken == ["ready", "ready"]
        (index,) = common["indexers"].indices.values()
        assert len(index) == 4

    kopf_tuning.READY.append(lambda memo: woken.append("ready"))
    try:
        asyncio.run(scene())
    finally:
        kopf_tuning.READY.pop()


def test_a_deleted_object_let_go_is_forgotten_by_kopf_too() -> None:
    common = _pods_scene(_wake_only_pods([]))

    async def scene() -> bool:
        ready = kopf_tuning.QuietToggleSet(all)
        common["operator_indexed"] = ready
        await common["memories"].recall(_pod("a")["object"])
        await ready.make_toggle(name="a watch starting")
        await kopf_tuning.process_resource_event(raw_event=_pod("a", "DELETED"), **common)
        return bool(common["memories"]._items)

    assert not asyncio.run(scene())


def test_a_kind_with_any_other_handler_goes_kopfs_way() -> None:
    registry = kopf.OperatorRegistry()
    policies = references.Resource("breaker.dev", "v1alpha1", "breakerpolicies")
    nodes = references.Resource("", "v1", "nodes")
    pods = references.Resource("", "v1", "pods")

    @kopf.on.create("breaker.dev", "v1alpha1", "breakerpolicies", registry=registry)
    async def created(**_: Any) -> None:
        return None

    @kopf.on.event("nodes", registry=registry)
    async def capacity(**_: Any) -> None:  # reads the node: not a wake-up
        return None

    @kopf.on.event("pods", registry=registry)
    @kopf_tuning.wake_only
    async def wake(**_: Any) -> None:
        return None

    assert not kopf_tuning.only_wakes(registry, policies)
    assert not kopf_tuning.only_wakes(registry, nodes)
    assert kopf_tuning.only_wakes(registry, pods)


def test_a_deletion_a_relist_revealed_is_indexed_out_and_wakes_the_loops() -> None:
    """Of a vanished object only its name is left, so the handlers' filters cannot pass it:
    the loops are woken once kopf has taken it out of the indexes."""
    woken: list[str] = []
    common = _pods_scene(_wake_only_pods(woken))

    async def scene() -> None:
        ready = kopf_tuning.QuietToggleSet(all)
        common["operator_indexed"] = ready
        await kopf_tuning.process_resource_event(raw_event=_pod("a"), **common)
        (index,) = common["indexers"].indices.values()
        assert list(index) == ["a"]
        pods = references.Resource("", "v1", "pods", kind="Pod")
        gone = kopf_watch.tombstone(pods, "a", ("ns", "a"))
        woken.clear()
        await kopf_tuning.process_resource_event(raw_event=gone, **common)
        assert list(index) == []
        assert "ready" in woken

    kopf_tuning.READY.append(lambda memo: woken.append("ready"))
    try:
        asyncio.run(scene())
    finally:
        kopf_tuning.READY.pop()
