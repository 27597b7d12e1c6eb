"""Which workload a pod belongs to, through ownerReferences. Pure.

A pod's controller is its workload (a StatefulSet, a PyTorchJob) or an intermediate owner
that has one in turn: a Job owned by a TrainingJob or a JobSet, a JobSet owned by a
Kubeflow TrainJob, a RayCluster owned by a RayJob, a ReplicaSet owned by a Deployment.
The operator keeps the intermediate owners in indexes, so this walk costs no API call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# Owners that stand between a pod and the workload an admin would name.
INTERMEDIATE = frozenset({"Job", "ReplicaSet", "JobSet", "RayCluster"})
MAX_DEPTH = 4


@dataclass(frozen=True)
class OwnerRef:
    kind: str
    name: str
    uid: str


WorkloadKey = tuple[str, str, str]  # (namespace, kind, name)


def workload_of(
    namespace: str,
    owner: OwnerRef | None,
    owner_of: Callable[[str, str, str], OwnerRef | None],
    guarded_kinds: frozenset[str],
) -> WorkloadKey | None:
    """The guarded workload at the top of a pod's owner chain, or None.

    ``owner_of(namespace, kind, name)`` returns an intermediate owner's own controller.
    The walk stops at the first guarded kind that has no guarded owner above it, so a Job
    run by a TrainingJob counts as the TrainingJob, and a bare Job counts as itself.
    """
    found: WorkloadKey | None = None
    current = owner
    for _ in range(MAX_DEPTH):
        if current is None:
            break
        if current.kind in guarded_kinds:
            found = (namespace, current.kind, current.name)
        if current.kind not in INTERMEDIATE:
            break
        current = owner_of(namespace, current.kind, current.name)
    return found
