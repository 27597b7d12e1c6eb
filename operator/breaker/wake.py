"""Waiting for what the watches say, rather than polling for it.

A ``Changes`` is told each time the objects behind an in-memory view changed (a kopf index
updated, a watch event applied); a coroutine waiting on a question about that view wakes
then, asks again, and returns as soon as there is an answer or its time is up. No API
calls and no timer: the answer arrives with the event that carries it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Changes:
    """A wake for every waiter at once, each time the watched objects change."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def notify(self) -> None:
        """The view changed: every waiter looks again. Safe to call from handlers that do
        not await, and as often as events come."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def until(
        self,
        found: Callable[[], T],
        seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> T:
        """``found()`` as soon as it is truthy, or its last value after ``seconds``.

        ``found`` reads the in-memory view and does not await, so no change can slip in
        between the look and the wait."""
        deadline = clock() + seconds
        while True:
            changed = self._changed
            result = found()
            left = deadline - clock()
            if result or left <= 0:
                return result
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout=left)
