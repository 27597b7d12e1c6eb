"""Waiting helpers for tests against the real cluster: poll a condition, fail with what it was."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    probe: Callable[[], T | None],
    what: str,
    timeout: float = 30.0,
    interval: float = 0.2,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``probe`` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = probe()
        except ignore as error:
            result, last = None, error
        else:
            last = result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what}; last saw: {last!r}"
            )
        time.sleep(interval)
