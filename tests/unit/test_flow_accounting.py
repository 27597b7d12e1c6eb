"""The node agent's per-pod flow counts: what a conntrack event, a listing and a SYN
counter add, for which pod, and what is never counted twice."""

from __future__ import annotations

from breaker.nodeagent import accounting, flows
from breaker.nodeagent.accounting import (
    ATTEMPTS,
    BYTES,
    DNS,
    FLOWS,
    NEW_DESTINATIONS,
    NEW_PORTS,
    REFUSED,
    UNANSWERED,
    Ledger,
    Source,
)

POD = "10.244.1.7"
MINER = Source("agents", "miner-0")
PODS = {POD: MINER}
NS_POD = ("agents", "miner-0")


def event(line: str) -> flows.Flow:
    (entry,) = flows.parse_entries(line)
    return entry.flow


def opened(
    ledger: Ledger,
    dst: str,
    dport: int,
    protocol: str = "tcp",
    sport: int = 40000,
    now: float = 0.0,
) -> accounting.Tally:
    return ledger.opened(flows.Flow(protocol, POD, sport, dst, dport), MINER, now)


def test_an_event_line_and_a_listing_line_read_alike() -> None:
    new = (
        "    [NEW] tcp      6 120 SYN_SENT src=10.244.1.7 dst=203.0.113.7 sport=40312 "
        "dport=3333 [UNREPLIED] src=203.0.113.7 dst=10.0.0.5 sport=3333 dport=40312"
    )
    assert event(new)[:6] == ("tcp", POD, 40312, "203.0.113.7", 3333, "SYN_SENT")
    listed = (
        "tcp      6 431999 ESTABLISHED src=10.244.1.7 dst=198.51.100.4 sport=57518 dport=22 "
        "packets=12 bytes=1800 src=198.51.100.4 dst=10.0.0.5 sport=22 dport=57518 "
        "packets=10 bytes=2400 [ASSURED] mark=0 use=1"
    )
    (entry,) = flows.parse_entries(listed)
    assert (entry.sent, entry.received, entry.assured, entry.unreplied) == (1800, 2400, True, False)
    (quiet,) = flows.parse_entries(new.replace("    [NEW] ", ""))
    assert (quiet.sent, quiet.received, quiet.unreplied) == (0, 0, True)  # no accounting


def test_a_new_flow_counts_its_port_destination_and_scope_once() -> None:
    ledger = Ledger()
    first = opened(ledger, "203.0.113.7", 3333)
    assert first == {
        (FLOWS, (*NS_POD, "tcp", "world", "3333")): 1,
        (NEW_PORTS, (*NS_POD, "world")): 1,
        (NEW_DESTINATIONS, (*NS_POD, "world")): 1,
    }
    # Reconnecting to the same pool: a flow, nothing newly reached.
    assert opened(ledger, "203.0.113.7", 3333, sport=40001) == {
        (FLOWS, (*NS_POD, "tcp", "world", "3333")): 1
    }
    inside = opened(ledger, "10.96.0.10", 53, protocol="udp")
    assert inside[FLOWS, (*NS_POD, "udp", "cluster", "53")] == 1
    assert inside[DNS, (*NS_POD, "udp")] == 1
    assert inside[NEW_PORTS, (*NS_POD, "cluster")] == 1


def test_a_port_idle_long_enough_gives_its_label_up_and_otherwise_it_is_other() -> None:
    ledger = Ledger()
    for port in range(accounting.PORTS_LABELLED):
        opened(ledger, "203.0.113.7", 1000 + port, now=float(port))
    # Every label in use lately: a new port counts as "other", and as new all the same.
    late = opened(ledger, "203.0.113.7", 3333, now=600.0)
    assert late[FLOWS, (*NS_POD, "tcp", "world", "other")] == 1
    assert late[NEW_PORTS, (*NS_POD, "world")] == 1
    # Past LABEL_IDLE_SECONDS the least recently used port (1000) gives its label up,
    # and its series go (the agent removes them).
    later = accounting.LABEL_IDLE_SECONDS + 1.0
    assert (
        opened(ledger, "203.0.113.7", 3333, now=later)[FLOWS, (*NS_POD, "tcp", "world", "3333")]
        == 1
    )
    assert ledger.unlabelled == [(MINER, 1000)]
    # A port in use keeps its label.
    assert (FLOWS, (*NS_POD, "tcp", "world", "1001")) in opened(
        ledger, "203.0.113.7", 1001, now=later
    )


def test_the_least_recently_reached_are_forgotten_first() -> None:
    ledger = Ledger()
    for port in range(accounting.REMEMBERED):
        opened(ledger, "10.0.0.9", 10000 + port)
    assert NEW_PORTS not in {name for name, _ in opened(ledger, "10.0.0.9", 10000)}  # refreshed
    opened(ledger, "10.0.0.9", 1)  # one more: 10001, the least recent, is forgotten
    assert (NEW_PORTS, (*NS_POD, "cluster")) in opened(ledger, "10.0.0.9", 10001)


