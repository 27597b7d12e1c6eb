"""Benchmark: one live evaluation of every preset over N guarded pods, on a real Prometheus.

For each size it simulates N one-GPU pods (1% of them mining, the rest training with a
checkpoint upload now and then), loads the series into a temporary Prometheus, and times
one evaluation at the end of the data: Prometheus queries (must equal the number of
signals), wall time, the operator's CPU, Prometheus's CPU (its own
process_cpu_seconds_total), and the evaluation's peak Python memory. Prints a table and
writes bench/results/detect.json. Figures, not assertions: the machine is shared.

    .venv/bin/python bench/detect_eval.py [--sizes 100,1000,10000]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import re
import tempfile
import time
import tracemalloc
import urllib.request
from pathlib import Path
from typing import Any

from breaker.api.policy import BreakerPolicySpec
from breaker.detect import engine, live
from breaker.detect.backtest import temporary_prometheus
from breaker.detect.policy_file import load as load_policy
from breaker.detect.prom import Prom
from breaker.sim import openmetrics
from breaker.sim.scenario import Scenario

RESULTS = Path(__file__).parent / "results" / "detect.json"
START = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def scenario(pods: int) -> Scenario:
    entries = []
    for index in range(pods):
        timeline: list[dict[str, str]] = [{"at": "0m", "do": "train-mixed"}]
        if index % 100 == 0:
            timeline += [{"at": "40m", "do": "mine"}, {"at": "40m", "do": "miner-pool-egress"}]
        elif index % 10 == 0:
            timeline.append({"at": "30m", "until": "32m", "do": "checkpoint-upload"})
        entries.append(
            {
                "namespace": f"team-{index % 50}",
                "name": f"job-{index}-0",
                "node": f"gpu-node-{index // 8}",
                "gpus": 1,
                "owner": {"kind": "Job", "name": f"job-{index}"},
                "timeline": timeline,
            }
        )
    return Scenario.model_validate(
        {
            "name": f"bench-{pods}",
            "duration": "45m",
            "interval": "30s",
            "start": START,
            "pods": entries,
        }
    )


def prometheus_cpu(url: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    match = re.search(r"^process_cpu_seconds_total ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) if match else float("nan")


def measure(pods: int, workdir: Path) -> dict[str, Any]:
    series = workdir / f"bench-{pods}.om"
    began = time.monotonic()
    samples = openmetrics.write_file(scenario(pods), series)
    generated = time.monotonic() - began
    # Every preset, as the default policy sets them up, plus the node-scoped one.
    detector = engine.compile_policy(load_policy(None))
    extra = engine.compile_policy(
        BreakerPolicySpec.model_validate(
            {"signals": [{"name": "unallocated", "preset": "unallocated-gpu-activity"}]}
        )
    )
    detector = dataclasses.replace(detector, signals=detector.signals + extra.signals)
    with temporary_prometheus(series, say=lambda _m: None) as url:
        prom = Prom(url, timeout_seconds=120)
        at = START.timestamp() + 45 * 60
        live.evaluate(prom, detector, engine.State(), at, lambda p: p)  # warm the caches
        prom_cpu = prometheus_cpu(url)
        cpu, wall = time.process_time(), time.perf_counter()
        tracemalloc.start()
        result = live.evaluate(prom, detector, engine.State(), at, lambda p: p)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        prom_cpu = prometheus_cpu(url) - prom_cpu
    return {
        "pods": pods,
        "signals": len(detector.signals),
        "queries_per_eval": result.queries,
        "eval_wall_s": round(wall, 3),
        "eval_cpu_s": round(cpu, 3),
        "prometheus_cpu_s": round(prom_cpu, 3),
        "eval_peak_mb": round(peak / 2**20, 1),
        "pods_firing": len(result.firing),
        "errors": result.errors,
        "samples_loaded": samples,
        "generate_s": round(generated, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="breaker-bench-") as workdir:
        for size in (int(s) for s in args.sizes.split(",")):
            rows.append(measure(size, Path(workdir)))
            print(json.dumps(rows[-1]), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps({"measured_at": dt.datetime.now(dt.UTC).isoformat(), "runs": rows}, indent=2)
    )
    header = (
        "pods",
        "signals",
        "queries/eval",
        "wall s",
        "operator CPU s",
        "Prometheus CPU s",
        "peak MB",
    )
    print("  ".join(header))
    for row in rows:
        print(
            f"{row['pods']:>4}  {row['signals']:>7}  {row['queries_per_eval']:>12}  "
            f"{row['eval_wall_s']:>6}  {row['eval_cpu_s']:>14}  {row['prometheus_cpu_s']:>16}  "
            f"{row['eval_peak_mb']:>7}"
        )


if __name__ == "__main__":
    main()
