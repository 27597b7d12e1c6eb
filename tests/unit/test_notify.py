"""The notify action: the webhook body, its delivery against a real local HTTP server, Secrets."""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime as dt
import json
import logging
import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from breaker.actions.notify import (
    MAX_BODY,
    RESET,
    TRIPPED,
    Notifier,
    Result,
    decode_secret,
    encode,
    exponential,
    payload,
    secret_namespace_allowed,
)
from breaker.api.breaker import Evidence

NOW = dt.datetime(2026, 5, 1, 12, 0, 30, tzinfo=dt.UTC)


def no_wait(retry: int) -> float:
    return 0.001


def breaker(evidence: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "breaker.dev/v1alpha1",
        "kind": "Breaker",
        "metadata": {"name": "rl-agent-7", "namespace": "team-a", "uid": "u-1"},
        "spec": {
            "policyRef": {"kind": "BreakerPolicy", "name": "gpu-guard", "namespace": "team-a"},
            "targetRef": {"apiVersion": "batch/v1", "kind": "Job", "name": "rl-agent-7"},
        },
        "status": {
            "state": "Open",
            "trips": 2,
            "reason": "critical:mining",
            "lastTrip": "2026-05-01T12:00:15Z",
            "evidence": evidence
            if evidence is not None
            else [
                {"time": "2026-04-30T09:00:00Z", "rule": "old", "signals": [], "pods": []},
                {
                    "time": "2026-05-01T12:00:15Z",
                    "rule": "critical:mining",
                    "signals": [
                        {"name": "mining", "query": "max(x)", "value": 0.93, "pod": "rl-0"}
                    ],
                    "pods": [{"name": "rl-0", "node": "gpu-node-0", "gpus": ["GPU-1"]}],
                },
            ],
        },
    }


# --- the body ------------------------------------------------------------------------------


def test_the_body_names_the_breaker_workload_policy_and_only_the_latest_evidence() -> None:
    assert payload(TRIPPED, breaker(), NOW) == {
        "event": "BreakerTripped",
        "time": "2026-05-01T12:00:30Z",
        "breaker": {"namespace": "team-a", "name": "rl-agent-7"},
        "workload": {"kind": "Job", "name": "rl-agent-7"},
        "policy": {"kind": "BreakerPolicy", "name": "gpu-guard", "namespace": "team-a"},
        "state": "Open",
        "trips": 2,
        "reason": "critical:mining",
        "lastTrip": "2026-05-01T12:00:15Z",
        "evidence": {
            "time": "2026-05-01T12:00:15Z",
            "rule": "critical:mining",
            "signals": [{"name": "mining", "query": "max(x)", "value": 0.93, "pod": "rl-0"}],
            "pods": [{"name": "rl-0", "node": "gpu-node-0", "gpus": ["GPU-1"]}],
        },
        "containment": {
            "contained": True,
            "reason": "Contained",
            "message": "done: nothing to apply",
            "timeToContainSeconds": None,
            "actions": [],
        },
        "truncated": False,
    }


def test_a_reset_of_a_breaker_without_status_keeps_the_same_keys_with_nulls() -> None:
    obj = breaker()
    del obj["status"]
    obj["spec"]["policyRef"] = {"kind": "ClusterBreakerPolicy", "name": "fleet"}
    body = payload(RESET, obj, NOW.astimezone(dt.timezone(dt.timedelta(hours=2))))
    assert body["event"] == "BreakerReset"
    assert body["time"] == "2026-05-01T12:00:30Z"  # any zone in, UTC out
    assert body["policy"] == {"kind": "ClusterBreakerPolicy", "name": "fleet", "namespace": None}
    assert (body["state"], body["trips"], body["reason"], body["evidence"]) == (
        None,
        None,
        None,
        None,
    )
    assert body.keys() == payload(TRIPPED, breaker(), NOW).keys()


