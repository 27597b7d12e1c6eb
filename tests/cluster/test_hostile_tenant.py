"""A tripped tenant tries to get out, with the chart's admission policy on and off.

The tenant holds Kubernetes' `edit` role in its namespace (with the chart's aggregation),
the most a team running its own jobs is usually given. Its job has been tripped.

- Policy on (the chart's default): every way out is refused by the API server, by RBAC
  or by the admission policy, whose message names the Breaker and the reset command, and
  nothing changes.
- Policy off (`helm upgrade --set admissionPolicy.enabled=false`): what RBAC allows is
  admitted, and the operator undoes it within a second, with a Warning Event saying what
  was undone; exec, attach and port-forward into a quarantined pod are admitted (the
  operator cannot see them). Then the policy is turned on again the same way, and policy on
  runs after it: the policies an admin turned off and on again refuse as before (with
  ConfigMap params they did not: the API server stopped reading them for good).

What each attempt came to, and how long each undo took, is printed at the end of the run.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from breaker.actions.egress import effective_egress
from breaker.constants import ADMISSION_PARAMS, GROUP, VERSION
from breaker_tooling.localcluster import LocalCluster
from breaker_tooling.localcluster.paths import repo_root
from tests.cluster.scenes import (
    OUTSIDE_POOL,
    Cluster,
    deployment,
    deployment_policy,
    force_open,
    full_cluster,
    person,
    policy,
    trainingjob,
)
from tests.conftest import Operator, install_chart
from tests.helpers import wait_for
from tests.kube import as_body, meta_of

# (attack, how it ended, seconds to undo or None if refused): printed after the run.
ATTEMPTS: list[tuple[str, str, float | None]] = []
BREAKER = "rl-guard"  # the TrainingJob's: revokeEgress, pause, reassignGPUs
HELPER = "helper-keep-training"  # a Deployment whose egress alone is revoked: pods keep running
QUARANTINE = f"{HELPER}-quarantine"
SIDECAR = "sidecar-stop"  # a Deployment that is paused (scaled to zero)


def closed(c: Cluster, breaker: str) -> bool:
    return bool(c.breaker(breaker).get("status", {}).get("state") == "Closed")


class Tenant:
    """The tenant's own clients: everything it does goes through its `edit` token."""

    def __init__(self, kubeconfig: Path) -> None:
        api = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig)
        )
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.net = client.NetworkingV1Api(api)
        self.apps = client.AppsV1Api(api)


class Escapes:
    """The tenant's attempts, judged by whether the admission policy is on."""

    def __init__(self, c: Cluster, policy_on: bool) -> None:
        self.c, self.policy_on = c, policy_on
        self.mode = "policy on" if policy_on else "policy off"

    def escape(
        self, breaker: str, what: str, attempt: Callable[[], Any], held: Callable[[], bool]
    ) -> None:
        """Policy on: refused, naming ``breaker``, and ``held`` still. Off: undone
        (``held`` true again) within a second, and a Warning Event on the breaker says so."""
        if self.policy_on:
            self.refused_at_admission(breaker, what, attempt)
            assert held(), f"{what}: refused, yet something changed"
            return
        c = self.c
        warnings_before = len(restored_events(c, breaker))
        attempt()
        changed = time.monotonic()
        wait_for(held, f"the operator to undo: {what}", timeout=10, interval=0.02)
        took = time.monotonic() - changed
        ATTEMPTS.append((f"[{self.mode}] {what}", "undone", took))
        wait_for(
            lambda: len(restored_events(c, breaker)) > warnings_before,
            f"a Warning Event for: {what}",
            timeout=10,
        )
        assert took < 1.0, f"{what}: undone only after {took:.2f}s"

    def refused_at_admission(self, breaker: str, what: str, attempt: Callable[[], Any]) -> None:
        with pytest.raises(client.ApiException) as caught:
            attempt()
        said = caught.value.body or ""
        assert caught.value.status == 403, said
        assert "ValidatingAdmissionPolicy" in said, said
        assert breaker in said, said
        assert "kubectl breaker reset" in said, said
        ATTEMPTS.append((f"[{self.mode}] {what}", "refused at admission (403)", None))

    def connect(self, breaker: str, what: str, attempt: Callable[[], Any]) -> None:
        """exec, attach, port-forward: refused with the policy on. Off, admitted: the API
        server goes on to the node (a kwok node has no kubelet, so it fails there)."""
        if self.policy_on:
            self.refused_at_admission(breaker, what, attempt)
            return
        with pytest.raises(client.ApiException) as caught:
            attempt()
        assert caught.value.status != 403, caught.value.body
        ATTEMPTS.append(
            (f"[{self.mode}] {what}", f"admitted (then {caught.value.status} from the node)", None)
        )

    def refused(self, what: str, attempt: Callable[[], Any]) -> None:
        """RBAC refuses the tenant (403) before anything changes, policy or not."""
        with pytest.raises(client.ApiException) as caught:
            attempt()
        assert caught.value.status == 403, caught.value
        assert "ValidatingAdmissionPolicy" not in (caught.value.body or ""), "RBAC, not admission"
        ATTEMPTS.append((f"[{self.mode}] {what}", "refused by RBAC (403)", None))


