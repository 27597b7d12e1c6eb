"""What one operator serves: the breakers, the TrainingJob queue, or both (the default).

A large cluster shards the breakers across operators by namespace, each shard a peering
group of its own. The TrainingJob queue cannot be sharded: it hands one cluster's free
GPUs to one priority order, so exactly one operator serves it, cluster-wide. The parts an
operator does not serve are neither started, indexed nor watched (their handlers are
dropped before kopf starts), and a shard indexes only its namespaces' objects (kopf still
watches what another shard needs, and keeps a small record of each object it sees).

A shard that names its namespaces exactly watches each of them; one with globs (the
"rest" shard above all, `*` less the others) watches cluster-wide and keeps only its own:
a watch per namespace per kind would be thousands of connections on a large cluster.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

PARTS = ("breakers", "queue")
GLOB = frozenset("*?[],!")


class ServingError(ValueError):
    """A combination of parts and namespaces that cannot work."""


@dataclass(frozen=True)
class Serving:
    """The parts this operator runs and the namespace patterns of its shard (kopf's syntax;
    none: every namespace). Made once by `breaker run` and handed to the controllers in
    kopf's memo (see controllers/config.py)."""

    parts: frozenset[str] = frozenset(PARTS)
    namespaces: tuple[str, ...] = ()
    shard: str | None = None  # this shard's name, when sharded

    @classmethod
    def of(cls, parts: Sequence[str], namespaces: Sequence[str], shard: str | None) -> Serving:
        unknown = sorted(set(parts) - set(PARTS))
        if unknown or not parts:
            raise ServingError(
                f"--serve {','.join(parts) or '(empty)'}: name one or more of {', '.join(PARTS)}"
            )
        if "queue" in parts and namespaces:
            raise ServingError(
                "--serve queue with --shard-namespaces: the TrainingJob queue hands the "
                "cluster's free GPUs on in one priority order, so it needs every namespace; "
                "run it in an operator of its own without --shard (--serve queue), and the "
                "shards with --serve breakers"
            )
        if bool(namespaces) != bool(shard):
            raise ServingError(
                "--shard and --shard-namespaces go together: a shard is named (its count in "
                "each ClusterBreakerPolicy's status.shards) and serves the namespaces given"
            )
        return cls(frozenset(parts), tuple(namespaces), shard or None)

    def here(self, namespace: str | None) -> bool:
        """The object is this operator's (cluster-scoped ones are everyone's)."""
        return namespace is None or not self.namespaces or matches(namespace, self.namespaces)

    def breakers(self, namespace: str | None = None) -> bool:
        """This operator serves the breakers (of the namespace, when one is given)."""
        return "breakers" in self.parts and self.here(namespace)

    @property
    def queue(self) -> bool:
        """This operator serves the TrainingJob queue."""
        return "queue" in self.parts

    def watched_namespaces(self) -> list[str] | None:
        """The namespaces kopf should watch one by one, or None: cluster-wide."""
        if self.namespaces and not any(GLOB & set(pattern) for pattern in self.namespaces):
            return list(self.namespaces)
        return None

    def describe(self) -> str:
        parts = " and ".join(p for p in PARTS if p in self.parts)
        where = (
            f"shard {self.shard} ({', '.join(self.namespaces)})"
            if self.shard
            else "every namespace"
        )
        return f"{parts} in {where}"


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
