"""Failpoints: named places in the actions where a crash test may have the operator die.

Off unless ``BREAKER_FAILPOINTS`` names some, as ``NAME[:N],...``: the N-th time (default
the first) the operator reaches NAME it sends itself SIGKILL, exactly as an OOM kill or a
node loss would end it, with no cleanup and no last status write. The crash-consistency
tests use them to stop the operator between any two of its writes.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections import Counter

log = logging.getLogger("breaker.failpoints")
VARIABLE = "BREAKER_FAILPOINTS"


def parse(text: str) -> dict[str, int]:
    """``"a:2,b"`` -> ``{"a": 2, "b": 1}``."""
    armed: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, count = item.partition(":")
        armed[name] = int(count) if count else 1
    return armed


_ARMED = parse(os.environ.get(VARIABLE, ""))
_HITS: Counter[str] = Counter()


def hit(name: str) -> None:
    """Die here if a test armed this point (and it is the armed visit)."""
    if not _ARMED:
        return
    _HITS[name] += 1
    if _ARMED.get(name) == _HITS[name]:
        log.critical("failpoint %s (visit %d): SIGKILL", name, _HITS[name])
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
