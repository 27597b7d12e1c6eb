"""The node agent's decisions: which flows of a quarantined pod to cut, the rules and
filters that cut them, what a pod keeps, and whether a node's agent is there."""

from __future__ import annotations

import datetime as dt
import subprocess

from breaker.actions.connections import (
    Inbound,
    Kept,
    coverage,
    kept_annotation,
    lease_live,
    lease_name,
)
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
# Made to the pod: a reverse tunnel's far end dialling in directly, one through a NodePort
# (translated, and masqueraded to the node's address), the node's probe, a scrape; and
# SCTP, GRE and a protocol conntrack has no name for (IP in IP), the pod's own.
INBOUND = """tcp      6 431999 ESTABLISHED src=198.51.100.4 dst=10.244.49.3 sport=51234 dport=2222 src=10.244.49.3 dst=198.51.100.4 sport=2222 dport=51234 [ASSURED] mark=0 use=1
tcp      6 431999 ESTABLISHED src=203.0.113.7 dst=10.250.49.2 sport=40000 dport=30022 src=10.244.49.3 dst=10.244.49.1 sport=2222 dport=61000 [ASSURED] mark=0 use=1
tcp      6 86399 ESTABLISHED src=10.244.49.1 dst=10.244.49.3 sport=51000 dport=8080 src=10.244.49.3 dst=10.244.49.1 sport=8080 dport=51000 [ASSURED] mark=0 use=1
tcp      6 86399 ESTABLISHED src=10.250.0.1 dst=10.244.49.3 sport=52000 dport=9100 src=10.244.49.3 dst=10.250.0.1 sport=9100 dport=52000 [ASSURED] mark=0 use=1
sctp     132 431999 ESTABLISHED src=10.244.49.3 dst=198.51.100.4 sport=5000 dport=5001 src=198.51.100.4 dst=10.244.49.3 sport=5001 dport=5000 [ASSURED] mark=0 use=1
gre      47 179 src=10.244.49.3 dst=198.51.100.4 srckey=0x0 dstkey=0x0 src=198.51.100.4 dst=10.244.49.3 srckey=0x0 dstkey=0x0 mark=0 use=1
unknown  4 599 src=10.244.49.3 dst=198.51.100.4 src=198.51.100.4 dst=10.244.49.3 mark=0 use=1
[DESTROY] icmp     1 src=10.244.49.3 dst=198.51.100.4 type=8 code=0 id=9 packets=4 bytes=336 src=198.51.100.4 dst=10.244.49.3 type=0 code=0 id=9 packets=4 bytes=336
"""  # noqa: E501
NODE = ("10.244.49.1", "10.250.49.2")
DNS = ("10.96.0.10",)
CLUSTER = ("10.0.0.0/8", "192.168.0.0/16")


def test_conntrack_lines_read_both_directions_of_every_protocol() -> None:
    found = flows.parse_conntrack(CONNTRACK)
    tunnel = next(f for f in found if f.dport == 22)
    assert tunnel[:6] == ("tcp", POD, 40190, "198.51.100.4", 22, "ESTABLISHED")
    assert (tunnel.reply_src, tunnel.reply_sport, tunnel.number) == ("198.51.100.4", 22, 6)
    # kube-proxy's translation shows in the reply direction: the resolver pod answers.
    dns = next(f for f in found if f.dport == 53 and f.dst == "10.96.0.10")
    assert (dns.protocol, dns.state, dns.reply_src) == ("udp", None, "10.244.49.2")
    ping = next(f for f in found if f.protocol == "icmp")
    assert (ping.src, ping.dst, ping.sport, ping.dport, ping.number) == (
        POD, "203.0.113.7", 0, 0, 1
    )  # fmt: skip
    others = {f.protocol: f for f in flows.parse_conntrack(INBOUND)}
    assert (others["sctp"].sport, others["sctp"].state) == (5000, "ESTABLISHED")
    assert (others["gre"].dst, others["gre"].number) == ("198.51.100.4", 47)
    assert (others["unknown"].dst, others["unknown"].number) == ("198.51.100.4", 4)
    assert others["icmp"].dst == "198.51.100.4"  # an event line, without a timeout
    forwarded = next(f for f in flows.parse_conntrack(INBOUND) if f.dport == 30022)
    assert forwarded.inbound(POD)
    assert (forwarded.reply_dst, forwarded.reply_dport) == ("10.244.49.1", 61000)


