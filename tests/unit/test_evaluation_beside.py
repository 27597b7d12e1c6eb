"""Evaluation beside the breaker loop: the live Prometheus client, the shared answers of an
instant, and the evaluator that hands each policy's trips over as soon as they are in.

The client is tried against a real HTTP server on loopback that answers as Prometheus,
or fails as a Prometheus in trouble does; the evaluator against a Prometheus faked at
the client, one policy's hung while another's answers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from breaker.api.policy import BreakerPolicySpec
from breaker.controllers.evaluation import instants
from breaker.detect import engine, live
from breaker.detect.prom import LiveProm, QueryError
from tests.fakes import Clock, FakeQueue, Json
from tests.unit.test_breaker_controller import (
    BREAKERS,
    KEY,
    NS,
    POLICY_SPEC,
    Operator,
    scene,
    status,
)

pytestmark = pytest.mark.usefixtures("fresh_discovery")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
VECTOR: Json = {
    "status": "success",
    "data": {
        "resultType": "vector",
        "result": [{"metric": {"source_namespace": NS, "source_pod": "rl-0"}, "value": [1, "4"]}],
    },
}


# -- the grid of instants ---------------------------------------------------------------


def test_an_evaluation_on_its_grid_asks_about_the_grid_instant() -> None:
    assert instants(1_000_020.0, 15.0) == (1_000_020.0, 1_000_035.0)
    # The timer fired a little early or late: still the grid's instant.
    assert instants(1_000_019.95, 15.0) == (1_000_020.0, 1_000_035.0)
    assert instants(1_000_020.05, 15.0) == (1_000_020.0, 1_000_035.0)


def test_a_first_evaluation_off_the_grid_asks_about_now_and_joins_the_grid() -> None:
    assert instants(1_000_027.5, 15.0) == (1_000_027.5, 1_000_035.0)


# -- the live client ----------------------------------------------------------------------


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_route("*", "/api/v1/query", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_an_answer_is_its_result_list_and_the_query_goes_as_a_form(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    seen: list[dict[str, str]] = []

    async def prometheus(request: web.Request) -> web.Response:
        seen.append({key: str(value) for key, value in (await request.post()).items()})
        return web.json_response(VECTOR)

    prom = LiveProm(await serve(prometheus), 5)
    try:
        result = await prom.instant("up", at=1000.5)
    finally:
        await prom.close()
    assert result == VECTOR["data"]["result"]
    assert seen == [{"query": "up", "timeout": "5s", "time": "1000.500"}]


REFUSED: Json = {"status": "error", "errorType": "bad_data", "error": "parse error"}


@pytest.mark.parametrize(
    ("answer", "kind", "said"),
    [
        (lambda: web.json_response(REFUSED, status=400), "Refused", "bad_data: parse error"),
        (lambda: web.Response(text="<html>502 from a proxy</html>"), "BadResponse", "JSON"),
        (
            lambda: web.json_response({"status": "success", "data": {"result": 7}}),
            "BadResponse",
            "int",
        ),
        (lambda: web.Response(text="gateway", status=504), "Refused", "504"),  # after a retry
    ],
    ids=["refused", "not-json", "wrong-shape", "gateway"],
)
async def test_a_failed_answer_is_a_query_error_of_its_kind(
    serve: Callable[[Handler], Awaitable[str]],
    answer: Callable[[], web.Response],
    kind: str,
    said: str,
) -> None:
    async def prometheus(_: web.Request) -> web.Response:
        return answer()

    prom = LiveProm(await serve(prometheus), 5)
    try:
        with pytest.raises(QueryError) as failed:
            await prom.instant("up")
    finally:
        await prom.close()
    assert failed.value.kind == kind
    assert said in str(failed.value)
    assert str(failed.value).startswith("up: ")


async def test_a_hung_prometheus_is_a_timeout_just_after_the_query_s_own(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    async def hung(_: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.json_response(VECTOR)

    prom = LiveProm(await serve(hung), 0.2)
    started = time.monotonic()
    try:
        with pytest.raises(QueryError) as failed:
            await prom.instant("up")
    finally:
        await prom.close()
    assert failed.value.kind == "Timeout"
    assert "no answer within 1.2s" in str(failed.value)
    assert time.monotonic() - started < 10  # not retried, not the client's default


async def test_a_refused_connection_is_unreachable_and_a_5xx_is_tried_once_more(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    prom = LiveProm("http://127.0.0.1:9", 1)  # discard: nothing listens on loopback
    with pytest.raises(QueryError) as failed:
        await prom.instant("up")
    await prom.close()
    assert failed.value.kind == "Unreachable"

    answers = [web.Response(text="busy", status=503), web.json_response(VECTOR)]

    async def flaky(_: web.Request) -> web.Response:
        return answers.pop(0)

    prom = LiveProm(await serve(flaky), 1)
    try:
        assert await prom.instant("up") == VECTOR["data"]["result"]
    finally:
        await prom.close()
    assert answers == []


# -- one query per instant, whatever asks -------------------------------------------------


class FakeProm(LiveProm):
    """Answers each query with ``answer``, after ``gate`` opens (a hung Prometheus until)."""

    def __init__(self, answer: Json | None = None) -> None:
        super().__init__("http://prometheus.invalid")
        self.answer = answer or VECTOR
        self.gate = asyncio.Event()
        self.gate.set()
        self.asked: list[tuple[str, float | None]] = []

    async def instant(self, query: str, at: float | None = None) -> list[dict[str, Any]]:
        self.asked.append((query, at))
        await self.gate.wait()
        result: list[dict[str, Any]] = self.answer["data"]["result"]
        return result


async def test_the_same_query_of_one_instant_is_sent_once_and_a_later_instant_again() -> None:
    prom, asked = FakeProm(), live.Asked()
    prom.gate.clear()
    waiting = [asyncio.create_task(asked.ask(prom, "up", 15.0)) for _ in range(3)]
    await asyncio.sleep(0)
    prom.gate.set()
    assert [len(r) for r in await asyncio.gather(*waiting)] == [1, 1, 1]
    await asked.ask(prom, "up", 30.0)
    await asked.ask(prom, "other", 30.0)
    await asked.ask(FakeProm(), "up", 30.0)  # another server (or tenant): its own
    assert asked.sent == 4
    assert all(key[2] == 30.0 for key in asked.pending)  # the earlier instant let go


async def test_one_asker_cancelled_cancels_no_other_s_query() -> None:
    prom, asked = FakeProm(), live.Asked()
    prom.gate.clear()
    first = asyncio.create_task(asked.ask(prom, "up", 15.0))
    second = asyncio.create_task(asked.ask(prom, "up", 15.0))
    await asyncio.sleep(0)
    first.cancel()
    prom.gate.set()
    assert len(await second) == 1


# -- the evaluator beside the loop --------------------------------------------------------


def _second_policy(operator: Operator) -> None:
    """``watch``: the same signal, guarding the same job, in DryRun mode."""
    operator.cluster.put(
        ("breaker.dev", "breakerpolicies"),
        {
            "apiVersion": "breaker.dev/v1alpha1",
            "kind": "BreakerPolicy",
            "metadata": {"name": "watch", "namespace": NS},
            "spec": {**POLICY_SPEC, "mode": "DryRun"},
        },
    )


async def test_a_policy_s_trip_is_handed_over_while_another_s_prometheus_hangs() -> None:
    cluster, clock = scene(), Clock()
    operator = Operator(cluster, FakeQueue(), clock)
    _second_policy(operator)
    await operator.guarding()
    controller = operator.controller
    hung, well = FakeProm(), FakeProm()
    hung.gate.clear()
    proms = {"http://hung.invalid": hung, "http://well.invalid": well}
    controller.policies.connect = lambda url, _: proms[url]
    for name, url in (("guard", "http://well.invalid"), ("watch", "http://hung.invalid")):
        body = cluster.get(("breaker.dev", "breakerpolicies"), NS, name)
        assert body is not None
        body["spec"] = {**body["spec"], "prometheus": {"url": url}}
        body["metadata"]["generation"] = 2
    await operator.indexes.refresh()
    handed = asyncio.Event()
    controller.evaluator.handed = handed.set
    controller.loop.ready = True

    controller.evaluator.start_due()
    await asyncio.wait_for(handed.wait(), timeout=5)
    trips = controller.evaluator.take()
    assert list(trips) == [KEY]  # guard's, while watch's query still hangs
    assert set(controller.evaluator.running) == {("BreakerPolicy", NS, "watch")}

    # The loop acts on it at once; the hung evaluation is not waited on.
    await asyncio.wait_for(controller.converge(trips, {}), timeout=5)
    while controller.busy:
        await asyncio.gather(*controller.busy.values())
    await operator.indexes.refresh()
    assert status(cluster)["state"] == "Open"

    # An admin's ForcedOpen on the other breaker, too, while watch's Prometheus hangs.
    other = cluster.get(BREAKERS, NS, "rl-watch")
    assert other is not None
    other["spec"]["override"] = "ForcedOpen"
    await operator.indexes.refresh()
    await asyncio.wait_for(controller.converge(controller.evaluator.take(), {}), timeout=5)
    while controller.busy:
        await asyncio.gather(*controller.busy.values())
    after = cluster.get(BREAKERS, NS, "rl-watch")
    assert after is not None
    assert after["status"]["state"] == "ForcedOpen"

    hung.gate.set()
    await asyncio.gather(*controller.evaluator.running.values())
    assert controller.evaluator.running == {}


async def test_a_policy_changed_while_its_queries_ran_hands_nothing_over() -> None:
    cluster, clock = scene(), Clock()
    operator = Operator(cluster, FakeQueue(), clock)
    await operator.guarding()
    controller = operator.controller
    prom = FakeProm()
    prom.gate.clear()
    controller.policies.connect = lambda *_: prom
    controller.loop.ready = True
    controller.evaluator.start_due()
    (running,) = controller.evaluator.running.values()
    body = cluster.get(("breaker.dev", "breakerpolicies"), NS, "guard")
    assert body is not None
    body["metadata"]["generation"] = 7
    await operator.indexes.refresh()
    prom.gate.set()
    await running
    assert controller.evaluator.take() == {}


async def test_the_evaluator_runs_once_ready_and_stops_cleanly() -> None:
    cluster, clock = scene(), Clock()
    operator = Operator(cluster, FakeQueue(), clock)
    await operator.guarding()
    controller = operator.controller
    prom = FakeProm({"status": "success", "data": {"resultType": "vector", "result": []}})
    controller.policies.connect = lambda *_: prom
    handed = asyncio.Event()
    controller.evaluator.handed = handed.set
    task = asyncio.create_task(controller.evaluator.run())
    await asyncio.sleep(0.05)
    assert prom.asked == []  # a standby (indexes never filled) asks nothing
    controller.loop.ready = True
    controller.evaluator.nudge()
    await asyncio.wait_for(handed.wait(), timeout=5)
    assert [query for query, _ in prom.asked] == [s.query for s in _detector().signals]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def _detector() -> engine.Detector:
    return engine.compile_policy(BreakerPolicySpec.model_validate(POLICY_SPEC))
