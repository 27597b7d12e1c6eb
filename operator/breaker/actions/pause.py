"""Pausing a workload, per kind, and undoing exactly that. Pure.

Each adapter turns a workload object into the patch that pauses it and a record of what
it found, and turns that record back into the patch that restores it. A workload that
was already paused when the breaker tripped is recorded as such, so a reset leaves it
paused: the breaker undoes its own change and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from breaker.constants import GROUP, TRAININGJOBS, VERSION


@dataclass(frozen=True)
class Kind:
    """Where a kind keeps its pause switch."""

    group: str
    version: str
    plural: str
    path: tuple[str, ...]  # the field under the object that pauses it
    scale: bool = False  # paused by scaling to zero (the path holds the replica count)


KINDS: dict[str, Kind] = {
    "TrainingJob": Kind(GROUP, VERSION, TRAININGJOBS, ("spec", "suspend")),
    "Job": Kind("batch", "v1", "jobs", ("spec", "suspend")),
    "JobSet": Kind("jobset.x-k8s.io", "v1alpha2", "jobsets", ("spec", "suspend")),
    "TrainJob": Kind("trainer.kubeflow.org", "v1alpha1", "trainjobs", ("spec", "suspend")),
    "RayJob": Kind("ray.io", "v1", "rayjobs", ("spec", "suspend")),
    "RayCluster": Kind("ray.io", "v1", "rayclusters", ("spec", "suspend")),
    **{
        kind: Kind("kubeflow.org", "v1", f"{kind.lower()}s", ("spec", "runPolicy", "suspend"))
        for kind in ("PyTorchJob", "TFJob", "MPIJob", "XGBoostJob", "PaddleJob", "JAXJob")
    },
    "Deployment": Kind("apps", "v1", "deployments", ("spec", "replicas"), scale=True),
    "StatefulSet": Kind("apps", "v1", "statefulsets", ("spec", "replicas"), scale=True),
}


def _get(obj: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    current: Any = obj
    for key in path:
        if not isinstance(current, Mapping) or key not in current:
            return None
        current = current[key]
    return current


def _patch(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A merge patch setting ``path`` to ``value``."""
    patch: dict[str, Any] = {}
    cursor = patch
    for key in path[:-1]:
        cursor = cursor.setdefault(key, {})
    cursor[path[-1]] = value
    return patch


def field_value(kind: str, obj: Mapping[str, Any]) -> Any:
    """The value at the kind's pause switch, as found (None when unset)."""
    return _get(obj, KINDS[kind].path)


def with_field(kind: str, value: Any) -> dict[str, Any]:
    """A fragment holding only the pause switch: what ``is_paused`` and ``pause`` read."""
    return _patch(KINDS[kind].path, value)


def is_paused(kind: str, obj: Mapping[str, Any]) -> bool:
    adapter = KINDS[kind]
    value = _get(obj, adapter.path)
    return value == 0 if adapter.scale else value is True


def pause(kind: str, obj: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the merge patch that pauses it, the record a resume needs)."""
    adapter = KINDS[kind]
    before = _get(obj, adapter.path)
    if adapter.scale:
        # An unset replica count means 1 to the API server.
        record = {"field": ".".join(adapter.path), "was": 1 if before is None else before}
        return _patch(adapter.path, 0), record
    record = {"field": ".".join(adapter.path), "was": bool(before)}
    return _patch(adapter.path, True), record


def resume(kind: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch that puts back what ``pause`` found."""
    adapter = KINDS[kind]
    return _patch(adapter.path, record["was"])


def repause_needed(kind: str, obj: Mapping[str, Any]) -> bool:
    """Someone unpaused a workload the breaker holds paused: pause it again."""
    return not is_paused(kind, obj)
