"""A distributed Prometheus beside the local one, as clusters that run Thanos have it: a
second Prometheus replica scraping the same targets, a Thanos sidecar beside each (its
StoreAPI over the replica's TSDB), and a Thanos querier over both that deduplicates their
series by the ``replica`` external label. Policies and the operator query the querier's
Prometheus API; a test stops a sidecar to see a store go missing."""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPLICA_LABEL = "replica"
REPLICAS = ("a", "b")


@dataclass(frozen=True)
class Sidecar:
    replica: str
    grpc: int
    http: int

    @property
    def name(self) -> str:
        return f"thanos-sidecar-{self.replica}"

    def command(self, thanos: Path, prometheus: str, tsdb: Path) -> list[str]:
        return [
            str(thanos),
            "sidecar",
            f"--prometheus.url={prometheus}",
            f"--tsdb.path={tsdb}",
            f"--grpc-address=127.0.0.1:{self.grpc}",
            f"--http-address=127.0.0.1:{self.http}",
            "--log.level=warn",
        ]

    def ready(self) -> bool:
        return _status(f"http://127.0.0.1:{self.http}/-/ready") == 200


@dataclass(frozen=True)
class Query:
    http: int
    grpc: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    def command(self, thanos: Path, sidecars: tuple[Sidecar, ...]) -> list[str]:
        return [
            str(thanos),
            "query",
            f"--http-address=127.0.0.1:{self.http}",
            f"--grpc-address=127.0.0.1:{self.grpc}",
            # Strict: always asked, down or not, so a store that is down makes an answer
            # partial (with a warning naming it; Thanos 0.41 answers so even to
            # partial_response=false) rather than vanish from the set.
            *(f"--endpoint-strict=127.0.0.1:{sidecar.grpc}" for sidecar in sidecars),
            f"--query.replica-label={REPLICA_LABEL}",
            # Its own default lets a query answer without a store; a client says which
            # it wants (partial_response), as breaker does.
            "--query.partial-response",
            "--log.level=warn",
        ]

    def stores(self) -> int:
        """How many StoreAPIs the querier is connected to now."""
        with urllib.request.urlopen(f"{self.url}/api/v1/stores", timeout=5) as response:
            found = json.load(response).get("data") or {}
        return sum(len(group or []) for group in found.values())


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except OSError:
        return 0