def test_what_the_pod_opened_is_cut_but_what_it_keeps() -> None:
    cut = flows.to_cut(flows.parse_conntrack(CONNTRACK), POD, Kept(dns=True), DNS, NODE)
    assert [str(f) for f in cut] == [
        "icmp 203.0.113.7",  # a ping flow: an ICMP tunnel's channel
        "tcp 198.51.100.4:22",
        "tcp 203.0.113.7:3333",
        "udp 203.0.113.53:53",  # DNS, but not the cluster's: a tunnel's
    ]
    # The node's probe, and spent connections, are left alone.
    assert not [f for f in cut if f.src in NODE or f.state == "TIME_WAIT"]


def test_what_was_made_to_the_pod_is_cut_but_the_probe_and_the_scrape() -> None:
    scrape = Inbound("10.250.0.0/24", (9100,))
    kept = Kept(dns=True, inbound=(scrape,))
    cut = flows.to_cut(flows.parse_conntrack(INBOUND), POD, kept, DNS, NODE)
    assert [f.described(POD) for f in cut] == [
        "gre 198.51.100.4",
        "icmp 198.51.100.4",
        "sctp 198.51.100.4:5001",
        "tcp from 198.51.100.4 to port 2222",  # the reverse tunnel's far end, dialled in
        "tcp from 203.0.113.7 to port 2222",  # the same through a NodePort
        "unknown 198.51.100.4",
    ]
    # The scrape on another port of the pod is not the scrape.
    elsewhere = Kept(dns=True, inbound=(Inbound("10.250.0.0/24", (8080,)),))
    assert "tcp from 10.250.0.1 to port 9100" in [
        f.described(POD)
        for f in flows.to_cut(flows.parse_conntrack(INBOUND), POD, elsewhere, DNS, NODE)
    ]


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
    for garbage in (
        None,
        "",
        "nonsense",
        "[]",
        '{"services": ["not an ip"]}',
        '{"dns": true, "inbound": [{"ports": [1]}]}',
        '{"dns": true, "inbound": [{"from": "nowhere"}]}',
    ):
        assert Kept.parse(garbage) == Kept(dns=False), garbage


def test_the_annotation_the_operator_writes_reads_back() -> None:
    scrape = Inbound("10.250.0.0/24", (9100,))
    text = kept_annotation(False, ["10.96.5.5"], [scrape], 1765000000.1234, True)
    assert text == (
        '{"dns":false,"inbound":[{"from":"10.250.0.0/24","ports":[9100]}],'
        '"killSessions":true,"services":["10.96.5.5"],"since":1765000000.123}'
    )
    assert Kept.parse(text) == Kept(False, ("10.96.5.5",), (scrape,), 1765000000.123, True)
    assert Kept.parse(text).lets_in("10.250.0.7", 9100)
    assert not Kept.parse(text).lets_in("10.250.0.7", 22)
    assert not Kept.parse(text).lets_in("198.51.100.4", 9100)


def test_drops_cover_both_ways_and_read_back_as_iptables_lists_them() -> None:
    flow = flows.Flow("tcp", POD, 40190, "198.51.100.4", 22)
    rules = flows.drop_rules(flow, flows.tag("team-a", "rl-0"), POD, CLUSTER)
    assert rules[0][:4] == ["-s", f"{POD}/32", "-d", "198.51.100.4/32"]
    assert rules[1][:4] == ["-s", "198.51.100.4/32", "-d", f"{POD}/32"]
    assert flows.same_rule([*rules[0][:5], "6", *rules[0][6:]], rules[0])  # -p 6 is tcp
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


