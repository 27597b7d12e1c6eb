"""The node agent's decisions: which flows of a quarantined pod to cut, the rules and
filters that cut them, what a pod keeps, and whether a node's agent is there."""

from __future__ import annotations

import datetime as dt

from breaker.actions.connections import Kept, coverage, lease_live, lease_name
from breaker.nodeagent import flows

POD = "10.244.49.3"
CONNTRACK = """\
tcp      6 431999 ESTABLISHED src=10.244.49.3 dst=198.51.100.4 sport=40190 dport=22 src=198.51.100.4 dst=10.244.49.3 sport=22 dport=40190 [ASSURED] mark=0 use=1
tcp      6 431999 ESTABLISHED src=10.244.49.3 dst=203.0.113.7 sport=42194 dport=3333 src=203.0.113.7 dst=10.244.49.3 sport=3333 dport=42194 [ASSURED] mark=0 use=1
udp      17 17 src=10.244.49.3 dst=10.96.0.10 sport=47124 dport=53 src=10.244.49.2 dst=10.244.49.3 sport=53 dport=47124 mark=0 use=1
udp      17 7 src=10.244.49.3 dst=203.0.113.53 sport=56178 dport=53 src=203.0.113.53 dst=10.244.49.3 sport=53 dport=56178 mark=0 use=1
tcp      6 86399 ESTABLISHED src=10.244.49.1 dst=10.244.49.3 sport=51000 dport=8080 src=10.244.49.3 dst=10.244.49.1 sport=8080 dport=51000 [ASSURED] mark=0 use=1
tcp      6 110 TIME_WAIT src=10.244.49.3 dst=203.0.113.7 sport=41000 dport=3333 src=203.0.113.7 dst=10.244.49.3 sport=3333 dport=41000 [ASSURED] mark=0 use=1
icmp     1 29 src=10.244.49.3 dst=203.0.113.7 type=8 code=0 id=5 src=203.0.113.7 dst=10.244.49.3 type=0 code=0 id=5 mark=0 use=1
"""  # noqa: E501
DNS = ("10.96.0.10",)


def test_conntrack_lines_read_in_their_original_direction() -> None:
    found = flows.parse_conntrack(CONNTRACK)
    assert flows.Flow("tcp", POD, 40190, "198.51.100.4", 22, "ESTABLISHED") in found
    # The reply direction's addresses (after kube-proxy's translation) are not the flow's.
    dns = next(f for f in found if f.dport == 53 and f.dst == "10.96.0.10")
    assert dns.protocol == "udp"
    assert dns.state is None
    assert all(f.protocol in ("tcp", "udp") for f in found)  # icmp skipped


def test_what_the_pod_opened_is_cut_but_what_it_keeps() -> None:
    cut = flows.to_cut(flows.parse_conntrack(CONNTRACK), POD, Kept(dns=True), DNS)
    assert [str(f) for f in cut] == [
        "tcp 198.51.100.4:22",
        "tcp 203.0.113.7:3333",
        "udp 203.0.113.53:53",  # DNS, but not the cluster's: a tunnel's
    ]
    # Connections made to the pod (a probe, a scrape) and spent ones are left alone.
    assert not [f for f in cut if f.src != POD or f.state == "TIME_WAIT"]


def test_without_dns_the_cluster_dns_is_cut_too() -> None:
    cut = flows.to_cut(flows.parse_conntrack(CONNTRACK), POD, Kept(dns=False), DNS)
    assert "udp 10.96.0.10:53" in [str(f) for f in cut]


def test_an_allowed_service_is_kept_on_any_port() -> None:
    kept = Kept(dns=False, services=("203.0.113.7",))
    cut = flows.to_cut(flows.parse_conntrack(CONNTRACK), POD, kept, DNS)
    assert "tcp 203.0.113.7:3333" not in [str(f) for f in cut]


def test_the_annotation_reads_or_keeps_nothing() -> None:
    assert Kept.parse('{"dns": true, "services": ["10.96.5.5"]}') == Kept(True, ("10.96.5.5",))
    assert Kept.parse('{"dns": false}') == Kept(False, ())
    for garbage in (None, "", "nonsense", "[]", '{"services": ["not an ip"]}'):
        assert Kept.parse(garbage) == Kept(dns=False), garbage


def test_drops_cover_both_ways_and_read_back_as_iptables_lists_them() -> None:
    flow = flows.Flow("tcp", POD, 40190, "198.51.100.4", 22)
    rules = flows.drop_rules(flow, flows.tag("team-a", "rl-0"))
    assert rules[0][:4] == ["-s", f"{POD}/32", "-d", "198.51.100.4/32"]
    assert rules[1][:4] == ["-s", "198.51.100.4/32", "-d", f"{POD}/32"]
    listing = "\n".join(
        ["-N BREAKER-CUT"]
        + [
            " ".join(["-A", flows.CHAIN, *r]).replace(
                "--comment breaker:team-a/rl-0", '--comment "breaker:team-a/rl-0"'
            )
            for r in rules
        ]
    )
    assert flows.placed(listing) == {"breaker:team-a/rl-0": rules}


def test_the_socket_filter_names_each_flow_exactly() -> None:
    cut = [flows.Flow("tcp", POD, 40190, "198.51.100.4", 22)]
    assert flows.ss_filter(cut) == f"( src {POD}:40190 and dst 198.51.100.4:22 )"


def test_a_summary_counts_repeats() -> None:
    same = [flows.Flow("udp", POD, p, "203.0.113.53", 53) for p in (1, 2, 3)]
    assert flows.summary(same) == "udp 203.0.113.53:53 (x3)"


def test_a_node_has_an_agent_while_its_lease_is_renewed() -> None:
    now = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)
    assert lease_live(now - dt.timedelta(seconds=10), 30, now)
    assert not lease_live(now - dt.timedelta(seconds=31), 30, now)
    assert not lease_live(None, 30, now)
    assert lease_name("real-node-0") == "breaker-node-agent-real-node-0"
    assert coverage(["a", "b", "c"], ["b", "z"]) == {"cut": ["b"], "uncut": ["a", "c"]}
