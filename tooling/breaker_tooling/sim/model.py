"""What each behaviour looks like to the exporters, sample by sample. Pure and deterministic.

The figures are shaped after what the real exporters report for such workloads: DCGM's
utilisation in percent and its profiling counters as 0-1 ratios, counters that only grow
(and reset on restart), Hubble flows labelled by source pod and destination port, Falco
rule names as Falco's own rules spell them. Noise is a hash of (pod, time, series), so the
same scenario always yields the same series.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from breaker_tooling.sim.scenario import GPU_BEHAVIOURS, Scenario, SimPod

Labels = tuple[tuple[str, str], ...]

# (utilisation %, graphics engine, tensor pipe, DRAM) ranges, and training steps per second.
GPU_PROFILES: dict[str, tuple[tuple[float, float], ...]] = {
    "train-mixed": ((95, 99), (0.85, 0.95), (0.35, 0.55), (0.25, 0.40)),
    "train-fp32": ((94, 99), (0.85, 0.95), (0.0, 0.02), (0.35, 0.50)),
    "eval": ((85, 95), (0.65, 0.80), (0.25, 0.35), (0.20, 0.30)),
    "data-loader-stall": ((0, 8), (0.0, 0.06), (0.0, 0.01), (0.0, 0.03)),
    "loading-checkpoint": ((0, 5), (0.0, 0.05), (0.0, 0.01), (0.05, 0.10)),
    "mine": ((99, 100), (0.92, 0.98), (0.0, 0.01), (0.90, 0.98)),
    "mine-while-training": ((99, 100), (0.90, 0.97), (0.12, 0.20), (0.88, 0.95)),
    # RL rollouts and LLM decode: memory-bound, light tensor use, the step counter flat.
    "rollout": ((90, 100), (0.60, 0.80), (0.05, 0.15), (0.55, 0.80)),
    "idle": ((0, 0), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0)),
}
STEPS_PER_SECOND = {"train-mixed": 2.0, "train-fp32": 0.8, "mine-while-training": 0.3}
RESTART_LOAD_SECONDS = 120.0
BASE_TX = 50e3  # logs and metrics, bytes per second
BASE_DNS_PER_SECOND = 0.2  # A and AAAA each

SCAN_RATES = {
    "internal-scan-trickle": 0.05,
    "internal-scan-slow": 0.1,
    "internal-scan-medium": 10.0,
    "internal-scan-fast": 50.0,
    "internal-scan-burst": 200.0,
}
FALCO_RULES = {
    "package-install": ("Launch Package Management Process in Container", "Error"),
    "miner-pool-egress": ("Detect crypto miners using the Stratum protocol", "Critical"),
    "tunnel-over-443": ("Disallowed SSH Connection Non Standard Port", "Notice"),
    "internal-scan-fast": ("Launch Suspicious Network Tool in Container", "Notice"),
}
# falcosidekick labels `priority` with Falco's number for it and `priority_raw` with its name.
FALCO_PRIORITY = {"Critical": "2", "Error": "3", "Warning": "4", "Notice": "5"}


def noise(*parts: object) -> float:
    """A deterministic number in [0, 1) for these parts."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def between(low_high: tuple[float, float], *parts: object) -> float:
    low, high = low_high
    return low + (high - low) * noise(*parts)


@dataclass
class PodState:
    """Counters of one pod, carried from sample to sample."""

    steps: float = 0.0
    tx: float = 0.0
    flows: dict[int, float] = field(default_factory=dict)  # to the world, by port
    ports: dict[int, float] = field(default_factory=dict)  # port distribution
    syns: float = 0.0
    drops: float = 0.0
    falco: dict[tuple[str, str], float] = field(default_factory=dict)
    dns: dict[str, float] = field(default_factory=dict)  # queries, by Hubble's qtypes
    scanned: int = 0
    scan_from: int = 1  # the first port its scans probe
    key: str = ""  # the pod's, for what differs from pod to pod
    joins: int = 0  # times it joined its peers' ring
    trickle: float = 0.0  # a slow scan's probes not yet made
    restarted_at: float | None = None


@dataclass(frozen=True)
class Series:
    name: str
    kind: str  # "gauge" or "counter"
    labels: Labels
    value: float


def gpu_behaviour(pod: SimPod, offset: float) -> tuple[str, float]:
    """The GPU behaviour at ``offset`` and when it started (the latest started wins)."""
    current, started = "idle", -1.0
    for segment in pod.timeline:
        if segment.do in GPU_BEHAVIOURS and segment.active(offset):
            begin = _seconds(segment.at)
            if begin >= started:
                current, started = segment.do, begin
    return current, started


