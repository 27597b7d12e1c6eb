"""What one operator serves: the breakers, the TrainingJob queue, or both (the default).

A large cluster shards the breakers across operators by namespace, each shard a peering
group of its own. The TrainingJob queue cannot be sharded: it hands one cluster's free
GPUs to one priority order, so exactly one operator serves it, cluster-wide. The parts an
operator does not serve are neither started nor indexed, and a shard indexes only its
namespaces' objects (kopf still watches what another part or shard needs, and keeps a
small record of each object it sees).

A shard that names its namespaces exactly watches each of them; one with globs (the
"rest" shard above all, `*` less the others) watches cluster-wide and keeps only its own:
a watch per namespace per kind would be thousands of connections on a large cluster.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

PARTS = ("breakers", "queue")
SERVING: set[str] = set(PARTS)
# The namespace patterns of this operator's shard (kopf's syntax); none: every namespace.
NAMESPACES: list[str] = []
SHARD: dict[str, str] = {}  # "name": this shard's name, when sharded
GLOB = frozenset("*?[],!")


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
            "--serve queue with --shard-namespaces: the TrainingJob queue hands the "
            "cluster's free GPUs on in one priority order, so it needs every namespace; run "
            "it in an operator of its own without --shard (--serve queue), and the shards "
            "with --serve breakers"
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


def matches(namespace: str, patterns: Sequence[str]) -> bool:
    """kopf's pattern syntax: any pattern matches; within one, comma-separated globs, the
    first to include and each ``!glob`` after it to exclude."""
    for pattern in patterns:
        globs = [g.strip() for g in pattern.split(",") if g.strip()]
        if not globs or not fnmatch.fnmatchcase(namespace, globs[0]):
            continue
        excluded = (fnmatch.fnmatchcase(namespace, g[1:]) for g in globs[1:] if g[0] == "!")
        if not any(excluded):
            return True
    return False


def watched_namespaces() -> list[str] | None:
    """The namespaces kopf should watch one by one, or None: cluster-wide."""
    if NAMESPACES and not any(GLOB & set(pattern) for pattern in NAMESPACES):
        return list(NAMESPACES)
    return None


def here(namespace: str | None = None, **_: Any) -> bool:
    """A kopf filter: the object is this operator's (cluster-scoped ones are everyone's)."""
    return namespace is None or not NAMESPACES or matches(namespace, NAMESPACES)


def breakers(namespace: str | None = None, **_: Any) -> bool:
    """A kopf filter: this operator serves the breakers, of the object's namespace."""
    return "breakers" in SERVING and here(namespace)


def queue(**_: Any) -> bool:
    """A kopf filter: this operator serves the TrainingJob queue."""
    return "queue" in SERVING
