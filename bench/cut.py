"""Time to cut: from a trip to the end of a reverse tunnel that was open before it.

On a local cluster of its own with the real node, the node agent and the operator (as
processes), an agent pod keeps a reverse tunnel to the outside "SSH server" (a line every
100 ms both ways) and a mining-pool session. An admin trips its breaker (ForcedOpen), the
breaker is reset, and again, ``--trips`` times in each mode:

- ``revoke-only``: a Deployment guarded by revokeEgress alone; its pod keeps running;
- ``pause``: a Job guarded by revokeEgress and pause; its pod, ignoring SIGTERM, lives out
  its grace period cut off;
- ``pause, Prometheus hung``: the same Job, its policy evaluated every second with a
  minute's query timeout, and the cluster's Prometheus stopped (SIGSTOP) from before the
  ForcedOpen until after the reset: the kill switch with every evaluation hung.

Per trip it takes, from the outside host's record and the trip's time in the Breaker's
status (one clock: the same machine): ``cut``, when the tunnel's far end received the
reset, and ``last_byte``, the last byte either way of any tunnel or pool connection of the
pod (reconnections that slipped through before the dataplane caught up included), both
from the trip; ``written``, from the admin's write of the ForcedOpen to the far end's reset
(the kill switch, end to end); and ``undone``, from the reset's write to the Breaker saying
it is not tripped. It prints p50 and p99 of each and writes ``bench/results/cut.json``.
A benchmark, never a test: the machine is shared and noisy.

    .venv/bin/python bench/cut.py [--trips 20] [--keep]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from breaker.constants import GROUP, VERSION

RESULTS = Path(__file__).parent / "results"
# The API client serialises a dict body as it does its model classes, but annotates a body
# as the model: the `type: ignore[arg-type]` on the create calls below say only that.
NAMESPACE = "cut-bench"
TICK = 0.1
HUNG = "pause, Prometheus hung"
MODES = ("revoke-only", "pause", HUNG)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_s": round(statistics.median(values), 3),
        "p99_s": round(percentile(values, 0.99), 3),
        "max_s": round(max(values), 3),
        "n": len(values),
    }


class Bench:
    def __init__(self, work: Path) -> None:
        from breaker_tooling.localcluster import LocalCluster

        self.work = work
        self.cluster = LocalCluster()
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        from kubernetes import client

        self.cluster.up()
        self.api = self.cluster.api_client()
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.batch = client.BatchV1Api(self.api)
        root = Path(__file__).resolve().parents[1]
        self.cluster.kubectl("apply", "--server-side", "-f", str(root / "crds"))
        self.cluster.kubectl("wait", "--for=condition=Established", "crd", "--all")
        for namespace in ("breaker-system", NAMESPACE):
            manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
            self.cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
        env = self.cluster.env()
        run = [
            sys.executable, "-m", "breaker.cli", "run", "--metrics-port=0",
            f"--prometheus-url={self.cluster.prometheus_url}",
        ]  # fmt: skip
        agent = self.cluster.real_node.agent_command()
        for name, command in (("operator", run), ("node-agent", agent)):
            log = (self.work / f"{name}.log").open("wb")
            self.processes.append(
                subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
            )

    def stop(self, keep: bool) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
        if not keep:
            self.cluster.down()

    def workload(self, mode: str) -> tuple[str, str]:
        """The guarded workload of a mode, created with its policy; (kind, name)."""
        from breaker_tooling.localcluster import packets

        name = "svc" if mode == "revoke-only" else "rl"
        template = packets.pod_template(name, packets.play(tick=TICK), grace=10)
        actions: list[dict[str, str]] = [{"type": "revokeEgress"}]
        if mode == "revoke-only":
            body = {
                "metadata": {"name": name},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": name}},
                    "template": template,
                },
            }
            self.apps.create_namespaced_deployment(NAMESPACE, body)  # type: ignore[arg-type]
            kind = "Deployment"
        else:
            template["spec"]["restartPolicy"] = "Never"
            body = {"metadata": {"name": name}, "spec": {"backoffLimit": 0, "template": template}}
            self.batch.create_namespaced_job(NAMESPACE, body)  # type: ignore[arg-type]
            kind, actions = "Job", [*actions, {"type": "pause"}]
        policy = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "BreakerPolicy",
            "metadata": {"name": f"{name}-guard"},
            "spec": {
                "targets": {"kinds": [kind]},
                "signals": [{"name": "pool", "preset": "mining-pool-egress"}],
                "mode": "Enforce",
                "actions": actions,
                "prometheus": {"interval": "30s"},
            },
        }
        self.custom.create_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, "breakerpolicies", policy
        )
        return kind, name

    def pod_ip(self, app: str) -> str:
        from breaker_tooling.localcluster import packets

        def running() -> str | None:
            pods = self.core.list_namespaced_pod(NAMESPACE, label_selector=f"app={app}").items
            ready = [
                p.status.pod_ip
                for p in pods
                if p.status is not None
                and p.status.phase == "Running"
                and p.status.pod_ip
                and p.metadata is not None
                and p.metadata.deletion_timestamp is None
            ]
            return ready[0] if ready else None

        found: str = packets.wait(running, f"a running pod of {app}", timeout=120)
        return found

    def breaker(self, name: str) -> dict[str, Any]:
        """The Breaker, or {} while the operator has not made it."""
        from kubernetes import client

        try:
            found = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, "breakers", name
            )
        except client.ApiException as error:
            if error.status == 404:
                return {}
            raise
        assert isinstance(found, dict), found  # annotated `object`: a JSON object
        return found

    def hang_prometheus_evaluations(self, name: str) -> None:
        """The policy of ``name`` evaluated every second, a query waiting up to a minute:
        once Prometheus stops, an evaluation is always hung on it."""
        patch = {"spec": {"prometheus": {"interval": "1s", "timeout": "60s"}}}
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, "breakerpolicies", f"{name}-guard", patch
        )

    def trip_once(self, mode: str, app: str, breaker: str) -> dict[str, float]:
        prometheus = self.cluster.process("prometheus").pid() if mode == HUNG else None
        try:
            return self._trip_once(app, breaker, prometheus)
        finally:
            if prometheus is not None:
                os.kill(prometheus, signal.SIGCONT)

    def _trip_once(self, app: str, breaker: str, prometheus: int | None) -> dict[str, float]:
        from breaker.api import containment
        from breaker_tooling.localcluster import packets

        node = self.cluster.real_node
        ip = self.pod_ip(app)
        packets.wait(lambda: self.breaker(breaker).get("status"), f"Breaker {breaker}", 60)
        packets.wait(lambda: packets.flowing(node.outside(), ip), f"{app}'s tunnel", 60)
        if prometheus is not None:
            os.kill(prometheus, signal.SIGSTOP)
            time.sleep(2)  # the evaluations of every second since are hung on it
        patch = {"spec": {"override": "ForcedOpen"}}
        written = time.time()
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, "breakers", breaker, patch
        )

        def contained() -> dict[str, Any] | None:
            status = self.breaker(breaker).get("status") or {}
            reason = containment.read(status).reason
            return status if reason == containment.CONTAINED else None

        status = packets.wait(contained, "containment", 60)
        tripped = dt.datetime.fromisoformat(status["lastTrip"].replace("Z", "+00:00")).timestamp()
        cut = packets.wait(lambda: packets.cut_at(node.outside(), ip, tripped), "the cut", 30)
        time.sleep(3)  # anything that still slips through shows in the record meanwhile
        last = packets.last_byte(node.outside(), ip)
        reset_at = time.time()
        reset = {"spec": {"override": None, "reset": str(reset_at)}}
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, "breakers", breaker, reset
        )
        packets.wait(
            lambda: (
                containment.read(self.breaker(breaker).get("status")).reason
                == containment.NOT_TRIPPED
            ),
            "the reset",
            60,
            interval=0.02,
        )
        return {
            "cut_s": cut - tripped,
            "last_byte_s": max(0.0, last - tripped),
            "written_s": cut - written,
            "undone_s": time.time() - reset_at,
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--trips", type=int, default=20, help="trips per mode (20)")
    parser.add_argument("--keep", action="store_true", help="leave the bench cluster up")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="breaker-bench-cut-"))
    os.environ["BREAKER_CLUSTER_DIR"] = str(work / "cluster")
    os.environ.setdefault("BREAKER_CLUSTER_PORT_OFFSET", "3000")
    os.environ["BREAKER_CLUSTER_REAL_NODE"] = "1"
    bench = Bench(work)
    began = time.monotonic()
    result: dict[str, Any] = {"trips_per_mode": args.trips, "tick_s": TICK, "modes": {}}
    try:
        bench.start()
        name = ""
        for mode in MODES:
            if mode == HUNG:
                bench.hang_prometheus_evaluations(name)  # the pause mode's Job, again
            else:
                _, name = bench.workload(mode)
            runs = []
            for trip in range(args.trips):
                run = bench.trip_once(mode, name, f"{name}-{name}-guard")
                runs.append(run)
                print(f"{mode} trip {trip + 1}: {json.dumps(run)}", flush=True)
            result["modes"][mode] = {
                "cut": summary([r["cut_s"] for r in runs]),
                "last_byte": summary([r["last_byte_s"] for r in runs]),
                "written": summary([r["written_s"] for r in runs]),
                "undone": summary([r["undone_s"] for r in runs]),
                "runs": runs,
            }
    finally:
        bench.stop(args.keep)
        result["wall_s"] = round(time.monotonic() - began, 1)
        result["measured_at"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "cut.json").write_text(json.dumps(result, indent=2) + "\n")
    columns = ("cut", "last_byte", "written", "undone")
    print("\n" + f"{'mode':<24}" + "".join(f" {c + ' p50':>15} {'p99':>6}" for c in columns))
    for mode, row in result["modes"].items():
        figures = "".join(f" {row[c]['p50_s']:>14.3f}s {row[c]['p99_s']:>5.3f}s" for c in columns)
        print(f"{mode:<24}{figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
