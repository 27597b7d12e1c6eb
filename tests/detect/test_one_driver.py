"""One detection driver: the same recorded series, through a real Prometheus, decided by
the live path (an instant query per signal at each step, pods mapped to workloads and
nodes as the operator's indexes map them) and by `breaker backtest` (a range query per
signal, the mapping from kube-state-metrics) give the same trips.

The recording holds what tells the two apart if they drift: a job whose attack is spread
over two pods (a workload is the unit), a process that escaped its allocation on a node
(a node-scoped signal), a pod without an owner, and benign twins beside each.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from breaker.api.policy import BreakerPolicySpec
from breaker.detect import backtest, driver, engine, live
from breaker.detect.policy_file import load as load_policy
from breaker.detect.prom import Prom
from breaker_tooling.sim import openmetrics
from breaker_tooling.sim.scenario import Scenario

STEP = 15.0
RECORDING = Scenario.model_validate(
    {
        "name": "one-driver",
        "duration": "75m",
        "interval": "15s",
        "start": "2026-03-01T00:00:00Z",
        "pods": [
            # A job whose two pods each show one weak signal: the first a busy GPU that
            # makes no progress, the second an egress spike. Neither pod trips alone; the
            # job does, on the policy's idle-and-leaking rule (a workload is the unit).
            {
                "namespace": "agents",
                "name": "spread-0",
                "node": "gpu-node-0",
                "owner": {"kind": "Job", "name": "spread"},
                "timeline": [{"at": "0m", "do": "train-mixed"}, {"at": "40m", "do": "rollout"}],
            },
            {
                "namespace": "agents",
                "name": "spread-1",
                "node": "gpu-node-0",
                "owner": {"kind": "Job", "name": "spread"},
                "timeline": [
                    {"at": "0m", "do": "train-mixed"},
                    {"at": "53m", "do": "checkpoint-upload"},
                ],
            },
            {
                "namespace": "agents",
                "name": "escaped-0",
                "node": "gpu-node-2",
                "gpus": 4,
                "owner": {"kind": "TrainingJob", "name": "escaped"},
                "timeline": [
                    {"at": "0m", "do": "train-mixed"},
                    {"at": "52m", "do": "mine-unallocated-gpus"},
                ],
            },
            {
                "namespace": "agents",
                "name": "neighbour-0",
                "node": "gpu-node-3",
                "owner": {"kind": "Job", "name": "neighbour"},
                "timeline": [{"at": "0m", "do": "train-mixed"}],
            },
            {
                "namespace": "solo",
                "name": "bare",
                "node": "gpu-node-1",
                "timeline": [
                    {"at": "0m", "do": "train-mixed"},
                    {"at": "48m", "do": "miner-pool-egress"},
                ],
            },
            {
                "namespace": "solo",
                "name": "calm",
                "node": "gpu-node-1",
                "timeline": [{"at": "0m", "do": "train-fp32"}],
            },
        ],
    }
)


def detector() -> engine.Detector:
    """The default policy, a weak-signals rule, and the node-scoped signal."""
    found = engine.compile_policy(load_policy(None))
    extra = engine.compile_policy(
        BreakerPolicySpec.model_validate(
            {
                "signals": [
                    {
                        "name": "stray-gpu",
                        "preset": "unallocated-gpu-activity",
                        "severity": "critical",
                    }
                ]
            }
        )
    )
    return dataclasses.replace(found, signals=found.signals + extra.signals)


def live_trips(
    prom: Prom, found: engine.Detector, start: float, end: float
) -> dict[tuple[str, str], tuple[str, float]]:
    """What the operator's loop would decide, step by step, from instant queries; the
    pods' workloads and nodes as its indexes know them (the scenario, not kube-state-metrics)."""
    owner = {
        (p.namespace, p.name): f"{p.owner.kind}/{p.owner.name}" if p.owner else p.name
        for p in RECORDING.pods
    }

    def unit_of(pod: engine.PodKey) -> tuple[str, str] | None:
        return (pod[0], owner[pod]) if pod in owner else None

    def units_on_node() -> dict[str, set[tuple[str, str]]]:
        found_on: dict[str, set[tuple[str, str]]] = {}
        for p in RECORDING.pods:
            found_on.setdefault(p.node, set()).add((p.namespace, owner[(p.namespace, p.name)]))
        return found_on

    state = engine.State()
    trips: dict[tuple[str, str], tuple[str, float]] = {}
    stamp = start
    while stamp <= end + 1e-6:
        readings, errors, _ = live.read(prom, found, stamp)
        assert not errors
        _, decisions = driver.tick(found, state, readings, stamp, unit_of, units_on_node)
        for unit, decision in decisions.items():
            trips.setdefault(unit, (decision.rule, stamp))
        stamp += STEP
    return trips


def test_live_and_backtest_decide_the_same_trips(tmp_path: Path) -> None:
    series = tmp_path / "recording.om"
    openmetrics.write_file(RECORDING, series)
    found = detector()
    first, last = backtest.series_range(series)
    with backtest.temporary_prometheus(series, lambda _m: None) as url:
        prom = Prom(url, timeout_seconds=60)
        report = backtest.evaluate(found, prom, first + found.lookback_seconds, last, STEP)
        live = live_trips(prom, found, report.start, report.end)

    backtested = {(t.namespace, t.workload or t.pod): (t.rule, t.at) for t in report.trips}
    assert backtested == live
    # And the recording shows what it is for: each kind of unit trips, no benign twin does.
    assert set(live) == {
        ("agents", "Job/spread"),
        ("agents", "TrainingJob/escaped"),
        ("solo", "bare"),
    }
    assert live[("agents", "TrainingJob/escaped")][0] == "critical:stray-gpu"
    assert live[("agents", "Job/spread")][0] == "idle-and-leaking"
    names = {(t.namespace, t.workload): t.pod for t in report.trips}
    assert names[("agents", "TrainingJob/escaped")] == "escaped-0"