def test_datetimes_from_a_model_dump_become_json() -> None:
    obj = breaker()
    obj["status"]["lastTrip"] = dt.datetime(2026, 5, 1, 12, 0, 15, tzinfo=dt.UTC)
    obj["status"]["evidence"][-1]["time"] = dt.datetime(2026, 5, 1, 12, 0, 15, tzinfo=dt.UTC)
    body = payload(TRIPPED, obj, NOW)
    assert body["lastTrip"] == body["evidence"]["time"] == "2026-05-01T12:00:15Z"
    json.loads(encode(body))


def test_the_breaker_is_left_untouched_even_when_the_body_is_cut() -> None:
    obj = breaker(evidence=[big_evidence(signals=200)])
    before = copy.deepcopy(obj)
    payload(TRIPPED, obj, NOW)
    assert obj == before


def big_evidence(signals: int = 0, pods: int = 0) -> dict[str, Any]:
    return {
        "time": "2026-05-01T12:00:15Z",
        "rule": "critical:mining",
        "signals": [
            {
                "name": f"s-{index}",
                "query": "q" * 900,
                "value": float(index),
                "pod": "rl-0",
                "labels": {"pod": "rl-0", "namespace": "team-a"},
            }
            for index in range(signals)
        ],
        "pods": [
            {"name": f"p-{index}-" + "x" * 240, "node": "n" * 250, "gpus": ["GPU-" + "u" * 36] * 16}
            for index in range(pods)
        ],
    }


def test_an_oversized_body_keeps_the_first_signals_that_fit_and_says_so() -> None:
    evidence = big_evidence(signals=200)
    body = payload(TRIPPED, breaker(evidence=[evidence]), NOW)
    size = len(encode(body))
    kept = body["evidence"]["signals"]
    assert size <= MAX_BODY
    assert body["truncated"] is True
    assert body["evidence"]["truncated"] is True
    assert 0 < len(kept) < 200
    assert kept == evidence["signals"][: len(kept)]
    one_more = len(json.dumps(evidence["signals"][len(kept)], separators=(",", ":"))) + 1
    assert size + one_more > MAX_BODY  # as many as fit, not merely some
    assert body["evidence"]["pods"] == evidence["pods"]
    Evidence.model_validate(body["evidence"] | {"signals": kept[:64]})


def test_a_body_that_fits_is_not_marked() -> None:
    body = payload(TRIPPED, breaker(evidence=[big_evidence(signals=16)]), NOW)
    assert body["truncated"] is False
    assert "truncated" not in body["evidence"]
    assert len(body["evidence"]["signals"]) == 16


def test_pods_go_before_the_last_signal_does() -> None:
    body = payload(TRIPPED, breaker(evidence=[big_evidence(signals=3, pods=256)]), NOW)
    assert len(encode(body)) <= MAX_BODY
    assert body["truncated"] is True
    assert body["evidence"]["pods"] is None
    assert len(body["evidence"]["signals"]) == 3


def test_evidence_that_cannot_fit_at_all_is_dropped() -> None:
    huge = big_evidence(signals=1)
    huge["rule"] = "r" * (2 * MAX_BODY)  # never valid in a Breaker, but the cap still holds
    body = payload(TRIPPED, breaker(evidence=[huge]), NOW)
    assert len(encode(body)) <= MAX_BODY
    assert body["truncated"] is True
    assert body["evidence"] is None


