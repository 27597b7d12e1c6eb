"""What `breaker run` tells the controllers, handed to them in kopf's memo (no module
globals): where Prometheus is by default, the operator's own namespace, the peering lease."""

from __future__ import annotations

from dataclasses import dataclass

import kopf


@dataclass(frozen=True)
class OperatorConfig:
    prometheus_url: str = "http://127.0.0.1:9090"  # a policy's own prometheus.url wins
    operator_namespace: str = "breaker-system"  # where webhook Secrets may live
    peering_lifetime: int = 15  # seconds a peer's lease lasts (kopf peering)


def of(memo: kopf.Memo) -> OperatorConfig:
    """The configuration in the operator's memo (the defaults where none was given)."""
    found = memo.get("config")
    return found if isinstance(found, OperatorConfig) else OperatorConfig()
