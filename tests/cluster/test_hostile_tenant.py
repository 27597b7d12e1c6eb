"""A tripped tenant tries to get out.

The tenant holds Kubernetes' `edit` role in its namespace (with the chart's aggregation),
the most a team running its own jobs is usually given. Its job has been tripped. Every
way out it tries is either refused by the API server (RBAC) or undone by the operator
within a second of the change, with a Warning Event saying what was undone. How long
each undo took is printed at the end of the run.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from breaker.actions.egress import effective_egress
from breaker.constants import GROUP, VERSION
from tests.cluster.scenes import (
    OUTSIDE_POOL,
    Cluster,
    full_cluster,
    person,
    policy,
    trainingjob,
)
from tests.conftest import Operator
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


def escape(
    c: Cluster, breaker: str, what: str, attempt: Callable[[], Any], held: Callable[[], bool]
) -> None:
    """Make the attempt; it must be undone (``held`` true again) within a second, and a
    Warning Event on the breaker must say so."""
    warnings_before = len(restored_events(c, breaker))
    attempt()
    changed = time.monotonic()
    wait_for(held, f"the operator to undo: {what}", timeout=10, interval=0.02)
    took = time.monotonic() - changed
    ATTEMPTS.append((what, "undone", took))
    wait_for(
        lambda: len(restored_events(c, breaker)) > warnings_before,
        f"a Warning Event for: {what}",
        timeout=10,
    )
    assert took < 1.0, f"{what}: undone only after {took:.2f}s"


def refused(what: str, attempt: Callable[[], Any]) -> None:
    """The API server refuses the tenant (403) before anything changes."""
    with pytest.raises(client.ApiException) as caught:
        attempt()
    assert caught.value.status == 403, caught.value
    ATTEMPTS.append((what, "refused (403)", None))


def restored_events(c: Cluster, breaker: str) -> list[Any]:
    listed = c.core.list_namespaced_event(
        c.ns, field_selector=f"involvedObject.name={breaker},reason=ContainmentRestored"
    )
    return [e for e in listed.items if e.type == "Warning"]


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


def deployment(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": f"{name}:1"}]},
            },
        },
    }


def deployment_policy(name: str, app: str, action: str) -> dict[str, Any]:
    body = policy(kinds=("Deployment",), actions=(action,))
    body["metadata"]["name"] = name
    body["spec"]["targets"]["selector"] = {"matchLabels": {"app": app}}
    return body


def force_open(c: Cluster, breaker: str) -> None:
    wait_for(lambda: c.breaker(breaker).get("status"), f"breaker {breaker}")
    c.patch(
        "breakers",
        breaker,
        {"spec": {"override": "ForcedOpen", "overrideReason": "reverse tunnel seen"}},
    )
    wait_for(
        lambda: c.settled_state(breaker) == "ForcedOpen",
        f"{breaker} forced open",
    )


def test_a_tripped_tenant_cannot_get_out(cluster: Cluster, operator_process: Operator) -> None:
    c = cluster
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
    escape(
        c,
        HELPER,
        "delete the quarantine NetworkPolicy",
        lambda: tenant.net.delete_namespaced_network_policy(QUARANTINE, ns),
        lambda: QUARANTINE in {p["metadata"]["name"] for p in c.netpols()} and egress_closed(c),
    )
    escape(
        c,
        HELPER,
        "edit the quarantine NetworkPolicy to allow all egress",
        lambda: tenant.net.patch_namespaced_network_policy(
            QUARANTINE, ns, {"spec": {"egress": [{}]}}
        ),
        lambda: egress_closed(c),
    )
    escape(
        c,
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
    escape(
        c,
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
    escape(
        c,
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

    # The pause: the job and the Deployment.
    escape(
        c,
        BREAKER,
        "unsuspend the TrainingJob",
        lambda: tenant.custom.patch_namespaced_custom_object(
            GROUP, VERSION, ns, "trainingjobs", "rl", {"spec": {"suspend": False}}
        ),
        lambda: c.get("trainingjobs", "rl")["spec"].get("suspend") is True,
    )
    escape(
        c,
        SIDECAR,
        "scale the paused Deployment back up",
        lambda: tenant.apps.patch_namespaced_deployment_scale(
            "sidecar", ns, {"spec": {"replicas": 2}}
        ),
        lambda: c.apps.read_namespaced_deployment("sidecar", ns).spec.replicas == 0,
    )

    # The breaker itself, and the GPUs.
    refused(
        "delete its Breaker",
        lambda: tenant.custom.delete_namespaced_custom_object(
            GROUP, VERSION, ns, "breakers", BREAKER
        ),
    )
    refused(
        "reset its Breaker",
        lambda: tenant.custom.patch_namespaced_custom_object(
            GROUP, VERSION, ns, "breakers", BREAKER, {"spec": {"reset": "let-me-out"}}
        ),
    )
    refused(
        "clear the ForcedOpen override",
        lambda: tenant.custom.patch_namespaced_custom_object(
            GROUP, VERSION, ns, "breakers", BREAKER, {"spec": {"override": None}}
        ),
    )
    refused(
        "raise the namespace's GPU quota",
        lambda: tenant.core.patch_namespaced_resource_quota(
            "breaker-gpu-clamp", ns, {"spec": {"hard": {"requests.nvidia.com/gpu": "64"}}}
        ),
    )
    refused(
        "delete the GPU quota clamp",
        lambda: tenant.core.delete_namespaced_resource_quota("breaker-gpu-clamp", ns),
    )
    refused(
        "read the ClusterBreakerPolicies",
        lambda: tenant.custom.list_cluster_custom_object(GROUP, VERSION, "clusterbreakerpolicies"),
    )
    refused(
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
    ATTEMPTS.append(("create a new TrainingJob to get GPUs back", "held by the quota clamp", None))

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
