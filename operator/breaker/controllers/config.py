"""What `breaker run` tells the controllers, handed to them in kopf's memo (no module
globals): where Prometheus is by default, the operator's own namespace, the peering lease,
and what this operator serves (the kopf filters below read it from the memo)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

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
#
# A filter marked as one part's is false in every operator that does not serve that part,
# whatever the object: such an operator drops the handlers it filters before kopf starts
# (runner.drop_unserved), and with the last handler of a kind, kopf's watch of that kind.

Filter = TypeVar("Filter", bound=Callable[..., bool])
_PART_OF: dict[Callable[..., bool], str] = {}


def part(name: str) -> Callable[[Filter], Filter]:
    """Mark a filter as false wherever the part ``name`` is not served."""

    def mark(predicate: Filter) -> Filter:
        _PART_OF[predicate] = name
        return predicate

    return mark


def part_of(predicate: Callable[..., bool] | None) -> str | None:
    """The part a handler's filter belongs to (None: every operator's)."""
    return None if predicate is None else _PART_OF.get(predicate)


def here(memo: kopf.Memo, namespace: str | None = None, **_: Any) -> bool:
    """The object is this operator's shard's (cluster-scoped ones are every shard's)."""
    return of(memo).serving.here(namespace)


@part("breakers")
def serves_breakers(memo: kopf.Memo, namespace: str | None = None, **_: Any) -> bool:
    """This operator serves the breakers, of the object's namespace."""
    return of(memo).serving.breakers(namespace)


@part("queue")
def serves_queue(memo: kopf.Memo, **_: Any) -> bool:
    """This operator serves the TrainingJob queue."""
    return of(memo).serving.queue
