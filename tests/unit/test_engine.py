"""The detection engine's pure core: normalising, for-clocks, missing data, trip rules."""

from __future__ import annotations

import dataclasses
from typing import Any

from breaker.api.policy import BreakerPolicySpec
from breaker.detect import engine
from breaker.detect.engine import Detector, RuleSpec, SignalSpec


def signal(
    name: str,
    severity: str = "warning",
    for_seconds: float = 0,
    op: str = ">",
    threshold: float = 0,
    scope: str = "pod",
) -> SignalSpec:
    return SignalSpec(
        name, "q", ("namespace", "pod"), op, threshold, for_seconds, severity, 0, scope
    )


def vector(*rows: tuple[dict[str, str], float]) -> list[dict[str, Any]]:
    return [{"metric": labels, "value": [0, str(value)]} for labels, value in rows]


def test_normalize_reads_each_exporters_labels_and_keeps_the_worst_series() -> None:
    hubble = vector(
        ({"source_namespace": "a", "source_pod": "p", "port": "22"}, 1),
        ({"source_namespace": "a", "source_pod": "p", "port": "443"}, 7),
        ({"source_namespace": "a"}, 99),  # no pod: dropped
    )
    result = engine.normalize(hubble, ("source_namespace", "source_pod"))
    assert list(result) == [("a", "p")]
    assert result[("a", "p")].value == 7
    assert result[("a", "p")].labels["port"] == "443"


def test_a_firing_keeps_its_labels_bounded_and_escaped_as_evidence() -> None:
    labels = {
        "namespace": "a",
        "pod": "p",
        "rule": "x\n" * 500,
        "a-path": "C:\\x",
        **{f"k{i}": "v" for i in range(40)},
    }
    samples = engine.normalize(vector((labels, 1)), ("namespace", "pod"))
    assert samples[("a", "p")].labels is labels  # read, not copied: most never fire
    ((hit,),) = engine.step(
        Detector((signal("s"),), ()), engine.State(), {"s": samples}, 0
    ).values()
    assert len(hit.labels) == engine.MAX_LABELS
    assert all(len(v) <= engine.MAX_LABEL_VALUE * 2 for v in hit.labels.values())
    assert "\n" not in "".join(hit.labels.values())
    assert hit.labels["a-path"] == "C:\\\\x"  # escaped once


def test_a_condition_must_hold_for_its_duration() -> None:
    detector = Detector((signal("s", for_seconds=60),), ())
    state = engine.State()
    high = {"s": {("a", "p"): engine.Sample(1.0)}}
    assert engine.step(detector, state, high, 0) == {}
    assert engine.step(detector, state, high, 59) == {}
    fired = engine.step(detector, state, high, 60)
    assert [f.signal for f in fired[("a", "p")]] == ["s"]
    # It stops holding: the clock starts again.
    assert engine.step(detector, state, {"s": {("a", "p"): engine.Sample(0.0)}}, 61) == {}
    assert engine.step(detector, state, high, 62) == {}


def test_missing_data_neither_starts_nor_clears_a_clock() -> None:
    detector = Detector((signal("s", for_seconds=60),), ())
    state = engine.State()
    engine.step(detector, state, {"s": {("a", "p"): engine.Sample(1.0)}}, 0)
    engine.step(detector, state, {"s": None}, 30)  # Prometheus unreachable
    assert state.since == {("s", ("a", "p")): 0}
    fired = engine.step(detector, state, {"s": {("a", "p"): engine.Sample(1.0)}}, 60)
    assert ("a", "p") in fired


def firing(*names: str) -> list[engine.Firing]:
    return [engine.Firing(name, 1.0, {}, 0) for name in names]


def test_a_critical_signal_trips_alone_and_weak_ones_only_together() -> None:
    detector = Detector(
        (signal("mining", "critical"), signal("ssh"), signal("idle")),
        (RuleSpec("tunnel-while-idle", all_of=("ssh", "idle")),),
    )
    assert engine.decide(detector, firing("ssh")) is None
    both = engine.decide(detector, firing("ssh", "idle"))
    assert both is not None
    assert both.rule == "tunnel-while-idle"
    critical = engine.decide(detector, firing("mining"))
    assert critical is not None
    assert critical.rule == "critical:mining"


