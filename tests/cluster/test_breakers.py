"""The breaker end to end: the real control plane, the real Prometheus scraping the
simulator, and the operator as its own process.

Each attack runs on one TrainingJob of a full cluster with another job queued for GPUs:
it must end with the job's egress effectively closed (by the effective-egress function,
over every NetworkPolicy of its namespace, including one that allows everything), the
job suspended, and its GPUs running the queued job. A reset must put every object it
changed back as it was.
"""

from __future__ import annotations

import functools
import http.server
import json
import re
import shlex
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from breaker.api import containment
from breaker.constants import GROUP, VERSION
from breaker.failpoints import VARIABLE as FAILPOINTS
from tests.cluster.scenes import (
    ATTACKS,
    Cluster,
    contained,
    full_cluster,
    kubectl_breaker,
    person,
    policy,
    trainingjob,
)
from tests.conftest import OPERATOR_METRICS, Operator, free_port
from tests.helpers import wait_for
from tests.kube import as_body, as_dict, meta_of, spec_of, status_of


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_an_attack_is_contained(cluster: Cluster, attack: str) -> None:
    pods = full_cluster(cluster)
    cluster.create("breakerpolicies", policy())
    with cluster.sim(pods, ATTACKS[attack]):
        status = contained(cluster, pods)
    assert status["timeToContainSeconds"] > 0
    with urllib.request.urlopen(OPERATOR_METRICS[0], timeout=5) as response:
        metrics = response.read().decode()
    policy_label = f'policy="{cluster.ns}/guard"'
    fired = status["evidence"][-1]["signals"][0]["name"]
    assert f'breaker_trips_total{{{policy_label},signal="{fired}"}}' in metrics
    assert f"breaker_queries_per_evaluation{{{policy_label}}} 3.0" in metrics
    assert "breaker_time_to_contain_seconds_count" in metrics
    # One state series for the breaker: the state it is in.
    ours = [
        line
        for line in metrics.splitlines()
        if line.startswith("breaker_state{")
        and f'namespace="{cluster.ns}"' in line
        and 'breaker="rl-guard"' in line
    ]
    assert len(ours) == 1, ours
    assert ours[0].endswith(" 1.0"), ours
    assert f'state="{status["state"]}"' in ours[0]


def test_the_evidence_outlives_a_deleted_workload(
    cluster: Cluster, operator_process: Operator
) -> None:
    """No Breaker is owned by its workload, so the tenant cannot erase a tripped one by
    deleting its job. A reference an earlier version wrote is dropped: here the first drop
    fails (a failpoint), the Owned condition says so, and the retry holds. Then a trip, the
    tenant deletes its TrainingJob, the garbage collector takes the Job and its pods, and
    the Breaker and its evidence stay."""
    c = cluster
    operator_process.restart({FAILPOINTS: "breaker.disown=error"})
    try:
        pods = full_cluster(c)
        c.create("breakerpolicies", policy())
        wait_for(lambda: c.breaker("rl-guard").get("status"), "the breaker")
        assert "ownerReferences" not in c.breaker("rl-guard")["metadata"]
        rl = c.get("trainingjobs", "rl")["metadata"]
        legacy = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "TrainingJob",
            "name": "rl",
            "uid": rl["uid"],
            "blockOwnerDeletion": False,
        }
        c.patch("breakers", "rl-guard", {"metadata": {"ownerReferences": [legacy]}})
        said = wait_for(lambda: owned(c), "the Owned condition of the failed drop", timeout=30)
        assert said["reason"] == "ReleaseFailed"
        assert "TrainingJob/rl" in said["message"]
        wait_for(
            lambda: (
                not c.breaker("rl-guard")["metadata"].get("ownerReferences") and owned(c) is None
            ),
            "the reference dropped by the retry",
            timeout=30,
        )
        with c.sim(pods, ATTACKS["mining-mid-run"]):
            evidence = contained(c, pods)["evidence"]
        c.custom.delete_namespaced_custom_object(GROUP, VERSION, c.ns, "trainingjobs", "rl")
        jobs = c.batch.list_namespaced_job
        wait_for(
            lambda: "rl" not in {meta_of(j).name for j in jobs(c.ns).items}, "its Job collected"
        )
        names = {meta_of(p).name for p in pods}
        listed = c.core.list_namespaced_pod
        wait_for(
            lambda: not [p for p in listed(c.ns).items if meta_of(p).name in names],
            "its pods gone",
        )
        operator_process.wait_evaluations(2)
        kept = c.breaker("rl-guard")
        assert kept["status"]["state"] == "Open"
        assert kept["status"]["evidence"] == evidence
    finally:
        operator_process.restart()  # never leave a failpoint armed