def _seconds(text: str) -> float:
    from breaker.api.common import parse_duration

    return parse_duration(text).total_seconds()


def net_behaviours(pod: SimPod, offset: float) -> list[tuple[str, float]]:
    return [
        (s.do, s.began(offset))
        for s in pod.timeline
        if s.do not in GPU_BEHAVIOURS and s.active(offset)
    ]


def advance(pod: SimPod, state: PodState, offset: float, dt: float) -> str:
    """Move the pod's counters forward by ``dt`` seconds ending at ``offset``; the GPU profile."""
    behaviour, started = gpu_behaviour(pod, offset)
    profile = behaviour
    if behaviour == "restart-from-checkpoint":
        if state.restarted_at != started:
            state.restarted_at, state.steps = started, 0.0  # a new process: the counter resets
        profile = "loading-checkpoint" if offset - started < RESTART_LOAD_SECONDS else "train-mixed"
    state.steps += STEPS_PER_SECOND.get(profile, 0.0) * dt

    tx = BASE_TX
    state.scan_from, state.key = pod.scan_from, pod.key
    # Every pod resolves a few names (its logging and metrics endpoints, through the
    # search path): A and AAAA, a fraction of a query a second each.
    _dns(state, "A", BASE_DNS_PER_SECOND * dt)
    _dns(state, "AAAA", BASE_DNS_PER_SECOND * dt)
    for name, began in net_behaviours(pod, offset):
        since = offset - began
        tx += _network(name, state, since, dt, pod, offset)
    state.tx += tx * dt
    return profile


def _network(
    name: str, state: PodState, since: float, dt: float, pod: SimPod, offset: float
) -> float:
    """Count one network behaviour's flows and return its transmit rate (bytes per second)."""
    for kind in (_benign_network, _hostile_network, _scan_network, _dns_network):
        rate = kind(name, state, since, dt)
        if rate is not None:
            return rate
    raise ValueError(f"unknown behaviour {name}")


def _flow(state: PodState, port: int, count: float) -> None:
    state.flows[port] = state.flows.get(port, 0.0) + count
    state.ports[port] = state.ports.get(port, 0.0) + count


def _dns(state: PodState, qtypes: str, count: float) -> None:
    state.dns[qtypes] = state.dns.get(qtypes, 0.0) + count


def _falco(state: PodState, name: str, per_minute: float, dt: float) -> None:
    rule = FALCO_RULES[name]
    state.falco[rule] = state.falco.get(rule, 0.0) + per_minute * dt / 60


def _benign_network(name: str, state: PodState, since: float, dt: float) -> float | None:
    """What training does on the network; None if ``name`` is not one of these."""
    if name == "checkpoint-upload":
        _flow(state, 443, 0.4 * dt)
        state.syns += 0.2 * dt
        return 400e6
    if name == "nccl-allreduce":
        for port in (29500, 29501, 29502, 29503):
            state.ports[port] = state.ports.get(port, 0.0) + 2 * dt
        if since < dt:
            state.syns += 16
        return 1.5e9
    if name == "nccl-ring-join":
        # Joining a ring: NCCL and Gloo connect to the ports their peers listen on, which
        # each peer took from the kernel's ephemeral range (32768-60999) when it started:
        # two new ports a pod, different in every pod and at every join.
        if since < dt:
            state.joins += 1
            for peer in (0, 1):
                port = 32768 + int(noise(state.key, state.joins, peer) * 28231)
                state.ports[port] = state.ports.get(port, 0.0) + 1
            state.syns += 16
        return 1.5e9
    if name == "package-install":
        _flow(state, 443, 1.5 * dt)
        _flow(state, 80, 0.3 * dt)
        state.syns += 2 * dt
        _falco(state, name, 2, dt)
        return 2e6
    if name == "git-over-ssh":
        _flow(state, 22, 0.2 * dt)
        state.syns += 0.1 * dt
        return 1e6
    return None


