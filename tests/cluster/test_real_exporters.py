"""The exporters a real cluster runs, run for real on the local one: kube-state-metrics
(built from its Go module) and the real node's kubelet (its cAdvisor), both scraped by the
local Prometheus. What the presets and backtests read from them is read here from the real
series, not from the simulator's."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from breaker.constants import GROUP, VERSION
from breaker.detect import presets
from breaker.detect.prom import Prom
from breaker_tooling.localcluster import packets
from tests.cluster.scenes import Cluster
from tests.cluster.scenes import batch_job as job
from tests.helpers import wait_for
from tests.kube import as_body


def series(prom: Prom, query: str) -> list[dict[str, Any]]:
    return list(prom.instant(query, None))


def test_kube_state_metrics_names_a_pods_workload_for_backtest(
    cluster: Cluster, tmp_path: Path
) -> None:
    c = cluster
    prom = Prom(c.local.prometheus_url, 10)
    template = {"spec": {"containers": [{"name": "main", "image": "registry.invalid/idle"}]}}
    c.batch.create_namespaced_job(c.ns, as_body(job("owned", template)))
    owned = f'kube_pod_owner{{namespace="{c.ns}", owner_kind="Job", owner_name="owned"}}'
    (found,) = wait_for(lambda: series(prom, owned), "kube_pod_owner of the Job's pod", 60)
    pod = found["metric"]["pod"]
    assert found["metric"]["owner_is_controller"] == "true"
    wait_for(
        lambda: series(prom, f'kube_pod_info{{namespace="{c.ns}", pod="{pod}", node!=""}}'),
        "kube_pod_info with the pod's node",
        60,
    )
    time.sleep(5)  # a few scrapes to backtest over
    present = f'max by (namespace, pod) (kube_pod_info{{namespace="{c.ns}"}})'
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        yaml.safe_dump(
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "BreakerPolicy",
                "metadata": {"name": "present"},
                "spec": {
                    "targets": {"kinds": ["Job"]},
                    "signals": [{"name": "present", "query": present, "severity": "critical"}],
                },
            }
        )
    )
    now = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "breaker.cli", "backtest", "--policy", str(policy),
         "--prometheus", c.local.prometheus_url, "--step", "2s", "--format", "json",
         "--from", _stamp(now - 20), "--to", _stamp(now)],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (trip,) = json.loads(done.stdout)["trips"]
    assert (trip["namespace"], trip["pod"], trip["workload"]) == (c.ns, pod, "Job/owned")


def test_the_real_kubelets_cadvisor_gives_the_egress_presets_input_for_a_real_pod(
    cluster: Cluster,
) -> None:
    c = cluster
    prom = Prom(c.local.prometheus_url, 10)
    # The agent's tunnel and pool sessions to the outside hosts, a line every 10 ms.
    sender = packets.pod_template("sender", packets.play(dns_at=None, tick=0.01), grace=1)
    c.batch.create_namespaced_job(c.ns, as_body(job("sender", sender)))
    sent = f'container_network_transmit_bytes_total{{namespace="{c.ns}", interface="eth0"}}'
    (first,) = wait_for(lambda: series(prom, sent), "cAdvisor's transmit counter of the pod", 90)
    pod = first["metric"]["pod"]
    assert pod.startswith("sender-")

    def growing() -> float | None:
        rates = {
            s["metric"]["pod"]: float(s["value"][1])
            # cAdvisor refreshes a pod's counters every 10-15 s (its housekeeping): a
            # rate needs a window with two different values in it.
            for s in series(prom, presets.transmit_rate("1m"))
            if s["metric"].get("namespace") == c.ns
        }
        return rates.get(pod) or None

    rate = wait_for(growing, "the preset's transmit rate of the pod above zero", 120)
    assert rate > 100  # bytes a second: a hundred lines a second to two outside hosts


def _stamp(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))
