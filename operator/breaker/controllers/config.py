"""What `breaker run` tells the controllers, handed to them in kopf's memo (no module
globals): where Prometheus is by default, the operator's own namespace, the peering lease,
and what this operator serves (the kopf filters below read it from the memo)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import kopf

from breaker.serving import Serving


@dataclass(frozen=True)
class OperatorConfig:
    prometheus_url: str = "http://127.0.0.1:9090"  # a policy's own prometheus.url wins
    operator_namespace: str = "breaker-system"  # where webhook Secrets may live
    peering_lifetime: int = 15  # seconds a peer's lease lasts (kopf peering)
    serving: Serving = field(default_factory=Serving)


def of(memo: kopf.Memo) -> OperatorConfig:
    """The configuration in the operator's memo (the defaults where none was given)."""
    found = memo.get("config")
    return found if isinstance(found, OperatorConfig) else OperatorConfig()


# kopf filters (`when=`): kopf calls them with a handler's keyword arguments, memo included.


def here(memo: kopf.Memo, namespace: str | None = None, **_: Any) -> bool:
    """The object is this operator's shard's (cluster-scoped ones are every shard's)."""
    return of(memo).serving.here(namespace)


def serves_breakers(memo: kopf.Memo, namespace: str | None = None, **_: Any) -> bool:
    """This operator serves the breakers, of the object's namespace."""
    return of(memo).serving.breakers(namespace)


def serves_queue(memo: kopf.Memo, **_: Any) -> bool:
    """This operator serves the TrainingJob queue."""
    return of(memo).serving.queue
