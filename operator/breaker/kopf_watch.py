"""kopf's list-then-watch, made to survive a busy API server (installed by ``kopf_tuning``).

kopf lists a kind, then watches it from the list's resource version, and lists again
whenever its watch ends with 410. Three things go wrong at fleet scale, and are mended here
the way client-go's reflector mends them:

- **Ghosts.** Objects deleted while the operator was not watching (a 410, a partition, an
  API server restart) are simply absent from the next list, and kopf says nothing of them:
  a vanished GPU pod kept its GPUs in the queue's index for ever. Each watcher here keeps
  the identity (uid, namespace, name) of every object it has handed kopf (a list cut short
  or started again included), and after each whole list sends a DELETED for every one the
  list no longer has (client-go's ``Replace``). Only the identity is kept, not the body;
  the loops are woken once the deletion is processed. kopf's own watchers (CRDs, peering)
  read more of a deleted object than that, and get none, as before.
- **Errors.** kopf stops the whole operator on any watch ERROR but 410 (an HA API server's
  504 "Too large resource version", a 500) and on a list refused with 5xx after its
  retries. Here any ERROR, and any refused list, leads to a relist after a jittered,
  exponential backoff; never an exit.
- **Lists.** A paged list whose continue token expires (410) starts again from page 1,
  after a jittered backoff. Where the API server streams the initial list as watch events
  (WatchList: ``sendInitialEvents``), it is used: probed once per kind, never assumed, as
  a server that does not know the parameters silently starts the watch at "now"; a stream
  cut short after objects came means a slow server, and that kind is listed in pages from
  then on. Lists are never asked with ``resourceVersion=0`` (a stale read from one HA
  server's cache): with none, 1.34+ serves them from the watch cache, consistent.

Every relist (other than the first) waits a random share of ``RELIST_JITTER`` first: after
an API server restart every kind's watch ends at once, and the lists are spread out.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import random
import sys
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, cast

import aiohttp
from kopf._cogs.aiokits import aiotasks
from kopf._cogs.clients import api, errors, fetching, watching
from kopf._cogs.configs import configuration
from kopf._cogs.structs import bodies, references

from breaker import trimming

log = logging.getLogger("breaker.kopf")

# A relist after the first waits a random time up to this, so that the kinds whose watches
# all ended at once (an API server restart) are not listed at once.
RELIST_JITTER = 2.0
# The backoff after consecutive failures: doubling from the first, capped.
BACKOFF_FIRST, BACKOFF_CAP = 1.0, 60.0
# A paged list started again from page 1 this many times in a row is given up (the stream
# fails, and is retried with its backoff).
PAGED_TRIES = 5
# The marker on a DELETED made here for an object a relist no longer has.
VANISHED = "breaker.dev/vanished"
# The WatchList probe waits this long for the end of the initial events.
PROBE_TIMEOUT = 10
# The server's timeout of a streamed initial list (and of the watch that goes on in it).
# The watches' own 300 s cut 10,000 pods' initial events short on a server at load 8 just
# restarted, and every try began again from the first object.
STREAM_TIMEOUT = 1800
INITIAL_EVENTS_END = "k8s.io/initial-events-end"

Identity = tuple[str | None, str]  # namespace, name


@dataclasses.dataclass
class Stream:
    """What one watcher keeps between its lists (kopf's watcher of one kind in one
    namespace, or cluster-wide; two watchers of the same kind keep their own)."""

    known: dict[str, Identity] = dataclasses.field(default_factory=dict)  # by uid
    listed: int = 0
    failures: int = 0
    streamed_failures: int = 0  # streamed initial lists cut short in a row


# By watcher: kopf runs each watcher as a task of its own for as long as it watches.
STREAMS: weakref.WeakKeyDictionary[object, Stream] = weakref.WeakKeyDictionary()
# Whether the API server streams a kind's initial list (WatchList), once probed.
WATCHLIST: dict[references.Resource, bool] = {}
# Kinds whose watchers are kopf's own (its CRD observer, its peering) and read more of a
# deleted object than a tombstone has: no tombstones for them, as kopf did.
KOPFS_OWN = {
    ("apiextensions.k8s.io", "customresourcedefinitions"),
    ("kopf.dev", "clusterkopfpeerings"),
    ("kopf.dev", "kopfpeerings"),
}
# A streamed initial list cut short this many times in a row: the kind is listed in pages.
STREAMED_TRIES = 3


def _owner() -> object:
    """The watcher a stream belongs to: the task iterating it (kopf's watcher task)."""
    return asyncio.current_task()


def backoff(failures: int, rng: Callable[[], float] = random.random) -> float:
    """Seconds to wait after ``failures`` consecutive failures: exponential, capped, with
    full jitter between half and all of it."""
    if failures <= 0:
        return 0.0
    ceiling = min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** (failures - 1))
    return float(ceiling * (0.5 + rng() / 2))


