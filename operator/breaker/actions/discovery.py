"""Which API group versions the API server serves, discovered once per process.

Revoking and restoring egress ask whether the cluster has the network-policy API or
Cilium's. A trip must not wait on a discovery call for that, so the answer is kept and
asked again only when it may have changed: when a CustomResourceDefinition changes (the
operator's wiring calls ``forget`` on kopf's event for it), when a write finds a kind that
was served gone (a 404), and at the latest after REFRESH_SECONDS, in case an API came
without a CRD (an aggregated API server).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from kubernetes import client

from breaker import kube

REFRESH_SECONDS = 600.0


class Discovery:
    """The (group, version) pairs served, kept until forgotten or REFRESH_SECONDS old."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.known: frozenset[tuple[str, str]] | None = None
        self.at = 0.0
        self.generation = 0  # bumped by forget: a discovery begun before is not kept
        self.lock = asyncio.Lock()

    def forget(self) -> None:
        self.known = None
        self.generation += 1

    async def served(self, api: client.ApiClient, group: str, version: str) -> bool:
        known = self.known
        if known is None or self.clock() - self.at >= REFRESH_SECONDS:
            known = await self._discover(api)
        return (group, version) in known

    async def _discover(self, api: client.ApiClient) -> frozenset[tuple[str, str]]:
        async with self.lock:  # trips at once share one discovery
            if self.known is not None and self.clock() - self.at < REFRESH_SECONDS:
                return self.known
            generation = self.generation
            groups = await kube.call(client.ApisApi(api).get_api_versions)
            known = frozenset(
                (g.name, v.version) for g in groups.groups or [] for v in g.versions or []
            )
            if generation == self.generation:
                self.known, self.at = known, self.clock()
            return known


DISCOVERY = Discovery()


async def served(api: client.ApiClient, group: str, version: str) -> bool:
    """Whether the API server serves this group version (this process's last answer)."""
    return await DISCOVERY.served(api, group, version)


def forget() -> None:
    """An API may have come or gone: discover again before the next answer."""
    DISCOVERY.forget()
