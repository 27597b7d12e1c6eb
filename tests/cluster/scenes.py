"""The scenes the end-to-end tests play: a tenant's namespace on the real control plane, a
full cluster with another tenant queued for GPUs, the simulator's attacks, and the people
(ServiceAccounts bound to a role) who act on it.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kubernetes import client

from breaker import kube
from breaker.actions.egress import Destination, effective_egress
from breaker.api import containment
from breaker.constants import GROUP, VERSION
from breaker_tooling.localcluster import LocalCluster
from tests.conftest import free_port, service_account_kubeconfig
from tests.helpers import wait_for
from tests.kube import as_body, as_dict, meta_of, spec_of

OUTSIDE_POOL = Destination(port=3333, ip="203.0.113.7")
OUTSIDE_SSH = Destination(port=22, ip="198.51.100.4")


def trainingjob(name: str, replicas: int, gpus: int, priority: int = 0) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": name, "labels": {"team": "agents"}},
        "spec": {
            "replicas": replicas,
            "gpusPerReplica": gpus,
            "priority": priority,
            "template": {"spec": {"containers": [{"name": "trainer", "image": "trainer:1"}]}},
        },
    }


def batch_job(name: str, template: dict[str, Any]) -> dict[str, Any]:
    """A batch Job that runs its pod once (no restart, no retry)."""
    template["spec"]["restartPolicy"] = "Never"
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": template},
    }


def policy(
    mode: str = "Enforce",
    kinds: tuple[str, ...] = ("TrainingJob",),
    recovery: dict[str, Any] | None = None,
    url: str | None = None,
    actions: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Fast signals for tests: evaluated every second, firing at once."""
    spec: dict[str, Any] = {
        "targets": {"kinds": list(kinds)},
        "signals": [
            {
                "name": "pool",
                "preset": "mining-pool-egress",
                "params": {"window": "20s"},
                "for": "0s",
                "severity": "critical",
            },
            {
                "name": "ssh",
                "preset": "outbound-ssh",
                # Persistence measured per whole minute: over one minute here, not ten.
                "params": {"window": "1m", "persistence": "0.5"},
                "for": "0s",
                "severity": "critical",
            },
            {"name": "scan", "preset": "scan-fanout", "for": "0s", "severity": "critical"},
        ],
        "mode": mode,
        "prometheus": {"interval": "1s", "timeout": "2s"},
    }
    if recovery:
        spec["recovery"] = recovery
    if url:
        spec["prometheus"]["url"] = url
    if actions:
        spec["actions"] = [{"type": a} for a in actions]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "BreakerPolicy",
        "metadata": {"name": "guard"},
        "spec": spec,
    }


ALLOW_ALL = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "allow-all-egress"},
    # Every pod of the namespace may go anywhere: revocation must close this too.
    "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]},
}


def done(breaker: dict[str, Any]) -> bool:
    """Every action carried out, as the Contained condition records it: none pending (the
    write-ahead of a trip), none failed, no undo left."""
    found = containment.read(breaker.get("status"))
    return found.settled and found.reason not in (
        containment.ACTIONS_FAILED,
        containment.UNDO_FAILED,
    )


