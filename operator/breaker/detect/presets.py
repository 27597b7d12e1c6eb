"""The signal presets: PromQL over the metrics real GPU clusters export.

Each preset renders to ONE instant query returning one series per pod (or per node, for
node-scoped presets) for every pod at once; the cost of a tick grows with the number of
signals, never with the number of jobs. The exporters, and how their labels name a pod:

- NVIDIA DCGM exporter: per-GPU series labelled ``gpu``, ``UUID``, ``Hostname``, and, with
  Kubernetes mapping on, ``namespace`` and ``pod``. ``DCGM_FI_DEV_GPU_UTIL`` is a percent;
  the profiling fields ``DCGM_FI_PROF_*`` are 0-1 ratios.
- cAdvisor (kubelet): ``container_network_transmit_bytes_total{namespace,pod,interface}``.
- Cilium Hubble, with ``labelsContext=source_namespace,source_pod``: ``flows-to-world``
  (with its ``port`` option), ``tcp``, ``port-distribution``, ``drop`` and ``dns`` metrics
  (``dns`` needs Cilium's DNS proxy to see the pods' lookups: an L7 DNS rule).
- breaker's node agent, where there is no Cilium (the network presets' ``source:
  node-agent``): ``breaker_flows_total{scope,port}``, ``breaker_tcp_attempts_total`` and
  ``breaker_tcp_refused_total``, labelled ``source_namespace``/``source_pod`` as Hubble's
  are (``nodeagent/accounting.py`` says how each is counted).
- falcosidekick: ``falcosecurity_falcosidekick_falco_events_total{rule,priority,
  k8s_ns_name,k8s_pod_name}``.
- The job's own progress counter, ``training_steps_total{namespace,pod}`` by default.

Every preset's parameters, defaults, needed exporter settings and false-positive risks are
in docs/signals.md; ``catalog.PRESETS`` holds the parameter names and kinds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from breaker.api.common import parse_duration
from breaker.detect.catalog import PRESETS

Scope = Literal["pod", "node"]
Op = Literal[">", ">=", "<", "<=", "==", "!="]

DCGM = ("namespace", "pod")
HUBBLE = ("source_namespace", "source_pod")
FALCO = ("k8s_ns_name", "k8s_pod_name")


@dataclass(frozen=True)
class Across:
    """A signal decided for a workload's pods together: its value is the number of distinct
    values of ``label`` among their series (the query returns one series per pod and
    value), counted while the pods' own values (a SYN rate, say) add up to ``gate`` or
    more. A scan spread thinly over eight pods is one scan; eight pods reaching the same
    ports are not eight scans."""

    label: str
    gate: float = 0.0


@dataclass(frozen=True)
class Rendered:
    """A preset with its parameters filled in."""

    query: str
    labels: tuple[str, str]  # the result's (namespace label, pod label)
    operator: Op
    threshold: float
    lookback: str  # the longest range the query reads, for backtests to start after it
    scope: Scope = "pod"
    across: Across | None = None  # decided for a workload's pods together


def _counted(selector: str, window: str) -> str:
    """Counter growth over ``window``, including series born inside it.

    ``increase`` needs two samples, and exporters create a counter at its first event
    (falcosidekick at 1), so a single event would count as nothing; a series that did
    not exist ``window`` ago counts with its whole value.
    """
    return (
        f"((increase({selector}[{window}]) > 0) or ({selector} unless {selector} offset {window}))"
    )


def _string(value: str) -> str:
    """A PromQL double-quoted string literal."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _ports(value: str) -> str:
    return "|".join(p.strip() for p in value.split(",") if p.strip())


def _plus(*durations: str) -> str:
    """Durations added up, in seconds: how far back a query with offsets reads."""
    return f"{int(sum(parse_duration(d).total_seconds() for d in durations))}s"