def _hostile_network(name: str, state: PodState, since: float, dt: float) -> float | None:
    """Mining and tunnels out; None if ``name`` is not one of these."""
    if name == "mine-unallocated-gpus":
        return 0.0  # its GPUs show in samples(): busy, on the node, held by no pod
    if name == "miner-pool-egress":
        _flow(state, 3333, 0.1 * dt)
        _falco(state, name, 4, dt)
        return 5e3
    if name == "miner-pool-egress-tls":
        _flow(state, 443, 0.1 * dt)  # looks like any HTTPS client
        return 5e3
    if name == "reverse-ssh-tunnel":
        _flow(state, 22, 0.1 * dt)  # keepalives on one long-lived connection
        return 20e3
    if name == "tunnel-over-443":
        _flow(state, 443, 0.1 * dt)
        _falco(state, name, 1, dt)
        return 20e3
    return None


def _scan_network(name: str, state: PodState, since: float, dt: float) -> float | None:
    """Internal scans, blocked or not; None if ``name`` is not one of these."""
    if name == "internal-scan-blocked":
        # Probes the pod's NetworkPolicy drops: Hubble counts them as drops, nothing more.
        probes = 2.0 * dt
        state.syns += probes
        state.drops += probes
        return 10e3
    if name == "connection-storm-443":
        # A parallel downloader opening hundreds of connections to object storage at once:
        # SYNs at a scan's rate, all to one port.
        _flow(state, 443, 150.0 * dt)
        state.syns += 150.0 * dt
        return 800e6
    if name in SCAN_RATES:
        rate = SCAN_RATES[name]
        probes = rate * dt
        # Each probe tries the next port of a target; port-distribution has one series each.
        # A sample carries at least one, except for a trickle (under one a sample), whose
        # probes add up from sample to sample.
        if probes < 1:
            state.trickle += probes
            whole, state.trickle = int(state.trickle), state.trickle % 1
        else:
            whole = max(1, round(probes))
        first, state.scanned = state.scanned, state.scanned + whole
        base = state.scan_from
        for port in range(base + first, base + min(state.scanned, first + 200)):
            state.ports[port] = state.ports.get(port, 0.0) + 1
        state.syns += probes
        state.drops += probes
        if name in FALCO_RULES:
            _falco(state, name, 1, dt)
        return 50e3
    return None


def _dns_network(name: str, state: PodState, since: float, dt: float) -> float | None:
    """Name lookups, ordinary and tunnelled; None if ``name`` is not one of these."""
    if name == "dns-many-names":
        # A data loader resolving shard hosts: A and AAAA by the dozen a second.
        _dns(state, "A", 20.0 * dt)
        _dns(state, "AAAA", 20.0 * dt)
        return 1e6
    if name == "dns-srv-discovery":
        # Service discovery re-resolving its SRV record every 30 s.
        _dns(state, "SRV", dt / 30)
        return 0.0
    if name == "dns-mongodb-srv":
        # A mongodb+srv:// client: TXT and SRV when it connects, SRV again every 60 s.
        if since < dt:
            _dns(state, "TXT", 1.0)
        _dns(state, "SRV", dt / 60)
        return 0.0
    if name == "dns-tunnel-fast":
        # iodine: data in NULL records, polled as fast as the resolver answers.
        _dns(state, "NULL", 20.0 * dt)
        return 30e3
    if name == "dns-tunnel-slow":
        # dnscat2 with a long delay: a TXT, CNAME or MX query every 20 s (a C2 channel).
        _dns(state, "TXT", dt / 20)
        return 1e3
    return None


# GPUs of the node that no pod was allocated, which a process that escaped its container's
# allocation drives (DCGM then reports them with empty pod labels).
ESCAPED_GPUS = 2


def _unallocated(pod: SimPod, at: float) -> Iterator[Series]:
    if not any(name == "mine-unallocated-gpus" for name, _ in net_behaviours(pod, at)):
        return
    for index in range(pod.gpus, pod.gpus + ESCAPED_GPUS):
        labels = _gpu_labels(pod, index, ("", "", ""))
        util = round(between(GPU_PROFILES["mine"][0], pod.key, at, index, "u"))
        yield Series("DCGM_FI_DEV_GPU_UTIL", "gauge", labels, util)


def _gpu_labels(pod: SimPod, index: int, holder: tuple[str, str, str]) -> Labels:
    """DCGM's labels of one GPU of the pod's node; ``holder`` is (container, namespace,
    pod) of the pod it is allocated to, empty for a GPU no pod holds."""
    container, namespace, name = holder
    return (
        ("gpu", str(index)),
        ("UUID", gpu_uuid(pod, index)),
        ("device", f"nvidia{index}"),
        ("modelName", "NVIDIA H100 80GB HBM3"),
        ("Hostname", pod.node),
        ("container", container),
        ("namespace", namespace),
        ("pod", name),
    )