def test_any_of_rules_and_turning_critical_off() -> None:
    detector = Detector(
        (signal("a", "critical"), signal("b")),
        (RuleSpec("either", any_of=("a", "b")),),
        any_critical=False,
    )
    decision = engine.decide(detector, firing("b"))
    assert decision is not None
    assert decision.rule == "either"


def test_signals_of_a_workloads_pods_combine() -> None:
    detector = Detector(
        (signal("ssh"), signal("idle")), (RuleSpec("both", all_of=("ssh", "idle")),)
    )
    fires = {("a", "job-0"): firing("ssh"), ("a", "job-1"): firing("idle")}
    by_pod = engine.decide_all(detector, fires, lambda pod: pod)
    assert by_pod == {}
    by_job = engine.decide_all(detector, fires, lambda pod: pod[1].rsplit("-", 1)[0])
    assert list(by_job) == ["job"]


def test_compiling_a_policy() -> None:
    spec = BreakerPolicySpec.model_validate(
        {
            "signals": [
                {"name": "m", "preset": "gpu-mining-profile", "for": "3m", "severity": "critical"},
                {"name": "q", "query": "up", "labels": {"namespace": "ns", "pod": "po"}},
                {
                    "name": "t",
                    "preset": "outbound-ssh",
                    "condition": {"operator": ">=", "threshold": 0.5},
                },
            ],
            "trip": {"rules": [{"name": "r", "anyOf": ["q"]}]},
        }
    )
    detector = engine.compile_policy(spec)
    mining, custom, ssh = detector.signals
    assert (mining.for_seconds, mining.severity, mining.operator, mining.threshold) == (
        180,
        "critical",
        ">=",
        0.65,
    )
    assert "DCGM_FI_PROF_DRAM_ACTIVE" in mining.query
    assert (custom.labels, custom.operator, custom.threshold) == (("ns", "po"), ">", 0.0)
    assert (ssh.operator, ssh.threshold) == (">=", 0.5)
    assert detector.rules == (RuleSpec("r", any_of=("q",)),)
    assert detector.lookback_seconds == 660  # outbound-ssh: 10m window + 1m rate


def test_a_node_signal_counts_for_every_workload_on_that_node() -> None:
    detector = Detector(
        (
            signal("stray-gpu", severity="critical", scope="node"),
            signal("pool", severity="critical"),
        ),
        (),
    )
    firing = {
        ("gpu-node-1", "GPU-abc"): [
            engine.Firing("stray-gpu", 97.0, {"Hostname": "gpu-node-1"}, 0)
        ],
    }
    on_node = {"gpu-node-1": ["team-a/rl", "team-b/eval"], "gpu-node-2": ["team-c/other"]}
    decisions = engine.decide_with_nodes(detector, firing, lambda pod: None, on_node)
    assert set(decisions) == {"team-a/rl", "team-b/eval"}
    assert decisions["team-a/rl"].signals[0].signal == "stray-gpu"


# -- a workload is the unit: signals across its pods ------------------------------------

ACROSS = engine.Across("port", gate=20.0)
SPREAD = SignalSpec(
    "spread",
    "q",
    ("source_namespace", "source_pod"),
    ">=",
    100,
    0,
    "critical",
    0,
    across=ACROSS,
)


def fresh_ports(pod: str, ports: range, syn_rate: float) -> list[tuple[dict[str, str], float]]:
    """What the across query returns: a series per pod and fresh port, at the pod's SYN rate."""
    labels = {"source_namespace": "agents", "source_pod": pod}
    return [({**labels, "port": str(port)}, syn_rate) for port in ports]


def job_of(pod: engine.PodKey) -> str | None:
    return "job/rl" if pod[1].startswith("rl-") else None


