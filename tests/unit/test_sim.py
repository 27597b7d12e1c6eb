"""The simulator: its scenario format, the shapes it emits, and its OpenMetrics."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import pytest

from breaker_tooling.sim import model, openmetrics
from breaker_tooling.sim.scenario import Scenario, ScenarioError, load

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def scenario(*timeline: dict[str, str], **pod: object) -> Scenario:
    return Scenario.model_validate(
        {
            "name": "t",
            "duration": "2m",
            "pods": [{"namespace": "a", "name": "p", "gpus": 1, "timeline": list(timeline), **pod}],
        }
    )


def test_a_bad_scenario_names_the_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: s\nduration: 1m\npods:\n- {namespace: a, name: p, timeline: [{at: 0m, do: dance}]}\n"
    )
    with pytest.raises(ScenarioError, match=r"s\.yaml: pods\.0\.timeline\.0\.do"):
        load(path)
    path.write_text(
        "name: s\nduration: 1m\npods:\n- {namespace: a, name: p, timeline: [{at: 0m, do: idle}]}\n"
        "expect: [{pod: a/q, trips: false}]\n"
    )
    with pytest.raises(ScenarioError, match="expect: pod a/q is not in pods"):
        load(path)


def test_series_are_shaped_like_the_exporters() -> None:
    ((_, first), *_rest) = model.run(scenario({"at": "0m", "do": "train-mixed"}))
    names = {s.name for s in first}
    assert {
        "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
        "training_steps_total",
    } <= names
    util = next(s for s in first if s.name == "DCGM_FI_DEV_GPU_UTIL")
    assert 90 <= util.value <= 100  # a percent
    tensor = next(s for s in first if s.name == "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE")
    assert 0 <= tensor.value <= 1  # a ratio
    assert {"gpu", "UUID", "Hostname", "namespace", "pod"} <= {k for k, _ in util.labels}


def test_counters_grow_and_reset_on_restart() -> None:
    run = list(
        model.run(
            scenario(
                {"at": "0m", "do": "train-mixed"}, {"at": "1m", "do": "restart-from-checkpoint"}
            )
        )
    )

    def steps(index: int) -> float:
        return next(s.value for s in run[index][1] if s.name == "training_steps_total")

    assert steps(1) < steps(3)
    assert steps(5) == 0  # restarted at 60s: a new process counts from zero


def test_the_same_scenario_gives_the_same_series() -> None:
    s = scenario({"at": "0m", "do": "mine"}, {"at": "0m", "do": "miner-pool-egress"})
    first, second = io.StringIO(), io.StringIO()
    openmetrics.write(s, first, START)
    openmetrics.write(s, second, START)
    assert first.getvalue() == second.getvalue()


def test_openmetrics_groups_families_escapes_and_ends() -> None:
    s = scenario({"at": "0m", "do": "tunnel-over-443"}, name='odd"pod\\name')
    out = io.StringIO()
    count = openmetrics.write(s, out, START)
    text = out.getvalue()
    assert text.endswith("# EOF\n")
    assert count == sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    types = [line for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(types) == len(set(types)), "each family once, its samples together"
    assert "# TYPE falcosecurity_falcosidekick_falco_events counter" in types
    assert 'pod="odd\\"pod\\\\name"' in text
    assert f" {START.timestamp():.3f}" in text


def test_the_live_exporter_scraped_at_once_shows_the_first_sample() -> None:
    """A scrape before the first step (CI's Prometheus managed one) saw every GPU idle."""
    from breaker_tooling.sim.exporter import ScenarioCollector

    mining = scenario({"at": "0m", "do": "mine"})
    ((_, first), *_rest) = model.run(mining)
    live = {
        (family.name, tuple(sorted(sample.labels.items())), sample.value)
        for family in ScenarioCollector(mining, speed=1e-9).collect()
        for sample in family.samples
        if family.name.startswith("DCGM")
    }
    expected = {
        (s.name, tuple(sorted(s.labels)), s.value) for s in first if s.name.startswith("DCGM")
    }
    assert live == expected
    assert any(name == "DCGM_FI_PROF_DRAM_ACTIVE" and value >= 0.9 for name, _, value in live)


def test_a_duty_cycle_is_on_for_lasting_at_the_start_of_each_every() -> None:
    cycled = scenario({"at": "1m", "do": "mine", "every": "5m", "lasting": "2m"})
    (segment,) = cycled.pods[0].timeline
    on = [minute for minute in range(12) if segment.active(minute * 60.0)]
    assert on == [1, 2, 6, 7, 11]
    assert segment.began(7 * 60.0) == 6 * 60.0  # each stretch starts afresh
    with pytest.raises(ValueError, match="every and lasting go together"):
        scenario({"at": "0m", "do": "mine", "every": "5m"})
    with pytest.raises(ValueError, match="lasting must not be longer than every"):
        scenario({"at": "0m", "do": "mine", "every": "1m", "lasting": "2m"})


def test_lookups_are_counted_by_query_type_as_hubble_labels_them() -> None:
    samples = list(model.run(scenario({"at": "0m", "do": "dns-tunnel-fast"})))
    _, last = samples[-1]
    queries = {
        dict(s.labels)["qtypes"]: s.value for s in last if s.name == "hubble_dns_queries_total"
    }
    assert set(queries) == {"A", "AAAA", "NULL"}  # every pod resolves names; iodine asks NULL
    assert queries["NULL"] >= 50 * queries["A"]
    labels = dict(next(s for s in last if s.name == "hubble_dns_queries_total").labels)
    assert labels["rcode"] == ""  # a query: the rcode and the IPs label the responses
    assert labels["ips_returned"] == "0"


def test_a_trickle_scan_probes_its_own_slice_one_port_every_twenty_seconds() -> None:
    sliced = scenario({"at": "0m", "do": "internal-scan-trickle"}, scanFrom=3001)
    _, last = list(model.run(sliced))[-1]
    ports = sorted(
        int(dict(s.labels)["port"]) for s in last if s.name == "hubble_port_distribution_total"
    )
    assert ports == list(range(3001, 3001 + len(ports)))  # its slice, in order
    assert 5 <= len(ports) <= 7  # 0.05 a second for two minutes, not one a sample


def test_workers_rejoining_a_ring_reach_ephemeral_ports_new_at_every_join() -> None:
    ring = scenario({"at": "0m", "do": "nccl-ring-join", "every": "1m", "lasting": "15s"})
    _, last = list(model.run(ring))[-1]
    ports = [
        int(dict(s.labels)["port"]) for s in last if s.name == "hubble_port_distribution_total"
    ]
    assert len(ports) == 4  # two peers' ports at each of two joins
    assert all(32768 <= port <= 60999 for port in ports)
