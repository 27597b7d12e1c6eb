"""`breaker backtest`: when and why a policy would have tripped, on recorded series.

Recorded series (OpenMetrics with timestamps) are loaded into a real, temporary Prometheus
through ``promtool tsdb create-blocks-from openmetrics``; each signal is asked once as a
range query, and every step goes through the live loop's own driver (``driver.tick``): pods
count for their workload (kube-state-metrics' ``kube_pod_owner``), and a node-scoped
signal for every workload with a pod on that node (``kube_pod_info``). The temporary
Prometheus and its directory are removed however the run ends.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from breaker.detect import driver, engine
from breaker.detect.prom import Prom, QueryError
from breaker.wait import WaitTimeout, wait_for

OWNER_QUERY = (
    "max by (namespace, pod, owner_kind, owner_name) "
    '(max_over_time(kube_pod_owner{{owner_is_controller="true"}}[{span}s]))'
)
NODE_QUERY = "max by (namespace, pod, node) (max_over_time(kube_pod_info[{span}s]))"


MAX_POINTS = 10_000


class BacktestError(ValueError):
    """Bad input: the message names the file or field and what to do."""


@dataclass(frozen=True)
class Trip:
    namespace: str
    pod: str
    workload: str | None
    rule: str
    signals: tuple[str, ...]
    at: float
    values: dict[str, float]

    def wire(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "pod": self.pod,
            "workload": self.workload,
            "rule": self.rule,
            "signals": list(self.signals),
            "at": rfc3339(self.at),
            "values": self.values,
        }


@dataclass
class Report:
    start: float
    end: float
    evaluations: int = 0
    trips: list[Trip] = field(default_factory=list)
    data_start: float | None = None

    def wire(self) -> dict[str, Any]:
        return {
            "from": rfc3339(self.start),
            "to": rfc3339(self.end),
            "evaluations": self.evaluations,
            "trips": [t.wire() for t in self.trips],
        }


def rfc3339(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def series_range(path: Path) -> tuple[float, float]:
    """The first and last sample time in an OpenMetrics file; every sample needs one."""
    first, last = float("inf"), float("-inf")
    try:
        with path.open() as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip() or line.startswith("#"):
                    continue
                tail = line.rsplit("}", 1)[-1].split() if "}" in line else line.split()[1:]
                if len(tail) < 2:
                    raise BacktestError(
                        f"{path}:{number}: a sample without a timestamp; backtests need "
                        "timestamped series (`breaker sim --write` writes them)"
                    )
                try:
                    stamp = float(tail[1])
                except ValueError:
                    raise BacktestError(
                        f"{path}:{number}: {tail[1]!r} is not a timestamp"
                    ) from None
                first, last = min(first, stamp), max(last, stamp)
    except OSError as error:
        raise BacktestError(f"{path}: cannot read: {error.strerror}") from error
    if first == float("inf"):
        raise BacktestError(f"{path}: no samples in the file")
    return first, last


@contextlib.contextmanager
def temporary_prometheus(series: Path, say: Callable[[str], None]) -> Iterator[str]:
    """A Prometheus on loopback serving the series in ``series``; yields its URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise BacktestError(
            "the prometheus server is not installed; on Debian or Ubuntu run "
            "`sudo apt-get install --no-install-recommends prometheus` (`make deps` does)"
        )
    promtool = shutil.which("promtool") or str(Path(binary).with_name("promtool"))
    if not Path(promtool).exists():
        raise BacktestError(
            "promtool is not installed; it comes with Debian's prometheus package "
            "(`sudo apt-get install --no-install-recommends prometheus`)"
        )
    workdir = Path(tempfile.mkdtemp(prefix="breaker-backtest-"))
    process: subprocess.Popen[bytes] | None = None
    previous = signal.getsignal(signal.SIGTERM)

    def terminated(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminated)
    try:
        say(f"loading {series} into a temporary Prometheus ...")
        loaded = subprocess.run(
            [
                promtool,
                "tsdb",
                "create-blocks-from",
                "openmetrics",
                str(series),
                str(workdir / "data"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if loaded.returncode != 0:
            raise BacktestError(
                f"{series}: promtool could not read it: {loaded.stderr.strip()[-800:]}"
            )
        (workdir / "prometheus.yml").write_text("global: {}\n")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        log = (workdir / "prometheus.log").open("wb")
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                "--storage.tsdb.retention.time=100y",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"

        def running() -> None:
            if process is not None and process.poll() is not None:
                tail = (workdir / "prometheus.log").read_text()[-800:]
                raise BacktestError(f"the temporary Prometheus exited: {tail}")

        try:
            wait_for(lambda: _ready(f"{url}/-/ready"), "ready", 60, check=running)
        except WaitTimeout:
            raise BacktestError("the temporary Prometheus did not become ready in 60s") from None
        yield url
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(workdir, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def owners(prom: Prom, at: float, span: float) -> dict[engine.PodKey, str]:
    """Pod -> "Kind/name" of its controller, from kube_pod_owner in the ``span`` before ``at``

    (pods that ended before the range's end keep their owner)."""
    found = {}
    for metric in _latest(prom, OWNER_QUERY.format(span=max(1, int(span))), at):
        if metric.get("namespace") and metric.get("pod"):
            found[(metric["namespace"], metric["pod"])] = (
                f"{metric['owner_kind']}/{metric['owner_name']}"
            )
    return found


def nodes(prom: Prom, at: float, span: float) -> dict[engine.PodKey, str]:
    """Pod -> the node it ran on, from kube_pod_info in the ``span`` before ``at``."""
    return {
        (metric["namespace"], metric["pod"]): metric["node"]
        for metric in _latest(prom, NODE_QUERY.format(span=max(1, int(span))), at)
        if metric.get("namespace") and metric.get("pod") and metric.get("node")
    }


def _latest(prom: Prom, query: str, at: float) -> list[dict[str, str]]:
    """The label sets of an instant query's answer; none where kube-state-metrics' series
    are missing (a recording of the exporters alone): pods then count on their own."""
    try:
        return [series["metric"] for series in prom.instant(query, at)]
    except QueryError:
        return []


Unit = tuple[str, str]  # (namespace, "Kind/name" of the workload, or the pod's own name)


@dataclass(frozen=True)
class Workloads:
    """How the recording's pods map to workloads and nodes, as the live loop's indexes do."""

    owner: dict[engine.PodKey, str]
    node: dict[engine.PodKey, str]

    def unit_of(self, pod: engine.PodKey) -> Unit:
        return (pod[0], self.owner.get(pod, pod[1]))

    def units_on_node(self) -> dict[str, set[Unit]]:
        found: dict[str, set[Unit]] = {}
        for pod, node in self.node.items():
            found.setdefault(node, set()).add(self.unit_of(pod))
        return found

    def pod_of(self, unit: Unit, decision: engine.Decision) -> str:
        """The pod a trip names: the one whose signal tripped it, else (a node-scoped signal
        alone) the unit's first pod on that node."""
        for fired in decision.signals:
            if fired.key and self.unit_of(fired.key) == unit:
                return fired.key[1]
        hosts = {f.key[0] for f in decision.signals if f.key}
        on_hosts = sorted(
            pod[1] for pod, node in self.node.items() if node in hosts and self.unit_of(pod) == unit
        )
        return on_hosts[0] if on_hosts else unit[1]


def evaluate(
    detector: engine.Detector,
    prom: Prom,
    start: float,
    end: float,
    step: float,
    say: Callable[[str], None] = _say,
) -> Report:
    """Evaluate at every step in [start, end]; one range query per signal."""
    if step <= 0:
        raise BacktestError(f"--step must be positive, not {step:g}s")
    # Prometheus answers range queries at whole seconds; evaluate on the same grid.
    start = math.ceil(start / step) * step
    if end <= start:
        raise BacktestError(
            f"empty range: {rfc3339(start)} to {rfc3339(end)} (the data must cover more than "
            f"the policy's longest lookback, {detector.lookback_seconds:.0f}s)"
        )
    per_step: dict[float, dict[str, dict[engine.PodKey, engine.Sample]]] = {}
    for index, signal_spec in enumerate(detector.signals, start=1):
        say(f"  [{index}/{len(detector.signals)}] {signal_spec.name}")
        for series in _range(prom, signal_spec.query, start, end, step):
            for stamp, value in series["values"]:
                vector = [{"metric": series["metric"], "value": [stamp, value]}]
                for pod, sample in engine.read(signal_spec, vector).items():
                    readings = per_step.setdefault(round(float(stamp)), {})
                    previous = readings.setdefault(signal_spec.name, {}).get(pod)
                    merged = sample if previous is None else previous.merged(sample)
                    readings[signal_spec.name][pod] = merged
    report = Report(start=start, end=end)
    span = end - start + step
    workloads = Workloads(owners(prom, end, span), nodes(prom, end, span))
    state = engine.State()
    tripped: set[Unit] = set()
    stamp = start
    while stamp <= end + 1e-6:
        readings = per_step.get(round(stamp), {})
        full = {s.name: readings.get(s.name, {}) for s in detector.signals}
        _, decisions = driver.tick(
            detector, state, full, stamp, workloads.unit_of, workloads.units_on_node
        )
        for unit, decision in sorted(decisions.items()):
            if unit in tripped:
                continue
            tripped.add(unit)
            report.trips.append(
                Trip(
                    namespace=unit[0],
                    pod=workloads.pod_of(unit, decision),
                    workload=workloads.owner.get((unit[0], workloads.pod_of(unit, decision))),
                    rule=decision.rule,
                    signals=tuple(f.signal for f in decision.signals),
                    at=stamp,
                    values={f.signal: round(f.value, 6) for f in decision.signals},
                )
            )
        report.evaluations += 1
        stamp += step
    report.trips.sort(key=lambda t: (t.at, t.namespace, t.pod))
    return report


def _range(prom: Prom, query: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    """A range query in pieces Prometheus accepts (it refuses over 11,000 points a series)."""
    pieces = []
    begin = start
    while begin <= end:
        stop = min(end, begin + step * (MAX_POINTS - 1))
        pieces.extend(prom.range(query, begin, stop, step))
        begin = stop + step
    return pieces


def run_file(
    detector: engine.Detector,
    series: Path,
    step: float,
    say: Callable[[str], None] = _say,
) -> Report:
    first, last = series_range(series)
    start = first + detector.lookback_seconds
    say(
        f"series from {rfc3339(first)} to {rfc3339(last)}; evaluating from {rfc3339(start)} "
        f"(after the policy's longest lookback, {detector.lookback_seconds:.0f}s)"
    )
    with temporary_prometheus(series, say) as url:
        report = evaluate(detector, Prom(url, timeout_seconds=60), start, last, step, say)
    report.data_start = first
    return report


def render_text(report: Report) -> str:
    span = f"{rfc3339(report.start)} to {rfc3339(report.end)}"
    lines = [f"evaluated {report.evaluations} steps from {span}"]
    if not report.trips:
        lines.append("no trips")
    for trip in report.trips:
        values = ", ".join(f"{name}={value:g}" for name, value in trip.values.items())
        owner = f" ({trip.workload})" if trip.workload else ""
        lines.append(
            f"{rfc3339(trip.at)}  {trip.namespace}/{trip.pod}{owner}  {trip.rule}  {values}"
        )
    return "\n".join(lines)
