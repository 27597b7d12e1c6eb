"""The scenario corpus through `breaker backtest` with the default policy, on a real Prometheus.

Every attack trips its attacking pods, and no other pod, within its budget from the first
bad sample; no benign scenario trips anything. The latencies are printed as a table at the
end of the run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from breaker.api.common import parse_duration
from breaker.detect import backtest, engine
from breaker.detect.policy_file import load as load_policy
from breaker_tooling import corpus
from breaker_tooling.localcluster.paths import repo_root
from breaker_tooling.sim import openmetrics
from breaker_tooling.sim.scenario import load as load_scenario

SCENARIOS = sorted((repo_root() / "tests" / "scenarios").glob("*.yaml"))
LATENCIES: list[tuple[str, str, str, str, str]] = []  # printed by conftest's summary hook


def test_the_corpus_has_the_cases_the_issue_asks_for() -> None:
    attacks = [p for p in SCENARIOS if p.name.startswith("attack-")]
    benign = [p for p in SCENARIOS if p.name.startswith("benign-")]
    assert len(attacks) >= 8
    assert len(benign) >= 10


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_scenario_outcome(path: Path, tmp_path: Path) -> None:
    scenario = load_scenario(path)
    series = tmp_path / "series.om"
    openmetrics.write_file(scenario, series)
    detector = engine.compile_policy(load_policy(None))
    report = backtest.run_file(detector, series, step=15.0, say=lambda _m: None)

    start = openmetrics.start_of(scenario).timestamp()
    tripped = {f"{t.namespace}/{t.pod}": t for t in report.trips}
    expected = {e.pod for e in scenario.expect if e.trips}
    assert set(tripped) == expected, f"tripped {sorted(tripped)}, expected {sorted(expected)}"

    for expectation in scenario.expect:
        if not expectation.trips:
            continue
        assert expectation.from_ is not None
        assert expectation.within is not None
        trip = tripped[expectation.pod]
        began = start + parse_duration(expectation.from_).total_seconds()
        latency = trip.at - began
        budget = parse_duration(expectation.within).total_seconds()
        LATENCIES.append(
            (scenario.name, expectation.pod, trip.rule, f"{latency:.0f}s", f"{budget:.0f}s")
        )
        assert 0 <= latency <= budget, (
            f"{expectation.pod}: tripped {latency:.0f}s after, budget {budget:.0f}s"
        )
    if not expected:
        LATENCIES.append((scenario.name, "-", "no trip", "-", "-"))
    # The README's table says what this run measured (`make corpus` rewrites it).
    readme = (repo_root() / "README.md").read_text()
    for row in corpus.rows(scenario, [trip.wire() for trip in report.trips]):
        assert corpus.line(row) in readme, f"README is stale for {scenario.name}: make corpus"


def test_the_readmes_table_has_a_row_per_scenario_with_its_expected_outcome() -> None:
    """`make corpus` writes the table; this holds that it was rerun when the corpus grew."""
    readme = (repo_root() / "README.md").read_text()
    table = readme.partition(corpus.BEGIN)[2].partition(corpus.END)[0]
    rows = dict(re.findall(r"^\| `([\w-]+)` \| ([^|]+) \|", table, re.M))
    assert set(rows) == {path.stem for path in SCENARIOS}, "run `make corpus`"
    for path in SCENARIOS:
        outcome = rows[path.stem].strip()
        attack = any(e.trips for e in load_scenario(path).expect)
        assert (outcome != "no trip") is attack, f"{path.stem}: {outcome}"
    assert "false trips" in table
