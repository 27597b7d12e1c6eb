"""Fixtures the controller unit tests share: a fake clock, and discovery asked afresh."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from breaker.actions import discovery
from breaker.controllers import actuator, breakers, trainingjobs
from tests.fakes import Clock


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """One fake time for the breaker loop, its actuator and the queue (the event loop
    keeps its own)."""
    fake = Clock()
    for module in (breakers, actuator, trainingjobs):
        fake.install(monkeypatch, module)
    return fake


@pytest.fixture
def fresh_discovery() -> Iterator[None]:
    """Discovery is kept per process: each test's fake API server is asked afresh."""
    discovery.forget()
    yield
    discovery.forget()
