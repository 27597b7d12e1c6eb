"""The node agent's flow counting with fakes for iptables and conntrack: the rules it keeps
per pod, what an event and a count add to /metrics, and a pod's first flows before the
watch told its address."""

from __future__ import annotations

import subprocess
from typing import Any

import prometheus_client

from breaker.nodeagent import accounting, counting
from breaker.nodeagent.accounting import Source

MINER, OTHER = Source("agents", "miner-0"), Source("agents", "other-0")


class FakeNode:
    """The raw table's BREAKER-COUNT chain and a conntrack table, as the commands show them."""

    def __init__(self) -> None:
        self.rules: dict[str, tuple[list[str], int]] = {}
        self.conntrack = ""
        self.refuse: set[str] = set()  # comments whose rule iptables refuses

    def iptables(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        if args[2] == "-S":
            lines = [
                f"-A {accounting.COUNT_CHAIN} {' '.join(spec)} -c {packets} {packets * 60}"
                for spec, packets in self.rules.values()
            ]
            return subprocess.CompletedProcess(args, 0, "\n".join(lines), "")
        spec = list(args[4:])
        comment = spec[spec.index("--comment") + 1]
        if args[2] == "-A":
            if comment in self.refuse:
                return subprocess.CompletedProcess(args, 1, "", "iptables: Bad argument")
            self.rules[comment] = (spec, 0)
        elif args[2] == "-D":
            self.rules.pop(comment, None)
        return subprocess.CompletedProcess(args, 0, "", "")

    def run(self, command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(command, 0, self.conntrack, "")

    def syns(self, source: Source, packets: int) -> None:
        spec, _ = self.rules[source.comment]
        self.rules[source.comment] = (spec, packets)


def counter(node: FakeNode, pods: dict[str, Source]) -> tuple[counting.FlowCounter, Any]:
    registry = prometheus_client.CollectorRegistry()
    state = {"pods": counting.Pods(pods, 1)}
    found = counting.FlowCounter(
        lambda: state["pods"], node.iptables, registry, interval=10, run=node.run
    )
    return found, (registry, state)


def value(registry: prometheus_client.CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def event(src: str, dport: int, sport: int = 40000) -> str:
    return (
        f"    [NEW] tcp      6 120 SYN_SENT src={src} dst=203.0.113.7 sport={sport} "
        f"dport={dport} [UNREPLIED] src=203.0.113.7 dst=10.0.0.5 sport={dport} dport={sport}"
    )


def test_each_ipv4_pod_gets_one_counting_rule_and_a_refused_one_is_said_not_fatal() -> None:
    node = FakeNode()
    node.refuse.add(OTHER.comment)
    flows, (registry, _) = counter(
        node, {"10.244.1.7": MINER, "10.244.1.8": OTHER, "fd00::7": Source("agents", "v6")}
    )
    flows.count()
    assert list(node.rules) == [MINER.comment]  # the IPv6 pod has none; OTHER's refused
    assert value(registry, "breaker_tcp_attempts_total", source_namespace="agents",
                 source_pod="miner-0") == 0  # fmt: skip
    node.syns(MINER, 30)
    flows.opened(event("10.244.1.7", 3333))
    flows.count()
    labels = {"source_namespace": "agents", "source_pod": "miner-0"}
    assert value(registry, "breaker_tcp_attempts_total", **labels) == 30
    assert value(registry, "breaker_tcp_refused_total", **labels) == 29
    assert (
        value(registry, "breaker_flows_total", **labels, protocol="tcp", scope="world", port="3333")
        == 1
    )


def test_a_pods_first_flows_wait_for_its_address_then_count() -> None:
    node = FakeNode()
    flows, (registry, state) = counter(node, {})
    flows.opened(event("10.244.1.7", 22))  # before the watch told the agent
    labels = {"source_namespace": "agents", "source_pod": "miner-0", "scope": "world"}
    assert value(registry, "breaker_flow_new_ports_total", **labels) is None
    state["pods"] = counting.Pods({"10.244.1.7": MINER}, 2)
    flows.opened(event("10.244.1.7", 3333))
    assert value(registry, "breaker_flow_new_ports_total", **labels) == 2  # 22 and 3333


def test_a_pod_gone_from_the_node_loses_its_rule_then_its_series() -> None:
    node = FakeNode()
    flows, (registry, state) = counter(node, {"10.244.1.7": MINER})
    flows.count()
    flows.opened(event("10.244.1.7", 3333))
    state["pods"] = counting.Pods({}, 2)
    flows.count()
    assert node.rules == {}
    labels = {"source_namespace": "agents", "source_pod": "miner-0"}
    flows_series = {**labels, "protocol": "tcp", "scope": "world", "port": "3333"}
    assert value(registry, "breaker_flows_total", **flows_series) == 1  # a last scrape
    flows.ledger.gone = dict.fromkeys(flows.ledger.gone, -accounting.GONE_SECONDS)
    flows.count()
    assert value(registry, "breaker_flows_total", **flows_series) is None
    assert flows.metrics.series == {}
