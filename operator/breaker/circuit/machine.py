"""The breaker's state machine. Pure: a state and an observation in, a transition out.

States (DESIGN.md): ``Closed`` → (a trip rule holds) → ``Open`` (actions applied) → after
the cooldown, with ``recovery: HalfOpen``, → ``HalfOpen`` (workload resumed, egress still
revoked, probation) → ``Closed`` if clean, or back to ``Open`` with the trip count raised.
``Locked`` after ``maxTrips``: only an admin's reset leaves it. Admin overrides:
``ForcedOpen`` (trip now, stay open), ``Disabled`` (hands off), and a reset request.

The machine never touches the cluster. A transition names its effects (apply the
actions, resume the workload, undo everything); the caller carries them out and records
what they changed. In ``DryRun`` the same transitions happen with ``dry_run`` set, so the
caller records what it would have done and changes nothing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Literal

State = Literal["Closed", "Open", "HalfOpen", "Locked", "ForcedOpen", "Disabled"]
Effect = Literal["apply", "resume", "repause", "revert"]
Override = Literal["ForcedOpen", "Disabled"]


@dataclass(frozen=True)
class Settings:
    """The policy's recovery settings, parsed."""

    cooldown: dt.timedelta = dt.timedelta(minutes=10)
    cooldown_cap: dt.timedelta = dt.timedelta(hours=6)
    backoff_factor: float = 2.0
    probation: dt.timedelta = dt.timedelta(minutes=10)
    max_trips: int = 3
    half_open: bool = False  # recovery mode HalfOpen; else Manual
    dry_run: bool = False
    trip_when_unreachable: bool = False  # prometheus.onUnreachable: Trip

    def cooldown_after(self, trips: int) -> dt.timedelta:
        """The cooldown after the ``trips``-th trip: growing by the factor, up to the cap."""
        grown = self.cooldown * (self.backoff_factor ** max(0, trips - 1))
        return min(grown, self.cooldown_cap)


@dataclass(frozen=True)
class Breaker:
    """What the machine remembers (it lives in the Breaker's status)."""

    state: State = "Closed"
    trips: int = 0
    last_trip: dt.datetime | None = None
    cooldown_until: dt.datetime | None = None
    probation_until: dt.datetime | None = None
    handled_reset: str | None = None
    last_reset: dt.datetime | None = None  # an admin's last reset (evidence before it is spent)
    reason: str = ""
    contained: bool = False  # actions are applied and not yet undone
    signals_known: bool = True


@dataclass(frozen=True)
class Observation:
    """One evaluation's view of the breaker's workload."""

    now: dt.datetime
    tripped: str | None = None  # the trip rule that held, with its signals, or None
    signals_known: bool = True  # False while Prometheus is unreachable
    override: Override | None = None
    override_reason: str | None = None  # the admin's why (spec.overrideReason)
    reset: str | None = None  # the Breaker's reset token (spec.reset or the annotation)


@dataclass(frozen=True)
class Transition:
    before: Breaker
    after: Breaker
    effects: tuple[Effect, ...] = ()
    dry_run: bool = False

    @property
    def changed(self) -> bool:
        return self.before.state != self.after.state

    @property
    def event(self) -> tuple[Literal["Normal", "Warning"], str] | None:
        """The Event a change of state deserves; None when the state held."""
        if not self.changed:
            return None
        reasons: dict[State, tuple[Literal["Normal", "Warning"], str]] = {
            "Open": ("Warning", "BreakerTripped"),
            "Locked": ("Warning", "BreakerLocked"),
            "ForcedOpen": ("Warning", "BreakerForcedOpen"),
            "HalfOpen": ("Normal", "BreakerHalfOpen"),
            "Closed": ("Normal", "BreakerClosed"),
            "Disabled": ("Normal", "BreakerDisabled"),
        }
        return reasons[self.after.state]


def step(breaker: Breaker, seen: Observation, settings: Settings) -> Transition:
    """The one place breaker states change."""
    known = dataclasses.replace(breaker, signals_known=seen.signals_known)
    decided = _admin_decides(breaker, known, seen)
    if decided is None:
        decided = _by_signals(breaker, known, seen, settings)
    after, effects = decided
    return Transition(breaker, after, effects, settings.dry_run)


# The state after a step, and the effects that take the cluster there.
_Decision = tuple[Breaker, tuple[Effect, ...]]


