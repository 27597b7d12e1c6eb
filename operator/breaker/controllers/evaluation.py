"""The breaker loop's detection half: each policy compiled once into typed settings and a
detector, and every due policy evaluated with one query per signal for all its pods.

The controller hands in what it read from kopf's indexes (each policy's Breakers, the pod
index, the owner lookup); the decisions come from ``detect.driver``, as for backtests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from breaker import metrics
from breaker.actions.settings import ActionSettings
from breaker.api.common import parse_duration
from breaker.api.policy import BreakerPolicySpec, ClusterBreakerPolicySpec, PolicySpecBase
from breaker.circuit import machine, plan
from breaker.circuit.ownership import WorkloadKey, workload_of
from breaker.circuit.views import PodView
from breaker.controllers.inventory import items, only
from breaker.detect import driver, engine, live
from breaker.detect.policy_check import problems
from breaker.detect.prom import Prom

log = logging.getLogger("breaker.breakers")

BreakerKey = tuple[str, str]
PolicyKey = tuple[str, str | None, str]  # (kind, namespace, name)


@dataclass
class Compiled:
    generation: int | None
    detector: engine.Detector | None
    spec: PolicySpecBase | None
    problem: str | None
    kinds: frozenset[str] = frozenset()  # the workload kinds it targets
    # The actions and the machine's settings, compiled once from the validated spec.
    actions: ActionSettings = dataclasses.field(default_factory=ActionSettings)
    settings: machine.Settings = dataclasses.field(default_factory=machine.Settings)
    state: engine.State = dataclasses.field(default_factory=engine.State)
    due: float = 0.0  # monotonic time of the next evaluation
    known: bool = True  # the last evaluation read every signal
    error: str | None = None  # when it did not: the first failure, "Kind: message"


@dataclass(frozen=True)
class Trip:
    """What an evaluation saw, for the actions and the evidence."""

    decision: engine.Decision
    detector: engine.Detector
    seen_at: float  # monotonic, when the evaluation returned


class Policies:
    """The compiled policies, their ``for`` clocks and their Prometheus clients."""

    def __init__(self, prometheus_url: str) -> None:
        self.prometheus_url = prometheus_url  # where a policy without its own url asks
        self.compiled: dict[PolicyKey, Compiled] = {}
        self.proms: dict[tuple[str, float], Prom] = {}

    def next_due(self) -> float:
        """When the next policy is due to be evaluated (monotonic); within a minute."""
        return min(
            (c.due for c in self.compiled.values() if c.detector),
            default=time.monotonic() + 60,
        )

    def compile(self, bodies: Iterable[tuple[PolicyKey, dict[str, Any]]]) -> None:
        """Compile each policy once per generation into typed settings and a detector."""
        seen: set[PolicyKey] = set()
        for key, body in bodies:
            seen.add(key)
            generation = body["metadata"].get("generation")
            current = self.compiled.get(key)
            if current is not None and current.generation == generation:
                continue
            model = (
                ClusterBreakerPolicySpec if key[0] == "ClusterBreakerPolicy" else BreakerPolicySpec
            )
            try:
                spec = model.model_validate(body["spec"])
                found = problems(spec)
                detector = None if found else engine.compile_policy(spec)
                problem = "; ".join(found) or None
            # Validation (pydantic's errors are ValueErrors) or compilation refused it: a
            # policy the operator cannot use is skipped, loudly, and said in its status.
            except (ValueError, KeyError, TypeError, ArithmeticError) as error:
                spec, detector, problem = None, None, str(error)
            if problem:
                log.warning("%s: not evaluated: %s", policy_label(key), problem[:300])
            # A changed policy starts its `for` clocks afresh: its conditions changed too.
            kinds = frozenset(spec.targets.kinds if spec else ["TrainingJob"])
            self.compiled[key] = Compiled(
                generation,
                detector,
                spec,
                problem,
                kinds,
                actions=ActionSettings.compile(spec, body["spec"].get("actions")),
                settings=plan.settings_of(spec),
            )
        for key in set(self.compiled) - seen:
            del self.compiled[key]

    async def evaluate_due(
        self,
        breakers_of: Mapping[PolicyKey, list[tuple[BreakerKey, dict[str, Any]]]],
        pods: kopf.Index[Any, Any],
        owners: Any,
    ) -> tuple[dict[BreakerKey, Trip], dict[PolicyKey, bool]]:
        """Evaluate every policy whose interval has come: one query per signal each.

        ``breakers_of`` are each policy's Breakers, ``pods`` the pod index and ``owners``
        the owner lookup: what the controller read from kopf's indexes on the event loop."""
        trips: dict[BreakerKey, Trip] = {}
        known: dict[PolicyKey, bool] = {}
        wanted = self._due(breakers_of)
        if not wanted:
            return trips, known
        # The queries of every due policy run at once, off the event loop (kopf's indexes
        # change on it, so they are read here, never from a worker thread): a slow
        # Prometheus behind one policy costs the others nothing.
        started = time.monotonic()
        answers = await asyncio.gather(
            *(
                asyncio.to_thread(live.read, prom, detector, time.time())
                for _, prom, detector in wanted
            )
        )
        for (key, _, detector), (readings, errors, queries) in zip(wanted, answers, strict=True):
            compiled = self.compiled[key]
            unit_of, units_on_node = _units(pods, owners, compiled.kinds)
            firing, decisions = driver.tick(
                detector, compiled.state, readings, time.time(), unit_of, units_on_node
            )
            evaluation = live.Evaluation(firing, decisions, errors, queries)
            seen_at = time.monotonic()
            _observe(policy_label(key), evaluation, seen_at - started)
            compiled.known = known[key] = not evaluation.errors
            compiled.error = next(iter(evaluation.errors.values()), None)
            by_workload = {unit: found for unit, found in evaluation.decisions.items() if unit}
            for breaker_key, body in breakers_of[key]:
                target = body["spec"]["targetRef"]
                unit = (breaker_key[0], target["kind"], target["name"])
                if unit in by_workload:
                    trips[breaker_key] = Trip(by_workload[unit], detector, seen_at)
        return trips, known

    def _due(
        self, breakers_of: Mapping[PolicyKey, list[tuple[BreakerKey, dict[str, Any]]]]
    ) -> list[tuple[PolicyKey, Prom, engine.Detector]]:
        """The policies due now that guard something, with their Prometheus; each one's
        next evaluation set."""
        now = time.monotonic()
        wanted = []
        for key, compiled in self.compiled.items():
            if compiled.detector is None or compiled.spec is None or compiled.due > now:
                continue
            settings = compiled.spec.prometheus
            compiled.due = now + seconds(settings.interval)
            if breakers_of.get(key):
                prom = self.prom(settings.url or self.prometheus_url, seconds(settings.timeout))
                wanted.append((key, prom, compiled.detector))
        return wanted

    def prom(self, url: str, timeout: float) -> Prom:
        key = (url, timeout)
        if key not in self.proms:
            self.proms[key] = Prom(url, timeout)
        return self.proms[key]


