"""The operator's own metrics, served at /metrics (prometheus-client).

One registry for the process; the loop records into it, ``serve`` exposes it. Labels are
bounded by what admins create (policies, breakers), never by what workloads emit.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry()

BREAKER_STATE = Gauge(
    "breaker_state",
    "1 for the state each breaker is in (Closed, Open, HalfOpen, Locked, ForcedOpen, Disabled).",
    ["namespace", "breaker", "policy", "state"],
    registry=REGISTRY,
)
SIGNALS_UNKNOWN = Gauge(
    "breaker_signals_unknown",
    "1 while a breaker cannot read its signals (Prometheus unreachable or refusing).",
    ["namespace", "breaker", "policy"],
    registry=REGISTRY,
)
TRIPS = Counter(
    "breaker_trips_total",
    "Trips, by the policy and the signals that fired.",
    ["policy", "signal"],
    registry=REGISTRY,
)
TIME_TO_CONTAIN = Histogram(
    "breaker_time_to_contain_seconds",
    "From the evaluation that saw a trip to its containment actions done.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)
EVALUATION_SECONDS = Histogram(
    "breaker_evaluation_duration_seconds",
    "One evaluation of one policy: its queries and the decisions.",
    ["policy"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
QUERIES = Gauge(
    "breaker_queries_per_evaluation",
    "Prometheus queries the latest evaluation of a policy made (one per signal).",
    ["policy"],
    registry=REGISTRY,
)
PROMETHEUS_ERRORS = Counter(
    "breaker_prometheus_errors_total",
    "Signal queries that failed (unreachable, timed out, refused).",
    ["policy", "signal"],
    registry=REGISTRY,
)
ACTIONS = Counter(
    "breaker_actions_total",
    "Actions applied or undone, by result.",
    ["action", "operation", "result"],
    registry=REGISTRY,
)
GUARDED = Gauge("breaker_guarded_workloads", "Breakers the operator keeps.", registry=REGISTRY)
API_ERRORS = Counter(
    "breaker_api_errors_total",
    "API calls answered 409 (changed meanwhile: redone next pass) or 429 (throttled: retried).",
    ["code"],
    registry=REGISTRY,
)
ACTIVE = Gauge(
    "breaker_operator_active",
    "1 once this operator acts; 0 while it stands by behind a peer (kopf peering).",
    registry=REGISTRY,
)


def serve(port: int, address: str = "127.0.0.1") -> None:
    start_http_server(port, addr=address, registry=REGISTRY)


def set_state(
    namespace: str, breaker: str, policy: str, state: str | None, signals: str | None = None
) -> None:
    for known in ("Closed", "Open", "HalfOpen", "Locked", "ForcedOpen", "Disabled"):
        BREAKER_STATE.labels(namespace, breaker, policy, known).set(1 if known == state else 0)
    SIGNALS_UNKNOWN.labels(namespace, breaker, policy).set(1 if signals == "Unknown" else 0)


def forget(namespace: str, breaker: str, policy: str) -> None:
    for known in ("Closed", "Open", "HalfOpen", "Locked", "ForcedOpen", "Disabled"):
        with contextlib.suppress(KeyError):
            BREAKER_STATE.remove(namespace, breaker, policy, known)
    with contextlib.suppress(KeyError):
        SIGNALS_UNKNOWN.remove(namespace, breaker, policy)
