"""Open connections of quarantined pods: what is kept, and whether anyone cuts the rest. Pure.

A NetworkPolicy stops new connections; whether it ends those already open is up to the
dataplane, and most keep them. The node agent (``breaker node-agent``) cuts them: it
follows the pods of its node that carry the quarantine label and cuts every connection
they opened except what the operator wrote into their ``breaker.dev/egress-kept``
annotation (the cluster DNS when the policy allows it, the addresses of allowed
Services). Each agent holds a Lease in the operator's namespace; the operator records, at
the trip, on which nodes an agent was there to cut, and says plainly where none was.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass

LEASE_PREFIX = "breaker-node-agent-"
LEASE_SECONDS = 30  # an agent renews every third of it
AGENT_LABEL = {"app.kubernetes.io/component": "node-agent"}


def lease_name(node: str) -> str:
    return f"{LEASE_PREFIX}{node}"[:253]


def lease_live(renewed: dt.datetime | None, seconds: int | None, now: dt.datetime) -> bool:
    """A Lease renewed within its duration: the agent on that node is running."""
    if renewed is None:
        return False
    return renewed + dt.timedelta(seconds=seconds or LEASE_SECONDS) > now


def coverage(nodes: Iterable[str], live: Iterable[str]) -> dict[str, list[str]]:
    """``cut``: nodes whose agent cuts the open connections; ``uncut``: nodes without one,
    where connections opened before the trip may outlive the quarantine."""
    nodes, live = set(nodes), set(live)
    return {"cut": sorted(nodes & live), "uncut": sorted(nodes - live)}


@dataclass(frozen=True)
class Kept:
    """What a quarantined pod may keep open: the cluster DNS on port 53, and Services."""

    dns: bool = True
    services: tuple[str, ...] = ()  # cluster addresses, any port

    @classmethod
    def parse(cls, text: str | None) -> Kept:
        """The annotation; anything unreadable keeps nothing (cutting too much is safe)."""
        try:
            found = json.loads(text or "")
            return cls(
                dns=found.get("dns") is True,
                services=tuple(str(ipaddress.ip_address(a)) for a in found.get("services") or []),
            )
        except (ValueError, AttributeError, TypeError):
            return cls(dns=False)

    def keeps(self, address: str, port: int, cluster_dns: Iterable[str]) -> bool:
        if address in self.services:
            return True
        return self.dns and port == 53 and address in set(cluster_dns)