class Cluster:
    """One test namespace, read and written through the real API."""

    def __init__(self, api: Any, namespace: str, local: LocalCluster, tmp: Path) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.net = client.NetworkingV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.ns, self.local, self.tmp = namespace, local, tmp
        self.other = namespace

    def create(self, plural: str, body: dict[str, Any], namespace: str | None = None) -> None:
        self.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace or self.ns, plural, body
        )

    def get(self, plural: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        return as_dict(
            self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace or self.ns, plural, name
            )
        )

    def patch(self, plural: str, name: str, body: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.ns, plural, name, body)

    def state(self, tj: str, namespace: str | None = None) -> str | None:
        state: str | None = self.get("trainingjobs", tj, namespace).get("status", {}).get("state")
        return state

    def breaker(self, name: str, namespace: str | None = None) -> dict[str, Any]:
        """The Breaker, or {} while the operator has not made it yet."""
        try:
            return self.get("breakers", name, namespace)
        except client.ApiException as error:
            if error.status == 404:
                return {}
            raise

    def settled_state(self, breaker: str, namespace: str | None = None) -> str | None:
        """The Breaker's state once every action of it is carried out: none pending, none
        failed (a failed one, a 409 say, is tried again on the next pass)."""
        found = self.breaker(breaker, namespace)
        return (found.get("status") or {}).get("state") if done(found) else None

    def running_again(self, tj: str, breaker: str, timeout: float = 180) -> None:
        """The TrainingJob runs again after its breaker's reset; if it does not, the failure
        says what the queue had to go on: the handoff the breaker recorded, the debt its
        reset wrote, and every TrainingJob's state."""
        try:
            wait_for(lambda: self.state(tj) == "Running", f"{tj} running again", timeout)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.queue_story(breaker)}") from None

    def queue_story(self, breaker: str) -> str:
        status = self.breaker(breaker).get("status") or {}
        handoff = [a for a in status.get("actions") or [] if a["type"] == "reassignGPUs"]
        said = self.core.list_namespaced_event(
            self.ns, field_selector=f"involvedObject.name={breaker}"
        ).items
        jobs = []
        for namespace in (self.ns, self.other):
            listed = as_dict(
                self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "trainingjobs")
            )
            for tj in listed["items"]:
                found = tj.get("status") or {}
                jobs.append(
                    f"{namespace}/{tj['metadata']['name']}: suspend={tj['spec'].get('suspend')} "
                    f"state={found.get('state')} admittedAt={found.get('admittedAt')}"
                )
        return "\n".join(
            [
                f"{breaker}: state={status.get('state')} reclaim={status.get('reclaim')}",
                f"  handoff now: {handoff}",
                *(f"  event {e.reason}: {e.message}" for e in said),
                *jobs,
            ]
        )

    def pods_of(self, tj: str, namespace: str | None = None) -> list[Any]:
        pods = self.core.list_namespaced_pod(
            namespace or self.ns, label_selector=f"breaker.dev/trainingjob={tj}"
        )
        return [p for p in pods.items if meta_of(p).deletion_timestamp is None]

    def netpols(self) -> list[dict[str, Any]]:
        listed = self.net.list_namespaced_network_policy(self.ns)
        return [kube.to_dict(client.ApiClient(), p) for p in listed.items]

    def egress_of(self, pod: Any) -> Any:
        return effective_egress(pod.metadata.labels or {}, self.netpols())

    def running(self, tj: str, replicas: int, namespace: str | None = None) -> list[Any]:
        def ready() -> list[Any] | None:
            pods = self.pods_of(tj, namespace)
            ok = len(pods) == replicas and all(p.status.phase == "Running" for p in pods)
            return pods if ok and self.state(tj, namespace) == "Running" else None

        result: list[Any] = wait_for(ready, f"{tj} running", timeout=60)
        return result

    @contextlib.contextmanager
    def sim(self, pods: list[Any], timeline: list[dict[str, str]]) -> Iterator[None]:
        """Play the simulator for these pods, scraped by the local Prometheus."""
        scenario = {
            "name": f"e2e-{self.ns}"[:63],
            "duration": "30m",
            "interval": "1s",
            "pods": [
                {
                    "namespace": self.ns,
                    "name": p.metadata.name,
                    "node": p.spec.node_name,
                    "gpus": 8,
                    "timeline": timeline,
                }
                for p in pods
            ],
        }
        path = self.tmp / "scenario.yaml"
        path.write_text(json.dumps(scenario))
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "breaker.cli",
                "sim",
                str(path),
                "--port",
                str(free_port()),
                "--register",
            ],
            env=self.local.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        try:
            yield
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=20)

    def specs(self) -> dict[str, Any]:
        """Every spec a breaker may change in this namespace, to compare after a reset."""
        tjs = as_dict(
            self.custom.list_namespaced_custom_object(GROUP, VERSION, self.ns, "trainingjobs")
        )
        quotas = self.core.list_namespaced_resource_quota(self.ns)
        return {
            "trainingjobs": {t["metadata"]["name"]: t["spec"] for t in tjs["items"]},
            "networkpolicies": {p["metadata"]["name"]: p["spec"] for p in self.netpols()},
            "quotas": {meta_of(q).name: spec_of(q).to_dict() for q in quotas.items},
        }


def full_cluster(c: Cluster) -> list[Any]:
    """rl (16 GPUs) and filler (16 GPUs) fill the 32; another tenant's waiting (16) queues."""
    c.create("trainingjobs", trainingjob("rl", 2, 8, priority=1))
    c.create("trainingjobs", trainingjob("filler", 2, 8, priority=1))
    pods = c.running("rl", 2)
    c.running("filler", 2)
    c.create("trainingjobs", trainingjob("waiting", 2, 8, priority=5), c.other)
    wait_for(lambda: c.state("waiting", c.other) == "Queued", "waiting to queue")
    c.net.create_namespaced_network_policy(c.ns, as_body(ALLOW_ALL))
    assert c.egress_of(pods[0]).allows(OUTSIDE_POOL, c.ns)  # before: wide open
    return pods


