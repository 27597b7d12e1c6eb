"""The TrainingJob controller on the real control plane: the GPU queue, suspend and resume,
baseline egress, and problems reported on the object while everything else keeps running."""

from __future__ import annotations

import datetime as dt
import functools
import subprocess
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from breaker.constants import GROUP, TRAININGJOBS, VERSION
from breaker.selectors import matches
from breaker_tooling.localcluster import LocalCluster
from breaker_tooling.localcluster.paths import repo_root
from tests.cluster.test_local_cluster import gpus_requested_cluster_wide
from tests.helpers import wait_for
from tests.kube import as_dict, meta_of, spec_of

PLURAL = TRAININGJOBS


def trainingjob(
    name: str, replicas: int, gpus: int, priority: int = 0, **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "gpusPerReplica": gpus,
            "priority": priority,
            "template": {"spec": {"containers": [{"name": "trainer", "image": "trainer:1"}]}},
            **spec,
        },
    }


class Jobs:
    """TrainingJobs in one namespace, read through the real API."""

    def __init__(
        self, custom: client.CustomObjectsApi, core: client.CoreV1Api, namespace: str
    ) -> None:
        self.custom, self.core, self.namespace = custom, core, namespace

    def create(self, body: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)

    def patch(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, {"spec": spec}
        )

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def status(self, name: str) -> dict[str, Any]:
        obj = as_dict(
            self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        )
        status: dict[str, Any] = obj.get("status") or {}
        return status

    def states(self) -> dict[str, tuple[str | None, int | None]]:
        items = as_dict(
            self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)
        )["items"]
        return {
            i["metadata"]["name"]: (
                (i.get("status") or {}).get("state"),
                (i.get("status") or {}).get("queuePosition"),
            )
            for i in items
        }

    def pods(self, name: str) -> list[Any]:
        return [
            p
            for p in self.core.list_namespaced_pod(
                self.namespace, label_selector=f"breaker.dev/trainingjob={name}"
            ).items
            if meta_of(p).deletion_timestamp is None
        ]

    def running_on_nodes(self, name: str, replicas: int) -> list[Any] | None:
        pods = self.pods(name)
        bound = [p for p in pods if p.status.phase == "Running" and p.spec.node_name]
        return bound if len(bound) == replicas and len(pods) == replicas else None

    def wait_states(self, expected: dict[str, tuple[str | None, int | None]], what: str) -> None:
        wait_for(
            lambda: all(self.states().get(k) == v for k, v in expected.items()), what, timeout=30
        )


@pytest.fixture
def jobs(
    custom: client.CustomObjectsApi, core: client.CoreV1Api, namespace: str, operator: Path
) -> Jobs:
    wait_for(
        lambda: gpus_requested_cluster_wide(core) == 0,
        "no GPU pods left from other tests",
        timeout=60,
    )
    return Jobs(custom, core, namespace)


