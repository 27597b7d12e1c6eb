"""The per-Breaker series: one each, the current state only, gone with the Breaker."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from breaker.metrics import BreakerStates


def scrape(states: BreakerStates) -> list[str]:
    registry = CollectorRegistry()
    registry.register(states)
    text = generate_latest(registry).decode()
    return sorted(line for line in text.splitlines() if not line.startswith("#"))


def test_a_breaker_has_one_series_its_state_and_a_signals_gauge() -> None:
    states = BreakerStates()
    states.set("team-a", "rl", "egress", "Closed", unknown=False)
    states.set("team-a", "rl", "egress", "Open", unknown=True)  # the state moved on
    assert scrape(states) == [
        'breaker_signals_unknown{breaker="rl",namespace="team-a",policy="egress"} 1.0',
        'breaker_state{breaker="rl",namespace="team-a",policy="egress",state="Open"} 1.0',
    ]


def test_a_deleted_breaker_loses_its_series() -> None:
    states = BreakerStates()
    states.set("team-a", "rl", "egress", "Locked", unknown=False)
    states.set("team-b", "sft", "egress", "Closed", unknown=False)
    states.keep_only({("team-b", "sft")})
    assert [line.split("{")[0] for line in scrape(states)] == [
        "breaker_signals_unknown",
        "breaker_state",
    ]
    assert all('breaker="sft"' in line for line in scrape(states))


def test_a_policy_change_relabels_rather_than_adds() -> None:
    states = BreakerStates()
    states.set("team-a", "rl", "old", "Closed", unknown=False)
    states.set("team-a", "rl", "new", "Closed", unknown=False)
    assert all('policy="new"' in line for line in scrape(states))
    assert len(scrape(states)) == 2
