"""A Breaker's status as written: history kept short, conditions readers wait on, and
Prometheus's trouble said in SignalsAvailable."""

from __future__ import annotations

import datetime as dt
from typing import Any

from breaker.circuit import machine
from breaker.circuit import status as status_core

NOW = dt.datetime(2026, 12, 3, 8, 0, tzinfo=dt.UTC)
BODY: dict[str, Any] = {"metadata": {"generation": 3}, "spec": {}}


def conditions(found: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in found["conditions"]}


def test_a_trip_is_recorded_in_the_history_and_the_conditions() -> None:
    before = machine.Breaker()
    after = machine.Breaker(state="Open", reason="critical:ssh-tunnel", contained=True)
    found = status_core.wanted(
        BODY,
        {"history": [{"time": "t", "from": "x", "to": "y", "reason": "r"}] * 50},
        after,
        [{"type": "pause", "pending": True}],
        machine.Settings(),
        NOW,
        status_core.signals_unknown(None),
        transition=machine.Transition(before, after),
    )
    assert len(found["history"]) == status_core.HISTORY
    assert found["history"][-1]["to"] == "Open"
    assert found["observedGeneration"] == 3
    assert conditions(found)["Tripped"] == ("True", "Open")
    assert conditions(found)["Contained"][0] != "True"  # a pending record is an intention


def test_signals_that_cannot_be_read_say_what_prometheus_did() -> None:
    unknown = status_core.signals_unknown("Timeout: sum by (pod) (...) after 10s")
    assert (unknown.status, unknown.reason) == ("Unknown", "PrometheusTimeout")
    assert "after 10s" in unknown.message
    found = status_core.wanted(
        BODY, {}, machine.Breaker(signals_known=False), [], machine.Settings(), NOW, unknown
    )
    assert conditions(found)["SignalsAvailable"] == ("Unknown", "PrometheusTimeout")


def test_a_field_set_to_none_is_removed_from_the_status() -> None:
    assert status_core.merged({"actions": [1], "dryRun": True}, {"actions": None}) == {
        "dryRun": True
    }
