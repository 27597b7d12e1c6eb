"""Whom the queue handed a tripped job's GPUs to, seen from an operator that does not run it.

In a sharded install the breakers of a namespace shard run in one operator and the
TrainingJob queue in another. A shard learns of an admission the way a restarted operator
does: from the TrainingJobs' status (``state`` and ``admittedAt``). It reads them with a
list call only while a trip waits for its handoff, never on a timer: at rest it costs
nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any, Protocol

from kubernetes import client

from breaker import kube
from breaker.training import queue

Key = tuple[str, str]
POLL_SECONDS = 0.25
FRESH_SECONDS = 0.5
PAGE = 500


class Handoffs(Protocol):
    """What the breaker loop asks of the queue when a trip frees GPUs."""

    async def waiting(self) -> list[Key]: ...

    async def admitted_since(self, since: float, wait_seconds: float) -> list[Key]: ...

    async def admitted_after(self, moment: dt.datetime | None) -> list[Key]: ...


class RemoteQueue:
    """The queue of another operator, read from the TrainingJobs' status."""

    def __init__(self, api: client.ApiClient) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.lock = asyncio.Lock()
        self.listed: tuple[float, list[dict[str, Any]]] = (-FRESH_SECONDS, [])

    async def _bodies(self) -> list[dict[str, Any]]:
        """Every TrainingJob, in pages; trips waiting together share one list, and a list
        younger than FRESH_SECONDS is reused, so a burst of trips is a few lists a second."""
        async with self.lock:
            at, items = self.listed
            if time.monotonic() - at < FRESH_SECONDS:
                return items
            items, token = [], None
            while True:
                page: Any = await kube.call(
                    self.custom.list_cluster_custom_object,
                    "breaker.dev",
                    "v1alpha1",
                    "trainingjobs",
                    limit=PAGE,
                    _continue=token,
                )
                items.extend(page.get("items") or [])
                token = (page.get("metadata") or {}).get("continue")
                if not token:
                    break
            self.listed = (time.monotonic(), items)
            return items

    async def waiting(self) -> list[Key]:
        return queue.waiting(await self._bodies())

    async def admitted_after(self, moment: dt.datetime | None) -> list[Key]:
        if moment is None:
            return []
        return queue.admitted_since(await self._bodies(), moment)

    async def admitted_since(self, since: float, wait_seconds: float) -> list[Key]:
        """Jobs admitted at or after ``since`` (monotonic), polling up to ``wait_seconds``."""
        moment = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=time.monotonic() - since)
        deadline = time.monotonic() + wait_seconds
        while True:
            found = await self.admitted_after(moment)
            if found or time.monotonic() >= deadline:
                return found
            await asyncio.sleep(POLL_SECONDS)
