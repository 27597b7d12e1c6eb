"""One live evaluation: one instant query per signal, for every pod at once, then the engine.

This is the only place the live loop touches Prometheus for detection; what it decides,
``driver.tick`` decides, as for ``breaker backtest`` and the benchmarks.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from breaker.detect import driver, engine
from breaker.detect.prom import Prom, QueryError

Unit = TypeVar("Unit", bound=Hashable)


@dataclass
class Evaluation(Generic[Unit]):
    firing: dict[engine.PodKey, list[engine.Firing]]
    decisions: dict[Unit, engine.Decision]
    errors: dict[str, str] = field(default_factory=dict)  # signal -> why it has no data
    queries: int = 0


def read(
    prom: Prom, detector: engine.Detector, at: float | None = None
) -> tuple[dict[str, Mapping[engine.PodKey, engine.Sample] | None], dict[str, str], int]:
    """Every signal's current vector (None where the query failed), the errors as
    ``"Kind: message"`` (QueryError's kinds), and the count."""
    readings: dict[str, Mapping[engine.PodKey, engine.Sample] | None] = {}
    errors: dict[str, str] = {}
    for signal in detector.signals:
        try:
            result = prom.instant(signal.query, at)
            readings[signal.name] = engine.read(signal, result)
        except QueryError as error:
            readings[signal.name] = None
            errors[signal.name] = f"{error.kind}: {error}"
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            readings[signal.name] = None
            errors[signal.name] = f"BadResponse: {signal.query[:120]}: series unreadable: {error}"
    return readings, errors, len(detector.signals)


def evaluate(
    prom: Prom,
    detector: engine.Detector,
    state: engine.State,
    now: float,
    unit_of: Callable[[engine.PodKey], Unit | None],
    units_on_node: Callable[[], Mapping[str, Iterable[Unit]]] | None = None,
) -> Evaluation[Unit]:
    """``units_on_node`` is asked only when a node-scoped signal fires."""
    readings, errors, queries = read(prom, detector, now)
    firing, decisions = driver.tick(detector, state, readings, now, unit_of, units_on_node)
    return Evaluation(firing, decisions, errors, queries)
