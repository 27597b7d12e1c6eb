"""The operator's own metrics, served at /metrics (prometheus-client).

One registry for the process; the loop records into it, ``serve`` exposes it. Labels are
bounded by what admins create (policies, breakers), never by what workloads emit.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry()


class BreakerStates(Collector):
    """``breaker_state`` and ``breaker_signals_unknown``: one series each per Breaker.

    Kept as one tuple per Breaker and made into samples only when scraped. A labelled Gauge
    child per Breaker and state (six states, and the signals gauge) cost 53 MB and a second
    of CPU per scrape, holding the interpreter, at 10,000 Breakers; and a Breaker deleted
    kept its series, its last state alerting for ever.
    """

    def __init__(self) -> None:
        # (namespace, breaker) -> (policy, state, signals unknown)
        self.breakers: dict[tuple[str, str], tuple[str, str, bool]] = {}

    def set(self, namespace: str, breaker: str, policy: str, state: str, unknown: bool) -> None:
        self.breakers[namespace, breaker] = (policy, state, unknown)

    def keep_only(self, present: Collection[tuple[str, str]]) -> None:
        """Forget the Breakers that are gone."""
        for key in [k for k in self.breakers if k not in present]:
            del self.breakers[key]

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "breaker_state",
            "1 for the state each breaker is in (Closed, Open, HalfOpen, Locked, ForcedOpen,"
            " Disabled): one series per breaker, labelled with its state.",
            labels=["namespace", "breaker", "policy", "state"],
        )
        unknown = GaugeMetricFamily(
            "breaker_signals_unknown",
            "1 while a breaker cannot read its signals (Prometheus unreachable or refusing).",
            labels=["namespace", "breaker", "policy"],
        )
        for (namespace, breaker), (policy, now, blind) in list(self.breakers.items()):
            state.add_metric([namespace, breaker, policy, now], 1)
            unknown.add_metric([namespace, breaker, policy], 1 if blind else 0)
        yield state
        yield unknown


STATES = BreakerStates()
REGISTRY.register(STATES)
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
QUEUE_PASSES = Counter(
    "breaker_queue_passes_total",
    "Passes of the TrainingJob queue over every job (admissions, holds, hand-offs).",
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
    if state is not None:
        STATES.set(namespace, breaker, policy, state, signals == "Unknown")
