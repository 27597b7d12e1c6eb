"""Tenancy: a namespaced BreakerPolicy guards its own namespace and nothing else.

Its author writes the queries, so the test writes one that returns series for a pod of
another tenant as well as for its own: only its own job may be tripped. Its webhook's
Secret is read from its own namespace only, even when a Secret of that name sits in the
other tenant's namespace and in the operator's. A cluster-wide field in a namespaced
policy is refused at `kubectl apply`.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
from kubernetes import client

from breaker.constants import GROUP, VERSION
from tests.cluster.scenes import Cluster, policy, trainingjob
from tests.conftest import RELEASE_NAMESPACE, Operator, free_port
from tests.helpers import wait_for
from tests.kube import as_body, as_dict, meta_of


def crafted(series: list[tuple[str, str]]) -> str:
    """PromQL that returns value 1 for each (namespace, pod) given, from nothing scraped."""
    one = 'label_replace(label_replace(vector(1), "namespace", "{}", "", ""), "pod", "{}", "", "")'
    return " or ".join(one.format(namespace, pod) for namespace, pod in series)


def test_a_namespaced_policy_acts_on_its_own_namespace_only(
    cluster: Cluster, operator_process: Operator
) -> None:
    c = cluster
    c.create("trainingjobs", trainingjob("mine", 1, 8))
    (own,) = c.running("mine", 1)
    c.create("trainingjobs", trainingjob("victim", 1, 8), c.other)
    (victim,) = c.running("victim", 1, c.other)
    # The other tenant guards its job too: a trip there would show on its breaker.
    c.create("breakerpolicies", policy(), c.other)
    wait_for(lambda: c.settled_state("victim-guard", c.other) == "Closed", "victim's breaker")

    body = policy(actions=("revokeEgress", "pause"))
    # Its own pod's series carries a label value no exporter would: it must reach the
    # evidence cut and escaped.
    odd = '\\"}\\n<script>🙂' + "x" * 900
    query = crafted([(c.ns, own.metadata.name), (c.other, victim.metadata.name)])
    body["spec"]["signals"] = [
        {
            "name": "crafted",
            "query": f'label_replace({query}, "note", "{odd}", "", "")',
            "severity": "critical",
        }
    ]
    c.create("breakerpolicies", body)
    wait_for(lambda: c.settled_state("mine-guard") == "Open", "its own job tripped")
    # Three more evaluations, each naming the victim's pod too.
    operator_process.wait_evaluations(3, f"{c.ns}/guard")
    breakers = as_dict(c.custom.list_namespaced_custom_object(GROUP, VERSION, c.other, "breakers"))
    assert [b["metadata"]["name"] for b in breakers["items"]] == ["victim-guard"]
    assert all(b["spec"]["policyRef"].get("namespace") == c.other for b in breakers["items"]), (
        "a policy of another namespace made a Breaker here"
    )
    assert c.breaker("victim-guard", c.other)["status"]["state"] == "Closed"
    assert not c.get("trainingjobs", "victim", c.other)["spec"].get("suspend")
    assert not (victim.metadata.labels or {}).get("breaker.dev/quarantined")
    refreshed = c.core.read_namespaced_pod(victim.metadata.name, c.other)
    assert "breaker.dev/quarantined" not in (meta_of(refreshed).labels or {})
    assert not c.net.list_namespaced_network_policy(
        c.other, label_selector="breaker.dev/breaker"
    ).items
    evidence = c.breaker("mine-guard")["status"]["evidence"][-1]
    assert [p["name"] for p in evidence["pods"]] == [own.metadata.name]
    note = evidence["signals"][0]["labels"]["note"]
    # cut, escaped
    assert len(note) < 300, note
    assert "\n" not in note, note
    assert note.isascii(), note


def test_the_webhook_secret_is_read_from_the_policys_namespace_only(cluster: Cluster) -> None:
    c = cluster
    for namespace in (c.other, RELEASE_NAMESPACE):
        c.core.create_namespaced_secret(
            namespace,
            as_body({"metadata": {"name": "hook-token"}, "stringData": {"token": "not-yours"}}),
        )
    try:
        c.create("trainingjobs", trainingjob("mine", 1, 8))
        c.running("mine", 1)
        body = policy()
        body["spec"]["actions"] = [
            {"type": "pause"},
            {
                "type": "notify",
                "notify": {
                    "url": f"http://127.0.0.1:{free_port()}/hook",
                    "secretRef": {"name": "hook-token", "key": "token"},
                },
            },
        ]
        c.create("breakerpolicies", body)
        wait_for(lambda: c.breaker("mine-guard").get("status"), "the breaker")
        c.patch("breakers", "mine-guard", {"spec": {"override": "ForcedOpen"}})
        failed = wait_for(
            lambda: [
                e
                for e in c.core.list_namespaced_event(
                    c.ns, field_selector="involvedObject.name=mine-guard,reason=WebhookFailed"
                ).items
                if e.type == "Warning"
            ],
            "the webhook refused for want of its Secret",
        )
        # Read from the policy's namespace, where there is none (or refused there): never
        # from the other tenant's or the operator's, where one of that name exists.
        message = failed[0].message
        assert message is not None
        assert f"{c.ns}/hook-token" in message, message
        assert c.other not in message
        assert RELEASE_NAMESPACE not in message.split("serviceaccount")[0]
    finally:
        c.core.delete_namespaced_secret("hook-token", RELEASE_NAMESPACE)


def test_a_cluster_wide_field_in_a_namespaced_policy_is_refused_at_the_door(
    cluster: Cluster,
) -> None:
    c = cluster
    body: dict[str, Any] = policy()
    body["spec"]["targets"]["namespaceSelector"] = {"matchLabels": {"team": "everyone"}}
    body["metadata"]["namespace"] = c.ns
    done = subprocess.run(
        ["kubectl", "apply", "-f", "-"],
        input=json.dumps(body),
        env=c.local.env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert 'unknown field "spec.targets.namespaceSelector"' in done.stderr, done.stderr
    quarantine = policy(actions=("quarantineNode",))
    quarantine["metadata"]["name"] = "nodes"
    with pytest.raises(client.ApiException) as refused:
        c.create("breakerpolicies", quarantine)
    assert "quarantineNode" in str(refused.value)