def vanished(known: dict[str, Identity], seen: dict[str, Identity]) -> list[str]:
    """The uids known before a list that the list no longer has."""
    return [uid for uid in known if uid not in seen]


def tombstone(resource: references.Resource, uid: str, identity: Identity) -> bodies.RawEvent:
    """A DELETED for an object a list no longer has: its identity, and the marker."""
    namespace, name = identity
    metadata: dict[str, Any] = {"name": name, "uid": uid}
    if namespace is not None:
        metadata["namespace"] = namespace
    api_version = f"{resource.group}/{resource.version}" if resource.group else resource.version
    body = {"apiVersion": api_version, "kind": resource.kind or "", "metadata": metadata}
    event: dict[str, Any] = {"type": "DELETED", "object": body, VANISHED: True}
    return cast(bodies.RawEvent, event)


def identity(body: bodies.RawBody) -> tuple[str, Identity] | None:
    metadata = body.get("metadata") or {}
    uid, name = metadata.get("uid"), metadata.get("name")
    if not uid or not name:
        return None
    namespace = metadata.get("namespace")
    return uid, (sys.intern(namespace) if namespace else None, name)


def _trim(resource: references.Resource, body: bodies.RawBody) -> None:
    """Lighter before kopf holds it (``trimming``)."""
    trimming.trim(resource.group, resource.plural, cast(dict[str, Any], body))


def _where(namespace: references.Namespace) -> str:
    return f"in {namespace!r}" if namespace is not None else "cluster-wide"


async def continuous_watch(
    *,
    settings: configuration.OperatorSettings,
    resource: references.Resource,
    namespace: references.Namespace,
    operator_pause_waiter: aiotasks.Future,
) -> AsyncIterator[watching.Bookmark | bodies.RawEvent]:
    """kopf's ``continuous_watch`` (list, then watch until the watch cannot go on), with the
    deletions a list reveals, and every error ending in a relist (see the module)."""
    stream = STREAMS.setdefault(_owner(), Stream())
    wait = backoff(stream.failures)
    if not wait and stream.listed:
        wait = random.uniform(0, RELIST_JITTER)
    if wait:
        await asyncio.sleep(wait)
    listing = _Listing()
    async for raw_event in _listed(settings, resource, namespace, operator_pause_waiter, listing):
        yield raw_event
    # What the list handed kopf is known to it, whole or not: a later list that lacks it
    # must say it is gone.
    candidates = {**stream.known, **listing.abandoned, **listing.seen}
    if listing.version is None:
        stream.known = candidates
        stream.failures += 1
        return
    gone = vanished(candidates, listing.seen)
    if (resource.group, resource.plural) in KOPFS_OWN:
        gone = []
    if gone:
        log.info(
            "listing %s %s: %d objects gone while not watched; deleting them from memory",
            resource, _where(namespace), len(gone),
        )  # fmt: skip
    for uid in gone:
        yield tombstone(resource, uid, candidates[uid])
    stream.known = listing.seen
    stream.listed += 1
    yield watching.Bookmark.LISTED
    async for raw_event in _watched(
        settings, resource, namespace, operator_pause_waiter, stream, listing
    ):
        yield raw_event


