"""The loop both controllers run, and the per-key backoff of what failed.

A controller is a function that makes one pass over everything it keeps (the breakers, or
the TrainingJob queue) and says whether something failed. The reconciler runs it: at once
when a watched object changes (``nudge``), with a short debounce so a burst of events makes
one pass; again after ``retry`` seconds while a pass fails; at a controller's own due time
(the next policy evaluation); and every ``resync`` seconds regardless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Generic, TypeVar

log = logging.getLogger("breaker.reconciler")

K = TypeVar("K", bound=Hashable)


class Reconciler:
    def __init__(
        self,
        name: str,
        one_pass: Callable[[], Awaitable[bool]],
        *,
        debounce: float,
        retry: float,
        resync: float,
        due: Callable[[], float | None] = lambda: None,
    ) -> None:
        self.name = name
        self.one_pass = one_pass
        self.debounce = debounce
        self.retry_seconds = retry
        self.resync_seconds = resync
        self.due = due  # monotonic: when the controller wants its next pass, if it does
        self.wake = asyncio.Event()
        self.ready = False  # the indexes are filled: kopf's first listing is done
        self.retry = False

    def nudge(self) -> None:
        """Something changed (or the indexes are ready): make a pass soon."""
        self.ready = True
        self.wake.set()

    def timeout(self, now: float) -> float:
        """How long the loop sleeps if nothing changes."""
        timeout = self.retry_seconds if self.retry else self.resync_seconds
        due = self.due()
        return max(0.0, min(timeout, due - now)) if due is not None else timeout

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=self.timeout(time.monotonic()))
            if not self.ready:
                continue
            self.wake.clear()
            await asyncio.sleep(self.debounce)  # one pass for a burst of events
            try:
                self.retry = await self.one_pass()
            except Exception:
                log.exception("%s pass failed; retrying in %ss", self.name, self.retry_seconds)
                self.retry = True


class Backoff(Generic[K]):
    """When each key that failed may be tried again: ``base`` seconds, doubling per failure
    in a row up to ``cap`` (a 403 that an admin must fix is not hammered every few seconds)."""

    def __init__(
        self, base: float, cap: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.base, self.cap, self.clock = base, cap, clock
        self.after: dict[K, float] = {}
        self.failures: dict[K, int] = {}

    def ready(self, key: K) -> bool:
        return self.clock() >= self.after.get(key, 0.0)

    def failed(self, key: K) -> float:
        """Record a failure; the delay until the next try."""
        self.failures[key] = self.failures.get(key, 0) + 1
        delay = min(self.base * 2.0 ** (self.failures[key] - 1), self.cap)
        self.after[key] = self.clock() + delay
        return delay

    def succeeded(self, key: K) -> None:
        """Nothing left to retry for this key (done, superseded, or gone)."""
        self.after.pop(key, None)
        self.failures.pop(key, None)

    def keep_only(self, present: Iterable[K]) -> None:
        kept = set(present)
        for key in [k for k in self.after if k not in kept]:
            self.succeeded(key)

    def waiting(self) -> bool:
        """Some key is still to be retried later."""
        now = self.clock()
        return any(due > now for due in self.after.values())
