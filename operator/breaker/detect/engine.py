"""The detection engine's pure core: query results in, firing signals and trips out.

A policy compiles to a ``Detector``: one PromQL query per signal, the labels that name the
pod in its results, a condition, a ``for`` duration and a severity, plus the trip rules.
Each evaluation feeds the detector every signal's result vector (one query each, for all
pods at once); ``step`` tracks how long each condition has held and ``decide`` combines
what fires into trips. The live operator and ``breaker backtest`` both go through here,
so they decide alike; only where the vectors come from differs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Container, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from breaker.api.common import parse_duration
from breaker.api.policy import PolicySpecBase
from breaker.detect import presets
from breaker.detect.presets import Across as Across  # a signal's, across a workload's pods

PodKey = tuple[str, str]  # (namespace, pod); for node-scoped signals (node, device)
Unit = TypeVar("Unit", bound=Hashable)
UnitOf = Callable[[PodKey], Hashable | None]

MAX_LABELS = 16
MAX_LABEL_VALUE = 256

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">": lambda v, t: v > t,
    ">=": lambda v, t: v >= t,
    "<": lambda v, t: v < t,
    "<=": lambda v, t: v <= t,
    "==": lambda v, t: v == t,
    "!=": lambda v, t: v != t,
}


@dataclass(frozen=True)
class SignalSpec:
    name: str
    query: str
    labels: tuple[str, str]
    operator: str
    threshold: float
    for_seconds: float
    severity: str
    lookback_seconds: float
    scope: str = "pod"
    across: Across | None = None

    def holds(self, value: float) -> bool:
        return not math.isnan(value) and _COMPARE[self.operator](value, self.threshold)


@dataclass(frozen=True)
class RuleSpec:
    name: str
    all_of: tuple[str, ...] = ()
    any_of: tuple[str, ...] = ()


@dataclass(frozen=True)
class Detector:
    """A compiled policy."""

    signals: tuple[SignalSpec, ...]
    rules: tuple[RuleSpec, ...]
    any_critical: bool = True

    @property
    def lookback_seconds(self) -> float:
        """How much history an evaluation needs before its answers mean anything."""
        return max((s.lookback_seconds + s.for_seconds for s in self.signals), default=0.0)

    def signal(self, name: str) -> SignalSpec:
        return next(s for s in self.signals if s.name == name)


def compile_policy(spec: PolicySpecBase) -> Detector:
    signals = []
    for signal in spec.signals:
        if signal.preset is not None:
            rendered = presets.render(signal.preset, signal.params)
            query, labels, scope = rendered.query, rendered.labels, rendered.scope
            across = rendered.across
            operator, threshold = rendered.operator, rendered.threshold
            lookback = parse_duration(rendered.lookback).total_seconds()
        else:
            assert signal.query is not None  # the schema requires exactly one of them
            query, scope, lookback, across = signal.query, "pod", 0.0, None
            labels = (signal.labels.namespace, signal.labels.pod)
            operator, threshold = ">", 0.0
        if signal.condition is not None:
            operator, threshold = signal.condition.operator, signal.condition.threshold
        signals.append(
            SignalSpec(
                name=signal.name,
                query=query,
                labels=labels,
                operator=operator,
                threshold=threshold,
                for_seconds=parse_duration(signal.for_).total_seconds(),
                severity=signal.severity,
                lookback_seconds=lookback,
                scope=scope,
                across=across,
            )
        )
    rules = tuple(
        RuleSpec(rule.name, tuple(rule.all_of or ()), tuple(rule.any_of or ()))
        for rule in spec.trip.rules or []
    )
    return Detector(tuple(signals), rules, spec.trip.any_critical)


@dataclass(frozen=True)
class Sample:
    value: float
    # The series' labels as Prometheus gave them, not copied: most samples never fire, and
    # copying and escaping every series' labels was half of an evaluation's CPU. A firing
    # keeps them bounded (``_bounded``), as evidence.
    labels: Mapping[str, Any] = field(default_factory=dict)
    members: frozenset[str] = frozenset()  # an ``Across`` signal's label values for the pod

    def merged(self, other: Sample) -> Sample:
        """Two series of one pod: the larger value (with its labels), every member."""
        larger = self if self.value >= other.value else other
        return Sample(larger.value, larger.labels, self.members | other.members)


def _bounded(labels: Mapping[str, Any]) -> dict[str, str]:
    """Labels kept as evidence: few, short, printable."""
    kept = {}
    for key in sorted(labels)[:MAX_LABELS]:
        value = str(labels[key])
        if len(value) > MAX_LABEL_VALUE:
            value = value[: MAX_LABEL_VALUE - 1] + "…"
        kept[str(key)[:MAX_LABEL_VALUE]] = value.encode("unicode_escape").decode("ascii")
    return kept


def normalize(
    result: Iterable[Mapping[str, Any]], labels: tuple[str, str], members: str | None = None
) -> dict[PodKey, Sample]:
    """An instant vector as {(namespace, pod): sample}, whatever the exporter calls them.

    Series without both labels (a GPU no pod holds, say) are dropped; several series for
    one pod keep the largest value (and its series' labels), and with ``members`` (an
    ``Across`` signal's label) every value of that label among them.
    """
    by_pod: dict[PodKey, Sample] = {}
    namespace_label, pod_label = labels
    for series in result:
        metric = series.get("metric", {})
        namespace, pod = metric.get(namespace_label), metric.get(pod_label)
        if not namespace or not pod:
            continue
        try:
            value = float(series["value"][1])
        except (KeyError, IndexError, TypeError, ValueError):
            continue
        key = (str(namespace), str(pod))
        previous = by_pod.get(key)
        if previous is None or value > previous.value:
            # Evidence labels only for the series that wins: most lose (a pod's other GPUs).
            kept = previous.members if previous is not None else frozenset()
            by_pod[key] = Sample(value, metric, kept)
        member = metric.get(members) if members else None
        if member:
            found = by_pod[key]
            by_pod[key] = Sample(found.value, found.labels, found.members | {str(member)})
    return by_pod


def read(signal: SignalSpec, result: Iterable[Mapping[str, Any]]) -> dict[PodKey, Sample]:
    """A signal's instant vector, by pod."""
    return normalize(result, signal.labels, signal.across.label if signal.across else None)


MAX_MEMBERS_SHOWN = 8


def combine(
    across: Across, samples: Mapping[PodKey, Sample], unit_of: UnitOf
) -> dict[Hashable, tuple[PodKey, Sample]]:
    """An ``Across`` signal's pods, one sample per workload: the distinct members of its
    pods (0 while their values add up to less than the gate), named by the pod with the
    most of them (the first by name among equals). Pods no workload guards are left out."""
    pods: dict[Hashable, list[tuple[PodKey, Sample]]] = {}
    for key, sample in samples.items():
        unit = unit_of(key)
        if unit is not None:
            pods.setdefault(unit, []).append((key, sample))
    combined: dict[Hashable, tuple[PodKey, Sample]] = {}
    for unit, found in pods.items():
        members = frozenset().union(*(sample.members for _, sample in found))
        gated = sum(sample.value for _, sample in found) >= across.gate
        key, most = min(found, key=lambda pair: (-len(pair[1].members), pair[0]))
        names = sorted(pod for (_, pod), _ in found)
        shown = ",".join(names[:MAX_MEMBERS_SHOWN]) + (
            "…" if len(names) > MAX_MEMBERS_SHOWN else ""
        )
        labels = {**most.labels, "pods": shown, across.label: f"{len(members)} distinct"}
        combined[unit] = (key, Sample(float(len(members)) if gated else 0.0, labels, members))
    return combined


Readings = Mapping[str, Mapping[PodKey, Sample] | None]  # None: the query failed


class Partial(dict[PodKey, Sample]):
    """The samples of a partial answer (a store behind Thanos did not answer): a pod
    missing from it is unseen, not quiet, so its clocks are kept rather than cleared."""


@dataclass
class State:
    """Since when each condition has held, in seconds since the epoch: by (signal, pod),
    or by (signal, workload) for an ``Across`` signal."""

    since: dict[tuple[str, Hashable], float] = field(default_factory=dict)


@dataclass(frozen=True)
class Firing:
    signal: str
    value: float
    labels: Mapping[str, str]
    since: float
    key: PodKey | None = None  # whose: (namespace, pod), or (node, device) for node scope


def step(
    detector: Detector,
    state: State,
    readings: Readings,
    now: float,
    unit_of: UnitOf | None = None,
) -> dict[PodKey, list[Firing]]:
    """Advance the ``for`` clocks to ``now``; return what fires, by pod.

    A signal whose query failed (None) keeps its clocks as they were: missing data neither
    starts nor clears a condition; so does a pod missing from a ``Partial`` answer. An
    ``Across`` signal is combined per workload first (``unit_of``), and its clock is the
    workload's: it fires for the pod with the most.
    """
    last: dict[tuple[str, Hashable], tuple[PodKey, Sample]] = {}
    for signal in detector.signals:
        samples = readings.get(signal.name)
        if samples is None:
            continue
        clocked: Container[Any]
        entries: Iterable[tuple[Hashable, tuple[PodKey, Sample]]]
        if signal.across is not None:
            # Without workloads, each pod is its own: its distinct members, its own gate.
            combined = combine(signal.across, samples, unit_of or (lambda pod: pod))
            clocked, entries = combined, combined.items()
        else:  # each pod is its own clock (no copy: most signals read every pod)
            clocked = samples
            entries = ((pod, (pod, sample)) for pod, sample in samples.items())
        if not isinstance(samples, Partial):
            for key in [k for k in state.since if k[0] == signal.name and k[1] not in clocked]:
                del state.since[key]
        partial = isinstance(samples, Partial)
        for whose, (pod, sample) in entries:
            clock = (signal.name, whose)
            if signal.holds(sample.value):
                state.since.setdefault(clock, now)
                last[clock] = (pod, sample)
            elif not partial:  # a workload seen in part (Across) may hold in what is unseen
                state.since.pop(clock, None)

    firing: dict[PodKey, list[Firing]] = {}
    by_name = {signal.name: signal for signal in detector.signals}
    for clock, since in state.since.items():
        signal = by_name[clock[0]]
        seen = last.get(clock)
        if seen is None or now - since < signal.for_seconds:
            continue
        pod, sample = seen
        firing.setdefault(pod, []).append(
            Firing(signal.name, sample.value, _bounded(sample.labels), since, pod)
        )
    return firing


@dataclass(frozen=True)
class Decision:
    """A trip: the rule that held and the signals behind it."""

    rule: str
    signals: tuple[Firing, ...]


def predates(decision: Decision, detector: Detector, moment: float, now: float) -> bool:
    """The decision rests only on evidence from before ``moment`` (an admin's reset):
    each of its signals has held since before then, and its lookback window (and ``for``)
    still reaches back past it. A signal that cleared and holds anew, or whose window now
    holds only data from after ``moment``, is evidence of its own."""
    specs = {signal.name: signal for signal in detector.signals}
    for firing in decision.signals:
        spec = specs.get(firing.signal)
        if spec is None or firing.since >= moment:
            return False
        if now - moment >= spec.lookback_seconds + spec.for_seconds:
            return False
    return True


def decide(detector: Detector, firing: Iterable[Firing]) -> Decision | None:
    """Whether these firing signals (of one pod, or one workload's pods) trip the breaker."""
    by_name: dict[str, Firing] = {}
    for f in firing:
        if f.signal not in by_name or f.value > by_name[f.signal].value:
            by_name[f.signal] = f
    if detector.any_critical:
        critical = [f for f in by_name.values() if detector.signal(f.signal).severity == "critical"]
        if critical:
            return Decision(f"critical:{critical[0].signal}", tuple(critical))
    for rule in detector.rules:
        if rule.all_of and all(name in by_name for name in rule.all_of):
            return Decision(rule.name, tuple(by_name[n] for n in rule.all_of))
        held = [by_name[n] for n in rule.any_of if n in by_name]
        if rule.any_of and held:
            return Decision(rule.name, tuple(held))
    return None


def decide_all(
    detector: Detector, firing: Mapping[PodKey, list[Firing]], unit_of: Callable[[PodKey], Unit]
) -> dict[Unit, Decision]:
    """Combine what fires per unit (a pod, or a workload's pods) and decide each."""
    grouped: dict[Unit, list[Firing]] = {}
    for pod, fires in firing.items():
        grouped.setdefault(unit_of(pod), []).extend(fires)
    decisions = {}
    for unit, fires in grouped.items():
        decision = decide(detector, fires)
        if decision is not None:
            decisions[unit] = decision
    return decisions


def decide_with_nodes(
    detector: Detector,
    firing: Mapping[PodKey, list[Firing]],
    unit_of: Callable[[PodKey], Unit | None],
    units_on_node: Mapping[str, Iterable[Unit]],
) -> dict[Unit, Decision]:
    """Like ``decide_all``, with node-scoped signals counted for every unit on that node.

    A GPU busy that no pod was allocated (``unallocated-gpu-activity``) names a node, not a
    pod: a process escaped its allocation there. Each guarded workload with a pod on the
    node is a suspect, and the signal joins whatever its own pods fire.
    """
    grouped: dict[Unit, list[Firing]] = {}
    for key, fires in firing.items():
        pod_fires = [f for f in fires if detector.signal(f.signal).scope == "pod"]
        node_fires = [f for f in fires if detector.signal(f.signal).scope == "node"]
        unit = unit_of(key) if pod_fires else None
        if unit is not None:
            grouped.setdefault(unit, []).extend(pod_fires)
        for suspect in units_on_node.get(key[0], ()) if node_fires else ():
            grouped.setdefault(suspect, []).extend(node_fires)
    decisions = {}
    for unit, fires in grouped.items():
        decision = decide(detector, fires)
        if decision is not None:
            decisions[unit] = decision
    return decisions