def gpu_uuid(pod: SimPod, index: int) -> str:
    digest = hashlib.sha1(f"{pod.node}/{pod.key}/{index}".encode()).hexdigest()
    return f"GPU-{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


def samples(pod: SimPod, state: PodState, profile: str, at: float) -> Iterator[Series]:
    """Every series the exporters would show for ``pod`` now."""
    util, engine, tensor, dram = GPU_PROFILES[profile]
    for index in range(pod.gpus):
        labels = _gpu_labels(pod, index, ("trainer", pod.namespace, pod.name))
        yield Series(
            "DCGM_FI_DEV_GPU_UTIL", "gauge", labels, round(between(util, pod.key, at, index, "u"))
        )
        yield Series(
            "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
            "gauge",
            labels,
            between(engine, pod.key, at, index, "g"),
        )
        yield Series(
            "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
            "gauge",
            labels,
            between(tensor, pod.key, at, index, "t"),
        )
        yield Series(
            "DCGM_FI_PROF_DRAM_ACTIVE", "gauge", labels, between(dram, pod.key, at, index, "d")
        )
    yield from _unallocated(pod, at)
    own = (("namespace", pod.namespace), ("pod", pod.name))
    if pod.step_counter:
        yield Series("training_steps_total", "counter", own, float(int(state.steps)))
    yield Series(
        "container_network_transmit_bytes_total", "counter", (*own, ("interface", "eth0")), state.tx
    )
    source = (("source_namespace", pod.namespace), ("source_pod", pod.name))
    for port, count in sorted(state.flows.items()):
        labels = (*source, ("protocol", "TCP"), ("port", str(port)))
        yield Series("hubble_flows_to_world_total", "counter", labels, float(int(count)))
    for port, count in sorted(state.ports.items()):
        labels = (*source, ("protocol", "TCP"), ("port", str(port)))
        yield Series("hubble_port_distribution_total", "counter", labels, float(int(count)))
    yield Series(
        "hubble_tcp_flags_total",
        "counter",
        (*source, ("family", "IPv4"), ("flag", "SYN")),
        float(int(state.syns)),
    )
    for qtypes, count in sorted(state.dns.items()):
        # A query's rcode is empty and it returns no IPs (those label the responses).
        labels = (*source, ("rcode", ""), ("qtypes", qtypes), ("ips_returned", "0"))
        yield Series("hubble_dns_queries_total", "counter", labels, float(int(count)))
    if state.drops:
        labels = (*source, ("protocol", "TCP"), ("reason", "POLICY_DENIED"))
        yield Series("hubble_drop_total", "counter", labels, float(int(state.drops)))
    for (rule, priority), count in sorted(state.falco.items()):
        labels = (
            ("rule", rule),
            ("priority", FALCO_PRIORITY[priority]),
            ("priority_raw", priority.lower()),
            ("source", "syscall"),
            ("hostname", pod.node),
            ("k8s_ns_name", pod.namespace),
            ("k8s_pod_name", pod.name),
        )
        yield Series(
            "falcosecurity_falcosidekick_falco_events_total", "counter", labels, float(int(count))
        )
    if pod.owner is not None:
        labels = (
            *own,
            ("owner_kind", pod.owner.kind),
            ("owner_name", pod.owner.name),
            ("owner_is_controller", "true"),
        )
        yield Series("kube_pod_owner", "gauge", labels, 1.0)
    created_by = (
        (("created_by_kind", pod.owner.kind), ("created_by_name", pod.owner.name))
        if pod.owner is not None
        else ()
    )
    info = (*own, ("node", pod.node), *created_by, ("host_network", "false"))
    yield Series("kube_pod_info", "gauge", info, 1.0)


def tick(pod: SimPod, state: PodState, offset: float, step: float) -> str:
    """Advance an existing pod to the sample at ``offset``; a pod's first sample counts nothing."""
    born = offset - step < _seconds(pod.start)
    return advance(pod, state, offset, 0.0 if born else step)


def run(scenario: Scenario) -> Iterator[tuple[float, list[Series]]]:
    """Every sample time (offset in seconds from the start) and the series then."""
    states = {pod.key: PodState() for pod in scenario.pods}
    step = scenario.step
    offset = 0.0
    while offset <= scenario.seconds:
        current: list[Series] = []
        for pod in scenario.pods:
            if not pod.exists(offset):
                continue
            profile = tick(pod, states[pod.key], offset, step)
            current.extend(samples(pod, states[pod.key], profile, offset))
        yield offset, current
        offset += step