def restored_events(c: Cluster, breaker: str) -> list[Any]:
    listed = c.core.list_namespaced_event(
        c.ns, field_selector=f"involvedObject.name={breaker},reason=ContainmentRestored"
    )
    return [e for e in listed.items if e.type == "Warning"]


def quarantined(pod: Any) -> bool:
    return "breaker.dev/quarantined" in (meta_of(pod).labels or {})


def params(c: Cluster) -> dict[str, str]:
    """The quarantined pods in the admission policy's params (the namespace's BreakerHold),
    and their Breakers."""
    found = c.get("breakerholds", ADMISSION_PARAMS)
    pods: dict[str, str] = found["spec"].get("pods") or {}
    return pods


def helper_pods(c: Cluster) -> list[Any]:
    listed = c.core.list_namespaced_pod(c.ns, label_selector="app=helper")
    return [p for p in listed.items if meta_of(p).deletion_timestamp is None]


def egress_closed(c: Cluster) -> bool:
    """No pod of helper can reach the outside through any policy of the namespace."""
    policies = c.netpols()
    pods = helper_pods(c)
    return len(pods) == 2 and not any(
        effective_egress(p.metadata.labels or {}, policies).allows(OUTSIDE_POOL, c.ns) for p in pods
    )


@pytest.fixture(params=["policy off", "policy on"])
def policy_on(request: pytest.FixtureRequest, local_cluster: LocalCluster) -> Iterator[bool]:
    """The chart's admission policies as installed, or turned off for the test with `helm
    upgrade` and on again after it, as an admin would. Off runs first, so that on proves
    the policies turned off and on again hold."""
    if request.param == "policy on":
        yield True
        return
    chart = repo_root() / "helm" / "breaker"
    install_chart(local_cluster, chart, "admissionPolicy.enabled=false")
    try:
        yield False
    finally:
        install_chart(local_cluster, chart)


