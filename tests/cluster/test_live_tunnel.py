"""Containment shown with real packets, on the real node.

The agent's pods run ``/agent play``: a reverse tunnel to the "SSH server" at
198.51.100.4:22, a mining-pool session with 203.0.113.7:3333, DNS; the outside hosts (a
network namespace of the harness's) record the last byte of every connection. What a pod
can reach is asked from inside its own network namespace (``agent probe``), so the packets
take the pod's path through the node's bridge, kube-proxy and kube-router; and each time
the project's effective-egress model must say the same as the packets.

Breakers are tripped by an admin (ForcedOpen) here: detection is tested elsewhere, and
what matters is what happens to the packets after the trip.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from breaker.actions.egress import effective_egress
from breaker.api import containment
from breaker.constants import ADMISSION_PARAMS, GROUP, KEPT_ANNOTATION, VERSION
from breaker_tooling.localcluster import packets
from breaker_tooling.localcluster.realnode import NAME as REAL_NODE
from breaker_tooling.localcluster.realnode import RealNode
from tests.cluster.scenes import Cluster, done, kubectl_breaker, person
from tests.conftest import NodeAgent
from tests.helpers import wait_for
from tests.kube import as_body, meta_of, name_of, spec_of, status_of

CUTS: list[tuple[str, float]] = []  # (mode, seconds from the trip to the far end's reset)
NOTHING = dict.fromkeys(packets.DESTINATIONS, False)
EVERYTHING = dict.fromkeys(packets.DESTINATIONS, True)
DNS_ONLY = {**NOTHING, "cluster dns": True}


def deployment(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"team": "agents"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": packets.pod_template(name, packets.play(), grace=2),
        },
    }


def job(name: str) -> dict[str, Any]:
    """A hostile agent's job: its pod ignores SIGTERM and lives out its grace period."""
    template = packets.pod_template(name, packets.play(), grace=30)
    template["spec"]["restartPolicy"] = "Never"
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"team": "agents"}},
        "spec": {"backoffLimit": 0, "template": template},
    }


def live_policy(kind: str, actions: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "BreakerPolicy",
        "metadata": {"name": "guard"},
        "spec": {
            "targets": {"kinds": [kind]},
            "signals": [{"name": "pool", "preset": "mining-pool-egress", "severity": "critical"}],
            "mode": "Enforce",
            "actions": actions,
            "prometheus": {"interval": "5s"},
        },
    }


class Live:
    """One test's view of the real node: pods, probes, the outside hosts' record."""

    def __init__(self, c: Cluster) -> None:
        self.c = c
        self.node: RealNode = c.local.real_node

    def pod(self, app: str, namespace: str | None = None) -> Any:
        def running() -> Any:
            pods = self.c.core.list_namespaced_pod(
                namespace or self.c.ns, label_selector=f"app={app}"
            )
            ready = [
                p
                for p in pods.items
                if status_of(p).phase == "Running"
                and status_of(p).pod_ip
                and meta_of(p).deletion_timestamp is None
            ]
            return ready[0] if ready else None

        return wait_for(running, f"a running pod of {app}", timeout=90)

    def flowing(self, ip: str, services: tuple[str, ...] = packets.SERVICES) -> None:
        wait_for(
            lambda: packets.flowing(self.node.outside(), ip, services),
            f"{', '.join(services)} flowing from {ip}",
            timeout=30,
        )

    def last_bytes(self, ip: str) -> float:
        return packets.last_byte(self.node.outside(), ip)

    def modelled(self, pod: Any) -> dict[str, bool]:
        """What the effective-egress model says the pod can reach."""
        fresh = self.c.core.read_namespaced_pod(pod.metadata.name, pod.metadata.namespace)
        egress = effective_egress(meta_of(fresh).labels or {}, self.c.netpols())
        namespace = meta_of(fresh).namespace
        assert namespace is not None
        return {name: egress.allows(d, namespace) for name, d in packets.DESTINATIONS.items()}

    def agree(self, pod: Any) -> dict[str, bool]:
        """The packets and the model agree; what they say."""
        observed = packets.reach(self.node, pod.status.pod_ip)
        assert observed == self.modelled(pod), f"packets {observed}, model {self.modelled(pod)}"
        return observed

    def trip(self, breaker: str) -> dict[str, Any]:
        self.c.patch("breakers", breaker, {"spec": {"override": "ForcedOpen"}})
        found: dict[str, Any] = wait_for(
            lambda: (
                b
                if (b := self.c.breaker(breaker)).get("status", {}).get("state") == "ForcedOpen"
                and containment.read(b["status"]).reason == containment.CONTAINED
                else None
            ),
            "contained",
            timeout=60,
        )
        return found

    def reset(self, breaker: str) -> None:
        token = str(time.time())
        self.c.patch("breakers", breaker, {"spec": {"override": None, "reset": token}})
        wait_for(
            lambda: (
                (b := self.c.breaker(breaker)).get("status", {}).get("state") == "Closed"
                and done(b)
            ),
            "the reset",
            timeout=60,
        )

    def quiet_since(self, ip: str, seconds: float = 3.0) -> None:
        """Nothing more goes either way on any connection of ``ip`` for ``seconds``."""
        before = self.last_bytes(ip)
        time.sleep(seconds)
        after = self.last_bytes(ip)
        assert after == before, f"{ip} still exchanged bytes {after - before:.2f}s later"


