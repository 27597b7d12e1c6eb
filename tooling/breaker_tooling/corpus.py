"""`make corpus`: the detection-quality table of the scenario corpus, from `breaker backtest`.

Each scenario in tests/scenarios is written out as OpenMetrics by the simulator and run
through the `breaker backtest` command (the default policy, a 15 s step), as anyone can
run it by hand. A row per expected outcome: for an attack, the rule that tripped and the
latency from the first bad sample, against its budget; for a benign scenario, whether
anything tripped. The table goes into the README between its corpus markers.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from breaker.api.common import parse_duration
from breaker_tooling.localcluster.paths import repo_root
from breaker_tooling.sim import openmetrics
from breaker_tooling.sim.scenario import Scenario, load

BEGIN = "<!-- corpus:begin (make corpus writes this table) -->"
END = "<!-- corpus:end -->"


@dataclass(frozen=True)
class Row:
    scenario: str
    attack: bool
    outcome: str  # the rule, or "no trip"
    latency: float | None  # seconds from the start of the attack (its `from`)
    budget: float | None
    false_trips: int  # pods tripped that should not have been

    @property
    def ok(self) -> bool:
        if self.false_trips:
            return False
        if not self.attack:
            return self.outcome == "no trip"
        return self.latency is not None and self.budget is not None and self.latency <= self.budget


def backtest(scenario: Scenario, series: Path) -> list[dict[str, object]]:
    """The trips `breaker backtest` reports for these series."""
    done = subprocess.run(
        [sys.executable, "-m", "breaker.cli", "backtest", "--series", str(series),
         "--step", "15s", "--format", "json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"breaker backtest failed on {scenario.name}: {done.stderr.strip()}")
    trips: list[dict[str, object]] = json.loads(done.stdout)["trips"]
    return trips


def rows(scenario: Scenario, trips: list[dict[str, object]]) -> list[Row]:
    start = openmetrics.start_of(scenario).timestamp()
    by_pod = {f"{t['namespace']}/{t['pod']}": t for t in trips}
    expected = {e.pod for e in scenario.expect if e.trips}
    false_trips = len(set(by_pod) - expected)
    found = []
    for expectation in scenario.expect:
        if not expectation.trips:
            continue
        trip = by_pod.get(expectation.pod)
        began = start + parse_duration(expectation.from_ or "0s").total_seconds()
        at = _seconds(str(trip["at"])) if trip else None
        found.append(
            Row(
                scenario.name,
                True,
                str(trip["rule"]) if trip else "no trip",
                at - began if at is not None else None,
                parse_duration(expectation.within or "0s").total_seconds(),
                false_trips,
            )
        )
    if not found:
        outcome = ", ".join(sorted({str(t["rule"]) for t in trips})) or "no trip"
        found.append(Row(scenario.name, False, outcome, None, None, false_trips))
    return found


def _seconds(stamp: str) -> float:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"


def line(row: Row) -> str:
    """The row's line in the README's table."""
    latency = _duration(row.latency) if row.attack else "-"
    outcome = row.outcome.removeprefix("critical:")
    return f"| `{row.scenario}` | {outcome} | {latency} | {_duration(row.budget)} |"


def table(found: list[Row]) -> str:
    attacks = [r for r in found if r.attack]
    benign = [r for r in found if not r.attack]
    caught = sum(r.ok for r in attacks)
    # Once per scenario (its rows repeat the count): pods that tripped and should not have.
    false_trips = sum({r.scenario: r.false_trips for r in found}.values())
    lines = [
        "| scenario | outcome | latency | budget |",
        "|---|---|---|---|",
        *(line(r) for r in found),
        "",
        f"**{caught} of {len(attacks)} attacks caught within budget; {false_trips} false "
        f"trips in {len(benign)} benign scenarios** (`make corpus`, the default policy, "
        f"`breaker backtest` at a 15 s step; latency from the start of the attack).",
    ]
    return "\n".join(lines)


def main() -> int:
    root = repo_root()
    found: list[Row] = []
    paths = sorted((root / "tests" / "scenarios").glob("*.yaml"))
    with tempfile.TemporaryDirectory(prefix="breaker-corpus-") as scratch:
        for number, path in enumerate(paths, 1):
            scenario = load(path)
            series = Path(scratch) / f"{scenario.name}.om"
            openmetrics.write_file(scenario, series)
            print(f"[{number}/{len(paths)}] {scenario.name}", file=sys.stderr, flush=True)
            found.extend(rows(scenario, backtest(scenario, series)))
    text = table(found)
    readme = root / "README.md"
    current = readme.read_text()
    head, _, rest = current.partition(BEGIN)
    if END not in rest:
        raise SystemExit(f"{readme}: no {BEGIN!r} ... {END!r} markers to write the table between")
    _, _, tail = rest.partition(END)
    readme.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
    print(text)
    print(f"\nwritten into {readme} ({len(found)} rows)", file=sys.stderr)
    return 0 if all(r.ok for r in found) else 1


if __name__ == "__main__":
    sys.exit(main())
