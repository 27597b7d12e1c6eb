"""Evidence: what fired, with values and where, bounded in size."""

from __future__ import annotations

import datetime as dt
import json

from breaker.actions.evidence import MAX_PODS, append, capture
from breaker.api.breaker import MAX_EVIDENCE, Evidence
from breaker.detect.engine import Decision, Detector, Firing, SignalSpec

AT = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)
DETECTOR = Detector(
    (
        SignalSpec(
            "mining", "max by (namespace, pod) (x)", ("namespace", "pod"), ">", 0, 0, "critical", 0
        ),
    ),
    (),
)


def test_a_record_names_the_rule_signals_values_pods_and_gpus() -> None:
    decision = Decision(
        "critical:mining", (Firing("mining", 0.93, {"namespace": "a", "pod": "rl-0"}, 0),)
    )
    record = capture(
        decision, DETECTOR, [{"name": "rl-0", "node": "gpu-node-0", "gpus": ["GPU-1"]}], AT
    )
    Evidence.model_validate(record)
    assert record["rule"] == "critical:mining"
    assert record["signals"][0] | {"labels": None} == {
        "name": "mining",
        "query": "max by (namespace, pod) (x)",
        "value": 0.93,
        "pod": "rl-0",
        "labels": None,
    }
    assert record["pods"] == [{"name": "rl-0", "node": "gpu-node-0", "gpus": ["GPU-1"]}]
    assert "truncated" not in record


def test_huge_inputs_are_bounded_and_flagged() -> None:
    decision = Decision("r", (Firing("mining", 1.0, {}, 0),))
    pods = [
        {"name": f"p-{i}", "node": "n", "gpus": [f"GPU-{j}" for j in range(64)]}
        for i in range(5000)
    ]
    record = capture(decision, DETECTOR, pods, AT)
    assert len(record["pods"]) == MAX_PODS
    assert all(len(p["gpus"]) <= 16 for p in record["pods"])
    assert record["truncated"] is True
    assert len(json.dumps(record)) < 64_000


def test_the_history_keeps_the_latest() -> None:
    history: list[dict[str, object]] = []
    for index in range(MAX_EVIDENCE + 5):
        history = append(history, {"time": str(index)})
    assert len(history) == MAX_EVIDENCE
    assert history[-1] == {"time": str(MAX_EVIDENCE + 4)}
