"""The local cluster is the real thing: a real scheduler, real controllers, real RBAC and a
real Prometheus. Each test here shows one of those at work."""

from __future__ import annotations

import json
import random
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from prometheus_api_client import PrometheusConnect
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from breaker.constants import GPU_RESOURCE
from breaker_tooling.localcluster import LocalCluster
from breaker_tooling.localcluster.realnode import NAME as REAL_NODE
from breaker_tooling.localcluster.tools import MODULES, ensure_built
from tests.helpers import wait_for
from tests.kube import as_body, meta_of, spec_of, status_of


def gpu_pod(name: str, gpus: int, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "containers": [
                {
                    "name": "train",
                    "image": "registry.invalid/train:latest",
                    "resources": {"limits": {GPU_RESOURCE: str(gpus)}},
                }
            ]
        },
    }


def gpus_requested_cluster_wide(core: client.CoreV1Api) -> int:
    total = 0
    for pod in core.list_pod_for_all_namespaces().items:
        if status_of(pod).phase in ("Succeeded", "Failed"):
            continue
        for container in spec_of(pod).containers:
            limits = (container.resources and container.resources.limits) or {}
            total += int(limits.get(GPU_RESOURCE, 0))
    return total


def test_gpu_pods_fill_the_nodes_and_the_fifth_waits(
    core: client.CoreV1Api, namespace: str, local_cluster: LocalCluster
) -> None:
    # Other tests' namespaces may still be draining; start from an empty cluster.
    wait_for(lambda: gpus_requested_cluster_wide(core) == 0, "no GPU pods left from other tests")
    capacity = local_cluster.nodes.count
    for index in range(capacity + 1):
        core.create_namespaced_pod(
            namespace, as_body(gpu_pod(f"full-{index}", local_cluster.nodes.gpus))
        )

    def running() -> list[client.V1Pod]:
        pods = core.list_namespaced_pod(namespace).items
        return [p for p in pods if status_of(p).phase == "Running"]

    placed = wait_for(
        lambda: pods if len(pods := running()) == capacity else None, f"{capacity} Running pods"
    )
    assert {spec_of(pod).node_name for pod in placed} == set(local_cluster.nodes.names())

    def unschedulable() -> Any:
        pods = core.list_namespaced_pod(namespace).items
        for pod in [p for p in pods if status_of(p).phase == "Pending"]:
            for condition in status_of(pod).conditions or []:
                if condition.type == "PodScheduled" and condition.reason == "Unschedulable":
                    return pod, condition
        return None

    pod, condition = wait_for(unschedulable, "the scheduler to mark the fifth pod Unschedulable")
    assert pod.spec.node_name is None
    assert condition.status == "False"
    assert f"Insufficient {GPU_RESOURCE}" in condition.message


def test_suspending_a_job_deletes_its_pods_and_resuming_recreates_them(
    api_client: Any, core: client.CoreV1Api, namespace: str
) -> None:
    batch = client.BatchV1Api(api_client)
    job = {
        "metadata": {"name": "train"},
        "spec": {
            "completionMode": "Indexed",
            "parallelism": 2,
            "completions": 2,
            "template": {
                "metadata": {"labels": {"app": "train"}},
                "spec": {**gpu_pod("x", 1)["spec"], "restartPolicy": "Never"},
            },
        },
    }
    batch.create_namespaced_job(namespace, as_body(job))

    def running_pods() -> set[str | None]:
        pods = core.list_namespaced_pod(namespace, label_selector="app=train").items
        return {
            meta_of(p).uid
            for p in pods
            if status_of(p).phase == "Running" and meta_of(p).deletion_timestamp is None
        }

    first = wait_for(lambda: pods if len(pods := running_pods()) == 2 else None, "2 Running pods")

    batch.patch_namespaced_job("train", namespace, {"spec": {"suspend": True}})
    wait_for(
        lambda: not core.list_namespaced_pod(namespace, label_selector="app=train").items,
        "the Job controller to delete the suspended Job's pods",
    )
    status = status_of(batch.read_namespaced_job_status("train", namespace))
    suspended = [c for c in status.conditions or [] if c.type == "Suspended"]
    assert suspended
    assert suspended[0].status == "True"

    batch.patch_namespaced_job("train", namespace, {"spec": {"suspend": False}})
    second = wait_for(
        lambda: pods if len(pods := running_pods()) == 2 else None, "2 new Running pods"
    )
    assert not first & second, "resuming must create new pods, not keep the old ones"
    # kwok keeps training pods Running: nothing completes them behind the test's back.
    status = wait_for(
        lambda: (
            s
            if (s := status_of(batch.read_namespaced_job_status("train", namespace))).active == 2
            else None
        ),
        "the Job to count 2 active pods",
    )
    assert not status.succeeded
    assert not status.completion_time


def test_a_network_policy_round_trips(api_client: Any, namespace: str) -> None:
    networking = client.NetworkingV1Api(api_client)
    spec = {
        "podSelector": {"matchLabels": {"app": "train"}},
        "policyTypes": ["Egress"],
        "egress": [
            {
                "to": [{"ipBlock": {"cidr": "203.0.113.0/24", "except": ["203.0.113.7/32"]}}],
                "ports": [{"protocol": "TCP", "port": 443}],
            },
            {
                "to": [
                    {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                        }
                    }
                ],
                "ports": [{"protocol": "UDP", "port": 53}],
            },
        ],
    }
    networking.create_namespaced_network_policy(
        namespace, as_body({"metadata": {"name": "train-egress"}, "spec": spec})
    )
    stored = networking.read_namespaced_network_policy("train-egress", namespace)
    assert api_client.sanitize_for_serialization(stored.spec) == spec

    networking.patch_namespaced_network_policy(
        "train-egress", namespace, {"spec": {"podSelector": {"matchLabels": {"app": "other"}}}}
    )
    patched = networking.read_namespaced_network_policy("train-egress", namespace)
    selector = spec_of(patched).pod_selector
    assert selector is not None
    assert selector.match_labels == {"app": "other"}

    networking.delete_namespaced_network_policy("train-egress", namespace)
    names = [meta_of(p).name for p in networking.list_namespaced_network_policy(namespace).items]
    assert "train-egress" not in names


