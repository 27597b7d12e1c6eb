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
from typing import Any, NamedTuple

from breaker.nodeagent.flows import Entry, Flow

COUNT_CHAIN = "BREAKER-COUNT"
# The protocols counted: what the network presets read. conntrack lists every protocol
# (the cut needs them all); counting ICMP is the ICMP-tunnel preset's to decide.
COUNTED = frozenset({"tcp", "udp"})
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
# A pod's flows carry their destination port as a label, for at most this many ports at
# once. A port unused for LABEL_IDLE_SECONDS gives its label (and its series) up to a new
# one; only when every label is in use does a new port count as "other". To keep them all
# busy a pod must reach a thousand ports every quarter of an hour, which the fan-out
# preset sees as fresh ports. (Hubble's port-distribution has no bound at all.)
PORTS_LABELLED = 1024
LABEL_IDLE_SECONDS = 900.0
# Ports and addresses remembered per pod, to tell one not reached before (the least
# recently reached are forgotten first).
REMEMBERED = 4096
# A pod gone from the node keeps its series this long, for a last scrape.
GONE_SECONDS = 60.0

# The metrics, and their labels after the pod's (source_namespace, source_pod), named as
# Hubble names them so that the presets read either source alike.
FLOWS = "breaker_flows_total"  # protocol, scope, port
NEW_PORTS = "breaker_flow_new_ports_total"  # scope
NEW_DESTINATIONS = "breaker_flow_new_destinations_total"  # scope
UNANSWERED = "breaker_flows_unanswered_total"  # protocol, scope
BYTES = "breaker_flow_bytes_total"  # direction, scope
DNS = "breaker_dns_lookups_total"  # protocol
ATTEMPTS = "breaker_tcp_attempts_total"  # (none)
REFUSED = "breaker_tcp_refused_total"  # (none)

