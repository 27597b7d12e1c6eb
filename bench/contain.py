"""Benchmark: time to contain with many guarded jobs, on a local cluster of its own.

Brings up a second local cluster (its own state directory and ports, so a running dev
cluster is left alone) with enough kwok GPU nodes for the fleet, starts the operator and
the simulator, and guards N one-GPU jobs: N - A batch/v1 Jobs and A TrainingJobs, with A
more TrainingJobs of another tenant queued for lack of GPUs. The simulator trains on every
pod and, one after another, turns each of the A TrainingJobs to mining.

Time to contain is what the operator records on each Breaker (``timeToContainSeconds``):
from the evaluation that sees the trip to egress revoked, the job suspended and its GPUs
handed to the queued job (the queue has admitted it). Also reported: from the trip
(``lastTrip``) to the queued job's pods Running, as seen from outside. Figures, not
assertions: the machine is shared.

    .venv/bin/python bench/contain.py [--jobs 1000] [--attacks 30]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "contain.json"
GROUP, VERSION = "breaker.dev", "v1alpha1"
FLEET_NS = [f"fleet-{i}" for i in range(10)]
TENANT, WAITING = "agents", "waiting"
ATTACK_START, ATTACK_GAP = 45, 6  # seconds into the scenario; one attack every ATTACK_GAP


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def wait(probe: Any, what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            found = probe()
            if found:
                return found
        time.sleep(2.0)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000, help="guarded jobs (default 1000)")
    parser.add_argument("--attacks", type=int, default=30, help="jobs turned to mining")
    parser.add_argument("--keep", action="store_true", help="leave the bench cluster up")
    args = parser.parse_args()
    # Stopped from outside (SIGTERM), still take the bench cluster down.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))

    work = Path(tempfile.mkdtemp(prefix="breaker-bench-"))
    os.environ["BREAKER_CLUSTER_DIR"] = str(work / "cluster")
    os.environ.setdefault("BREAKER_CLUSTER_PORT_OFFSET", "4000")

    from kubernetes import client, config

    from breaker.localcluster import LocalCluster
    from breaker.localcluster.cluster import GpuNodes
    from breaker.localcluster.paths import repo_root

    gpus = args.jobs + args.attacks  # the fleet fills every GPU; the queued jobs wait
    nodes = (args.jobs + 7) // 8
    cluster = LocalCluster(nodes=GpuNodes(count=nodes, gpus=8))
    print(
        f"bench cluster: {nodes} kwok nodes x 8 GPUs, {args.jobs} guarded jobs, "
        f"{args.attacks} attacks, {args.attacks} queued ({gpus} GPUs asked)",
        flush=True,
    )
    started = time.monotonic()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        cluster.up()
        env = cluster.env()
        config.load_kube_config(str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
        api = client.ApiClient()
        core, custom, batch = (
            client.CoreV1Api(api),
            client.CustomObjectsApi(api),
            client.BatchV1Api(api),
        )
        subprocess.run(
            ["kubectl", "apply", "--server-side", "-f", str(repo_root() / "crds")],
            env=env,
            check=True,
            capture_output=True,
        )
        subprocess.run(
            ["kubectl", "wait", "--for=condition=Established", "crd", "--all"],
            env=env,
            check=True,
            capture_output=True,
        )
        for namespace in (*FLEET_NS, TENANT, WAITING):
            core.create_namespace({"metadata": {"name": namespace, "labels": {"bench": "guarded"}}})
        wait(
            lambda: all(
                core.read_namespaced_service_account("default", ns)
                for ns in (*FLEET_NS, TENANT, WAITING)
            ),
            "service accounts",
            120,
        )

        metrics_port = free_port()
        log = (work / "operator.log").open("wb")
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "breaker.cli",
                    "run",
                    "--liveness",
                    f"http://127.0.0.1:{free_port()}/healthz",
                    "--prometheus-url",
                    cluster.prometheus_url,
                    "--metrics-port",
                    str(metrics_port),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        operator_pid = processes[-1].pid

        policy = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ClusterBreakerPolicy",
            "metadata": {"name": "bench"},
            "spec": {
                "mode": "Enforce",
                "targets": {
                    "kinds": ["TrainingJob", "Job"],
                    "namespaceSelector": {"matchLabels": {"bench": "guarded"}},
                },
                "signals": [
                    {
                        "name": "pool",
                        "preset": "mining-pool-egress",
                        "params": {"window": "20s"},
                        "severity": "critical",
                    }
                ],
                "prometheus": {"interval": "2s", "timeout": "5s"},
            },
        }
        custom.create_cluster_custom_object(GROUP, VERSION, "clusterbreakerpolicies", policy)

        t = time.monotonic()
        job_template = {
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "trainer",
                        "image": "trainer:1",
                        "resources": {"limits": {"nvidia.com/gpu": "1"}},
                    }
                ],
            }
        }
        bulk = args.jobs - args.attacks
        for i in range(bulk):
            batch.create_namespaced_job(
                FLEET_NS[i % len(FLEET_NS)],
                {
                    "metadata": {"name": f"job-{i}"},
                    "spec": {"parallelism": 1, "completions": 1, "template": job_template},
                },
            )
        for i in range(args.attacks):
            custom.create_namespaced_custom_object(
                GROUP,
                VERSION,
                TENANT,
                "trainingjobs",
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "TrainingJob",
                    "metadata": {"name": f"agent-{i}"},
                    "spec": {
                        "replicas": 1,
                        "gpusPerReplica": 1,
                        "priority": 1,
                        "template": {"spec": {"containers": [{"name": "t", "image": "t:1"}]}},
                    },
                },
            )

        def running_pods() -> list[Any]:
            pods = core.list_pod_for_all_namespaces(
                label_selector="", field_selector="status.phase=Running"
            )
            return [p for p in pods.items if p.metadata.namespace in (*FLEET_NS, TENANT)]

        pods = wait(
            lambda: (p := running_pods()) and len(p) >= args.jobs and p,
            f"{args.jobs} pods running",
            1800,
        )
        print(f"fleet running after {time.monotonic() - t:.0f}s", flush=True)
        for i in range(args.attacks):
            custom.create_namespaced_custom_object(
                GROUP,
                VERSION,
                WAITING,
                "trainingjobs",
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "TrainingJob",
                    "metadata": {"name": f"queued-{i}"},
                    "spec": {
                        "replicas": 1,
                        "gpusPerReplica": 1,
                        "priority": 5,
                        "template": {"spec": {"containers": [{"name": "t", "image": "t:1"}]}},
                    },
                },
            )
        breakers = wait(
            lambda: (
                (b := custom.list_cluster_custom_object(GROUP, VERSION, "breakers"))
                and len(b["items"]) >= args.jobs + args.attacks
                and b
            ),
            "breakers",
            600,
        )
        print(f"{len(breakers['items'])} breakers guarding", flush=True)

        attacked = sorted(
            (p for p in pods if p.metadata.namespace == TENANT), key=lambda p: p.metadata.name
        )
        scenario = {
            "name": "bench-contain",
            "duration": "60m",
            "interval": "5s",
            "pods": [
                {
                    "namespace": p.metadata.namespace,
                    "name": p.metadata.name,
                    "gpus": 1,
                    "node": p.spec.node_name,
                    "stepCounter": False,
                    "timeline": [{"at": "0s", "do": "train-mixed"}],
                }
                for p in pods
                if p.metadata.namespace != TENANT
            ]
            + [
                {
                    "namespace": TENANT,
                    "name": p.metadata.name,
                    "gpus": 1,
                    "node": p.spec.node_name,
                    "stepCounter": False,
                    "timeline": [
                        {"at": "0s", "do": "train-mixed"},
                        {"at": f"{ATTACK_START + i * ATTACK_GAP}s", "do": "miner-pool-egress"},
                    ],
                }
                for i, p in enumerate(attacked)
            ],
        }
        (work / "scenario.yaml").write_text(json.dumps(scenario))
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "breaker.cli",
                    "sim",
                    str(work / "scenario.yaml"),
                    "--port",
                    str(free_port()),
                    "--register",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
        )
        print(
            f"simulator: {len(scenario['pods'])} pods; attacks from +{ATTACK_START}s, "
            f"one every {ATTACK_GAP}s",
            flush=True,
        )

        def contained() -> list[dict[str, Any]] | None:
            found = custom.list_namespaced_custom_object(GROUP, VERSION, TENANT, "breakers")[
                "items"
            ]
            done = [b for b in found if (b.get("status") or {}).get("timeToContainSeconds")]
            return found if len(done) >= args.attacks else None

        budget = ATTACK_START + args.attacks * ATTACK_GAP + 180
        final = wait(contained, f"{args.attacks} breakers to contain", budget)
        ttc = [b["status"]["timeToContainSeconds"] for b in final]
        handed = [
            a["changed"].get("to")
            for b in final
            for a in b["status"]["actions"]
            if a["type"] == "reassignGPUs"
        ]
        running_queued = wait(
            lambda: (
                sum(
                    1
                    for t in custom.list_namespaced_custom_object(
                        GROUP, VERSION, WAITING, "trainingjobs"
                    )["items"]
                    if (t.get("status") or {}).get("state") == "Running"
                )
                >= args.attacks
            ),
            "every queued job running",
            120,
        )
        rss = _rss_mb(operator_pid)
        result = {
            "jobs": args.jobs,
            "breakers": len(breakers["items"]),
            "attacks": args.attacks,
            "ttc_p50_s": round(statistics.median(ttc), 3),
            "ttc_p99_s": round(percentile(ttc, 0.99), 3),
            "ttc_max_s": round(max(ttc), 3),
            "handed_to_queued": sum(1 for h in handed if h),
            "queued_running": bool(running_queued),
            "operator_rss_mb": rss,
            "wall_s": round(time.monotonic() - started, 1),
            "measured": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        print(f"wrote {RESULTS}")
        return 0
    finally:
        for process in reversed(processes):
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT if process.args[3] == "sim" else signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
        if not args.keep:
            cluster.down()
            shutil.rmtree(work, ignore_errors=True)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


if __name__ == "__main__":
    sys.exit(main())
