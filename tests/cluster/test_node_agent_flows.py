"""The network presets without Cilium: the node agent counts the real node's pods' flows
from the kernel (conntrack and its SYN counting rules), the local Prometheus scrapes it,
and the presets with ``source: node-agent`` read those series, one query per signal, as
the operator's evaluation does (a signal across a workload's pods combined by Job, as
the operator's engine does).

The pods run ``/agent play``: a reverse tunnel to 198.51.100.4:22, a pool session with
203.0.113.7:3333, TXT lookups at 203.0.113.53, and a scan of 30 closed ports on the pool
host (each refused at once: no listing of the conntrack table would ever see them).
A second pod plays the same under a NetworkPolicy that refuses all its egress: the node
rejects every attempt, and only the SYN counters see them.
"""

from __future__ import annotations

from typing import Any

from breaker.api.policy import BreakerPolicySpec
from breaker.detect import engine, live
from breaker.detect.prom import Prom
from breaker_tooling.localcluster import outside, packets
from tests.cluster.scenes import Cluster, batch_job
from tests.conftest import NodeAgent
from tests.helpers import wait_for
from tests.kube import as_body, name_of, status_of

SCAN_PORTS = ",".join(str(port) for port in range(1000, 1030))
AGENT = {"source": "node-agent"}
SIGNALS = [
    {"name": "pool", "preset": "mining-pool-egress", "params": AGENT},
    {
        "name": "scan",
        "preset": "scan-fanout",
        "params": {**AGENT, "window": "2m", "distinctPortsMin": "20", "synRateMin": "0.05"},
    },
    {"name": "refused", "preset": "policy-drops", "params": {**AGENT, "window": "1m"}},
    {
        "name": "spread",
        "preset": "scan-fanout",
        "params": {**AGENT, "across": "workload", "window": "2m", "portMax": "32767"},
    },
]


def job(name: str, command: list[str]) -> dict[str, Any]:
    return batch_job(name, packets.pod_template(name, command, grace=1))


def pod_of(c: Cluster, app: str) -> str:
    def named() -> str | None:
        pods = c.core.list_namespaced_pod(c.ns, label_selector=f"app={app}").items
        running = [p for p in pods if status_of(p).phase == "Running" and status_of(p).pod_ip]
        return name_of(running[0]) if running else None

    return str(wait_for(named, f"a running pod of {app}", 90))


def test_the_network_presets_read_the_node_agents_counts_of_real_flows(
    cluster: Cluster, node_agent: NodeAgent
) -> None:
    c = cluster
    prom = Prom(c.local.prometheus_url, 10)
    # Everything the refused pod sends out is rejected by the node's NetworkPolicy.
    refuse_all = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "refuse-all"},
        "spec": {"podSelector": {"matchLabels": {"app": "refused"}}, "policyTypes": ["Egress"]},
    }
    c.net.create_namespaced_network_policy(c.ns, as_body(refuse_all))
    scanning = packets.play(scan=f"{outside.POOL[0]}/32", scan_at=5.0, scan_ports=SCAN_PORTS)
    c.batch.create_namespaced_job(c.ns, as_body(job("miner", scanning)))
    c.batch.create_namespaced_job(c.ns, as_body(job("refused", packets.play(dns_at=None))))
    miner, refused = pod_of(c, "miner"), pod_of(c, "refused")
    detector = engine.compile_policy(BreakerPolicySpec.model_validate({"signals": SIGNALS}))

    def job_of(key: engine.PodKey) -> str | None:
        return key[1].rsplit("-", 1)[0] if key[0] == c.ns else None  # the Job's pods: NAME-xxxxx

    def readings() -> dict[str, dict[str, float]] | None:
        found, errors, queries = live.read(prom, detector)
        assert not errors, errors
        assert queries == len(SIGNALS)  # one query per signal, whatever the pods
        values = {
            name: {pod: sample.value for (ns, pod), sample in (by_pod or {}).items() if ns == c.ns}
            for name, by_pod in found.items()
        }
        # Across the workload's pods: the engine combines them by Job, as the operator does.
        across = detector.signal("spread").across
        assert across is not None
        combined = engine.combine(across, found["spread"] or {}, job_of)
        values["spread"] = {pod: sample.value for (_, pod), sample in combined.values()}
        holds = {
            name: {pod for pod, v in values[name].items() if detector.signal(name).holds(v)}
            for name in values
        }
        wanted = {"pool": {miner}, "scan": {miner}, "refused": {refused}, "spread": {miner}}
        return values if all(wanted[n] <= holds[n] for n in wanted) else None

    values = wait_for(readings, "each preset holding for its pod, on the agent's series", 120)
    # The refused pod's attempts never became connections; the miner's all did.
    assert refused not in values["pool"]
    assert values["refused"].get(miner, 0.0) < 30
    assert values["scan"][miner] >= 30  # the scan's ports, and the tunnel's and pool's

    def counted(query: str) -> float:
        return sum(float(s["value"][1]) for s in prom.instant(query, None))

    where = f'source_namespace="{c.ns}", source_pod="{miner}"'
    # The tunnel is there as a flow to the world on port 22, with bytes both ways.
    assert counted(f'breaker_flows_total{{{where}, scope="world", port="22"}}') >= 1
    sent = f'breaker_flow_bytes_total{{{where}, direction="out", scope="world"}}'
    wait_for(lambda: counted(sent) > 0, "bytes of the miner's flows to the world", 30)
    assert counted(f"breaker_dns_lookups_total{{{where}}}") >= 1
