"""Real packets on the real node: the agent's workload, and what its pods can reach.

Shared by the tests, `breaker demo` and the time-to-cut benchmark, so that all three play
the same agent and read the same facts: what the outside hosts saw (each connection's
last byte each way), and what a pod reaches when asked from inside its own network
namespace (``agent probe``: the pod's own path through the node's bridge, kube-proxy and
kube-router).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Sequence
from typing import Any

from breaker.actions.egress import Destination
from breaker.wait import wait_for
from breaker_tooling.localcluster import images, nodeconfig, outside
from breaker_tooling.localcluster.realnode import RealNode

SERVICES = ("tunnel", "pool")
KUBE_SYSTEM = {"kubernetes.io/metadata.name": "kube-system"}
CLUSTER_DNS = f"{nodeconfig.CLUSTER_DNS}:53"
PROBE_NAME = "probe.tunnel.example."
# What each probe reaches, and how the effective-egress model names it.
DESTINATIONS = {
    "pool": Destination(port=outside.POOL[1], ip=outside.POOL[0]),
    "ssh": Destination(port=outside.TUNNEL[1], ip=outside.TUNNEL[0]),
    "outside dns": Destination(port=53, protocol="UDP", ip=outside.DNS[0]),
    "cluster dns": Destination(
        port=53,
        protocol="UDP",
        namespace="kube-system",
        namespace_labels=KUBE_SYSTEM,
        pod_labels={"k8s-app": "kube-dns"},
    ),
}
PROBES: dict[str, tuple[str, ...]] = {
    "pool": ("tcp", outside.address(outside.POOL)),
    "ssh": ("tcp", outside.address(outside.TUNNEL)),
    "outside dns": ("dns", outside.address(outside.DNS), PROBE_NAME, "TXT"),
    "cluster dns": ("dns", CLUSTER_DNS, PROBE_NAME, "TXT"),
}


def play(
    tunnel_at: float = 0.0,
    pool_at: float = 1.0,
    dns_at: float | None = 2.0,
    scan: str | None = None,
    scan_at: float = 0.0,
    scan_ports: str | None = None,
    epoch: float | None = None,
    tick: float = 1.0,
    udp_at: float | None = None,
    ping_at: float | None = None,
    listen: int | None = None,
) -> list[str]:
    """``agent play``: the reverse tunnel, the pool, TXT queries to the outside DNS host and
    a scan, each at its time (seconds after ``epoch``, or after the process starts); a UDP
    flow and an ICMP echo flow to the tunnel host, and a port the outside dials into, when
    asked."""
    args = [
        "/agent",
        "play",
        f"--tunnel={outside.address(outside.TUNNEL)}",
        f"--tunnel-at={tunnel_at}s",
        f"--pool={outside.address(outside.POOL)}",
        f"--pool-at={pool_at}s",
        f"--tick={tick}s",
    ]
    if dns_at is not None:
        args += [f"--dns={outside.address(outside.DNS)}", f"--dns-at={dns_at}s"]
    if scan is not None:
        args += [f"--scan={scan}", f"--scan-at={scan_at}s"]
        if scan_ports is not None:
            args.append(f"--scan-ports={scan_ports}")
    if epoch is not None:
        args.append(f"--epoch={epoch:.3f}")
    if udp_at is not None:
        args += [f"--udp={outside.address(outside.UDP)}", f"--udp-at={udp_at}s"]
    if ping_at is not None:
        args += [f"--ping={outside.TUNNEL[0]}", f"--ping-at={ping_at}s"]
    if listen is not None:
        args.append(f"--listen=:{listen}")
    return args


def pod_template(
    app: str, command: Sequence[str], grace: int = 30, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    """A pod template for the real node (its selector and toleration), the workload image."""
    return {
        "metadata": {"labels": {"app": app, **(labels or {})}},
        "spec": {
            "nodeSelector": {nodeconfig.NODE_LABEL: "true"},
            "tolerations": [nodeconfig.TOLERATION],
            "terminationGracePeriodSeconds": grace,
            "containers": [
                {"name": "agent", "image": images.WORKLOAD_IMAGE, "command": [*command]}
            ],
        },
    }


def reach(node: RealNode, pod_ip: str) -> dict[str, bool]:
    """What the pod reaches now: each probe, from inside its network namespace, all at once
    (a probe the node agent's fence drops waits out its timeout)."""
    with concurrent.futures.ThreadPoolExecutor(len(PROBES)) as pool:
        answers = {name: pool.submit(node.probe, pod_ip, *args) for name, args in PROBES.items()}
        return {name: bool(answer.result().get("ok")) for name, answer in answers.items()}


def flows_of(
    report: outside.Report, ip: str, services: Sequence[str] = SERVICES
) -> list[outside.Flow]:
    return [f for s in services for f in report.of(s, ip)]


def last_byte(report: outside.Report, ip: str, services: Sequence[str] = SERVICES) -> float:
    """The last byte either way of any connection from ``ip`` (0: none)."""
    return max((f.last_byte for f in flows_of(report, ip, services)), default=0.0)


def flowing(report: outside.Report, ip: str, services: Sequence[str] = SERVICES) -> bool:
    """Each service has an open connection (or flow) from ``ip`` that carried bytes in the
    last 2 s."""
    return all(
        any(f.closed is None and report.now - f.last_in < 2 for f in report.of(s, ip))
        for s in services
    )


def heard_since(
    report: outside.Report, ip: str, since: float, services: Sequence[str]
) -> list[str]:
    """What the outside hosts received from ``ip`` after ``since``, in any of the services:
    one line each (nothing: it is cut off)."""
    return [
        f"{f.service} {f.remote}: last byte {f.last_in - since:+.2f}s"
        for s in services
        for f in report.of(s, ip)
        if f.last_in > since
    ]


def cut_at(report: outside.Report, ip: str, before: float) -> float | None:
    """When the far end saw the last of the tunnels opened before ``before`` reset (None
    while one is still open)."""
    opened = [f for f in report.of("tunnel", ip) if f.opened < before]
    ends = [f.closed for f in opened if f.closed is not None]
    return max(ends) if opened and len(ends) == len(opened) else None


def wait(probe: Any, what: str, timeout: float, interval: float = 0.2) -> Any:
    return wait_for(probe, what, timeout, interval)