def test_the_cluster_is_what_the_cidrs_say() -> None:
    scopes = accounting.Scopes()
    assert scopes.of("10.244.0.3") == "cluster"
    assert scopes.of("203.0.113.7") == "world"
    assert scopes.of("fd00::1") == "cluster"
    assert scopes.of("2001:db8::1") == "world"
    assert accounting.Scopes(["34.0.0.0/8"]).of("34.1.2.3") == "cluster"


def listing(*lines: str) -> list[flows.Entry]:
    return flows.parse_entries("\n".join(lines))


def tcp(sport: int, sent: int, received: int, flags: str = "[ASSURED]") -> str:
    return (
        f"tcp 6 300 ESTABLISHED src={POD} dst=198.51.100.4 sport={sport} dport=22 "
        f"packets=1 bytes={sent} src=198.51.100.4 dst=10.0.0.5 sport=22 dport={sport} "
        f"packets=1 bytes={received} {flags}"
    )


def test_bytes_count_from_the_second_listing_by_growth() -> None:
    ledger = Ledger()
    assert ledger.account(listing(tcp(1, 500, 900)), PODS) == {}  # learns where they stand
    grown = ledger.account(listing(tcp(1, 800, 1000), tcp(2, 50, 0)), PODS)
    assert grown[BYTES, (*NS_POD, "out", "world")] == 300 + 50
    assert grown[BYTES, (*NS_POD, "in", "world")] == 100
    # A new entry under the same ports starts from zero again: its count is all new.
    again = ledger.account(listing(tcp(1, 40, 0)), PODS)
    assert again[BYTES, (*NS_POD, "out", "world")] == 40


def test_a_flow_still_unanswered_a_listing_later_counts_once() -> None:
    ledger = Ledger()
    syn = (
        f"tcp 6 118 SYN_SENT src={POD} dst=198.51.100.9 sport=41000 dport=443 [UNREPLIED] "
        "src=198.51.100.9 dst=10.0.0.5 sport=443 dport=41000 mark=0 use=1"
    )
    ledger.account([], PODS)
    assert UNANSWERED not in {name for name, _ in ledger.account(listing(syn), PODS)}
    later = ledger.account(listing(syn), PODS)
    assert later[UNANSWERED, (*NS_POD, "tcp", "world")] == 1
    assert ledger.account(listing(syn), PODS) == {}


def test_flows_of_addresses_no_pod_has_are_not_counted() -> None:
    ledger = Ledger()
    ledger.account([], PODS)
    node = tcp(1, 10, 10).replace(f"src={POD}", "src=10.0.0.5")
    assert ledger.account(listing(node, node.replace("sport=1", "sport=2")), PODS) == {}


def test_syn_counts_grow_from_the_rule_placed_or_first_read() -> None:
    ledger = Ledger()
    pod = NS_POD
    assert ledger.placed(MINER) == {(ATTEMPTS, pod): 0, (REFUSED, pod): 0}  # series from 0
    for port in range(28):
        opened(ledger, "203.0.113.7", 1000 + port)  # 28 connections the node let out
    assert ledger.attempts({MINER: 30}) == {(ATTEMPTS, pod): 30, (REFUSED, pod): 2}
    other = Source("agents", "other")
    # A rule the agent found (it restarted): its count so far is a baseline.
    assert ledger.attempts({MINER: 31, other: 500}) == {(ATTEMPTS, pod): 1, (REFUSED, pod): 1}
    assert ledger.attempts({other: 520}) == {
        (ATTEMPTS, ("agents", "other")): 20,
        (REFUSED, ("agents", "other")): 20,
    }


def test_a_connection_counted_before_its_syn_is_read_does_not_make_refusals_go_down() -> None:
    ledger = Ledger()
    ledger.placed(MINER)
    ledger.attempts({MINER: 10})  # 10 refused so far
    opened(ledger, "203.0.113.7", 443)  # its SYN is read at the next count
    assert REFUSED not in {name for name, _ in ledger.attempts({MINER: 10})}
    assert ledger.attempts({MINER: 12})[REFUSED, NS_POD] == 1  # 12 - 1 = 11: one more


def test_a_pod_gone_is_forgotten_after_a_grace_for_its_last_scrape() -> None:
    ledger = Ledger()
    opened(ledger, "203.0.113.7", 443)
    assert ledger.forget([], now=0.0) == []
    assert ledger.forget([], now=accounting.GONE_SECONDS - 1) == []
    assert ledger.forget([], now=accounting.GONE_SECONDS) == [MINER]
    assert MINER not in ledger.reached


def test_the_counting_rules_read_back_as_iptables_lists_them() -> None:
    spec = accounting.count_rule(MINER, POD)
    line = (
        "-A BREAKER-COUNT -s 10.244.1.7/32 -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN "
        '-m comment --comment "breaker-count:agents/miner-0" -c 30 1800'
    )
    found = accounting.read_counts(f"-N BREAKER-COUNT\n{line}\n")
    assert found == {MINER.comment: (spec, 30)}
