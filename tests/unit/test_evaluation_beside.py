"""Evaluation beside the breaker loop: the live Prometheus client, the shared answers of an
instant, and the evaluator that hands each policy's trips over as soon as they are in.

The client is tried against a real HTTP server on loopback that answers as Prometheus,
or fails as a Prometheus in trouble does; the evaluator against a Prometheus faked at
the client, one policy's hung while another's answers.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Protocol

import pytest
from aiohttp import web

from breaker.api.policy import BreakerPolicySpec, PrometheusSettings, SecretKeyRef
from breaker.circuit.tally import policy_status_patch
from breaker.controllers.evaluation import Policies, instants
from breaker.controllers.secrets import SecretUnreadable
from breaker.detect import engine, live
from breaker.detect.prom import Answer, LiveProm, QueryError, Target
from breaker_tooling.localcluster.pki import Pki
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


class Serve(Protocol):
    def __call__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> Awaitable[str]: ...


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Starts a Prometheus on loopback, in the test's own event loop; its url."""
    runners: list[web.AppRunner] = []

    async def start(handler: Handler, tls: ssl.SSLContext | None = None) -> str:
        app = web.Application()
        app.router.add_route("*", "/api/v1/query", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls).start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"{'https' if tls else 'http'}://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_an_answer_is_its_result_list_and_the_query_goes_as_a_form(
    serve: Serve,
) -> None:
    seen: list[dict[str, str]] = []

    async def prometheus(request: web.Request) -> web.Response:
        seen.append({key: str(value) for key, value in (await request.post()).items()})
        return web.json_response(VECTOR)

    prom = LiveProm(await serve(prometheus), 5)
    try:
        found = await prom.instant("up", at=1000.5)
    finally:
        await prom.close()
    assert found == Answer(VECTOR["data"]["result"])
    # partial_response is sent always: a Thanos querier's own default may be on.
    assert seen == [
        {"query": "up", "timeout": "5s", "time": "1000.500", "partial_response": "false"}
    ]


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
    serve: Serve,
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
    serve: Serve,
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
    serve: Serve,
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
        assert (await prom.instant("up")).result == VECTOR["data"]["result"]
    finally:
        await prom.close()
    assert answers == []


# -- one query per instant, whatever asks -------------------------------------------------


class FakeProm(LiveProm):
    """Answers each query with ``answer``, after ``gate`` opens (a hung Prometheus until)."""

    def __init__(self, answer: Json | None = None, target: Target | None = None) -> None:
        super().__init__(target or Target(f"http://prometheus-{id(self)}.invalid"))
        self.answer = answer or VECTOR
        self.gate = asyncio.Event()
        self.gate.set()
        self.asked: list[tuple[str, float | None]] = []

    async def instant(self, query: str, at: float | None = None) -> Answer:
        self.asked.append((query, at))
        await self.gate.wait()
        return Answer(self.answer["data"]["result"], tuple(self.answer.get("warnings", ())))


async def test_the_same_query_of_one_instant_is_sent_once_and_a_later_instant_again() -> None:
    prom, asked = FakeProm(), live.Asked()
    prom.gate.clear()
    waiting = [asyncio.create_task(asked.ask(prom, "up", 15.0)) for _ in range(3)]
    await asyncio.sleep(0)
    prom.gate.set()
    assert [len(r.result) for r in await asyncio.gather(*waiting)] == [1, 1, 1]
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
    assert len((await second).result) == 1


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
    controller.policies.connect = lambda target: proms[target.url]
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


# -- a distributed Prometheus: tenants, tokens, TLS, partial answers -----------------------


async def test_a_target_s_headers_and_token_go_with_every_query(
    serve: Serve,
) -> None:
    seen: list[dict[str, str]] = []

    async def mimir(request: web.Request) -> web.Response:
        seen.append({k: v for k, v in request.headers.items() if k.startswith(("X-", "Auth"))})
        return web.json_response(VECTOR)

    url = await serve(mimir)
    prom = LiveProm(Target(url, 5, headers=(("X-Scope-OrgID", "team-a"),), token="s3cret"))
    try:
        await prom.instant("up")
        await prom.instant("up")
    finally:
        await prom.close()
    assert seen == [{"X-Scope-OrgID": "team-a", "Authorization": "Bearer s3cret"}] * 2