def _admin_decides(breaker: Breaker, known: Breaker, seen: Observation) -> _Decision | None:
    """A reset, an override, or an override lifted; None if the admin has no say this step."""
    # An admin's reset wins over everything: close and undo exactly what was done.
    if seen.reset is not None and seen.reset != breaker.handled_reset:
        closed = Breaker(
            state="Disabled" if seen.override == "Disabled" else "Closed",
            handled_reset=seen.reset,
            last_reset=seen.now,
            reason="reset by an admin",
            signals_known=seen.signals_known,
        )
        return closed, ("revert",) if breaker.contained else ()

    if seen.override == "Disabled":
        # Hands off: nothing is evaluated, and nothing applied is undone without a reset.
        why = _by_admin("disabled", seen.override_reason)
        return dataclasses.replace(known, state="Disabled", reason=why), ()
    if seen.override == "ForcedOpen":
        why = _by_admin("forced open", seen.override_reason)
        forced = dataclasses.replace(
            known,
            state="ForcedOpen",
            reason=why,
            contained=True,
            last_trip=breaker.last_trip if breaker.state == "ForcedOpen" else seen.now,
        )
        return forced, () if breaker.contained else ("apply",)
    if breaker.state in ("Disabled", "ForcedOpen"):
        # The override was lifted: what is contained stays Open until reset or cooldown.
        lifted: State = "Open" if breaker.contained else "Closed"
        return dataclasses.replace(known, state=lifted, reason="override removed"), ()
    return None


def _by_signals(
    breaker: Breaker, known: Breaker, seen: Observation, settings: Settings
) -> _Decision:
    """What the signals decide for a breaker no admin is steering."""
    now = seen.now
    tripped = seen.tripped
    if not seen.signals_known:
        if settings.trip_when_unreachable and breaker.state == "Closed":
            tripped = "Prometheus unreachable (prometheus.onUnreachable: Trip)"
        elif tripped is None:
            # Missing data never trips and never clears: hold the state, report Unknown.
            return known, ()

    if breaker.state == "Closed":
        return (_trip(known, tripped, now, settings), ("apply",)) if tripped else (known, ())
    if breaker.state == "Open":
        return _open(breaker, known, now, settings)
    if breaker.state == "HalfOpen":
        return _half_open(breaker, known, seen, tripped, settings)
    return known, ()  # Locked: only a reset leaves it


def _open(breaker: Breaker, known: Breaker, now: dt.datetime, settings: Settings) -> _Decision:
    """Open: on probation once the cooldown is over (if half-open is on); else stay."""
    due = breaker.cooldown_until is not None and now >= breaker.cooldown_until
    if settings.half_open and due:
        probation = dataclasses.replace(
            known,
            state="HalfOpen",
            probation_until=now + settings.probation,
            reason=f"probation until {_iso(now + settings.probation)}",
        )
        return probation, ("resume",)
    return known, ()


def _half_open(
    breaker: Breaker,
    known: Breaker,
    seen: Observation,
    tripped: str | None,
    settings: Settings,
) -> _Decision:
    """On probation: a trip pauses again; a clean probation closes and undoes."""
    now = seen.now
    if tripped:
        return _trip(known, tripped, now, settings), ("repause",)
    if breaker.probation_until is not None and now >= breaker.probation_until:
        clean = Breaker(
            state="Closed",
            trips=breaker.trips,
            last_trip=breaker.last_trip,
            handled_reset=breaker.handled_reset,
            last_reset=breaker.last_reset,
            reason="probation passed clean",
            signals_known=seen.signals_known,
        )
        return clean, ("revert",)
    return known, ()


def _trip(breaker: Breaker, rule: str, now: dt.datetime, settings: Settings) -> Breaker:
    trips = breaker.trips + 1
    if trips >= settings.max_trips:
        return dataclasses.replace(
            breaker,
            state="Locked",
            trips=trips,
            last_trip=now,
            cooldown_until=None,
            probation_until=None,
            contained=True,
            reason=f"{rule}; trip {trips} of {settings.max_trips}: locked until an admin resets it",
        )
    until = now + settings.cooldown_after(trips) if settings.half_open else None
    return dataclasses.replace(
        breaker,
        state="Open",
        trips=trips,
        last_trip=now,
        cooldown_until=until,
        probation_until=None,
        contained=True,
        reason=rule,
    )


def _iso(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _by_admin(what: str, why: str | None) -> str:
    return f"{what} by an admin" + (f": {why}" if why else "")