@dataclasses.dataclass
class _Listing:
    seen: dict[str, Identity] = dataclasses.field(default_factory=dict)
    # Seen by an attempt given up (a paged list started again): handed to kopf all the same.
    abandoned: dict[str, Identity] = dataclasses.field(default_factory=dict)
    version: str | None = None  # the list's, once it is whole
    # A streamed list's watch, open still: the watch goes on in it.
    events: AsyncGenerator[bodies.RawInput, None] | None = None


# Yielded by a paged list when it starts again from page 1.
_RESTART = "restart"


async def _listed(
    settings: configuration.OperatorSettings,
    resource: references.Resource,
    namespace: references.Namespace,
    operator_pause_waiter: aiotasks.Future,
    listing: _Listing,
) -> AsyncIterator[bodies.RawEvent]:
    """The list's objects as kopf's listing events, noting who they are in ``listing``, and
    its version once whole (left None if it fails)."""
    stream = STREAMS.setdefault(_owner(), Stream())
    initial: AsyncIterator[tuple[bodies.RawEvent | None, str]]
    streamed = await _watchlist_served(settings, resource, namespace)
    if streamed:
        initial = _streamed(settings, resource, namespace, operator_pause_waiter, listing)
    else:
        initial = _paged(settings, resource, namespace)
    version = ""
    try:
        async for raw_event, at in initial:
            if at == _RESTART:
                listing.abandoned.update(listing.seen)
                listing.seen = {}
                continue
            version = at
            if raw_event is None:
                continue
            found = identity(raw_event["object"])
            if found is not None:
                listing.seen[found[0]] = found[1]
            yield raw_event
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as error:
        # The operator pausing (a standby's peering) cuts the stream too, and says nothing
        # of the server.
        progressed = bool(listing.seen or listing.abandoned) and not operator_pause_waiter.done()
        _list_failed(resource, namespace, stream, streamed, f"failed ({error!r})", progressed)
        return
    except errors.APIError as error:
        if isinstance(error, errors.APITooManyRequestsError):
            raise  # kopf's infinite watch retries it
        if streamed and error.status in (400, 422):  # no longer served (a downgrade): ask
            WATCHLIST.pop(resource, None)
        _list_failed(resource, namespace, stream, streamed, f"refused ({error})")
        return
    stream.streamed_failures = 0
    listing.version = version


def _list_failed(
    resource: references.Resource,
    namespace: references.Namespace,
    stream: Stream,
    streamed: bool,
    how: str,
    progressed: bool = False,
) -> None:
    log.warning("listing %s %s %s; again after a backoff", resource, _where(namespace), how)
    if not streamed:
        return
    stream.streamed_failures += 1
    # A stream cut after objects came is slow, not refused (a proxy's timeout, a server at
    # load): another would start again from the first object, where pages each get a
    # request of their own. A stream refused before any object (a server restarting) is
    # given its tries.
    if progressed or stream.streamed_failures >= STREAMED_TRIES:
        WATCHLIST[resource] = False
        stream.streamed_failures = 0
        log.warning("listing %s in pages from now on: its streamed lists were cut short", resource)


async def _watched(
    settings: configuration.OperatorSettings,
    resource: references.Resource,
    namespace: references.Namespace,
    operator_pause_waiter: aiotasks.Future,
    stream: Stream,
    listing: _Listing,
) -> AsyncIterator[bodies.RawEvent]:
    """Watch from the list's version (in the streamed list's own watch, where it was one),
    again from the last seen after each disconnect, until an ERROR (a relist, after a
    backoff unless it was 410) or the operator pauses."""
    resource_version, opened = listing.version, listing.events
    try:
        async for raw_event in _watching(
            settings, resource, namespace, operator_pause_waiter, stream, resource_version, opened
        ):
            yield raw_event
    finally:
        if listing.events is not None:
            await listing.events.aclose()