HELP: dict[str, tuple[str, tuple[str, ...]]] = {
    FLOWS: ("Connections the pod opened that the node let through", ("protocol", "scope", "port")),
    NEW_PORTS: ("Destination ports the pod reached for the first time", ("scope",)),
    NEW_DESTINATIONS: ("Destination addresses the pod reached for the first time", ("scope",)),
    UNANSWERED: ("Connections with no answer a listing after they opened", ("protocol", "scope")),
    BYTES: ("Bytes of the pod's connections (nf_conntrack_acct)", ("direction", "scope")),
    DNS: ("New flows to port 53: DNS lookups, at most one per socket", ("protocol",)),
    ATTEMPTS: ("TCP SYNs the pod sent, counted before any NetworkPolicy", ()),
    REFUSED: ("TCP SYNs the pod sent beyond the connections the node let out", ()),
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
    """What one pod has reached (bounded): ports and addresses, least recent first."""

    ports: dict[tuple[str, int], None] = field(default_factory=dict)  # (scope, port)
    destinations: dict[str, None] = field(default_factory=dict)
    labelled: dict[int, float] = field(default_factory=dict)  # port -> last used

    def port(self, scope: str, port: int) -> bool:
        """Whether the pod had not reached it (as far as remembered)."""
        return _first(self.ports, (scope, port))

    def destination(self, address: str) -> bool:
        return _first(self.destinations, address)

    def label(self, port: int, now: float) -> tuple[str, int | None]:
        """The port's label, and the port whose label it took over (its series go)."""
        if port in self.labelled:
            self.labelled[port] = now
            return str(port), None
        if len(self.labelled) < PORTS_LABELLED:
            self.labelled[port] = now
            return str(port), None
        idle, stale = min((used, p) for p, used in self.labelled.items())
        if now - idle < LABEL_IDLE_SECONDS:
            return "other", None
        del self.labelled[stale]
        self.labelled[port] = now
        return str(port), stale


def _first(seen: dict[Any, None], key: Any) -> bool:
    """Whether ``key`` is new to ``seen``; it becomes the most recent (the least recent is
    forgotten past REMEMBERED)."""
    new = key not in seen
    seen.pop(key, None)
    seen[key] = None
    if len(seen) > REMEMBERED:
        del seen[next(iter(seen))]
    return new


@dataclass
class _Syns:
    """One pod's SYN counting rule, against the TCP connections it opened meanwhile."""

    base: int  # the rule's count when this agent began to follow it
    tcp_base: int  # the pod's TCP connections counted by then
    read: int  # the rule's count at the last read
    refused: int = 0  # SYNs beyond connections, so far


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
    syns: dict[Source, _Syns] = field(default_factory=dict)
    tcp: Counter[Source] = field(default_factory=Counter)  # TCP connections opened, by pod
    gone: dict[Source, float] = field(default_factory=dict)  # since when, by pod
    unlabelled: list[tuple[Source, int]] = field(default_factory=list)  # ports whose label went
    primed: bool = False

    def opened(self, flow: Flow, source: Source, now: float) -> Tally:
        """A connection the pod opened (conntrack's NEW event) at ``now`` (monotonic)."""
        tally: Tally = Counter()
        scope = self.scopes.of(flow.dst)
        reached = self.reached.setdefault(source, _Reached())
        pod = (source.namespace, source.pod)
        port, stale = reached.label(flow.dport, now)
        if stale is not None:
            self.unlabelled.append((source, stale))
        tally[FLOWS, (*pod, flow.protocol, scope, port)] += 1
        if flow.protocol == "tcp":
            self.tcp[source] += 1
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
            if source is None or flow.protocol not in COUNTED:
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
        """A counting rule just placed for the pod: it counts from zero, and so do its
        series (a rate over them then sees the first SYNs too)."""
        self.syns[source] = _Syns(0, self.tcp[source], 0)
        pod = (source.namespace, source.pod)
        return Counter({(ATTEMPTS, pod): 0, (REFUSED, pod): 0})

    def attempts(self, counts: Mapping[Source, int]) -> Tally:
        """The counting rules' SYN counts, read this pass: their growth since the last read,
        and the SYNs beyond the TCP connections the pod opened meanwhile (refused before
        they left the node, or retransmitted unanswered). A rule seen for the first time
        (the agent restarted) sets a baseline."""
        tally: Tally = Counter()
        for source, count in counts.items():
            pod = (source.namespace, source.pod)
            syns = self.syns.get(source)
            if syns is None or count < syns.read:  # a baseline, or a rule placed anew
                self.syns[source] = _Syns(count, self.tcp[source], count)
                continue
            tally[ATTEMPTS, pod] += count - syns.read
            syns.read = count
            # Cumulative, and never down: a connection counted a moment before its SYN's
            # rule was read evens out at the next read.
            beyond = (count - syns.base) - (self.tcp[source] - syns.tcp_base)
            if beyond > syns.refused:
                tally[REFUSED, pod] += beyond - syns.refused
                syns.refused = beyond
        return +tally

    def forget(self, present: Iterable[Source], now: float) -> list[Source]:
        """Drop what is remembered of pods gone from the node for GONE_SECONDS; returns
        those dropped (their series go too)."""
        here = set(present)
        known = {*self.reached, *self.syns, *self.tcp}
        for source in known - here:
            self.gone.setdefault(source, now)
        for source in here:
            self.gone.pop(source, None)
        dropped = [s for s, since in self.gone.items() if now - since >= GONE_SECONDS]
        for source in dropped:
            for table in (self.reached, self.syns, self.tcp, self.gone):
                table.pop(source, None)
        return dropped


def _unanswered(entry: Entry, listed_before: bool) -> bool:
    """Still without an answer a listing after it was first listed: dropped somewhere past
    the node (a refused one is gone before any listing)."""
    return not entry.assured and entry.unreplied and listed_before


def count_rule(source: Source, ip: str) -> list[str]:
    """The rule spec (for ``iptables -t raw -A BREAKER-COUNT``) counting the pod's SYNs
    (IPv4: ``iptables``; a pod with only an IPv6 address has no rule)."""
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
