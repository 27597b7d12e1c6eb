"""The one detection driver: a step's readings in, trip decisions per workload out.

The operator's loop, ``breaker backtest`` and the benchmarks all decide through ``tick``.
They differ only in where the readings come from (instant queries now, or one step of a
range query) and in how a pod names its workload (kopf's indexes of the cluster, or
kube-state-metrics' ``kube_pod_owner``). Pure: no I/O, no clock of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import TypeVar

from breaker.detect import engine

Unit = TypeVar("Unit", bound=Hashable)


def tick(
    detector: engine.Detector,
    state: engine.State,
    readings: engine.Readings,
    now: float,
    unit_of: Callable[[engine.PodKey], Unit | None],
    units_on_node: Callable[[], Mapping[str, Iterable[Unit]]] | None = None,
) -> tuple[dict[engine.PodKey, list[engine.Firing]], dict[Unit, engine.Decision]]:
    """Advance the ``for`` clocks to ``now`` and decide every unit (a workload, or a pod).

    A pod whose ``unit_of`` is None is guarded by nobody: what it fires is dropped. A
    signal across a workload's pods (``engine.Across``) is combined per unit first. A
    node-scoped signal (a GPU busy that no pod holds) counts for every unit with a pod on
    its node; ``units_on_node`` is asked only when one fires.
    """
    firing = engine.step(detector, state, readings, now, unit_of)
    node_signal = any(
        detector.signal(f.signal).scope == "node" for fires in firing.values() for f in fires
    )
    on_node = units_on_node() if node_signal and units_on_node is not None else {}
    return firing, engine.decide_with_nodes(detector, firing, unit_of, on_node)