def test_each_direction_is_dropped_as_its_packets_reach_the_node() -> None:
    """Through a NodePort, the far end's packets come to the node's port and the pod's
    replies go to the node: each way is dropped as it arrives, before translation."""
    forwarded = next(f for f in flows.parse_conntrack(INBOUND) if f.dport == 30022)
    there, back = flows.drop_rules(forwarded, "c", POD, CLUSTER)
    assert there[:12] == [
        "-s", "203.0.113.7/32", "-d", "10.250.49.2/32", "-p", "tcp",
        "-m", "tcp", "--sport", "40000", "--dport", "30022",
    ]  # fmt: skip
    assert back[:12] == [
        "-s", f"{POD}/32", "-d", "10.244.49.1/32", "-p", "tcp",
        "-m", "tcp", "--sport", "2222", "--dport", "61000",
    ]  # fmt: skip
    # A protocol without ports: everything of it between the two ends.
    gre = next(f for f in flows.parse_conntrack(INBOUND) if f.protocol == "gre")
    assert [r[:6] for r in flows.drop_rules(gre, "c", POD, CLUSTER)] == [
        ["-s", f"{POD}/32", "-d", "198.51.100.4/32", "-p", "gre"],
        ["-s", "198.51.100.4/32", "-d", f"{POD}/32", "-p", "gre"],
    ]
    ipip = next(f for f in flows.parse_conntrack(INBOUND) if f.protocol == "unknown")
    assert flows.drop_rules(ipip, "c", POD, CLUSTER)[0][5] == "4"
    assert flows.conntrack_delete(ipip) == ["-s", POD, "-d", "198.51.100.4"]


def test_no_drop_between_the_node_or_another_pod_and_anyone() -> None:
    """A pod's ping translated to the node's address (SNAT) answers to the node: a drop of
    every ICMP packet from the far end to the node would cut the node's own pings. A
    connection another pod made to a Service the held pod backs: a drop of that pod's
    packets to the Service address would cut it from the Service's other backends."""
    snat = flows.parse_conntrack(
        "icmp     1 29 src=10.244.49.3 dst=192.168.0.12 type=8 code=0 id=5 "
        "src=192.168.0.12 dst=10.250.49.2 type=0 code=0 id=5 mark=0 use=1\n"
    )[0]
    assert [r[:4] for r in flows.drop_rules(snat, "c", POD, CLUSTER)] == [
        ["-s", f"{POD}/32", "-d", "192.168.0.12/32"]
    ]
    service = flows.parse_conntrack(
        "tcp      6 86399 ESTABLISHED src=10.244.7.9 dst=10.96.5.5 sport=41000 dport=80 "
        "src=10.244.49.3 dst=10.244.7.9 sport=8080 dport=41000 [ASSURED] mark=0 use=1\n"
    )[0]
    assert [r[:4] for r in flows.drop_rules(service, "c", POD, CLUSTER)] == [
        ["-s", f"{POD}/32", "-d", "10.244.7.9/32"]
    ]


def test_rules_of_an_address_the_pod_had_before_are_told_apart() -> None:
    old = "10.244.49.99"
    placed = [
        ["-s", f"{old}/32", "-m", "comment", "--comment", "c", "-j", "BRK-O-abc"],
        ["-s", f"{POD}/32", "-m", "comment", "--comment", "c", "-j", "BRK-O-abc"],
        ["-s", f"{old}/32", "-d", "198.51.100.4/32", "-p", "icmp", "-j", "DROP"],
        ["-s", "198.51.100.4/32", "-d", f"{POD}/32", "-p", "icmp", "-j", "DROP"],
    ]
    assert flows.elsewhere(placed, POD) == [placed[0], placed[2]]


def test_a_long_named_pods_comment_stays_its_own() -> None:
    long = "p" * 240
    assert flows.tag("ns", long + "a") != flows.tag("ns", long + "b")
    assert len(flows.tag("ns", long + "a")) <= 250


def test_the_socket_filter_names_each_flow_as_the_pod_sees_it() -> None:
    found = flows.parse_conntrack(CONNTRACK + INBOUND)
    cut = flows.to_cut(found, POD, Kept(dns=False), DNS, NODE)
    filters = flows.sockets(cut, POD)
    assert set(filters) == {"-t", "-u"}  # sctp, gre, icmp: no socket to destroy
    assert f"( src {POD}:40190 and dst 198.51.100.4:22 )" in filters["-t"]
    # Made to the pod: its end is the local one, the far end as it reached it.
    assert f"( src {POD}:2222 and dst 198.51.100.4:51234 )" in filters["-t"]
    assert f"( src {POD}:2222 and dst 10.244.49.1:61000 )" in filters["-t"]


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


