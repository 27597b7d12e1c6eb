"""`breaker demo`: the ROME incident replayed on the local cluster, contained, and undone.

It brings up (or reuses) the local control plane and Prometheus, starts the operator and
the simulator as processes of their own, applies the demo policy and a fleet of
TrainingJobs that fills the GPUs with one more queued, replays the incident's sequence on
one job (probe, reverse tunnel, mining), prints what happened when, resets the breaker and
shows everything restored. It cleans up after itself unless ``--keep`` is given.
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
from breaker.actions.quota import CLAMP_QUOTA_NAME
from breaker.api import containment
from breaker.circuit.plan import RESET_ANNOTATION, reset_token
from breaker.localcluster import LocalCluster
from breaker.localcluster.paths import repo_root

T = TypeVar("T")
GROUP, VERSION = "breaker.dev", "v1alpha1"
TENANT, OTHERS, WAITING = "rome-lab", "team-b", "team-c"
AGENT = "rl-agent"
BREAKER = f"{AGENT}-demo"
REPLAY = [  # the incident's order, compressed from an hour into half a minute
    (5, "probe", {"at": "5s", "until": "25s", "do": "internal-scan-slow"}),
    (12, "reverse SSH tunnel", {"at": "12s", "do": "reverse-ssh-tunnel"}),
    (30, "mining", {"at": "30s", "do": "mine-while-training"}),
    (30, "mining-pool egress", {"at": "30s", "do": "miner-pool-egress"}),
]


class DemoError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait(probe: Callable[[], T | None], what: str, timeout: float = 90.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(client.ApiException, OSError):
            found = probe()
            if found:
                return found
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def _trainingjob(name: str, replicas: int, priority: int = 0) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "gpusPerReplica": 8,
            "priority": priority,
            "template": {"spec": {"containers": [{"name": "trainer", "image": "trainer:1"}]}},
        },
    }


FLEET = [
    (TENANT, _trainingjob(AGENT, 2, priority=1)),
    (OTHERS, _trainingjob("pretrain", 1, priority=1)),
    (OTHERS, _trainingjob("eval", 1, priority=1)),
]
QUEUED = (WAITING, _trainingjob("finetune", 2, priority=5))


def timeline_lines(status: dict[str, Any], origin: dt.datetime) -> list[str]:
    """The demo's timeline from a Breaker's status once containment is settled, each line
    a fact the operator recorded, timed from ``origin`` (the start of the replay)."""
    found = containment.read(status)
    if not found.settled or not found.contained:
        raise DemoError(f"containment is not done: {found.reason}: {found.message}")
    if found.seconds is None:
        raise DemoError("the breaker says Contained but records no timeToContainSeconds")

    def at(stamp: str) -> str:
        moment = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        return f"+{(moment - origin).total_seconds():5.1f}s"

    evidence = status["evidence"][-1]
    lines = [f"  +{offset:5.1f}s  the agent starts: {what}" for offset, what, _ in REPLAY]
    fired = ", ".join(f"{s['name']}={s['value']:.3g}" for s in evidence["signals"])
    tripped = at(status["lastTrip"])
    lines.append(f"  {tripped}  signal seen: {fired} (rule {evidence['rule']})")
    lines.append(f"  {tripped}  breaker {BREAKER} {status['state']}")
    pods = len(evidence.get("pods") or [])
    signals = len(evidence["signals"])
    lines.append(f"  {at(evidence['time'])}  evidence captured: {signals} signals, {pods} pods")
    for action in found.actions:
        lines.append(f"  {at(action.at)}  {containment.describe(action, TENANT)}")
    lines.append(f"  time to contain (evaluation to last action): {found.seconds:.3f} s")
    return lines


class Demo:
    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.cluster = LocalCluster()
        self.started_cluster = False
        self.processes: list[subprocess.Popen[bytes]] = []
        self.workdir = Path(tempfile.mkdtemp(prefix="breaker-demo-"))
        self.t0 = time.monotonic()
        self.t0_wall = dt.datetime.now(dt.UTC)
        self.agent_pods: list[Any] = []
        self.quarantine: list[str] = []  # the quarantine policy, as the breaker recorded it

    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {message}", flush=True)

    # -- set-up ---------------------------------------------------------------------------

    def up(self) -> None:
        self.started_cluster = not self.cluster.healthy()
        self.say(
            "local control plane and Prometheus"
            + (" (starting)" if self.started_cluster else " (already up)")
        )
        self.cluster.up()
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
        self._start_operator()
        for namespace in (TENANT, OTHERS, WAITING):
            self._kubectl_apply(
                {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {"name": namespace, "labels": {"breaker.dev/demo": "guarded"}},
                }
            )
        _wait(
            lambda: all(
                self.core.read_namespaced_service_account("default", ns)
                for ns in (TENANT, OTHERS, WAITING)
            ),
            "the demo namespaces",
        )
        self._kubectl("apply", "-f", str(repo_root() / "examples" / "policies" / "demo.yaml"))
        self.say(
            "applied examples/policies/demo.yaml "
            "(Enforce; the default policy's presets with short windows)"
        )

    def _clear_previous_run(self) -> None:
        """A run left behind (--keep, or killed): start from a clean slate."""
        left = [
            ns["metadata"]["name"]
            for ns in client.ApiClient().sanitize_for_serialization(  # type: ignore[no-untyped-call]
                self.core.list_namespace(label_selector="breaker.dev/demo")
            )["items"]
        ]
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
        log = (self.workdir / "operator.log").open("wb")
        self.operator = subprocess.Popen(
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
            env=self.cluster.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes.append(self.operator)
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"

        def live() -> bool:
            if self.operator.poll() is not None:
                raise DemoError(f"the operator exited; its log: {self.workdir / 'operator.log'}")
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                return bool(r.status == 200)

        _wait(live, "the operator to start", timeout=60)
        self.say(
            f"operator running (log {self.workdir / 'operator.log'}, metrics {self.metrics_url})"
        )

    def fleet(self) -> list[Any]:
        for namespace, body in FLEET:
            self.custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, "trainingjobs", body
            )
        for namespace, body in FLEET:
            self._until_state(namespace, body["metadata"]["name"], "Running")
        self.custom.create_namespaced_custom_object(
            GROUP, VERSION, QUEUED[0], "trainingjobs", QUEUED[1]
        )
        self._until_state(QUEUED[0], QUEUED[1]["metadata"]["name"], "Queued")
        self.say("fleet: 32 of 32 GPUs busy; team-c/finetune (16 GPUs, priority 5) queued")
        pods = _wait(lambda: self._pods(TENANT, AGENT, 2), "the agent's pods")
        # A policy written for the job's convenience by its tenant: open to the world.
        self._kubectl_apply(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": "allow-all-egress", "namespace": TENANT},
                "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]},
            }
        )
        self.agent_pods = pods
        self.say(
            f"{TENANT} also has a NetworkPolicy allowing all egress: {self._egress_summary(pods)}"
        )
        return pods

    # -- the incident ---------------------------------------------------------------------

    def replay(self, pods: list[Any]) -> float:
        others = [
            p for ns, body in FLEET[1:] for p in self._pods(ns, body["metadata"]["name"], 1) or []
        ]
        scenario = {
            "name": "demo-rome",
            "duration": "30m",
            "interval": "1s",
            "pods": [
                *(
                    {
                        "namespace": TENANT,
                        "name": p.metadata.name,
                        "node": p.spec.node_name,
                        "timeline": [{"at": "0s", "do": "train-mixed"}, *(s for _, _, s in REPLAY)],
                    }
                    for p in pods
                ),
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
        self.processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "breaker.cli",
                    "sim",
                    str(path),
                    "--port",
                    str(_free_port()),
                    "--register",
                ],
                env=self.cluster.env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
        )
        started = time.monotonic()
        self.say(f"replaying the ROME sequence on {TENANT}/{AGENT}; the other jobs train normally")
        for at, what, _ in REPLAY:
            self.say(f"  scheduled at +{at:>2}s: {what}")
        return started

    def watch(self) -> dict[str, Any]:
        """The Breaker once containment is recorded as finished (its Contained condition
        left InProgress), and the queued job running on the GPUs it was handed."""

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
        _wait(lambda: self._running_on(WAITING, "finetune"), "the queued job to run", 60)
        return breaker

    def timeline(self, breaker: dict[str, Any], started: float) -> None:
        """What the operator recorded, and nothing else: the evidence, every action's
        outcome, the time to contain; then what the cluster shows of it."""
        origin = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=time.monotonic() - started)
        print("\nTimeline (from the start of the replay):")
        print("\n".join(timeline_lines(breaker["status"], origin)))
        found = containment.read(breaker["status"])
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
        summary = self._egress_summary(self.agent_pods, quarantined=True)
        print(f"  the agent's pods, quarantined, by every NetworkPolicy of {TENANT}: {summary}")

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
        nodes = _wait(lambda: self._running_on(TENANT, AGENT), f"{AGENT} to run again", 90)
        _wait(lambda: self._state(WAITING, "finetune") == "Queued", "finetune to queue again", 60)
        policies = [
            p["metadata"]["name"] for p in self._items(self.net.list_namespaced_network_policy)
        ]
        quotas = [
            q["metadata"]["name"] for q in self._items(self.core.list_namespaced_resource_quota)
        ]
        pods = _wait(lambda: self._pods(TENANT, AGENT, 2), "the agent's pods again")
        left = [n for n in policies if n in self.quarantine] + [
            n for n in quotas if n == CLAMP_QUOTA_NAME
        ]
        if left:
            raise DemoError(f"the reset left {', '.join(left)} behind")
        self.say(f"reset done: breaker {BREAKER} Closed, every action undone ({took:.1f} s)")
        print(f"  {TENANT}/{AGENT} Running again on {nodes}")
        print(f"  {WAITING}/finetune Queued again (the GPUs went back to {AGENT})")
        print(f"  NetworkPolicies of {TENANT}: {', '.join(sorted(policies))} (quarantine removed)")
        print(f"  ResourceQuotas of {TENANT}: {', '.join(quotas) or 'none'} (GPU clamp removed)")
        print(
            f"  the agent's pods, by every NetworkPolicy of {TENANT}: {self._egress_summary(pods)}"
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

    def _pods(self, namespace: str, tj: str, count: int) -> list[Any] | None:
        listed = self.core.list_namespaced_pod(
            namespace, label_selector=f"breaker.dev/trainingjob={tj}"
        )
        pods = [
            p
            for p in listed.items
            if p.status is not None
            and p.status.phase == "Running"
            and p.metadata is not None
            and not p.metadata.deletion_timestamp
        ]
        return pods if len(pods) >= count and pods else None

    def _egress_summary(self, pods: list[Any], quarantined: bool = False) -> str:
        """What the effective-egress function says of the first pod, over every policy."""
        policies = self._items(self.net.list_namespaced_network_policy)
        labels = dict(pods[0].metadata.labels or {})
        if quarantined:
            labels["breaker.dev/quarantined"] = BREAKER
        egress = effective_egress(labels, policies)
        pool = egress.allows(Destination(port=3333, ip="203.0.113.7"), TENANT)
        ssh = egress.allows(Destination(port=22, ip="198.51.100.4"), TENANT)
        return (
            f"mining pool 203.0.113.7:3333 {'REACHABLE' if pool else 'blocked'}, "
            f"ssh 198.51.100.4:22 {'REACHABLE' if ssh else 'blocked'}"
        )

    def _items(self, list_in_namespace: Callable[[str], Any]) -> list[dict[str, Any]]:
        """The tenant's objects of one kind, as plain dicts."""
        listed = client.ApiClient().sanitize_for_serialization(  # type: ignore[no-untyped-call]
            list_in_namespace(TENANT)
        )
        items: list[dict[str, Any]] = listed.get("items") or []
        return items

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
                process.send_signal(
                    signal.SIGINT if process is not self.operator else signal.SIGTERM
                )
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
        if self.started_cluster:
            self.cluster.down()
            return
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
            pods = demo.fleet()
            demo.show()
            started = demo.replay(pods)
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
        pids = " ".join(str(p.pid) for p in demo.processes)
        print(
            "\n--keep: everything is still running.\n"
            f"  export KUBECONFIG={demo.cluster.kubeconfig}\n"
            f"  export PATH={demo.cluster.bin_dir}:$PATH\n"
            "  kubectl get trainingjobs,breakers -A\n"
            f"  operator log: {demo.workdir / 'operator.log'}\n"
            f"  stop the operator and simulator: kill {pids}"
            "\n  then the cluster: make cluster-down"
        )
    return 0 if ok else 1
