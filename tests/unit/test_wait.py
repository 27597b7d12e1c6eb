"""The one polling wait: returns what the probe found, gives up with what it last saw."""

from __future__ import annotations

import pytest

from breaker.wait import WaitTimeout, wait_for


def test_it_returns_the_first_truthy_answer() -> None:
    answers = iter([None, 0, "", "ready"])
    assert wait_for(lambda: next(answers), "ready", timeout=5, interval=0) == "ready"


def test_ignored_errors_are_not_yet_and_are_reported_at_the_end() -> None:
    def refused() -> bool:
        raise ConnectionRefusedError("nobody listens")

    with pytest.raises(WaitTimeout, match=r"waiting for the port; last saw: Connection"):
        wait_for(refused, "the port", timeout=0.05, interval=0.01, ignore=(OSError,))


def test_other_errors_and_a_failing_check_end_the_wait_at_once() -> None:
    def broken() -> bool:
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        wait_for(broken, "anything", timeout=30, ignore=(OSError,))

    def died() -> None:
        raise RuntimeError("the process exited")

    with pytest.raises(RuntimeError, match="exited"):
        wait_for(lambda: False, "readiness", timeout=30, check=died)