def test_a_held_pod_is_fenced_off_the_world_both_ways_but_its_scrape() -> None:
    """Every packet between the pod and an address outside the cluster's ranges (and the
    node's own) is dropped, either way, whatever its protocol; the scrape's source excepted."""
    comment = flows.tag("team-a", "rl-0")
    kept = Kept(dns=False, inbound=(Inbound("198.51.100.1/32", (2222,)), Inbound("fd00::/8")))
    found = flows.fence(POD, comment, ["10.0.0.0/8", "10.250.49.2/32", "fc00::/7"], kept)
    out, into = flows.fence_chains(comment)
    assert out.startswith("BRK-O-")
    assert into.startswith("BRK-I-")
    assert len(out) <= 28
    assert found[flows.CHAIN] == [
        ["-s", f"{POD}/32", "-m", "comment", "--comment", comment, "-j", out],
        ["-d", f"{POD}/32", "-m", "comment", "--comment", comment, "-j", into],
    ]
    assert found[out] == [
        ["-d", "10.0.0.0/8", "-j", "RETURN"],
        ["-d", "10.250.49.2/32", "-j", "RETURN"],
        ["-d", "198.51.100.1/32", "-j", "RETURN"],  # the scrape's replies
        flows.RESET_OUT,  # a reset, as a socket is destroyed: the far end knows at once
        ["-j", "DROP"],
    ]
    assert found[into][-2:] == [["-s", "198.51.100.1/32", "-j", "RETURN"], ["-j", "DROP"]]
    listing = "\n".join(
        [f"-N {flows.CHAIN}", f"-N {out}", f"-N {into}"]
        + [" ".join(["-A", out, *rule]) for rule in found[out]]
    )
    assert flows.chains(listing) == [out, into]
    assert flows.chain_rules(listing, out) == found[out]
    assert flows.chain_rules(listing, into) == []


def test_a_newly_held_pod_s_sockets_are_reset_before_it_is_fenced() -> None:
    """Fenced first, a pod's sends are dropped and its sequence runs ahead of what the far
    end received: a reset sent then is out of the far end's window (RFC 5961) and the far
    end never learns the connection is gone. So the reset comes first."""
    from breaker.nodeagent.agent import NodeAgent, Pod, Settings

    agent = NodeAgent(None, Settings(node="n", namespace="breaker-system", flow_interval=0))  # type: ignore[arg-type]
    pod = Pod("a", "rl-0", "uid", "10.244.1.5", "rl-guard", Kept())
    steps: list[str] = []
    tunnel = flows.Flow("tcp", "10.244.1.5", 40000, "198.51.100.4", 22, "ESTABLISHED",
                        "198.51.100.4", "10.244.1.5", 22, 40000)  # fmt: skip
    agent.held = lambda: {"a/rl-0": pod}  # type: ignore[method-assign]
    agent._iptables = lambda *args, **kwargs: subprocess.CompletedProcess(args, 0, "", "")  # type: ignore[method-assign]
    agent._node_addresses = lambda: ("10.250.0.2",)  # type: ignore[method-assign]
    agent._conntrack = lambda ip: [tunnel]  # type: ignore[method-assign]
    agent._reset_sockets = lambda pod, cut: steps.append(f"reset {len(cut)}")  # type: ignore[method-assign]
    agent._fence = lambda *args: steps.append("fence")  # type: ignore[method-assign]
    said: list[str] = []
    agent._event = lambda pod, reason, message: said.append(f"{reason}: {message}")  # type: ignore[method-assign]
    agent._fence_pass(everything=False)
    assert steps == ["reset 1", "fence"]
    # What was reset is said: the later passes see the tunnel closed and do not name it.
    assert len(said) == 1
    assert "tcp 198.51.100.4:22" in said[0]
    agent._fence_pass(everything=True)  # fenced already: checked, nothing reset again
    assert steps == ["reset 1", "fence", "fence"]
