"""No Breaker is owned by its workload: the references earlier versions wrote are dropped.

A Breaker owned by its workload is deleted with it by the garbage collector, and with a
tripped one goes its evidence: the tenant would only have to delete its job. Breakers are
no longer made owned (``selection.desired_breaker``); the plan removes one whose workload
is gone once it holds nothing. Those an earlier version made lose the reference here:

- in a task of its own, so that the thousands an upgrade finds never hold up an evaluation;
- the ones that hold containment or keep evidence first;
- a drop that fails is retried with backoff until it holds, and said on the Breaker as the
  ``Owned`` condition (True, ``ReleaseFailed``), removed once the reference is gone.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Container, Mapping
from typing import Any

from kubernetes import client

from breaker import failpoints, kube
from breaker.api import conditions
from breaker.circuit import plan
from breaker.circuit import status as status_core
from breaker.controllers.evaluation import BreakerKey
from breaker.controllers.reconciler import Backoff

log = logging.getLogger("breaker.disown")


class Disowner:
    def __init__(
        self,
        api: client.ApiClient,
        written: dict[BreakerKey, dict[str, Any]],
        busy: Container[BreakerKey],
        backoff: Backoff[BreakerKey],
        wake: Callable[[], None],
    ) -> None:
        self.api = api
        self.written = written  # the controller's: the status last written, per Breaker
        self.busy = busy  # Breakers whose actions run: their status is theirs to write
        self.backoff = backoff
        self.wake = wake  # a pass of the loop, to retry what failed
        self.task: asyncio.Task[None] | None = None

    def start(self, existing: Mapping[BreakerKey, dict[str, Any]]) -> None:
        """Start a round over what is left to drop, unless one runs (a failed drop waits
        for its backoff: ``waiting``)."""
        todo = [key for key, body in existing.items() if self._left(key, body)]
        self.backoff.keep_only(todo)
        if self.task is not None and not self.task.done():
            return
        ready = [key for key in todo if self.backoff.ready(key)]
        if ready:
            # Contained and tripped ones first: theirs is the evidence a deletion erases.
            ready.sort(key=lambda key: not self._status(key, existing[key]).get("lastTrip"))
            self.task = asyncio.create_task(self._round([(k, existing[k]) for k in ready]))

    def waiting(self) -> bool:
        """A drop failed and is to be tried again."""
        return self.backoff.waiting()

    def _status(self, key: BreakerKey, body: Mapping[str, Any]) -> dict[str, Any]:
        return self.written.get(key) or body.get("status") or {}

    def _left(self, key: BreakerKey, body: Mapping[str, Any]) -> bool:
        """Owned still, or its Owned condition not yet removed."""
        said = conditions.find(self._status(key, body).get("conditions"), status_core.OWNED)
        return plan.disowned(body) is not None or said is not None

    async def _round(self, todo: list[tuple[BreakerKey, dict[str, Any]]]) -> None:
        failed = False
        for key, body in todo:
            try:
                await self._disown(key, body)
                self.backoff.succeeded(key)
            except (client.ApiException, failpoints.Injected) as error:
                if isinstance(error, client.ApiException) and error.status == 404:
                    continue  # gone
                failed = True
                await self._failed(key, body, error)
        if failed:
            self.wake()

    async def _disown(self, key: BreakerKey, body: dict[str, Any]) -> None:
        kept = plan.disowned(body)
        if kept is not None:
            failpoints.fail("breaker.disown")
            patch = {"metadata": {"ownerReferences": kept or None}}
            await kube.patch_breaker(self.api, key, patch)
            log.info(
                "Breaker %s/%s: no longer owned by %s; deleting it leaves the Breaker",
                *key,
                plan.owner_of(body),
            )
        status = self._status(key, body)
        said = conditions.find(status.get("conditions"), status_core.OWNED)
        if said is not None and key not in self.busy:
            await self._conditions(
                key, status, conditions.drop(status.get("conditions"), status_core.OWNED)
            )

    async def _failed(
        self, key: BreakerKey, body: dict[str, Any], error: client.ApiException | Exception
    ) -> None:
        delay = self.backoff.failed(key)
        problem = kube.api_problem(error) if isinstance(error, client.ApiException) else str(error)
        log.warning(
            "Breaker %s/%s: still owned by %s, so deleting it would delete the Breaker: "
            "%s; retrying in %.0fs",
            *key,
            plan.owner_of(body),
            problem,
            delay,
        )
        if key in self.busy or plan.disowned(body) is None:
            return
        status = self._status(key, body)
        cond = status_core.owned(body, problem)
        now = dt.datetime.now(dt.UTC)
        generation = body["metadata"].get("generation")
        try:
            await self._conditions(
                key, status, conditions.put(status.get("conditions"), cond, now, generation)
            )
        except client.ApiException as also:
            log.warning("Breaker %s/%s: its Owned condition not written: %s", *key, also.reason)

    async def _conditions(
        self, key: BreakerKey, status: dict[str, Any], found: list[dict[str, Any]]
    ) -> None:
        if found == (status.get("conditions") or []):
            return
        await kube.patch_breaker(self.api, key, {"status": {"conditions": found}}, status=True)
        self.written[key] = {**status, "conditions": found}
