"""The chart's admission policies where the tenant's attempts are not the point: a namespace
that holds containment is deleted like any other, and a cluster whose API server does not
serve MutatingAdmissionPolicy (1.33 and older; 1.34 and 1.35 by default) still holds a
held workload's new pods, labelled by the operator on its next pass, within the window the
docs give (``docs/operations/admission.md``)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config

from breaker.constants import GROUP, VERSION
from breaker_tooling.localcluster import LocalCluster
from breaker_tooling.localcluster.paths import repo_root
from tests.cluster.scenes import Cluster, deployment, deployment_policy, force_open
from tests.cluster.tenant import ATTEMPTS
from tests.conftest import FORGIVEN_END, FORGIVEN_START, Operator, install_chart
from tests.helpers import wait_for
from tests.kube import as_body, meta_of

CHART = repo_root() / "helm" / "breaker"
HELPER = "helper-keep-training"
# A 1.36 API server configured as an older cluster runs: no MutatingAdmissionPolicy.
WITHOUT_MUTATING_POLICIES = (
    "--feature-gates=MutatingAdmissionPolicy=false",
    "--runtime-config=admissionregistration.k8s.io/v1/mutatingadmissionpolicies=false,"
    "admissionregistration.k8s.io/v1/mutatingadmissionpolicybindings=false",
)


def helper_pods(c: Cluster) -> list[Any]:
    listed = c.core.list_namespaced_pod(c.ns, label_selector="app=helper")
    return [p for p in listed.items if meta_of(p).deletion_timestamp is None]


def held(c: Cluster, count: int) -> bool:
    pods = helper_pods(c)
    return len(pods) == count and all(
        "breaker.dev/quarantined" in (meta_of(p).labels or {}) for p in pods
    )


def contain_helper(c: Cluster) -> None:
    """A revoke-only Deployment, tripped by an admin: its pods run on, quarantined."""
    c.apps.create_namespaced_deployment(c.ns, as_body(deployment("helper")))
    c.create("breakerpolicies", deployment_policy("keep-training", "helper", "revokeEgress"))
    wait_for(lambda: held(c, 0) or len(helper_pods(c)) == 2, "helper's pods")
    force_open(c, HELPER)
    wait_for(lambda: held(c, 2), "helper's pods quarantined")


def test_a_namespace_holding_containment_is_deleted_like_any_other(cluster: Cluster) -> None:
    """The namespace controller deletes the quarantine NetworkPolicy, the held pods and the
    held workload: Kubernetes itself, never refused (an API server evaluates match
    conditions without the namespace object, so the check of a namespace being deleted is
    in the validations)."""
    c = cluster
    contain_helper(c)
    wait_for(lambda: c.get("breakerholds", "breaker-containment"), "the BreakerHold")
    # The operator watches its params: deleted by hand, they are put back at once.
    first = c.get("breakerholds", "breaker-containment")["metadata"]["uid"]
    c.custom.delete_namespaced_custom_object(
        GROUP, VERSION, c.ns, "breakerholds", "breaker-containment"
    )
    wait_for(
        lambda: c.get("breakerholds", "breaker-containment")["metadata"]["uid"] != first,
        "the BreakerHold put back",
        timeout=30,
        ignore=(client.ApiException,),
    )
    # And a tenant's own policy whose selector names the quarantine label.
    c.net.create_namespaced_network_policy(
        c.ns,
        as_body(
            {
                "metadata": {"name": "own"},
                "spec": {
                    "podSelector": {"matchLabels": {"breaker.dev/quarantined": "x"}},
                    "policyTypes": ["Egress"],
                },
            }
        ),
    )
    deleted = time.monotonic()
    c.core.delete_namespace(c.ns)

    def gone() -> bool:
        try:
            c.core.read_namespace(c.ns)
        except client.ApiException as error:
            if error.status == 404:
                return True
            raise
        return False

    wait_for(gone, f"namespace {c.ns} deleted", timeout=120)
    ATTEMPTS.append(
        (
            "[policy on] an admin deletes a namespace holding containment",
            "deleted",
            time.monotonic() - deleted,
        )
    )


@pytest.fixture
def without_mutating_policies(
    local_cluster: LocalCluster, operator_process: Operator
) -> Iterator[None]:
    """The API server restarted as a cluster without MutatingAdmissionPolicy runs it, the
    chart upgraded on it (it renders no such policy there), then all put back."""
    # The chart removes its mutating policy while the API server still serves the kind.
    install_chart(local_cluster, CHART, "admissionPolicy.bornQuarantined=false")
    operator_process.note(FORGIVEN_START)
    local_cluster.restart_apiserver(flags=WITHOUT_MUTATING_POLICIES)
    try:
        let_in_again(operator_process)
        install_chart(local_cluster, CHART)
        yield
    finally:
        operator_process.note(FORGIVEN_START)
        local_cluster.restart_apiserver()
        let_in_again(operator_process)
        install_chart(local_cluster, CHART)


def let_in_again(operator_process: Operator) -> None:
    """A restarted API server refuses requests while its RBAC cache fills; the operator's
    log forgives that window, up to the moment its identity is let in again."""
    identity: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        str(operator_process.kubeconfig)
    )
    # Writes too: until its namespaces are known again, the API server refuses new objects
    # in any namespace as if it were being deleted.
    probe = {"metadata": {"name": "probe"}, "spec": {"podSelector": {}}}
    wait_for(
        lambda: client.NetworkingV1Api(identity).create_namespaced_network_policy(
            "default", as_body(probe), dry_run="All"
        ),
        "the API server to let the operator in again",
        timeout=60,
        ignore=(client.ApiException,),
    )
    operator_process.note(FORGIVEN_END)


def served(local_cluster: LocalCluster) -> str:
    return subprocess.run(
        ["kubectl", "api-resources", "--api-group=admissionregistration.k8s.io", "-o", "name"],
        env=local_cluster.env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout


@pytest.mark.usefixtures("without_mutating_policies")
def test_without_a_mutating_policy_new_pods_are_quarantined_on_the_next_pass(
    cluster: Cluster, local_cluster: LocalCluster
) -> None:
    c = cluster
    assert "mutatingadmissionpolicies" not in served(local_cluster)
    contain_helper(c)
    # The tenant scales the revoke-only Deployment up: the new pod is admitted unlabelled,
    # and the operator labels it on its next pass.
    scaled = time.monotonic()
    c.apps.patch_namespaced_deployment_scale("helper", c.ns, {"spec": {"replicas": 3}})
    wait_for(lambda: held(c, 3), "the new pod quarantined", interval=0.02)
    took = time.monotonic() - scaled
    ATTEMPTS.append(
        (
            "[no MutatingAdmissionPolicy] scale the revoke-only Deployment up",
            "its new pod quarantined by the operator",
            took,
        )
    )

    def said() -> list[str]:
        return [
            e.message or ""
            for e in c.core.list_namespaced_event(
                c.ns, field_selector=f"involvedObject.name={HELPER},reason=ContainmentRestored"
            ).items
        ]

    wait_for(lambda: any("new" in m for m in said()), "the operator's Warning for the new pod")
