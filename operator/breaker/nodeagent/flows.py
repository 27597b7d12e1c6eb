"""Which of a quarantined pod's connections to cut, and the commands that cut them. Pure.

A pod's connections are read from the node's conntrack table, both ways and of every
protocol: those it opened (its address is the original source) and those made to it (its
address answers them: the reply's source, also when a Service or NodePort translated the
destination), TCP, UDP, ICMP, SCTP, GRE or any other IP protocol, whatever made them, a
kernel socket or a raw one. Those the pod may keep (``connections.Kept``: the cluster DNS
and allowed Services it reaches, the node's own probes and the metrics scrape reaching
it) stay; every other one is cut three ways, in this order:

1. its socket is destroyed inside the pod's network namespace (``ss -K``, the kernel's
   SOCK_DESTROY; TCP and UDP): the process gets an error, and the far end a reset;
2. a stateless drop of the flow's packets, both ways as they reach the node (the
   original direction and the reply direction, each before any address translation), in
   the node's raw table, ahead of conntrack: nothing of it passes again, not even from a
   raw socket that has no kernel socket to destroy (an ICMP tunnel's, say);
3. its conntrack entry is deleted. Alone this would not do: with
   ``nf_conntrack_tcp_loose=1`` the next packet re-creates the entry mid-stream, as
   ESTABLISHED, and the NetworkPolicy dataplane lets it through; behind the drop, nothing
   re-creates it.

A new connection the pod then opens, or someone opens to it, is the NetworkPolicy's to
refuse; one made before the dataplane has caught up is found and cut on the next pass.

And a fence: a pod held has nothing to do with the world outside the cluster, either way,
on any protocol, but its scrape. Two chains of the pod's own (``fence``) drop, ahead of
conntrack, every packet between its address and an address outside the cluster's ranges
(and the node's own), from the moment the agent knows the address, which it reads from the
node itself when the API does not say it yet. A pod born quarantined (a held workload's
new pod) is fenced before the dataplane has caught up with its new address; a connection
in the cluster stays the NetworkPolicy's and the cut's.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from breaker.actions.connections import Kept

CHAIN = "BREAKER-CUT"
FENCE_PREFIX = "BRK-"  # a held pod's own chains: BRK-O-<hash> and BRK-I-<hash>
RESET_OUT = [
    "-p", "tcp", "-m", "tcp", "--tcp-flags", "RST", "RST",
    "-m", "length", "--length", "40:80", "-j", "RETURN",
]  # fmt: skip
# TCP and SCTP states that carry no more data: nothing to cut.
_SPENT = {"TIME_WAIT", "CLOSE", "CLOSED", "SHUTDOWN_ACK_SENT"}
# The protocols with ports that iptables and ss match on, by conntrack's name for them.
PORTED = {"tcp": 6, "udp": 17, "sctp": 132, "udplite": 136, "dccp": 33}
SOCKETS = {"tcp": "-t", "udp": "-u"}  # those whose sockets ss can destroy
# iptables names these protocols when it lists its rules, whatever number they were given.
NAMES = {1: "icmp", 6: "tcp", 17: "udp", 33: "dccp", 47: "gre", 50: "esp", 51: "ah", 132: "sctp"}
NAMES |= {136: "udplite"}


class Flow(NamedTuple):
    """One connection as conntrack tracks it: the original direction (who began it) and
    the reply direction, each as its packets reach the node. A tuple: a busy node lists a
    hundred thousand of them every few seconds."""

    protocol: str  # conntrack's name for it: tcp, udp, icmp, sctp, gre, unknown
    src: str
    sport: int  # 0 for a protocol without ports
    dst: str
    dport: int
    state: str | None = None  # TCP's, SCTP's
    reply_src: str = ""  # who answers: the pod, for a connection made to it
    reply_dst: str = ""
    reply_sport: int = 0
    reply_dport: int = 0
    number: int = 0  # the IP protocol number

    def __str__(self) -> str:
        if self.protocol in PORTED:
            return f"{self.protocol} {self.dst}:{self.dport}"
        return f"{self.protocol} {self.dst}"

    def inbound(self, pod_ip: str) -> bool:
        """Made to the pod, not by it."""
        return bool(pod_ip) and self.src != pod_ip and self.reply_src == pod_ip

    def described(self, pod_ip: str) -> str:
        """Where it goes, or for one made to the pod, where it came from."""
        if not self.inbound(pod_ip):
            return str(self)
        port = f" to port {self.reply_sport}" if self.protocol in PORTED else ""
        return f"{self.protocol} from {self.src}{port}"


class Entry(NamedTuple):
    """One conntrack entry: its flow, whether an answer came, and its byte counts."""

    flow: Flow
    assured: bool = False  # traffic seen both ways, and for TCP the handshake done
    unreplied: bool = False  # nothing seen from the far end yet
    sent: int = 0  # bytes in the original direction (0 without nf_conntrack_acct)
    received: int = 0


# One entry, either way of listing it: an event's type, the protocol's name and number,
# its timeout (a DESTROY event has none), the state of TCP or SCTP, then the original
# direction (with byte counts when conntrack accounting is on), the reply direction the
# same way, and the flags. Two shapes: a protocol with ports (almost every line, so
# matched first and cheaply), and any other, whose addresses are followed by what the
# protocol adds instead (ICMP's type, code and id; GRE's keys; nothing).
_HEAD = (
    r"^[ \t]*(?:\[[A-Z]+\][ \t]+)?([a-z0-9]+)[ \t]+(\d+)[ \t]+(?:\d+[ \t]+)?"
    r"(?:([A-Z_]+[0-9]?)[ \t]+)?"
)
_COUNTS = r"(?: packets=\d+ bytes=(\d+))?"
_EXTRA = r"(?: (?!src=|packets=|\[|mark=|use=|zone=)\S+)*"
_ENTRY = re.compile(
    _HEAD
    + r"src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+)"
    + _COUNTS
    + r"( \[UNREPLIED\])? src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+)"
    + _COUNTS
    + r"([^\n]*)$",
    re.MULTILINE,
)
_OTHER = re.compile(
    _HEAD
    + r"src=(\S+) dst=(\S+)"
    + _EXTRA
    + _COUNTS
    + r"( \[UNREPLIED\])? src=(\S+) dst=(\S+)"
    + _EXTRA
    + _COUNTS
    + r"([^\n]*)$",
    re.MULTILINE,
)


def iter_entries(text: str) -> Iterator[Entry]:
    """``conntrack -L`` (or ``-E``) lines: ``[NEW] tcp 6 431999 ESTABLISHED src=… dst=…
    sport=… dport=… [packets=… bytes=…] [UNREPLIED] src=… … [ASSURED]``, of any protocol.
    One regular expression over the whole listing, one entry at a time: a busy node lists
    a hundred thousand; the lines of other protocols, rare, are read after."""
    read = 0
    for match in _ENTRY.finditer(text):
        read += 1
        (name, number, state, src, dst, sport, dport, sent, unreplied, rsrc, rdst, rsport,
         rdport, received, rest) = match.groups()  # fmt: skip
        flow = Flow(
            name, src, int(sport), dst, int(dport), state, rsrc, rdst, int(rsport), int(rdport),
            int(number),
        )  # fmt: skip
        yield Entry(
            flow,
            "[ASSURED]" in rest,
            bool(unreplied) or "[UNREPLIED]" in rest,
            int(sent or 0),
            int(received or 0),
        )
    if read * 2 >= text.count("src="):  # two in every entry
        return  # nothing but ported protocols: the common case, read once
    for match in _OTHER.finditer(text):
        name, number, state, src, dst, sent, unreplied, rsrc, rdst, received, rest = match.groups()
        if name in PORTED:
            continue  # read above
        yield Entry(
            Flow(name, src, 0, dst, 0, state, rsrc, rdst, 0, 0, int(number)),
            "[ASSURED]" in rest,
            bool(unreplied) or "[UNREPLIED]" in rest,
            int(sent or 0),
            int(received or 0),
        )


def parse_entries(text: str) -> list[Entry]:
    return list(iter_entries(text))


def parse_conntrack(text: str) -> list[Flow]:
    """The flows of ``conntrack -L`` lines."""
    return [entry.flow for entry in parse_entries(text)]


def to_cut(
    flows: Iterable[Flow],
    pod_ip: str,
    kept: Kept,
    cluster_dns: Iterable[str],
    node_addresses: Iterable[str] = (),
) -> list[Flow]:
    """The pod's flows, either way, that it may not keep, once each. What the node itself
    opened to the pod (the kubelet's probes) is kept: a NetworkPolicy always lets it in."""
    dns, node = tuple(cluster_dns), frozenset(node_addresses)
    found = set()
    for f in flows:
        if f.state in _SPENT:
            continue
        if f.src == pod_ip:
            if not kept.keeps(f.dst, f.dport, dns):
                found.add(f)
        elif f.reply_src == pod_ip and f.src not in node and not kept.lets_in(f.src, f.reply_sport):
            found.add(f)
    return sorted(found, key=lambda f: (f.protocol, f.dst, f.dport, f.src, f.sport))


def tag(namespace: str, pod: str) -> str:
    """The comment on every rule placed for a pod: how they are found and lifted. One per
    pod, whatever the length of its names (iptables keeps 255 characters)."""
    comment = f"breaker:{namespace}/{pod}"
    if len(comment) <= 250:
        return comment
    return f"{comment[:237]}~{hashlib.sha256(comment.encode()).hexdigest()[:12]}"


def drop_rules(
    flow: Flow, comment: str, pod_ip: str, inside: Iterable[str] = ()
) -> list[list[str]]:
    """Rule specs (for ``iptables -t raw -A CHAIN``) dropping the flow's packets both ways,
    each direction as its packets reach the node: the original one as sent, the reply as
    sent back (after a Service's or a NodePort's translation, its addresses differ). A
    protocol without ports is dropped whole between the two ends.

    A direction is dropped only where the pod is one of its ends, or, for a protocol with
    ports, where the far end is outside the cluster (``inside``: its ranges): a pod's flow
    translated to the node's address (SNAT) or sent to a Service address by another pod
    must not become a drop between the node, or that pod, and anyone."""
    reply = (
        flow.reply_src or flow.dst,
        flow.reply_sport if flow.reply_src else flow.dport,
        flow.reply_dst or flow.src,
        flow.reply_dport if flow.reply_src else flow.sport,
    )
    networks = [ipaddress.ip_network(c, strict=False) for c in inside]

    def outside(address: str) -> bool:
        try:
            found = ipaddress.ip_address(address)
        except ValueError:
            return False
        return not any(found in n for n in networks if n.version == found.version)

    name = protocol_name(flow)
    match = ["-m", "comment", "--comment", comment, "-j", "DROP"]
    rules = []
    for src, sport, dst, dport in [(flow.src, flow.sport, flow.dst, flow.dport), reply]:
        ends_at_pod = pod_ip in (src, dst)
        if not ends_at_pod and not (flow.protocol in PORTED and (outside(src) or outside(dst))):
            continue
        spec = ["-s", f"{src}/32", "-d", f"{dst}/32", "-p", name]
        if flow.protocol in PORTED:
            spec += ["-m", name, "--sport", str(sport), "--dport", str(dport)]
        rule = [*spec, *match]
        if rule not in rules:
            rules.append(rule)
    return rules


def fence_chains(comment: str) -> tuple[str, str]:
    """The pod's two fence chains (what it sends, what it is sent): named from its rules'
    comment, within iptables' 28 characters."""
    digest = hashlib.sha256(comment.encode()).hexdigest()[:12]
    return f"{FENCE_PREFIX}O-{digest}", f"{FENCE_PREFIX}I-{digest}"


def fence(
    pod_ip: str,
    comment: str,
    inside: Iterable[str],
    kept: Kept,
) -> dict[str, list[list[str]]]:
    """The pod's fence, by chain: in our chain, a jump per direction to the pod's chains;
    in each, a return for every range inside the cluster (and the scrape's sources, which
    may be outside it), then a drop of everything else. ``inside``: the cluster's ranges
    and the node's addresses (IPv4: the agent places IPv4 rules)."""
    out, into = fence_chains(comment)
    ranges = [c for c in inside if ":" not in c]
    scrape = [i.network for i in kept.inbound if ":" not in i.network]
    tagged = ["-m", "comment", "--comment", comment]
    return {
        CHAIN: [
            ["-s", f"{pod_ip}/32", *tagged, "-j", out],
            ["-d", f"{pod_ip}/32", *tagged, "-j", into],
        ],
        # A reset the pod's kernel sends as the agent destroys a socket goes out: the far end
        # of a cut tunnel learns it at once. It carries nothing (the length of the headers).
        out: [["-d", _net(c), "-j", "RETURN"] for c in [*ranges, *scrape]]
        + [RESET_OUT, ["-j", "DROP"]],
        into: [["-s", _net(c), "-j", "RETURN"] for c in [*ranges, *scrape]] + [["-j", "DROP"]],
    }


def elsewhere(placed: Iterable[list[str]], pod_ip: str) -> list[list[str]]:
    """The pod's placed rules that name another address of it than ``pod_ip`` (a jump or a
    drop of an earlier sandbox's): neither end is the pod's address now."""
    found = []
    for rule in placed:
        ends = [rule[i + 1].split("/")[0] for i, w in enumerate(rule[:-1]) if w in ("-s", "-d")]
        if pod_ip not in ends and (_jumps(rule) or len(ends) == 2):
            found.append(rule)
    return found


def _jumps(rule: list[str]) -> bool:
    return "-j" in rule and rule[rule.index("-j") + 1].startswith(FENCE_PREFIX)


def _net(cidr: str) -> str:
    return str(ipaddress.ip_network(cidr, strict=False))


def chains(listing: str) -> list[str]:
    """The fence chains ``iptables -t raw -S`` lists."""
    return [
        line.split()[1] for line in listing.splitlines() if line.startswith(f"-N {FENCE_PREFIX}")
    ]


def chain_rules(listing: str, chain: str) -> list[list[str]]:
    """The rules of one chain as ``iptables -t raw -S`` lists them (without ``-A CHAIN``)."""
    return [_split(line)[2:] for line in listing.splitlines() if line.startswith(f"-A {chain} ")]


def protocol_name(flow: Flow) -> str:
    """The protocol as iptables names it: known names, else the number."""
    number = flow.number or PORTED.get(flow.protocol, 0)
    return NAMES.get(number, str(number) if number else flow.protocol)


def same_rule(placed: list[str], wanted: list[str]) -> bool:
    """A rule as ``iptables -S`` lists it is the one we would place: the protocol may be
    listed by name or by number, an address with or without its /32."""
    return _canonical(placed) == _canonical(wanted)


def _canonical(spec: list[str]) -> tuple[str, ...]:
    words = list(spec)
    for i, word in enumerate(words[:-1]):
        following = words[i + 1]
        if word == "-p":
            named = {v: k for k, v in NAMES.items()}
            number = named.get(following, int(following) if following.isdigit() else -1)
            words[i + 1] = NAMES.get(number, following)
        elif word in ("-s", "-d") and "/" not in following:
            words[i + 1] = f"{following}/32"
    return tuple(words)


def placed(listing: str) -> dict[str, list[list[str]]]:
    """Our rules as ``iptables -t raw -S CHAIN`` lists them, by comment."""
    found: dict[str, list[list[str]]] = {}
    for line in listing.splitlines():
        words = _split(line)
        if words[:2] != ["-A", CHAIN] or "--comment" not in words:
            continue
        comment = words[words.index("--comment") + 1]
        found.setdefault(comment, []).append(words[2:])
    return found


def _split(line: str) -> list[str]:
    """iptables -S quotes a comment with spaces; ours have none, but read them right."""
    words, current, quoted = [], "", False
    for char in line:
        if char == '"':
            quoted = not quoted
        elif char == " " and not quoted:
            if current:
                words.append(current)
            current = ""
        else:
            current += char
    if current:
        words.append(current)
    return words


def sockets(flows: Iterable[Flow], pod_ip: str) -> dict[str, str]:
    """Per ``ss`` option (-t, -u), a filter matching exactly the pod's sockets of these
    flows, as the pod sees them: the local end is the pod's, the far end the address it
    sent to (a Service's, before translation) or the one that reached it."""
    chosen: dict[str, list[str]] = {}
    for f in flows:
        option = SOCKETS.get(f.protocol)
        if option is None:
            continue
        if f.inbound(pod_ip):
            local, remote = (f.reply_src, f.reply_sport), (f.reply_dst, f.reply_dport)
        else:
            local, remote = (f.src, f.sport), (f.dst, f.dport)
        chosen.setdefault(option, []).append(f"( src {_end(*local)} and dst {_end(*remote)} )")
    return {option: " or ".join(parts) for option, parts in chosen.items()}


def _end(address: str, port: int) -> str:
    if ipaddress.ip_address(address).version == 6:
        return f"[{address}]:{port}"
    return f"{address}:{port}"


def conntrack_delete(flow: Flow) -> list[str]:
    """``conntrack -D`` arguments deleting this flow's entry (a portless protocol's: every
    entry of it between the two ends)."""
    entry = ["-s", flow.src, "-d", flow.dst]
    if flow.protocol in PORTED:
        return ["-p", flow.protocol, *entry, "--sport", str(flow.sport), "--dport", str(flow.dport)]
    if flow.protocol in ("icmp", "gre", "icmpv6"):
        return ["-p", flow.protocol, *entry]
    return entry


def summary(flows: Iterable[Flow], pod_ip: str = "") -> str:
    """``tcp 198.51.100.4:22, udp 203.0.113.53:53 (x3), icmp 198.51.100.4, tcp from
    198.51.100.4 to port 2222``: where they went or came from, and how often."""
    tally = Counter(flow.described(pod_ip) for flow in flows)
    return ", ".join(k + (f" (x{n})" if n > 1 else "") for k, n in sorted(tally.items()))
