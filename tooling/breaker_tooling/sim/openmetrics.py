"""Write a scenario as OpenMetrics text with timestamps, for backtests and tests.

promtool reads it into TSDB blocks (``promtool tsdb create-blocks-from openmetrics``); the
samples of a metric family stay together and each series' samples are in time order.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TextIO

from breaker_tooling.sim import model
from breaker_tooling.sim.scenario import Scenario


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: model.Labels) -> str:
    return ",".join(f'{key}="{_escape(value)}"' for key, value in labels)


def family_of(name: str, kind: str) -> str:
    return name.removesuffix("_total") if kind == "counter" else name


def start_of(scenario: Scenario, now: dt.datetime | None = None) -> dt.datetime:
    """The scenario's start: as written, or ending now, aligned to its interval."""
    if scenario.start is not None:
        return scenario.start
    now = now or dt.datetime.now(dt.UTC)
    begin = now.timestamp() - scenario.seconds
    return dt.datetime.fromtimestamp(begin - begin % scenario.step, dt.UTC)


def write(scenario: Scenario, out: TextIO, start: dt.datetime) -> int:
    """Write every sample; return how many."""
    families: dict[str, tuple[str, dict[model.Labels, list[tuple[float, float]]]]] = {}
    base = start.timestamp()
    for offset, series in model.run(scenario):
        for s in series:
            _, by_labels = families.setdefault(s.name, (s.kind, {}))
            by_labels.setdefault(s.labels, []).append((base + offset, s.value))
    count = 0
    for name, (kind, by_labels) in families.items():
        out.write(f"# TYPE {family_of(name, kind)} {kind}\n")
        for labels, points in by_labels.items():
            rendered = _labels(labels)
            for timestamp, value in points:
                out.write(f"{name}{{{rendered}}} {value!r} {timestamp:.3f}\n")
                count += 1
    out.write("# EOF\n")
    return count


def write_file(scenario: Scenario, path: Path, start: dt.datetime | None = None) -> int:
    with path.open("w") as out:
        return write(scenario, out, start or start_of(scenario))