@pytest.fixture
def live(cluster: Cluster) -> Live:
    return Live(cluster)


def trip_time(status: dict[str, Any]) -> float:
    """When the trip was decided (the machine's clock is the outside hosts')."""
    return dt.datetime.fromisoformat(status["lastTrip"].replace("Z", "+00:00")).timestamp()


def cut_after(live: Live, ip: str, tripped: float) -> float:
    """Seconds from the trip to the reset the tunnel's far end received."""

    def closed() -> float | None:
        flows = [f for f in live.node.outside().of("tunnel", ip) if f.opened < tripped]
        ends = [f.closed for f in flows if f.closed is not None]
        return max(ends) if ends and len(ends) == len(flows) else None

    return (
        float(wait_for(closed, "the tunnel opened before the trip to be cut", timeout=30)) - tripped
    )


def test_without_a_node_agent_the_open_tunnel_outlives_the_policy(
    live: Live, node_agent: NodeAgent
) -> None:
    """The problem, shown: kube-router keeps established connections, so without the
    agent the tunnel carries bytes after the quarantine; the Breaker says so plainly."""
    c = live.c
    node_agent.stop()
    c.apps.create_namespaced_deployment(c.ns, as_body(deployment("steady")))
    c.create("breakerpolicies", live_policy("Deployment", [{"type": "revokeEgress"}]))
    pod = live.pod("steady")
    live.flowing(pod.status.pod_ip)
    wait_for(lambda: c.breaker("steady-guard").get("status"), "the breaker")
    breaker = live.trip("steady-guard")
    egress = containment.read(breaker["status"]).of("revokeEgress")
    assert egress is not None
    assert isinstance(egress.detail, containment.EgressRevoked)
    assert egress.detail.uncut_on == (REAL_NODE,)
    assert egress.detail.cut_on == ()
    explained = kubectl_breaker(c, "explain", "steady-guard")
    assert f"open connections MAY SURVIVE on {REAL_NODE}" in explained.stdout, explained
    # New connections are refused; the one already open goes on carrying bytes.
    assert live.agree(pod) == {
        "pool": False,
        "ssh": False,
        "outside dns": False,
        "cluster dns": True,
    }
    before = live.last_bytes(pod.status.pod_ip)
    wait_for(
        lambda: live.last_bytes(pod.status.pod_ip) > before + 1,
        "the open tunnel to carry bytes on without the agent",
        timeout=10,
    )
    live.reset("steady-guard")


