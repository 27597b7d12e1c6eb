"""What one operator serves: the breakers, the TrainingJob queue, or both (the default).

A large cluster shards the breakers across operators by namespace, each shard a peering
group of its own. The TrainingJob queue cannot be sharded: it hands one cluster's free
GPUs to one priority order, so exactly one operator serves it, cluster-wide. The parts an
operator does not serve are neither started nor indexed (kopf may still watch a resource
another part needs, but keeps nothing of it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

PARTS = ("breakers", "queue")
SERVING: set[str] = set(PARTS)
# The namespace patterns of this operator's shard (kopf's syntax); none: every namespace.
NAMESPACES: list[str] = []
SHARD: dict[str, str] = {}  # "name": this shard's name, when sharded


class ServingError(ValueError):
    """A combination of parts and namespaces that cannot work."""


def configure(parts: Sequence[str], namespaces: Sequence[str], shard: str | None) -> None:
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise ServingError(
            f"--serve {','.join(parts) or '(empty)'}: name one or more of {', '.join(PARTS)}"
        )
    if "queue" in parts and namespaces:
        raise ServingError(
            "--serve queue with --shard-namespaces: the TrainingJob queue hands the cluster's free "
            "GPUs on in one priority order, so it needs every namespace; run it in an operator "
            "of its own without --shard (--serve queue), and the shards with --serve breakers"
        )
    if bool(namespaces) != bool(shard):
        raise ServingError(
            "--shard and --shard-namespaces go together: a shard is named (its count in each "
            "ClusterBreakerPolicy's status.shards) and serves the namespaces given"
        )
    SERVING.clear()
    SERVING.update(parts)
    NAMESPACES[:] = list(namespaces)
    SHARD.clear()
    if shard:
        SHARD["name"] = shard


def shard() -> str | None:
    return SHARD.get("name")


def breakers(**_: Any) -> bool:
    """A kopf filter: this operator serves the breakers."""
    return "breakers" in SERVING


def queue(**_: Any) -> bool:
    """A kopf filter: this operator serves the TrainingJob queue."""
    return "queue" in SERVING


def cluster_wide(**_: Any) -> bool:
    """A kopf filter: this operator serves every namespace (it is not a shard)."""
    return not NAMESPACES