async def _watching(
    settings: configuration.OperatorSettings,
    resource: references.Resource,
    namespace: references.Namespace,
    operator_pause_waiter: aiotasks.Future,
    stream: Stream,
    resource_version: str | None,
    opened: AsyncGenerator[bodies.RawInput, None] | None,
) -> AsyncIterator[bodies.RawEvent]:
    while not operator_pause_waiter.done():
        events = opened or watching.watch_objs(
            settings=settings,
            resource=resource,
            namespace=namespace,
            since=resource_version,
            operator_pause_waiter=operator_pause_waiter,
        )
        opened = None
        got, started = False, asyncio.get_running_loop().time()
        try:
            async for raw_input in events:
                kind, obj = raw_input["type"], raw_input["object"]
                if kind == "ERROR":
                    _watch_error(resource, namespace, stream, cast(bodies.RawError, obj), got)
                    return
                if kind not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
                    log.warning("watching %s: ignoring an event of type %r", resource, kind)
                    continue
                got = True
                stream.failures = 0
                body = cast(bodies.RawBody, obj)
                resource_version = body.get("metadata", {}).get("resourceVersion", resource_version)
                if kind != "BOOKMARK":
                    _remember(stream, kind, body)
                    _trim(resource, body)
                yield cast(bodies.RawEvent, raw_input)
        except errors.APIError as refused:  # still refused after kopf's retries
            if isinstance(refused, errors.APITooManyRequestsError):
                raise  # kopf's infinite watch retries it
            stream.failures += 1
            log.warning(
                "watching %s %s refused (%s); listing again after a backoff",
                resource, _where(namespace), refused,
            )  # fmt: skip
            return
        quick = asyncio.get_running_loop().time() - started < 1.0
        if not got and quick and not operator_pause_waiter.done():
            # A watch that ended at once with nothing (a connection refused after kopf's
            # retries): wait before the next, longer while it lasts.
            stream.failures += 1
            await asyncio.sleep(backoff(stream.failures))


def _watch_error(
    resource: references.Resource,
    namespace: references.Namespace,
    stream: Stream,
    status: bodies.RawError,
    got: bool,
) -> None:
    if status.get("code") == 410:
        log.info("watching %s %s: %s; listing again",
                 resource, _where(namespace), status.get("message") or "too old")  # fmt: skip
        if not got:  # too old at once, again and again: back off as for a failure
            stream.failures += 1
        return
    stream.failures += 1
    log.warning(
        "watching %s %s: the API server sent an error (%s %s); listing again",
        resource, _where(namespace), status.get("code"), status.get("message"),
    )  # fmt: skip


def _remember(stream: Stream, kind: str, body: bodies.RawBody) -> None:
    found = identity(body)
    if found is None:
        return
    if kind == "DELETED":
        stream.known.pop(found[0], None)
    else:
        stream.known[found[0]] = found[1]


async def _paged(
    settings: configuration.OperatorSettings,
    resource: references.Resource,
    namespace: references.Namespace,
) -> AsyncIterator[tuple[bodies.RawEvent | None, str]]:
    """kopf's paged list as listing events; a page refused as too old (410) starts the list
    again from page 1 after a jittered backoff (the pages already sent come again: they are
    the same objects, or newer)."""
    for attempt in range(1, PAGED_TRIES + 1):
        try:
            async for chunk, version in fetching.fetch_objs(
                settings=settings, resource=resource, namespace=namespace, logger=log
            ):
                for obj in chunk:
                    _trim(resource, obj)
                    yield {"type": None, "object": obj}, version
                del chunk
            return
        except errors.APIClientError as refused:
            if refused.status != 410 or attempt == PAGED_TRIES:
                raise
            wait = backoff(attempt)
            log.warning(
                "listing %s %s: a page was refused (%s); from page 1 again in %.1fs",
                resource, _where(namespace), refused, wait,
            )  # fmt: skip
            await asyncio.sleep(wait)
            yield None, _RESTART