def test_rome_on_the_real_node_the_tunnel_and_the_pool_are_cut_and_the_job_paused(
    live: Live, node_agent: NodeAgent
) -> None:
    c = live.c
    c.batch.create_namespaced_job(c.ns, as_body(job("rl")))
    c.apps.create_namespaced_deployment(c.other, as_body(deployment("neighbour")))
    actions = [{"type": "revokeEgress"}, {"type": "pause"}]
    c.create("breakerpolicies", live_policy("Job", actions))
    pod, neighbour = live.pod("rl"), live.pod("neighbour", c.other)
    ip, other_ip = pod.status.pod_ip, neighbour.status.pod_ip
    # Before: it reaches everything, so the test can fail.
    assert live.agree(pod) == EVERYTHING
    live.flowing(ip)
    live.flowing(other_ip, ("tunnel",))
    wait_for(lambda: c.breaker("rl-guard").get("status"), "the breaker")

    breaker = live.trip("rl-guard")
    tripped = trip_time(breaker["status"])
    CUTS.append(("pause", cut_after(live, ip, tripped)))
    egress = containment.read(breaker["status"]).of("revokeEgress")
    assert egress is not None
    assert isinstance(egress.detail, containment.EgressRevoked)
    assert egress.detail.cut_on == (REAL_NODE,)
    # The job is suspended; its pod, ignoring SIGTERM, lives out its grace period: cut off.
    assert spec_of(c.batch.read_namespaced_job("rl", c.ns)).suspend is True
    live.quiet_since(ip)
    assert live.agree(pod) == {
        "pool": False,
        "ssh": False,
        "outside dns": False,
        "cluster dns": True,
    }
    # The other tenant's pod on the same node keeps its egress throughout.
    assert live.agree(neighbour) == EVERYTHING
    live.flowing(other_ip, ("tunnel",))
    cuts = [e for e in c.core.list_namespaced_event(c.ns).items if e.reason == "ConnectionsCut"]
    # The fence resets what was open as it goes up; a later pass cuts what is left: the
    # tunnel is named in one of their Events.
    assert any("tcp 198.51.100.4:22" in (e.message or "") for e in cuts), [e.message for e in cuts]

    live.reset("rl-guard")
    again = live.pod("rl")
    live.flowing(again.status.pod_ip)
    assert live.agree(again) == EVERYTHING
    wait_for(lambda: not live.node.cut_rules(), "every drop the agent placed lifted")


def _delete_quarantine(c: Cluster) -> None:
    c.net.delete_namespaced_network_policy("svc-guard-quarantine", c.ns)


def _open_quarantine(c: Cluster) -> None:
    c.net.patch_namespaced_network_policy("svc-guard-quarantine", c.ns, {"spec": {"egress": [{}]}})


def _new_policy(c: Cluster) -> None:
    body = {
        "metadata": {"name": "escape"},
        "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]},
    }
    c.net.create_namespaced_network_policy(c.ns, as_body(body))


def _widen(c: Cluster) -> None:
    """Put the team's own policy's selector back as it was before the breaker narrowed it."""
    c.net.patch_namespaced_network_policy(
        "svc-egress",
        c.ns,
        {"spec": {"podSelector": {"matchLabels": {"app": "svc"}, "matchExpressions": None}}},
    )


def _unlabel(c: Cluster) -> None:
    (pod,) = [
        p
        for p in c.core.list_namespaced_pod(c.ns, label_selector="app=svc").items
        if meta_of(p).deletion_timestamp is None
    ]
    unlabel = {"metadata": {"labels": {"breaker.dev/quarantined": None}}}
    c.core.patch_namespaced_pod(name_of(pod), c.ns, unlabel)


ESCAPES = {
    "delete the quarantine NetworkPolicy": _delete_quarantine,
    "edit the quarantine NetworkPolicy to allow all egress": _open_quarantine,
    "widen another NetworkPolicy to select the pod again": _widen,
    "create a new NetworkPolicy letting every pod out": _new_policy,
    "remove the quarantine label from the pod": _unlabel,
}