def test_five_jobs_compete_for_32_gpus_in_priority_order(jobs: Jobs) -> None:
    # Fill the cluster first, so all five queue and the order alone decides.
    jobs.create(trainingjob("blocker", 4, 8, priority=1000))
    jobs.wait_states({"blocker": ("Running", None)}, "the blocker to run on all 32 GPUs")

    jobs.create(trainingjob("a-16", 2, 8, priority=10))
    jobs.create(trainingjob("b-8", 1, 8, priority=50))
    jobs.create(trainingjob("c-16", 2, 8, priority=50))
    jobs.create(trainingjob("d-8", 1, 8, priority=100))
    jobs.create(trainingjob("e-8", 1, 8, priority=0))
    jobs.wait_states(
        {
            "d-8": ("Queued", 1),
            "b-8": ("Queued", 2),
            "c-16": ("Queued", 3),
            "a-16": ("Queued", 4),
            "e-8": ("Queued", 5),
        },
        "all five to queue by priority, then age",
    )
    assert not jobs.pods("d-8"), "a queued job holds no pods"

    jobs.delete("blocker")
    # 32 GPUs free: d (8), b (8) and c (16) fit in priority order; a and e wait.
    jobs.wait_states(
        {
            "d-8": ("Running", None),
            "b-8": ("Running", None),
            "c-16": ("Running", None),
            "a-16": ("Queued", 1),
            "e-8": ("Queued", 2),
        },
        "d, b and c to be admitted and run; a and e to queue",
    )
    c_pods = jobs.running_on_nodes("c-16", 2)
    assert c_pods is not None, "the real scheduler bound both of c's pods"
    assert len({p.spec.node_name for p in c_pods}) == 2, "8-GPU replicas need a node each"

    # Suspending b frees 8 GPUs: a (16) still does not fit, e (8) does and goes ahead.
    jobs.patch("b-8", {"suspend": True})
    jobs.wait_states(
        {"b-8": ("Suspended", None), "e-8": ("Running", None), "a-16": ("Queued", 1)},
        "b to suspend and e to take its GPUs",
    )
    wait_for(lambda: not jobs.pods("b-8"), "the suspended job's pods to be gone")

    # Deleting c frees 16: a is admitted and the scheduler binds both its pods.
    jobs.delete("c-16")
    jobs.wait_states({"a-16": ("Running", None)}, "a to be admitted once c is gone")
    assert wait_for(lambda: jobs.running_on_nodes("a-16", 2), "a's pods bound and running")

    # Resuming b puts it back in the queue: no GPUs are free.
    jobs.patch("b-8", {"suspend": False})
    jobs.wait_states({"b-8": ("Queued", 1)}, "the resumed job to queue")
    conditions = {c["type"]: c for c in jobs.status("b-8")["conditions"]}
    assert conditions["Queued"]["message"].startswith(
        "position 1 of 1; needs 8 nvidia.com/gpu (1 x 8)"
    )
    assert conditions["Ready"]["status"] == "False"


def test_events_mark_the_transitions(jobs: Jobs) -> None:
    jobs.create(trainingjob("evented", 1, 1))
    jobs.wait_states({"evented": ("Running", None)}, "the job to run")
    jobs.patch("evented", {"suspend": True})
    jobs.wait_states({"evented": ("Suspended", None)}, "the job to suspend")

    def created(event: client.CoreV1Event) -> dt.datetime:
        stamp = meta_of(event).creation_timestamp
        assert stamp is not None, event
        return stamp

    def reasons() -> list[str | None]:
        events = jobs.core.list_namespaced_event(
            jobs.namespace,
            field_selector="involvedObject.name=evented,involvedObject.kind=TrainingJob",
        ).items
        return [e.reason for e in sorted(events, key=created)]

    seen = wait_for(lambda: r if "Suspended" in (r := reasons()) else None, "a Suspended event")
    assert "Running" in seen
    assert len(seen) == len(set(seen)), f"one event per transition, not per pass: {seen}"


def test_each_jobs_pods_are_selected_by_exactly_its_baseline_policy(
    jobs: Jobs, api_client: Any
) -> None:
    jobs.create(trainingjob("open", 1, 1))
    jobs.create(
        trainingjob(
            "listed",
            2,
            1,
            egress={
                "dns": False,
                "cidrs": [{"cidr": "198.51.100.0/24", "ports": [{"port": 443}]}],
            },
        )
    )
    jobs.wait_states({"open": ("Running", None), "listed": ("Running", None)}, "both jobs to run")
    policies = (
        client.NetworkingV1Api(api_client).list_namespaced_network_policy(jobs.namespace).items
    )
    by_name = {meta_of(p).name: api_client.sanitize_for_serialization(p.spec) for p in policies}

    for job, replicas in (("open", 1), ("listed", 2)):
        pods = wait_for(functools.partial(jobs.running_on_nodes, job, replicas), f"{job} pods")
        for pod in pods:
            selecting = [
                name
                for name, spec in by_name.items()
                if matches(spec["podSelector"], pod.metadata.labels)
            ]
            assert selecting == [f"{job}-egress"], pod.metadata.name

    # No allow-list: DNS only. An allow-list without DNS: exactly that, nothing else.
    (dns,) = by_name["open-egress"]["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert by_name["listed-egress"]["egress"] == [
        {
            "to": [{"ipBlock": {"cidr": "198.51.100.0/24"}}],
            "ports": [{"protocol": "TCP", "port": 443}],
        }
    ]
    assert by_name["listed-egress"]["policyTypes"] == ["Egress"]

    # Edit the allow-list: the policy follows the spec.
    jobs.patch("listed", {"egress": {"dns": True, "cidrs": None}})
    wait_for(
        lambda: (
            len(
                spec_of(
                    client.NetworkingV1Api(api_client).read_namespaced_network_policy(
                        "listed-egress", jobs.namespace
                    )
                ).egress
                or []
            )
            == 1
        ),
        "the policy to follow the new allow-list (DNS only)",
    )


