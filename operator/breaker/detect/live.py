"""One live evaluation: one instant query per signal, for every pod at once, then the engine.

This is the only place the live loop touches Prometheus for detection; everything it
decides is the engine's, shared with ``breaker backtest``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from breaker.detect import engine
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
            readings[signal.name] = engine.normalize(result, signal.labels)
        except QueryError as error:
            readings[signal.name] = None
            errors[signal.name] = f"{error.kind}: {error}"
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            readings[signal.name] = None
            errors[signal.name] = f"BadResponse: {signal.query[:120]}: series unreadable: {error}"
    return readings, errors, len(detector.signals)


def decide(
    detector: engine.Detector,
    state: engine.State,
    readings: Mapping[str, Mapping[engine.PodKey, engine.Sample] | None],
    now: float,
    unit_of: Callable[[engine.PodKey], Unit],
    units_on_node: Callable[[], Mapping[str, Iterable[Unit]]] | None = None,
) -> tuple[dict[engine.PodKey, list[engine.Firing]], dict[Unit, engine.Decision]]:
    """The engine's half of an evaluation (no I/O): the for-clocks, then the decisions."""
    firing = engine.step(detector, state, readings, now)
    node_signal = any(
        detector.signal(f.signal).scope == "node" for fires in firing.values() for f in fires
    )
    if node_signal and units_on_node is not None:
        return firing, engine.decide_with_nodes(detector, firing, unit_of, units_on_node())
    pod_firing = {
        pod: [f for f in fires if detector.signal(f.signal).scope == "pod"]
        for pod, fires in firing.items()
    }
    return firing, engine.decide_all(detector, pod_firing, unit_of)


def evaluate(
    prom: Prom,
    detector: engine.Detector,
    state: engine.State,
    now: float,
    unit_of: Callable[[engine.PodKey], Unit],
    units_on_node: Callable[[], Mapping[str, Iterable[Unit]]] | None = None,
) -> Evaluation[Unit]:
    """``units_on_node`` is asked only when a node-scoped signal fires."""
    readings, errors, queries = read(prom, detector, now)
    firing, decisions = decide(detector, state, readings, now, unit_of, units_on_node)
    return Evaluation(firing, decisions, errors, queries)
