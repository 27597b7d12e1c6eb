"""The one polling wait, for the places that have nothing to watch: a process becoming
ready, a file or a port appearing, a developer's cluster settling.

The operator's own loops never poll; they wake on watches (``controllers/``). Callers turn
``WaitTimeout`` into their own error (a ``ClusterError``, a ``DemoError``, a test failure).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(TimeoutError):
    """What was awaited did not come; the message names it and what was last seen."""


def wait_for(
    probe: Callable[[], T | None],
    what: str,
    timeout: float = 30.0,
    interval: float = 0.2,
    ignore: tuple[type[BaseException], ...] = (),
    check: Callable[[], None] | None = None,
) -> T:
    """Call ``probe`` until it returns something truthy, and return that.

    Exceptions of the ``ignore`` types count as "not yet" (and are reported if time runs
    out); ``check`` is called before each try and may raise to give up early (the process
    that was to become ready died, say).
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        if check is not None:
            check()
        try:
            result = probe()
        except ignore as error:
            result, last = None, error
        else:
            last = result
        if result:
            return result
        if time.monotonic() > deadline:
            raise WaitTimeout(
                f"timed out after {timeout:.0f}s waiting for {what}; last saw: {last!r}"
            )
        time.sleep(interval)
