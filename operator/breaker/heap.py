"""Hand the heap the operator has freed back to the system.

The operator keeps compact views of what it watches, and frees what it parsed on the way:
every listed object when it starts (kopf holds all of them until every one is indexed),
every watch event after. glibc keeps freed memory for reuse and returns only what sits at
the top of its heap, so an operator that started on 10,000 guarded jobs stayed at its
start-up peak (1.1 GB resident) for good, on a live set of a few hundred MB.
``malloc_trim(0)`` gives every free page back.

A trim walks glibc's free lists: milliseconds for a heap of hundreds of MB. It runs after
the operator's first pass and then once a minute, off the event loop. Where the C library
has no ``malloc_trim`` (musl, not Linux), there is nothing to do and nothing runs.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

log = logging.getLogger("breaker.heap")

EVERY_SECONDS = 60.0
# A trim that returned at least this much is worth a line in the log.
WORTH_LOGGING = 32 * 2**20


@dataclass(frozen=True)
class Trimmed:
    rss_before: int  # bytes
    rss_after: int
    seconds: float

    @property
    def returned(self) -> int:
        return max(0, self.rss_before - self.rss_after)

    def __str__(self) -> str:
        mb = 2**20
        return (
            f"resident {self.rss_before / mb:.0f} -> {self.rss_after / mb:.0f} MB"
            f" in {self.seconds * 1000:.0f} ms"
        )


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]  # type: ignore[attr-defined]
    trim.restype = ctypes.c_int  # type: ignore[attr-defined]
    return trim


def resident_bytes() -> int | None:
    """This process's resident memory, or None where /proc is not there."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def trim() -> Trimmed | None:
    """Return the heap's free pages to the system; None where that cannot be done."""
    malloc_trim = _malloc_trim()
    before = resident_bytes()
    if malloc_trim is None or before is None:
        return None
    began = time.monotonic()
    malloc_trim(0)
    took = time.monotonic() - began
    return Trimmed(before, resident_bytes() or before, took)


async def trim_now(why: str) -> Trimmed | None:
    trimmed = await asyncio.to_thread(trim)
    if trimmed is not None:
        level = logging.INFO if trimmed.returned >= WORTH_LOGGING else logging.DEBUG
        log.log(level, "heap trimmed (%s): %s", why, trimmed)
    return trimmed


async def keep_trimmed(every: float = EVERY_SECONDS) -> None:
    """Trim once every ``every`` seconds until cancelled."""
    if _malloc_trim() is None:
        log.info("no malloc_trim in this C library: freed heap stays with the process")
        return
    while True:
        await asyncio.sleep(every)
        await trim_now("periodic")