def test_problems_show_on_the_object_and_the_rest_keeps_running(
    jobs: Jobs, custom: client.CustomObjectsApi, core: client.CoreV1Api, api_client: Any
) -> None:
    gpu_in_template = trainingjob("self-gpu", 1, 1)
    gpu_in_template["spec"]["template"]["spec"]["containers"][0]["resources"] = {
        "limits": {"nvidia.com/gpu": "2"}
    }
    jobs.create(gpu_in_template)
    jobs.create(trainingjob("too-wide", 1, 16))
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        jobs.namespace,
        "breakerpolicies",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "BreakerPolicy",
            "metadata": {"name": "typo"},
            "spec": {
                "signals": [{"name": "ssh", "preset": "outbound-ssh", "params": {"port": "22"}}]
            },
        },
    )
    jobs.create(trainingjob("fine", 1, 2))

    def ready(name: str) -> dict[str, Any] | None:
        return next(
            (c for c in jobs.status(name).get("conditions", []) if c["type"] == "Ready"), None
        )

    invalid = wait_for(
        lambda: (r := ready("self-gpu")) and r["reason"] == "InvalidSpec" and r, "InvalidSpec"
    )
    assert invalid["status"] == "False"
    assert "spec.template.spec.containers[0].resources.limits[nvidia.com/gpu]" in invalid["message"]
    assert (
        not client.BatchV1Api(api_client)
        .list_namespaced_job(jobs.namespace, label_selector="breaker.dev/trainingjob=self-gpu")
        .items
    ), "no Job for a spec that cannot run"

    wide = wait_for(
        lambda: (r := ready("too-wide")) and r["reason"] == "Unschedulable" and r, "Unschedulable"
    )
    assert (
        wide["message"]
        == "each replica needs 16 nvidia.com/gpu on one node, but the largest node has 8"
    )

    def policy_ready() -> dict[str, Any] | None:
        obj = as_dict(
            custom.get_namespaced_custom_object(
                GROUP, VERSION, jobs.namespace, "breakerpolicies", "typo"
            )
        )
        return next(
            (c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == "Ready"),
            None,
        )

    condition = wait_for(policy_ready, "the policy's Ready condition")
    assert (condition["status"], condition["reason"]) == ("False", "InvalidPolicy")
    assert condition["message"] == (
        "spec.signals[0] (ssh).params.port: preset outbound-ssh has no such parameter; "
        "it takes persistence, ports, source, window"
    )
    warnings = core.list_namespaced_event(
        jobs.namespace, field_selector="involvedObject.name=typo"
    ).items
    assert [e.reason for e in warnings] == ["InvalidPolicy"]

    jobs.wait_states({"fine": ("Running", None)}, "a valid job to run beside the broken objects")


def test_the_examples_apply_cleanly(local_cluster: LocalCluster, jobs: Jobs) -> None:
    namespace = jobs.namespace
    examples = repo_root() / "examples"
    env = local_cluster.env()
    subprocess.run(
        [
            "kubectl",
            "apply",
            "-n",
            namespace,
            "-f",
            examples / "trainingjobs",
            "-f",
            examples / "policies" / "namespaced.yaml",
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    cluster_policy = examples / "policies" / "cluster.yaml"
    subprocess.run(
        ["kubectl", "apply", "-f", cluster_policy], env=env, check=True, capture_output=True
    )
    try:
        for kind in ("breakerpolicy/agents-guard", "clusterbreakerpolicy/agents-everywhere"):
            args = ["kubectl", "wait", "--for=condition=Ready", "--timeout=30s", kind]
            subprocess.run(
                args + (["-n", namespace] if kind.startswith("breakerpolicy") else []),
                env=env,
                check=True,
                capture_output=True,
            )
        # On an empty cluster the large job (priority 100) takes all 32 GPUs first and the
        # small one waits for them.
        jobs.wait_states(
            {"rl-agent-large": ("Running", None), "llm-finetune-small": ("Queued", 1)},
            "the large example to run and the small one to queue",
        )
    finally:
        subprocess.run(
            ["kubectl", "delete", "-f", cluster_policy], env=env, check=True, capture_output=True
        )