def _mining_score(p: Mapping[str, str]) -> str:
    # Mining (ethash-like) is memory-bound: DRAM busy, tensor cores idle, SMs busy. Training
    # keeps tensor cores busy (mixed precision) or DRAM moderate (FP32). The score is DRAM
    # activity minus tensor activity on GPUs that are busy and memory-bound.
    # Joined on the GPU's own identity (UUID, and the MIG instance where there is one):
    # GPU indexes repeat across nodes and idle GPUs carry no pod.
    on = "on (namespace, pod, Hostname, UUID, GPU_I_ID)"
    held = '{pod!=""}'
    return (
        "max by (namespace, pod) ("
        f"(DCGM_FI_PROF_DRAM_ACTIVE{held} - {on} DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{held})"
        f" and {on} (DCGM_FI_PROF_DRAM_ACTIVE{held} >= {p['dramActiveMin']})"
        f" and {on} (DCGM_FI_PROF_GR_ENGINE_ACTIVE{held} >= {p['grEngineActiveMin']}))"
    )


def _gpu_mining_profile(p: Mapping[str, str]) -> Rendered:
    return Rendered(_mining_score(p), DCGM, ">=", float(p["scoreMin"]), "0s")


def _share_of_minutes(per_pod: str, window: str) -> str:
    """The share of the last ``window``'s minutes in which ``per_pod`` had a series (capped
    at 1: a subquery may return one point more than the window has minutes)."""
    minutes = max(1, int(parse_duration(window).total_seconds() // 60))
    return f"clamp_max(count_over_time(({per_pod})[{window}:1m]) / {minutes}, 1)"


def _gpu_mining_duty(p: Mapping[str, str]) -> Rendered:
    # A miner that knows the profile's `for` mines in stretches shorter than it, training
    # in between: the share of minutes with the profile still adds up.
    mining = f"{_mining_score(p)} >= {p['scoreMin']}"
    query = _share_of_minutes(mining, p["window"])
    return Rendered(query, DCGM, ">=", float(p["dutyMin"]), _plus(p["window"], "1m"))


def _tensor_collapse(p: Mapping[str, str]) -> Rendered:
    base, recent = p["baselineWindow"], p["recentWindow"]
    tensor = 'DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{pod!=""}'
    baseline = f"avg by (namespace, pod) (avg_over_time({tensor}[{base}] offset {recent}))"
    query = (
        f"(avg by (namespace, pod) (avg_over_time({tensor}[{recent}])) / {baseline})"
        f" and on (namespace, pod) ({baseline} >= {p['baselineMin']})"
        ' and on (namespace, pod) (avg by (namespace, pod) (DCGM_FI_PROF_GR_ENGINE_ACTIVE{pod!=""})'
        f" >= {p['grEngineActiveMin']})"
    )
    return Rendered(query, DCGM, "<=", float(p["dropRatio"]), _plus(base, recent))


def _gpu_busy_no_progress(p: Mapping[str, str]) -> Rendered:
    window, metric = p["window"], p["progressMetric"]
    query = (
        f'(avg by (namespace, pod) (DCGM_FI_DEV_GPU_UTIL{{pod!=""}}) >= {p["gpuUtilMin"]})'
        f" and on (namespace, pod) (sum by (namespace, pod) (increase({metric}[{window}])) == 0)"
    )
    # The value is the GPU utilisation; any series left means busy without progress.
    return Rendered(query, DCGM, ">", 0.0, window)


def _unallocated_gpu_activity(p: Mapping[str, str]) -> Rendered:
    query = f'max by (Hostname, gpu, UUID) (DCGM_FI_DEV_GPU_UTIL{{pod=""}}) >= {p["gpuUtilMin"]}'
    return Rendered(query, ("Hostname", "UUID"), ">", 0.0, "0s", scope="node")


def _to_world(p: Mapping[str, str]) -> str:
    """New flows to the world on the ``ports``, from the chosen ``source``."""
    ports = _ports(p["ports"])
    if p["source"] == "node-agent":
        return f'breaker_flows_total{{scope="world",port=~"{ports}"}}'
    return f'hubble_flows_to_world_total{{port=~"{ports}"}}'


def _mining_pool_egress(p: Mapping[str, str]) -> Rendered:
    window = p["window"]
    query = f"sum by (source_namespace, source_pod) ({_counted(_to_world(p), window)})"
    return Rendered(query, HUBBLE, ">", 0.0, window)


def _outbound_ssh(p: Mapping[str, str]) -> Rendered:
    # Persistence, not a single flow: the share of the last `window` minutes that saw SSH
    # flows to the world. A git clone over SSH lasts a minute; a reverse tunnel never ends.
    window = p["window"]
    flows = f"sum by (source_namespace, source_pod) ({_counted(_to_world(p), '1m')})"
    query = _share_of_minutes(f"{flows} > 0", window)
    return Rendered(query, HUBBLE, ">=", float(p["persistence"]), _plus(window, "1m"))


def ports_up_to(highest: int) -> str:
    """A regular expression matching the port numbers 1 to ``highest`` (a label's text)."""
    top = str(highest)
    parts = [f"[0-9]{{1,{len(top) - 1}}}"] if len(top) > 1 else []
    for at, digit in enumerate(top):
        low = 1 if at == 0 else 0
        if int(digit) > low:
            rest = len(top) - at - 1
            parts.append(
                f"{top[:at]}[{low}-{int(digit) - 1}]" + (f"[0-9]{{{rest}}}" if rest else "")
            )
    parts.append(top)
    return "|".join(parts)


def _scan_fanout(p: Mapping[str, str]) -> Rendered:
    # Fan-out: destination ports the pod had never reached until the last `window`
    # (series with that port it did not have then), while it keeps sending SYNs. Hubble's
    # port-distribution has a series per port; the node agent's flows too (its first 1,024).
    window, highest = p["window"], int(p["portMax"])
    agent = p["source"] == "node-agent"
    metric = "breaker_flows_total" if agent else "hubble_port_distribution_total"
    ports = f'{metric}{{port=~"{ports_up_to(highest)}"}}' if highest < 65535 else metric
    # Matched on the pod and port alone: the exporter's own labels (its pod, after a
    # rollout) and the protocol must not make a port new again.
    port_of = "on (source_namespace, source_pod, port)"
    fresh = f"{ports} unless {port_of} {metric} offset {window}"
    sent = _ATTEMPTS if agent else 'hubble_tcp_flags_total{flag="SYN"}'
    syns = f"sum by (source_namespace, source_pod) (rate({sent}[{window}]))"
    if p["across"] == "workload":
        # One series per pod and fresh port, valued at the pod's SYN rate: the engine counts
        # the workload's distinct ports while their SYN rates add up to synRateMin.
        by_port = f"count by (source_namespace, source_pod, port) ({fresh})"
        query = f"({by_port}) * 0 + on (source_namespace, source_pod) group_left () ({syns})"
        across = Across("port", float(p["synRateMin"]))
        return Rendered(query, HUBBLE, ">=", float(p["distinctPortsMin"]), window, across=across)
    by_port = f"count by (source_namespace, source_pod, port) ({fresh})"
    counted = f"count by (source_namespace, source_pod) ({by_port})"
    query = f"({counted}) and on (source_namespace, source_pod) ({syns} >= {p['synRateMin']})"
    return Rendered(query, HUBBLE, ">=", float(p["distinctPortsMin"]), window)


_ATTEMPTS = "breaker_tcp_attempts_total"


def _policy_drops(p: Mapping[str, str]) -> Rendered:
    # A scan of what the pod may not reach: breaker's own baseline policy drops it, and
    # Hubble reports it only as drops. The node agent sees it as SYNs sent (counted ahead
    # of the policy) that never became a connection (conntrack confirms only those let out).
    window = p["window"]
    by_pod = "sum by (source_namespace, source_pod)"
    if p["source"] == "node-agent":
        # The agent counts, per pod, the SYNs beyond the connections the node let out.
        # Counted, not rate(): the series is born at the pod's first, which rate() misses.
        refused = f"{by_pod} ({_counted('breaker_tcp_refused_total', window)})"
        minutes = parse_duration(window).total_seconds() / 60
        query = f"{refused} / {minutes:g}"
    else:
        query = f'{by_pod} (rate(hubble_drop_total{{reason="POLICY_DENIED"}}[{window}])) * 60'
    return Rendered(query, HUBBLE, ">=", float(p["perMinuteMin"]), window)


def _tunnel_queries(p: Mapping[str, str]) -> str:
    return f'hubble_dns_queries_total{{qtypes=~"{_string(p["qtypes"])}"}}'


def _dns_tunnel(p: Mapping[str, str]) -> Rendered:
    # A tunnel moves its data in the records it asks for, so it keeps asking: iodine polls
    # NULL records many times a second. A pod's own lookups are A and AAAA.
    window = p["window"]
    seconds = parse_duration(window).total_seconds()
    queries = f"sum by (source_namespace, source_pod) ({_counted(_tunnel_queries(p), window)})"
    return Rendered(f"{queries} / {seconds:g}", HUBBLE, ">=", float(p["perSecondMin"]), window)


def _dns_tunnel_persistent(p: Mapping[str, str]) -> Rendered:
    # A slow command channel (dnscat2 with a long delay) asks once every few seconds or
    # minutes, for as long as it lives: minute after minute, where a client that reads a
    # TXT record when it connects asks once.
    window = p["window"]
    queries = f"sum by (source_namespace, source_pod) ({_counted(_tunnel_queries(p), '1m')})"
    query = _share_of_minutes(f"{queries} > 0", window)
    return Rendered(query, HUBBLE, ">=", float(p["persistence"]), _plus(window, "1m"))


def transmit_rate(window: str) -> str:
    """A pod's transmit rate (bytes per second over ``window``), from the kubelet's cAdvisor."""
    return (
        "sum by (namespace, pod) "
        f'(rate(container_network_transmit_bytes_total{{interface="eth0"}}[{window}]))'
    )


def _egress_spike(p: Mapping[str, str]) -> Rendered:
    base, window = p["baselineWindow"], p["rateWindow"]
    sent = transmit_rate(window)
    baseline = f"avg_over_time(({sent})[{base}:{window}] offset {window})"
    gpu_pods = "on (namespace, pod) (count by (namespace, pod) (DCGM_FI_DEV_GPU_UTIL))"
    query = (
        f"(({sent}) / ({baseline} > 0))"
        f" and on (namespace, pod) (({sent}) >= {p['minBytesPerSecond']})"
        f" and {gpu_pods}"
    )
    return Rendered(query, DCGM, ">=", float(p["factor"]), _plus(base, window, window))


def _falco_rule_hits(p: Mapping[str, str]) -> Rendered:
    window = p["window"]
    # falcosidekick's `priority` label is a number; the name is in `priority_raw`.
    selector = (
        f'falcosecurity_falcosidekick_falco_events_total{{rule=~"{_string(p["rules"])}",'
        f'priority_raw=~"{_string(p["priorities"])}"}}'
    )
    query = f"sum by (k8s_ns_name, k8s_pod_name) ({_counted(selector, window)})"
    return Rendered(query, FALCO, ">", 0.0, window)


RENDERERS: dict[str, Callable[[Mapping[str, str]], Rendered]] = {
    "gpu-mining-profile": _gpu_mining_profile,
    "gpu-mining-duty": _gpu_mining_duty,
    "tensor-collapse": _tensor_collapse,
    "gpu-busy-no-progress": _gpu_busy_no_progress,
    "unallocated-gpu-activity": _unallocated_gpu_activity,
    "mining-pool-egress": _mining_pool_egress,
    "outbound-ssh": _outbound_ssh,
    "scan-fanout": _scan_fanout,
    "policy-drops": _policy_drops,
    "dns-tunnel": _dns_tunnel,
    "dns-tunnel-persistent": _dns_tunnel_persistent,
    "egress-spike": _egress_spike,
    "falco-rule-hits": _falco_rule_hits,
}


def render(preset: str, params: Mapping[str, str] | None = None) -> Rendered:
    """The preset's query with its defaults overridden by ``params`` (already checked)."""
    values = {name: param.default for name, param in PRESETS[preset].items()}
    values.update(params or {})
    return RENDERERS[preset](values)
