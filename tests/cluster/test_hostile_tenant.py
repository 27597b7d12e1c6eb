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
from typing import Any

from breaker.actions.egress import effective_egress
from breaker.constants import ADMISSION_PARAMS, GROUP, VERSION
from breaker.selectors import matches
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
from tests.cluster.tenant import ATTEMPTS, Escapes, Tenant, policy_on, restored_events
from tests.conftest import Operator
from tests.helpers import wait_for
from tests.kube import as_body, meta_of, name_of

__all__ = ["ATTEMPTS", "policy_on"]  # the fixture, used by name; the run's record

BREAKER = "rl-guard"  # the TrainingJob's: revokeEgress, pause, reassignGPUs
HELPER = "helper-keep-training"  # a Deployment whose egress alone is revoked: pods keep running
QUARANTINE = f"{HELPER}-quarantine"
SIDECAR = "sidecar-stop"  # a Deployment that is paused (scaled to zero)


def closed(c: Cluster, breaker: str) -> bool:
    return bool(c.breaker(breaker).get("status", {}).get("state") == "Closed")


def held_ways_in(c: Cluster, tries: Escapes, tenant: Tenant, pod: str) -> None:
    """Coming in instead of going out: a NetworkPolicy letting the held pods be reached, a
    Service reaching them from outside the cluster, the API server's proxies, a debug
    container in a held pod."""
    ns = c.ns
    tries.escape(
        HELPER,
        "create a NetworkPolicy letting anyone reach the job's pods",
        lambda: tenant.net.create_namespaced_network_policy(
            ns,
            as_body(
                {
                    "metadata": {"name": "let-in"},
                    "spec": {
                        "podSelector": {"matchLabels": {"app": "helper"}},
                        "policyTypes": ["Ingress"],
                        "ingress": [{}],
                    },
                }
            ),
        ),
        lambda: ingress_closed(c),
    )
    nodeport = {
        "metadata": {"name": "helper-np"},
        "spec": {"type": "NodePort", "selector": {"app": "helper"}, "ports": [{"port": 22}]},
    }
    tries.admitted(
        HELPER,
        "expose the quarantined pods outside the cluster with a NodePort Service",
        lambda: tenant.core.create_namespaced_service(ns, as_body(nodeport)),
        "listed in the Breaker's status.exposure; the quarantine refuses what comes in",
    )
    if not tries.policy_on:
        wait_for(
            lambda: (
                (c.breaker(HELPER)["status"].get("exposure") or {}).get("services")
                == ["helper-np (NodePort)"]
            ),
            "the NodePort Service in the Breaker's status",
        )
        tenant.core.delete_namespaced_service("helper-np", ns)
    # A ClusterIP Service is the tenant's to make; its proxy reaches the pods through the
    # API server. Sent only where it is refused: admitted, the API server would dial the
    # kwok pods' addresses, which are not routed here (the real node's suite sends both).
    clusterip = {
        "metadata": {"name": "helper-svc"},
        "spec": {"selector": {"app": "helper"}, "ports": [{"port": 22}]},
    }
    tenant.core.create_namespaced_service(ns, as_body(clusterip))
    if tries.policy_on:
        wait_for(
            lambda: "helper-svc" in (c.get("breakerholds", ADMISSION_PARAMS)["spec"]["services"]),
            "the Service in the admission policy's params",
        )
        tries.connect(
            HELPER,
            "proxy to the quarantined pods through their Service",
            lambda: tenant.core.connect_get_namespaced_service_proxy_with_path(
                "helper-svc:22", ns, "x"
            ),
        )
        tries.connect(
            HELPER,
            "proxy to a quarantined pod through the API server",
            lambda: tenant.core.connect_get_namespaced_pod_proxy_with_path(f"{pod}:22", ns, "x"),
        )
    tenant.core.delete_namespaced_service("helper-svc", ns)
    debug = {"spec": {"ephemeralContainers": [{"name": "debug", "image": "busybox:1"}]}}
    tries.refused(
        "add a debug container to a quarantined pod (kubectl debug)",
        lambda: tenant.core.patch_namespaced_pod_ephemeralcontainers(pod, ns, debug),
    )


