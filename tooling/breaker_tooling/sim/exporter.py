"""`breaker sim` as a live exporter: the scenario played in real time on /metrics.

Prometheus scrapes it like the real exporters; the series are exactly those the
OpenMetrics writer produces, computed up to the moment of the scrape.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from breaker_tooling.sim import model
from breaker_tooling.sim.openmetrics import family_of
from breaker_tooling.sim.scenario import Scenario


class ScenarioCollector(Collector):
    """Plays a scenario from when it was made, ``speed`` times faster than real time."""

    def __init__(self, scenario: Scenario, speed: float = 1.0) -> None:
        self.scenario = scenario
        self.speed = speed
        self.started = time.time()
        self.states = {pod.key: model.PodState() for pod in scenario.pods}
        self.offset = 0.0
        self.profiles = {pod.key: "idle" for pod in scenario.pods}
        self.lock = threading.Lock()
        self._sample(0.0)  # a scrape before the first step sees the scenario's start, not idle

    def _sample(self, offset: float) -> None:
        for pod in self.scenario.pods:
            if pod.exists(offset):
                self.profiles[pod.key] = model.tick(
                    pod, self.states[pod.key], offset, self.scenario.step
                )

    def _catch_up(self) -> float:
        target = min((time.time() - self.started) * self.speed, self.scenario.seconds)
        while self.offset + self.scenario.step <= target:
            self.offset += self.scenario.step
            self._sample(self.offset)
        return self.offset

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            offset = self._catch_up()
            families: dict[str, Metric] = {}
            for pod in (p for p in self.scenario.pods if p.exists(offset)):
                state, profile = self.states[pod.key], self.profiles[pod.key]
                for s in model.samples(pod, state, profile, offset):
                    family = families.get(s.name)
                    if family is None:
                        keys = [k for k, _ in s.labels]
                        name = family_of(s.name, s.kind)
                        family = (
                            CounterMetricFamily(name, s.name, labels=keys)
                            if s.kind == "counter"
                            else GaugeMetricFamily(name, s.name, labels=keys)
                        )
                        families[s.name] = family
                    family.add_metric([v for _, v in s.labels], s.value)  # type: ignore[attr-defined]
        yield from families.values()
