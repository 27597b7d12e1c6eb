"""Benchmark: time to contain, detection delay, resident memory and API requests at rest,
on a local cluster of its own, for breaker or for the naive baseline.

One bench cluster (its own state directory and ports: a running dev cluster is left
alone) of kwok nodes with 64 GPUs each, grown step by step to each size in turn. At every
size the cluster's GPUs are full: N one-GPU guarded workloads (batch Jobs in ten fleet
namespaces, plus at a time-to-contain size ``--attacks`` TrainingJobs of an agent tenant),
and an unguarded filler Deployment taking the GPUs left. Time to contain is then measured
with ``--attacks`` TrainingJobs of another tenant queued for GPUs: the simulator trains on
every guarded pod and turns the agent's jobs to mining one after another.

- time to contain: from the evaluation that sees the trip to egress revoked, the workload
  suspended and its GPU handed to a queued job (the queue admitted it). breaker records it
  on each Breaker (``timeToContainSeconds``); the baseline writes when it saw the trip and
  when it had contained it, and the queue's ``admittedAt`` gives the handoff;
- detection delay (breaker): from the first bad sample the simulator exported, through the
  sample landing in Prometheus (the exporter's interval and the scrape), to the trip (the
  evaluation interval, the ``for`` window and the signal's range window);
- resident memory of the operator under test, after each size settled; at the largest
  size (breaker) the operators are restarted on the whole fleet, as after a crash or a
  standby's takeover: seconds to their first pass and their peak memory on the way;
- API requests per minute at rest, from the API server's own counters: the operator runs
  as a ServiceAccount of its own and two FlowSchemas split its requests into watches and
  everything else (``apiserver_flowcontrol_dispatched_requests_total``).

Figures, not assertions: the machine is shared. Writes ``bench/results/fleet-DESIGN.json``.

    .venv/bin/python bench/fleet.py --design breaker [--ttc-sizes 10,100,1000]
        [--rss-sizes 100,1000,10000] [--attacks 10]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime as dt
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml

import realistic
from breaker.api import containment
from breaker.constants import GROUP, VERSION
from breaker.wait import wait_for

RESULTS = Path(__file__).parent / "results"
# The API client serialises a dict body as it does its model classes, but annotates a body
# as the model: the `type: ignore[arg-type]` on the create calls below say only that.
FLEET = [f"fleet-{i}" for i in range(10)]
WAITING, FILLER = "waiting", "filler"


def agents(size: int) -> str:
    """The agent tenant's namespace at one size: a tripped breaker keeps its tenant's GPU
    quota clamped until a reset, so each size's attack comes from a namespace of its own."""
    return f"agents-{size}"


ACCOUNT = ("default", "bench-operator")
GPUS_PER_NODE = 64
REALISTIC_GPUS_PER_NODE = 8
CREATORS = 6  # the fleet's objects created this many at once
ATTACK_START, ATTACK_GAP = 30, 4  # seconds into the simulation; one attack every ATTACK_GAP
EXPORTER_INTERVAL = "5s"  # how often the simulator's series change
EVALUATION_INTERVAL = "2s"
FOR_WINDOW = "4s"
POOL_WINDOW = "20s"
DETECTED, CONTAINED = "bench.breaker.dev/detected", "bench.breaker.dev/contained"
T = TypeVar("T")

