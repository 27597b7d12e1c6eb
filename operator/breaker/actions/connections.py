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
from typing import Any

LEASE_PREFIX = "breaker-node-agent-"
MAX_SESSIONS = 20  # exec sessions listed per Breaker
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
class Inbound:
    """Who may still reach a quarantined pod: an address range, on these ports of the pod
    (none: any). The metrics scrape, so that the evidence keeps coming."""

    network: str  # a CIDR
    ports: tuple[int, ...] = ()

    def admits(self, address: str, port: int) -> bool:
        try:
            inside = ipaddress.ip_address(address) in ipaddress.ip_network(self.network)
        except ValueError:
            return False
        return inside and (not self.ports or port in self.ports)


@dataclass(frozen=True)
class Kept:
    """What a quarantined pod may keep open, and what the node agent does besides cutting:
    the cluster DNS on port 53 and Services it reaches; the scrape sources that reach it;
    when it was quarantined (exec sessions begun before then are the tenant's), and
    whether to end those sessions."""

    dns: bool = True
    services: tuple[str, ...] = ()  # cluster addresses, any port
    inbound: tuple[Inbound, ...] = ()
    since: float | None = None  # unix time of the quarantine
    kill_sessions: bool = False

    @classmethod
    def parse(cls, text: str | None) -> Kept:
        """The annotation; anything unreadable keeps nothing (cutting too much is safe)."""
        try:
            found = json.loads(text or "")
            since = found.get("since")
            return cls(
                dns=found.get("dns") is True,
                services=tuple(str(ipaddress.ip_address(a)) for a in found.get("services") or []),
                inbound=tuple(
                    Inbound(
                        str(ipaddress.ip_network(i["from"], strict=False)),
                        tuple(int(p) for p in i.get("ports") or []),
                    )
                    for i in found.get("inbound") or []
                ),
                since=float(since) if isinstance(since, int | float) else None,
                kill_sessions=found.get("killSessions") is True,
            )
        except (ValueError, AttributeError, TypeError, KeyError):
            return cls(dns=False)

    def keeps(self, address: str, port: int, cluster_dns: Iterable[str]) -> bool:
        """A connection the pod makes to this address and port."""
        if address in self.services:
            return True
        return self.dns and port == 53 and address in set(cluster_dns)

    def lets_in(self, address: str, port: int) -> bool:
        """A connection made to the pod's ``port`` from this address."""
        return any(allowed.admits(address, port) for allowed in self.inbound)


def kept_annotation(
    dns: bool,
    services: Iterable[str],
    inbound: Iterable[Inbound],
    since: float,
    kill_sessions: bool,
) -> str:
    """The ``breaker.dev/egress-kept`` annotation's value, as ``Kept.parse`` reads it:
    compact and stable, so the operator and the admission policy write the same text."""
    body = {
        "dns": dns,
        "inbound": [
            {"from": i.network, **({"ports": list(i.ports)} if i.ports else {})} for i in inbound
        ],
        "killSessions": kill_sessions,
        "services": sorted(services),
        "since": round(since, 3),
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def sessions(text: str | None) -> dict[str, list[dict[str, Any]]]:
    """The exec sessions a node agent's Lease lists, by ``namespace/pod``: each with its
    pid, command, start and whether the agent ended it. Anything unreadable lists none."""
    try:
        found = json.loads(text or "{}")
    except ValueError:
        return {}
    if not isinstance(found, dict):
        return {}
    listed: dict[str, list[dict[str, Any]]] = {}
    for pod, entries in found.items():
        if not isinstance(entries, list):
            continue
        listed[str(pod)] = [
            {
                "pid": int(e.get("pid") or 0),
                "command": str(e.get("command") or "")[:120],
                "started": str(e.get("started") or ""),
                "ended": e.get("ended") is True,
            }
            for e in entries[:MAX_SESSIONS]
            if isinstance(e, dict)
        ]
    return listed
