"""heap: freed memory goes back to the system, and nothing breaks where it cannot."""

from __future__ import annotations

import asyncio
import logging

import pytest

from breaker import heap

MB = 2**20


def test_a_trim_returns_the_pages_freed_between_live_blocks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Blocks past Python's small-object allocator come from glibc's heap; keeping one in
    # 64 (the last among them) leaves the freed ones in its middle, which glibc keeps.
    blocks = [bytearray(4096) for _ in range(25_600)]
    kept = blocks[63::64]
    del blocks
    with caplog.at_level(logging.INFO, logger="breaker.heap"):
        trimmed = asyncio.run(heap.trim_now("test"))
    assert trimmed is not None
    assert trimmed.returned > 50 * MB, trimmed
    assert "heap trimmed (test): resident" in caplog.text
    assert len(kept) == 400


def test_without_malloc_trim_nothing_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "_malloc_trim", lambda: None)
    assert heap.trim() is None
    asyncio.run(asyncio.wait_for(heap.keep_trimmed(every=0.01), timeout=1))


def test_resident_bytes_reads_this_process() -> None:
    resident = heap.resident_bytes()
    assert resident is not None
    assert 10 * MB < resident < 24 * 2**30