# The signals both designs evaluate: mining pool egress trips the attacks; the other two
# are there so that each tick costs what a real policy costs.
POLICY_SPEC: dict[str, Any] = {
    "mode": "Enforce",
    "targets": {
        "kinds": ["TrainingJob", "Job"],
        "namespaceSelector": {"matchLabels": {"bench": "guarded"}},
    },
    "signals": [
        {
            "name": "pool",
            "preset": "mining-pool-egress",
            "params": {"window": POOL_WINDOW},
            "for": FOR_WINDOW,
            "severity": "critical",
        },
        {"name": "mining", "preset": "gpu-mining-profile", "severity": "critical"},
        {"name": "falco", "preset": "falco-rule-hits", "severity": "critical"},
    ],
    "prometheus": {"interval": EVALUATION_INTERVAL, "timeout": "5s"},
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def json_object(found: object) -> dict[str, Any]:
    """What the CustomObjectsApi returns (annotated ``object``): a JSON object."""
    assert isinstance(found, dict), found
    return found


def pod_name(obj: Any) -> str:
    """The name of an object the API server returned (its models make every field optional)."""
    name: str | None = obj.metadata.name
    assert name is not None, obj
    return name


def trainingjob_of(pod: Any) -> str:
    """The TrainingJob a pod runs for, by its label."""
    job: str = pod.metadata.labels["breaker.dev/trainingjob"]
    return job


def answers(port: int) -> bool:
    """True once something listens on the loopback port (else the connect raises)."""
    socket.create_connection(("127.0.0.1", port), 1).close()
    return True


def wait(probe: Callable[[], T | None], what: str, timeout: float, every: float = 2.0) -> T:
    # Anything a probe of a cluster being built can raise means "not yet".
    return wait_for(probe, what, timeout, every, ignore=(Exception,))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def seconds(duration: str) -> float:
    return float(duration.rstrip("s"))


def stamp_seconds(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Bench:
    def __init__(
        self,
        design: str,
        sizes: list[int],
        attacks: int,
        work: Path,
        attacked: list[int],
        shards: int = 1,
        realistic: bool = False,
        apiserver_flags: tuple[str, ...] = (),
    ) -> None:
        from kubernetes import client, config

        from breaker_tooling.localcluster import LocalCluster
        from breaker_tooling.localcluster.nodes import GpuNodes

        self.design, self.attacks, self.work = design, attacks, work
        self.agents = [agents(size) for size in attacked]
        # Realistic: pods and nodes the size real ones are (bench/realistic.py), 8 GPUs a
        # node as on real GPU servers, so 1,250 nodes at 10,000 GPUs.
        self.realistic = realistic
        self.gpus_per_node = REALISTIC_GPUS_PER_NODE if realistic else GPUS_PER_NODE
        self.gpu_nodes = GpuNodes(count=1, gpus=self.gpus_per_node)
        self.nodes = 1  # more are added as the fleet grows
        self.cluster = LocalCluster(nodes=self.gpu_nodes)
        self.cluster.apiserver_flags = apiserver_flags
        self.processes: list[subprocess.Popen[bytes]] = []
        self.jobs = 0
        self.shards = shards
        self.measured: dict[str, int] = {}  # the operators under test, by name: their pids
        sized = ", pods and nodes of real size" if realistic else ""
        print(
            f"bench cluster ({design}): kwok nodes of {self.gpus_per_node} GPUs{sized}", flush=True
        )
        self.cluster.up()
        self.env = self.cluster.env()
        config.load_kube_config(str(self.cluster.kubeconfig))  # type: ignore[no-untyped-call]
        self.api = client.ApiClient()
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.batch = client.BatchV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.client = client

    # -- set-up ---------------------------------------------------------------------------

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            ["kubectl", *args], env=self.env, input=stdin, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def set_up(self) -> None:
        from breaker_tooling.localcluster.paths import repo_root

        self.kubectl("apply", "--server-side", "-f", str(repo_root() / "crds"))
        self.kubectl("wait", "--for=condition=Established", "crd", "--all")
        for namespace in (*FLEET, *self.agents, WAITING, FILLER):
            labels = {"bench": "guarded"} if namespace in (*FLEET, *self.agents) else {}
            self.core.create_namespace(
                {"metadata": {"name": namespace, "labels": labels}}  # type: ignore[arg-type]
            )
        namespace, account = ACCOUNT
        wait(lambda: self.core.read_namespaced_service_account("default", FILLER), "SAs", 120)
        self.kubectl("create", "serviceaccount", account, "-n", namespace)
        self.kubectl(
            "create",
            "clusterrolebinding",
            account,
            "--clusterrole=cluster-admin",
            f"--serviceaccount={namespace}:{account}",
        )
        self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(flow_schemas()))
        token = self.kubectl(
            "create", "token", account, "-n", namespace, "--duration", "12h"
        ).strip()
        config = yaml.safe_load(self.cluster.kubeconfig.read_text())
        config["users"] = [{"name": account, "user": {"token": token}}]
        for context in config["contexts"]:
            context["context"]["user"] = account
        self.operator_kubeconfig = self.work / "operator-kubeconfig"
        self.operator_kubeconfig.write_text(yaml.safe_dump(config))
        self.apps.create_namespaced_deployment(FILLER, filler_deployment(0))  # type: ignore[arg-type]

    def start(self) -> None:
        """The operator under test as the bench ServiceAccount; for the baseline, breaker
        too, as admin and without policies: only its TrainingJob queue, to hand GPUs on."""

        def breaker() -> list[str]:  # ports of its own for each operator
            return [
                sys.executable,
                "-m",
                "breaker.cli",
                "run",
                "--liveness",
                f"http://127.0.0.1:{free_port()}/healthz",
                "--prometheus-url",
                self.cluster.prometheus_url,
                "--metrics-port",
                str(free_port()),
            ]

        if self.design == "breaker":
            for name, args in operators(self.shards):
                self.spawn(name, [*breaker(), *args], KUBECONFIG=str(self.operator_kubeconfig))
                self.measured[name] = self.processes[-1].pid
            with contextlib.suppress(self.client.ApiException):  # made before a restart
                self.custom.create_cluster_custom_object(
                    GROUP,
                    VERSION,
                    "clusterbreakerpolicies",
                    {
                        "apiVersion": f"{GROUP}/{VERSION}",
                        "kind": "ClusterBreakerPolicy",
                        "metadata": {"name": "bench"},
                        "spec": POLICY_SPEC,
                    },
                )
            return
        self.spawn("queue", breaker())
        policy = self.work / "policy.yaml"
        policy.write_text(yaml.safe_dump(POLICY_SPEC))
        self.spawn(
            "naive",
            [
                sys.executable,
                "-m",
                "kopf",
                "run",
                "--standalone",
                "--all-namespaces",
                "--liveness",
                f"http://127.0.0.1:{free_port()}/healthz",
                str(Path(__file__).with_name("naive_operator.py")),
            ],
            KUBECONFIG=str(self.operator_kubeconfig),
            NAIVE_POLICY=str(policy),
            NAIVE_PROMETHEUS=self.cluster.prometheus_url,
            NAIVE_NAMESPACES=",".join((*FLEET, *self.agents)),
            NAIVE_INTERVAL=EVALUATION_INTERVAL.rstrip("s"),
        )
        self.measured["naive"] = self.processes[-1].pid

    def spawn(self, name: str, command: list[str], **env: str) -> None:
        log = (self.work / f"{name}.log").open("ab")
        self.processes.append(
            subprocess.Popen(
                command,
                env={**self.env, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=Path(__file__).parent.parent,
            )
        )

    def stop(self) -> None:
        for process in reversed(self.processes):
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        self.processes.clear()

    def memory(self) -> dict[str, Any]:
        """Resident memory of the operator under test; sharded, of the largest shard (what
        one pod's memory limit must hold), with every operator's beside it."""
        each = {name: rss_mb(pid) for name, pid in self.measured.items()}
        shards = [v for name, v in each.items() if name.startswith("shard-")]
        largest = max(shards) if shards else max(each.values())
        return {"rss_mb": largest, **({"rss_mb_by_operator": each} if len(each) > 1 else {})}

    def restart(self) -> dict[str, Any]:
        """breaker: the operators stopped and started again on the whole fleet, as after a
        crash or a standby's takeover: seconds until each one serving breakers has made its
        first pass, and each one's peak resident memory on the way (VmHWM)."""
        done = "first pass done"
        logs = {name: self.work / f"{name}.log" for name in self.measured}
        self.stop()
        before = {name: log.read_text().count(done) for name, log in logs.items()}
        self.measured.clear()
        began = time.monotonic()
        self.start()
        serving = [name for name in self.measured if name != "queue"]

        def passed() -> bool:
            return all(logs[n].read_text().count(done) > before[n] for n in serving)

        wait(passed, "the restarted operators' first pass", 3600, every=1)
        took = round(time.monotonic() - began, 1)
        peaks = {name: peak_mb(pid) for name, pid in self.measured.items()}
        time.sleep(30)
        return {
            "restart_first_pass_s": took,
            "restart_peak_rss_mb": max(peaks.values()),
            "restart_peak_rss_mb_by_operator": peaks,
            "restart_rss_mb_after_30s": self.memory()["rss_mb"],
        }

    def finish(self, result: dict[str, Any], name: str, began: float, keep: bool) -> None:
        """Stop the operators, write the result under bench/results/, and take the bench
        cluster down (unless kept)."""
        self.stop()
        result["wall_s"] = round(time.monotonic() - began, 1)
        result["measured_at"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / name
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}", flush=True)
        if not keep:
            self.cluster.down()
            shutil.rmtree(self.work, ignore_errors=True)

    # -- the fleet ------------------------------------------------------------------------

    def grow(self, guarded_jobs: int, room: int) -> None:
        """``guarded_jobs`` batch Jobs and room for ``room`` agent pods, on just enough
        nodes; the filler takes the GPUs left, so that nothing is free for queued jobs."""
        wanted = math.ceil((guarded_jobs + room) / self.gpus_per_node)

        def node(index: int) -> None:
            made = self.gpu_nodes.manifest(f"gpu-node-{index}")
            if self.realistic:
                made = real_size_node(made, self.gpus_per_node)
            self.core.create_node(made)  # type: ignore[arg-type]

        def guarded(index: int) -> None:
            made = job(index, self.realistic)
            self.batch.create_namespaced_job(FLEET[index % len(FLEET)], made)  # type: ignore[arg-type]

        began = time.monotonic()
        # A few creates at once: one at a time, each waits out the API server's round trip.
        with concurrent.futures.ThreadPoolExecutor(CREATORS) as creators:
            list(creators.map(node, range(self.nodes, wanted)))
            self.nodes = max(self.nodes, wanted)
            filler = self.nodes * self.gpus_per_node - guarded_jobs - room
            self.apps.patch_namespaced_deployment_scale(
                "filler", FILLER, {"spec": {"replicas": filler}}
            )
            list(creators.map(guarded, range(self.jobs, guarded_jobs)))
            self.jobs = max(self.jobs, guarded_jobs)
        want = guarded_jobs + filler
        wait(
            lambda: self.running(*FLEET, FILLER) >= want,
            f"{want} pods running",
            3600,
            every=10,
        )
        print(
            f"  {guarded_jobs} guarded Jobs and {filler} filler pods running "
            f"({time.monotonic() - began:.0f}s)",
            flush=True,
        )

    def running(self, *namespaces: str) -> int:
        pods = self.core.list_pod_for_all_namespaces(
            field_selector="status.phase=Running", resource_version="0"
        )
        return sum(1 for p in pods.items if p.metadata and p.metadata.namespace in namespaces)

    def settle(self, guarded: int, tenant: str | None = None) -> None:
        """breaker: a Breaker with a status for every guarded workload (the fleet's, and
        the agent tenant's at this size), then 30 s; the baseline shows nothing: 30 s."""
        began = time.monotonic()
        if self.design == "breaker":
            counted = {*FLEET, tenant}

            def guarding() -> bool:
                found = json_object(
                    self.custom.list_cluster_custom_object(
                        GROUP, VERSION, "breakers", resource_version="0"
                    )
                )["items"]
                ours = [b for b in found if b["metadata"]["namespace"] in counted]
                return sum(1 for b in ours if b.get("status")) >= guarded

            wait(guarding, f"{guarded} breakers guarding", 3600, every=10)
        time.sleep(30)
        print(f"  settled ({time.monotonic() - began:.0f}s)", flush=True)

    # -- measurements ---------------------------------------------------------------------

    def requests_at_rest(self, window: float) -> dict[str, float]:
        before = self.dispatched()
        time.sleep(window)
        after = self.dispatched()
        per_minute = {k: round((after[k] - before[k]) * 60 / window, 2) for k in after}
        return {"window_s": window, **per_minute}

    def dispatched(self) -> dict[str, float]:
        text = self.kubectl("get", "--raw", "/metrics")
        counts = {"watch": 0.0, "other": 0.0}
        pattern = re.compile(
            r'^apiserver_flowcontrol_dispatched_requests_total\{flow_schema="bench-operator-'
            r'(watch|other)",[^}]*\} ([0-9.e+]+)$',
            re.M,
        )
        for kind, value in pattern.findall(text):
            counts[kind] += float(value)
        return counts

    def attack(self, size: int) -> dict[str, Any]:
        """The agent's jobs turned to mining one by one; each contained and its GPU handed
        to a queued job of another tenant."""
        tenant = agents(size)
        for i in range(self.attacks):
            self.custom.create_namespaced_custom_object(
                GROUP, VERSION, tenant, "trainingjobs", trainingjob(f"agent-{i}", 1)
            )
        wait(lambda: self.running(tenant) >= self.attacks, "the agent's jobs running", 600)
        for i in range(self.attacks):
            self.custom.create_namespaced_custom_object(
                GROUP, VERSION, WAITING, "trainingjobs", trainingjob(f"queued-{i}", 5)
            )
        self.settle(size, tenant)
        pods = self.core.list_pod_for_all_namespaces(
            field_selector="status.phase=Running", resource_version="0"
        ).items
        fleet = [p for p in pods if p.metadata and p.metadata.namespace in FLEET]
        attackers = sorted(
            (p for p in pods if p.metadata and p.metadata.namespace == tenant), key=pod_name
        )
        scenario = {
            "name": f"bench-{size}",
            "duration": "60m",
            "interval": EXPORTER_INTERVAL,
            "pods": [sim_pod(p, []) for p in fleet]
            + [
                sim_pod(p, [{"at": f"{ATTACK_START + i * ATTACK_GAP}s", "do": "miner-pool-egress"}])
                for i, p in enumerate(attackers)
            ],
        }
        path = self.work / f"scenario-{size}.yaml"
        path.write_text(json.dumps(scenario))
        self.spawn(
            f"sim-{size}",
            [
                sys.executable,
                "-m",
                "breaker.cli",
                "sim",
                str(path),
                "--port",
                str(port := free_port()),
                "--register",
            ],
        )
        sim = self.processes[-1]
        # The simulator's clock starts just before it serves: its port answering is when.
        wait(
            lambda: answers(port),
            "sim",
            60,
            0.05,
        )
        started = time.time()
        onsets = {
            trainingjob_of(p): (pod_name(p), started + ATTACK_START + i * ATTACK_GAP)
            for i, p in enumerate(attackers)
        }
        budget = ATTACK_START + self.attacks * ATTACK_GAP + 300
        try:
            result = (
                self.contained_by_breaker(tenant, onsets, budget)
                if self.design == "breaker"
                else self.contained_by_baseline(tenant, onsets, budget)
            )
        finally:
            sim.send_signal(signal.SIGINT)
            sim.wait(timeout=30)
            self.processes.remove(sim)
        result |= self.memory()
        self.clear_attack(tenant)
        return result

    def contained_by_breaker(
        self, tenant: str, onsets: dict[str, tuple[str, float]], budget: float
    ) -> dict[str, Any]:
        def done() -> list[dict[str, Any]] | None:
            found = json_object(
                self.custom.list_namespaced_custom_object(GROUP, VERSION, tenant, "breakers")
            )["items"]
            # Contained as the status records it once every action is done (the first
            # Open holds only the actions decided).
            finished = [
                b
                for b in found
                if containment.read(b.get("status")).reason == containment.CONTAINED
            ]
            return finished if len(finished) >= self.attacks else None

        breakers = wait(done, f"{self.attacks} breakers to contain", budget)
        outcomes = [containment.read(b["status"]) for b in breakers]
        ttc = [o.seconds for o in outcomes if o.seconds is not None]
        handoffs = [o.of("reassignGPUs") for o in outcomes]
        handed = sum(
            1
            for h in handoffs
            if h is not None and isinstance(h.detail, containment.GPUsReassigned) and h.detail.to
        )
        delays = []
        for b in breakers:
            pod, onset = onsets[b["spec"]["targetRef"]["name"]]
            landed = self.first_bad_sample(tenant, pod)
            tripped = stamp_seconds(b["status"]["lastTrip"])
            if landed is None:
                continue
            delays.append({"to_prometheus_s": landed - onset, "to_trip_s": tripped - landed})
        return {
            **summary("ttc", ttc),
            "handed_to_queued": handed,
            **summary("detect", [d["to_prometheus_s"] + d["to_trip_s"] for d in delays]),
            "detection_split": {
                "exporter_and_scrape_p50_s": median([d["to_prometheus_s"] for d in delays]),
                "evaluation_for_and_window_p50_s": median([d["to_trip_s"] for d in delays]),
            },
        }

    def first_bad_sample(self, tenant: str, pod: str) -> float | None:
        """When the agent's first mining-pool flow landed in Prometheus (its scrape)."""
        import urllib.parse
        import urllib.request

        flows = f'source_namespace="{tenant}",source_pod="{pod}",port="3333"'
        query = f"hubble_flows_to_world_total{{{flows}}}[30m]"
        url = f"{self.cluster.prometheus_url}/api/v1/query?" + urllib.parse.urlencode(
            {"query": query}
        )
        with urllib.request.urlopen(url, timeout=10) as response:
            result = json.load(response)["data"]["result"]
        stamps = [float(t) for series in result for t, v in series["values"] if float(v) > 0]
        return min(stamps) if stamps else None

    def contained_by_baseline(
        self, tenant: str, onsets: dict[str, tuple[str, float]], budget: float
    ) -> dict[str, Any]:
        def done() -> list[dict[str, Any]] | None:
            found = json_object(
                self.custom.list_namespaced_custom_object(GROUP, VERSION, tenant, "trainingjobs")
            )["items"]
            marked = [t for t in found if CONTAINED in (t["metadata"].get("annotations") or {})]
            return marked if len(marked) >= self.attacks else None

        contained = wait(done, f"{self.attacks} jobs contained by the baseline", budget)

        def admitted() -> list[float] | None:
            found = json_object(
                self.custom.list_namespaced_custom_object(GROUP, VERSION, WAITING, "trainingjobs")
            )["items"]
            stamps = [
                stamp_seconds(t["status"]["admittedAt"])
                for t in found
                if (t.get("status") or {}).get("admittedAt")
            ]
            return sorted(stamps) if len(stamps) >= self.attacks else None

        handoffs = wait(admitted, "every queued job admitted", 300)
        marks = sorted(
            (
                float(t["metadata"]["annotations"][DETECTED]),
                float(t["metadata"]["annotations"][CONTAINED]),
                t["metadata"]["name"],
            )
            for t in contained
        )
        # One GPU freed per trip, one taken per queued job: the k-th to be contained
        # handed its GPU to the k-th admitted.
        ttc = [
            max(done_at, handoff) - seen
            for (seen, done_at, _), handoff in zip(marks, handoffs, strict=False)
        ]
        detect = [seen - onsets[name][1] for seen, _, name in marks]
        return {
            **summary("ttc", ttc),
            "handed_to_queued": len(handoffs),
            **summary("detect", detect),
        }

    def clear_attack(self, tenant: str) -> None:
        for namespace in (tenant, WAITING):
            self.custom.delete_collection_namespaced_custom_object(
                GROUP, VERSION, namespace, "trainingjobs"
            )
        networking = self.client.NetworkingV1Api(self.api)
        for policy in networking.list_namespaced_network_policy(tenant).items:
            try:
                networking.delete_namespaced_network_policy(pod_name(policy), tenant)
            except self.client.ApiException as error:
                if error.status != 404:  # a TrainingJob's own, collected with it meanwhile
                    raise
        wait(lambda: self.running(tenant, WAITING) == 0, "the attack's pods gone", 600)


def summary(name: str, values: list[float]) -> dict[str, Any]:
    if not values:
        return {f"{name}_p50_s": None, f"{name}_p99_s": None, f"{name}_n": 0}
    return {
        f"{name}_p50_s": round(statistics.median(values), 3),
        f"{name}_p99_s": round(percentile(values, 0.99), 3),
        f"{name}_n": len(values),
    }


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def flow_schemas() -> Iterator[dict[str, Any]]:
    namespace, account = ACCOUNT
    subject = {
        "kind": "ServiceAccount",
        "serviceAccount": {"name": account, "namespace": namespace},
    }
    for name, precedence, verbs in (("watch", 100, ["watch"]), ("other", 101, ["*"])):
        rules: dict[str, Any] = {
            "subjects": [subject],
            "resourceRules": [
                {
                    "verbs": verbs,
                    "apiGroups": ["*"],
                    "resources": ["*"],
                    "clusterScope": True,
                    "namespaces": ["*"],
                }
            ],
        }
        if name == "other":
            rules["nonResourceRules"] = [{"verbs": ["*"], "nonResourceURLs": ["*"]}]
        yield {
            "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
            "kind": "FlowSchema",
            "metadata": {"name": f"bench-operator-{name}"},
            "spec": {
                "priorityLevelConfiguration": {"name": "workload-high"},
                "matchingPrecedence": precedence,
                "distinguisherMethod": {"type": "ByUser"},
                "rules": [rules],
            },
        }


def gpu_container(name: str) -> dict[str, Any]:
    return {"name": name, "image": f"{name}:1", "resources": {"limits": {"nvidia.com/gpu": "1"}}}


def job(index: int, real_size: bool = False) -> dict[str, Any]:
    template = (
        realistic.pod_template(1)
        if real_size
        else {"spec": {"restartPolicy": "Never", "containers": [gpu_container("trainer")]}}
    )
    return {
        "metadata": {"name": f"job-{index}"},
        "spec": {"parallelism": 1, "completions": 1, "template": template},
    }


def real_size_node(kwok: dict[str, Any], gpus: int) -> dict[str, Any]:
    """A kwok node (its annotation and labels, which kwok looks for) the size of a real one:
    a real node's labels, annotations, addresses, node info and forty images."""
    name = kwok["metadata"]["name"]
    real = realistic.node(name, gpus)
    metadata = real["metadata"]
    for key in ("uid", "resourceVersion", "creationTimestamp", "managedFields"):
        metadata.pop(key)
    metadata["labels"] |= kwok["metadata"]["labels"]
    metadata["annotations"] |= kwok["metadata"]["annotations"]
    real["status"].pop("conditions")  # kwok's to report
    real["status"]["capacity"] = real["status"]["allocatable"] = kwok["status"]["capacity"]
    real["spec"].pop("taints")  # the fleet's pods carry no toleration for them
    return real


def filler_deployment(replicas: int) -> dict[str, Any]:
    labels = {"app": "filler"}
    return {
        "metadata": {"name": "filler"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [gpu_container("filler")]},
            },
        },
    }