def owned(c: Cluster) -> dict[str, Any] | None:
    conditions = c.breaker("rl-guard").get("status", {}).get("conditions") or []
    return next((x for x in conditions if x["type"] == "Owned"), None)


def test_a_reset_restores_every_changed_spec(cluster: Cluster) -> None:
    pods = full_cluster(cluster)
    cluster.create("breakerpolicies", policy())
    before = cluster.specs()
    with cluster.sim(pods, ATTACKS["mining-mid-run"]):
        contained(cluster, pods)
    cluster.patch("breakers", "rl-guard", {"metadata": {"annotations": {"breaker.dev/reset": "1"}}})
    wait_for(
        lambda: cluster.breaker("rl-guard").get("status", {})["state"] == "Closed",
        "the reset",
        timeout=30,
    )
    wait_for(lambda: cluster.specs() == before, "every spec back as it was", timeout=30)
    # The GPUs go back to the job that was tripped; the one that took them queues again.
    wait_for(lambda: cluster.state("rl") == "Running", "rl running again", timeout=60)
    wait_for(
        lambda: cluster.state("waiting", cluster.other) == "Queued",
        "waiting queued again",
        timeout=30,
    )
    status = cluster.breaker("rl-guard").get("status", {})
    # The count starts afresh (maxTrips counts from the reset); the evidence stays.
    assert not status.get("actions")
    assert status["trips"] == 0
    assert status["evidence"]
    assert [h["to"] for h in status["history"]][-2:] == ["Open", "Closed"]


