"""The evidence a trip keeps: what fired, the values, the pods, nodes and GPUs. Pure.

Bounded so a Breaker's status stays far below etcd's object size limit whatever a query
returned: a fixed number of signals and pods, label values cut and escaped by the engine,
and a ``truncated`` flag when anything was left out.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from breaker.api.breaker import MAX_EVIDENCE
from breaker.detect.engine import Decision, Detector

MAX_SIGNALS = 16
MAX_PODS = 64
MAX_GPUS = 16


def capture(
    decision: Decision,
    detector: Detector,
    pods: Iterable[Mapping[str, Any]],  # {"name", "node", "gpus": [uuid, ...]}
    at: dt.datetime,
) -> dict[str, Any]:
    """One evidence record, in the shape of the Breaker's status.evidence items."""
    signals = []
    for firing in decision.signals[:MAX_SIGNALS]:
        labels = dict(firing.labels)
        signals.append(
            {
                "name": firing.signal,
                "query": detector.signal(firing.signal).query,
                "value": firing.value,
                "pod": labels.get("pod") or labels.get("source_pod") or labels.get("k8s_pod_name"),
                "labels": labels,
            }
        )
    all_pods = list(pods)
    kept = [
        {
            "name": pod["name"],
            "node": pod.get("node"),
            "gpus": list(pod.get("gpus") or [])[:MAX_GPUS],
        }
        for pod in all_pods[:MAX_PODS]
    ]
    truncated = len(decision.signals) > MAX_SIGNALS or len(all_pods) > MAX_PODS
    record: dict[str, Any] = {
        "time": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "rule": decision.rule[:63],
        "signals": signals,
        "pods": kept,
    }
    if truncated:
        record["truncated"] = True
    return record


def append(history: list[dict[str, Any]] | None, record: dict[str, Any]) -> list[dict[str, Any]]:
    """The evidence list with ``record`` added, oldest dropped past the limit."""
    return [*(history or []), record][-MAX_EVIDENCE:]
