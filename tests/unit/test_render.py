"""What a TrainingJob owns: the Indexed Job and the baseline egress NetworkPolicy."""

from __future__ import annotations

from typing import Any

import pytest

from breaker.constants import JOB_LABEL, KUEUE_QUEUE_LABEL
from breaker.training.render import (
    InvalidTemplate,
    render_job,
    render_network_policy,
)


def trainingjob(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "breaker.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "tj", "namespace": "team", "uid": "u-1"},
        "spec": {
            "replicas": 3,
            "gpusPerReplica": 4,
            "template": {
                "metadata": {"labels": {"app": "x"}},
                "spec": {
                    "containers": [
                        {"name": "trainer", "image": "img", "resources": {"limits": {"cpu": "2"}}},
                        {"name": "sidecar", "image": "side"},
                    ],
                    "nodeSelector": {"pool": "gpu"},
                },
            },
            **spec,
        },
    }


def test_the_job_is_indexed_suspended_owned_and_asks_for_gpus() -> None:
    job = render_job(trainingjob())
    assert job["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert job["metadata"]["ownerReferences"][0]["controller"] is True
    spec = job["spec"]
    assert (spec["completionMode"], spec["parallelism"], spec["completions"]) == ("Indexed", 3, 3)
    assert spec["suspend"] is True
    pod = spec["template"]
    assert pod["metadata"]["labels"] == {
        "app": "x",
        JOB_LABEL: "tj",
        "app.kubernetes.io/managed-by": "breaker",
    }
    first, second = pod["spec"]["containers"]
    assert first["resources"]["limits"] == {"cpu": "2", "nvidia.com/gpu": "4"}
    assert "resources" not in second
    assert pod["spec"]["nodeSelector"] == {"pool": "gpu"}  # unknown fields pass through
    assert pod["spec"]["restartPolicy"] == "Never"


def test_a_template_that_sets_gpus_itself_is_refused_by_name() -> None:
    tj = trainingjob()
    tj["spec"]["template"]["spec"]["containers"][1]["resources"] = {
        "requests": {"nvidia.com/gpu": "1"}
    }
    with pytest.raises(
        InvalidTemplate, match=r"containers\[1\]\.resources\.requests\[nvidia\.com/gpu\]"
    ):
        render_job(tj)


def test_no_allow_list_means_dns_only() -> None:
    policy = render_network_policy(trainingjob())
    assert policy["spec"]["podSelector"] == {
        "matchLabels": {JOB_LABEL: "tj"},
        # A quarantined pod must fall out of its own allow-list, or revocation revokes nothing.
        "matchExpressions": [{"key": "breaker.dev/quarantined", "operator": "DoesNotExist"}],
    }
    assert policy["spec"]["policyTypes"] == ["Egress"]
    (dns,) = policy["spec"]["egress"]
    assert dns["ports"] == [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    assert dns["to"] == [
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}
    ]


def test_gpus_in_init_containers_are_refused_too() -> None:
    tj = trainingjob()
    tj["spec"]["template"]["spec"]["initContainers"] = [
        {"name": "warm", "image": "i", "resources": {"limits": {"nvidia.com/gpu": "8"}}}
    ]
    with pytest.raises(InvalidTemplate, match=r"initContainers\[0\]\.resources\.limits"):
        render_job(tj)


def test_dns_off_and_no_allow_list_denies_everything() -> None:
    policy = render_network_policy(trainingjob(egress={"dns": False}))
    assert policy["spec"]["egress"] == []


def test_allow_list_becomes_egress_rules() -> None:
    policy = render_network_policy(
        trainingjob(
            egress={
                "dns": False,
                "cidrs": [
                    {
                        "cidr": "198.51.100.0/24",
                        "except": ["198.51.100.9/32"],
                        "ports": [
                            {"port": 443},
                            {"port": 8000, "endPort": 8100, "protocol": "UDP"},
                        ],
                    }
                ],
                "inCluster": [
                    {"podSelector": {"matchLabels": {"app": "store"}}},
                    {
                        "namespaceSelector": {"matchLabels": {"team": "obs"}},
                        "ports": [{"port": 9091}],
                    },
                ],
            }
        )
    )
    assert policy["spec"]["egress"] == [
        {
            "to": [{"ipBlock": {"cidr": "198.51.100.0/24", "except": ["198.51.100.9/32"]}}],
            "ports": [
                {"protocol": "TCP", "port": 443},
                {"protocol": "UDP", "port": 8000, "endPort": 8100},
            ],
        },
        {"to": [{"podSelector": {"matchLabels": {"app": "store"}}}]},
        {
            "to": [{"namespaceSelector": {"matchLabels": {"team": "obs"}}}],
            "ports": [{"protocol": "TCP", "port": 9091}],
        },
    ]


def test_a_queue_name_hands_the_job_to_kueue() -> None:
    job = render_job(trainingjob(queueName="gpus"))
    assert job["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "gpus"
    assert job["spec"]["suspend"] is True  # Kueue's to start
    assert KUEUE_QUEUE_LABEL not in render_job(trainingjob())["metadata"]["labels"]
