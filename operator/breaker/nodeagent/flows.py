"""Which of a quarantined pod's connections to cut, and the commands that cut them. Pure.

A pod's connections are read from the node's conntrack table: every flow the pod opened
(its address is the original source), whatever made it, a kernel socket or a raw one.
Those the pod may keep (``connections.Kept``) stay; every other one is cut three ways, in
this order:

1. its socket is destroyed inside the pod's network namespace (``ss -K``, the kernel's
   SOCK_DESTROY): the process gets an error, and the far end a reset;
2. a stateless drop of the flow's packets, both ways, in the node's raw table, ahead of
   conntrack: nothing of it passes again, not even from a raw socket that has no kernel
   socket to destroy;
3. its conntrack entry is deleted. Alone this would not do: with
   ``nf_conntrack_tcp_loose=1`` the next packet re-creates the entry mid-stream, as
   ESTABLISHED, and the NetworkPolicy dataplane lets it through; behind the drop, nothing
   re-creates it.

A new connection the pod then opens is the NetworkPolicy's to refuse; one it opens before
the dataplane has caught up is found and cut on the next pass.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from breaker.actions.connections import Kept

CHAIN = "BREAKER-CUT"
# TCP states that carry no more data: nothing to cut.
_SPENT = {"TIME_WAIT", "CLOSE"}
_FIELD = re.compile(r"(\w+)=(\S+)")


class Flow(NamedTuple):
    """One connection as conntrack saw it first (the original direction). A tuple: a busy
    node lists a hundred thousand of them every few seconds."""

    protocol: str  # tcp or udp
    src: str
    sport: int
    dst: str
    dport: int
    state: str | None = None  # TCP's

    def __str__(self) -> str:
        return f"{self.protocol} {self.dst}:{self.dport}"


class Entry(NamedTuple):
    """One conntrack entry: its flow, whether an answer came, and its byte counts."""

    flow: Flow
    assured: bool = False  # traffic seen both ways, and for TCP the handshake done
    unreplied: bool = False  # nothing seen from the far end yet
    sent: int = 0  # bytes in the original direction (0 without nf_conntrack_acct)
    received: int = 0


# One entry, either way of listing it: an event's type, the protocol, its number and
# timeout, TCP's state, then the original direction (with byte counts when conntrack
# accounting is on), then the reply direction and the flags.
_ENTRY = re.compile(
    r"^[ \t]*(?:\[[A-Z]+\][ \t]+)?(tcp|udp)[ \t]+\d+[ \t]+\d+[ \t]+(?:([A-Z_]+)[ \t]+)?"
    r"src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+)(?: packets=\d+ bytes=(\d+))?"
    r"( \[UNREPLIED\])? src=\S+ dst=\S+ sport=\d+ dport=\d+(?: packets=\d+ bytes=(\d+))?"
    r"([^\n]*)$",
    re.MULTILINE,
)


def iter_entries(text: str) -> Iterator[Entry]:
    """``conntrack -L`` (or ``-E``) lines: ``[NEW] tcp 6 431999 ESTABLISHED src=… dst=…
    sport=… dport=… [packets=… bytes=…] [UNREPLIED] src=… … [ASSURED]``. The first
    src/dst/sport/dport are the original direction, the first bytes= too; other protocols
    are skipped. One regular expression over the whole listing, one entry at a time: a
    busy node lists a hundred thousand."""
    for match in _ENTRY.finditer(text):
        protocol, state, src, dst, sport, dport, sent, unreplied, received, rest = match.groups()
        yield Entry(
            Flow(protocol, src, int(sport), dst, int(dport), state if protocol == "tcp" else None),
            "[ASSURED]" in rest,
            bool(unreplied) or "[UNREPLIED]" in rest,
            int(sent or 0),
            int(received or 0),
        )


def parse_entries(text: str) -> list[Entry]:
    return list(iter_entries(text))


def parse_conntrack(text: str) -> list[Flow]:
    """The flows of ``conntrack -L`` lines, in their original direction."""
    return [entry.flow for entry in parse_entries(text)]


def to_cut(
    flows: Iterable[Flow], pod_ip: str, kept: Kept, cluster_dns: Iterable[str]
) -> list[Flow]:
    """The flows the pod opened that it may not keep, once each."""
    dns = tuple(cluster_dns)
    found = {
        f
        for f in flows
        if f.src == pod_ip and f.state not in _SPENT and not kept.keeps(f.dst, f.dport, dns)
    }
    return sorted(found, key=lambda f: (f.protocol, f.dst, f.dport, f.sport))


def tag(namespace: str, pod: str) -> str:
    """The comment on every rule placed for a pod: how they are found and lifted."""
    return f"breaker:{namespace}/{pod}"[:250]


def drop_rules(flow: Flow, comment: str) -> list[list[str]]:
    """Rule specs (for ``iptables -t raw -A CHAIN``) dropping the flow's packets both ways."""
    ends = [
        (flow.src, flow.sport, flow.dst, flow.dport),
        (flow.dst, flow.dport, flow.src, flow.sport),
    ]
    match = ["-m", "comment", "--comment", comment, "-j", "DROP"]
    return [
        [
            *("-s", f"{src}/32", "-d", f"{dst}/32", "-p", flow.protocol, "-m", flow.protocol),
            *("--sport", str(sport), "--dport", str(dport), *match),
        ]
        for src, sport, dst, dport in ends
    ]


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


def ss_filter(flows: Iterable[Flow]) -> str:
    """An ``ss`` filter matching exactly these flows' sockets, as the pod sees them."""
    return " or ".join(f"( src {f.src}:{f.sport} and dst {f.dst}:{f.dport} )" for f in flows)


def summary(flows: Iterable[Flow]) -> str:
    """``tcp 198.51.100.4:22, udp 203.0.113.53:53 (x3)``: where they went, and how often."""
    tally = Counter(str(flow) for flow in flows)
    return ", ".join(k + (f" (x{n})" if n > 1 else "") for k, n in sorted(tally.items()))
