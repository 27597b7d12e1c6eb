"""Benchmark: one evaluation over N guarded pods on a real Prometheus, breaker beside the
naive per-workload design.

For each size it simulates N one-GPU pods, one per batch Job (1% of them mining, the rest
training with a checkpoint upload now and then), loads the series into a temporary
Prometheus, and at the end of the data measures one evaluation two ways:

- breaker: one query per signal for every pod at once, then the engine;
- baseline: what a kopf timer per workload does, each workload querying every pod-scoped
  signal narrowed to its own pods (``breaker.detect.promql.scoped``) and comparing the
  threshold itself. At sizes above ``--baseline-sample`` a seeded sample of workloads is
  measured and its counts and times scaled to N (the JSON says so): the per-workload
  queries are alike, and half a million of them would take the bench an hour.

Figures per side: Prometheus queries, wall time, the evaluating process's CPU,
Prometheus's CPU (its own process_cpu_seconds_total). Figures, not assertions: the
machine is shared.

    .venv/bin/python bench/evaluation.py [--sizes 1000,10000,50000]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import random
import re
import sys
import tempfile
import time
import tracemalloc
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from breaker.api.policy import BreakerPolicySpec
from breaker.detect import engine, live
from breaker.detect.backtest import temporary_prometheus
from breaker.detect.policy_file import load as load_policy
from breaker.detect.prom import Prom, QueryError
from breaker.detect.promql import scoped
from breaker_tooling.sim import openmetrics
from breaker_tooling.sim.scenario import Scenario

RESULTS = Path(__file__).parent / "results" / "evaluation.json"
START = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
NAMESPACES = 50


def workload(index: int) -> tuple[str, str]:
    """(namespace, pod) of the index-th guarded Job's one pod."""
    return f"team-{index % NAMESPACES}", f"job-{index}-0"


