"""What the operator does with API errors that are not the spec's fault: 429 and 409."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kubernetes import client

from breaker import kube
from breaker.controllers.breakers import _unfinished


def throttled(retry_after: str | None = None) -> client.ApiException:
    error = client.ApiException(status=429, reason="Too Many Requests")
    error.headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return error


def test_retry_after_is_honoured_and_capped() -> None:
    assert kube.retry_after(throttled("1"), 0) == 1.0
    assert kube.retry_after(throttled("600"), 0) == kube.THROTTLE_WAIT_CAP_SECONDS
    assert kube.retry_after(throttled(), 2) == 4.0  # none given: 1, 2, 4 s


def test_a_throttled_call_is_retried_and_other_errors_are_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kube, "retry_after", lambda *_: 0.0)
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise throttled("1")
        return "done"

    assert asyncio.run(kube.call(flaky)) == "done" and len(calls) == 3

    def conflict() -> Any:
        raise client.ApiException(status=409, reason="Conflict")

    with pytest.raises(client.ApiException):
        asyncio.run(kube.call(conflict))

    def always() -> Any:
        raise throttled()

    with pytest.raises(client.ApiException) as caught:
        asyncio.run(kube.call(always))
    assert caught.value.status == 429


def test_pending_and_failed_actions_are_unfinished_but_not_dry_runs_or_failed_undos() -> None:
    assert _unfinished({"type": "pause", "pending": True})
    assert _unfinished({"type": "pause", "error": "429 Too Many Requests: slow down"})
    assert not _unfinished({"type": "pause", "changed": {}})
    assert not _unfinished({"type": "pause", "error": "x", "dryRun": True})
    assert not _unfinished({"type": "pause", "error": "undo failed: 500 boom"})
