"""Bad input is refused at the door by the real API server, with a message naming the field."""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from breaker.constants import GROUP, VERSION
from breaker_tooling.localcluster import LocalCluster
from tests.kube import as_dict


def trainingjob(name: str = "tj") -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "gpusPerReplica": 1,
            "suspend": True,
            "template": {"spec": {"containers": [{"name": "t", "image": "img"}]}},
            "egress": {"cidrs": [{"cidr": "203.0.113.0/24", "ports": [{"port": 443}]}]},
        },
    }


def policy(kind: str = "BreakerPolicy") -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": kind,
        "metadata": {"name": "p"},
        "spec": {
            "signals": [
                {
                    "name": "mining",
                    "preset": "gpu-mining-profile",
                    "for": "1m",
                    "severity": "critical",
                },
                {"name": "ssh", "preset": "outbound-ssh"},
            ],
            "trip": {"rules": [{"name": "both", "allOf": ["mining", "ssh"]}]},
        },
    }


def breaker() -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Breaker",
        "metadata": {"name": "b"},
        "spec": {
            "policyRef": {"kind": "BreakerPolicy", "name": "p", "namespace": "x"},
            "targetRef": {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingJob", "name": "tj"},
        },
    }


def edit(
    base: Callable[[], dict[str, Any]], change: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    obj = copy.deepcopy(base())
    change(obj)
    return obj


PLURALS = {
    "TrainingJob": "trainingjobs",
    "BreakerPolicy": "breakerpolicies",
    "ClusterBreakerPolicy": "clusterbreakerpolicies",
    "Breaker": "breakers",
}

# (case, object, what the API server's message must contain)
REFUSED: list[tuple[str, dict[str, Any], list[str]]] = [
    (
        "zero GPUs",
        edit(trainingjob, lambda o: o["spec"].update(gpusPerReplica=0)),
        ["spec.gpusPerReplica", "should be greater than or equal to 1"],
    ),
    (
        "negative GPUs",
        edit(trainingjob, lambda o: o["spec"].update(gpusPerReplica=-4)),
        ["spec.gpusPerReplica", "should be greater than or equal to 1"],
    ),
    (
        "too many replicas",
        edit(trainingjob, lambda o: o["spec"].update(replicas=5000)),
        ["spec.replicas", "should be less than or equal to 1024"],
    ),
    (
        "malformed CIDR",
        edit(
            trainingjob, lambda o: o["spec"]["egress"]["cidrs"][0].update(cidr="203.0.113.300/24")
        ),
        ["spec.egress.cidrs[0].cidr", "must be a CIDR such as 203.0.113.0/24"],
    ),
    (
        "except outside the CIDR",
        edit(
            trainingjob,
            lambda o: o["spec"]["egress"]["cidrs"][0].update({"except": ["10.0.0.0/8"]}),
        ),
        ["spec.egress.cidrs[0].except", "every entry of except must be a CIDR inside cidr"],
    ),
    (
        "port out of range",
        edit(trainingjob, lambda o: o["spec"]["egress"]["cidrs"][0]["ports"][0].update(port=70000)),
        ["spec.egress.cidrs[0].ports[0].port", "should be less than or equal to 65535"],
    ),
    (
        "endPort below port",
        edit(trainingjob, lambda o: o["spec"]["egress"]["cidrs"][0]["ports"][0].update(endPort=80)),
        ["spec.egress.cidrs[0].ports[0].endPort", "endPort must not be below port"],
    ),
    (
        "unknown protocol",
        edit(
            trainingjob,
            lambda o: o["spec"]["egress"]["cidrs"][0]["ports"][0].update(protocol="ICMP"),
        ),
        ["spec.egress.cidrs[0].ports[0].protocol", 'Unsupported value: "ICMP"'],
    ),
    (
        "no containers",
        edit(trainingjob, lambda o: o["spec"]["template"]["spec"].update(containers=[])),
        ["spec.template.spec.containers", "should have at least 1 items"],
    ),
    (
        "in-cluster peer with no selector",
        edit(
            trainingjob, lambda o: o["spec"]["egress"].update(inCluster=[{"ports": [{"port": 80}]}])
        ),
        ["spec.egress.inCluster[0]", "set namespaceSelector, podSelector or both"],
    ),
    (
        "name too long for its Job",
        edit(trainingjob, lambda o: o["metadata"].update(name="x" * 51)),
        ["metadata.name: at most 50 characters"],
    ),
    (
        "empty signal list",
        edit(policy, lambda o: o["spec"].update(signals=[], trip={})),
        ["spec.signals", "should have at least 1 items"],
    ),
    (
        "unknown preset",
        edit(policy, lambda o: o["spec"]["signals"][1].update(preset="bitcoin-detector")),
        ["spec.signals[1].preset", 'Unsupported value: "bitcoin-detector"'],
    ),
    (
        "preset and query together",
        edit(policy, lambda o: o["spec"]["signals"][1].update(query="up")),
        ["spec.signals[1]", "set exactly one of preset and query"],
    ),
    (
        "malformed duration",
        edit(policy, lambda o: o["spec"]["signals"][0].update({"for": "5 minutes"})),
        ["spec.signals[0].for", "should match"],
    ),
    (
        "duplicate signal names",
        edit(policy, lambda o: o["spec"]["signals"][1].update(name="mining")),
        ["spec.signals[1]", "Duplicate value"],
    ),
    (
        "unknown action",
        edit(policy, lambda o: o["spec"].update(actions=[{"type": "deleteNamespace"}])),
        ["spec.actions[0].type", 'Unsupported value: "deleteNamespace"'],
    ),
    (
        "notify without a webhook",
        edit(policy, lambda o: o["spec"].update(actions=[{"type": "notify"}])),
        ["spec.actions[0]", "type notify needs them"],
    ),
    (
        "trip rule naming a missing signal",
        edit(policy, lambda o: o["spec"]["trip"]["rules"][0].update(allOf=["mining", "tunnel"])),
        ["spec.trip.rules", "must be defined in spec.signals"],
    ),
    (
        "cooldown cap below the cooldown",
        edit(policy, lambda o: o["spec"].update(recovery={"cooldown": "1h", "cooldownCap": "30m"})),
        ["spec.recovery.cooldownCap", "cooldownCap must not be below cooldown"],
    ),
    (
        "a namespaced policy that would cordon shared nodes",
        edit(policy, lambda o: o["spec"].update(actions=[{"type": "quarantineNode"}])),
        ["spec.actions", "quarantineNode acts on shared nodes"],
    ),
    (
        "unknown mode",
        edit(policy, lambda o: o["spec"].update(mode="Audit")),
        ["spec.mode", 'Unsupported value: "Audit"'],
    ),
    (
        "cluster policy with an unknown workload kind",
        edit(
            lambda: policy("ClusterBreakerPolicy"),
            lambda o: o["spec"].update(targets={"kinds": ["Pod"]}),
        ),
        ["spec.targets.kinds[0]", 'Unsupported value: "Pod"'],
    ),
    (
        "breaker with an unknown override",
        edit(breaker, lambda o: o["spec"].update(override="Open")),
        ["spec.override", 'Unsupported value: "Open"'],
    ),
]


def create(custom: client.CustomObjectsApi, namespace: str, obj: dict[str, Any]) -> Any:
    plural = PLURALS[obj["kind"]]
    if obj["kind"] == "ClusterBreakerPolicy":
        return custom.create_cluster_custom_object(GROUP, VERSION, plural, obj)
    return custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, obj)


