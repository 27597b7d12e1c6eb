"""kopf's list-then-watch, made to survive a busy API server: ghosts deleted after a relist,
every watch error a relist and never an exit, a paged list started again from page 1."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from typing import Any

import kopf
import pytest
from kopf._cogs.clients import errors, fetching, watching
from kopf._cogs.structs import references

from breaker import kopf_watch, trimming

PODS = references.Resource("", "v1", "pods", kind="Pod", namespaced=True)


def pod(name: str, version: str = "1") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}",
                         "resourceVersion": version}}  # fmt: skip


class Watcher:
    """Who a stream belongs to (kopf's watcher task, in the operator)."""


WATCHER = Watcher()


def state() -> kopf_watch.Stream:
    return kopf_watch.STREAMS[WATCHER]


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """No state kept from another test; every stream the one watcher's, across runs;
    sleeps recorded, not slept; pages, not WatchList."""
    monkeypatch.setattr(kopf_watch, "STREAMS", weakref.WeakKeyDictionary())
    monkeypatch.setattr(kopf_watch, "_owner", lambda: WATCHER)
    monkeypatch.setattr(kopf_watch, "WATCHLIST", {PODS: False})
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    return slept


class Server:
    """The lists and watches kopf's client would return, one per call, in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.lists: list[list[Any]] = []  # each: pages, or an exception after some
        self.watches: list[list[Any]] = []  # each: events, or an exception after some
        self.listed = 0
        self.watched_from: list[str | None] = []
        monkeypatch.setattr(fetching, "fetch_objs", self.fetch)
        monkeypatch.setattr(watching, "watch_objs", self.watch)

    async def fetch(self, **_: Any) -> AsyncIterator[tuple[list[Any], str]]:
        self.listed += 1
        for page in self.lists.pop(0):
            if isinstance(page, Exception):
                raise page
            yield page, "10"

    async def watch(self, *, since: str | None, **_: Any) -> AsyncIterator[dict[str, Any]]:
        self.watched_from.append(since)
        for event in self.watches.pop(0) if self.watches else []:
            if isinstance(event, Exception):
                raise event
            yield event


def run(stream: AsyncIterator[Any], stop_after: int | None = None) -> list[Any]:
    async def read() -> list[Any]:
        got = []
        async for event in stream:
            got.append(event)
            if stop_after is not None and len(got) >= stop_after:
                break
        return got

    return asyncio.run(read())


def watch_once(resource: references.Resource = PODS) -> AsyncIterator[Any]:
    async def stream() -> AsyncIterator[Any]:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        async for event in kopf_watch.continuous_watch(
            settings=kopf.OperatorSettings(),
            resource=resource,
            namespace=None,
            operator_pause_waiter=waiter,
        ):
            yield event

    return stream()


def said(events: list[Any]) -> list[tuple[Any, str]]:
    return [
        (e, "")
        if isinstance(e, watching.Bookmark)
        else (e["type"], e["object"]["metadata"].get("name", ""))
        for e in events
    ]


def test_objects_gone_between_two_lists_are_deleted_with_their_names_and_the_marker(
    monkeypatch: pytest.MonkeyPatch, fresh: list[float]
) -> None:
    server = Server(monkeypatch)
    server.lists = [[[pod("a"), pod("b"), pod("c")]], [[pod("b")]]]
    server.watches = [
        [
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "12"}}},
            {"type": "ERROR", "object": {"code": 410, "message": "too old"}},
        ]
    ]
    first = run(watch_once())
    assert said(first) == [
        (None, "a"),
        (None, "b"),
        (None, "c"),
        (watching.Bookmark.LISTED, ""),
        ("BOOKMARK", ""),
    ]
    # The watch ended with 410: the next list, a while later, has only b.
    again = run(watch_once(), stop_after=4)
    assert said(again) == [
        (None, "b"),
        ("DELETED", "a"),
        ("DELETED", "c"),
        (watching.Bookmark.LISTED, ""),
    ]
    gone = again[1]
    assert gone[kopf_watch.VANISHED] is True
    assert gone["object"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "a", "namespace": "ns", "uid": "uid-a"},
    }
    # A relist after the first waits a jittered while (an API server restart ends every
    # kind's watch at once); a 410 after a while watching is no failure, so no backoff.
    assert len(fresh) == 1
    assert 0 <= fresh[0] <= kopf_watch.RELIST_JITTER
    assert state().failures == 0


def test_what_the_watch_saw_come_and_go_is_what_the_next_list_is_compared_with(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = Server(monkeypatch)
    server.lists = [[[pod("a")]], [[pod("b")]]]
    server.watches = [
        [
            {"type": "ADDED", "object": pod("b", "11")},
            {"type": "ADDED", "object": pod("c", "12")},
            {"type": "DELETED", "object": pod("a", "13")},
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "14"}}},
            {"type": "ERROR", "object": {"code": 410}},
        ]
    ]
    run(watch_once())
    assert state().known == {"uid-b": ("ns", "b"), "uid-c": ("ns", "c")}
    assert said(run(watch_once(), stop_after=3)) == [
        (None, "b"),
        ("DELETED", "c"),
        (watching.Bookmark.LISTED, ""),
    ]
    assert server.watched_from[0] == "10"  # from the list's version


@pytest.mark.parametrize("code", [500, 504, 403])
def test_any_watch_error_is_a_relist_after_a_backoff_that_grows_never_an_exit(
    monkeypatch: pytest.MonkeyPatch, fresh: list[float], code: int
) -> None:
    server = Server(monkeypatch)
    error = {"type": "ERROR", "object": {"code": code, "message": "Too large resource version"}}
    server.lists = [[[pod("a")]] for _ in range(4)]
    server.watches = [[error] for _ in range(4)]
    for _ in range(4):
        events = run(watch_once())
        assert said(events) == [(None, "a"), (watching.Bookmark.LISTED, "")]
    assert server.listed == 4
    assert state().failures == 4
    # Jittered between half and all of 1, 2, 4 s.
    assert [round(s / c, 1) >= 0.5 for s, c in zip(fresh, (1, 2, 4), strict=True)] == [True] * 3
    assert [s <= c for s, c in zip(fresh, (1, 2, 4), strict=True)] == [True] * 3


def test_a_list_refused_after_kopfs_retries_fails_the_stream_not_the_operator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = Server(monkeypatch)
    refused = errors.APIServerError("etcdserver: request timed out", status=500, headers={})
    server.lists = [[refused], [[pod("a")]]]
    assert run(watch_once()) == []
    assert state().failures == 1
    assert said(run(watch_once(), stop_after=2)) == [(None, "a"), (watching.Bookmark.LISTED, "")]


def test_a_page_refused_as_too_old_starts_the_list_again_from_page_1_after_a_backoff(
    monkeypatch: pytest.MonkeyPatch, fresh: list[float]
) -> None:
    server = Server(monkeypatch)
    expired = errors.APIClientError("The provided continue parameter is too old", status=410,
                                    headers={})  # fmt: skip
    server.lists = [[[pod("a")], expired], [[pod("a")], [pod("b")]]]
    events = run(watch_once(), stop_after=4)
    assert said(events) == [(None, "a"), (None, "a"), (None, "b"), (watching.Bookmark.LISTED, "")]
    assert server.listed == 2
    assert len(fresh) == 1
    assert 0.5 <= fresh[0] <= 1


def test_a_list_whose_pages_keep_expiring_is_given_up_and_tried_again_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = Server(monkeypatch)
    expired = errors.APIClientError("too old", status=410, headers={})
    server.lists = [[[pod("a")], expired] for _ in range(kopf_watch.PAGED_TRIES)]
    run(watch_once())
    assert server.listed == kopf_watch.PAGED_TRIES
    assert state().failures == 1


def test_where_the_server_streams_the_initial_list_it_is_read_as_a_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """WatchList: the initial objects come as ADDED, then a bookmark that ends them; they
    are handed on as a list's, and the watch goes on in the same stream."""
    server = Server(monkeypatch)
    kopf_watch.WATCHLIST[PODS] = True
    end = {"resourceVersion": "20", "annotations": {kopf_watch.INITIAL_EVENTS_END: "true"}}
    server.watches = [
        [
            {"type": "ADDED", "object": pod("a", "5")},
            {"type": "ADDED", "object": pod("b", "6")},
            {"type": "BOOKMARK", "object": {"metadata": end}},
            {"type": "ADDED", "object": pod("c", "21")},
        ],
        [{"type": "ADDED", "object": pod("d", "22")}],
    ]
    events = run(watch_once(), stop_after=5)
    assert said(events) == [
        (None, "a"),
        (None, "b"),
        (watching.Bookmark.LISTED, ""),
        ("ADDED", "c"),
        ("ADDED", "d"),
    ]
    assert server.watched_from == [None, "21"]  # the next watch from the last event seen
    assert server.listed == 0


def test_a_streamed_list_cut_by_the_operator_pausing_is_streamed_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A standby's peering pauses the operator mid-list: nothing said of the server."""

    async def watch(*, operator_pause_waiter: asyncio.Future[None], **_: Any) -> AsyncIterator[Any]:
        yield {"type": "ADDED", "object": pod("a")}
        operator_pause_waiter.set_result(None)

    kopf_watch.WATCHLIST[PODS] = True
    monkeypatch.setattr(watching, "watch_objs", watch)
    run(watch_once())
    assert kopf_watch.WATCHLIST[PODS] is True


def test_a_streamed_list_is_given_longer_than_a_watch_before_the_server_ends_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    timeouts: list[float | None] = []

    async def watch(*, settings: kopf.OperatorSettings, **_: Any) -> AsyncIterator[Any]:
        timeouts.append(settings.watching.server_timeout)
        yield {"type": "ADDED", "object": pod("a")}

    kopf_watch.WATCHLIST[PODS] = True
    monkeypatch.setattr(watching, "watch_objs", watch)
    run(watch_once())
    assert timeouts == [kopf_watch.STREAM_TIMEOUT]


def test_initial_events_cut_short_are_no_list(monkeypatch: pytest.MonkeyPatch) -> None:
    server = Server(monkeypatch)
    kopf_watch.WATCHLIST[PODS] = True
    server.watches = [[{"type": "ADDED", "object": pod("a")}]]
    assert run(watch_once()) == [{"type": None, "object": pod("a")}]
    assert state().failures == 1
    assert state().listed == 0


def test_the_objects_are_trimmed_before_they_are_handed_on(monkeypatch: pytest.MonkeyPatch) -> None:
    server = Server(monkeypatch)
    server.lists = [[[{**pod("a"), "spec": {"volumes": [1]}}]]]
    server.watches = [
        [{"type": "MODIFIED", "object": {**pod("a", "11"), "spec": {"volumes": [2]}}}]
    ]
    monkeypatch.setitem(trimming.KEPT, ("", "pods"), {"metadata": None})
    events = run(watch_once(), stop_after=3)
    assert [e["object"].get("spec") for e in events if isinstance(e, dict)] == [None, None]


def test_whether_the_server_streams_lists_is_asked_once_and_a_server_down_is_asked_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kopf_watch.WATCHLIST.clear()
    answers: list[bool | None] = [None, True]
    monkeypatch.setattr(kopf_watch, "_probe", lambda *args: _answer(answers.pop(0)))
    settings = kopf.OperatorSettings()

    async def ask() -> bool:
        return await kopf_watch._watchlist_served(settings, PODS, None)

    assert asyncio.run(ask()) is False  # no answer: lists this time
    assert asyncio.run(ask()) is True
    assert asyncio.run(ask()) is True  # not asked again
    assert answers == []


async def _answer(value: bool | None) -> bool | None:
    return value


def test_the_backoff_doubles_to_its_cap_with_jitter() -> None:
    assert kopf_watch.backoff(0) == 0
    assert kopf_watch.backoff(1, rng=lambda: 1.0) == 1
    assert kopf_watch.backoff(3, rng=lambda: 0.0) == 2
    assert kopf_watch.backoff(30, rng=lambda: 1.0) == kopf_watch.BACKOFF_CAP


def test_a_watch_refused_after_kopfs_retries_is_a_relist_after_a_backoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = Server(monkeypatch)
    server.lists = [[[pod("a")]]]
    server.watches = [[errors.APIServerError("etcd leader changed", status=503, headers={})]]
    assert said(run(watch_once())) == [(None, "a"), (watching.Bookmark.LISTED, "")]
    assert state().failures == 1


def test_a_streamed_list_refused_as_unknown_is_asked_about_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server downgraded (or a proxy put in front) that no longer streams lists: the
    next list asks again whether it does, instead of failing for ever."""
    server = Server(monkeypatch)
    kopf_watch.WATCHLIST[PODS] = True
    refused = errors.APIClientError("sendInitialEvents is forbidden", status=422, headers={})
    server.watches = [[refused]]
    assert run(watch_once()) == []
    assert PODS not in kopf_watch.WATCHLIST


def test_each_watcher_of_a_kind_compares_with_what_it_saw_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two watchers of one kind (kopf's CRD observer and a handler's): what one saw come is
    never taken as gone by the other's list."""
    server = Server(monkeypatch)
    other = Watcher()
    server.lists = [[[pod("a")]], [[pod("a")]]]
    server.watches = [[{"type": "ADDED", "object": pod("b", "11")}]]
    run(watch_once(), stop_after=3)  # this watcher saw b come
    monkeypatch.setattr(kopf_watch, "_owner", lambda: other)
    assert said(run(watch_once(), stop_after=2)) == [(None, "a"), (watching.Bookmark.LISTED, "")]


def test_what_a_list_cut_short_handed_on_is_deleted_if_the_next_list_lacks_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = Server(monkeypatch)
    refused = errors.APIServerError("etcdserver: request timed out", status=500, headers={})
    server.lists = [[[pod("a"), pod("b")], refused], [[pod("a")]]]
    assert said(run(watch_once())) == [(None, "a"), (None, "b")]
    assert said(run(watch_once(), stop_after=3)) == [
        (None, "a"),
        ("DELETED", "b"),
        (watching.Bookmark.LISTED, ""),
    ]


def test_what_a_list_started_again_no_longer_has_is_deleted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """b was on the first attempt's first page, and deleted before the second attempt."""
    server = Server(monkeypatch)
    expired = errors.APIClientError("too old", status=410, headers={})
    server.lists = [[[pod("a"), pod("b")], expired], [[pod("a")], [pod("c")]]]
    assert said(run(watch_once(), stop_after=6)) == [
        (None, "a"),
        (None, "b"),
        (None, "a"),
        (None, "c"),
        ("DELETED", "b"),
        (watching.Bookmark.LISTED, ""),
    ]


def test_kopfs_own_watchers_get_no_deletions_made_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """kopf's CRD observer reads a deleted CRD's spec: a tombstone would stop it."""
    crds = references.Resource(
        "apiextensions.k8s.io", "v1", "customresourcedefinitions", kind="CustomResourceDefinition"
    )
    server = Server(monkeypatch)
    kopf_watch.WATCHLIST[crds] = False
    server.lists = [[[pod("a"), pod("b")]], [[pod("a")]]]
    server.watches = [[{"type": "ERROR", "object": {"code": 410}}]]

    run(watch_once(crds))
    assert said(run(watch_once(crds), stop_after=2)) == [
        (None, "a"),
        (watching.Bookmark.LISTED, ""),
    ]


def test_a_kind_whose_streamed_lists_keep_ending_at_once_is_listed_in_pages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = Server(monkeypatch)
    kopf_watch.WATCHLIST[PODS] = True
    server.watches = [[] for _ in range(kopf_watch.STREAMED_TRIES)]  # ended before any object
    for tried in range(1, kopf_watch.STREAMED_TRIES + 1):
        run(watch_once())
        assert kopf_watch.WATCHLIST[PODS] is (tried < kopf_watch.STREAMED_TRIES)
    server.lists = [[[pod("a")]]]
    assert said(run(watch_once(), stop_after=2)) == [(None, "a"), (watching.Bookmark.LISTED, "")]


def test_a_streamed_list_cut_after_objects_came_is_listed_in_pages_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A slow stream (a server at load, a proxy's timeout) would be cut again, and start
    again from the first object each time: the next list is in pages."""
    server = Server(monkeypatch)
    kopf_watch.WATCHLIST[PODS] = True
    server.watches = [[{"type": "ADDED", "object": pod("a")}]]
    run(watch_once())
    assert kopf_watch.WATCHLIST[PODS] is False
    server.lists = [[[pod("a")]]]
    assert said(run(watch_once(), stop_after=2)) == [(None, "a"), (watching.Bookmark.LISTED, "")]


def test_too_old_at_once_again_and_again_backs_off(
    monkeypatch: pytest.MonkeyPatch, fresh: list[float]
) -> None:
    server = Server(monkeypatch)
    server.lists = [[[pod("a")]] for _ in range(3)]
    server.watches = [[{"type": "ERROR", "object": {"code": 410}}] for _ in range(3)]
    for _ in range(3):
        run(watch_once())
    assert state().failures == 3
