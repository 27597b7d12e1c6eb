"""Per-pod flow metrics from the node's own kernel tables, the same on every CNI. Pure.

Most GPU clusters run no Cilium, so the Hubble metrics that the network presets read are
absent there. The node agent counts the same facts on every node from the kernel of the
node's network namespace, where every pod's packets pass. Three readings:

- **conntrack's events** (``conntrack -E -e NEW``): each connection a pod opens (its
  address the original source) as the node lets it out. A refused one is among them: its
  entry is confirmed when the SYN leaves, and deleted at once when the reset comes back,
  too soon for any listing to see it.
- **the conntrack table**, listed every pass: byte counts (with ``nf_conntrack_acct`` on),
  and connections still without an answer a pass after they opened (dropped somewhere
  past the node).
- **the raw table**, ahead of conntrack and of any NetworkPolicy: one counting rule per
  pod (chain ``BREAKER-COUNT``) counts the TCP SYNs it sends. A connection the node's
  NetworkPolicy refuses never gets a conntrack entry (kube-router rejects it before the
  entry is confirmed), so the SYNs beyond the pod's new TCP flows are the attempts the
  node refused.

The first listing after the agent starts only learns what is open: counting its bytes
would make every restart look like a burst.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from breaker.nodeagent.flows import Entry, Flow

COUNT_CHAIN = "BREAKER-COUNT"
# Addresses that are not "the world": the RFC 1918 and CGNAT ranges pods and Services
# are given, loopback and link-local. ``--cluster-cidrs`` replaces the list where a
# cluster's pods, Services or nodes have public addresses.
CLUSTER_CIDRS = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "fc00::/7",
    "fe80::/10",
    "::1/128",
)
# A pod's flows carry their destination port as a label, for the first this many ports it
# reaches; later ones are counted as port "other" (Hubble's port-distribution has no such
# bound). The fan-out preset counts the ports; a scan has tripped it long before.
PORTS_LABELLED = 1024
# Ports and addresses remembered per pod, to tell one never reached before.
REMEMBERED = 4096

# The metrics, and their labels after the pod's (source_namespace, source_pod), named as
# Hubble names them so that the presets read either source alike.
FLOWS = "breaker_flows_total"  # protocol, scope, port
NEW_PORTS = "breaker_flow_new_ports_total"  # scope
NEW_DESTINATIONS = "breaker_flow_new_destinations_total"  # scope
UNANSWERED = "breaker_flows_unanswered_total"  # protocol, scope
BYTES = "breaker_flow_bytes_total"  # direction, scope
DNS = "breaker_dns_lookups_total"  # protocol
ATTEMPTS = "breaker_tcp_attempts_total"  # (none)

HELP: dict[str, tuple[str, tuple[str, ...]]] = {
    FLOWS: ("Connections the pod opened that the node let through", ("protocol", "scope", "port")),
    NEW_PORTS: ("Destination ports the pod reached for the first time", ("scope",)),
    NEW_DESTINATIONS: ("Destination addresses the pod reached for the first time", ("scope",)),
    UNANSWERED: ("Connections with no answer a pass after they opened", ("protocol", "scope")),
    BYTES: ("Bytes of the pod's connections (nf_conntrack_acct)", ("direction", "scope")),
    DNS: ("New flows to port 53: DNS lookups, at most one per socket", ("protocol",)),
    ATTEMPTS: ("TCP SYNs the pod sent, counted before any NetworkPolicy", ()),
}

Tally = Counter[tuple[str, tuple[str, ...]]]  # (metric, label values) -> increment


@dataclass(frozen=True)
class Source:
    namespace: str
    pod: str

    @property
    def comment(self) -> str:
        return f"breaker-count:{self.namespace}/{self.pod}"[:250]


class Scopes:
    """Whether an address is in the cluster or the world (remembered: a node's flows go to
    few addresses, and a listing asks for each of them)."""

    def __init__(self, cidrs: Iterable[str] = CLUSTER_CIDRS) -> None:
        self.networks = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)
        self.known: dict[str, str] = {}

    def of(self, address: str) -> str:
        found = self.known.get(address)
        if found is None:
            found = self._of(address)
            if len(self.known) >= 65536:
                self.known.clear()
            self.known[address] = found
        return found

    def _of(self, address: str) -> str:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return "cluster"
        inside = ip.is_multicast or any(ip in n for n in self.networks if n.version == ip.version)
        return "cluster" if inside else "world"


@dataclass
class _Reached:
    """What one pod has reached since the agent started (bounded)."""

    ports: set[tuple[str, int]] = field(default_factory=set)  # (scope, port)
    destinations: set[str] = field(default_factory=set)
    labelled: set[int] = field(default_factory=set)  # ports with a label of their own

    def port(self, scope: str, port: int) -> bool:
        """Whether this is the first time; remembered if there is room."""
        if (scope, port) in self.ports:
            return False
        if len(self.ports) < REMEMBERED:
            self.ports.add((scope, port))
        return True

    def destination(self, address: str) -> bool:
        if address in self.destinations:
            return False
        if len(self.destinations) < REMEMBERED:
            self.destinations.add(address)
        return True

    def label(self, port: int) -> str:
        if port in self.labelled or len(self.labelled) < PORTS_LABELLED:
            self.labelled.add(port)
            return str(port)
        return "other"


class _Seen(NamedTuple):
    sent: int
    received: int
    unanswered: bool  # counted as such already


FlowKey = tuple[str, str, int, str, int]


@dataclass
class Ledger:
    """The flows of the last pass, and what each pod has reached: what a new pass adds."""

    scopes: Scopes = field(default_factory=Scopes)
    seen: dict[FlowKey, _Seen] = field(default_factory=dict)
    reached: dict[Source, _Reached] = field(default_factory=dict)
    syns: dict[Source, int] = field(default_factory=dict)  # the rule's count, last read
    primed: bool = False

    def opened(self, flow: Flow, source: Source) -> Tally:
        """A connection the pod opened (conntrack's NEW event)."""
        tally: Tally = Counter()
        scope = self.scopes.of(flow.dst)
        reached = self.reached.setdefault(source, _Reached())
        pod = (source.namespace, source.pod)
        tally[FLOWS, (*pod, flow.protocol, scope, reached.label(flow.dport))] += 1
        if reached.port(scope, flow.dport):
            tally[NEW_PORTS, (*pod, scope)] += 1
        if reached.destination(flow.dst):
            tally[NEW_DESTINATIONS, (*pod, scope)] += 1
        if flow.dport == 53:
            tally[DNS, (*pod, flow.protocol)] += 1
        return tally

    def account(self, entries: Iterable[Entry], pods: Mapping[str, Source]) -> Tally:
        """One listing of the conntrack table; ``pods`` by address (the node's own pods,
        host-network pods left out): bytes since the last listing, and what went
        unanswered. The first listing only learns where the counts stand."""
        tally: Tally = Counter()
        now: dict[FlowKey, _Seen] = {}
        moved: dict[tuple[Source, str], list[int]] = {}  # (pod, scope) -> [out, in]
        for entry in entries:
            flow = entry.flow
            source = pods.get(flow.src)
            if source is None:
                continue
            key = (flow.protocol, flow.src, flow.sport, flow.dst, flow.dport)
            scope = self.scopes.of(flow.dst)
            before = self.seen.get(key)
            sent, received = entry.sent, entry.received
            if before is not None:
                # A count lower than last time is a new entry under the same ports.
                sent -= before.sent if entry.sent >= before.sent else 0
                received -= before.received if entry.received >= before.received else 0
            total = moved.get((source, scope))
            if total is None:
                total = moved[source, scope] = [0, 0]
            total[0] += sent
            total[1] += received
            counted = before is not None and before.unanswered
            if not counted and _unanswered(entry, listed_before=before is not None):
                tally[UNANSWERED, (source.namespace, source.pod, flow.protocol, scope)] += 1
                counted = True
            now[key] = _Seen(entry.sent, entry.received, counted)
        for (source, scope), (sent, received) in moved.items():
            tally[BYTES, (source.namespace, source.pod, "out", scope)] += sent
            tally[BYTES, (source.namespace, source.pod, "in", scope)] += received
        self.seen = now
        if not self.primed:
            self.primed = True
            return Counter()
        return +tally  # zero increments dropped

    def placed(self, source: Source) -> Tally:
        """A counting rule just placed for the pod: it counts from zero, and so does its
        series (a rate over it then sees the first SYNs too)."""
        self.syns[source] = 0
        return Counter({(ATTEMPTS, (source.namespace, source.pod)): 0})

    def attempts(self, counts: Mapping[Source, int]) -> Tally:
        """The counting rules' SYN counts, read this pass: their growth since the last read.
        A rule seen for the first time (a new pod, or the agent restarted) sets a baseline."""
        tally: Tally = Counter()
        for source, count in counts.items():
            before = self.syns.get(source)
            if before is not None and count >= before:
                tally[ATTEMPTS, (source.namespace, source.pod)] += count - before
            self.syns[source] = count
        return +tally

    def forget(self, keep: Iterable[Source]) -> list[Source]:
        """Drop what is remembered of pods no longer on the node; returns those dropped."""
        kept = set(keep)
        gone = [s for s in {*self.reached, *self.syns} if s not in kept]
        for source in gone:
            self.reached.pop(source, None)
            self.syns.pop(source, None)
        return gone


def _unanswered(entry: Entry, listed_before: bool) -> bool:
    """Still without an answer a listing after it was first listed: dropped somewhere past
    the node (a refused one is gone before any listing)."""
    return not entry.assured and entry.unreplied and listed_before


def count_rule(source: Source, ip: str) -> list[str]:
    """The rule spec (for ``iptables -t raw -A BREAKER-COUNT``) counting the pod's SYNs."""
    return [
        *("-s", f"{ip}/32", "-p", "tcp", "-m", "tcp", "--tcp-flags", "FIN,SYN,RST,ACK", "SYN"),
        *("-m", "comment", "--comment", source.comment),
    ]


def read_counts(listing: str) -> dict[str, tuple[list[str], int]]:
    """``iptables -t raw -S BREAKER-COUNT -v``: each rule's spec and packet count, by comment.

    With ``-v`` each rule ends in ``-c PACKETS BYTES``."""
    found: dict[str, tuple[list[str], int]] = {}
    for line in listing.splitlines():
        words = [word.strip('"') for word in line.split()]  # -S quotes a comment with ':'
        if words[:2] != ["-A", COUNT_CHAIN] or "--comment" not in words:
            continue
        packets = 0
        if "-c" in words:
            at = words.index("-c")
            packets = int(words[at + 1]) if words[at + 1].isdigit() else 0
            words = words[:at] + words[at + 3 :]
        comment = words[words.index("--comment") + 1]
        found[comment] = (words[2:], packets)
    return found
