"""Whom the queue handed a tripped job's GPUs to, seen from an operator that does not run it.

In a sharded install the breakers of a namespace shard run in one operator and the
TrainingJob queue in another. A shard learns of an admission the way a restarted operator
does: from the TrainingJobs' status (``state`` and ``admittedAt``). The recipient is
usually in another shard's namespace, which this operator's kopf may not watch, so the
shard follows the TrainingJobs cluster-wide itself: one list, then a watch from its
resourceVersion, keeping only those two fields per job. It starts with the first trip
that hands GPUs on (at rest before that it costs nothing), and a trip waiting for its
handoff wakes on the watch event that carries the admission: no list, no timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, TypeVar

import urllib3
from kubernetes import client, watch

from breaker import kube
from breaker.constants import GROUP, TRAININGJOBS, VERSION
from breaker.training import queue
from breaker.wake import Changes

log = logging.getLogger("breaker.handoff")

Key = tuple[str, str]
PAGE = 500
WATCH_SECONDS = 300  # one watch request; the next resumes from where it ended
RETRY_SECONDS = 1.0
RETRY_CAP_SECONDS = 30.0
T = TypeVar("T")


class Handoffs(Protocol):
    """What the breaker loop asks of the queue when a trip frees GPUs."""

    async def waiting(self) -> list[Key]: ...

    async def admitted_since(self, since: float, wait_seconds: float) -> list[Key]: ...

    async def admitted_after(
        self,
        moment: dt.datetime | None,
        wait_seconds: float = 0.0,
        among: Callable[[Key], bool] | None = None,
    ) -> list[Key]: ...


class JobStatuses:
    """Each TrainingJob's queue status (``state``, ``admittedAt``), fed by a list and a
    watch; waiters wake on every change."""

    def __init__(self) -> None:
        self.jobs: dict[Key, dict[str, Any]] = {}
        self.changes = Changes()

    def replace(self, bodies: Iterable[Mapping[str, Any]]) -> None:
        self.jobs = dict(_slim(body) for body in bodies)
        self.changes.notify()

    def apply(self, kind: str, body: Mapping[str, Any]) -> None:
        """One watch event (BOOKMARKs carry no object and change nothing)."""
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            return
        key, slim = _slim(body)
        if kind == "DELETED":
            self.jobs.pop(key, None)
        else:
            self.jobs[key] = slim
        self.changes.notify()

    def bodies(self) -> list[dict[str, Any]]:
        return list(self.jobs.values())

    async def admitted_after(
        self, moment: dt.datetime, wait_seconds: float, among: Callable[[Key], bool] | None
    ) -> list[Key]:
        """Jobs admitted at or after ``moment`` (those ``among`` accepts), waiting up to
        ``wait_seconds`` for the first."""

        def found() -> list[Key]:
            admitted = queue.admitted_since(self.bodies(), moment)
            return [key for key in admitted if among is None or among(key)]

        return await self.changes.until(found, wait_seconds)


def _slim(body: Mapping[str, Any]) -> tuple[Key, dict[str, Any]]:
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    key = (str(meta.get("namespace")), str(meta.get("name")))
    kept = {k: status[k] for k in ("state", "admittedAt") if k in status}
    return key, {"metadata": {"namespace": key[0], "name": key[1]}, "status": kept}


class RemoteQueue:
    """The queue of another operator, read from the TrainingJobs' status."""

    def __init__(self, api: client.ApiClient) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.statuses = JobStatuses()
        self.lock = asyncio.Lock()
        self.task: asyncio.Task[None] | None = None
        self.watching: watch.Watch | None = None

    async def waiting(self) -> list[Key]:
        await self._follow()
        return queue.waiting(self.statuses.bodies())

    async def admitted_after(
        self,
        moment: dt.datetime | None,
        wait_seconds: float = 0.0,
        among: Callable[[Key], bool] | None = None,
    ) -> list[Key]:
        """Jobs admitted at or after ``moment`` (those ``among`` accepts), waiting up to
        ``wait_seconds`` for the watch to bring the first."""
        if moment is None:
            return []
        await self._follow()
        return await self.statuses.admitted_after(moment, wait_seconds, among)

    async def admitted_since(self, since: float, wait_seconds: float) -> list[Key]:
        """Jobs admitted at or after ``since`` (monotonic), waiting up to ``wait_seconds``."""
        moment = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=time.monotonic() - since)
        return await self.admitted_after(moment, wait_seconds)

    async def close(self) -> None:
        if self.watching is not None:
            self.watching.stop()  # type: ignore[no-untyped-call]
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    # -- the list and the watch ----------------------------------------------------------

    async def _follow(self) -> None:
        """Listed and watching. The first list is the caller's, errors and all (as when
        every handoff listed); trips waiting together share it."""
        async with self.lock:
            if self.task is not None and self.task.done() and not self.task.cancelled():
                log.warning("TrainingJob watch ended: %r; listing again", self.task.exception())
            if self.task is None or self.task.done():
                version = await self._list()
                self.task = asyncio.create_task(self._watch(version), name="trainingjob-status")

    async def _list(self) -> str:
        """Every TrainingJob, in pages, into the statuses; the list's resourceVersion."""
        items: list[dict[str, Any]] = []
        token, version = None, ""
        while True:
            page: Any = await kube.call(
                self.custom.list_cluster_custom_object,
                GROUP,
                VERSION,
                TRAININGJOBS,
                limit=PAGE,
                _continue=token,
            )
            items.extend(page.get("items") or [])
            meta = page.get("metadata") or {}
            version = meta.get("resourceVersion") or version
            token = meta.get("continue")
            if not token:
                break
        self.statuses.replace(items)
        return str(version)

    async def _watch(self, version: str) -> None:
        """Watch from ``version`` for as long as the operator runs: a watch that ends is
        resumed where it ended, an expired resourceVersion (410) listed again."""
        loop = asyncio.get_running_loop()
        backoff = RETRY_SECONDS
        while True:
            try:
                version = await _in_thread(functools.partial(self._stream, loop, version))
                backoff = RETRY_SECONDS
                continue
            except client.ApiException as error:
                if error.status != 410:
                    log.warning("TrainingJob watch failed (%s); listing again", error.status)
                    await asyncio.sleep(backoff)
            except (urllib3.exceptions.HTTPError, OSError) as error:
                log.warning("TrainingJob watch broke (%s); listing again", error)
                await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RETRY_CAP_SECONDS)
            try:
                version = await self._list()
            except (client.ApiException, urllib3.exceptions.HTTPError, OSError) as error:
                log.warning("TrainingJobs not listed (%s); trying again", error)

    def _stream(self, loop: asyncio.AbstractEventLoop, version: str) -> str:
        """One watch request (in a thread of its own); the resourceVersion it got to."""
        self.watching = watcher = watch.Watch()  # type: ignore[no-untyped-call]
        for event in watcher.stream(  # type: ignore[no-untyped-call]
            self.custom.list_cluster_custom_object,
            GROUP,
            VERSION,
            TRAININGJOBS,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS,
            _request_timeout=WATCH_SECONDS + 30,
        ):
            body = event.get("raw_object") or {}
            version = (body.get("metadata") or {}).get("resourceVersion") or version
            loop.call_soon_threadsafe(self.statuses.apply, event.get("type", ""), body)
        return version


async def _in_thread(function: Callable[[], T]) -> T:
    """``function()`` in a daemon thread of its own: a watch blocks for minutes, and must
    hold neither a thread of the pool the API calls share nor the process at exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result = function()
        except BaseException as error:  # noqa: BLE001  handed to the awaiting coroutine, not swallowed
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(settle, None, error)
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name="trainingjob-watch", daemon=True).start()
    return await future
