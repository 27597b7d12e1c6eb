"""One change to kopf's internals, for start-up at scale: wake index waiters only when it matters.

On start, kopf holds every object's handlers until every indexed object has been indexed
once: each object gets a toggle in one set, and each object's worker waits for the whole
set to be on. kopf wakes every waiter each time one toggle goes, so the first listing of
N indexed objects costs N² wake-ups: at 10,000 guarded jobs (about 30,000 pods, Jobs and
Breakers) a restarted operator, or a standby taking over, spent minutes in it and held
every pending event in memory meanwhile.

A waiter waits for the set's state (on or off), which only changes when the state does; a
set that wakes its waiters only then behaves the same and costs N. Toggles turned on or
off themselves still wake everyone, as before.
"""

from __future__ import annotations

from kopf._cogs.aiokits import aiotoggles

_KopfToggleSet = aiotoggles.ToggleSet


class QuietToggleSet(_KopfToggleSet):
    """kopf's ToggleSet, waking its waiters only when adding or dropping a toggle changes
    the set's state."""

    async def make_toggle(
        self, __val: bool = False, *, name: str | None = None
    ) -> aiotoggles.Toggle:
        toggle = aiotoggles.Toggle(__val, name=name, condition=self._condition)
        async with self._condition:
            before = self.is_on()
            self._toggles.add(toggle)
            if self.is_on() != before:
                self._condition.notify_all()
        return toggle

    async def drop_toggle(self, toggle: aiotoggles.Toggle) -> None:
        async with self._condition:
            before = self.is_on()
            self._toggles.discard(toggle)
            if self.is_on() != before:
                self._condition.notify_all()


def install() -> None:
    """Make kopf build its toggle sets as QuietToggleSets (before ``kopf.run``)."""
    aiotoggles.ToggleSet = QuietToggleSet  # type: ignore[misc]
