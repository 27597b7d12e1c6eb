"""`breaker sim` live: the local Prometheus scrapes it like the real exporters, and the
default policy is accepted by the real API server."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

from prometheus_api_client import PrometheusConnect

from breaker_tooling.localcluster import LocalCluster
from breaker_tooling.localcluster.paths import repo_root
from tests.helpers import wait_for


def test_the_local_prometheus_scrapes_the_simulator(
    local_cluster: LocalCluster, prom: PrometheusConnect, tmp_path: Path
) -> None:
    scenario = tmp_path / "live.yaml"
    scenario.write_text(
        "name: live-probe\nduration: 10m\ninterval: 1s\npods:\n"
        "- namespace: sim\n  name: miner-0\n  gpus: 2\n  owner: {kind: Job, name: miner}\n"
        "  timeline: [{at: 0s, do: mine}, {at: 0s, do: miner-pool-egress}]\n"
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "breaker.cli",
            "sim",
            str(scenario),
            "--port",
            str(port),
            "--register",
        ],
        env=local_cluster.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        dram = wait_for(
            lambda: prom.custom_query('DCGM_FI_PROF_DRAM_ACTIVE{namespace="sim",pod="miner-0"}'),
            "Prometheus to scrape the simulator's DCGM series",
            timeout=60,
        )
        assert {s["metric"]["gpu"] for s in dram} == {"0", "1"}
        assert all(0.9 <= float(s["value"][1]) <= 1.0 for s in dram)
        flows = wait_for(
            lambda: prom.custom_query(
                'hubble_flows_to_world_total{source_pod="miner-0",port="3333"}'
            ),
            "the Hubble-shaped pool flows",
            timeout=60,
        )
        assert flows[0]["metric"]["source_namespace"] == "sim"
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=20)
    assert not (local_cluster.targets.directory / "sim-live-probe.json").exists()


def test_the_default_policy_is_accepted_by_the_api_server(
    local_cluster: LocalCluster, crds: None
) -> None:
    subprocess.run(
        [
            "kubectl",
            "apply",
            "--dry-run=server",
            "-f",
            str(repo_root() / "examples" / "policies" / "default.yaml"),
        ],
        env=local_cluster.env(),
        check=True,
        capture_output=True,
    )