@pytest.mark.parametrize(("case", "obj", "expected"), REFUSED, ids=[c[0] for c in REFUSED])
def test_the_api_server_refuses_it_naming_the_field(
    crds: None,
    custom: client.CustomObjectsApi,
    namespace: str,
    case: str,
    obj: dict[str, Any],
    expected: list[str],
) -> None:
    with pytest.raises(client.ApiException) as refused:
        create(custom, namespace, obj)
    assert refused.value.status == 422, refused.value.body
    message = json.loads(refused.value.body or "")["message"]
    for fragment in expected:
        assert fragment in message, f"{case}: {fragment!r} not in {message!r}"


def test_the_unedited_objects_are_accepted(
    crds: None, custom: client.CustomObjectsApi, namespace: str
) -> None:
    for obj in (trainingjob(), policy(), breaker()):
        create(custom, namespace, obj)
    stored = as_dict(
        custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "breakerpolicies", "p")
    )
    # The API server filled in the documented defaults.
    assert stored["spec"]["mode"] == "DryRun"
    assert [a["type"] for a in stored["spec"]["actions"]] == [
        "captureEvidence",
        "revokeEgress",
        "pause",
        "reassignGPUs",
    ]
    assert stored["spec"]["recovery"]["cooldownCap"] == "6h"


def test_a_trainingjob_cannot_change_shape_after_creation(
    crds: None, custom: client.CustomObjectsApi, namespace: str
) -> None:
    create(custom, namespace, trainingjob())
    with pytest.raises(client.ApiException) as refused:
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "trainingjobs", "tj", {"spec": {"replicas": 2}}
        )
    message = json.loads(refused.value.body or "")["message"]
    assert "spec.replicas" in message
    assert "replicas cannot change once the job exists; create a new TrainingJob" in message
    # What may change, does: priority, suspend, egress.
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "trainingjobs", "tj", {"spec": {"priority": 5, "suspend": False}}
    )


def test_kubectl_explain_teaches_the_api(local_cluster: LocalCluster, crds: None) -> None:
    explained = subprocess.run(
        ["kubectl", "explain", "trainingjob.spec.egress"],
        env=local_cluster.env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "The egress allow-list" in explained
    assert "Allowed destinations by address" in explained