# --- Secrets -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("secret_namespace", "policy_namespace", "allowed"),
    [
        ("breaker-system", "team-a", True),  # the operator's own namespace
        ("team-a", "team-a", True),  # the policy's namespace
        ("team-b", "team-a", False),  # someone else's namespace
        ("breaker-system", None, True),  # ClusterBreakerPolicy: the operator's namespace ...
        ("team-a", None, False),  # ... and nowhere else
        ("", "", False),
    ],
)
def test_a_webhook_secret_is_read_only_from_the_operators_or_the_policys_namespace(
    secret_namespace: str, policy_namespace: str | None, allowed: bool
) -> None:
    assert secret_namespace_allowed(secret_namespace, "breaker-system", policy_namespace) is allowed


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def test_a_secret_value_is_decoded_and_its_trailing_newline_dropped() -> None:
    assert decode_secret({"token": b64("s3cret\n")}, "token", "hook") == "s3cret"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"other": b64("x")}, "Secret hook has no key token"),
        (None, "Secret hook has no key token"),
        ({"token": "not base64!"}, "Secret hook key token is not base64-encoded UTF-8 text"),
        ({"token": b64(b"\xff\xfe")}, "Secret hook key token is not base64-encoded UTF-8 text"),
        ({"token": b64(" \n")}, "Secret hook key token is empty"),
        ({"token": b64("a\nb")}, "Secret hook key token holds more than one line"),
    ],
)
def test_a_secret_that_cannot_serve_says_which_and_why(
    data: dict[str, str] | None, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as raised:
        decode_secret(data, "token", "hook")
    assert str(raised.value) == message


# --- backoff -------------------------------------------------------------------------------


def test_backoff_doubles_from_half_a_second_up_to_the_cap() -> None:
    delay = exponential()
    assert [delay(retry) for retry in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]


def test_jitter_stretches_each_delay_by_at_most_its_share() -> None:
    assert exponential(jitter=0.2, rand=lambda: 1.0)(3) == pytest.approx(2.4)
    assert exponential(jitter=0.2, rand=lambda: 0.0)(3) == 2.0


# --- delivery, against a real HTTP server on 127.0.0.1 -------------------------------------


@dataclass
class Seen:
    headers: dict[str, str]
    body: bytes


@dataclass
class Hook:
    """A webhook receiver answering from a script: a status code, or "wait" (until release,
    then 200). The last entry repeats."""

    script: list[int | str]
    url: str = ""
    requests: list[Seen] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(Seen(dict(request.headers), await request.read()))
        self.arrived.set()
        answer = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if answer == "wait":
            await self.release.wait()
            return web.Response(status=200)
        assert isinstance(answer, int)
        return web.Response(status=answer)


@asynccontextmanager
async def webhook(*script: int | str) -> AsyncIterator[Hook]:
    hook = Hook(list(script))
    app = web.Application()
    app.router.add_post("/services/T0/B0/xyz", hook.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    hook.url = f"http://{host}:{port}/services/T0/B0/xyz"
    try:
        yield hook
    finally:
        hook.release.set()  # let waiting handlers finish so the shutdown is quick
        await runner.cleanup()


@asynccontextmanager
async def notifier(**settings: Any) -> AsyncIterator[Notifier]:
    sender = Notifier(**({"backoff": no_wait} | settings))
    try:
        yield sender
    finally:
        await sender.close()


BODY = payload(TRIPPED, breaker(), NOW)


async def test_a_delivery_posts_the_json_body_with_the_bearer_token() -> None:
    async with webhook(200) as hook, notifier() as sender:
        result = await sender.send(hook.url, BODY, token="s3cret")
    assert result == Result(ok=True, attempts=1, status=200, error=None)
    [seen] = hook.requests
    assert seen.headers["Authorization"] == "Bearer s3cret"
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["User-Agent"] == "breaker"
    assert json.loads(seen.body) == BODY


async def test_without_a_token_no_authorization_header_is_sent() -> None:
    async with webhook(204) as hook, notifier() as sender:
        result = await sender.send(hook.url, BODY)
    assert result.ok
    assert "Authorization" not in hook.requests[0].headers


async def test_server_errors_are_retried_with_backoff_until_one_succeeds() -> None:
    waits: list[int] = []

    def backoff(retry: int) -> float:
        waits.append(retry)
        return 0.001

    async with webhook(500, 500, 200) as hook, notifier(backoff=backoff) as sender:
        result = await sender.send(hook.url, BODY)
    assert result == Result(ok=True, attempts=3, status=200, error=None)
    assert len(hook.requests) == 3
    assert waits == [1, 2]


async def test_too_many_requests_is_retried() -> None:
    async with webhook(429, 200) as hook, notifier() as sender:
        result = await sender.send(hook.url, BODY)
    assert (result.ok, result.attempts) == (True, 2)


async def test_a_server_that_keeps_failing_gets_five_attempts() -> None:
    async with webhook(503) as hook, notifier() as sender:
        result = await sender.send(hook.url, BODY)
    assert result == Result(ok=False, attempts=5, status=503, error="HTTP 503 Service Unavailable")
    assert len(hook.requests) == 5


async def test_a_client_error_is_not_retried() -> None:
    async with webhook(400, 200) as hook, notifier() as sender:
        result = await sender.send(hook.url, BODY)
    assert result == Result(ok=False, attempts=1, status=400, error="HTTP 400 Bad Request")
    assert len(hook.requests) == 1


async def test_a_timeout_counts_as_a_failed_attempt() -> None:
    async with webhook("wait", 200) as hook, notifier(timeout=0.2) as sender:
        result = await sender.send(hook.url, BODY)
    assert result == Result(ok=True, attempts=2, status=200, error=None)
    assert len(hook.requests) == 2


async def test_a_server_that_never_answers_fails_after_every_attempt_timed_out() -> None:
    async with webhook("wait") as hook, notifier(timeout=0.1, attempts=3) as sender:
        result = await sender.send(hook.url, BODY)
    assert result == Result(ok=False, attempts=3, status=None, error="no answer within 0.1s")
    assert len(hook.requests) == 3


async def test_a_refused_connection_is_retried_and_logged_without_the_urls_path(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nobody listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/services/T0/B0/xyz"
    caplog.set_level(logging.WARNING, logger="breaker.notify")
    async with notifier(attempts=3) as sender:
        result = await sender.send(url, BODY)
    assert (result.ok, result.attempts, result.status) == (False, 3, None)
    assert result.error is not None
    assert "ClientConnectorError" in result.error
    [record] = caplog.records
    assert record.name == "breaker.notify"
    assert f"http://127.0.0.1:{port}" in record.getMessage()
    assert "xyz" not in record.getMessage()


async def test_submit_returns_before_the_webhook_answers() -> None:
    results: list[Result] = []
    async with webhook("wait") as hook, notifier() as sender:
        task = sender.submit(hook.url, BODY, token="s3cret", on_done=results.append)
        assert not task.done()
        assert sender.pending == 1
        await asyncio.wait_for(hook.arrived.wait(), 5)  # the request is out, its answer held
        assert not task.done()
        assert results == []
        hook.release.set()
        result = await task
    assert result == Result(ok=True, attempts=1, status=200, error=None)
    assert results == [result]
    assert sender.pending == 0


async def test_an_async_callback_is_awaited_and_a_failing_one_is_only_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorded: list[Result] = []

    async def record(result: Result) -> None:
        await asyncio.sleep(0)
        recorded.append(result)

    def broken(result: Result) -> None:
        raise RuntimeError("status patch failed")

    async with webhook(200) as hook, notifier() as sender:
        first = await sender.submit(hook.url, BODY, on_done=record)
        second = await sender.submit(hook.url, BODY, on_done=broken)
    assert recorded == [first]
    assert second.ok
    assert "recording the result failed" in caplog.text


async def test_close_cancels_deliveries_still_under_way() -> None:
    async with webhook("wait") as hook:
        sender = Notifier(backoff=no_wait)
        called: list[Result] = []
        task = sender.submit(hook.url, BODY, on_done=called.append)
        await asyncio.wait_for(hook.arrived.wait(), 5)
        await sender.close()
        assert task.cancelled()
        assert called == []
        assert sender.pending == 0