def test_a_tripped_tenant_cannot_get_out(
    cluster: Cluster, operator_process: Operator, policy_on: bool
) -> None:
    c = cluster
    tries = Escapes(c, policy_on)
    full_cluster(c)
    for name in ("helper", "sidecar"):
        c.apps.create_namespaced_deployment(c.ns, as_body(deployment(name)))
    c.create("breakerpolicies", policy())
    c.create("breakerpolicies", deployment_policy("keep-training", "helper", "revokeEgress"))
    c.create("breakerpolicies", deployment_policy("stop", "sidecar", "pause"))
    wait_for(lambda: len(helper_pods(c)) == 2, "helper's pods")
    for breaker in (BREAKER, HELPER, SIDECAR):
        force_open(c, breaker)
    wait_for(lambda: c.state("waiting", c.other) == "Running", "the GPUs handed on", timeout=30)
    wait_for(lambda: egress_closed(c), "helper's egress closed")
    wait_for(
        lambda: c.apps.read_namespaced_deployment("sidecar", c.ns).spec.replicas == 0,
        "sidecar paused",
    )
    tenant = Tenant(person(c, "tenant", "edit"))
    ns = c.ns

    # Egress: the quarantine policy, the other policies, the pods' labels.
    tries.escape(
        HELPER,
        "delete the quarantine NetworkPolicy",
        lambda: tenant.net.delete_namespaced_network_policy(QUARANTINE, ns),
        lambda: QUARANTINE in {p["metadata"]["name"] for p in c.netpols()} and egress_closed(c),
    )
    tries.escape(
        HELPER,
        "edit the quarantine NetworkPolicy to allow all egress",
        lambda: tenant.net.patch_namespaced_network_policy(
            QUARANTINE, ns, {"spec": {"egress": [{}]}}
        ),
        lambda: egress_closed(c),
    )
    tries.escape(
        HELPER,
        "widen another NetworkPolicy to re-select the pods",
        lambda: tenant.net.replace_namespaced_network_policy(
            "allow-all-egress",
            ns,
            as_body(
                {
                    "metadata": {"name": "allow-all-egress"},
                    "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]},
                }
            ),
        ),
        lambda: egress_closed(c),
    )
    tries.escape(
        HELPER,
        "create a new NetworkPolicy letting the job's pods out",
        lambda: tenant.net.create_namespaced_network_policy(
            ns,
            as_body(
                {
                    "metadata": {"name": "let-rl-out"},
                    "spec": {
                        "podSelector": {"matchLabels": {"app": "helper"}},
                        "policyTypes": ["Egress"],
                        "egress": [{}],
                    },
                }
            ),
        ),
        lambda: egress_closed(c),
    )
    pod = helper_pods(c)[0].metadata.name
    tries.escape(
        HELPER,
        "remove the quarantine label from a pod",
        lambda: tenant.core.patch_namespaced_pod(
            pod, ns, {"metadata": {"labels": {"breaker.dev/quarantined": None}}}
        ),
        lambda: (
            egress_closed(c)
            and (meta_of(c.core.read_namespaced_pod(pod, ns)).labels or {}).get(
                "breaker.dev/quarantined"
            )
            == HELPER
        ),
    )
    # Past every NetworkPolicy: the kubelet's exec, attach and port-forward.
    wait_for(lambda: pod in params(c), "the pod in the admission policy's params")
    tries.connect(
        HELPER,
        "exec into a quarantined pod",
        lambda: tenant.core.connect_post_namespaced_pod_exec(
            pod, ns, command=["sh"], stdin=True, stdout=True
        ),
    )
    tries.connect(
        HELPER,
        "attach to a quarantined pod",
        lambda: tenant.core.connect_post_namespaced_pod_attach(pod, ns, stdout=True),
    )
    tries.connect(
        HELPER,
        "port-forward to a quarantined pod",
        lambda: tenant.core.connect_post_namespaced_pod_portforward(pod, ns, ports="22"),
    )

    # The pause: the job and the Deployment.
    tries.escape(
        BREAKER,
        "unsuspend the TrainingJob",
        lambda: tenant.custom.patch_namespaced_custom_object(
            GROUP, VERSION, ns, "trainingjobs", "rl", {"spec": {"suspend": False}}
        ),
        lambda: c.get("trainingjobs", "rl")["spec"].get("suspend") is True,
    )
    tries.escape(
        SIDECAR,
        "scale the paused Deployment back up",
        lambda: tenant.apps.patch_namespaced_deployment_scale(
            "sidecar", ns, {"spec": {"replicas": 2}}
        ),
        lambda: c.apps.read_namespaced_deployment("sidecar", ns).spec.replicas == 0,
    )

    # The breaker itself, and the GPUs.
    tries.refused(
        "delete its Breaker",
        lambda: tenant.custom.delete_namespaced_custom_object(
            GROUP, VERSION, ns, "breakers", BREAKER
        ),
    )
    tries.refused(
        "reset its Breaker",
        lambda: tenant.custom.patch_namespaced_custom_object(
            GROUP, VERSION, ns, "breakers", BREAKER, {"spec": {"reset": "let-me-out"}}
        ),
    )
    tries.refused(
        "clear the ForcedOpen override",
        lambda: tenant.custom.patch_namespaced_custom_object(
            GROUP, VERSION, ns, "breakers", BREAKER, {"spec": {"override": None}}
        ),
    )
    tries.refused(
        "raise the namespace's GPU quota",
        lambda: tenant.core.patch_namespaced_resource_quota(
            "breaker-gpu-clamp", ns, {"spec": {"hard": {"requests.nvidia.com/gpu": "64"}}}
        ),
    )
    tries.refused(
        "delete the GPU quota clamp",
        lambda: tenant.core.delete_namespaced_resource_quota("breaker-gpu-clamp", ns),
    )
    tries.refused(
        "read the ClusterBreakerPolicies",
        lambda: tenant.custom.list_cluster_custom_object(GROUP, VERSION, "clusterbreakerpolicies"),
    )
    tries.refused(
        "edit a BreakerPolicy",
        lambda: tenant.custom.patch_namespaced_custom_object(
            GROUP, VERSION, ns, "breakerpolicies", "guard", {"spec": {"mode": "DryRun"}}
        ),
    )
    tenant.custom.create_namespaced_custom_object(
        GROUP, VERSION, ns, "trainingjobs", trainingjob("rl-again", 1, 8, priority=9)
    )
    held = wait_for(
        lambda: (
            (s := c.get("trainingjobs", "rl-again").get("status", {})).get("state") == "Queued"
            and s
        ),
        "the new job to queue",
    )
    queued = next(x for x in held["conditions"] if x["type"] == "Queued")
    assert queued["reason"] == "HeldByBreaker"
    assert BREAKER in queued["message"]
    warning = wait_for(
        lambda: [
            e
            for e in c.core.list_namespaced_event(
                ns, field_selector="involvedObject.name=rl-again,reason=HeldByBreaker"
            ).items
            if e.type == "Warning"
        ],
        "a Warning Event on the new job",
    )
    assert "clamped by tripped Breaker rl-guard" in (warning[0].message or "")
    # The queue has its chance again (the tenant touches its own job, which wakes it): the
    # other tenant keeps the GPUs.
    passes = operator_process.metric("breaker_queue_passes_total")
    c.patch("trainingjobs", "rl-again", {"metadata": {"annotations": {"tenant/retry": "1"}}})
    wait_for(
        lambda: operator_process.metric("breaker_queue_passes_total") > passes,
        "a pass of the queue after the tenant's touch",
    )
    assert c.state("rl-again") == "Queued"
    assert c.state("waiting", c.other) == "Running"
    new_job = "create a new TrainingJob to get GPUs back"
    ATTEMPTS.append((f"[{tries.mode}] {new_job}", "held by the quota clamp", None))

    # The same program again, in workloads of its own: a fresh Deployment with the tripped
    # one's labels and image is guarded by a Breaker of its own, which has not tripped; a
    # bare Pod is no workload a policy guards. Neither is quarantined: their egress is open
    # until their own signals trip a breaker (the GPU quota clamp still holds GPUs back).
    tenant.apps.create_namespaced_deployment(ns, as_body(deployment("helper", "helper-again")))
    tenant.core.create_namespaced_pod(
        ns,
        as_body(
            {
                "metadata": {"name": "helper-bare", "labels": {"app": "helper"}},
                "spec": {"containers": [{"name": "c", "image": "helper:1"}]},
            }
        ),
    )
    fresh = f"helper-again-{HELPER.removeprefix('helper-')}"
    wait_for(lambda: c.breaker(fresh).get("status", {}).get("state") == "Closed", fresh)

    def newcomers() -> list[Any] | None:
        found = [p for p in helper_pods(c) if not quarantined(p)]
        return found if len(found) == 3 else None

    arrived = wait_for(newcomers, "the fresh Deployment's two pods and the bare one")
    for newcomer in arrived:
        labels = meta_of(newcomer).labels or {}
        assert effective_egress(labels, c.netpols()).allows(OUTSIDE_POOL, c.ns)
    ATTEMPTS.append(
        (
            f"[{tries.mode}] run the program again in a fresh Deployment and a bare Pod",
            "admitted: the Deployment guarded by a Breaker of its own (not tripped), the "
            "Pod unguarded; both with egress until their own signals trip",
            None,
        )
    )
    tenant.apps.delete_namespaced_deployment("helper-again", ns)
    tenant.core.delete_namespaced_pod("helper-bare", ns, grace_period_seconds=0)
    wait_for(lambda: all(quarantined(p) for p in helper_pods(c)), "the newcomers gone")

    # In the end: still contained, and the admin's reset still undoes everything.
    assert egress_closed(c)
    assert c.get("trainingjobs", "rl")["spec"]["suspend"] is True
    c.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, "trainingjobs", "rl-again")
    for breaker in (BREAKER, HELPER, SIDECAR):
        c.patch("breakers", breaker, {"spec": {"override": None, "reset": "admin"}})
    for breaker in (BREAKER, HELPER, SIDECAR):
        wait_for(
            functools.partial(closed, c, breaker),
            f"the admin's reset of {breaker}",
        )
    wait_for(
        lambda: c.apps.read_namespaced_deployment("sidecar", ns).spec.replicas == 2,
        "sidecar resumed",
    )
    wait_for(
        lambda: QUARANTINE not in {p["metadata"]["name"] for p in c.netpols()}, "unquarantined"
    )
    wait_for(lambda: c.state("rl") == "Running", "rl running again", timeout=60)
