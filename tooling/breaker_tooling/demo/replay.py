"""`breaker demo`: the ROME incident replayed on the local cluster, contained, and undone.

It brings up (or reuses) the local cluster, starts the operator, the node agent and the
simulator as processes of their own, applies the demo policy and a fleet that fills every
GPU with one more job queued. The agent's job runs on the real node: its pod really opens a
reverse tunnel, a mining-pool session and DNS queries to the outside hosts, on the same
clock as the simulator that plays its GPU and network signals. The demo prints what the
operator recorded and what the packets showed, resets the breaker and shows everything
restored. It cleans up after itself unless ``--keep`` is given.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client, config

from breaker.actions.egress import Destination, effective_egress
from breaker.api import containment
from breaker.circuit.plan import reset_token
from breaker.constants import CLAMP_QUOTA_NAME, GPU_RESOURCE, GROUP, RESET_ANNOTATION, VERSION
from breaker.wait import WaitTimeout, wait_for
from breaker_tooling.demo.story import (
    AGENT,
    BREAKER,
    OTHERS,
    POOL_AT,
    REPLAY,
    SCAN_AT,
    TENANT,
    TUNNEL_AT,
    WAITING,
    DemoError,
    packet_lines,
    timeline_lines,
)
from breaker_tooling.localcluster import LocalCluster, packets
from breaker_tooling.localcluster.paths import repo_root
from breaker_tooling.localcluster.realnode import NAME as REAL_NODE

T = TypeVar("T")
REAL_NODE_GPUS = 8  # an extended resource patched into the node's status: no GPU involved
LEAD_SECONDS = 20  # from creating the agent's job to the replay's start: its pod is running


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait(probe: Callable[[], T | None], what: str, timeout: float = 90.0) -> T:
    try:
        return wait_for(probe, what, timeout, ignore=(client.ApiException, OSError))
    except WaitTimeout as error:
        raise DemoError(str(error)) from None


def _trainingjob(
    name: str, replicas: int, priority: int, template: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "gpusPerReplica": 8,
            "priority": priority,
            "template": template
            or {"spec": {"containers": [{"name": "trainer", "image": "trainer:1"}]}},
        },
    }


# On the kwok GPU nodes: 32 GPUs.
FLEET = [(OTHERS, _trainingjob("pretrain", 2, 1)), (OTHERS, _trainingjob("eval", 2, 1))]


class Demo:
    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.cluster = LocalCluster()
        self.started_cluster = False
        self.cluster_up = False  # a start that failed keeps its logs for the reader
        self.processes: list[subprocess.Popen[bytes]] = []
        self.named: dict[str, subprocess.Popen[bytes]] = {}  # the same, by name
        self.workdir = Path(tempfile.mkdtemp(prefix="breaker-demo-"))
        self.t0 = time.monotonic()
        self.epoch = 0.0  # wall time the replay starts, for the simulator and the agent
        self.agent_pod: Any = None
        self.reached: dict[str, bool] = {}  # what the agent's pod reached after the trip
        self.quarantine: list[str] = []  # the quarantine policy, as the breaker recorded it

    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {message}", flush=True)

    # -- set-up ---------------------------------------------------------------------------

    def up(self) -> None:
        self.started_cluster = not self.cluster.healthy()
        self.say(
            "local cluster (control plane, Prometheus, the real node)"
            + (" (starting)" if self.started_cluster else " (already up)")
        )
        self.cluster.up()
        self.cluster_up = True
        config.load_kube_config(str(self.cluster.kubeconfig))  # type: ignore[no-untyped-call]
        api = client.ApiClient()
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.net = client.NetworkingV1Api(api)
        self._kubectl(
            "apply", "--server-side", "--force-conflicts", "-f", str(repo_root() / "crds")
        )
        self._kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        self._clear_previous_run()
        self._namespace("breaker-system", guarded=False)  # the node agent's Lease
        for namespace in (TENANT, OTHERS, WAITING):
            self._namespace(namespace, guarded=True)
        _wait(
            lambda: all(
                self.core.read_namespaced_service_account("default", ns)
                for ns in (TENANT, OTHERS, WAITING)
            ),
            "the demo namespaces",
        )
        self._real_node_gpus(REAL_NODE_GPUS)
        self._start_operator()
        self._start_node_agent()
        self._kubectl("apply", "-f", str(repo_root() / "examples" / "policies" / "demo.yaml"))
        self.say(
            "applied examples/policies/demo.yaml "
            "(Enforce; the default policy's presets with short windows)"
        )

    def _namespace(self, name: str, guarded: bool) -> None:
        labels = {"breaker.dev/demo": "guarded"} if guarded else {}
        self._kubectl_apply(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
        )

    def _real_node_gpus(self, count: int | None) -> None:
        """Give the real node ``count`` GPUs (None: take them away again): an extended
        resource in its status, which its kubelet keeps."""
        value = str(count) if count is not None else None
        patch = {
            "status": {"capacity": {GPU_RESOURCE: value}, "allocatable": {GPU_RESOURCE: value}}
        }
        self.core.patch_node_status(REAL_NODE, patch)
        if count:
            self.say(f"{REAL_NODE}: the real node, {count} {GPU_RESOURCE} for the demo")

    def _clear_previous_run(self) -> None:
        """A run left behind (--keep, or killed): start from a clean slate."""
        left = _names(self.core.list_namespace(label_selector="breaker.dev/demo"))
        if not left:
            return
        self.say(f"removing what an earlier demo left: namespaces {', '.join(left)}")
        for namespace in left:
            with contextlib.suppress(client.ApiException):
                self.core.delete_namespace(namespace)
        _wait(
            lambda: not self.core.list_namespace(label_selector="breaker.dev/demo").items,
            "the earlier demo's namespaces to go",
            timeout=120,
        )

    def _start_operator(self) -> None:
        port, metrics_port = _free_port(), _free_port()
        self.operator = self._process(
            "operator",
            [
                sys.executable,
                "-m",
                "breaker.cli",
                "run",
                "--liveness",
                f"http://127.0.0.1:{port}/healthz",
                "--prometheus-url",
                self.cluster.prometheus_url,
                "--metrics-port",
                str(metrics_port),
            ],
        )

        def live() -> bool:
            if self.operator.poll() is not None:
                raise DemoError(f"the operator exited; its log: {self.workdir / 'operator.log'}")
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                return bool(r.status == 200)

        _wait(live, "the operator to start", timeout=60)
        self.say(f"operator running (log {self.workdir / 'operator.log'})")

    def _start_node_agent(self) -> None:
        agent = self._process("node-agent", self.cluster.real_node.agent_command())
        coordination = client.CoordinationV1Api(client.ApiClient())

        def renewed() -> bool:
            if agent.poll() is not None:
                raise DemoError(
                    f"the node agent exited; its log: {self.workdir / 'node-agent.log'}"
                )
            lease = coordination.read_namespaced_lease(
                f"breaker-node-agent-{REAL_NODE}", "breaker-system"
            )
            return lease.spec is not None and lease.spec.renew_time is not None

        _wait(renewed, "the node agent's Lease", timeout=60)
        self.say(f"node agent running on {REAL_NODE} (log {self.workdir / 'node-agent.log'})")

    def _process(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("wb")
        process = subprocess.Popen(
            command, env=self.cluster.env(), stdout=log, stderr=subprocess.STDOUT
        )
        self.processes.append(process)
        self.named[name] = process
        return process

    def fleet(self) -> None:
        for namespace, body in FLEET:
            self._create(namespace, body)
        for namespace, body in FLEET:
            self._until_state(namespace, body["metadata"]["name"], "Running")
        # The agent's job, on the real node: its schedule counts from the replay's start.
        self.epoch = time.time() + LEAD_SECONDS
        pod_cidr = self.cluster.real_node.settings().pod_cidr
        scan = f"{pod_cidr.network_address}/28"  # its own node's pods: nothing else is touched
        play = packets.play(
            tunnel_at=TUNNEL_AT,
            pool_at=POOL_AT,
            dns_at=TUNNEL_AT,
            scan=scan,
            scan_at=SCAN_AT,
            epoch=self.epoch,
        )
        agent = packets.pod_template(AGENT, play, grace=10)
        self._create(TENANT, _trainingjob(AGENT, 1, 1, agent))
        self._until_state(TENANT, AGENT, "Running")
        # The queued job may run anywhere, the real node included (it tolerates its taint).
        queued = packets.pod_template("finetune", ["/agent", "idle"], grace=2)
        del queued["spec"]["nodeSelector"]
        self._create(WAITING, _trainingjob("finetune", 1, 5, queued))
        self._until_state(WAITING, "finetune", "Queued")
        self.say(
            f"fleet: 40 of 40 GPUs busy ({TENANT}/{AGENT} on {REAL_NODE}, {OTHERS}'s jobs on "
            f"the kwok nodes); {WAITING}/finetune (8 GPUs, priority 5) queued"
        )
        self.agent_pod = _wait(lambda: self._pod(TENANT, AGENT), "the agent's pod")
        # A policy written for the job's convenience by its tenant: open to the world.
        self._kubectl_apply(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": "allow-all-egress", "namespace": TENANT},
                "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]},
            }
        )
        self.say(
            f"{TENANT} also has a NetworkPolicy allowing all egress: "
            f"{self._egress_summary(self.agent_pod)}"
        )

    # -- the incident ---------------------------------------------------------------------

    def replay(self) -> float:
        """Start the simulator at the replay's start; the agent's pod keeps the same clock."""
        others = [p for ns, body in FLEET for p in self._pods(ns, body["metadata"]["name"])]
        agent = self.agent_pod
        scenario = {
            "name": "demo-rome",
            "duration": "30m",
            "interval": "1s",
            "pods": [
                {
                    "namespace": TENANT,
                    "name": agent.metadata.name,
                    "node": agent.spec.node_name,
                    "timeline": [{"at": "0s", "do": "train-mixed"}, *(s for _, _, s in REPLAY)],
                },
                *(
                    {
                        "namespace": p.metadata.namespace,
                        "name": p.metadata.name,
                        "node": p.spec.node_name,
                        "timeline": [
                            {"at": "0s", "do": "train-mixed"},
                            {"at": "0s", "do": "checkpoint-upload"},
                        ],
                    }
                    for p in others
                ),
            ],
        }
        path = self.workdir / "rome.yaml"
        path.write_text(json.dumps(scenario))
        time.sleep(max(0.0, self.epoch - time.time()))
        self._process(
            "simulator",
            [
                sys.executable,
                "-m",
                "breaker.cli",
                "sim",
                str(path),
                f"--port={_free_port()}",
                "--register",
            ],
        )
        started = time.monotonic() - (time.time() - self.epoch)
        self.say(
            f"replaying the ROME sequence on {TENANT}/{AGENT} (its pod on {REAL_NODE} sends "
            "real packets); the other jobs train normally"
        )
        for at, what, _ in REPLAY:
            self.say(f"  scheduled at +{at:>2}s: {what}")
        return started

    def watch(self) -> dict[str, Any]:
        """The Breaker once containment is recorded as finished (its Contained condition left
        InProgress); what the agent's pod reaches then; the queued job running on the GPUs
        it was handed, once the handoff is recorded."""

        def settled() -> dict[str, Any] | None:
            breaker = self._breaker()
            status = breaker.get("status") or {}
            found = containment.read(status)
            if status.get("state") not in containment.CONTAINED_STATES or not found.settled:
                return None
            if found.reason == containment.ACTIONS_FAILED:
                failures[:] = [found.message]
                return None  # the operator retries; the timeout says what failed
            return breaker

        failures: list[str] = []
        try:
            breaker = _wait(settled, "the breaker to trip and contain the agent", timeout=180)
        except DemoError as error:
            raise DemoError("; ".join([str(error), *failures])) from None
        # At once, while the agent's pod (ignoring SIGTERM) lives out its grace period.
        self.reached = packets.reach(self.cluster.real_node, self.agent_pod.status.pod_ip)

        def handed() -> dict[str, Any] | None:
            latest = self._breaker()
            handoff = containment.read(latest.get("status")).of("reassignGPUs")
            detail = handoff.detail if handoff is not None else None
            if isinstance(detail, containment.GPUsReassigned) and detail.to:
                return latest
            return None

        breaker = _wait(handed, f"the GPUs handed to {WAITING}/finetune", timeout=90)
        _wait(lambda: self._running_on(WAITING, "finetune"), "the queued job to run", 90)
        return breaker

    def timeline(self, breaker: dict[str, Any], started: float) -> None:
        """What the operator recorded, what the packets showed, what the cluster shows."""
        origin = dt.datetime.fromtimestamp(self.epoch, dt.UTC)
        status = breaker["status"]
        print("\nTimeline (from the start of the replay):")
        print("\n".join(timeline_lines(status, origin)))
        tripped = dt.datetime.fromisoformat(status["lastTrip"].replace("Z", "+00:00"))
        report = self.cluster.real_node.outside()
        print("What the packets showed (the outside hosts' record; the pod probed from inside):")
        lines = packet_lines(
            report, self.agent_pod.status.pod_ip, tripped.timestamp(), origin, self.reached
        )
        print("\n".join(lines))
        found = containment.read(status)
        self.quarantine = [
            a.detail.quarantine_policy
            for a in found.actions
            if isinstance(a.detail, containment.EgressRevoked)
        ]
        agent = self._trainingjob(TENANT, AGENT)
        print(
            f"  now: {TENANT}/{AGENT} {agent.get('state')}; {WAITING}/finetune Running on "
            f"{self._running_on(WAITING, 'finetune')}"
        )
        summary = self._egress_summary(self.agent_pod, quarantined=True)
        print(f"  the agent's pod, quarantined, by every NetworkPolicy of {TENANT}: {summary}")

    def reset(self) -> None:
        print()
        self.say(
            f"kubectl annotate breaker -n {TENANT} {BREAKER} "
            "breaker.dev/reset=$(date +%s) --overwrite"
        )
        asked = time.monotonic()
        token = str(int(time.time()))
        self._kubectl(
            "annotate",
            "breaker",
            "-n",
            TENANT,
            BREAKER,
            f"breaker.dev/reset={token}",
            "--overwrite",
        )

        def undone() -> bool:
            status = self._breaker().get("status") or {}
            return status.get("handledReset") == reset_token(
                {"metadata": {"annotations": {RESET_ANNOTATION: token}}}
            ) and (containment.read(status).reason == containment.NOT_TRIPPED)

        _wait(undone, "the reset to undo every action", 60)
        took = time.monotonic() - asked
        nodes = _wait(lambda: self._running_on(TENANT, AGENT), f"{AGENT} to run again", 120)
        _wait(lambda: self._state(WAITING, "finetune") == "Queued", "finetune to queue again", 60)
        pod = _wait(lambda: self._pod(TENANT, AGENT), "the agent's new pod")
        node = self.cluster.real_node
        _wait(
            lambda: packets.flowing(node.outside(), pod.status.pod_ip),
            "the agent's new pod to reach the outside again",
            60,
        )
        policies = _names(self.net.list_namespaced_network_policy(TENANT))
        quotas = _names(self.core.list_namespaced_resource_quota(TENANT))
        left = [n for n in policies if n in self.quarantine] + [
            n for n in quotas if n == CLAMP_QUOTA_NAME
        ]
        _wait(lambda: not node.cut_rules(), "the node agent to lift its drops", 30)
        if left:
            raise DemoError(f"the reset left {', '.join(left)} behind")
        self.say(f"reset done: breaker {BREAKER} Closed, every action undone ({took:.1f} s)")
        print(f"  {TENANT}/{AGENT} Running again on {nodes}")
        print(f"  {WAITING}/finetune Queued again (the GPUs went back to {AGENT})")
        print(f"  NetworkPolicies of {TENANT}: {', '.join(sorted(policies))} (quarantine removed)")
        print(f"  ResourceQuotas of {TENANT}: {', '.join(quotas) or 'none'} (GPU clamp removed)")
        print(f"  drops the node agent placed on {REAL_NODE}: none left")
        print(
            f"  the agent's new pod reaches the outside again: tunnel and pool carrying bytes "
            f"({self._egress_summary(pod)})"
        )

    # -- helpers --------------------------------------------------------------------------

    def show(self) -> None:
        print()
        result = subprocess.run(
            ["kubectl", "get", "trainingjobs,breakers", "-A"],
            env=self.cluster.env(),
            capture_output=True,
            text=True,
        )
        print(result.stdout.rstrip() or result.stderr.rstrip(), flush=True)

    def _create(self, namespace: str, body: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "trainingjobs", body)

    def _breaker(self) -> dict[str, Any]:
        try:
            found: dict[str, Any] = self.custom.get_namespaced_custom_object(  # type: ignore[assignment]
                GROUP, VERSION, TENANT, "breakers", BREAKER
            )
        except client.ApiException as error:
            if error.status == 404:
                return {}
            raise
        return found

    def _trainingjob(self, namespace: str, name: str) -> dict[str, Any]:
        """A TrainingJob's status."""
        body: dict[str, Any] = self.custom.get_namespaced_custom_object(  # type: ignore[assignment]
            GROUP, VERSION, namespace, "trainingjobs", name
        )
        status: dict[str, Any] = body.get("status") or {}
        return status

    def _running_on(self, namespace: str, name: str) -> str | None:
        """The nodes a TrainingJob runs on, once it runs."""
        status = self._trainingjob(namespace, name)
        nodes: str | None = status.get("nodeList")
        return nodes if status.get("state") == "Running" and nodes else None

    def _state(self, namespace: str, name: str) -> str | None:
        state: str | None = self._trainingjob(namespace, name).get("state")
        return state

    def _until_state(self, namespace: str, name: str, state: str) -> None:
        _wait(lambda: self._state(namespace, name) == state, f"{namespace}/{name} {state}", 90)

    def _pods(self, namespace: str, tj: str) -> list[Any]:
        listed = self.core.list_namespaced_pod(
            namespace, label_selector=f"breaker.dev/trainingjob={tj}"
        )
        return [
            p
            for p in listed.items
            if p.status is not None
            and p.status.phase == "Running"
            and p.status.pod_ip
            and p.metadata is not None
            and not p.metadata.deletion_timestamp
        ]

    def _pod(self, namespace: str, tj: str) -> Any:
        found = self._pods(namespace, tj)
        return found[0] if found else None

    def _egress_summary(self, pod: Any, quarantined: bool = False) -> str:
        """What the effective-egress function says of the pod, over every policy."""
        policies = [
            client.ApiClient().sanitize_for_serialization(p)  # type: ignore[no-untyped-call]
            for p in self.net.list_namespaced_network_policy(TENANT).items
        ]
        labels = dict(pod.metadata.labels or {})
        if quarantined:
            labels["breaker.dev/quarantined"] = BREAKER
        egress = effective_egress(labels, policies)
        said = []
        for name in ("pool", "ssh"):
            target: Destination = packets.DESTINATIONS[name]
            verdict = "REACHABLE" if egress.allows(target, TENANT) else "blocked"
            said.append(f"{name} {target.ip}:{target.port} {verdict}")
        return ", ".join(said)

    def _kubectl(self, *args: str) -> None:
        result = subprocess.run(
            ["kubectl", *args], env=self.cluster.env(), capture_output=True, text=True
        )
        if result.returncode != 0:
            raise DemoError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")

    def _kubectl_apply(self, manifest: dict[str, Any]) -> None:
        result = subprocess.run(
            ["kubectl", "apply", "-f", "-"],
            input=json.dumps(manifest),
            env=self.cluster.env(),
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise DemoError(f"kubectl apply: {result.stderr.strip()}")

    def cleanup(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
        if self.started_cluster:
            if self.cluster_up:
                self.cluster.down()
            else:
                self.say(
                    f"the cluster did not start; its logs are in {self.cluster.directory}/logs"
                )
            return
        with contextlib.suppress(client.ApiException):
            self._real_node_gpus(None)
        for namespace in (TENANT, OTHERS, WAITING):
            with contextlib.suppress(client.ApiException):
                self.core.delete_namespace(namespace)
        with contextlib.suppress(client.ApiException):
            self.custom.delete_cluster_custom_object(
                GROUP, VERSION, "clusterbreakerpolicies", "demo"
            )
        self.say(
            "cleaned up the demo's namespaces and policy "
            "(the local cluster was already up: it stays)"
        )


def _names(listed: Any) -> list[str]:
    """The names in a list the API returned."""
    return [str(item.metadata.name) for item in listed.items]


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(keep: bool) -> int:
    demo = Demo(keep)
    ok = False
    with _signals_interrupt():
        try:
            demo.up()
            demo.fleet()
            demo.show()
            started = demo.replay()
            breaker = demo.watch()
            demo.timeline(breaker, started)
            demo.show()
            demo.reset()
            demo.show()
            ok = True
        except (DemoError, KeyboardInterrupt) as error:
            print(f"\ndemo stopped: {error or 'interrupted'}", file=sys.stderr)
        finally:
            if not (keep and ok):
                demo.cleanup()
    if ok and keep:
        for name, process in demo.named.items():
            demo.cluster.process(f"demo-{name}").adopt(process.pid)
        print(
            "\n--keep: everything is still running.\n"
            f"  export KUBECONFIG={demo.cluster.kubeconfig}\n"
            f"  export PATH={demo.cluster.bin_dir}:$PATH\n"
            "  kubectl get trainingjobs,breakers -A\n"
            f"  logs: {demo.workdir}\n"
            "  stop it all, the operator, node agent and simulator with the cluster: "
            "make cluster-down"
        )
    return 0 if ok else 1
