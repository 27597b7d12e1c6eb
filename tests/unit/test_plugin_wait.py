"""`kubectl breaker trip|reset` waiting for the operator: one list, then a watch of the
Breaker from the list's resourceVersion; resumed where it ends, listed again once on a 410.
A fake API; no cluster."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
from kubernetes import client, watch

from breaker import plugin
from breaker.plugin import PluginError, Verdict


def breaker(name: str, version: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": version}, "status": status}


def judge(found: Any) -> Verdict:
    said = found["status"].get("said")
    return None if said is None else (said == "done", said)


class Lists:
    def __init__(self, *pages: list[dict[str, Any]]) -> None:
        self.pages = list(pages)
        self.calls = 0

    def list_namespaced_custom_object(self, *_: Any) -> dict[str, Any]:
        page = self.pages[min(self.calls, len(self.pages) - 1)]
        self.calls += 1
        return {"metadata": {"resourceVersion": f"list-{self.calls}"}, "items": page}


def session(lists: Lists) -> Any:
    return SimpleNamespace(namespace="team-a", custom=lists)


class Watches:
    """Each watch request in turn: a list of events, or an exception to raise."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.asked: list[tuple[list[str], str | None, int]] = []

    def __call__(
        self, _: Any, names: Sequence[str], version: str | None, seconds: int
    ) -> Iterable[tuple[str, dict[str, Any]]]:
        self.asked.append((list(names), version, seconds))
        answer = self.answers.pop(0) if self.answers else []
        if isinstance(answer, Exception):
            raise answer
        if not answer:
            time.sleep(0.05)  # a watch that brings nothing before the server ends it
        return list(answer)


def test_the_wait_ends_on_the_watch_event_that_says_done(capsys: Any) -> None:
    lists = Lists([breaker("rl-guard", "5"), breaker("other", "4")])
    watches = Watches([("MODIFIED", breaker("rl-guard", "7", said="done"))])
    plugin._wait(session(lists), ["rl-guard"], judge, 30, watches)
    assert capsys.readouterr().out == "breaker rl-guard: done\n"
    assert watches.asked == [(["rl-guard"], "list-1", 30)]
    assert lists.calls == 1


def test_a_watch_that_ends_early_is_resumed_where_it_got_to(capsys: Any) -> None:
    lists = Lists([breaker("rl-guard", "5")])
    watches = Watches(
        [("MODIFIED", breaker("rl-guard", "6", said="Failed: quota"))],
        [],
        [("MODIFIED", breaker("rl-guard", "8", said="done"))],
    )
    plugin._wait(session(lists), ["rl-guard"], judge, 30, watches)
    out = capsys.readouterr()
    assert out.out == "breaker rl-guard: done\n"
    assert out.err == "breaker rl-guard: Failed: quota (the operator retries)\n"
    assert [version for _, version, _ in watches.asked] == ["list-1", "6", "6"]
    assert lists.calls == 1


def test_an_expired_resource_version_lists_again_once(capsys: Any) -> None:
    lists = Lists([breaker("a", "5"), breaker("b", "5")], [breaker("a", "9", said="done")])
    watches = Watches(
        client.ApiException(status=410, reason="Gone"),
        [("ADDED", breaker("b", "10", said="done"))],
    )
    plugin._wait(session(lists), ["a", "b"], judge, 30, watches)
    assert capsys.readouterr().out == "breaker a: done\nbreaker b: done\n"
    assert lists.calls == 2
    assert watches.asked[0][:2] == (["a", "b"], "list-1")
    assert watches.asked[1][:2] == (["b"], "list-2")


def test_no_answer_in_time_says_so_as_before() -> None:
    lists = Lists([breaker("rl-guard", "5")])
    with pytest.raises(PluginError, match="rl-guard: no answer after 0s; is the operator"):
        plugin._wait(session(lists), ["rl-guard"], judge, 0.2, Watches())


def test_a_failing_breaker_at_the_deadline_says_why() -> None:
    lists = Lists([breaker("rl-guard", "5", said="Failed: quota")])
    with pytest.raises(PluginError, match="not done after 0s: rl-guard: Failed: quota; "):
        plugin._wait(session(lists), ["rl-guard"], judge, 0.2, Watches())


def test_a_refused_watch_says_what_to_ask_for() -> None:
    lists = Lists([breaker("rl-guard", "5")])
    refused = Watches(client.ApiException(status=403, reason="Forbidden"))
    with pytest.raises(PluginError, match="ask a cluster admin for the breaker-viewer role"):
        plugin._wait(session(lists), ["rl-guard"], judge, 30, refused)


class FakeWatch:
    asked: ClassVar[dict[str, Any]] = {}

    def stream(self, *_: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
        FakeWatch.asked = kwargs
        yield {"type": "MODIFIED", "raw_object": breaker("rl-guard", "3")}


def test_one_breaker_is_watched_by_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch, "Watch", FakeWatch)
    events = list(plugin._watch(session(Lists([])), ["rl-guard"], "5", 12))
    assert events == [("MODIFIED", breaker("rl-guard", "3"))]
    assert FakeWatch.asked["field_selector"] == "metadata.name=rl-guard"
    assert FakeWatch.asked["resource_version"] == "5"
    assert FakeWatch.asked["timeout_seconds"] == 12
    list(plugin._watch(session(Lists([])), ["a", "b"], "5", 12))
    assert "field_selector" not in FakeWatch.asked
