"""Changes to kopf's internals, for start-up at scale and a busy API server.

On start, kopf holds every object's handlers until every indexed object has been indexed
once: each object gets a toggle in one set, and each object's worker waits for the whole
set to be on before it runs the object's handlers.

- **Waking.** kopf wakes every waiter each time one toggle goes, so the first listing of
  N indexed objects costs N² wake-ups: at 10,000 guarded jobs (about 30,000 pods, Jobs
  and Breakers) a restarted operator, or a standby taking over, spent minutes in it. A
  waiter waits for the set's state (on or off), which only changes when the state does; a
  set that wakes its waiters only then (``QuietToggleSet``) behaves the same and costs N.
- **Holding.** Each waiting worker holds its object's event, whole, until the last object
  is indexed: at 10,000 guarded jobs that was most of a restarted operator's 1.1 GB peak.
  Most of those objects are of kinds whose only handlers are wake-ups of this operator's
  two loops (``wake_only``): they read nothing of the object, and the loops read the
  indexes. An event of such a kind that comes while the set is off is indexed and let go
  (``process_resource_event``); the set then owes the loops a wake-up (``READY``), paid
  the next time it is on, so every event let go is followed by a wake that reads the
  indexes with it in them. The set goes off again whenever kopf starts a watch (a new
  CRD, a namespace), not only at start, and each such time is paid again. Any other kind
  (the policies' create and update handlers, the nodes' capacity) goes kopf's way.
- **Listing and watching** are ``kopf_watch``'s: ghosts removed after a relist, any
  watch error a relist, a paged list whose token expires started again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from kopf._cogs.aiokits import aiotoggles
from kopf._cogs.clients import watching
from kopf._cogs.structs import bodies, references
from kopf._core.actions import loggers
from kopf._core.engines import indexing
from kopf._core.intents import registries
from kopf._core.reactor import processing

from breaker import kopf_watch

_KopfToggleSet = aiotoggles.ToggleSet
_kopf_process_resource_event = processing.process_resource_event
log = logging.getLogger("breaker.kopf")
_Fn = TypeVar("_Fn", bound=Callable[..., Any])

# Handlers that only nudge a loop, reading nothing of the object (see ``wake_only``).
WAKES: set[Callable[..., Any]] = set()
# Called with the operator's memo when the set turns on after events were let go.
READY: list[Callable[[Any], None]] = []


def wake_only(fn: _Fn) -> _Fn:
    """Mark an ``on.event`` handler as one that only wakes a loop: an event of a kind
    with no other handlers may skip it before the indexes are filled (a ``READY`` wake
    is owed instead)."""
    WAKES.add(fn)
    return fn


class QuietToggleSet(_KopfToggleSet):
    """kopf's ToggleSet, waking its waiters only when adding or dropping a toggle changes
    the set's state; and owing the loops a wake-up for the events let go while off."""

    def __init__(self, fn: Callable[[Any], bool]) -> None:
        super().__init__(fn)
        self._owed = False
        self._paying: asyncio.Task[None] | None = None

    async def make_toggle(
        self, __val: bool = False, *, name: str | None = None
    ) -> aiotoggles.Toggle:
        toggle = aiotoggles.Toggle(__val, name=name, condition=self._condition)
        async with self._condition:
            before = self.is_on()
            self._toggles.add(toggle)
            if self.is_on() != before:
                self._condition.notify_all()
        return toggle

    async def drop_toggle(self, toggle: aiotoggles.Toggle) -> None:
        async with self._condition:
            before = self.is_on()
            self._toggles.discard(toggle)
            if self.is_on() != before:
                self._condition.notify_all()

    def owe_wake(self, memo: Any) -> None:
        """An event was let go while the set is off: wake the loops when it is next on."""
        self._owed = True
        if self._paying is None or self._paying.done():
            self._paying = asyncio.create_task(self._pay(memo), name="kopf-tuning-ready")

    async def _pay(self, memo: Any) -> None:
        # No await between the check and the wakes: an event let go after them finds
        # this task either still waiting (and owed again) or done (and starts another).
        while self._owed:
            await self.wait_for(True)
            self._owed = False
            for wake in READY:
                wake(memo)


def only_wakes(registry: registries.OperatorRegistry, resource: references.Resource) -> bool:
    """Every handler of the kind is a ``wake_only`` on.event: kopf keeps no state for it
    and no handler reads its body."""
    if registry._changing.has_handlers(resource=resource):
        return False
    if registry._spawning.has_handlers(resource=resource):
        return False
    return all(
        handler.fn in WAKES
        for handler in registry._watching.get_all_handlers()
        if registries._matches_resource(handler, resource)
    )


async def process_resource_event(**kwargs: Any) -> str | None:
    """kopf's, except for an event of a kind that ``only_wakes`` which comes while the
    indexes are being filled: indexed, and let go (see the module's docstring). A deletion
    a relist revealed (``kopf_watch.VANISHED``) wakes the loops once processed: the
    handlers' filters cannot read an object of which only the name is left."""
    found = await _process(**kwargs)
    if kwargs["raw_event"].get(kopf_watch.VANISHED):
        for wake in READY:
            wake(kwargs["memobase"])
    return found


async def _process(**kwargs: Any) -> str | None:
    ready: aiotoggles.ToggleSet | None = kwargs.get("operator_indexed")
    registry: registries.OperatorRegistry = kwargs["registry"]
    if (
        not isinstance(ready, QuietToggleSet)
        or ready.is_on()
        or not only_wakes(registry, kwargs["resource"])
    ):
        found: str | None = await _kopf_process_resource_event(**kwargs)
        return found
    raw_event = kwargs["raw_event"]
    if raw_event["type"] == "DELETED":  # as kopf does: its memory of the object goes
        await kwargs["memories"].forget(raw_event["object"])
    body = bodies.Body(raw_event["object"])
    await indexing.index_resource(
        indexers=kwargs["indexers"],
        registry=registry,
        settings=kwargs["settings"],
        resource=kwargs["resource"],
        raw_event=raw_event,
        memory=indexing.IndexingMemory(),  # only failures live there; they are not retried
        logger=loggers.TerseObjectLogger(body=body, settings=kwargs["settings"]),
        memo=kwargs["memobase"],
        body=body,
    )
    toggle: aiotoggles.Toggle | None = kwargs.get("resource_indexed")
    if toggle is not None:
        await ready.drop_toggle(toggle)
    ready.owe_wake(kwargs["memobase"])
    return None


def install() -> None:
    """Make kopf build its toggle sets as QuietToggleSets, process events through
    ``process_resource_event``, and list and watch through ``kopf_watch`` (before
    ``kopf.run``)."""
    aiotoggles.ToggleSet = QuietToggleSet  # type: ignore[misc]
    processing.process_resource_event = process_resource_event  # type: ignore[assignment]
    watching.continuous_watch = kopf_watch.continuous_watch
