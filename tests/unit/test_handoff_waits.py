"""Waiting to learn whom the queue handed a trip's GPUs to: on the watch's events, never a
poll. Fakes of the index, the watch and the API; no cluster."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from kubernetes import client, watch

from breaker.actions import executor
from breaker.controllers import actuator
from breaker.controllers.breakers import BreakerController
from breaker.controllers.handoff import JobStatuses, RemoteQueue
from breaker.controllers.trainingjobs import TrainingController
from breaker.wake import Changes

TRIP = dt.datetime(2026, 12, 1, 12, 0, 0, tzinfo=dt.UTC)


def job(namespace: str, name: str, state: str, admitted: dt.datetime | None = None) -> Any:
    status: dict[str, Any] = {"state": state}
    if admitted is not None:
        status["admittedAt"] = admitted.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"metadata": {"namespace": namespace, "name": name}, "status": status}


def later(seconds: float, then: Any) -> None:
    asyncio.get_running_loop().call_later(seconds, then)


async def test_a_wait_returns_as_soon_as_the_view_has_the_answer() -> None:
    changes, seen = Changes(), []

    def answer() -> None:
        seen.append("it")
        changes.notify()

    later(0.05, answer)
    started = time.monotonic()
    assert await changes.until(lambda: list(seen), 30) == ["it"]
    assert time.monotonic() - started < 1


async def test_a_wait_without_an_answer_ends_at_its_time_with_the_last_look() -> None:
    changes, looks = Changes(), []
    later(0.05, changes.notify)  # a change that does not answer: looked at, waited on
    started = time.monotonic()

    def look() -> list[str]:
        looks.append(1)
        return []

    assert await changes.until(look, 0.2) == []
    assert 0.2 <= time.monotonic() - started < 1
    assert len(looks) == 3  # at the start, on the change, at the end: no polling between


async def test_the_handoff_wait_returns_when_the_watch_says_the_job_was_admitted() -> None:
    statuses = JobStatuses()
    statuses.replace([job("b", "waiting", "Queued")])
    later(0.02, lambda: statuses.apply("MODIFIED", job("a", "own", "Admitted", TRIP)))
    later(0.05, lambda: statuses.apply("MODIFIED", job("b", "waiting", "Admitted", TRIP)))
    started = time.monotonic()
    # The tripped tenant's own job does not count; the other tenant's ends the wait.
    found = await statuses.admitted_after(TRIP, 30, among=lambda key: key[0] != "a")
    assert found == [("b", "waiting")]
    assert time.monotonic() - started < 1


async def test_the_handoff_wait_times_out_when_nobody_is_admitted() -> None:
    statuses = JobStatuses()
    statuses.replace([job("b", "waiting", "Queued")])
    later(0.02, lambda: statuses.apply("MODIFIED", job("b", "other", "Queued")))
    later(0.03, lambda: statuses.apply("BOOKMARK", {"metadata": {"resourceVersion": "9"}}))
    early = TRIP - dt.timedelta(minutes=5)
    later(0.04, lambda: statuses.apply("MODIFIED", job("b", "before", "Running", early)))
    started = time.monotonic()
    assert await statuses.admitted_after(TRIP, 0.2, among=None) == []
    assert time.monotonic() - started >= 0.2
    statuses.apply("DELETED", job("b", "waiting", "Queued"))
    assert [b["metadata"]["name"] for b in statuses.bodies()] == ["other", "before"]


async def test_the_local_queue_wakes_on_its_index_not_on_a_clock() -> None:
    index: dict[Any, list[Any]] = {("b", "waiting"): [job("b", "waiting", "Queued")]}
    queue = TrainingController(None, {"trainingjobs": index})  # type: ignore[arg-type,dict-item]

    def admitted() -> None:
        # kopf updates the index, then calls the handler that nudges the controller.
        index[("b", "waiting")] = [job("b", "waiting", "Admitted", TRIP)]
        queue.nudge()

    later(0.05, admitted)
    started = time.monotonic()
    assert await queue.admitted_after(TRIP, 30) == [("b", "waiting")]
    assert time.monotonic() - started < 1
    assert await queue.admitted_after(None, 30) == []
    assert await queue.admitted_after(TRIP + dt.timedelta(hours=1), 0.05) == []


async def test_a_resumed_handoff_records_the_first_other_tenants_job_the_index_shows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    statuses = JobStatuses()
    statuses.replace([job("b", "waiting", "Queued"), job("c", "later", "Queued")])

    class Queue:
        async def waiting(self) -> list[tuple[str, str]]:
            return []

        async def admitted_since(self, since: float, wait: float) -> list[tuple[str, str]]:
            return []

        async def admitted_after(self, moment: Any, wait: float = 0.0, among: Any = None) -> Any:
            return await statuses.admitted_after(moment, wait, among)

    controller = BreakerController(None, {}, Queue(), "http://prometheus", "breaker-system")  # type: ignore[arg-type]
    scene = executor.Scene(None, "rl-guard", "a", None, [], [], [], [])  # type: ignore[arg-type]
    record: dict[str, Any] = {"changed": {"freed": [{"node": "n1", "gpus": 8}]}}
    intended = {"appliedAt": TRIP.strftime("%Y-%m-%dT%H:%M:%SZ")}
    later(0.02, lambda: statuses.apply("MODIFIED", job("a", "own", "Admitted", TRIP)))
    later(0.05, lambda: statuses.apply("MODIFIED", job("c", "later", "Admitted", TRIP)))
    started = time.monotonic()
    await controller.actuator.handed_to(scene, record, time.monotonic(), intended)
    assert time.monotonic() - started < 0.9  # well before HANDOFF_WAIT_SECONDS
    assert record["changed"]["to"] == ["c/later"]
    assert not scene.notes

    monkeypatch.setattr(actuator, "HANDOFF_WAIT_SECONDS", 0.1)
    nobody: dict[str, Any] = {"changed": {"freed": [{"node": "n1", "gpus": 8}]}}
    await controller.actuator.handed_to(
        scene, nobody, time.monotonic(), {"appliedAt": "2030-01-01T00:00:00Z"}
    )
    assert nobody["changed"]["to"] == []
    assert scene.notes == ["no queued TrainingJob took the freed GPUs"]


# -- the remote queue: a list, then a watch ------------------------------------------------


class FakeCustom:
    """The list the remote queue starts from (and lists again after a 410)."""

    def __init__(self) -> None:
        self.lists = 0

    def list_cluster_custom_object(self, *_: Any, **__: Any) -> dict[str, Any]:
        self.lists += 1
        return {"metadata": {"resourceVersion": str(self.lists)}, "items": [WAITING]}


WAITING = job("b", "waiting", "Queued")


class FakeWatch:
    """The first watch has expired (410); the next brings the admission, then ends."""

    streams: ClassVar[list[dict[str, Any]]] = []

    def stream(self, *_: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
        FakeWatch.streams.append(kwargs)
        if len(FakeWatch.streams) == 1:
            raise client.ApiException(status=410, reason="Expired")
        if len(FakeWatch.streams) == 2:
            time.sleep(0.05)
            yield {"type": "MODIFIED", "raw_object": job("b", "waiting", "Admitted", TRIP)}
            return
        time.sleep(0.05)  # later watches: nothing new, ended by the server

    def stop(self) -> None:
        pass


@pytest.fixture
def remote(monkeypatch: pytest.MonkeyPatch) -> RemoteQueue:
    FakeWatch.streams = []
    monkeypatch.setattr(watch, "Watch", FakeWatch)
    queue = RemoteQueue(client.ApiClient())
    queue.custom = FakeCustom()  # type: ignore[assignment]
    return queue


async def test_the_remote_queue_lists_once_then_follows_the_watch(remote: RemoteQueue) -> None:
    assert await remote.waiting() == [("b", "waiting")]
    started = time.monotonic()
    assert await remote.admitted_after(TRIP, 30) == [("b", "waiting")]
    assert time.monotonic() - started < 5
    assert await remote.waiting() == []
    # The expired watch was followed by one list, and the watch resumed from that list.
    custom: Any = remote.custom
    assert custom.lists == 2
    assert [s["resource_version"] for s in FakeWatch.streams[:2]] == ["1", "2"]
    await remote.close()
    assert remote.task is not None
    assert remote.task.done()


async def test_the_local_queue_s_own_admission_counts_before_its_index_shows_it() -> None:
    """A restarted operator finishing a trip: its queue admits the waiting job (and no
    longer counts it as waiting) before the watch brings the job's status back; the
    handoff must learn of it all the same, or a reset owes nothing (CI, 2026-12-07)."""
    index: dict[Any, list[Any]] = {("b", "waiting"): [job("b", "waiting", "Queued")]}
    queue = TrainingController(None, {"trainingjobs": index})  # type: ignore[arg-type,dict-item]
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    later(0.05, lambda: asyncio.ensure_future(queue._record_admission(("b", "waiting"))))
    started = time.monotonic()
    assert await queue.admitted_after(before, 30) == [("b", "waiting")]
    assert time.monotonic() - started < 1
    # Once the index shows it too, it is named once.
    index[("b", "waiting")] = [job("b", "waiting", "Admitted", dt.datetime.now(dt.UTC))]
    assert await queue.admitted_after(before, 0) == [("b", "waiting")]
    assert await queue.admitted_after(before + dt.timedelta(hours=1), 0) == []
