"""Failpoints: named places where a test may have the operator die, or a call fail.

Off unless ``BREAKER_FAILPOINTS`` names some, as ``NAME[:N][=error],...``:

- ``NAME[:N]``: the N-th time (default the first) the operator reaches ``hit(NAME)`` it
  sends itself SIGKILL, exactly as an OOM kill or a node loss would end it, with no cleanup
  and no last status write. The crash-consistency tests use them to stop the operator
  between any two of its writes.
- ``NAME[:N]=error``: the N-th time it reaches ``fail(NAME)``, that call raises
  ``Injected``, as if the API server had refused the write that follows; the operator goes
  on, and must recover from it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections import Counter

log = logging.getLogger("breaker.failpoints")
VARIABLE = "BREAKER_FAILPOINTS"


class Injected(Exception):
    """A failure a test armed (``NAME=error``)."""


def parse(text: str) -> dict[str, int]:
    """``"a:2,b,c=error"`` -> ``{"a": 2, "b": 1, "c=error": 1}``."""
    armed: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        point, _, mode = item.partition("=")
        name, _, count = point.partition(":")
        armed[f"{name}={mode}" if mode else name] = int(count) if count else 1
    return armed


_ARMED = parse(os.environ.get(VARIABLE, ""))
_HITS: Counter[str] = Counter()


def fail(name: str) -> None:
    """Raise ``Injected`` here if a test armed ``NAME=error`` (and it is the armed visit)."""
    if not _ARMED:
        return
    key = f"{name}=error"
    _HITS[key] += 1
    if _ARMED.get(key) == _HITS[key]:
        log.warning("failpoint %s (visit %d): failing the call", name, _HITS[key])
        raise Injected(f"failpoint {name}")


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
