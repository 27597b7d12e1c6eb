"""Run the operator: load the controllers into kopf's registry and start kopf.

Everything the operator writes of its own (finalizer, progress and diff-base annotations)
lives under breaker.dev/.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf
from kopf._core.intents import registries

from breaker import heap, kopf_tuning, kube, leadership, metrics

# Importing the controllers registers their handlers and indexes.
from breaker.controllers import breakers, config, inventory, policies, trainingjobs
from breaker.serving import Serving

CONTROLLERS = (policies, trainingjobs, inventory, breakers)
LIVE_PODS = "status.phase!=Succeeded,status.phase!=Failed"
log = logging.getLogger("breaker.runner")


class ShardDiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff base (the last handled spec, in an annotation), written only on this
    operator's own objects.

    kopf writes it on every object whose change it processed, even when every handler's
    filter said no. A shard that watches cluster-wide (a glob) wrote it on the other
    shards' BreakerPolicies, and the shard serving one could then see an edit of it as no
    change at all, and never apply it."""

    def __init__(self, serving: Serving) -> None:
        super().__init__(prefix="breaker.dev", key="last-handled-configuration")
        self.serving = serving

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        if self.serving.here(body.metadata.namespace):
            super().store(body=body, patch=patch, essence=essence)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = "breaker.dev/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="breaker.dev")
    settings.persistence.diffbase_storage = ShardDiffBase(config.of(memo).serving)
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 30
    # The first list of each resource in pages: 10,000 pods at once is one response of
    # tens of megabytes, parsed whole before the first is indexed.
    settings.watching.chunk_size = 500
    # kopf keeps each object's worker, and with it the object's last event, whole, for this
    # long after its last event. kopf's 5 s held a sixth of a 30,000-object first listing at
    # once (a restart at 10,000 jobs peaked at 399 MiB; 345 MiB at 0.5 s). A worker is a
    # task, cheap to start again for the next event.
    settings.queueing.idle_timeout = 0.5
    settings.peering.lifetime = config.of(memo).peering_lifetime
    # kopf peers a namespace-restricted operator per namespace (a KopfPeering in each);
    # a shard is one peering group over all its namespaces, so it peers cluster-wide.
    # kopf reads this after the startup handlers, when it starts its peering tasks.
    settings.peering.clusterwide = True
    if not config.of(memo).serving.breakers():
        # The queue reads only the pods that hold or wait for GPUs; a finished pod holds
        # none, and on a busy cluster most pods are finished. The breakers keep them: a
        # pod that mined and exited still has samples in Prometheus for a signal's window,
        # and its owner is found through it.
        settings.watching.field_selectors["", "v1", "pods"] = LIVE_PODS


def resource_registries(
    registry: registries.OperatorRegistry,
) -> tuple[registries.ResourceRegistry[Any, Any], ...]:
    """kopf's registries of handlers of a kind: the kinds they name are the ones watched."""
    return (registry._indexing, registry._watching, registry._spawning, registry._changing)


def drop_unserved(registry: registries.OperatorRegistry, serving: Serving) -> int:
    """Drop the handlers of the parts this operator does not serve, before kopf starts.

    Their filters are false here for every object, but kopf watches every kind some
    handler names, filter or not: a shard watched every node for the queue's sake, and the
    queue every Service for the breakers'. Returns how many were dropped."""
    dropped = 0
    for handlers in resource_registries(registry):
        # kopf has no way to take a handler out; its registries are plain lists.
        kept = [h for h in handlers._handlers if config.part_of(h.when) in (None, *serving.parts)]
        dropped += len(handlers._handlers) - len(kept)
        handlers._handlers[:] = kept
    return dropped


def watched_kinds(registry: registries.OperatorRegistry) -> list[str]:
    """The kinds kopf will watch for this registry's handlers, by plural (and group)."""
    selectors = set().union(*(r.get_all_selectors() for r in resource_registries(registry)))
    return sorted(".".join(str(part) for part in (s.any_name, s.group) if part) for s in selectors)


@kopf.on.startup()
async def start_heap_trimming(memo: kopf.Memo, **_: Any) -> None:
    memo["heap_task"] = asyncio.create_task(heap.keep_trimmed(), name="heap-trim")


@kopf.on.cleanup()
async def stop_heap_trimming(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("heap_task")
    if task is not None:
        task.cancel()


def run(
    liveness: str | None,
    verbose: bool,
    prometheus_url: str,
    metrics_port: int | None,
    operator_namespace: str,
    metrics_address: str = "127.0.0.1",
    peering: str | None = None,
    peering_lifetime: int = 15,
    serving: Serving | None = None,
) -> None:
    serving = serving or Serving()
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        # kopf logs every event handler's success at INFO: thousands a minute on a busy cluster.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    kopf_tuning.install()
    memo = kopf.Memo(
        config=config.OperatorConfig(prometheus_url, operator_namespace, peering_lifetime, serving)
    )
    if metrics_port is not None:
        metrics.serve(metrics_port, metrics_address)
    watched = serving.watched_namespaces()
    scope: dict[str, Any] = {"namespaces": watched} if watched else {"clusterwide": True}
    log.info("serving %s", serving.describe())
    registry = kopf.get_default_registry()
    if dropped := drop_unserved(registry, serving):
        log.info(
            "%d handlers of parts not served here dropped; watching %s",
            dropped,
            ", ".join(watched_kinds(registry)),
        )
    if peering is None:
        kopf.run(standalone=True, liveness_endpoint=liveness, memo=memo, **scope)
        return
    priority = leadership.priority_below_peers(kube.api_client(), peering)
    log.info(
        "peering %s: priority %d (below every live peer: standby until they go)", peering, priority
    )
    leadership.exit_when_demoted()
    kopf.run(
        peering_name=peering, priority=priority, liveness_endpoint=liveness, memo=memo, **scope
    )