def test_revoke_only_cuts_what_is_open_closes_dns_and_holds_against_escapes(
    live: Live, node_agent: NodeAgent
) -> None:
    """A Deployment guarded by revokeEgress alone, DNS not allowed: its pod keeps running,
    cut off; every way the tenant tries out is undone, and the packets agree."""
    c = live.c
    c.apps.create_namespaced_deployment(c.ns, as_body(deployment("svc")))
    # The team's own policy: the pod may go anywhere (narrowed at the trip).
    c.net.create_namespaced_network_policy(
        c.ns,
        as_body(
            {
                "metadata": {"name": "svc-egress"},
                "spec": {
                    "podSelector": {"matchLabels": {"app": "svc"}},
                    "policyTypes": ["Egress"],
                    "egress": [{}],
                },
            }
        ),
    )
    action = {"type": "revokeEgress", "revokeEgress": {"allowDNS": False}}
    c.create("breakerpolicies", live_policy("Deployment", [action]))
    pod = live.pod("svc")
    ip = pod.status.pod_ip
    assert live.agree(pod) == EVERYTHING
    live.flowing(ip)
    wait_for(lambda: c.breaker("svc-guard").get("status"), "the breaker")

    breaker = live.trip("svc-guard")
    tripped = trip_time(breaker["status"])
    CUTS.append(("revoke-only", cut_after(live, ip, tripped)))
    fresh = c.core.read_namespaced_pod(pod.metadata.name, c.ns)
    kept = json.loads((meta_of(fresh).annotations or {})[KEPT_ANNOTATION])
    assert (kept["dns"], kept["services"], kept["inbound"]) == (False, [], [])
    live.quiet_since(ip)
    # Still running, and nothing gets out, DNS included (a DNS tunnel through the cluster's
    # resolver too: allowDNS false closes it).
    assert status_of(fresh).phase == "Running"
    assert meta_of(fresh).deletion_timestamp is None
    assert live.agree(pod) == NOTHING
    exec_past_the_policies(c, pod.metadata.name)

    for what, escape in ESCAPES.items():
        escape(c)
        wait_for(
            lambda: live.modelled(pod) == NOTHING,
            f"{what}: undone",
            timeout=30,
            ignore=(client.ApiException,),
        )
        # kube-router applies the restored policy on its own watch: the packets follow
        # the API within moments (on a loaded machine, more than at once).
        wait_for(
            lambda: packets.reach(live.node, ip) == NOTHING,
            f"{what}: the packets cut again",
            timeout=15,
        )
        assert live.agree(pod) == NOTHING, what
    # Whatever the agent slipped through while an escape stood was cut at once.
    report = live.node.outside()
    late = [f for s in ("tunnel", "pool") for f in report.of(s, ip) if f.opened > tripped]
    assert all(f.last_byte - f.opened < 2 for f in late), late

    live.reset("svc-guard")
    fresh = c.core.read_namespaced_pod(pod.metadata.name, c.ns)
    assert KEPT_ANNOTATION not in (meta_of(fresh).annotations or {})
    assert live.agree(fresh) == EVERYTHING
    live.flowing(ip)
    wait_for(lambda: not live.node.cut_rules(), "every drop the agent placed lifted")


def exec_past_the_policies(c: Cluster, pod: str) -> None:
    """exec reaches a pod through the kubelet, past every NetworkPolicy. The chart's
    admission policy refuses the tenant, naming the Breaker; an admin, who may bypass it,
    still gets in through the real kubelet, and inside, the pool is out of reach."""
    # The operator lists the quarantined pod for the admission policy on its next pass.
    wait_for(
        lambda: pod in (c.get("breakerholds", ADMISSION_PARAMS)["spec"].get("pods") or {}),
        "the pod in the admission policy's params",
        ignore=(client.ApiException,),
    )
    probe = ("exec", pod, "--", "/agent", "probe", *packets.PROBES["pool"])
    tenant = kubectl(c, *probe, kubeconfig=person(c, "tenant", "edit"))
    assert tenant.returncode != 0, tenant.stdout
    assert "ValidatingAdmissionPolicy" in tenant.stderr, tenant.stderr
    assert "svc-guard" in tenant.stderr, tenant.stderr
    admin = kubectl(c, *probe)
    assert '"ok":false' in admin.stdout, admin.stdout + admin.stderr
    assert admin.returncode == 1, admin.stderr


def kubectl(
    c: Cluster, *args: str, kubeconfig: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = c.local.env()
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    return subprocess.run(
        ["kubectl", "-n", c.ns, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