def test_a_scan_spread_over_eight_pods_is_one_scan() -> None:
    # Each pod probes 25 ports at 3 SYNs a second: under any one pod's thresholds.
    rows = [r for i in range(8) for r in fresh_ports(f"rl-{i}", range(i * 25, i * 25 + 25), 3.0)]
    samples = engine.read(SPREAD, vector(*rows))
    assert samples[("agents", "rl-0")].members == frozenset(str(p) for p in range(25))
    fired = engine.step(Detector((SPREAD,), ()), engine.State(), {"spread": samples}, 0, job_of)
    ((pod, (hit,)),) = fired.items()
    assert hit.value == 200
    assert hit.labels["pods"] == ",".join(f"rl-{i}" for i in range(8))
    assert job_of(pod) == "job/rl"  # named by one of its pods


def test_pods_reaching_the_same_ports_count_them_once() -> None:
    # Sixty-four workers opening their peers' ports at start-up: the same eight ports.
    rows = [r for i in range(64) for r in fresh_ports(f"rl-{i}", range(29500, 29508), 5.0)]
    combined = engine.combine(ACROSS, engine.read(SPREAD, vector(*rows)), job_of)
    assert combined["job/rl"][1].value == 8


def test_the_gate_is_the_pods_summed_rate() -> None:
    rows = [r for i in range(8) for r in fresh_ports(f"rl-{i}", range(i * 25, i * 25 + 25), 2.0)]
    samples = engine.read(SPREAD, vector(*rows))
    assert engine.combine(ACROSS, samples, job_of)["job/rl"][1].value == 0  # 16 < 20
    unguarded = engine.read(SPREAD, vector(*fresh_ports("other-0", range(500), 50.0)))
    assert engine.combine(ACROSS, unguarded, job_of) == {}


def test_a_workloads_clock_runs_on_while_its_pods_take_turns() -> None:
    detector = Detector((dataclasses.replace(SPREAD, for_seconds=60),), ())
    state = engine.State()
    first = engine.read(SPREAD, vector(*fresh_ports("rl-0", range(120), 30.0)))
    second = engine.read(SPREAD, vector(*fresh_ports("rl-1", range(120, 240), 30.0)))
    assert engine.step(detector, state, {"spread": first}, 0, job_of) == {}
    fired = engine.step(detector, state, {"spread": second}, 60, job_of)
    assert list(fired) == [("agents", "rl-1")]
    assert state.since == {("spread", "job/rl"): 0}


def test_without_workloads_each_pod_is_its_own_for_a_signal_across_pods() -> None:
    samples = engine.read(SPREAD, vector(*fresh_ports("rl-0", range(1), 25.0)))
    fired = engine.step(Detector((SPREAD,), ()), engine.State(), {"spread": samples}, 0)
    assert fired == {}  # one port, however fast its SYNs: not a value of 25


def test_a_decision_predates_a_reset_while_its_windows_reach_back_past_it() -> None:
    windowed = dataclasses.replace(signal("w", for_seconds=30), lookback_seconds=300)
    detector = Detector((windowed, signal("now")), ())
    reset_at = 1000.0

    def decision(*fired: tuple[str, float]) -> engine.Decision:
        return engine.Decision("r", tuple(engine.Firing(n, 1.0, {}, since) for n, since in fired))

    held = decision(("w", 900.0))
    assert engine.predates(held, detector, reset_at, now=1000.0 + 329)
    assert not engine.predates(held, detector, reset_at, now=1000.0 + 330)  # window + for
    assert not engine.predates(decision(("w", 1001.0)), detector, reset_at, now=1002.0)
    # Every signal must predate it: one that held anew is evidence of its own.
    assert not engine.predates(decision(("w", 900.0), ("now", 1001.0)), detector, reset_at, 1002)
    # A signal with no window (an instant value) is spent once read after the reset.
    assert not engine.predates(decision(("now", 900.0)), detector, reset_at, now=1000.0)