def scenario(pods: int) -> Scenario:
    entries = []
    for index in range(pods):
        timeline: list[dict[str, str]] = [{"at": "0m", "do": "train-mixed"}]
        if index % 100 == 0:
            timeline += [{"at": "40m", "do": "mine"}, {"at": "40m", "do": "miner-pool-egress"}]
        elif index % 10 == 0:
            timeline.append({"at": "30m", "until": "32m", "do": "checkpoint-upload"})
        namespace, pod = workload(index)
        entries.append(
            {
                "namespace": namespace,
                "name": pod,
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


def detector() -> engine.Detector:
    """Every preset, as the default policy sets them up, plus the node-scoped one."""
    found = engine.compile_policy(load_policy(None))
    extra = engine.compile_policy(
        BreakerPolicySpec.model_validate(
            {"signals": [{"name": "unallocated", "preset": "unallocated-gpu-activity"}]}
        )
    )
    return dataclasses.replace(found, signals=found.signals + extra.signals)


def prometheus_cpu(url: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    match = re.search(r"^process_cpu_seconds_total ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) if match else float("nan")


class Meter:
    """Wall time, this process's CPU and Prometheus's CPU over a block."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> Meter:
        self.prom_cpu = prometheus_cpu(self.url)
        self.cpu, self.wall = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *_: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu
        self.prom_cpu = prometheus_cpu(self.url) - self.prom_cpu


def breaker_side(prom: Prom, found: engine.Detector, at: float) -> dict[str, Any]:
    live.evaluate(prom, found, engine.State(), at, lambda p: p)  # warm Prometheus's caches
    with Meter(prom.url) as meter:
        tracemalloc.start()
        result = live.evaluate(prom, found, engine.State(), at, lambda p: p)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    # Which signals cost Prometheus the most: the ones to give recording rules first.
    per_signal = {}
    for signal in found.signals:
        began = time.perf_counter()
        prom.instant(signal.query, at)
        per_signal[signal.name] = round(time.perf_counter() - began, 3)
    return {
        "queries_per_eval": result.queries,
        "per_signal_wall_s": per_signal,
        "eval_wall_s": round(meter.wall, 3),
        "eval_cpu_s": round(meter.cpu, 3),
        "prometheus_cpu_s": round(meter.prom_cpu, 3),
        "eval_peak_mb": round(peak / 2**20, 1),
        "pods_firing": len(result.firing),
        "errors": result.errors,
    }


def decided(
    signal: engine.SignalSpec, samples: Mapping[engine.PodKey, engine.Sample]
) -> dict[engine.PodKey, engine.Sample]:
    """What a signal's threshold is compared with: per pod, or (a signal across a workload's
    pods) the workload's combined sample; here every workload has one pod."""
    if signal.across is None:
        return dict(samples)
    combined = engine.combine(signal.across, samples, lambda key: key)
    return {cast(engine.PodKey, key): sample for key, (_, sample) in combined.items()}


def baseline_side(
    prom: Prom, found: engine.Detector, at: float, pods: int, sample: int
) -> dict[str, Any]:
    """Each workload asks for itself: every pod-scoped signal, narrowed to its pods."""
    signals = [s for s in found.signals if s.scope == "pod"]
    measured = sorted(random.Random(pods).sample(range(pods), min(sample, pods)))
    queries, errors = 0, 0
    holding: set[tuple[engine.PodKey, str]] = set()
    with Meter(prom.url) as meter:
        for index in measured:
            namespace, pod = workload(index)
            for signal in signals:
                queries += 1
                try:
                    result = prom.instant(scoped(signal.query, signal.labels, namespace, [pod]), at)
                except QueryError:
                    errors += 1
                    continue
                values = decided(signal, engine.read(signal, result))
                holding |= {(k, signal.name) for k, v in values.items() if signal.holds(v.value)}
    scale = pods / len(measured)
    # The same answers as breaker's one query per signal, for the workloads measured.
    readings, _, _ = live.read(prom, found, at)
    sampled = {workload(i) for i in measured}
    theirs = {
        (key, signal.name)
        for signal in signals
        for key, sample in decided(signal, readings[signal.name] or {}).items()
        if key in sampled and signal.holds(sample.value)
    }
    return {
        "queries_per_eval": round(queries * scale),
        "eval_wall_s": round(meter.wall * scale, 3),
        "eval_cpu_s": round(meter.cpu * scale, 3),
        "prometheus_cpu_s": round(meter.prom_cpu * scale, 3),
        "signals_holding_in_sample": len(holding),
        "disagreements_with_breaker": len(holding ^ theirs),
        "query_errors_in_sample": errors,
        "workloads_measured": len(measured),
        "scaled_from_sample": len(measured) < pods,
        "node_signals_left_out": len(found.signals) - len(signals),
    }


def measure(pods: int, workdir: Path, sample: int) -> dict[str, Any]:
    series = workdir / f"bench-{pods}.om"
    began = time.monotonic()
    samples = openmetrics.write_file(scenario(pods), series)
    generated = time.monotonic() - began
    found = detector()
    with temporary_prometheus(series, say=lambda _m: None) as url:
        loaded = time.monotonic() - began - generated
        prom = Prom(url, timeout_seconds=120)
        at = START.timestamp() + 45 * 60
        ours = breaker_side(prom, found, at)
        naive = baseline_side(prom, found, at, pods, sample) if sample else None
    series.unlink()
    return {
        "pods": pods,
        "signals": len(found.signals),
        "breaker": ours,
        "baseline": naive,
        "samples_loaded": samples,
        "generate_s": round(generated, 1),
        "load_s": round(loaded, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,50000", help="guarded pods, comma-separated")
    parser.add_argument(
        "--baseline-sample",
        type=int,
        default=1000,
        help="workloads the baseline measures at most; above it, scaled (default 1000; "
        "0: breaker only)",
    )
    parser.add_argument(
        "--output", type=Path, default=RESULTS, help=f"where to write (default {RESULTS})"
    )
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="breaker-bench-") as workdir:
        for size in (int(s) for s in args.sizes.split(",")):
            print(f"evaluation at {size} pods: generating and loading the series ...", flush=True)
            rows.append(measure(size, Path(workdir), args.baseline_sample))
            print(json.dumps(rows[-1]), flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps({"measured_at": dt.datetime.now(dt.UTC).isoformat(), "runs": rows}, indent=2)
        + "\n"
    )
    print(
        f"{'pods':>6}  {'side':<8}  {'queries':>8}  {'wall s':>8}  {'CPU s':>7}  {'Prom CPU s':>10}"
    )
    for row in rows:
        for side in ("breaker", "baseline"):
            got = row[side]
            if got is None:
                continue
            print(
                f"{row['pods']:>6}  {side:<8}  {got['queries_per_eval']:>8}  "
                f"{got['eval_wall_s']:>8}  {got['eval_cpu_s']:>7}  {got['prometheus_cpu_s']:>10}"
            )
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
