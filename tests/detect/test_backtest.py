"""`breaker backtest` as a user runs it: real promtool and Prometheus, clear errors, no mess."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from breaker.detect import presets
from breaker.detect.backtest import temporary_prometheus
from breaker.detect.catalog import PRESETS
from breaker.detect.policy_file import default_text
from breaker.detect.prom import Prom
from breaker_tooling.localcluster.paths import repo_root
from breaker_tooling.sim import openmetrics
from breaker_tooling.sim.scenario import load as load_scenario
from tests.helpers import wait_for

SCENARIOS = repo_root() / "tests" / "scenarios"


def backtest(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "breaker.cli", "backtest", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


@pytest.fixture(scope="module")
def rome_series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("series") / "rome.om"
    openmetrics.write_file(load_scenario(SCENARIOS / "attack-rome-sequence.yaml"), path)
    return path


def test_json_report(rome_series: Path) -> None:
    result = backtest("--series", str(rome_series), "--format", "json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["from"] == "2026-03-01T00:42:00Z"  # after the longest lookback (42 min)
    assert report["to"] == "2026-03-01T01:20:00Z"
    assert report["evaluations"] == 153
    (trip,) = report["trips"]
    assert trip == {
        "namespace": "agents",
        "pod": "rome-0",
        "workload": "TrainingJob/rome",
        "rule": "critical:scan",
        # One pod's scan is its workload's too: the same ports, counted across its pods.
        "signals": ["scan", "scan-spread"],
        "at": "2026-03-01T00:48:15Z",
        "values": {"scan": trip["values"]["scan"], "scan-spread": trip["values"]["scan"]},
    }
    assert "evaluating from 2026-03-01T00:42:00Z" in result.stderr


def test_a_custom_policy_file(rome_series: Path, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "apiVersion: breaker.dev/v1alpha1\nkind: BreakerPolicy\nmetadata: {name: p}\nspec:\n"
        "  signals:\n  - {name: tunnel, preset: outbound-ssh, severity: critical}\n"
    )
    result = backtest("--policy", str(policy), "--series", str(rome_series))
    assert result.returncode == 0, result.stderr
    assert "agents/rome-0 (TrainingJob/rome)  critical:tunnel" in result.stdout


@pytest.mark.parametrize(
    ("content", "policy", "expected"),
    [
        (None, None, "cannot read"),
        ("up 1\n# EOF\n", None, "a sample without a timestamp"),
        ("up 1 1767225600\nup 1 1767225660\n# EOF\n", None, "empty range"),
        (
            "up 1 1767225600\n# EOF\n",
            "kind: BreakerPolicy\nspec: {signals: [{name: m, preset: bitcoin}]}\n",
            "spec.signals.0.preset",
        ),
        (
            "up 1 1767225600\n# EOF\n",
            "kind: BreakerPolicy\nspec:\n  signals:\n"
            "  - {name: m, preset: outbound-ssh, params: {prt: '22'}}\n",
            "params.prt: preset outbound-ssh has no such parameter",
        ),
    ],
    ids=["unreadable", "no-timestamps", "empty-range", "invalid-policy", "unknown-param"],
)
def test_bad_input_exits_2_naming_the_problem(
    tmp_path: Path, content: str | None, policy: str | None, expected: str
) -> None:
    series = tmp_path / "series.om"
    if content is not None:
        series.write_text(content)
    args = ["--series", str(series)]
    if policy is not None:
        (tmp_path / "policy.yaml").write_text(policy)
        args += ["--policy", str(tmp_path / "policy.yaml")]
    result = backtest(*args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert expected in result.stderr
    assert "breaker backtest: " in result.stderr


def leftovers() -> set[str]:
    temp = Path(os.environ.get("TMPDIR", "/tmp"))
    return {p.name for p in temp.glob("breaker-backtest-*")}


def test_an_interrupted_backtest_leaves_nothing_behind(rome_series: Path) -> None:
    before = leftovers()
    process = subprocess.Popen(
        [sys.executable, "-m", "breaker.cli", "backtest", "--series", str(rome_series)],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    for line in process.stderr:  # interrupt once the temporary Prometheus is serving
        if line.strip().startswith("[1/"):
            break
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    wait_for(lambda: not leftovers() - before, "the backtest's files removed", timeout=10)
    children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True)
    assert children.stdout == ""


def test_every_preset_is_valid_promql_on_a_real_prometheus(rome_series: Path) -> None:
    with temporary_prometheus(rome_series, say=lambda _m: None) as url:
        prom = Prom(url)
        for name in presets.RENDERERS:
            source = PRESETS[name].get("source")
            for params in [{"source": s} for s in source.choices] if source else [{}]:
                rendered = presets.render(name, params)
                prom.instant(rendered.query, at=1772328000)  # raises with Prometheus's message


def test_the_shipped_default_policy_is_the_example() -> None:
    assert (repo_root() / "examples" / "policies" / "default.yaml").read_text() == default_text()


def test_against_a_live_prometheus(rome_series: Path) -> None:
    with temporary_prometheus(rome_series, say=lambda _m: None) as url:
        result = backtest(
            "--prometheus",
            url,
            "--from",
            "2026-03-01T00:42:00Z",
            "--to",
            "2026-03-01T01:20:00Z",
            "--format",
            "json",
        )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [(t["pod"], t["at"]) for t in report["trips"]] == [("rome-0", "2026-03-01T00:48:15Z")]


def test_long_ranges_are_asked_in_pieces() -> None:
    from breaker.detect.backtest import MAX_POINTS, _range

    class Recorder:
        def __init__(self) -> None:
            self.calls: list[tuple[float, float]] = []

        def range(
            self, query: str, start: float, end: float, step: float
        ) -> list[dict[str, object]]:
            self.calls.append((start, end))
            return []

    recorder = Recorder()
    _range(recorder, "up", 0, 15 * 25_000, 15)  # type: ignore[arg-type]
    assert len(recorder.calls) == 3
    assert all((end - start) / 15 + 1 <= MAX_POINTS for start, end in recorder.calls)
    assert recorder.calls[0][0] == 0
    assert recorder.calls[-1][1] == 15 * 25_000


def test_a_single_falco_event_counts(tmp_path: Path) -> None:
    # falcosidekick creates the counter at 1 on the first hit; increase() alone sees nothing.
    t0 = 1772323200
    lines = ["# TYPE falcosecurity_falcosidekick_falco_events counter"]
    labels = (
        'rule="Detect crypto miners using the Stratum protocol",priority="2",'
        'priority_raw="critical",k8s_ns_name="a",k8s_pod_name="p"'
    )
    lines += [
        f"falcosecurity_falcosidekick_falco_events_total{{{labels}}} 1 {t0 + s}"
        for s in range(600, 1200, 15)
    ]
    lines += ["# TYPE up gauge", *(f"up 1 {t0 + s}" for s in range(0, 1200, 15)), "# EOF"]
    series = tmp_path / "one-event.om"
    series.write_text("\n".join(lines) + "\n")
    policy = tmp_path / "falco.yaml"
    policy.write_text(
        "kind: BreakerPolicy\nspec:\n  signals:\n"
        "  - {name: falco, preset: falco-rule-hits, severity: critical}\n"
    )
    result = backtest("--policy", str(policy), "--series", str(series), "--format", "json")
    assert result.returncode == 0, result.stderr
    (trip,) = json.loads(result.stdout)["trips"]
    assert (trip["pod"], trip["at"]) == ("p", "2026-03-01T00:10:00Z")


def test_sub_second_timestamps_are_evaluated(tmp_path: Path) -> None:
    scenario = load_scenario(SCENARIOS / "attack-tunnel-over-443.yaml")
    start = scenario.start
    assert start is not None
    series = tmp_path / "offset.om"
    openmetrics.write_file(scenario, series, start + dt.timedelta(seconds=0.4))
    result = backtest("--series", str(series), "--format", "json")
    assert result.returncode == 0, result.stderr
    assert [t["pod"] for t in json.loads(result.stdout)["trips"]] == ["rl-443-0"]
