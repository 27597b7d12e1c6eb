"""The breaker state machine, through every transition."""

from __future__ import annotations

import dataclasses
import datetime as dt

from breaker.circuit.machine import Breaker, Observation, Settings, step

T0 = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)
HALF_OPEN = Settings(
    half_open=True, cooldown=dt.timedelta(minutes=10), probation=dt.timedelta(minutes=5)
)


def at(minutes: float, **kw: object) -> Observation:
    return Observation(now=T0 + dt.timedelta(minutes=minutes), **kw)  # type: ignore[arg-type]


def test_closed_stays_closed_while_clean() -> None:
    move = step(Breaker(), at(0), Settings())
    assert move.after.state == "Closed"
    assert move.effects == ()
    assert move.event is None


def test_a_trip_opens_and_applies_the_actions() -> None:
    move = step(Breaker(), at(0, tripped="critical:mining"), Settings())
    assert move.after.state == "Open"
    assert move.after.trips == 1
    assert move.after.reason == "critical:mining"
    assert move.after.contained
    assert move.effects == ("apply",)
    assert move.event == ("Warning", "BreakerTripped")


def test_manual_recovery_stays_open_until_reset() -> None:
    opened = step(Breaker(), at(0, tripped="r"), Settings()).after
    assert opened.cooldown_until is None
    assert step(opened, at(600), Settings()).after.state == "Open"
    reset = step(opened, at(601, reset="2026-05-01T22:00"), Settings())
    assert reset.after.state == "Closed"
    assert reset.effects == ("revert",)
    assert reset.after.handled_reset == "2026-05-01T22:00"
    assert not reset.after.contained
    # The same token again changes nothing.
    assert step(reset.after, at(602, reset="2026-05-01T22:00"), Settings()).effects == ()


def test_half_open_after_the_cooldown_resumes_then_closes_when_clean() -> None:
    opened = step(Breaker(), at(0, tripped="r"), HALF_OPEN).after
    assert opened.cooldown_until == T0 + dt.timedelta(minutes=10)
    assert step(opened, at(9), HALF_OPEN).after.state == "Open"
    probation = step(opened, at(10), HALF_OPEN)
    assert probation.after.state == "HalfOpen"
    assert probation.effects == ("resume",)  # the workload runs; egress stays revoked
    assert probation.after.contained
    still = step(probation.after, at(14), HALF_OPEN)
    assert still.after.state == "HalfOpen"
    assert still.effects == ()
    closed = step(probation.after, at(15), HALF_OPEN)
    assert closed.after.state == "Closed"
    assert closed.effects == ("revert",)
    assert closed.after.trips == 1, "the count is kept: a relapse later still counts"


def test_a_relapse_in_probation_reopens_with_a_longer_cooldown() -> None:
    opened = step(Breaker(), at(0, tripped="r"), HALF_OPEN).after
    probation = step(opened, at(10), HALF_OPEN).after
    relapse = step(probation, at(12, tripped="r"), HALF_OPEN)
    assert relapse.after.state == "Open"
    assert relapse.effects == ("repause",)
    assert relapse.after.trips == 2
    assert relapse.after.cooldown_until == T0 + dt.timedelta(minutes=12 + 20)


def test_the_cooldown_grows_up_to_its_cap() -> None:
    settings = Settings(
        cooldown=dt.timedelta(minutes=10), cooldown_cap=dt.timedelta(minutes=30), backoff_factor=2
    )
    assert [settings.cooldown_after(n).total_seconds() / 60 for n in (1, 2, 3, 4)] == [
        10,
        20,
        30,
        30,
    ]


def test_max_trips_locks_until_an_admin_resets() -> None:
    settings = dataclasses.replace(HALF_OPEN, max_trips=2)
    opened = step(Breaker(), at(0, tripped="r"), settings).after
    probation = step(opened, at(10), settings).after
    locked = step(probation, at(11, tripped="r"), settings)
    assert locked.after.state == "Locked"
    assert locked.event == ("Warning", "BreakerLocked")
    assert "locked until an admin resets it" in locked.after.reason
    assert step(locked.after, at(10_000), settings).after.state == "Locked"
    assert step(locked.after, at(10_001, reset="now"), settings).after.state == "Closed"


def test_missing_data_holds_the_state_and_reports_unknown() -> None:
    opened = step(Breaker(), at(0, tripped="r"), HALF_OPEN).after
    held = step(opened, at(30, signals_known=False), HALF_OPEN)
    assert held.after.state == "Open", "no probation on silence"
    assert not held.after.signals_known
    assert held.effects == ()
    assert step(Breaker(), at(0, signals_known=False), Settings()).after.state == "Closed"


def test_silence_trips_only_when_the_policy_says_so() -> None:
    settings = Settings(trip_when_unreachable=True)
    move = step(Breaker(), at(0, signals_known=False), settings)
    assert move.after.state == "Open"
    assert move.after.reason.startswith("Prometheus unreachable")


def test_forced_open_applies_once_and_stays_until_reset() -> None:
    forced = step(Breaker(), at(0, override="ForcedOpen"), Settings())
    assert forced.after.state == "ForcedOpen"
    assert forced.effects == ("apply",)
    again = step(forced.after, at(1, override="ForcedOpen"), Settings())
    assert again.effects == ()
    assert again.event is None
    lifted = step(again.after, at(2), Settings())
    assert lifted.after.state == "Open", "lifting the override keeps containment until reset"
    assert step(lifted.after, at(3, reset="r1"), Settings()).effects == ("revert",)


def test_an_overrides_reason_becomes_the_breakers_reason() -> None:
    forced = step(Breaker(), at(0, override="ForcedOpen", override_reason="tunnel"), Settings())
    assert forced.after.reason == "forced open by an admin: tunnel"
    reset = step(forced.after, at(1, reset="r1"), Settings())
    assert reset.after.state == "Closed"
    assert reset.effects == ("revert",)


def test_disabled_is_hands_off() -> None:
    disabled = step(Breaker(), at(0, override="Disabled", tripped="r"), Settings())
    assert disabled.after.state == "Disabled"
    assert disabled.effects == ()
    assert step(disabled.after, at(1), Settings()).after.state == "Closed"


def test_dry_run_makes_the_same_moves_marked_dry() -> None:
    move = step(Breaker(), at(0, tripped="r"), Settings(dry_run=True))
    assert move.after.state == "Open"
    assert move.dry_run
    assert move.effects == ("apply",)