async def _streamed(
    settings: configuration.OperatorSettings,
    resource: references.Resource,
    namespace: references.Namespace,
    operator_pause_waiter: aiotasks.Future,
    listing: _Listing,
) -> AsyncIterator[tuple[bodies.RawEvent | None, str]]:
    """The initial list as a WatchList stream: ADDED events until the bookmark that ends
    them, as listing events. The stream is left open in ``listing``: the watch goes on in
    it, as client-go's does (a new watch from the bookmark's version could reach an HA API
    server that has not seen it yet, and be refused)."""
    streaming = copy.copy(settings)
    streaming.watching = copy.copy(settings.watching)
    streaming.watching.initial_streaming = True
    streaming.watching.server_timeout = max(settings.watching.server_timeout or 0, STREAM_TIMEOUT)
    events = cast(
        AsyncGenerator[bodies.RawInput, None],
        watching.watch_objs(
            settings=streaming,
            resource=resource,
            namespace=namespace,
            since=None,
            operator_pause_waiter=operator_pause_waiter,
        ),
    )
    version = ""
    async for raw_input in events:
        kind, obj = raw_input["type"], raw_input["object"]
        if kind == "ERROR":
            status = cast(errors.RawStatus, obj)
            raise errors.APIClientError(status, status=status.get("code") or 500, headers={})
        metadata = obj.get("metadata") or {}
        version = metadata.get("resourceVersion", version)
        if kind == "BOOKMARK":
            if (metadata.get("annotations") or {}).get(INITIAL_EVENTS_END) == "true":
                listing.events = events
                yield None, version  # the version the watch goes on from
                return
            continue
        if kind == "ADDED":
            _trim(resource, cast(bodies.RawBody, obj))
            yield {"type": None, "object": cast(bodies.RawBody, obj)}, version
    # The stream ended before the initial events did: a list cut short is no list.
    raise aiohttp.ClientPayloadError("the initial events ended before their bookmark")


async def _watchlist_served(
    settings: configuration.OperatorSettings,
    resource: references.Resource,
    namespace: references.Namespace,
) -> bool:
    """Whether the API server streams this kind's initial list: asked once, with a watch
    for a name no object has; a server that serves it ends the (empty) initial events with
    the bookmark that says so."""
    if resource in WATCHLIST:
        return WATCHLIST[resource]
    served = await _probe(settings, resource, namespace)
    if served is None:  # no answer either way (the server down): lists, and asks again
        return False
    WATCHLIST[resource] = served
    how = "streamed (WatchList)" if served else "listed in pages"
    log.info("the initial list of %s is %s", resource, how)
    return served


async def _probe(
    settings: configuration.OperatorSettings,
    resource: references.Resource,
    namespace: references.Namespace,
) -> bool | None:
    params = {
        "watch": "true",
        "allowWatchBookmarks": "true",
        "sendInitialEvents": "true",
        "resourceVersionMatch": "NotOlderThan",
        "fieldSelector": "metadata.name=breaker-watchlist-probe",
        "timeoutSeconds": str(PROBE_TIMEOUT),
    }
    try:
        async with asyncio.timeout(PROBE_TIMEOUT + 5):
            async for event in api.stream(
                url=resource.get_url(namespace=namespace, params=params),
                settings=settings,
                logger=log,
            ):
                metadata = (event.get("object") or {}).get("metadata") or {}
                annotations = metadata.get("annotations") or {}
                if event.get("type") == "BOOKMARK" and annotations.get(INITIAL_EVENTS_END):
                    return True
    except errors.APIClientError as refused:
        if refused.status in (401, 403, 429):  # not let in, or not now: no answer
            log.debug("WatchList probe of %s: no answer: %s", resource, refused)
            return None
        log.debug("WatchList probe of %s refused: %s", resource, refused)  # its parameters
        return False
    except (errors.APIError, aiohttp.ClientError, TimeoutError) as error:
        log.debug("WatchList probe of %s: no answer: %r", resource, error)
        return None
    return False  # the watch ended with no such bookmark: it ignored the parameters
