"""The peering priority a newcomer takes: below every live peer, never tying."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pytest

from breaker import failpoints
from breaker.leadership import below, live_priorities

NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)


def peer(priority: int, seconds_ago: int, lifetime: int = 15) -> dict[str, object]:
    seen = NOW - dt.timedelta(seconds=seconds_ago)
    return {"priority": priority, "lastseen": seen.isoformat(), "lifetime": lifetime}


def test_only_peers_within_their_lifetime_count() -> None:
    status = {
        "a@1": peer(-5, 3),
        "b@2": peer(-9, 20),  # gone silent: dead
        "junk": "not a peer",
        "c@3": {"priority": "x", "lastseen": NOW.isoformat()},
    }
    assert live_priorities(status, NOW) == [-5]


def test_a_newcomer_goes_below_every_live_peer() -> None:
    assert below([], jitter=0) == -1
    assert below([-5, 3], jitter=7) == -13
    assert below([10], jitter=0) == -1  # never above zero: the first operator's level


def test_failpoints_parse_names_and_visits() -> None:
    assert failpoints.parse("trip.pause, reset.recorded:3,") == {
        "trip.pause": 1,
        "reset.recorded": 3,
    }
    assert failpoints.parse("") == {}
    assert failpoints.parse("breaker.disown=error, b:2=error") == {
        "breaker.disown=error": 1,
        "b=error": 2,
    }


def test_an_armed_error_failpoint_raises_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(failpoints, "_ARMED", failpoints.parse("x:2=error"))
    monkeypatch.setattr(failpoints, "_HITS", Counter())
    failpoints.fail("x")
    with pytest.raises(failpoints.Injected):
        failpoints.fail("x")
    failpoints.fail("x")
    failpoints.hit("x")  # an error point never kills