@pytest.fixture
def tls(tmp_path: Path) -> tuple[ssl.SSLContext, str]:
    """A server context with a certificate for 127.0.0.1 signed by a CA of its own, and
    the CA's PEM."""
    keys = Pki(tmp_path)
    keys.ensure()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(keys.serving_cert, keys.serving_key)
    return context, keys.ca_cert.read_text()


async def test_an_https_prometheus_is_verified_by_default_and_trusted_through_its_ca(
    serve: Serve, tls: tuple[ssl.SSLContext, str]
) -> None:
    async def prometheus(_: web.Request) -> web.Response:
        return web.json_response(VECTOR)

    context, ca = tls
    url = await serve(prometheus, context)
    unverified = LiveProm(Target(url, 5))
    with pytest.raises(QueryError) as failed:
        await unverified.instant("up")
    await unverified.close()
    assert failed.value.kind == "Unreachable"
    assert "certificate" in str(failed.value).lower()

    for target in (Target(url, 5, ca=ca), Target(url, 5, verify=False)):
        prom = LiveProm(target)
        try:
            assert (await prom.instant("up")).result == VECTOR["data"]["result"]
        finally:
            await prom.close()


async def test_a_partial_answer_names_its_warnings(
    serve: Serve,
) -> None:
    warned = {**VECTOR, "warnings": ["No StoreAPIs matched for this query: store-b"]}

    async def thanos(_: web.Request) -> web.Response:
        return web.json_response(warned)

    prom = LiveProm(Target(await serve(thanos), 5, partial_response=True))
    try:
        found = await prom.instant("up")
    finally:
        await prom.close()
    assert found.warnings == ("No StoreAPIs matched for this query: store-b",)


def test_a_pod_missing_from_a_partial_answer_keeps_its_clock() -> None:
    spec = {**POLICY_SPEC, "signals": [{**POLICY_SPEC["signals"][0], "for": "30s"}]}
    detector = engine.compile_policy(BreakerPolicySpec.model_validate(spec))
    state = engine.State()
    both = {(NS, "rl-0"): engine.Sample(4.0), (NS, "rl-1"): engine.Sample(4.0)}
    engine.step(detector, state, {"pool": both}, 100.0)
    # A store down: rl-1's series did not come back. Unseen, not quiet: its clock stays.
    seen_one = engine.Partial({(NS, "rl-0"): engine.Sample(4.0)})
    engine.step(detector, state, {"pool": seen_one}, 115.0)
    assert state.since == {("pool", (NS, "rl-0")): 100.0, ("pool", (NS, "rl-1")): 100.0}
    # A whole answer without it: quiet, its clock cleared.
    engine.step(detector, state, {"pool": dict(seen_one)}, 130.0)
    assert state.since == {("pool", (NS, "rl-0")): 100.0}


async def test_a_partial_answer_is_never_read_as_whole_whatever_the_policy_asked() -> None:
    """Thanos v0.41 answers in part, with warnings, even to partial_response=false."""
    detector = _detector()
    warned: Json = {**VECTOR, "warnings": ["store-b: unavailable"]}
    for asked in (True, False):
        prom = FakeProm(warned, Target("http://thanos.invalid", partial_response=asked))
        read = await live.aread(prom, detector, 15.0, live.Asked())
        assert isinstance(read.readings["pool"], engine.Partial)
        assert read.partial == {"pool": "store-b: unavailable"}
        assert read.errors == {}
    whole = await live.aread(FakeProm(VECTOR), detector, 15.0, live.Asked())
    assert not isinstance(whole.readings["pool"], engine.Partial)
    assert whole.partial == {}