def test_a_service_account_token_is_authenticated_and_authorized_by_rbac(
    api_client: Any, core: client.CoreV1Api, namespace: str, local_cluster: LocalCluster
) -> None:
    rbac = client.RbacAuthorizationV1Api(api_client)
    core.create_namespaced_service_account(namespace, as_body({"metadata": {"name": "reader"}}))
    rbac.create_namespaced_role(
        namespace,
        as_body(
            {
                "metadata": {"name": "pod-reader"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
            }
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        as_body(
            {
                "metadata": {"name": "reader-reads-pods"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "pod-reader",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
            }
        ),
    )
    token = status_of(
        core.create_namespaced_service_account_token(
            "reader", namespace, as_body({"spec": {"expirationSeconds": 600}})
        )
    ).token
    assert token is not None

    def as_bearer(bearer: str) -> client.ApiClient:
        configuration = client.Configuration()
        configuration.host = local_cluster.server
        configuration.ssl_ca_cert = str(local_cluster.keys.ca_cert)
        configuration.api_key = {"authorization": f"Bearer {bearer}"}
        return client.ApiClient(configuration)

    reader = as_bearer(token)
    review = client.AuthenticationV1Api(reader).create_self_subject_review(as_body({}))
    user_info = status_of(review).user_info
    assert user_info is not None
    assert user_info.username == f"system:serviceaccount:{namespace}:reader"

    # Granted: listing pods works (RBAC can take a moment to see the new binding).
    wait_for(
        lambda: client.CoreV1Api(reader).list_namespaced_pod(namespace) is not None,
        "the RoleBinding to take effect",
        ignore=(client.ApiException,),
    )
    # Not granted: secrets are forbidden.
    with pytest.raises(client.ApiException) as forbidden:
        client.CoreV1Api(reader).list_namespaced_secret(namespace)
    assert forbidden.value.status == 403
    assert f"system:serviceaccount:{namespace}:reader" in (forbidden.value.body or "")

    # A forged token is not authenticated at all.
    with pytest.raises(client.ApiException) as unauthorized:
        client.CoreV1Api(as_bearer(token[:-4] + "AAAA")).list_namespaced_pod(namespace)
    assert unauthorized.value.status == 401


@pytest.fixture
def test_exporter(local_cluster: LocalCluster) -> Iterator[tuple[str, float]]:
    """A tiny exporter on loopback, registered with Prometheus; yields (pod label, value)."""
    registry = CollectorRegistry()
    gauge = Gauge(
        "breaker_test_probe", "A value for the scrape test", ["namespace", "pod"], registry=registry
    )
    pod = f"probe-{random.randrange(1 << 30)}"
    value = round(random.uniform(1, 1000), 3)
    gauge.labels(namespace="scrape-test", pod=pod).set(value)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    local_cluster.targets.add("scrape-test", [f"127.0.0.1:{server.server_port}"])
    yield pod, value
    local_cluster.targets.remove("scrape-test")
    server.shutdown()
    thread.join()


def test_prometheus_scrapes_an_exporter_and_the_client_reads_it_back(
    prom: PrometheusConnect, test_exporter: tuple[str, float]
) -> None:
    pod, value = test_exporter
    query = f'breaker_test_probe{{pod="{pod}"}}'
    result = wait_for(lambda: prom.custom_query(query), f"Prometheus to scrape {query}", timeout=60)
    (sample,) = result
    # The exporter's own labels are kept (honor_labels), as DCGM-style series need.
    assert sample["metric"]["namespace"] == "scrape-test"
    assert sample["metric"]["pod"] == pod
    assert float(sample["value"][1]) == value


def test_up_when_already_up_changes_nothing(local_cluster: LocalCluster) -> None:
    components = local_cluster.components()
    assert "kubelet" in components
    assert "kube-router" in components
    before = {name: local_cluster.process(name).pid() for name in components}
    local_cluster.up()
    after = {name: local_cluster.process(name).pid() for name in components}
    assert before == after
    assert all(after.values())


def test_binaries_report_the_pinned_versions(local_cluster: LocalCluster) -> None:
    pinned = {module.name: module.version() for module in MODULES}
    env = local_cluster.env()

    def run(*command: str) -> str:
        return subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout

    versions = json.loads(run("kubectl", "version", "-o", "json"))
    assert versions["clientVersion"]["gitVersion"] == pinned["kube"]
    assert versions["serverVersion"]["gitVersion"] == pinned["kube"]
    assert run("helm", "version", "--short").startswith(pinned["helm"])
    assert pinned["etcd"].lstrip("v") in run("etcd", "--version")
    assert pinned["kwok"].lstrip("v") in run("kwok", "--version")
    # The real node: its kubelet and runtime as the API server sees them, kube-router's own.
    node = json.loads(run("kubectl", "get", "node", REAL_NODE, "-o", "json"))
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == pinned["kube"]
    assert info["containerRuntimeVersion"] == f"containerd://{pinned['containerd'].lstrip('v')}"
    router = str(ensure_built(say=lambda _m: None)["kube-router"])
    said = subprocess.run([router, "--version"], capture_output=True, text=True, check=True)
    assert f"version {pinned['kube-router']}" in said.stderr
