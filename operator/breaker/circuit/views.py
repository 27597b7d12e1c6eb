"""What the breaker loop sees of a workload and of a pod: plain values, read from the
cluster's watches by the shell (``controllers/inventory.py``) and handed to the core and to
the actuators, which never touch kopf's bodies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from breaker.circuit.ownership import OwnerRef


@dataclass(frozen=True)
class WorkloadView:
    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str
    labels: dict[str, str]
    paused: bool
    paused_by: str | None
    pause_field: Any  # the value at the kind's pause path, as found
    deleting: bool
    body: dict[str, Any] = field(repr=False, compare=False)  # metadata and the pause field


@dataclass(frozen=True)
class PodView:
    namespace: str
    name: str
    uid: str
    owner: OwnerRef | None
    labels: dict[str, str]
    node: str | None
    gpus: int
    phase: str
    deleting: bool
    ip: str | None = None  # status.podIP
    service_account: str | None = None  # spec.serviceAccountName
    host_network: bool = False
    kept: str | None = None  # the breaker.dev/egress-kept annotation, on a quarantined pod