def trainingjob(name: str, priority: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "gpusPerReplica": 1,
            "priority": priority,
            "template": {"spec": {"containers": [{"name": "t", "image": "t:1"}]}},
        },
    }


def sim_pod(pod: Any, attack: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "namespace": pod.metadata.namespace,
        "name": pod.metadata.name,
        "gpus": 1,
        "node": pod.spec.node_name,
        "stepCounter": False,
        "timeline": [{"at": "0s", "do": "train-mixed"}, *attack],
    }


def operators(shards: int) -> list[tuple[str, list[str]]]:
    """The breaker operators of a run: one serving everything, or the queue and ``shards``
    namespace shards as the chart runs them (the fleet's namespaces dealt round, the last
    shard taking every namespace the others do not name)."""
    if shards <= 1:
        return [("operator", [])]
    dealt = [[ns for i, ns in enumerate(FLEET) if i % shards == k] for k in range(shards - 1)]
    named = [ns for part in dealt for ns in part]
    found: list[tuple[str, list[str]]] = [("queue", ["--serve", "queue"])]
    for k in range(shards):
        patterns = dealt[k] if k < shards - 1 else [",".join(["*", *(f"!{n}" for n in named)])]
        args = ["--serve", "breakers", "--shard", f"s{k}"]
        found.append(
            (f"shard-{k}", args + [a for p in patterns for a in ("--shard-namespaces", p)])
        )
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--design", choices=["breaker", "baseline"], default="breaker")
    parser.add_argument("--ttc-sizes", default="10,100,1000", help="guarded jobs (comma list)")
    parser.add_argument("--rss-sizes", default="100,1000,10000", help="guarded jobs (comma list)")
    parser.add_argument("--rest-size", type=int, default=1000, help="where to count API requests")
    parser.add_argument("--rest-window", type=float, default=120.0, help="seconds counted")
    parser.add_argument("--attacks", type=int, default=10, help="jobs turned to mining per size")
    parser.add_argument("--keep", action="store_true", help="leave the bench cluster up")
    parser.add_argument(
        "--no-restart",
        action="store_true",
        help="breaker: skip restarting the operators on the largest fleet",
    )
    parser.add_argument(
        "--shards",
        type=int,
        default=1,
        help="breaker only: the breakers in this many namespace shards, and the queue apart",
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    ttc_sizes = [int(s) for s in args.ttc_sizes.split(",") if s]
    rss_sizes = [int(s) for s in args.rss_sizes.split(",") if s]
    sizes = sorted({*ttc_sizes, *rss_sizes, args.rest_size})

    work = Path(tempfile.mkdtemp(prefix=f"breaker-bench-{args.design}-"))
    os.environ["BREAKER_CLUSTER_DIR"] = str(work / "cluster")
    os.environ.setdefault("BREAKER_CLUSTER_PORT_OFFSET", "1000")
    # Fleets are kwok's: the real node (packets) is bench/cut.py's.
    os.environ.setdefault("BREAKER_CLUSTER_REAL_NODE", "0")
    began = time.monotonic()
    bench = Bench(args.design, sizes, args.attacks, work, ttc_sizes, args.shards)
    if args.shards > 1 and args.design != "breaker":
        parser.error("--shards: only the breaker design shards")
    result: dict[str, Any] = {
        "design": args.design,
        "shards": args.shards,
        "attacks_per_size": args.attacks,
    }
    from breaker_tooling.localcluster.prometheus import SCRAPE_INTERVAL

    result |= {
        "signals": len(POLICY_SPEC["signals"]),
        # The knobs between a first bad sample and a trip, as this run set them.
        "knobs": {
            "exporter_interval": EXPORTER_INTERVAL,
            "scrape_interval": SCRAPE_INTERVAL,
            "evaluation_interval": EVALUATION_INTERVAL,
            "for": FOR_WINDOW,
            "signal_window": POOL_WINDOW,
        },
        "sizes": {},
    }
    try:
        bench.set_up()
        bench.start()
        for size in sizes:
            print(f"{size} guarded jobs:", flush=True)
            row: dict[str, Any] = {}
            attacked = size in ttc_sizes
            bench.grow(size - args.attacks if attacked else size, args.attacks if attacked else 0)
            if not attacked:
                bench.settle(size)
                row |= bench.memory()
            if size == args.rest_size:
                if attacked:
                    bench.settle(size - args.attacks)
                row["api_requests_per_min_at_rest"] = bench.requests_at_rest(args.rest_window)
            if attacked:
                row |= bench.attack(size)
            if args.design == "breaker" and size == max(sizes) and not args.no_restart:
                row |= bench.restart()
            result["sizes"][str(size)] = row
            print(f"  {json.dumps(row)}", flush=True)
    finally:
        sharded = f"-{args.shards}-shards" if args.shards > 1 else ""
        bench.finish(result, f"fleet-{args.design}{sharded}.json", began, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
