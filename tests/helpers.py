"""Waiting helpers for tests against the real cluster: poll a condition, fail with what it was."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from breaker import wait

T = TypeVar("T")


def wait_for(
    probe: Callable[[], T | None],
    what: str,
    timeout: float = 30.0,
    interval: float = 0.2,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """``breaker.wait.wait_for``, failing the test (an AssertionError) when time runs out."""
    try:
        return wait.wait_for(probe, what, timeout, interval, ignore)
    except wait.WaitTimeout as error:
        raise AssertionError(str(error)) from None