ATTACKS = {
    "mining-mid-run": [
        {"at": "0s", "do": "train-mixed"},
        {"at": "4s", "do": "mine"},
        {"at": "4s", "do": "miner-pool-egress"},
    ],
    "reverse-tunnel": [{"at": "0s", "do": "train-mixed"}, {"at": "4s", "do": "reverse-ssh-tunnel"}],
    "internal-scan": [{"at": "0s", "do": "train-mixed"}, {"at": "4s", "do": "internal-scan-fast"}],
}


def contained(c: Cluster, pods: list[Any]) -> dict[str, Any]:
    breaker = wait_for(
        lambda: (
            (b := c.breaker("rl-guard")).get("status", {}).get("state") == "Open" and done(b) and b
        ),
        "the breaker to trip",
        timeout=150,  # outbound-ssh's persistence is counted in whole minutes
    )
    status: dict[str, Any] = breaker["status"]
    found = containment.read(status)  # the operator's status, held to the contract
    assert (found.reason, found.contained) == (containment.CONTAINED, True), found.message
    assert found.seconds is not None
    assert found.seconds > 0
    assert [a.type for a in found.actions] == ["revokeEgress", "pause", "reassignGPUs"]
    assert all(a.stage == "done" for a in found.actions), status["actions"]
    assert status["evidence"][-1]["signals"], "the evidence names what fired"
    # Egress: closed to the outside across every policy, the allow-all one included.
    for pod in pods:
        labels = {**(pod.metadata.labels or {}), "breaker.dev/quarantined": "rl-guard"}
        egress = effective_egress(labels, c.netpols())
        assert not egress.allows(OUTSIDE_POOL, c.ns)
        assert not egress.allows(OUTSIDE_SSH, c.ns)
    assert c.get("trainingjobs", "rl")["spec"]["suspend"] is True
    wait_for(
        lambda: c.state("waiting", c.other) == "Running",
        "the queued job to get the GPUs",
        timeout=30,
    )

    # Who got the GPUs is recorded when the queue admits them (it may follow Contained).
    def handed() -> containment.GPUsReassigned | None:
        latest = containment.read(c.breaker("rl-guard").get("status")).of("reassignGPUs")
        detail = latest.detail if latest is not None else None
        return detail if isinstance(detail, containment.GPUsReassigned) and detail.to else None

    handoff = wait_for(handed, "the handoff recorded", timeout=30)
    assert handoff.to == (f"{c.other}/waiting",)
    assert sum(f.gpus for f in handoff.freed) == 16
    paused = found.of("pause")
    assert paused is not None
    assert paused.detail == containment.Paused("TrainingJob", "rl")
    quota = c.core.read_namespaced_resource_quota("breaker-gpu-clamp", c.ns)
    assert (spec_of(quota).hard or {})["requests.nvidia.com/gpu"] == "16"  # filler's, no more
    return status


def kubectl_breaker(
    cluster: Cluster, *args: str, kubeconfig: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`kubectl breaker ARGS`, found by kubectl on PATH as the kubectl-breaker plugin."""
    env = cluster.local.env()
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    return subprocess.run(
        ["kubectl", "breaker", *args, "-n", cluster.ns],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def person(cluster: Cluster, name: str, role: str) -> Path:
    """A ServiceAccount bound to ``role`` in the test namespace, as a kubeconfig."""
    cluster.core.create_namespaced_service_account(
        cluster.ns, as_body({"metadata": {"name": name}})
    )
    binding = f"create rolebinding {name} --clusterrole={role} --serviceaccount={cluster.ns}:{name}"
    subprocess.run(
        ["kubectl", "-n", cluster.ns, *binding.split()],
        env=cluster.local.env(),
        check=True,
        capture_output=True,
    )
    return service_account_kubeconfig(cluster.local, cluster.ns, name, cluster.tmp / name)


def deployment(app: str, name: str | None = None) -> dict[str, Any]:
    """A Deployment of two pods labelled ``app``, running the image ``<app>:1``."""
    return {
        "metadata": {"name": name or app, "labels": {"app": app}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": app, "deployment": name or app}},
            "template": {
                "metadata": {"labels": {"app": app, "deployment": name or app}},
                "spec": {"containers": [{"name": "c", "image": f"{app}:1"}]},
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