def policy_key(ref: Mapping[str, Any]) -> PolicyKey:
    return (ref["kind"], ref.get("namespace"), ref["name"])


def policy_label(key: PolicyKey) -> str:
    return f"{key[1]}/{key[2]}" if key[1] else key[2]


def seconds(duration: str) -> float:
    return parse_duration(duration).total_seconds()


def _units(
    pods: kopf.Index[Any, Any], owners: Any, kinds: frozenset[str]
) -> tuple[Callable[[engine.PodKey], Any], Callable[[], dict[str, set[WorkloadKey]]]]:
    """How a pod names the workload this policy guards (its kinds), and the workloads on
    each node: from the pod index, as the driver asks."""

    def unit_of(pod_key: engine.PodKey) -> Any:
        pod: PodView | None = only(pods, pod_key)
        if pod is None:
            return None
        return workload_of(pod.namespace, pod.owner, owners, kinds)

    def units_on_node() -> dict[str, set[WorkloadKey]]:
        found: dict[str, set[WorkloadKey]] = {}
        for pod_key, pod in items(pods):
            unit = unit_of(pod_key) if pod.node else None
            if unit is not None and pod.node is not None:
                found.setdefault(pod.node, set()).add(unit)
        return found

    return unit_of, units_on_node


def _observe(label: str, evaluation: live.Evaluation[Any], took: float) -> None:
    """The evaluation's metrics, and a warning naming the first signal it could not read."""
    metrics.EVALUATION_SECONDS.labels(label).observe(took)
    metrics.QUERIES.labels(label).set(evaluation.queries)
    for signal in evaluation.errors:
        metrics.PROMETHEUS_ERRORS.labels(label, signal).inc()
    if evaluation.errors:
        log.warning(
            "%s: %d of %d signals unreadable: %s",
            label,
            len(evaluation.errors),
            evaluation.queries,
            next(iter(evaluation.errors.values()))[:300],
        )