def test_benign_training_is_never_contained(cluster: Cluster, operator_process: Operator) -> None:
    pods = full_cluster(cluster)
    cluster.create("breakerpolicies", policy())
    with cluster.sim(
        pods,
        [
            {"at": "0s", "do": "train-mixed"},
            {"at": "0s", "do": "checkpoint-upload"},
            {"at": "0s", "do": "nccl-allreduce"},
        ],
    ):
        wait_for(lambda: cluster.breaker("rl-guard").get("status"), "the breaker", timeout=30)
        operator_process.wait_evaluations(15, f"{cluster.ns}/guard")
    status = cluster.breaker("rl-guard").get("status", {})
    assert status["state"] == "Closed"
    assert not status.get("actions")
    assert cluster.state("rl") == "Running"
    # kubectl finds the plugin on PATH and shows the open policy.
    env = cluster.local.env()
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    shown = subprocess.run(
        [
            "kubectl",
            "breaker",
            "egress",
            pods[0].metadata.name,
            "-n",
            cluster.ns,
            "--to",
            "203.0.113.7:3333",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "allow-all-egress" in shown
    assert "203.0.113.7:3333: ALLOWED" in shown


def test_dry_run_records_and_changes_nothing(cluster: Cluster) -> None:
    pods = full_cluster(cluster)
    cluster.create("breakerpolicies", policy(mode="DryRun"))
    before = cluster.specs()
    with cluster.sim(pods, ATTACKS["mining-mid-run"]):
        breaker = wait_for(
            lambda: (
                b
                if containment.read((b := cluster.breaker("rl-guard")).get("status")).reason
                == containment.DRY_RUN
                else None
            ),
            "the dry-run trip",
            timeout=90,
        )
    assert breaker["status"]["state"] == "Open"
    assert breaker["status"]["dryRun"] is True
    assert all(a.get("dryRun") for a in breaker["status"]["actions"])
    assert cluster.specs() == before
    assert cluster.state("rl") == "Running"
    assert cluster.state("waiting", cluster.other) == "Queued"


def test_unreachable_prometheus_holds_and_reports_unknown(cluster: Cluster) -> None:
    cluster.create("trainingjobs", trainingjob("rl", 1, 8))
    cluster.running("rl", 1)
    cluster.create("breakerpolicies", policy(url=f"http://127.0.0.1:{free_port()}"))
    breaker = wait_for(
        lambda: (
            (b := cluster.breaker("rl-guard")).get("status", {}).get("signals") == "Unknown" and b
        ),
        "signals Unknown",
        timeout=30,
    )
    assert breaker["status"]["state"] == "Closed"
    assert not breaker["status"].get("actions")
    signals = next(c for c in breaker["status"]["conditions"] if c["type"] == "SignalsAvailable")
    assert signals["status"] == "Unknown"
    assert signals["reason"] == "PrometheusUnreachable"
    wait_for(
        lambda: cluster.get("breakerpolicies", "guard").get("status", {}).get("unknown") == 1,
        "the policy to count the breaker Unknown",
    )
    assert cluster.state("rl") == "Running"


def test_a_job_unsuspended_while_open_is_suspended_again_at_once(cluster: Cluster) -> None:
    pods = full_cluster(cluster)
    cluster.create("breakerpolicies", policy())
    with cluster.sim(pods, ATTACKS["mining-mid-run"]):
        contained(cluster, pods)
    cluster.patch("trainingjobs", "rl", {"spec": {"suspend": False}})
    changed = time.monotonic()
    wait_for(
        lambda: cluster.get("trainingjobs", "rl")["spec"]["suspend"] is True,
        "the job suspended again",
        timeout=5,
        interval=0.02,
    )
    assert time.monotonic() - changed < 1.0
    assert cluster.state("waiting", cluster.other) == "Running"


def test_half_open_retrips_on_relapse_and_closes_when_clean(cluster: Cluster) -> None:
    # A StatefulSet's pods keep their names when it scales back up, so the simulator's
    # series follow them through probation.
    labels = {"app": "agent"}
    cluster.apps.create_namespaced_stateful_set(
        cluster.ns,
        as_body(
            {
                "metadata": {"name": "agent"},
                "spec": {
                    "replicas": 2,
                    "serviceName": "agent",
                    "selector": {"matchLabels": labels},
                    "template": {"metadata": {"labels": labels}, "spec": gpu_pod_spec("Always")},
                },
            }
        ),
    )
    recovery = {"mode": "HalfOpen", "cooldown": "3s", "probation": "10s", "maxTrips": 5}
    cluster.create(
        "breakerpolicies",
        policy(
            kinds=("StatefulSet",),
            recovery=recovery,
            actions=("captureEvidence", "revokeEgress", "pause"),
        ),
    )
    pods = wait_for(lambda: running_pods(cluster, 2), "the StatefulSet's pods", timeout=60)
    with cluster.sim(pods, ATTACKS["mining-mid-run"]):
        wait_for(
            lambda: cluster.breaker("agent-guard").get("status", {}).get("trips") == 2,
            "a relapse in probation to trip again",
            timeout=120,
        )
    history = [h["to"] for h in cluster.breaker("agent-guard")["status"]["history"]]
    assert history[:3] == ["Open", "HalfOpen", "Open"]
    # Clean now: the next probation passes, the breaker closes and undoes everything.
    wait_for(
        lambda: cluster.breaker("agent-guard").get("status", {}).get("state") == "Closed",
        "a clean probation to close the breaker",
        timeout=150,
    )
    assert cluster.apps.read_namespaced_stateful_set("agent", cluster.ns).spec.replicas == 2
    assert not cluster.net.list_namespaced_network_policy(cluster.ns).items


def gpu_pod_spec(restart: str) -> dict[str, Any]:
    return {
        "restartPolicy": restart,
        "containers": [
            {"name": "c", "image": "agent:1", "resources": {"limits": {"nvidia.com/gpu": "1"}}}
        ],
    }


def running_pods(cluster: Cluster, count: int) -> list[Any] | None:
    listed = cluster.core.list_namespaced_pod(cluster.ns, label_selector="app=agent")
    pods = [
        p
        for p in listed.items
        if status_of(p).phase == "Running" and meta_of(p).deletion_timestamp is None
    ]
    return pods if len(pods) == count else None


@pytest.mark.parametrize("kind", ["Job", "Deployment"])
def test_foreign_workloads_are_paused_through_their_adapters(cluster: Cluster, kind: str) -> None:
    labels = {"app": "agent"}
    template = {
        "metadata": {"labels": labels},
        "spec": {
            "restartPolicy": "Never" if kind == "Job" else "Always",
            "containers": [
                {"name": "c", "image": "agent:1", "resources": {"limits": {"nvidia.com/gpu": "1"}}}
            ],
        },
    }
    if kind == "Job":
        cluster.batch.create_namespaced_job(
            cluster.ns,
            as_body(
                {"metadata": {"name": "agent"}, "spec": {"parallelism": 1, "template": template}}
            ),
        )
    else:
        cluster.apps.create_namespaced_deployment(
            cluster.ns,
            as_body(
                {
                    "metadata": {"name": "agent"},
                    "spec": {
                        "replicas": 2,
                        "selector": {"matchLabels": labels},
                        "template": template,
                    },
                }
            ),
        )
    cluster.create("breakerpolicies", policy(kinds=(kind,)))

    pods = wait_for(
        lambda: running_pods(cluster, 1 if kind == "Job" else 2), f"the {kind}'s pods", timeout=60
    )
    with cluster.sim(pods, ATTACKS["mining-mid-run"]):
        wait_for(
            lambda: cluster.settled_state("agent-guard") == "Open",
            "the breaker to trip",
            timeout=90,
        )
    if kind == "Job":
        assert spec_of(cluster.batch.read_namespaced_job("agent", cluster.ns)).suspend is True
    else:
        assert spec_of(cluster.apps.read_namespaced_deployment("agent", cluster.ns)).replicas == 0
    cluster.patch("breakers", "agent-guard", {"spec": {"reset": "now"}})
    wait_for(
        lambda: cluster.breaker("agent-guard").get("status", {})["state"] == "Closed",
        "reset",
        timeout=30,
    )
    if kind == "Job":
        assert not spec_of(cluster.batch.read_namespaced_job("agent", cluster.ns)).suspend
    else:
        assert spec_of(cluster.apps.read_namespaced_deployment("agent", cluster.ns)).replicas == 2


def stand_in_crd(group: str, version: str, kind: str, plural: str, scope: str) -> dict[str, Any]:
    """A schemaless CRD serving the API a network plugin would: enough to see what the
    operator writes there (nothing enforces it here; the effective-egress checks above
    cover the NetworkPolicies that this cluster does have)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{group}",
            # *.k8s.io groups are protected; a stand-in says it is not the approved API.
            "annotations": {"api-approved.kubernetes.io": "unapproved, a test stand-in"},
        },
        "spec": {
            "group": group,
            "scope": scope,
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [
                {
                    "name": version,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }


def test_deny_policies_are_added_where_the_cluster_serves_their_apis(
    cluster: Cluster, api_client: Any
) -> None:
    extensions = client.ApiextensionsV1Api(api_client)
    crds = [
        stand_in_crd(
            "policy.networking.k8s.io",
            "v1alpha1",
            "AdminNetworkPolicy",
            "adminnetworkpolicies",
            "Cluster",
        ),
        stand_in_crd(
            "cilium.io", "v2", "CiliumNetworkPolicy", "ciliumnetworkpolicies", "Namespaced"
        ),
    ]
    for crd in crds:
        extensions.create_custom_resource_definition(as_body(crd))

    def established(name: str) -> bool:
        found = status_of(extensions.read_custom_resource_definition(name))
        return any(c.type == "Established" and c.status == "True" for c in found.conditions or [])

    try:
        for crd in crds:
            wait_for(
                functools.partial(established, crd["metadata"]["name"]),
                f"{crd['metadata']['name']} established",
            )
        pods = full_cluster(cluster)
        cluster.create("breakerpolicies", policy())
        with cluster.sim(pods, ATTACKS["mining-mid-run"]):
            status = contained(cluster, pods)
        revoked = status["actions"][0]["changed"]
        anp = as_dict(
            cluster.custom.get_cluster_custom_object(
                "policy.networking.k8s.io",
                "v1alpha1",
                "adminnetworkpolicies",
                revoked["adminNetworkPolicy"],
            )
        )
        assert anp["spec"]["egress"][-1]["action"] == "Deny"
        assert anp["spec"]["subject"]["pods"]["podSelector"] == {
            "matchLabels": {"breaker.dev/quarantined": "rl-guard"}
        }
        cilium = as_dict(
            cluster.custom.get_namespaced_custom_object(
                "cilium.io", "v2", cluster.ns, "ciliumnetworkpolicies", revoked["ciliumPolicy"]
            )
        )
        assert cilium["spec"]["egressDeny"] == [{"toEntities": ["world"]}]
        cluster.patch("breakers", "rl-guard", {"spec": {"reset": "after-review"}})
        wait_for(
            lambda: (
                not as_dict(
                    cluster.custom.list_cluster_custom_object(
                        "policy.networking.k8s.io", "v1alpha1", "adminnetworkpolicies"
                    )
                )["items"]
            ),
            "the AdminNetworkPolicy removed on reset",
        )
        # Undone one after the other: the Cilium policy may go a moment after.
        wait_for(
            lambda: (
                not as_dict(
                    cluster.custom.list_namespaced_custom_object(
                        "cilium.io", "v2", cluster.ns, "ciliumnetworkpolicies"
                    )
                )["items"]
            ),
            "the CiliumNetworkPolicy removed on reset",
        )
    finally:
        for crd in crds:
            extensions.delete_custom_resource_definition(crd["metadata"]["name"])


def test_the_webhook_hears_of_the_trip_with_the_secrets_token(cluster: Cluster) -> None:
    """The operator may read no tenant's Secret: the first trip's Event says how to allow
    that one Secret; once those commands are run, the next trip reaches the webhook."""
    heard: list[tuple[dict[str, Any], str | None]] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            heard.append((json.loads(self.rfile.read(length)), self.headers.get("Authorization")))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    def webhook_failed() -> str | None:
        events = cluster.core.list_namespaced_event(
            cluster.ns, field_selector="involvedObject.name=rl-guard,reason=WebhookFailed"
        ).items
        return events[0].message if events else None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cluster.core.create_namespaced_secret(
            cluster.ns, as_body({"metadata": {"name": "hook"}, "stringData": {"token": "s3cret"}})
        )
        cluster.create("trainingjobs", trainingjob("rl", 1, 8))
        pods = cluster.running("rl", 1)
        body = policy(actions=("captureEvidence", "revokeEgress", "pause", "notify"))
        body["spec"]["actions"][-1]["notify"] = {
            "url": f"http://127.0.0.1:{server.server_port}/breaker",
            "secretRef": {"name": "hook", "key": "token"},
        }
        cluster.create("breakerpolicies", body)
        with cluster.sim(pods, ATTACKS["mining-mid-run"]):
            message = wait_for(webhook_failed, "the WebhookFailed Event", timeout=90)
            assert f"may not read Secret {cluster.ns}/hook" in message
            grants = re.findall(r"`(kubectl [^`]+)`", message)
            assert len(grants) == 2, message
            for grant in grants:
                subprocess.run(
                    shlex.split(grant), env=cluster.local.env(), check=True, capture_output=True
                )
            assert not heard
            cluster.patch(
                "breakers", "rl-guard", {"metadata": {"annotations": {"breaker.dev/reset": "1"}}}
            )
            wait_for(lambda: heard, "the webhook, on the reset", timeout=60)
        # The reset resumed the job with new pods: mining again trips again.
        pods = cluster.running("rl", 1)
        with cluster.sim(pods, ATTACKS["mining-mid-run"]):
            wait_for(
                lambda: any(p["event"] == "BreakerTripped" for p, _ in heard),
                "the webhook, on the trip after the reset",
                timeout=90,
            )
    finally:
        server.shutdown()
    assert heard[0][0]["event"] == "BreakerClosed"
    payload, authorization = next((p, a) for p, a in heard if p["event"] == "BreakerTripped")
    assert authorization == "Bearer s3cret"
    assert payload["state"] == "Open"
    assert payload["workload"] == {"kind": "TrainingJob", "name": "rl"}
    assert payload["evidence"]["signals"], "the latest evidence travels with it"
    # Sent once the outcome is recorded: results, not the intentions written ahead.
    outcome = payload["containment"]
    assert (outcome["contained"], outcome["reason"]) == (True, "Contained"), outcome
    assert outcome["timeToContainSeconds"] > 0
    assert [(a["type"], a["stage"]) for a in outcome["actions"]] == [
        ("revokeEgress", "done"),
        ("pause", "done"),
    ]
    assert outcome["actions"][1]["summary"] == "TrainingJob rl suspended"
    assert all(a == "Bearer s3cret" for _, a in heard)


class PrometheusProxy:
    """Stands between the operator and the real Prometheus, so a test can take it away
    mid-run (stopping the session's Prometheus would stop every other test's too)."""

    def __init__(self, upstream: str) -> None:
        class Forward(http.server.BaseHTTPRequestHandler):
            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                request = urllib.request.Request(
                    upstream + self.path,
                    data=self.rfile.read(length) if length else None,
                    headers={"Content-Type": self.headers.get("Content-Type", "")},
                    method=self.command,
                )
                with urllib.request.urlopen(request, timeout=10) as response:
                    body = response.read()
                self.send_response(response.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _forward

            def log_message(self, *_: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forward)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_prometheus_lost_mid_run_holds_the_state_and_says_unknown(cluster: Cluster) -> None:
    proxy = PrometheusProxy(cluster.local.prometheus_url)
    try:
        cluster.create("trainingjobs", trainingjob("rl", 1, 8))
        pods = cluster.running("rl", 1)
        cluster.create("breakerpolicies", policy(url=proxy.url))
        with cluster.sim(pods, [{"at": "0s", "do": "train-mixed"}]):
            wait_for(
                lambda: cluster.breaker("rl-guard").get("status", {}).get("signals") == "Available",
                "signals read through the proxy",
            )
            proxy.stop()
            status = wait_for(
                lambda: (
                    (s := cluster.breaker("rl-guard").get("status", {})).get("signals") == "Unknown"
                    and s
                ),
                "signals Unknown once Prometheus is gone",
            )
    finally:
        proxy.stop()
    assert status["state"] == "Closed"
    assert not status.get("actions")
    assert cluster.state("rl") == "Running"
    events = cluster.core.list_namespaced_event(cluster.ns).items
    assert not [e for e in events if e.reason == "BreakerTripped"]


def test_node_quarantine_cordons_and_taints_and_the_reset_undoes_only_that(
    cluster: Cluster, core: client.CoreV1Api
) -> None:
    cluster.create("trainingjobs", trainingjob("rl", 1, 8))
    pods = cluster.running("rl", 1)
    node = pods[0].spec.node_name
    core.patch_namespace(cluster.ns, {"metadata": {"labels": {"quarantine-test": cluster.ns}}})
    body = policy(actions=("captureEvidence", "quarantineNode"))
    body["kind"], body["metadata"] = "ClusterBreakerPolicy", {"name": cluster.ns[:50]}
    body["spec"]["targets"]["namespaceSelector"] = {"matchLabels": {"quarantine-test": cluster.ns}}
    cluster.custom.create_cluster_custom_object(GROUP, VERSION, "clusterbreakerpolicies", body)
    name = f"rl-{cluster.ns[:50]}"[:63]
    try:
        with cluster.sim(pods, ATTACKS["mining-mid-run"]):
            wait_for(
                lambda: cluster.settled_state(name) == "Open",
                "the breaker to trip",
                timeout=90,
            )
        quarantined = spec_of(core.read_node(node))
        assert quarantined.unschedulable is True
        assert any(t.key == QUARANTINE_TAINT for t in quarantined.taints or [])
        # The pod keeps running (no pause here) and its attack is still in the signal's
        # window, so a breaker reset under its policy trips again at once, on the same
        # samples. Deleting the policy first takes that out: a contained breaker whose
        # policy is gone still holds, and its reset undoes what it did.
        cluster.custom.delete_cluster_custom_object(
            GROUP, VERSION, "clusterbreakerpolicies", body["metadata"]["name"]
        )
        assert released(core, node) is False, "the node let go when the policy went"
        assert cluster.settled_state(name) == "Open"
        cluster.patch("breakers", name, {"spec": {"reset": "node-checked"}})
        try:
            wait_for(lambda: released(core, node), "the node released on reset")
        except AssertionError as error:
            history = (cluster.breaker(name).get("status") or {}).get("history")
            raise AssertionError(f"{error}; the breaker's history: {history}") from None
        assert QUARANTINE_MARK not in (meta_of(core.read_node(node)).annotations or {})
    finally:
        try:
            cluster.custom.delete_cluster_custom_object(
                GROUP, VERSION, "clusterbreakerpolicies", body["metadata"]["name"]
            )
        except client.ApiException as error:
            if error.status != 404:
                raise
        # Never leave the node cordoned, tainted or marked for the tests after this one.
        found = core.read_node(node)
        taints = [t for t in spec_of(found).taints or [] if t.key != QUARANTINE_TAINT]
        core.patch_node(
            node,
            {
                "metadata": {"annotations": {QUARANTINE_MARK: None}},
                "spec": {"unschedulable": None, "taints": taints or None},
            },
        )


QUARANTINE_TAINT = "breaker.dev/quarantined"
QUARANTINE_MARK = "breaker.dev/quarantine"


def released(core: client.CoreV1Api, node: str) -> bool:
    found = spec_of(core.read_node(node))
    return not found.unschedulable and not any(
        t.key == QUARANTINE_TAINT for t in found.taints or []
    )


def test_kubectl_breaker_trips_explains_and_resets(cluster: Cluster) -> None:
    pods = full_cluster(cluster)
    cluster.create("breakerpolicies", policy())
    wait_for(
        lambda: cluster.breaker("rl-guard").get("status", {}).get("state") == "Closed",
        "the breaker",
    )
    before = cluster.specs()
    # The allow-all policy of full_cluster lets the pod out, as the plugin says.
    egress = kubectl_breaker(cluster, "egress", pods[0].metadata.name, "--to", "203.0.113.7:3333")
    assert "203.0.113.7:3333: ALLOWED" in egress.stdout, egress.stdout + egress.stderr
    tenant = person(cluster, "tenant", "edit")
    viewer = person(cluster, "viewer", "breaker-viewer")

    refused = kubectl_breaker(cluster, "trip", "rl", "--reason", "mine", kubeconfig=tenant)
    assert refused.returncode == 1
    assert "not allowed to change breaker" in refused.stderr
    assert "breaker-admin role" in refused.stderr

    tripped = kubectl_breaker(cluster, "trip", "rl", "--reason", "agent opened a tunnel")
    assert tripped.returncode == 0, tripped.stderr
    # It waits for the outcome, and says it: what was done, not what was decided.
    assert re.search(r"rl-guard: ForcedOpen, contained in \d+\.\d\d s", tripped.stdout)
    assert "  TrainingJob rl suspended" in tripped.stdout
    assert f"handed to {cluster.other}/waiting" in tripped.stdout
    assert cluster.get("trainingjobs", "rl")["spec"]["suspend"] is True

    status = kubectl_breaker(cluster, "status", kubeconfig=viewer)
    assert status.returncode == 0, status.stderr
    (row,) = [line for line in status.stdout.splitlines() if line.startswith("rl-guard")]
    assert "TrainingJob/rl" in row
    assert "ForcedOpen" in row
    assert "agent opened a tunnel" in row

    story = kubectl_breaker(cluster, "explain", "rl-guard", kubeconfig=viewer).stdout
    assert "Closed → ForcedOpen: forced open by an admin: agent opened a tunnel" in story
    assert "revokeEgress applied" in story
    assert "pause applied" in story
    assert "  contained yes in " in story
    assert "None" not in story
    assert f"kubectl breaker reset rl-guard -n {cluster.ns}" in story

    reset = kubectl_breaker(cluster, "reset", "rl")
    assert reset.returncode == 0, reset.stderr
    assert "rl-guard: reset (closed, every action undone)" in reset.stdout
    wait_for(lambda: cluster.specs() == before, "every spec back as it was", timeout=30)
    assert "override" not in cluster.breaker("rl-guard")["spec"]

    missing = kubectl_breaker(cluster, "explain", "nothing-here")
    assert missing.returncode == 1
    assert "not found" in missing.stderr