def held_ways_around(c: Cluster, tries: Escapes, tenant: Tenant) -> None:
    """The tenant, not a name: a held pod deleted or evicted (its controller makes a fresh
    one), the held workload scaled up, deleted and made again under its name; breaker's
    marks forged."""
    ns = c.ns
    tries.escape(
        HELPER,
        "delete a quarantined pod (its controller makes a fresh one)",
        lambda: tenant.core.delete_namespaced_pod(helper_pods(c)[0].metadata.name, ns),
        lambda: helpers_held(c),
    )
    eviction = {"metadata": {"name": helper_pods(c)[0].metadata.name}}
    tries.escape(
        HELPER,
        "evict a quarantined pod",
        lambda: tenant.core.create_namespaced_pod_eviction(
            eviction["metadata"]["name"], ns, as_body(eviction)
        ),
        lambda: helpers_held(c),
    )
    born(c, tries, tenant)
    tries.escape(
        HELPER,
        "change the held Deployment's pod template (a rollout of pods unlike its own)",
        lambda: tenant.apps.patch_namespaced_deployment(
            "helper", ns, {"spec": {"template": {"metadata": {"annotations": {"x": "y"}}}}}
        ),
        lambda: helpers_held(c),
    )
    host = {
        "metadata": {"name": "on-the-host"},
        "spec": {"hostNetwork": True, "containers": [{"name": "c", "image": "x:1"}]},
    }
    tries.admitted(
        HELPER,
        "run a pod on the host's network (the node's address, let in past the quarantine)",
        lambda: tenant.core.create_namespaced_pod(ns, as_body(host)),
        "not covered: a NetworkPolicy cannot isolate it, the node agent never cuts the "
        "node's address",
    )
    if not tries.policy_on:
        c.core.delete_namespaced_pod("on-the-host", ns, grace_period_seconds=0)
    uid = str(meta_of(c.apps.read_namespaced_deployment("helper", ns)).uid)
    tries.escape(
        HELPER,
        "delete the held Deployment and create it again under its name",
        lambda: (
            tenant.apps.delete_namespaced_deployment("helper", ns),
            wait_for(lambda: not helper_pods(c), "the old pods gone"),
            tenant.apps.create_namespaced_deployment(ns, as_body(deployment("helper"))),
        ),
        lambda: held_or_followed(c, uid) and helpers_held(c),
    )
    if not tries.policy_on:
        said = [
            e.message
            for e in c.core.list_namespaced_event(
                ns, field_selector=f"involvedObject.name={HELPER},reason=TargetRecreated"
            ).items
        ]
        assert said, "no TargetRecreated Event"
        assert uid in (said[0] or ""), said
    # breaker's marks are breaker's: a quarantine label or a paused-by the tenant writes.
    c.apps.create_namespaced_deployment(ns, as_body(deployment("decoy")))
    decoy = name_of(
        wait_for(
            lambda: c.core.list_namespaced_pod(ns, label_selector="app=decoy").items,
            "the decoy's pods",
        )[0]
    )
    tries.admitted(
        HELPER,
        "label a pod of another workload quarantined",
        lambda: tenant.core.patch_namespaced_pod(
            decoy, ns, {"metadata": {"labels": {"breaker.dev/quarantined": HELPER}}}
        ),
        "the pod is held with the breaker's own until the reset: the tenant cuts off only "
        "its own pod",
    )
    forged = {
        "metadata": {"name": "forged", "labels": {"breaker.dev/quarantined": "nobody"}},
        "spec": {"containers": [{"name": "c", "image": "x:1"}]},
    }
    tries.admitted(
        HELPER,
        "create a pod labelled quarantined by a breaker that holds nothing here",
        lambda: tenant.core.create_namespaced_pod(ns, as_body(forged)),
        "no NetworkPolicy selects that label: it changes nothing",
    )
    tries.admitted(
        SIDECAR,
        "mark a Deployment paused by a breaker",
        lambda: tenant.apps.patch_namespaced_deployment(
            "decoy", ns, {"metadata": {"annotations": {"breaker.dev/paused-by": SIDECAR}}}
        ),
        "changes nothing: a breaker resumes only the workload it paused",
    )
    c.apps.delete_namespaced_deployment("decoy", ns)
    if not tries.policy_on:
        c.core.delete_namespaced_pod("forged", ns, grace_period_seconds=0)


def born(c: Cluster, tries: Escapes, tenant: Tenant) -> None:
    """The revoke-only Deployment scaled up: its new pod is born quarantined (policy on:
    labelled by the mutating admission policy as it is created; off: by the operator on
    its next pass)."""
    ns = c.ns
    before = {meta_of(e).uid for e in restored_events(c, HELPER)}

    def said_new() -> list[Any]:
        """The operator's Warnings since the scale that it quarantined new pods."""
        return [
            e
            for e in restored_events(c, HELPER)
            if meta_of(e).uid not in before and "new" in (e.message or "")
        ]

    scaled = time.monotonic()
    tenant.apps.patch_namespaced_deployment_scale("helper", ns, {"spec": {"replicas": 3}})
    wait_for(lambda: helpers_held(c, 3), "the new pod quarantined", interval=0.02)
    took = time.monotonic() - scaled
    if tries.policy_on:
        # Labelled at its creation: the operator found nothing to do.
        assert not said_new(), said_new()
        tries.record("scale the revoke-only Deployment up", "born quarantined (at admission)")
    else:
        wait_for(said_new, "the operator's Warning for the new pod")
        tries.record("scale the revoke-only Deployment up", "quarantined by the operator", took)
    tenant.apps.patch_namespaced_deployment_scale("helper", ns, {"spec": {"replicas": 2}})
    wait_for(lambda: helpers_held(c), "back to two pods")


def helpers_held(c: Cluster, count: int = 2) -> bool:
    """helper runs ``count`` pods, every one quarantined, its egress closed."""
    pods = helper_pods(c)
    return len(pods) == count and all(quarantined(p) for p in pods) and egress_closed(c, count)


def held_or_followed(c: Cluster, uid: str) -> bool:
    """The Breaker guards the Deployment: the one it held (``uid``), or the one made again
    under the held name, which it follows."""
    now = meta_of(c.apps.read_namespaced_deployment("helper", c.ns)).uid
    return bool(c.breaker(HELPER)["spec"]["targetRef"]["uid"] == now)


def ingress_closed(c: Cluster) -> bool:
    """No NetworkPolicy but the quarantine lets anything reach a quarantined helper pod."""
    labels = [meta_of(p).labels or {} for p in helper_pods(c)]
    for found in c.netpols():
        spec = found.get("spec") or {}
        if found["metadata"]["name"] == QUARANTINE or not spec.get("ingress"):
            continue
        if any(matches(spec.get("podSelector") or {}, pod) for pod in labels):
            return False
    return True


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


def egress_closed(c: Cluster, count: int = 2) -> bool:
    """No pod of helper can reach the outside through any policy of the namespace."""
    policies = c.netpols()
    pods = helper_pods(c)
    return len(pods) == count and not any(
        effective_egress(p.metadata.labels or {}, policies).allows(OUTSIDE_POOL, c.ns) for p in pods
    )


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
    held_ways_in(c, tries, tenant, pod)
    held_ways_around(c, tries, tenant)

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
