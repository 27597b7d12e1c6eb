"""What the operator keeps of an object before kopf holds it: of the kinds it only indexes,
the fields its index functions and handler filters read; of every kind, no managedFields
and no ``last-applied-configuration`` (nothing here reads them, and on a pod they are
most of its size).

A realistic pod (two containers, twenty environment variables, volumes, managedFields) is
about 9 KB of JSON and a few times that as Python objects; what the indexes read of it is
a tenth of that. ``tests/unit/test_trimming.py`` runs every index function and filter on a
realistic object and on its trimmed copy and requires the same answers: a field read here
and not kept fails there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"

# Each key kept, with None for its whole value or a Keep for the keys kept of it (of each
# item, for a list).
Keep = Mapping[str, "Keep | None"]

METADATA: Keep = dict.fromkeys(
    (
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "labels",
        "annotations",
        "ownerReferences",
    )
)
CONDITIONS: Keep = dict.fromkeys(("type", "status", "reason"))
CONTAINER: Keep = dict.fromkeys(("name", "resources"))

POD: Keep = {
    "apiVersion": None,
    "kind": None,
    "metadata": METADATA,
    "spec": {
        "nodeName": None,
        "serviceAccountName": None,
        "hostNetwork": None,
        "containers": CONTAINER,
        "initContainers": CONTAINER,
    },
    "status": {"phase": None, "podIP": None, "conditions": CONDITIONS},
}
NODE: Keep = {
    "apiVersion": None,
    "kind": None,
    "metadata": METADATA,
    "spec": {"unschedulable": None, "taints": None},
    "status": {"conditions": CONDITIONS, "allocatable": None, "capacity": None},
}
# A Job's pod template is most of it; a Job is read for its suspend switch and conditions.
JOB: Keep = {
    "apiVersion": None,
    "kind": None,
    "metadata": METADATA,
    "spec": dict.fromkeys(("suspend", "parallelism", "completions")),
    "status": None,
}
# A ReplicaSet is read for its owner only.
OWNED: Keep = {"apiVersion": None, "kind": None, "metadata": METADATA}
# A Deployment or StatefulSet is read for its replica count (its pause switch).
SCALED: Keep = {"apiVersion": None, "kind": None, "metadata": METADATA, "spec": {"replicas": None}}

KEPT: dict[tuple[str, str], Keep] = {
    ("", "pods"): POD,
    ("", "nodes"): NODE,
    ("batch", "jobs"): JOB,
    ("apps", "replicasets"): OWNED,
    ("apps", "deployments"): SCALED,
    ("apps", "statefulsets"): SCALED,
}


def keep(value: Any, kept: Keep) -> None:
    """Drop, in place, what ``kept`` does not name."""
    if isinstance(value, list):
        for item in value:
            keep(item, kept)
        return
    if not isinstance(value, dict):
        return
    for key in list(value):
        if key not in kept:
            del value[key]
        elif (inner := kept[key]) is not None:
            keep(value[key], inner)


def unread(body: dict[str, Any]) -> None:
    """Drop, in place, what nothing reads of any object."""
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        metadata.pop("managedFields", None)
        annotations = metadata.get("annotations")
        if isinstance(annotations, dict):
            annotations.pop(LAST_APPLIED, None)


def trim(group: str, plural: str, body: dict[str, Any]) -> None:
    unread(body)
    kept = KEPT.get((group, plural))
    if kept is not None:
        keep(body, kept)
