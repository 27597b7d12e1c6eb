"""A tripped tenant tries every way around the quarantine on the real node, and the packets
say what got through: with the chart's admission policies on and off.

The held workload is a Deployment guarded by revokeEgress alone (its pods run on, cut off;
DNS not allowed; exec sessions begun before the trip ended; 198.51.100.1, a stand-in for
an off-cluster Prometheus, may still reach port 2222). Its pods run ``agent play``: a
reverse tunnel, a mining-pool session, DNS, a UDP flow and an ICMP echo flow carrying data
(the channels of UDP and ICMP tunnels), and a port the outside dials into. Before the
trip the tenant opens everything it can: the outside host dials in, a port-forward, an
exec session, and a pod kept terminating (deleted with a grace period of ten minutes; it
ignores SIGTERM). Then an admin trips the breaker, and the tenant tries its ways around.

What the outside hosts saw decides: after the trip, nothing from the held workload (its
pods old and new) reaches them, either way, on any protocol, but the scrape. How long
each cut took, and what each attempt came to, is printed at the end of the run.
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client

from breaker.api import containment
from breaker_tooling.localcluster import outside, packets
from breaker_tooling.localcluster.realnode import RealNode
from tests.cluster.scenes import Cluster, batch_job, person
from tests.cluster.tenant import ATTEMPTS, Escapes, Tenant, policy_on
from tests.cluster.test_live_tunnel import Live, trip_time
from tests.conftest import NodeAgent
from tests.helpers import wait_for
from tests.kube import as_body, meta_of, name_of, spec_of, status_of

__all__ = ["policy_on"]  # the fixture, used by name

# (what, seconds from the trip to its end as the tenant's kubectl saw it): printed after
# the run.
ENDED: list[tuple[str, float]] = []

BREAKER = "svc-guard"
PORT = 2222  # the pods' listener: the outside dials in, the port-forward goes to it
SCRAPER = "198.51.100.1"  # may still reach PORT: the scrape
# Everything the outside hosts hear from a pod: its connections and flows, and those
# the tunnel host dialled into it.
HEARD = ("tunnel", "pool", "udp", "ping", "inbound")


def deployment(name: str = "svc") -> dict[str, Any]:
    play = packets.play(udp_at=0.0, ping_at=0.0, listen=PORT)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"team": "agents"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "svc"}},
            "template": packets.pod_template("svc", play, grace=2),
        },
    }


def guard() -> dict[str, Any]:
    action = {
        "allowDNS": False,
        "killSessions": True,
        "allowScrapeFrom": [{"cidr": f"{SCRAPER}/32", "ports": [PORT]}],
    }
    return {
        "apiVersion": "breaker.dev/v1alpha1",
        "kind": "BreakerPolicy",
        "metadata": {"name": "guard"},
        "spec": {
            "targets": {"kinds": ["Deployment"]},
            "signals": [{"name": "pool", "preset": "mining-pool-egress", "severity": "critical"}],
            "mode": "Enforce",
            "actions": [{"type": "revokeEgress", "revokeEgress": action}],
            "prometheus": {"interval": "5s"},
        },
    }


class Stream:
    """A connection through ``kubectl port-forward``, the tenant's: it reads what the pod's
    listener sends (a line a second) and writes a line a second, until it is cut."""

    def __init__(self, c: Cluster, kubeconfig: Path, pod: str) -> None:
        env = {**c.local.env(), "KUBECONFIG": str(kubeconfig)}
        self.forward = subprocess.Popen(
            ["kubectl", "-n", c.ns, "port-forward", f"pod/{pod}", f"0:{PORT}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.forward.stdout is not None
        line = self.forward.stdout.readline()
        found = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert found, f"kubectl port-forward said: {line}{self.forward.stdout.read(500)}"
        self.socket = socket.create_connection(("127.0.0.1", int(found[1])), timeout=5)
        self.last = 0.0
        self.ended: float | None = None
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._write, daemon=True).start()

    def _read(self) -> None:
        with contextlib.suppress(OSError):
            while self.socket.recv(4096):
                self.last = time.time()
        self.ended = time.time()

    def _write(self) -> None:
        with contextlib.suppress(OSError):
            while self.ended is None:
                self.socket.sendall(b"out\n")
                time.sleep(1)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.socket.close()
        self.forward.terminate()
        self.forward.wait(10)


class Session:
    """``kubectl exec`` into a pod, the tenant's: a shell printing a line a second."""

    def __init__(self, c: Cluster, kubeconfig: Path | None, pod: str) -> None:
        env = {**c.local.env(), **({"KUBECONFIG": str(kubeconfig)} if kubeconfig else {})}
        loop = "while true; do echo tick; sleep 1; done"
        self.process = subprocess.Popen(
            ["kubectl", "-n", c.ns, "exec", pod, "--", "/bin/sh", "-c", loop],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.last = 0.0
        self.ended: float | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for _ in self.process.stdout:
            self.last = time.time()
        self.process.wait()
        self.ended = time.time()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def pods(c: Cluster) -> list[Any]:
    """The held workload's pods that run, terminating ones included."""
    listed = c.core.list_namespaced_pod(c.ns, label_selector="app=svc").items
    return [p for p in listed if status_of(p).phase == "Running" and status_of(p).pod_ip]


def alive(c: Cluster, live: Live, count: int) -> list[Any]:
    """``count`` pods of the workload running (not terminating), their flows to the outside
    flowing."""

    def ready() -> list[Any] | None:
        found = [p for p in pods(c) if meta_of(p).deletion_timestamp is None]
        return found if len(found) == count else None

    found: list[Any] = wait_for(ready, f"{count} running pods of svc", timeout=90)
    return found


def heard(node: RealNode, ip: str, since: float) -> list[str]:
    """What the outside hosts received from ``ip`` after ``since`` (unix time), on any of the
    pod's flows but the scrape's."""
    report = node.outside()
    return [
        f"{f.service} {f.remote}{' from ' + f.local if f.local else ''}: {f.last_in - since:+.2f}s"
        for s in HEARD
        for f in report.of(s, ip)
        if f.last_in > since and not f.local.startswith(f"{SCRAPER}:")
    ]


def quiet(node: RealNode, ips: list[str], since: float, what: str) -> None:
    """Nothing of ``ips`` reaches the outside hosts for three seconds, from ``since`` on."""
    wait_for(
        lambda: not any(heard(node, ip, time.time() - 3) for ip in ips),
        f"{what}: nothing from {', '.join(ips)} reaches the outside",
        timeout=30,
    )
    leaked = {ip: heard(node, ip, since) for ip in ips}
    # A pod born after the trip: what reached the outside before it was cut, if anything.
    ATTEMPTS.append((what, f"outside heard after the trip: {leaked}", None))


def born_cut(node: RealNode, ip: str, what: str, labelled_at_birth: bool) -> None:
    """A pod made after the trip. Born quarantined (the mutating policy labelled it as it
    was created): nothing of it reaches the outside hosts, the node agent fenced it off the
    world before its processes ran. Labelled by the operator a moment later (no mutating
    policy): what it sent before that is recorded (docs/operations/admission.md gives the
    window). Then nothing more, ever."""
    report = node.outside()
    flows = [f for s in HEARD for f in report.of(s, ip) if not f.local.startswith(SCRAPER)]
    got_out = {f"{f.service}": round(f.last_in - f.opened, 2) for f in flows if f.last_in}
    ATTEMPTS.append(
        (what, f"born after the trip; reached the outside: {got_out or 'nothing'}", None)
    )
    if labelled_at_birth:
        assert not flows, f"{what}: born quarantined, yet the outside heard {flows}"
    quiet(node, [ip], time.time(), what)


@pytest.fixture
def live(cluster: Cluster) -> Live:
    return Live(cluster)


@pytest.fixture
def opened(cluster: Cluster) -> Iterator[list[Any]]:
    """Streams and sessions the test opened, closed at its end whatever happened; and the
    namespace's pods gone at once (one kept terminating would run on for ten minutes)."""
    found: list[Any] = []
    yield found
    for each in found:
        each.close()
    for pod in cluster.core.list_namespaced_pod(cluster.ns).items:
        with contextlib.suppress(client.ApiException):
            cluster.core.delete_namespaced_pod(name_of(pod), cluster.ns, grace_period_seconds=0)


def test_a_tripped_tenant_gets_nothing_out_or_in_on_the_real_node(
    live: Live, node_agent: NodeAgent, policy_on: bool, opened: list[Any]
) -> None:
    c, node = live.c, live.node
    tries = Escapes(c, policy_on)
    tenant_config = person(c, "tenant", "edit")
    tenant = Tenant(tenant_config)
    ns = c.ns
    # The team's own policy lets its pods go anywhere and be reached from anywhere.
    c.net.create_namespaced_network_policy(
        ns,
        as_body(
            {
                "metadata": {"name": "team-open"},
                "spec": {
                    "podSelector": {"matchLabels": {"app": "svc"}},
                    "policyTypes": ["Ingress", "Egress"],
                    "ingress": [{}],
                    "egress": [{}],
                },
            }
        ),
    )
    c.apps.create_namespaced_deployment(ns, as_body(deployment()))
    c.create("breakerpolicies", guard())
    (first,) = alive(c, live, 1)

    # Before the trip: the tenant keeps one pod terminating (it ignores SIGTERM), and its
    # controller makes another; both play, and the tenant opens everything it can.
    tenant.core.delete_namespaced_pod(name_of(first), ns, grace_period_seconds=600)
    (second,) = alive(c, live, 1)
    lingering, running = status_of(first).pod_ip, status_of(second).pod_ip
    for ip in (lingering, running):
        live.flowing(ip, ("tunnel", "pool", "udp", "ping"))
    to = f"{running}:{PORT}"
    outside.dial(node.report_socket, to)  # the reverse tunnel's far end dials in
    outside.dial(node.report_socket, to, SCRAPER)  # the scrape
    wait_for(
        lambda: len([f for f in node.outside().of("inbound", running) if f.last_in]) == 2,
        "the outside dialled in, the scrape too",
    )
    stream = Stream(c, tenant_config, name_of(second))
    session = Session(c, tenant_config, name_of(second))
    opened += [stream, session]
    wait_for(lambda: stream.last and session.last, "the port-forward and the exec flowing")
    wait_for(lambda: c.breaker(BREAKER).get("status"), "the breaker")

    breaker = live.trip(BREAKER)
    tripped = trip_time(breaker["status"])
    quiet(node, [lingering, running], tripped, f"[{tries.mode}] opened before the trip")
    # Everything the pods had open was cut: every protocol, both ways, the terminating
    # pod's too. The scrape still reaches the pod.
    wait_for(
        lambda: any(
            f.local.startswith(f"{SCRAPER}:") and f.closed is None and time.time() - f.last_in < 3
            for f in node.outside().of("inbound", running)
        ),
        "the scrape still flowing",
    )
    held = containment.read(breaker["status"]).of("revokeEgress")
    assert held is not None
    assert isinstance(held.detail, containment.EgressRevoked)
    assert set(held.detail.pods) == {name_of(first), name_of(second)}  # the terminating one too
    wait_for(lambda: stream.ended, "the port-forward opened before the trip cut", timeout=30)
    assert stream.ended is not None
    ENDED.append((f"a port-forward opened before the trip ({tries.mode})", stream.ended - tripped))
    wait_for(lambda: session.ended, "the exec session begun before the trip ended", timeout=30)
    assert session.ended is not None
    ENDED.append((f"an exec session begun before the trip ({tries.mode})", session.ended - tripped))
    sessions = wait_for(
        lambda: (c.breaker(BREAKER)["status"].get("exposure") or {}).get("sessions"),
        "the exec session in the Breaker's status",
    )
    assert sessions[0]["pod"] == name_of(second)
    assert "while true" in sessions[0]["command"]

    ways_around(live, tries, tenant, tenant_config, opened, tripped)

    live.reset(BREAKER)
    # The pod kept terminating goes now (an admin's delete); the others run on, free.
    c.core.delete_namespaced_pod(name_of(first), ns, grace_period_seconds=0)
    replicas = spec_of(c.apps.read_namespaced_deployment("svc", ns)).replicas
    for pod in alive(c, live, int(replicas or 1)):
        live.flowing(status_of(pod).pod_ip, ("tunnel", "pool", "udp", "ping"))
    wait_for(lambda: not node.cut_rules(), "every drop the agent placed lifted")


def ways_around(
    live: Live,
    tries: Escapes,
    tenant: Tenant,
    tenant_config: Path,
    opened: list[Any],
    tripped: float,
) -> None:
    """After the trip: each way around, refused (policy on) or admitted and undone (off);
    what reached the outside hosts, if anything, from the pods each made."""
    c, node, ns = live.c, live.node, live.c.ns
    target = next(p for p in pods(c) if meta_of(p).deletion_timestamp is None)

    # A new port-forward and exec: refused, or admitted and cut.
    if tries.policy_on:
        tries.connect(
            BREAKER,
            "port-forward to a quarantined pod",
            lambda: tenant.core.connect_post_namespaced_pod_portforward(
                name_of(target), ns, ports=str(PORT)
            ),
        )
        tries.connect(
            BREAKER,
            "proxy to a quarantined pod through the API server",
            lambda: tenant.core.connect_get_namespaced_pod_proxy_with_path(
                f"{name_of(target)}:{PORT}", ns, "x"
            ),
        )
    else:
        stream = Stream(c, tenant_config, name_of(target))
        opened.append(stream)
        began = time.time()
        wait_for(lambda: stream.ended, "the new port-forward cut by the node agent", timeout=30)
        assert stream.ended is not None
        tries.record("port-forward to a quarantined pod", "admitted; cut", stream.ended - began)
        # The API server's proxy dials the pod from the control plane's address: the
        # quarantine refuses what comes in.
        with pytest.raises((client.ApiException, urllib3.exceptions.HTTPError)) as caught:
            tenant.core.connect_get_namespaced_pod_proxy_with_path(
                f"{name_of(target)}:{PORT}", ns, "x", _request_timeout=5
            )
        failed = getattr(caught.value, "status", None) or type(caught.value).__name__
        tries.record(
            "proxy to a quarantined pod through the API server",
            f"admitted; the quarantine refused what came in ({failed})",
        )

    # A NodePort Service: refused, or admitted, listed, and refused by the quarantine.
    nodeport = {
        "metadata": {"name": "svc-np"},
        "spec": {"type": "NodePort", "selector": {"app": "svc"}, "ports": [{"port": PORT}]},
    }
    made = tries.admitted(
        BREAKER,
        "expose the quarantined pods with a NodePort Service",
        lambda: tenant.core.create_namespaced_service(ns, as_body(nodeport)),
        "listed in status.exposure; what comes in through it is refused and cut",
    )
    if made is not None:
        wait_for(
            lambda: (
                (c.breaker(BREAKER)["status"].get("exposure") or {}).get("services")
                == ["svc-np (NodePort)"]
            ),
            "the NodePort Service in the Breaker's status",
        )
        port = made.spec.ports[0].node_port
        began = time.time()
        with contextlib.suppress(RuntimeError):  # refused outright: nothing to carry
            outside.dial(node.report_socket, f"{outside.NODE_SIDE}:{port}")
        time.sleep(3)
        came_in = [f for f in node.outside().of("inbound", outside.NODE_SIDE) if f.opened >= began]
        assert not [f for f in came_in if f.last_in > f.opened + 1], came_in
        tenant.core.delete_namespaced_service("svc-np", ns)

    # Pods made after the trip: the Deployment scaled up; a held pod deleted (its
    # controller makes a fresh one); the Deployment deleted and made again.
    before = {name_of(p) for p in pods(c)}
    tenant.apps.patch_namespaced_deployment_scale("svc", ns, {"spec": {"replicas": 2}})
    new = wait_for(lambda: [p for p in pods(c) if name_of(p) not in before], "the new pod")[0]
    wait_for(
        lambda: (
            "breaker.dev/quarantined"
            in (meta_of(c.core.read_namespaced_pod(name_of(new), ns)).labels or {})
        ),
        "the new pod quarantined",
    )
    mode = f"[{tries.mode}]"
    born_cut(node, status_of(new).pod_ip, f"{mode} scale the held Deployment up", tries.policy_on)
    before = {name_of(p) for p in pods(c)}
    tries.escape(
        BREAKER,
        "delete a quarantined pod (its controller makes a fresh one)",
        lambda: tenant.core.delete_namespaced_pod(name_of(new), ns),
        lambda: all_held(c),
    )
    if not tries.policy_on:
        replacement = newest(c, before)
        born_cut(
            node, status_of(replacement).pod_ip, f"{mode} the deleted pod's replacement", False
        )
    before = {name_of(p) for p in pods(c)}
    tries.escape(
        BREAKER,
        "delete the held Deployment and create it again under its name",
        lambda: (
            tenant.apps.delete_namespaced_deployment("svc", ns),
            tenant.apps.create_namespaced_deployment(ns, as_body(deployment())),
        ),
        lambda: guarded(c) and all_held(c),
    )
    if not tries.policy_on:
        recreated = newest(c, before)
        born_cut(
            node, status_of(recreated).pod_ip, f"{mode} the re-created Deployment's pod", False
        )
    # Whatever else, still nothing from the held workload since the trip but what born
    # pods got out before they were cut.
    quiet(node, [status_of(p).pod_ip for p in pods(c)], tripped, f"[{tries.mode}] in the end")


def newest(c: Cluster, before: set[str]) -> Any:
    """The workload's pod made since ``before`` (names), once it runs."""
    return wait_for(
        lambda: next(
            (
                p
                for p in pods(c)
                if meta_of(p).deletion_timestamp is None and name_of(p) not in before
            ),
            None,
        ),
        "the new pod running",
        timeout=90,
    )


def guarded(c: Cluster) -> bool:
    """The Breaker guards the Deployment there is: the one it held, or the one made again
    under its name, which it follows."""
    now = meta_of(c.apps.read_namespaced_deployment("svc", c.ns)).uid
    return bool(c.breaker(BREAKER)["spec"]["targetRef"]["uid"] == now)


def all_held(c: Cluster) -> bool:
    found = c.core.list_namespaced_pod(c.ns, label_selector="app=svc").items
    return bool(found) and all(
        "breaker.dev/quarantined" in (meta_of(p).labels or {}) for p in found
    )


def test_pause_ends_the_pod_and_every_session_into_it(
    live: Live, node_agent: NodeAgent, opened: list[Any]
) -> None:
    """A policy that pauses (and does not revoke egress): the exec session and the
    port-forward the tenant opened before the trip end with the pod, which the pause ends
    (an attach would too). Nothing to list or cut: no pod is left."""
    c = live.c
    tenant_config = person(c, "tenant", "edit")
    template = packets.pod_template("rl", packets.play(listen=PORT), grace=2)
    c.batch.create_namespaced_job(c.ns, as_body(batch_job("rl", template)))
    body = guard()
    body["spec"]["targets"]["kinds"] = ["Job"]
    body["spec"]["actions"] = [{"type": "pause"}]
    c.create("breakerpolicies", body)
    pod = live.pod("rl")
    stream = Stream(c, tenant_config, name_of(pod))
    session = Session(c, tenant_config, name_of(pod))
    opened += [stream, session]
    wait_for(lambda: stream.last and session.last, "the port-forward and the exec flowing")
    wait_for(lambda: c.breaker("rl-guard").get("status"), "the breaker")
    tripped = trip_time(live.trip("rl-guard")["status"])
    wait_for(lambda: stream.ended and session.ended, "both ended with the pod", timeout=60)
    assert stream.ended is not None
    assert session.ended is not None
    ENDED.append(("a port-forward into a pod the pause ended", stream.ended - tripped))
    ENDED.append(("an exec session into a pod the pause ended", session.ended - tripped))
    wait_for(
        lambda: not c.core.list_namespaced_pod(c.ns, label_selector="app=rl").items,
        "the paused job's pod gone",
    )
    live.reset("rl-guard")