async def test_a_policy_s_token_is_read_from_its_secret_cached_and_refused_saying_why() -> None:
    reads: list[tuple[str, str | None]] = []
    answers: list[str | SecretUnreadable] = ["t0ken", SecretUnreadable("Secret a/prom not found")]

    async def read_secret(ref: SecretKeyRef, namespace: str | None, lines: bool) -> str:
        reads.append((ref.name, namespace))
        found = answers.pop(0)
        if isinstance(found, SecretUnreadable):
            raise found
        return found

    made: list[Target] = []

    def connect(target: Target) -> LiveProm:
        made.append(target)
        return FakeProm(target=target)

    policies = Policies("http://prometheus.invalid", connect, read_secret)
    settings = PrometheusSettings.model_validate(
        {
            "url": "https://mimir.invalid",
            "headers": {"X-Scope-OrgID": "team-a"},
            "bearerTokenSecretRef": {"name": "prom", "key": "token"},
        }
    )
    key = ("BreakerPolicy", "a", "guard")
    first = await policies.client(key, settings)
    again = await policies.client(key, settings)  # within the TTL: not read again
    assert first is again
    assert reads == [("prom", "a")]
    assert made == [
        Target("https://mimir.invalid", 5.0, (("X-Scope-OrgID", "team-a"),), token="t0ken")
    ]
    policies.secrets[("a", "prom", "token")] = (float("-inf"), "t0ken")  # the TTL ran out
    with pytest.raises(QueryError) as failed:
        await policies.client(key, settings)
    assert failed.value.kind == "Misconfigured"
    assert "Secret a/prom not found" in str(failed.value)


def test_a_policy_s_status_says_its_answers_were_partial_and_when_they_are_whole_again() -> None:
    counts = {"breakers": 1, "open": 0, "unknown": 0}
    note = "partial answers for pool (...): store-b: unavailable"
    assert policy_status_patch(counts, counts, None, note) == {"incomplete": note}
    assert policy_status_patch(counts, {**counts, "incomplete": note}, None, note) is None
    assert policy_status_patch(counts, {**counts, "incomplete": note}, None) == {"incomplete": None}


def test_an_interval_under_a_second_or_a_zero_timeout_is_refused_naming_it() -> None:
    for field, value, said in (
        ("interval", "0s", "at least 1s"),
        ("timeout", "0s", "more than 0s"),
    ):
        with pytest.raises(ValueError, match=said):
            PrometheusSettings.model_validate({field: value})


def test_a_workload_seen_in_part_keeps_its_across_clock() -> None:
    spec = {
        **POLICY_SPEC,
        "signals": [
            {
                "name": "fanout",
                "query": "sum by (namespace, pod, dst) (flows)",
                "across": {"label": "dst", "operator": ">=", "threshold": 2},
                "for": "30s",
            }
        ],
    }
    detector = engine.compile_policy(BreakerPolicySpec.model_validate(spec))
    state = engine.State()
    one = (NS, "rl-0")
    both = {one: engine.Sample(1.0, {}, frozenset({"a", "b"}))}
    engine.step(detector, state, {"fanout": both}, 100.0)
    assert list(state.since.values()) == [100.0]
    seen_part = engine.Partial({one: engine.Sample(1.0, {}, frozenset({"a"}))})
    engine.step(detector, state, {"fanout": seen_part}, 115.0)
    assert list(state.since.values()) == [100.0]  # the unseen part may still hold it


async def test_prometheus_s_own_query_annotations_are_not_a_partial_answer() -> None:
    noted: Json = {**VECTOR, "warnings": ["PromQL warning: encountered a mix of histograms"]}
    read = await live.aread(FakeProm(noted), _detector(), 15.0, live.Asked())
    assert read.partial == {}
    assert not isinstance(read.readings["pool"], engine.Partial)


async def test_a_ca_bundle_that_does_not_load_is_misconfigured_not_a_crash() -> None:
    async def read_secret(ref: SecretKeyRef, namespace: str | None, lines: bool) -> str:
        return "-----BEGIN CERTIFICATE-----\nnot one\n-----END CERTIFICATE-----"

    policies = Policies("http://prometheus.invalid", lambda t: FakeProm(target=t), read_secret)
    settings = PrometheusSettings.model_validate(
        {"url": "https://p.invalid", "tls": {"caSecretRef": {"name": "ca", "key": "ca.crt"}}}
    )
    with pytest.raises(QueryError) as failed:
        await policies.client(("BreakerPolicy", "a", "guard"), settings)
    assert failed.value.kind == "Misconfigured"
    assert "tls.caSecretRef" in str(failed.value)
